"""Anchor batches and attestation quorums as pure functions of committed blocks (sans-I/O).

`BatchBuilder` is fed every committed block in height order and says when a batch closes:
after `every_blocks` blocks, after `every_ms` of *block* time since the previous batch
closed, or once it holds `max_events` events, whichever comes first. Every node feeds the
same blocks, so every node closes the same batches with the same roots, without a clock.

`AttestationBook` is fed the attestations committed in blocks (in block order) and says
when an anchor batch, a settlement batch or a reward distribution has a quorum of valid signatures; every node reaches
the same quorum, with the same signature set, at the same height.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from anchoring.attestations import (
    MAX_SETTLEMENT_BATCH,
    AnchorBatch,
    Attestation,
    AttestationError,
    Settlement,
    SettlementBatch,
    Subject,
)
from anchoring.merkle import HASH_BYTES, MAX_LEAVES, MerkleTree
from anchoring.rewards import RewardSubject
from consensus.signing import quorum_size
from primitives.eip712 import Domain

MAX_OPEN_SUBJECTS = 4096  # batches and settlements waiting for a quorum, per kind


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """When a batch closes: K blocks, T ms of block time, or an event count, first reached."""

    every_blocks: int = 20
    every_ms: int = 30_000
    max_events: int = 100_000
    close_empty: bool = False  # False: a batch without events stays open (no gas for nothing)

    def __post_init__(self) -> None:
        assert self.every_blocks >= 1 and self.every_ms >= 1
        assert 1 <= self.max_events <= MAX_LEAVES // 2


@dataclass(frozen=True, slots=True)
class CommittedBlock:
    """What batching needs of a committed block: height, block time and event ids in order."""

    height: int
    timestamp_ms: int
    event_ids: tuple[bytes, ...]

    def __post_init__(self) -> None:
        assert self.height >= 0 and self.timestamp_ms >= 0
        assert all(len(e) == HASH_BYTES for e in self.event_ids)


@dataclass(frozen=True, slots=True)
class BuilderState:
    """Where batching stands after the last closed batch; enough to resume after a restart.

    Resume by building `BatchBuilder(policy, state)` and feeding the committed blocks from
    `next_height` on again.
    """

    next_batch_id: int
    next_height: int
    last_close_ms: int | None = None  # block time of the block that closed the previous batch


@dataclass(slots=True)
class _OpenBatch:
    first_height: int
    opened_ms: int
    event_ids: list[bytes] = field(default_factory=list)
    seen: set[bytes] = field(default_factory=set)


class BatchBuilder:
    """Cuts committed blocks into contiguous, sequentially numbered anchor batches."""

    def __init__(self, policy: BatchPolicy, state: BuilderState) -> None:
        self.policy = policy
        self._next_batch_id = state.next_batch_id
        self._next_height = state.next_height
        self._last_close_ms = state.last_close_ms
        self._open: _OpenBatch | None = None

    @property
    def state(self) -> BuilderState:
        """The resume point: replaying blocks from `next_height` rebuilds the open batch."""
        open_first = self._open.first_height if self._open else self._next_height
        return BuilderState(self._next_batch_id, open_first, self._last_close_ms)

    def on_block(self, block: CommittedBlock) -> tuple[AnchorBatch, tuple[bytes, ...]] | None:
        """Take the next committed block; return (batch, its event ids) if it closes a batch."""
        if block.height != self._next_height:
            raise ValueError(f"expected block {self._next_height}, got {block.height}")
        self._next_height += 1
        if self._open is None:
            opened = self._last_close_ms if self._last_close_ms is not None else block.timestamp_ms
            self._open = _OpenBatch(block.height, opened)
        batch = self._open
        for event_id in block.event_ids:
            if event_id not in batch.seen:  # an event id appears once in a batch (MERKLE.md)
                batch.seen.add(event_id)
                batch.event_ids.append(event_id)
        if not self._should_close(batch, block):
            return None
        tree = MerkleTree(batch.event_ids)
        closed = AnchorBatch(self._next_batch_id, tree.root, batch.first_height, block.height, len(tree))
        self._next_batch_id += 1
        self._last_close_ms = block.timestamp_ms
        self._open = None
        return closed, tuple(batch.event_ids)

    def close_due_ms(self) -> int | None:
        """Block time by which a block must come to close the open batch by time, or None
        (nothing waits to be anchored). An idle network makes no blocks by itself: the node
        asks consensus for one at this time so every event is anchored within `every_ms`."""
        batch = self._open
        if batch is None or (not batch.event_ids and not self.policy.close_empty):
            return None
        return batch.opened_ms + self.policy.every_ms

    def _should_close(self, batch: _OpenBatch, block: CommittedBlock) -> bool:
        policy = self.policy
        if not batch.event_ids and not policy.close_empty:
            return False
        return (
            block.height - batch.first_height + 1 >= policy.every_blocks
            or block.timestamp_ms - batch.opened_ms >= policy.every_ms
            or len(batch.event_ids) >= policy.max_events
        )


def batch_event_ids(blocks: Sequence[CommittedBlock]) -> list[bytes]:
    """The leaves' event ids of a batch over `blocks`: block order, first occurrence only."""
    seen: set[bytes] = set()
    out: list[bytes] = []
    for block in blocks:
        for event_id in block.event_ids:
            if event_id not in seen:
                seen.add(event_id)
                out.append(event_id)
    return out


