"""Evidence against validators: signed events the network capped or refused, kept for slashing.

Every ChargerEvent carries its ingress validator's EIP-712 vouch (ocpp_adapter/vouching.py), so an
event the network could not honour as vouched for is evidence against its signer:

| reason          | where found                      | proves                                          |
|-----------------|----------------------------------|-------------------------------------------------|
| `energy_capped` | a committed block's results      | the signer vouched for more energy than the     |
|                 | (ledger anomaly of that kind)    | connector's on-chain max power allows in the    |
|                 |                                  | session's window (the ledger settled the bound) |
| `misattributed` | mempool admission (refused)      | the signer signed a vouch naming another        |
|                 |                                  | validator as the event's ingress                |

A record holds the signed event bytes as received (verifiable by anyone with the vouching
domain), the reason, the ledger's detail, the height (the block that capped it, or the
committed height when admission refused it) and where it was found.

Block evidence is a pure function of committed blocks and their results (`block_evidence`),
so every honest node derives the same records; it stays outside the ledger state (nothing
agreed depends on it) and is re-derived idempotently on replay. Admission evidence is local
(what this node saw) but self-proving. `EvidenceStore` keeps both durably (SQLite) and
bounded: the first MAX_RECORDS_PER_VALIDATOR records per validator (a flood by one
validator fills only its own quota) and MAX_RECORDS in all; the rest is counted, not kept.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anchoring.proofs import EVENT_PAYLOAD_FIRST_BYTE
from consensus.abci import TxResult
from ocpp_adapter.events import ChargerEvent, EventEncodingError
from ocpp_adapter.vouching import recovered_voucher
from primitives.eip712 import Domain

log = logging.getLogger(__name__)

ENERGY_CAPPED = "energy_capped"  # the ledger's anomaly kind (devsen/ledger/ledger.py)
MISATTRIBUTED = "misattributed"
MAX_RECORDS_PER_VALIDATOR = 256
MAX_RECORDS = 16_384
MAX_DETAIL_CHARS = 200
ADMISSION_CHECKS_PER_S = 50  # signature recoveries spent on refused events per second, at most


@dataclass(frozen=True, slots=True)
class EvidenceRecord:
    """One signed event held against `validator` (20 bytes)."""

    validator: bytes
    event_id: bytes
    reason: str
    height: int
    detail: str
    event: bytes  # the signed event bytes, exactly as vouched for
    source: str  # "block" or "admission"

    def to_json(self) -> dict[str, Any]:
        """The HTTP API's view of the record."""
        return {"validator": "0x" + self.validator.hex(), "event_id": "0x" + self.event_id.hex(),
                "reason": self.reason, "height": self.height, "detail": self.detail,
                "source": self.source, "event": "0x" + self.event.hex()}


def _anomaly_kinds(result: TxResult) -> tuple[str, ...]:
    for key, value in result.info:
        if key == "anomalies" and isinstance(value, (tuple, list)):
            return tuple(str(kind) for kind in value)
    return ()


def block_evidence(height: int, payloads: Sequence[bytes], results: Sequence[TxResult],
                   detail_of: Callable[[ChargerEvent, str], str] = lambda event, kind: "") -> list[EvidenceRecord]:
    """The evidence in one committed block: each event whose result carries an
    `energy_capped` anomaly, against the validator that vouched for it (the block was only
    valid if that validator's signature on the event verified). Pure and total: payloads
    that are no event, or results that do not line up, yield nothing."""
    if len(payloads) != len(results):
        return []
    found = []
    for payload, result in zip(payloads, results, strict=True):
        if not payload or payload[0] != EVENT_PAYLOAD_FIRST_BYTE or ENERGY_CAPPED not in _anomaly_kinds(result):
            continue
        try:
            event = ChargerEvent.from_bytes(payload)
        except EventEncodingError:
            continue
        if len(event.ingress_address) != 20:
            continue
        found.append(EvidenceRecord(event.ingress_address, event.event_id, ENERGY_CAPPED, height,
                                    detail_of(event, ENERGY_CAPPED)[:MAX_DETAIL_CHARS], payload, "block"))
    return found


def admission_evidence(payload: bytes, domain: Domain, validators: Collection[bytes],
                       height: int) -> EvidenceRecord | None:
    """Evidence in a payload admission refused: an event signed by a current validator that
    names another validator (or nobody valid) as its ingress. None for anything else: an
    unsigned event or one signed by an outsider proves nothing against a validator."""
    if not payload or payload[0] != EVENT_PAYLOAD_FIRST_BYTE:
        return None
    try:
        event = ChargerEvent.from_bytes(payload)
    except EventEncodingError:
        return None
    signer = recovered_voucher(event, domain)
    if isinstance(signer, str) or signer == event.ingress_address or signer not in validators:
        return None
    detail = f"signed by 0x{signer.hex()} naming ingress {event.ingress_node}"
    return EvidenceRecord(signer, event.event_id, MISATTRIBUTED, height, detail, payload, "admission")


