"""Chain facts for one block: every chain read the block's application makes, fetched first.

The consensus shell calls `NodeApplication.fetch_facts` off the event loop (a worker thread):
it lists the keys the block can read (`chain_keys`, a pure function of the block's events and
the ledger state before it), reads exactly those at the block's Ethereum block (by hash) and
returns an immutable `ChainFacts`. Validation and application are then pure over
(block, facts): `FactsView` answers the ledger from the facts alone, and a read outside them
is answered "absent" (deterministic: every node lists the same keys) and counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Protocol

from devsen.ledger import ChainReservation, ChainView, DeviceInfo, EscrowSession, IdTagInfo, Ledger
from devsen.ledger.remote_starts import MAX_REQUESTED_CHARGERS
from ocpp_adapter.events import ChargerEvent, tag_hash_of

MAX_KEY_DEPTH = 8  # OCPP payloads nest a few levels; idTags are never deeper than this
MAX_OUTSIDE_READS_KEPT = 64
REQUEST_LOOKBACK_BLOCKS = 256  # Ethereum blocks of session requests one block looks back at most


@dataclass(frozen=True, slots=True)
class ChainKeys:
    """What a block may read from the chain (sorted, so equal blocks list equal keys)."""

    chargers: tuple[str, ...] = ()  # device(charger), open_escrow_sessions(charger), reservations(charger)
    id_tags: tuple[bytes, ...] = ()  # id_tag(hash)
    sessions: tuple[bytes, ...] = ()  # escrow_session(id)
    # chargers with escrow sessions requested since the previous block's Ethereum block (also in
    # `chargers`): the ledger issues their remote starts (devsen/ledger/remote_starts.py)
    requested: tuple[str, ...] = ()


def _id_tag_hashes_in(value: Any, depth: int = 0) -> Iterable[bytes]:
    """The hash named by every idTag (1.6 `idTag`) and idToken (2.0.1 `idToken.idToken`) in a
    payload; events carry them only in hashed form (ocpp_adapter/events.py), other values are skipped."""
    if depth > MAX_KEY_DEPTH:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            tag_hash = tag_hash_of(item.get("idToken") if key == "idToken" and isinstance(item, dict) else
                                   item if key == "idTag" else None)
            if tag_hash is not None:
                yield tag_hash
            yield from _id_tag_hashes_in(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _id_tag_hashes_in(item, depth + 1)


def chain_keys(events: Sequence[ChargerEvent], ledger: Ledger, voucher_sessions: Iterable[bytes] = (),
               command_chargers: Iterable[str] = (), block_ms: int | None = None) -> ChainKeys:
    """The chain keys applying `events` to `ledger` can read; pure (block + state before it).

    Chargers: each event's charger (its device and open escrow sessions). IdTags: every idTag /
    idToken the payloads carry. Sessions: the escrow sessions of pending settlement orders (the
    ledger re-checks whether they were paid) and of the open sessions of the block's chargers;
    those the block's payment vouchers name and the oldest voucher entries the ledger re-checks.
    The chargers of the block's manager commands (their manager, devsen/ledger/commands.py).
    The chargers with uptime in the open reward epoch if the block, at `block_ms` (its own
    timestamp; None: unknown), closes it (devsen/ledger/uptime.py reads their devices then).
    """
    chargers = sorted({event.charger_id for event in events} | set(command_chargers)
                      | set(ledger.uptime_reads(block_ms)))
    tags = sorted({tag_hash for event in events for tag_hash in _id_tag_hashes_in(event.payload)})
    wanted = set(chargers)
    sessions = {order.session_id for order in ledger.pending_settlements()}
    sessions.update(s.escrow_session_id for s in ledger.open_sessions()
                    if s.charger_id in wanted and s.escrow_session_id)
    sessions.update(voucher_sessions)
    sessions.update(ledger.vouchers.prune_keys())
    return ChainKeys(tuple(chargers), tuple(tags), tuple(sorted(sessions)))


def with_requested(keys: ChainKeys, requested: Iterable[str]) -> ChainKeys:
    """`keys` that also read the chargers of new session requests (at most MAX_REQUESTED_CHARGERS,
    the first in order; remote_starts.py)."""
    names = tuple(sorted({c for c in requested if isinstance(c, str) and 0 < len(c) <= 48}))[:MAX_REQUESTED_CHARGERS]
    if not names:
        return keys
    return replace(keys, chargers=tuple(sorted(set(keys.chargers) | set(names))), requested=names)


def requested_from_block(ledger: Ledger, eth_number: int) -> int:
    """The first Ethereum block whose session requests a block at `eth_number` looks at: the one
    after the previous block's, at most REQUEST_LOOKBACK_BLOCKS back."""
    previous = int(ledger.counters()["eth_block_number"])
    return max(previous + 1, eth_number - REQUEST_LOOKBACK_BLOCKS + 1, 0)


