"""The application state beside the ledger, its snapshot encoding and its digest in the app hash.

A node's application state is the ledger (devsen/ledger) plus what the node derives from the
same blocks beside it: the last agreed Ethereum block, the epoch and validator set, the anchor
batch builder's position and the open batch's blocks, and the attestation book (open subjects
with the signatures counted so far in commit order, recent quorums, re-opened subjects). All of
it is deterministic, so all of it is certified: the app hash every block header carries is

    app_hash = keccak256(ledger.state_hash() || BesideLedgerDigest.digest(...))

A snapshot whose beside-ledger part was doctored (a forged open-batch event, a counted
signature nobody sent, another validator set) thus hashes to another app hash and is refused
by a joining node, like a doctored ledger.

The digest is keccak256 of msgpack `[1, last_eth_block, epoch, validators, [next_batch_id,
next_height, last_close_ms], pending, completed, reopened, open_blocks]` where each open
subject, quorum and open-batch block is replaced by the keccak256 of its msgpack encoding.
`BesideLedgerDigest` remembers those item hashes between blocks (most items do not change from
one block to the next): about 1 ms a block with 4,000 recent quorums instead of 40 ms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from anchoring.attestations import AnchorBatch, Settlement, SettlementBatch, Subject
from anchoring.batches import BuilderState, Quorum
from anchoring.rewards import RewardSubject
from primitives.hashing import keccak256

DIGEST_VERSION = 1

OpenBlock = tuple[int, int, tuple[bytes, ...]]  # (height, time ms, event ids) of the open anchor batch
Pending = tuple[Subject, dict[bytes, bytes]]  # an open subject and its signatures, commit order


def app_state_hash(ledger_hash: bytes, beside_digest: bytes) -> bytes:
    """The app hash a block header certifies: the ledger's hash and the beside-ledger digest."""
    assert len(ledger_hash) == 32 and len(beside_digest) == 32
    return keccak256(ledger_hash + beside_digest)


@dataclass(frozen=True, slots=True)
class BesideLedger:
    """The state beside the ledger, as a snapshot carries it."""

    last_eth_block: int
    epoch: int
    validators: tuple[bytes, ...]
    batcher: BuilderState
    pending: list[Pending]
    completed: list[Quorum]
    reopened: list[tuple[Quorum, int]]
    open_blocks: tuple[OpenBlock, ...]

    def encode(self) -> bytes:
        data: bytes = msgpack.packb([
            self.last_eth_block, self.epoch, list(self.validators),
            [self.batcher.next_batch_id, self.batcher.next_height, self.batcher.last_close_ms],
            [_pending_fields(p) for p in self.pending],
            [quorum_fields(q) for q in self.completed],
            [[quorum_fields(q), until] for q, until in self.reopened],
            [[h, t, list(ids)] for h, t, ids in self.open_blocks],
        ], use_bin_type=True)
        return data

    @classmethod
    def decode(cls, data: bytes) -> BesideLedger:
        """Raises ValueError for anything malformed (shapes, bounds, lengths)."""
        try:
            (last_eth_block, epoch, validators, batcher, pending, completed, reopened,
             open_blocks) = msgpack.unpackb(data, raw=False)
            ints = (last_eth_block, epoch, batcher[0], batcher[1])
            if not all(type(i) is int and 0 <= i < 2**63 for i in ints) or len(batcher) != 3 \
                    or not (batcher[2] is None or type(batcher[2]) is int):
                raise ValueError("integers out of bounds")
            if not validators or not all(isinstance(a, bytes) and len(a) == 20 for a in validators):
                raise ValueError("validator addresses malformed")
            return cls(
                last_eth_block, epoch, tuple(validators), BuilderState(*batcher),
                [(subject_from_fields(f), {bytes(a): bytes(sig) for a, sig in sigs}) for f, sigs in pending],
                [quorum_from_fields(q) for q in completed],
                [(quorum_from_fields(q), int(until)) for q, until in reopened],
                tuple((int(h), int(t), tuple(bytes(i) for i in ids)) for h, t, ids in open_blocks))
        except ValueError as exc:
            raise ValueError(f"the beside-ledger state is malformed: {exc}") from exc
        except Exception as exc:  # wrong shapes of every kind: one refusal
            raise ValueError(f"the beside-ledger state is malformed: {exc!r}") from exc


