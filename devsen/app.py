"""The node's consensus application: committed blocks in, ledger state, replies, anchors out.

`NodeApplication` is what `ConsensusService` drives (ABCI-like):
- `propose_app_header`: the Ethereum block (number, hash) at which this block's chain reads
  are made: `confirmations` below the head, never behind the previous block's.
- `validate_block`: the header names a real chain block, not going backwards; every payload
  is a canonical ChargerEvent or a well-formed attestation signed by a validator; the
  ledger accepts the events (height, time, count).
- `apply_block`: applies the events to the deterministic ledger at that Ethereum block,
  records each event's result for the waiting charger, feeds the anchor batcher (closing a
  batch -> this validator signs it and queues an attestation payload), turns settlement
  orders into signed attestations, and counts committed attestations; a quorum goes to
  the submitter.

Payload kinds are told apart by the first byte (anchoring/proofs.py, attestations.py):
0x9A a canonical ChargerEvent, 0xA1/0xA2 an attestation.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgpack

from anchoring.attestations import (
    ATTESTATION_TAGS,
    AnchorBatch,
    Attestation,
    AttestationError,
    Settlement,
    attest,
    decode_attestation,
)
from anchoring.batches import AttestationBook, BatchBuilder, BatchPolicy, BuilderState, Quorum
from anchoring.batches import CommittedBlock as BatchBlock
from anchoring.proofs import EVENT_PAYLOAD_FIRST_BYTE, AnchorIndex
from consensus.signing import Domain, SigningKey
from consensus.types import Block, CommitCertificate, CommittedBlock, ValidatorSet
from devsen.chain_view import ChainReadError, patiently
from devsen.ledger import BlockContext, BlockRejected, ChainView, EventResult, Ledger
from devsen.ledger.ledger import SnapshotError
from devsen.vouching import VouchCache, ingress_domain
from ocpp_adapter.events import ChargerEvent, EventEncodingError

log = logging.getLogger("devsen.app")

APP_HEADER_VERSION = 1
MAX_APP_HEADER_BYTES = 128
MAX_REMEMBERED_RESULTS = 50_000  # results wait only for the ingest (and message look-ups)
# A proposal whose time is this far ahead of our clock is refused (only the future is bounded:
# a locked value may be re-proposed rounds later with its original, older time).
MAX_FUTURE_DRIFT_MS = 30_000
SNAPSHOT_FORMAT = 1
SNAPSHOT_EVERY_BLOCKS = 100  # a restart replays at most this many blocks (and reads the chain for them)


class AppHeaderError(ValueError):
    """The app header is not [1, eth block number, eth block hash]."""


def encode_app_header(eth_block_number: int, eth_block_hash: bytes) -> bytes:
    """Canonical app header bytes."""
    assert eth_block_number >= 0 and len(eth_block_hash) == 32
    return msgpack.packb([APP_HEADER_VERSION, eth_block_number, eth_block_hash], use_bin_type=True)


def decode_app_header(data: bytes) -> tuple[int, bytes]:
    """(eth block number, eth block hash) from app header bytes; strict."""
    if len(data) > MAX_APP_HEADER_BYTES:
        raise AppHeaderError("app header too long")
    try:
        fields = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise AppHeaderError(f"app header is not msgpack: {exc}") from exc
    if (not isinstance(fields, list) or len(fields) != 3 or fields[0] != APP_HEADER_VERSION
            or not isinstance(fields[1], int) or isinstance(fields[1], bool) or fields[1] < 0
            or not isinstance(fields[2], bytes) or len(fields[2]) != 32):
        raise AppHeaderError("app header must be [1, eth block number, 32-byte eth block hash]")
    if encode_app_header(fields[1], fields[2]) != data:
        raise AppHeaderError("app header is not canonical")
    return fields[1], fields[2]


class ChainAccess(Protocol):
    """The chain reads the application makes (devsen.chain_view.ContractChainAccess)."""

    def head(self, max_age_s: float = ...) -> int: ...

    def block_hash(self, number: int, fresh: bool = False) -> bytes: ...

    def view_at(self, number: int) -> ChainView: ...

    def validators_at(self, number: int) -> tuple[int, tuple[bytes, ...], dict[bytes, bytes]]:
        """(epoch, sorted validator addresses, address -> peer id) of the ValidatorSet at a block."""
        ...


@dataclass
class Payloads:
    """A block's payloads split by kind."""

    events: list[ChargerEvent] = field(default_factory=list)
    attestations: list[Attestation] = field(default_factory=list)