class EvidenceStore:
    """Durable, bounded evidence records (SQLite); idempotent per (validator, event, reason)."""

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS evidence (validator BLOB NOT NULL, event_id BLOB NOT NULL, "
            "reason TEXT NOT NULL, height INTEGER NOT NULL, detail TEXT NOT NULL, event BLOB NOT NULL, "
            "source TEXT NOT NULL, PRIMARY KEY (validator, event_id, reason))")
        self.dropped = 0  # records not kept because a bound was reached (since start)
        self._total = self._db.execute("SELECT COUNT(*) FROM evidence").fetchone()[0]

    def add(self, records: Iterable[EvidenceRecord]) -> int:
        """Keep `records` within the bounds; returns how many are new."""
        added = 0
        for record in records:
            if self._has(record):
                continue
            count = self._db.execute("SELECT COUNT(*) FROM evidence WHERE validator = ?",
                                     (record.validator,)).fetchone()[0]
            if count >= MAX_RECORDS_PER_VALIDATOR or self._total >= MAX_RECORDS:
                self.dropped += 1
                continue
            self._db.execute("INSERT INTO evidence VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (record.validator, record.event_id, record.reason, record.height,
                              record.detail, record.event, record.source))
            self._total += 1
            added += 1
            log.warning("evidence against validator 0x%s: %s at height %d (event 0x%s): %s",
                        record.validator.hex(), record.reason, record.height, record.event_id.hex()[:16],
                        record.detail)
        return added

    def _has(self, record: EvidenceRecord) -> bool:
        return self._db.execute("SELECT 1 FROM evidence WHERE validator = ? AND event_id = ? AND reason = ?",
                                (record.validator, record.event_id, record.reason)).fetchone() is not None

    def of(self, validator: bytes) -> list[EvidenceRecord]:
        """The records against `validator`, by height (at most MAX_RECORDS_PER_VALIDATOR)."""
        rows = self._db.execute("SELECT validator, event_id, reason, height, detail, event, source FROM evidence "
                                "WHERE validator = ? ORDER BY height, event_id", (validator,)).fetchall()
        return [EvidenceRecord(bytes(r[0]), bytes(r[1]), r[2], r[3], r[4], bytes(r[5]), r[6]) for r in rows]

    def counts(self) -> dict[bytes, int]:
        """Validator -> number of records held against it."""
        rows = self._db.execute("SELECT validator, COUNT(*) FROM evidence GROUP BY validator").fetchall()
        return {bytes(validator): count for validator, count in rows}

    def close(self) -> None:
        self._db.close()


class EvidenceRecorder:
    """The node's wiring: block evidence from every finalized block (commits and replays),
    admission evidence from refused payloads (at most ADMISSION_CHECKS_PER_S recoveries a
    second, so a flood of refused events costs this node no more than that)."""

    def __init__(self, store: EvidenceStore, domain: Domain, validators: Callable[[], Collection[bytes]],
                 height: Callable[[], int], detail_of: Callable[[ChargerEvent, str], str] = lambda e, k: "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.domain = domain
        self.validators = validators
        self.height = height
        self.detail_of = detail_of
        self._clock = clock
        self._window = (0.0, 0)  # (second it began, recoveries spent in it)
        self.admission_skipped = 0

    def on_finalized(self, height: int, payloads: Sequence[bytes], results: Sequence[TxResult]) -> None:
        """A finalize listener: record the block's evidence."""
        records = block_evidence(height, payloads, results, self.detail_of)
        if records:
            self._keep(records)

    def on_refused(self, payload: bytes, reason: str) -> None:
        """An admission-refusal listener: record a misattributed vouch, within the rate."""
        if not payload or payload[0] != EVENT_PAYLOAD_FIRST_BYTE or "signed by" not in reason:
            return  # only a signature naming the wrong ingress can be evidence (vouch_problem's wording)
        now = self._clock()
        began, spent = self._window
        if now - began >= 1.0:
            began, spent = now, 0
        if spent >= ADMISSION_CHECKS_PER_S:
            self.admission_skipped += 1
            return
        self._window = (began, spent + 1)
        record = admission_evidence(payload, self.domain, self.validators(), self.height())
        if record is not None:
            self._keep([record])

    def _keep(self, records: list[EvidenceRecord]) -> None:
        try:
            self.store.add(records)
        except sqlite3.Error as exc:  # a full or broken disk must not stop commits; the log keeps it
            self.store.dropped += len(records)
            log.error("could not store %d evidence records (%s): %s", len(records), exc,
                      [r.to_json() for r in records][:2])
