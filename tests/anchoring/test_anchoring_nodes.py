"""Batching and attestations on several nodes fed the same committed blocks: same batches,
same quorums at the same height, attestations flowing back through blocks, and a restart
that resumes from `AnchorIndex.resume_state` by replaying blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from anchoring_world import KEYS, charger_event

from anchoring.attestations import (
    AnchorBatch,
    Attestation,
    AttestationError,
    Settlement,
    SettlementBatch,
    attest,
    decode_attestation,
    payload_kind,
)
from anchoring.batches import AttestationBook, BatchBuilder, BatchPolicy, BuilderState, Quorum
from anchoring.proofs import AnchorIndex, batch_block
from consensus.types import Block
from primitives.eip712 import ZERO_HASH, Domain, SigningKey

ANCHOR = Domain(31337, b"\xaa" * 20)
ESCROW = Domain(31337, b"\xee" * 20)
POLICY = BatchPolicy(every_blocks=4, every_ms=10**9)
VALIDATORS = [k.address for k in KEYS]


class Node:
    """The anchoring part of a node's block application, as a node wires it (test harness)."""

    def __init__(self, index: AnchorIndex, key: SigningKey | None, state: BuilderState = BuilderState(0, 1)):
        self.index = index
        self.key = key
        self.builder = BatchBuilder(POLICY, state)
        self.book = AttestationBook(VALIDATORS, ANCHOR, ESCROW)
        self.own: dict[AnchorBatch | SettlementBatch, bytes] = {}

    def apply(self, block: Block) -> tuple[AnchorBatch | None, list[Quorum], list[bytes]]:
        quorums = []
        for payload in block.payloads:
            if payload_kind(payload) is not None:
                try:
                    quorum = self.book.on_committed(decode_attestation(payload), block.height)
                except AttestationError:
                    continue  # e.g. for a batch completed before a restart: the node logs it
                if quorum is not None:
                    quorums.append(quorum)
                    self.own.pop(cast("AnchorBatch | SettlementBatch", quorum.subject), None)
                    if isinstance(quorum.subject, AnchorBatch):
                        self.index.record_quorum(quorum.subject.batch_id, block.height)
        summary = batch_block(block)
        self.index.record_block(block.height, summary.event_ids)
        closed = self.builder.on_block(summary)
        to_submit = []
        if closed is not None:
            self.index.record_batch(closed[0])
            to_submit = self.expect(closed[0], ANCHOR)
        return (closed[0] if closed else None), quorums, to_submit

    def expect(self, subject: AnchorBatch | SettlementBatch, domain: Domain) -> list[bytes]:
        self.book.expect(subject)
        if self.key is None:
            return []
        self.own[subject] = attest(subject, self.key, domain).encode()
        return [self.own[subject]]

    def outstanding(self) -> list[bytes]:
        return [p for s, p in self.own.items() if self.key and self.key.address not in self.book.signers_of(s)]


def make_block(height: int, payloads: list[bytes]) -> Block:
    return Block(height, 1_000 * height, KEYS[0].address, ZERO_HASH, ZERO_HASH, tuple(payloads), b"")


def run_chain(nodes: list[Node], heights: range, mempool: list[bytes], blocks: list[Block],
              live: Any=None) -> Any:
    """Commit one block per height: 2 new events plus every payload submitted so far."""
    live = nodes if live is None else live
    rows = []
    for height in heights:
        block = make_block(height, [charger_event(10 * height + i).to_bytes() for i in range(2)] + mempool)
        mempool.clear()
        blocks.append(block)
        row = [node.apply(block) for node in nodes]
        rows.append(row)
        for node, (_, _, to_submit) in zip(nodes, row, strict=True):
            if node in live:
                mempool.extend(to_submit)
    return rows


def test_validators_and_observer_agree_on_batches_and_quorums(tmp_path: Path) -> None:
    nodes = [Node(AnchorIndex(tmp_path / f"v{i}.sqlite"), k) for i, k in enumerate(KEYS)]
    nodes.append(Node(AnchorIndex(tmp_path / "observer.sqlite"), None))
    rows = run_chain(nodes, range(1, 14), [], [])
    closed = [row[0][0] for row in rows if row[0][0]]
    assert [b.batch_id for b in closed] == [0, 1, 2]
    assert all(len({r[0] for r in row}) == 1 for row in rows)  # same batch closed at the same block
    assert all(len({tuple(r[1]) for r in row}) == 1 for row in rows)  # same quorums, same signatures
    quorums = [q for row in rows for q in row[0][1]]
    assert [(q.subject.batch_id, q.height) for q in quorums] == [(0, 5), (1, 9), (2, 13)]
    for q in quorums:
        assert len(q.signatures) == 3 and list(q.signers) == sorted(q.signers)
        for signer, signature in zip(q.signers, q.signatures, strict=True):
            Attestation(q.subject, signer, signature).verify(ANCHOR)
    assert all(node.outstanding() == [] for node in nodes)
    assert nodes[0].index.oldest_batch_without_quorum() is None


def test_settlement_quorum_and_mempool_check(tmp_path: Path) -> None:
    nodes = [Node(AnchorIndex(tmp_path / f"v{i}.sqlite"), k) for i, k in enumerate(KEYS)]
    settlement = SettlementBatch.of(64, [Settlement(b"\x42" * 32, 12_000, 3_600)])
    payloads = [p for node in nodes for p in node.expect(settlement, ESCROW)]
    nodes[0].book.check(decode_attestation(payloads[1]))
    signed = decode_attestation(payloads[1])
    forged = Attestation(SettlementBatch.of(64, [Settlement(b"\x42" * 32, 12_000, 3_601)]), signed.signer,
                         signed.signature)
    with pytest.raises(AttestationError, match="different terms"):
        nodes[0].book.check(forged)
    rows = [node.apply(make_block(1, payloads)) for node in nodes]  # all four: the fourth is late
    assert all([q.subject for q in r[1]] == [settlement] for r in rows)


def test_restart_resumes_from_the_oldest_batch_without_quorum(tmp_path: Path) -> None:
    nodes = [Node(AnchorIndex(tmp_path / f"v{i}.sqlite"), k) for i, k in enumerate(KEYS)]
    blocks: list[Block] = []
    mempool: list[bytes] = []
    run_chain(nodes, range(1, 9), mempool, blocks)  # batch 0 has its quorum; batch 1 closes at 8
    assert cast(AnchorBatch, nodes[3].index.oldest_batch_without_quorum()).batch_id == 1
    # node 3 crashes; its attestation for batch 1 dies with its mempool
    mempool[:] = [p for p in mempool if decode_attestation(p).signer != KEYS[3].address]
    index = AnchorIndex(tmp_path / "v3.sqlite")
    state = index.resume_state(lambda h: blocks[h - 1].timestamp_ms)
    assert state == BuilderState(1, 5, blocks[3].timestamp_ms)
    restarted = Node(index, KEYS[3], state)
    for block in blocks[state.next_height - 1:]:
        restarted.apply(block)  # replay; what it would submit is dropped
    again = restarted.outstanding()
    assert [cast(AnchorBatch, decode_attestation(p).subject).batch_id for p in again] == [1]
    nodes[3] = restarted
    rows = run_chain(nodes, range(9, 10), mempool + again, blocks, live=nodes[:3])
    assert all([q.subject.batch_id for q in r[1]] == [1] for r in rows[0])
    assert index.oldest_batch_without_quorum() is None
    assert index.resume_state(lambda h: blocks[h - 1].timestamp_ms) == BuilderState(2, 9, blocks[7].timestamp_ms)