class BesideLedgerDigest:
    """The digest of the state beside the ledger, remembering each item's hash between calls.

    Items are remembered by identity (the book's quorums, subjects and the open-batch block
    tuples are immutable and live until they leave the state); each call keeps only the items
    of the state it was given, so memory follows the state."""

    def __init__(self) -> None:
        self._items: dict[int, tuple[object, bytes]] = {}

    def digest(self, last_eth_block: int, epoch: int, validators: Sequence[bytes], batcher: BuilderState,
               pending: Sequence[Pending], completed: Sequence[Quorum],
               reopened: Sequence[tuple[Quorum, int]], open_blocks: Sequence[OpenBlock]) -> bytes:
        seen: dict[int, tuple[object, bytes]] = {}
        item = self._item_hash
        data = msgpack.packb([
            DIGEST_VERSION, last_eth_block, epoch, list(validators),
            [batcher.next_batch_id, batcher.next_height, batcher.last_close_ms],
            [[item(subject, seen, subject_fields), [[a, sig] for a, sig in signatures.items()]]
             for subject, signatures in pending],
            [item(q, seen, quorum_fields) for q in completed],
            [[item(q, seen, quorum_fields), until] for q, until in reopened],
            [item(block, seen, list) for block in open_blocks],
        ], use_bin_type=True)
        self._items = seen
        return keccak256(data)

    def of(self, state: BesideLedger) -> bytes:
        """The digest of a decoded snapshot's beside-ledger part."""
        return self.digest(state.last_eth_block, state.epoch, state.validators, state.batcher, state.pending,
                           state.completed, state.reopened, state.open_blocks)

    def _item_hash(self, value: Any, seen: dict[int, tuple[object, bytes]], fields: Any) -> bytes:
        known = self._items.get(id(value)) or seen.get(id(value))
        if known is not None and known[0] is value:
            seen[id(value)] = known
            return known[1]
        digest = keccak256(msgpack.packb(fields(value), use_bin_type=True))
        seen[id(value)] = (value, digest)
        return digest


def _pending_fields(pending: Pending) -> list[Any]:
    subject, signatures = pending
    return [subject_fields(subject), [[a, sig] for a, sig in signatures.items()]]


def subject_fields(subject: Subject) -> list[Any]:
    """A subject (anchor batch, settlement batch, reward part) as msgpack-able fields."""
    if isinstance(subject, RewardSubject):
        return [2, subject.epoch, [[owner, amount.to_bytes(32, "big")] for owner, amount in subject.payouts],
                subject.part, subject.parts]
    if isinstance(subject, AnchorBatch):
        return [0, subject.batch_id, subject.root, subject.first_height, subject.last_height, subject.event_count]
    return [1, subject.batch_id, [[e.session_id, e.energy_wh, e.amount.to_bytes(32, "big")] for e in subject.entries]]


def quorum_fields(quorum: Quorum) -> list[Any]:
    return [subject_fields(quorum.subject), list(quorum.signers), list(quorum.signatures), quorum.height]


def quorum_from_fields(fields: list[Any]) -> Quorum:
    subject, signers, signatures, height = fields
    if len(signers) != len(signatures) or not isinstance(height, int):
        raise ValueError("a snapshot quorum needs one signature per signer and an integer height")
    return Quorum(subject_from_fields(subject), tuple(signers), tuple(signatures), height)


def subject_from_fields(fields: list[Any]) -> Subject:
    if fields[0] == 2:
        part, parts = fields[3:5] if len(fields) == 5 else (0, 1)  # snapshots before parts: one part
        return RewardSubject(fields[1], tuple((o, int.from_bytes(a, "big")) for o, a in fields[2]), part, parts)
    if fields[0] == 0:
        return AnchorBatch(*fields[1:])
    return SettlementBatch.of(fields[1], [Settlement(sid, energy, int.from_bytes(amount, "big"))
                                          for sid, energy, amount in fields[2]])