# Settlement windows: the settlement orders the ledger made at heights (h - every, h] are signed
# as settlement batches at the height h that is a multiple of `every` (the window's last block),
# cut into chunks of MAX_SETTLEMENT_BATCH. Batch ids: h * MAX_SETTLEMENT_CHUNKS + chunk index.
MAX_SETTLEMENT_CHUNKS = 64  # 64 x 256 > the ledger's 10,000 pending settlement orders


def settlement_window_closes(height: int, every: int) -> bool:
    """True if the block at `height` is the last of a settlement window of `every` blocks."""
    return height > 0 and height % every == 0


def settlement_batches(last_height: int, entries: Sequence[Settlement]) -> list[SettlementBatch]:
    """The settlement batches of the window ending at `last_height`, in order; deterministic in
    its inputs. Entries beyond MAX_SETTLEMENT_CHUNKS chunks raise ValueError (the ledger's
    pending-settlement bound keeps them below it)."""
    chunks = [entries[i:i + MAX_SETTLEMENT_BATCH] for i in range(0, len(entries), MAX_SETTLEMENT_BATCH)]
    if len(chunks) > MAX_SETTLEMENT_CHUNKS:
        raise ValueError(f"{len(entries)} settlements in one window, at most "
                         f"{MAX_SETTLEMENT_CHUNKS * MAX_SETTLEMENT_BATCH}")
    return [SettlementBatch.of(last_height * MAX_SETTLEMENT_CHUNKS + i, chunk) for i, chunk in enumerate(chunks)]


@dataclass(frozen=True, slots=True)
class Quorum:
    """A subject with a quorum of signatures, ordered by signer address ascending."""

    subject: Subject
    signers: tuple[bytes, ...]
    signatures: tuple[bytes, ...]
    height: int  # the block height at which the quorum was committed


def submitter_order(validators: Sequence[bytes], subject: Subject) -> list[bytes]:
    """Who submits `subject`: the validator at (batchId mod n), then the next ones, in turn.

    Settlement batches start at (settlementsHash as an integer mod n), reward parts at (epoch + part
    mod n). `validators` is sorted here.
    """
    ordered = sorted(validators)
    assert ordered, "a validator set is never empty"
    if isinstance(subject, AnchorBatch):
        start = subject.batch_id % len(ordered)
    elif isinstance(subject, RewardSubject):
        start = (subject.epoch + subject.part) % len(ordered)
    else:
        start = int.from_bytes(subject.settlements_hash, "big") % len(ordered)
    return ordered[start:] + ordered[:start]


@dataclass(slots=True)
class _Pending:
    subject: Subject
    signatures: dict[bytes, bytes] = field(default_factory=dict)  # signer -> signature, commit order


# A completed subject re-opened at an epoch change (its quorum was formed by the old set and
# the contracts check the set in force) waits this many heights for the new set's signatures;
# then it goes back to completed with its old quorum (it had landed, so nobody re-signed it).
RECOLLECT_WINDOW_BLOCKS = 1_000