class KeyReader(Protocol):
    """Reads at one Ethereum block (devsen.chain_view.ContractChainView, or a static view)."""

    def device(self, charge_box_id: str) -> DeviceInfo | None: ...

    def id_tag(self, tag_hash: bytes) -> IdTagInfo | None: ...

    def open_escrow_sessions(self, charge_box_id: str) -> Sequence[EscrowSession]: ...

    def escrow_session(self, session_id: bytes) -> EscrowSession | None: ...

    def reservations(self, charge_box_id: str) -> Sequence[ChainReservation]: ...


@dataclass(frozen=True, slots=True)
class ChainFacts:
    """Everything one block reads from Ethereum, fixed before validation and application.

    `problem` says why a proposal naming this Ethereum block must be refused by this node
    (unknown block or hash, not `confirmations` deep by our head); facts with `complete`
    False hold no reads (the named block is not on our RPC) and cannot be applied.
    """

    eth_number: int
    eth_hash: bytes
    payloads_digest: bytes
    keys: ChainKeys
    devices: Mapping[str, DeviceInfo | None] = field(default_factory=dict)
    id_tags: Mapping[bytes, IdTagInfo | None] = field(default_factory=dict)
    open_sessions: Mapping[str, tuple[EscrowSession, ...]] = field(default_factory=dict)
    sessions: Mapping[bytes, EscrowSession | None] = field(default_factory=dict)
    reservations: Mapping[str, tuple[ChainReservation, ...]] = field(default_factory=dict)
    epoch: int = 0
    validators: tuple[bytes, ...] = ()
    bindings: Mapping[bytes, bytes] = field(default_factory=dict)
    # ValidatorSet.operators() at the block: full nodes whose vouched events the block may carry
    operators: frozenset[bytes] = frozenset()
    endpoints: Mapping[bytes, str] = field(default_factory=dict)  # validator -> its on-chain OCPP endpoint
    complete: bool = True
    problem: str | None = None

    def view(self) -> FactsView:
        """A fresh ChainView over these facts (it records reads outside them)."""
        return FactsView(self)


def read_facts(reader: KeyReader, keys: ChainKeys) -> dict[str, Any]:
    """Read every key through `reader` (I/O); the mappings of a ChainFacts, read-only."""
    return {
        "devices": MappingProxyType({c: reader.device(c) for c in keys.chargers}),
        "id_tags": MappingProxyType({t: reader.id_tag(t) for t in keys.id_tags}),
        "open_sessions": MappingProxyType({c: tuple(reader.open_escrow_sessions(c)) for c in keys.chargers}),
        "sessions": MappingProxyType({s: reader.escrow_session(s) for s in keys.sessions}),
        "reservations": MappingProxyType({c: tuple(reader.reservations(c)) for c in keys.chargers}),
    }


class FactsView(ChainView):
    """The ledger's ChainView answered from ChainFacts alone: no I/O, deterministic.

    A key outside the facts reads as absent (no device, unknown idTag, no open session) and is
    recorded in `outside` (a bug in `chain_keys` if it happens; the test suite asserts it never does).
    """

    def __init__(self, facts: ChainFacts) -> None:
        self.facts = facts
        self.outside: list[tuple[str, Any]] = []

    def _miss(self, kind: str, key: Any) -> None:
        if len(self.outside) < MAX_OUTSIDE_READS_KEPT:
            self.outside.append((kind, key))

    def device(self, charge_box_id: str) -> DeviceInfo | None:
        if charge_box_id not in self.facts.devices:
            self._miss("device", charge_box_id)
            return None
        return self.facts.devices[charge_box_id]

    def id_tag(self, tag_hash: bytes) -> IdTagInfo | None:
        if tag_hash not in self.facts.id_tags:
            self._miss("id_tag", tag_hash)
            return None
        return self.facts.id_tags[tag_hash]

    def open_escrow_sessions(self, charge_box_id: str) -> Sequence[EscrowSession]:
        if charge_box_id not in self.facts.open_sessions:
            self._miss("open_escrow_sessions", charge_box_id)
            return ()
        return self.facts.open_sessions[charge_box_id]

    def escrow_session(self, session_id: bytes) -> EscrowSession | None:
        if session_id in self.facts.sessions:
            return self.facts.sessions[session_id]
        for sessions in self.facts.open_sessions.values():  # open sessions of the block's chargers
            for session in sessions:
                if session.session_id == session_id:
                    return session
        self._miss("escrow_session", session_id)
        return None

    def requested_chargers(self) -> tuple[str, ...]:
        return self.facts.keys.requested

    def validator_endpoints(self) -> tuple[tuple[bytes, str], ...]:
        """(address, endpoint) of each validator of the set at the block's Ethereum block, by address."""
        return tuple((a, self.facts.endpoints.get(a, "")) for a in sorted(self.facts.validators))

    def reservations(self, charge_box_id: str) -> Sequence[ChainReservation]:
        if charge_box_id not in self.facts.reservations:
            self._miss("reservations", charge_box_id)
            return ()
        return self.facts.reservations[charge_box_id]