def split_payloads(payloads: tuple[bytes, ...]) -> Payloads:
    """Decode every payload; raise ValueError naming the first malformed one."""
    out = Payloads()
    for index, payload in enumerate(payloads):
        if not payload:
            raise ValueError(f"payload {index} is empty")
        if payload[0] == EVENT_PAYLOAD_FIRST_BYTE:
            try:
                out.events.append(ChargerEvent.from_bytes(payload))
            except EventEncodingError as exc:
                raise ValueError(f"payload {index}: {exc}") from exc
        elif payload[0] in ATTESTATION_TAGS:
            try:
                out.attestations.append(decode_attestation(payload))
            except AttestationError as exc:
                raise ValueError(f"payload {index}: {exc}") from exc
        else:
            raise ValueError(f"payload {index} has unknown kind 0x{payload[0]:02x}")
    return out


@dataclass(frozen=True)
class AppSettings:
    """Fixed parameters of the application on every node of one network."""

    key: SigningKey
    validators: tuple[bytes, ...]
    anchor_domain: Domain
    escrow_domain: Domain
    batch_policy: BatchPolicy
    confirmations: int
    epoch: int = 0


class NodeApplication:
    """Drives the ledger, batching and attestations from committed blocks (module docstring)."""

    def __init__(self, settings: AppSettings, chain: ChainAccess, ledger: Ledger, anchor_index: AnchorIndex,
                 *, on_own_attestation: Callable[[bytes], None], on_own_committed: Callable[[bytes], None],
                 on_quorum: Callable[[Quorum], None]) -> None:
        self.settings = settings
        self.chain = chain
        self.ledger = ledger
        self.anchor_index = anchor_index
        self.batcher = BatchBuilder(settings.batch_policy, BuilderState(next_batch_id=0, next_height=1))
        self.book = AttestationBook(settings.validators, settings.anchor_domain, settings.escrow_domain)
        self.vouches = VouchCache(ingress_domain(settings.anchor_domain))
        self.on_own_attestation = on_own_attestation
        self.on_own_committed = on_own_committed
        self.on_quorum = on_quorum
        self.validators: tuple[bytes, ...] = tuple(sorted(settings.validators))
        self.epoch = settings.epoch
        self.on_validators_changed: Callable[[tuple[bytes, ...], dict[bytes, bytes]], None] | None = None
        self._set_change: tuple[int, ValidatorSet, dict[bytes, bytes]] | None = None
        self.snapshot_path: Path | None = None
        self.results: OrderedDict[bytes, tuple[int, EventResult]] = OrderedDict()
        self.by_message: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self.last_eth_block = 0
        self.counters: dict[str, int] = {"blocks": 0, "events": 0, "attestations_counted": 0,
                                         "attestations_ignored": 0, "batches_closed": 0, "quorums": 0}

    # ---------------------------------------------------------------- proposing

    def propose_app_header(self, height: int) -> bytes:
        """Name the Ethereum block for this height's reads: head - confirmations, monotonic."""
        head = self.chain.head()
        number = max(self.last_eth_block, head - self.settings.confirmations, 0)
        return encode_app_header(number, self.chain.block_hash(number))

    # ---------------------------------------------------------------- validating

    def validate_block(self, block: Block) -> bool:
        """Deterministic checks plus: the named Ethereum block exists with that hash here."""
        try:
            number, eth_hash = decode_app_header(block.app_header)
            parts = split_payloads(block.payloads)
        except ValueError as exc:
            log.warning("block %d rejected: %s", block.height, exc)
            return False
        if block.timestamp_ms > time.time() * 1000 + MAX_FUTURE_DRIFT_MS:
            log.warning("block %d rejected: its time is more than %d s ahead of this node's clock",
                        block.height, MAX_FUTURE_DRIFT_MS // 1000)
            return False
        if number < self.last_eth_block:
            log.warning("block %d rejected: Ethereum read block %d is behind %d", block.height, number,
                        self.last_eth_block)
            return False
        if (number > self.chain.head() and number > self.chain.head(max_age_s=0)) \
                or self.chain.block_hash(number) != eth_hash:
            log.warning("block %d rejected: Ethereum block %d unknown here or hash differs", block.height, number)
            return False
        for attestation in parts.attestations:
            problem = self._attestation_problem(attestation)
            if problem is not None:
                log.warning("block %d rejected: %s", block.height, problem)
                return False
        for event in parts.events:
            problem = self.vouches.problem(event, self.validators)
            if problem is not None:
                log.warning("block %d rejected: event 0x%s: %s", block.height, event.event_id.hex(), problem)
                return False
        context = BlockContext(block.height, block.timestamp_ms, number, eth_hash)
        problem = self.ledger.check_block(context, parts.events)
        if problem is not None:
            log.warning("block %d rejected by the ledger: %s", block.height, problem)
            return False
        return True

    def _attestation_problem(self, attestation: Attestation) -> str | None:
        """Why an attestation can never count now (non-validator signer, bad signature), or None."""
        if attestation.signer not in self.validators:
            return f"attestation from non-validator 0x{attestation.signer.hex()}"
        domain = (self.settings.anchor_domain if isinstance(attestation.subject, AnchorBatch)
                  else self.settings.escrow_domain)
        try:
            attestation.verify(domain)
        except AttestationError as exc:
            return str(exc)
        return None

    def check_payload(self, payload: bytes) -> bool:
        """Mempool admission: a canonical ChargerEvent, or a validator's well-signed attestation."""
        try:
            parts = split_payloads((payload,))
        except ValueError:
            return False
        return all(self._attestation_problem(a) is None for a in parts.attestations) \
            and all(self.vouches.problem(e, self.validators) is None for e in parts.events)

    # ---------------------------------------------------------------- applying

    def apply_block(self, block: Block, certificate: CommitCertificate) -> bytes:
        """Apply a committed block (see the module docstring); returns the ledger state hash."""
        if self._set_change is not None and self._set_change[0] < block.height:
            self._set_change = None  # consumed by validator_update, or a replay that does not ask
        previous = block.height - 1
        if self.snapshot_path is not None and previous > 0 and previous % SNAPSHOT_EVERY_BLOCKS == 0:
            # The state after `previous`, whose commit (validator set changes included) is done.
            self.write_snapshot(previous, block.prev_block_hash)
        number, eth_hash = decode_app_header(block.app_header)
        parts = split_payloads(block.payloads)
        context = BlockContext(block.height, block.timestamp_ms, number, eth_hash)
        self._await_chain_block(number, eth_hash)
        try:
            outcome = self.ledger.apply_block(context, self.chain.view_at(number), parts.events)
        except BlockRejected as exc:  # validated before commit: reaching this is a bug
            raise AssertionError(f"committed block {block.height} rejected by the ledger: {exc}") from exc
        self.last_eth_block = number
        for result in outcome.results:
            self.results[result.event_id] = (block.height, result)
        for event in parts.events:
            self.by_message.setdefault((event.charger_id, event.message_id), event.event_id)
        while len(self.results) > MAX_REMEMBERED_RESULTS:
            self.results.popitem(last=False)
        while len(self.by_message) > MAX_REMEMBERED_RESULTS:
            self.by_message.popitem(last=False)
        event_ids = tuple(event.event_id for event in parts.events)
        self.anchor_index.record_block(block.height, event_ids)
        closed = self.batcher.on_block(BatchBlock(block.height, block.timestamp_ms, event_ids))
        if closed is not None:
            batch, _ = closed
            self.anchor_index.record_batch(batch)
            self.counters["batches_closed"] += 1
            self._expect_and_sign(batch)
        for order in outcome.settlements:
            self._expect_and_sign(Settlement(order.session_id, order.energy_wh, order.amount))
        for attestation in parts.attestations:
            if attestation.signer == self.settings.key.address:
                self.on_own_committed(attestation.encode())
            try:
                quorum = self.book.on_committed(attestation, block.height)
            except AttestationError:
                self.counters["attestations_ignored"] += 1  # late, repeated or for a closed subject
                continue
            self.counters["attestations_counted"] += 1
            if quorum is not None:
                self.counters["quorums"] += 1
                if isinstance(quorum.subject, AnchorBatch):
                    self.anchor_index.record_quorum(quorum.subject.batch_id, block.height)
                self.on_quorum(quorum)
        self._follow_validator_set(block.height, number)
        self.counters["blocks"] += 1
        self.counters["events"] += len(parts.events)
        return outcome.state_hash

    def _follow_validator_set(self, height: int, eth_block: int) -> None:
        """An epoch change on chain at the block's Ethereum read block takes effect here.

        Deterministic: every node reads the ValidatorSet at the same agreed Ethereum block.
        Consensus switches sets two heights later (`validator_update`); attestations switch
        now, carrying over open subjects (and signing them if this node just joined).
        """
        epoch, addresses, bindings = self.chain.validators_at(eth_block)
        if epoch == self.epoch:
            return
        assert epoch > self.epoch, f"the ValidatorSet epoch went back from {self.epoch} to {epoch}"
        log.info("validator set epoch %d -> %d at height %d: %d validators", self.epoch, epoch, height,
                 len(addresses))
        me = self.settings.key.address
        joined = me in addresses and me not in self.validators
        self.epoch, self.validators = epoch, addresses
        self._set_change = (height, ValidatorSet.equal(list(addresses), epoch), bindings)
        self.book, quorums = self.book.rebased(addresses, height)
        for quorum in quorums:
            self.counters["quorums"] += 1
            self.on_quorum(quorum)
        if joined:
            for subject in self.book.open_subjects():
                self._sign(subject)
        if self.on_validators_changed is not None:
            self.on_validators_changed(addresses, bindings)

    def validator_update(self, height: int) -> tuple[ValidatorSet, dict[bytes, bytes]] | None:
        """The consensus hook: the new set if committing `height` changed the epoch."""
        change = self._set_change
        if change is None or change[0] != height:
            return None
        self._set_change = None
        return change[1], change[2]

    def _await_chain_block(self, number: int, eth_hash: bytes) -> None:
        """Block until our RPC has the committed block's Ethereum block, with that hash.

        A node that did not validate this block (catch-up) may have an RPC that lags or sits
        on another fork; reading state there would diverge from the network. Gives up (the
        node exits and restarts from its snapshot) after the chain view's outage limit.
        """
        attempts = [0]

        def check() -> None:
            fresh = attempts[0] > 0  # a remembered hash may predate a reorg: re-read on retries
            attempts[0] += 1
            if self.chain.head(max_age_s=0) < number or self.chain.block_hash(number, fresh=fresh) != eth_hash:
                raise ChainReadError(f"Ethereum block {number} with hash 0x{eth_hash.hex()} not on our RPC yet")

        patiently(f"waiting for Ethereum block {number}", check)

    def _expect_and_sign(self, subject: AnchorBatch | Settlement) -> None:
        try:
            self.book.expect(subject)
        except (OverflowError, ValueError) as exc:  # every node fails alike; never halt the chain
            self.counters["subjects_refused"] = self.counters.get("subjects_refused", 0) + 1
            log.error("cannot collect attestations for %s: %s", subject, exc)
            return
        if self.settings.key.address in self.validators:
            self._sign(subject)

    def _sign(self, subject: AnchorBatch | Settlement) -> None:
        domain = self.settings.anchor_domain if isinstance(subject, AnchorBatch) else self.settings.escrow_domain
        self.on_own_attestation(attest(subject, self.settings.key, domain).encode())

    # ---------------------------------------------------------------- snapshots

    def write_snapshot(self, height: int, block_hash: bytes) -> None:
        """Persist the application state after `height` (atomically: temp file + rename)."""
        assert self.snapshot_path is not None
        pending, completed = self.book.export_state()
        batcher = self.batcher.state
        data = msgpack.packb([
            SNAPSHOT_FORMAT, height, block_hash, self.ledger.state_hash(), self.ledger.to_bytes(),
            self.last_eth_block, self.epoch, list(self.validators),
            [batcher.next_batch_id, batcher.next_height, batcher.last_close_ms],
            [[_subject_fields(subject), [[a, sig] for a, sig in signatures.items()]] for subject, signatures in pending],
            completed,
        ], use_bin_type=True)
        temporary = self.snapshot_path.with_name(self.snapshot_path.name + ".tmp")
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.snapshot_path)
        self.counters["snapshots"] = self.counters.get("snapshots", 0) + 1

    def restore(self, last_height: int, get_block: Any) -> tuple[int, bytes] | None:
        """Load the latest snapshot at or below `last_height` that matches the block store.

        Returns (snapshot height, ledger state hash) — the caller replays later blocks — or
        None (no usable snapshot: replay from genesis). `get_block(h)` reads the block store.
        """
        if self.snapshot_path is None or not self.snapshot_path.is_file():
            return None
        try:
            (version, height, block_hash, state_hash, ledger_bytes, last_eth_block, epoch, validators,
             batcher, pending, completed) = msgpack.unpackb(self.snapshot_path.read_bytes(), raw=False)
            if version != SNAPSHOT_FORMAT or not 0 < height <= last_height:
                raise ValueError(f"snapshot format {version} at height {height} does not fit the store")
            committed: CommittedBlock | None = get_block(height)
            if committed is None or committed.block.hash != block_hash:
                raise ValueError(f"snapshot block {height} is not the stored block")
            ledger = Ledger.from_bytes(ledger_bytes)
        except (SnapshotError, ValueError, TypeError, OSError) as exc:
            log.warning("ignoring the application snapshot (%s); replaying from genesis", exc)
            return None
        assert ledger.state_hash() == state_hash, "a snapshot's ledger must hash as recorded"
        self.ledger, self.last_eth_block, self.epoch = ledger, last_eth_block, epoch
        self.validators = tuple(validators)
        self.book = AttestationBook(self.validators, self.settings.anchor_domain, self.settings.escrow_domain)
        self.book.import_state([(_subject_from_fields(f), dict((a, sig) for a, sig in sigs)) for f, sigs in pending],
                               [bytes(k) if isinstance(k, bytes) else k for k in completed])
        self.batcher = BatchBuilder(self.settings.batch_policy, BuilderState(*batcher))
        for h in range(batcher[1], height + 1):  # rebuild the open batch from stored blocks
            stored = get_block(h)
            assert stored is not None, f"block store misses height {h}"
            ids = tuple(event.event_id for event in split_payloads(stored.block.payloads).events)
            assert self.batcher.on_block(BatchBlock(h, stored.block.timestamp_ms, ids)) is None
        me = self.settings.key.address
        if me in self.validators:
            for subject in self.book.open_subjects():
                if me not in self.book.signers_of(subject):
                    self._sign(subject)  # our attestation may not have been committed before the stop
        log.info("application restored from the snapshot at height %d", height)
        return height, state_hash

    def event_for_message(self, charger_id: str, message_id: str) -> bytes | None:
        """The id of the first committed event carrying this charger message, while remembered."""
        return self.by_message.get((charger_id, message_id))

    def result_for(self, event_id: bytes) -> tuple[int, EventResult] | None:
        """(height, result) of a committed event, while remembered."""
        return self.results.get(event_id)


def _subject_fields(subject: AnchorBatch | Settlement) -> list[Any]:
    if isinstance(subject, AnchorBatch):
        return [0, subject.batch_id, subject.root, subject.first_height, subject.last_height, subject.event_count]
    return [1, subject.session_id, subject.energy_wh, subject.amount.to_bytes(32, "big")]


def _subject_from_fields(fields: list[Any]) -> AnchorBatch | Settlement:
    if fields[0] == 0:
        return AnchorBatch(*fields[1:])
    return Settlement(fields[1], fields[2], int.from_bytes(fields[3], "big"))
