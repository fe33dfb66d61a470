"""Submitter logic against a scripted in-memory chain (unit test of this layer only).

The fake keeps the Anchor/Escrow rules that matter here: sequential batch ids, one
settlement per session (a settlement batch skips entries already closed, like
Escrow.settleBatch), state readable at past block numbers, reorgs and outages.
The same submitter runs against the real contracts in test_anchoring_chain.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

from anchoring.attestations import AnchorBatch, Settlement, SettlementBatch
from anchoring.batches import Quorum, submitter_order
from anchoring.submitter import (
    MAX_SESSION_READS_PER_ROUND,
    SESSION_OPEN,
    SESSION_REFUNDED,
    ChainUnavailable,
    JobStore,
    SessionState,
    SubmissionRejected,
    Submitter,
    SubmitterConfig,
)
from primitives.hashing import keccak256

VALIDATORS = sorted(keccak256(bytes([i]))[:20] for i in range(4))
CONFIG = SubmitterConfig(confirmations=2, turn_timeout_s=30, poll_interval_s=1, rpc_timeout_s=5,
                         backoff_initial_s=0.5, backoff_max_s=8)


def batch(i: int) -> AnchorBatch:
    return AnchorBatch(i, keccak256(b"root%d" % i), 10 * i + 1, 10 * i + 10, 5)


def settlements(batch_id: int, *entries: tuple[bytes, int, int]) -> SettlementBatch:
    return SettlementBatch.of(batch_id, [Settlement(*entry) for entry in entries])


def quorum(subject: Any) -> Quorum:
    return Quorum(subject, tuple(VALIDATORS[:3]), tuple(bytes([27]) * 65 for _ in range(3)), 1)


class FakeChain:
    """States per block: block n holds (batches tuple, sessions dict). Each tx mines one block."""

    def __init__(self) -> None:
        self.states: list[tuple[tuple[AnchorBatch, ...], dict[bytes, SessionState]]] = [((), {})]
        self.down = False
        self.sent: list[tuple[bytes, object]] = []  # (sender, subject) of every accepted tx
        self.session_reads = 0

    def _state(self, block: int | None) -> tuple[tuple[AnchorBatch, ...], dict[bytes, SessionState]]:
        self._check()
        return self.states[-1 if block is None else block]

    def _check(self) -> None:
        if self.down:
            raise ChainUnavailable("connection refused")

    def mine(self, count: int = 1) -> None:
        for _ in range(count):
            batches, sessions = self.states[-1]
            self.states.append((batches, dict(sessions)))

    def reorg_out(self, batch_id: int) -> None:
        """Replace every block from the one that stored `batch_id` on with empty ones."""
        landed = next(n for n, (batches, _) in enumerate(self.states) if len(batches) > batch_id)
        depth = len(self.states) - landed
        del self.states[landed:]
        self.mine(depth)

    async def head_number(self) -> int:
        self._check()
        return len(self.states) - 1

    async def next_batch_id(self, block: int | None = None) -> int:
        return len(self._state(block)[0])

    async def anchored_batch(self, batch_id: int, block: int | None = None) -> AnchorBatch | None:
        batches = self._state(block)[0]
        return batches[batch_id] if batch_id < len(batches) else None

    async def session_state(self, session_id: bytes, block: int | None = None) -> SessionState:
        self.session_reads += 1
        return self._state(block)[1].get(session_id, SessionState(0))

    def sender(self, submitter: Submitter) -> FakeSender:
        return FakeSender(self, submitter.me)


class FakeSender:
    """The chain as one node sees it: sends are attributed to that node."""

    def __init__(self, chain: FakeChain, me: bytes) -> None:
        self.chain = chain
        self.me = me

    def __getattr__(self, name: Any) -> Any:
        return getattr(self.chain, name)

    async def submit_batch(self, subject: AnchorBatch, signatures: Sequence[bytes]) -> bytes:
        chain = self.chain
        chain._check()
        batches, sessions = chain.states[-1]
        if subject.batch_id != len(batches):
            raise SubmissionRejected(f"BatchIdOutOfOrder({subject.batch_id}, {len(batches)})")
        chain.states.append(((*batches, subject), dict(sessions)))
        chain.sent.append((self.me, subject))
        return keccak256(repr(subject).encode())

    async def submit_settlement(self, subject: SettlementBatch, signatures: Sequence[bytes]) -> bytes:
        chain = self.chain
        chain._check()
        batches, sessions = chain.states[-1]
        sessions = dict(sessions)
        for entry in subject.entries:  # entries that are not open are skipped (SettlementSkipped)
            if sessions.get(entry.session_id, SessionState(0)).status == SESSION_OPEN:
                sessions[entry.session_id] = SessionState(2, entry.energy_wh, entry.amount)
        chain.states.append((batches, sessions))
        chain.sent.append((self.me, subject))
        return b"\x01" * 32


def make(chain: FakeChain, me: bytes, path: Any=":memory:") -> Submitter:
    submitter = Submitter(None, JobStore(path), me, VALIDATORS, CONFIG)  # type: ignore[arg-type]
    submitter.chain = chain.sender(submitter)
    return submitter


async def run_until(predicate: Any, chain: FakeChain, seconds: float, mine_every: float = 1.0) -> None:
    """Let time pass (autojump clock) mining a block every `mine_every` s until `predicate()`."""
    with trio.fail_after(seconds):
        while not predicate():
            await trio.sleep(mine_every)
            chain.mine()


def first_submitter(subject: Any) -> bytes:
    return submitter_order(VALIDATORS, subject)[0]


@pytest.mark.parametrize("trio_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_designated_submitter_sends_once_and_waits_for_depth(trio_clock: Any) -> None:
    chain = FakeChain()
    nodes = [make(chain, v) for v in VALIDATORS]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await node.add(quorum(batch(0)))
            await node.add(quorum(batch(0)))  # idempotent
            nursery.start_soon(node.run)
        await run_until(lambda: all(not n.pending() for n in nodes), chain, 20)
        nursery.cancel_scope.cancel()
    assert chain.sent == [(first_submitter(batch(0)), batch(0))]
    assert all(n.status()["done"] == {"anchored": 1} for n in nodes)
    assert nodes[0].store.done()[0]["outcome"] == "anchored"


@pytest.mark.parametrize("trio_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_next_validator_takes_over_when_the_submitter_is_dead(trio_clock: Any) -> None:
    chain = FakeChain()
    dead = first_submitter(batch(1))
    alive = [make(chain, v) for v in VALIDATORS if v != dead]
    async with trio.open_nursery() as nursery:
        for node in alive:
            for i in (0, 1):  # batch 1 can only land after batch 0
                await node.add(quorum(batch(i)))
            nursery.start_soon(node.run)
        started = trio.current_time()
        await run_until(lambda: len(chain.sent) == 2, chain, 200)
        elapsed = trio.current_time() - started
        nursery.cancel_scope.cancel()
    senders = [s for s, _ in chain.sent]
    assert [b for _, b in chain.sent] == [batch(0), batch(1)]
    assert senders[1] == submitter_order(VALIDATORS, batch(1))[1]  # the next in turn
    assert 30 <= elapsed < 70  # one turn timeout for batch 1 (and possibly one for batch 0)


@pytest.mark.parametrize("trio_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_rpc_outage_backs_off_and_the_batch_lands_once(trio_clock: Any) -> None:
    chain = FakeChain()
    node = make(chain, first_submitter(batch(0)))
    chain.down = True
    async with trio.open_nursery() as nursery:
        await node.add(quorum(batch(0)))
        nursery.start_soon(node.run)
        await trio.sleep(60)
        failures = node.status()["rpc_failures"]
        assert 5 <= failures <= 20  # exponential backoff capped at 8 s, not one try per second
        chain.down = False
        await run_until(lambda: not node.pending(), chain, 60)
        nursery.cancel_scope.cancel()
    assert chain.sent == [(node.me, batch(0))]


@pytest.mark.parametrize("trio_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_pending_jobs_resume_after_restart(trio_clock: Any, tmp_path: Path) -> None:
    chain = FakeChain()
    me = first_submitter(batch(0))
    path = tmp_path / "jobs.sqlite"
    first = make(chain, me, path)
    chain.down = True
    await first.add(quorum(batch(0)))
    await first.add(quorum(settlements(3, (b"\x05" * 32, 100, 7), (b"\x06" * 32, 1, 1))))
    first.store.close()  # the process dies before any submission
    chain.down = False
    chain.states[-1][1][b"\x05" * 32] = SessionState(SESSION_OPEN)
    chain.states[-1][1][b"\x06" * 32] = SessionState(SESSION_OPEN)
    second = make(chain, me, path)
    assert {j.kind for j in second.pending()} == {"anchor", "settlement"}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(second.run)
        await run_until(lambda: not second.pending(), chain, 300)
        nursery.cancel_scope.cancel()
    assert [s for _, s in chain.sent][0] == batch(0)
    assert sorted(second.status()["done"].items()) == [("anchored", 1), ("settled", 2)]
    assert len(chain.sent) == 2  # the batch and both sessions in one settlement transaction
    assert len(second.store.done()) == 2 and second.store.pending() == []


@pytest.mark.parametrize("trio_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_reorg_before_depth_resubmits(trio_clock: Any) -> None:
    chain = FakeChain()
    node = make(chain, first_submitter(batch(0)))
    async with trio.open_nursery() as nursery:
        await node.add(quorum(batch(0)))
        nursery.start_soon(node.run)
        await run_until(lambda: len(chain.sent) == 1, chain, 10)
        chain.reorg_out(0)  # the block with the batch is replaced before it is 2 deep
        assert await chain.next_batch_id() == 0
        await run_until(lambda: not node.pending(), chain, 120, mine_every=5)
        nursery.cancel_scope.cancel()
    assert [s for _, s in chain.sent] == [batch(0), batch(0)]
    assert await chain.anchored_batch(0) == batch(0)
    assert node.status()["done"] == {"anchored": 1}


@pytest.mark.parametrize("trio_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_already_anchored_or_refunded_needs_no_send(trio_clock: Any) -> None:
    chain = FakeChain()
    session = b"\x09" * 32
    chain.states[-1] = ((batch(0),), {session: SessionState(SESSION_REFUNDED)})
    chain.mine(3)
    node = make(chain, first_submitter(batch(0)))
    other = AnchorBatch(0, keccak256(b"other"), 1, 10, 5)
    async with trio.open_nursery() as nursery:
        await node.add(quorum(batch(0)))
        await node.add(quorum(settlements(0, (session, 1, 1))))
        nursery.start_soon(node.run)
        await run_until(lambda: not node.pending(), chain, 10)
        conflicting = make(chain, VALIDATORS[0])
        await conflicting.add(Quorum(other, (), (), 1))
        await conflicting.run_round()
        nursery.cancel_scope.cancel()
    assert chain.sent == []
    assert node.status()["done"] == {"anchored": 1, "refunded": 1}
    assert conflicting.status()["done"] == {"conflict": 1}


@pytest.mark.parametrize("trio_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_a_session_closed_with_a_voucher_is_done_not_a_conflict_or_a_resend(trio_clock: Any) -> None:
    """The manager closed the voucher session on chain (another amount, 0 Wh): the network's
    settlement for it finishes as "voucher_closed" without a send; a non-voucher session
    settled differently is still a conflict."""
    chain = FakeChain()
    voucher_session, plain_session = b"\x0a" * 32, b"\x0b" * 32
    chain.states[-1] = ((), {voucher_session: SessionState(SESSION_OPEN, voucher_mode=True)})
    chain.mine(3)
    chain.states[-1][1][voucher_session] = SessionState(2, 0, 7, voucher_mode=True)
    chain.states[-1][1][plain_session] = SessionState(2, 0, 7)
    chain.mine(3)
    node = make(chain, VALIDATORS[0])
    async with trio.open_nursery() as nursery:
        await node.add(quorum(settlements(0, (voucher_session, 1_000, 9), (plain_session, 1_000, 9))))
        nursery.start_soon(node.run)
        await run_until(lambda: not node.pending(), chain, 10)
        nursery.cancel_scope.cancel()
    assert chain.sent == []
    assert node.status()["done"] == {"voucher_closed": 1, "conflict": 1}


async def test_observer_never_sends_and_bound_on_pending() -> None:
    chain = FakeChain()
    observer = make(chain, b"\x77" * 20)
    await observer.add(quorum(batch(0)))
    for _ in range(3):
        await observer.run_round()
    assert chain.sent == [] and len(observer.pending()) == 1


@pytest.mark.parametrize("trio_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_many_pending_settlements_are_checked_in_bounded_rounds(trio_clock: Any) -> None:
    chain = FakeChain()
    sessions = [keccak256(b"s%d" % i) for i in range(1_000)]
    chain.states[-1] = ((), {s: SessionState(SESSION_OPEN) for s in sessions})
    chain.mine(3)
    nodes = [make(chain, v) for v in VALIDATORS]
    subjects = [settlements(i, *((s, 10, 5) for s in sessions[i * 250:(i + 1) * 250])) for i in range(4)]
    for node in nodes:
        for subject in subjects:
            await node.add(quorum(subject))
    before = chain.session_reads
    await nodes[0].run_round()
    assert chain.session_reads - before <= MAX_SESSION_READS_PER_ROUND
    async with trio.open_nursery() as nursery:
        for node in nodes:
            nursery.start_soon(node.run)
        await run_until(lambda: all(not n.pending() for n in nodes), chain, 600)
        nursery.cancel_scope.cancel()
    assert sorted(cast(SettlementBatch, s).batch_id for _, s in chain.sent) == [0, 1, 2, 3]  # one tx per batch
    assert all(n.status()["done"] == {"settled": 1_000} for n in nodes)
    assert {o["outcome"] for o in nodes[0].store.done()} == {"settled=250"}


@pytest.mark.parametrize("trio_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_a_batch_with_entries_already_closed_is_sent_once_and_they_count_as_done(trio_clock: Any) -> None:
    """One session of the batch was closed by its manager with the driver's voucher, one was
    refunded: the batch is still sent once (the contract skips them), and all three are done."""
    chain = FakeChain()
    open_one, vouchered, refunded = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    chain.states[-1] = ((), {open_one: SessionState(SESSION_OPEN), refunded: SessionState(SESSION_REFUNDED),
                             vouchered: SessionState(2, 0, 4, voucher_mode=True)})
    chain.mine(3)
    subject = settlements(5, (vouchered, 500, 9), (open_one, 700, 8), (refunded, 1, 1))
    nodes = [make(chain, v) for v in VALIDATORS]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await node.add(quorum(subject))
            nursery.start_soon(node.run)
        await run_until(lambda: all(not n.pending() for n in nodes), chain, 300)
        nursery.cancel_scope.cancel()
    assert [s for _, s in chain.sent] == [subject]
    assert await chain.session_state(open_one) == SessionState(2, 700, 8)
    assert all(n.status()["done"] == {"refunded": 1, "settled": 1, "voucher_closed": 1} for n in nodes)
    assert nodes[0].known_done(subject)


@pytest.mark.parametrize("trio_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_a_quorum_re_collected_after_an_epoch_change_replaces_the_stale_one(trio_clock: Any, tmp_path: Path) -> None:
    """The old set's quorum is not sent once the set changed (the contract would refuse it);
    the new set's quorum replaces it, survives a restart, and lands once; nothing is sent
    again after that, whatever quorum arrives."""
    chain = FakeChain()
    newcomers = [keccak256(b"newcomer-%d" % i)[:20] for i in range(2)]
    new_set = sorted([*VALIDATORS[:2], *newcomers])
    subject = batch(0)
    me = VALIDATORS[0]
    path = tmp_path / "jobs.sqlite"
    node = make(chain, me, path)
    await node.add(quorum(subject))  # signed by VALIDATORS[:3]
    node.validators = new_set  # VALIDATORS[2:] replaced: the quorum has a removed signer
    for _ in range(5):
        await node.run_round()
        await trio.sleep(CONFIG.turn_timeout_s)
    assert chain.sent == [] and node.status()["stale_quorum_waits"] >= 5
    fresh = Quorum(subject, tuple(sorted([VALIDATORS[0], VALIDATORS[1], newcomers[0]])),
                   tuple(bytes([28]) * 65 for _ in range(3)), 9)
    await node.add(fresh)
    await node.add(quorum(subject))  # the older one again: ignored
    assert node.pending()[0].quorum == fresh and node.status()["replaced_quorums"] == 1
    node.store.close()
    again = make(chain, me, path)
    again.validators = new_set
    assert [j.quorum for j in again.pending()] == [fresh]
    assert not again.known_done(subject)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(again.run)
        await run_until(lambda: not again.pending(), chain, 300)
        nursery.cancel_scope.cancel()
    assert [s for _, s in chain.sent] == [subject] and again.known_done(subject)
    await again.add(Quorum(subject, fresh.signers, tuple(bytes([27]) * 65 for _ in range(3)), 12))
    assert again.pending() == []


@pytest.mark.parametrize("trio_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_rounds_within_one_block_read_the_confirmed_batch_id_once(trio_clock: Any) -> None:
    """New quorums wake the submitter many times per Ethereum block; the batch id at the
    confirmed block cannot change within it, so it is read once per block, not per round."""
    chain = FakeChain()
    reads: list[int | None] = []
    read = chain.next_batch_id

    async def counted(block: int | None = None) -> int:
        reads.append(block)
        return await read(block)

    chain.next_batch_id = counted  # type: ignore[method-assign]
    chain.mine(3)
    node = make(chain, first_submitter(batch(0)))
    await node.add(quorum(batch(0)))
    for _ in range(5):  # five rounds; only the first one's send mines a block (head 3 -> 4)
        await node.run_round()
    assert [b for b in reads if b is not None] == [1, 2]  # once per confirmed block (head - 2)
    assert reads.count(None) == 5  # the head's is still read each round
    for _ in range(3):  # the batch goes 2 deep and the job is done
        chain.mine()
        await node.run_round()
    assert node.status()["done"] == {"anchored": 1} and chain.sent == [(node.me, batch(0))]