class AttestationBook:
    """Collects committed attestations for the batches and settlements this node expects.

    Only attestations that match the node's own subject exactly, come from a validator
    and carry a valid signature count; the first quorum in commit order is the result.
    The last MAX_OPEN_SUBJECTS quorums are kept, so that an epoch change can have them
    re-collected from the new set (`rebased`).
    """

    def __init__(self, validators: Sequence[bytes], anchor_domain: Domain, escrow_domain: Domain,
                 rewards_domain: Domain | None = None) -> None:
        if not validators or len(set(validators)) != len(validators):
            raise ValueError("the validator set must be non-empty and without duplicates")
        self.validators = frozenset(validators)
        self.quorum = quorum_size(len(validators))
        self.anchor_domain = anchor_domain
        self.escrow_domain = escrow_domain
        self.rewards_domain = rewards_domain  # None: the network has no Rewards contract
        self._batches: OrderedDict[int, _Pending] = OrderedDict()
        self._settlements: OrderedDict[bytes, _Pending] = OrderedDict()  # b"settle:" + batchId (8 bytes)
        self._rewards: OrderedDict[bytes, _Pending] = OrderedDict()  # b"reward:" + epoch (8 bytes) + part (4)
        self._completed: OrderedDict[int | bytes, Quorum] = OrderedDict()  # recent quorums, bounded
        # re-opened at an epoch change: key -> (quorum of the old set, height the wait ends)
        self._reopened: dict[int | bytes, tuple[Quorum, int]] = {}
        self._first_expiry: int | None = None  # no re-opened wait ends before this height

    def rebased(self, validators: Sequence[bytes], height: int) -> tuple[AttestationBook, list[Quorum]]:
        """This book for a new validator set (an epoch change committed at `height`).

        Open subjects carry over with the signatures of signers still in the set. Completed
        subjects whose quorum is not a quorum of the new set are re-opened the same way (the
        Anchor and Escrow contracts check the set in force when a transaction runs, so an
        unsubmitted old quorum could never land) for RECOLLECT_WINDOW_BLOCKS heights. Every
        subject that reaches the new quorum with the carried signatures comes back as a Quorum.
        """
        book = AttestationBook(validators, self.anchor_domain, self.escrow_domain, self.rewards_domain)
        quorums: list[Quorum] = []
        for pending in [*self._batches.values(), *self._settlements.values(), *self._rewards.values()]:
            old = self._reopened.get(self._table(pending.subject)[1])
            quorum = book._carry(pending.subject, pending.signatures, height,
                                 None if old is None else (old[0], height + RECOLLECT_WINDOW_BLOCKS))
            if quorum is not None:
                quorums.append(quorum)
        for key, done in self._completed.items():
            if set(done.signers) <= book.validators and len(done.signers) >= book.quorum:
                book._completed[key] = done  # still a quorum of the new set: nothing to do
                continue
            signatures = dict(zip(done.signers, done.signatures, strict=True))
            quorum = book._carry(done.subject, signatures, height, (done, height + RECOLLECT_WINDOW_BLOCKS))
            if quorum is not None:
                quorums.append(quorum)
        book._bound_completed()
        return book, quorums

    def _carry(self, subject: Subject, signatures: dict[bytes, bytes], height: int,
               reopened: tuple[Quorum, int] | None) -> Quorum | None:
        """Open `subject` here with the (already verified) signatures of signers in this set."""
        table, key = self._table(subject)
        table[key] = _Pending(subject, {s: sig for s, sig in signatures.items() if s in self.validators})
        if reopened is not None:
            self._reopened[key] = reopened
            self._first_expiry = min(reopened[1], self._first_expiry or reopened[1])
        return self._complete_if_quorum(table, key, height)

    def expire(self, height: int) -> None:
        """Re-opened subjects whose wait ended by `height` go back to completed with their old
        quorum (deterministic: call it once per committed height, on every node alike)."""
        if self._first_expiry is None or height < self._first_expiry:
            return
        for key, (done, until) in list(self._reopened.items()):
            if until <= height:
                table, _ = self._table(done.subject)
                table.pop(key, None)
                del self._reopened[key]
                self._completed[key] = done
        self._first_expiry = min((until for _, until in self._reopened.values()), default=None)
        self._bound_completed()

    def reopened(self, subject: Subject) -> bool:
        """True if `subject` waits for the new set's signatures after an epoch change."""
        return self._table(subject)[1] in self._reopened

    def export_state(self) -> tuple[list[tuple[Subject, dict[bytes, bytes]]], list[Quorum],
                                    list[tuple[Quorum, int]]]:
        """(open subjects with the signatures counted so far, recent quorums, re-opened subjects'
        old quorums with the height their wait ends): for snapshots."""
        pending = [(p.subject, dict(p.signatures))
                   for p in [*self._batches.values(), *self._settlements.values(), *self._rewards.values()]]
        return pending, list(self._completed.values()), list(self._reopened.values())

    def import_state(self, pending: Sequence[tuple[Subject, dict[bytes, bytes]]],
                     completed: Sequence[Quorum], reopened: Sequence[tuple[Quorum, int]] = ()) -> None:
        """Restore what `export_state` returned into an empty book (signatures are re-verified);
        `reopened` pairs each re-opened key's old quorum with the height its wait ends."""
        assert not self._batches and not self._settlements and not self._rewards, "import into an empty book"
        self._completed = OrderedDict((self._table(q.subject)[1], q) for q in completed)
        self._reopened = {self._table(q.subject)[1]: (q, until) for q, until in reopened}
        self._first_expiry = min((until for _, until in self._reopened.values()), default=None)
        for subject, signatures in pending:
            table, key = self._table(subject)
            if key in table:
                raise ValueError(f"subject {key!r} appears twice")
            table[key] = _Pending(subject)
            for signer, signature in signatures.items():
                self.check(Attestation(subject, signer, signature))
                table[key].signatures[signer] = signature

    def completed_quorums(self) -> list[Quorum]:
        """The recent quorums, oldest first (a restarted node hands them to its submitter again)."""
        return list(self._completed.values())

    def open_subjects(self) -> list[Subject]:
        """Subjects still waiting for a quorum, batches first, oldest first."""
        return [p.subject for p in [*self._batches.values(), *self._settlements.values(), *self._rewards.values()]]

    def expect(self, subject: Subject) -> None:
        """Register a batch this node closed, a settlement batch or a reward distribution its ledger produced."""
        table, key = self._table(subject)
        if key in table:
            if table[key].subject != subject:
                raise ValueError(f"a different subject is already expected under {key!r}")
            return
        if len(table) - sum(1 for k in self._reopened if k in table) >= MAX_OPEN_SUBJECTS:
            raise OverflowError(f"{MAX_OPEN_SUBJECTS} subjects already wait for a quorum")
        table[key] = _Pending(subject)

    def pending_count(self) -> int:
        """Subjects still waiting for a quorum."""
        return len(self._batches) + len(self._settlements) + len(self._rewards)

    def signers_of(self, subject: Subject) -> frozenset[bytes]:
        """Validators whose attestation for the open `subject` has been counted."""
        table, key = self._table(subject)
        pending = table.get(key)
        return frozenset(pending.signatures) if pending is not None else frozenset()

    def check(self, attestation: Attestation) -> None:
        """Raise AttestationError unless `attestation` would count (for mempool admission too)."""
        table, key = self._table(attestation.subject)
        pending = table.get(key)
        if pending is None:
            raise AttestationError(f"no open subject {key!r} (unknown, or its quorum is complete)")
        if pending.subject != attestation.subject:
            raise AttestationError(f"attestation for {key!r} signs different terms than this node's")
        if attestation.signer not in self.validators:
            raise AttestationError(f"0x{attestation.signer.hex()} is not a validator")
        domain = self.anchor_domain if isinstance(attestation.subject, AnchorBatch) else self.escrow_domain
        if isinstance(attestation.subject, RewardSubject):
            if self.rewards_domain is None:
                raise AttestationError("this network has no Rewards contract")
            domain = self.rewards_domain
        attestation.verify(domain)

    def on_committed(self, attestation: Attestation, height: int) -> Quorum | None:
        """Count a committed attestation; return the Quorum the first time one is reached.

        Attestations that repeat a signer or arrive after the quorum are ignored quietly;
        others that do not count (see `check`) raise AttestationError, which every node
        raises the same way, so the caller just logs it.
        """
        table, key = self._table(attestation.subject)
        if key in self._completed:
            return None
        self.check(attestation)
        pending = table[key]
        if attestation.signer in pending.signatures:
            return None
        pending.signatures[attestation.signer] = attestation.signature
        return self._complete_if_quorum(table, key, height)

    def _complete_if_quorum(self, table: OrderedDict[Any, Any], key: int | bytes, height: int) -> Quorum | None:
        pending = table[key]
        if len(pending.signatures) < self.quorum:
            return None
        del table[key]
        self._reopened.pop(key, None)
        # the first `quorum` signers in commit order (carried ones first): the same on every node
        chosen = list(pending.signatures)[:self.quorum]
        signers = tuple(sorted(chosen))
        quorum = Quorum(pending.subject, signers, tuple(pending.signatures[s] for s in signers), height)
        self._completed[key] = quorum
        self._bound_completed()
        return quorum

    def _bound_completed(self) -> None:
        while len(self._completed) > MAX_OPEN_SUBJECTS:
            self._completed.popitem(last=False)

    def _table(self, subject: Subject) -> tuple[OrderedDict[Any, _Pending], int | bytes]:
        if isinstance(subject, AnchorBatch):
            return self._batches, subject.batch_id
        if isinstance(subject, RewardSubject):
            return self._rewards, b"reward:" + subject.epoch.to_bytes(8, "big") + subject.part.to_bytes(4, "big")
        return self._settlements, b"settle:" + subject.batch_id.to_bytes(8, "big")
