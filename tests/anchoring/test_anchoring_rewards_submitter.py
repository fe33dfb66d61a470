"""Submitter: reward distributions (kind "reward") are sent once by the designated validator,
finished when paid at depth, and survive a restart (JobStore JSON of the payouts)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing
from test_anchoring_submitter import VALIDATORS, FakeChain, FakeSender, make, quorum, run_until

from anchoring.batches import submitter_order
from anchoring.rewards import RewardSubject
from anchoring.submitter import (
    REWARD,
    SubmissionRejected,
    Submitter,
    subject_from_json,
    subject_to_json,
)

SUBJECT = RewardSubject(42, ((b"\x01" * 20, 5), (b"\x02" * 20, 2**200)))


class RewardFakeChain(FakeChain):
    """FakeChain plus the Rewards contract: the block each (epoch, part) was paid in."""

    def __init__(self) -> None:
        super().__init__()
        self.paid_at: dict[tuple[int, int], int] = {}

    async def reward_paid(self, epoch: int, part: int, block: int | None = None) -> bool:
        self._check()
        at = self.paid_at.get((epoch, part))
        head = len(self.states) - 1
        return at is not None and at <= (head if block is None else block)

    def sender(self, submitter: Submitter) -> FakeSender:
        return RewardSender(self, submitter.me)


class RewardSender(FakeSender):
    async def submit_rewards(self, subject: RewardSubject, signatures: Sequence[bytes]) -> bytes:
        chain = self.chain
        assert isinstance(chain, RewardFakeChain)
        chain._check()
        if (subject.epoch, subject.part) in chain.paid_at:
            raise SubmissionRejected(f"RewardPartAlreadyPaid({subject.epoch}, {subject.part})")
        chain.mine()
        chain.paid_at[(subject.epoch, subject.part)] = len(chain.states) - 1
        chain.sent.append((self.me, subject))
        return b"\x02" * 32


@pytest.mark.parametrize("trio_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_reward_quorum_is_paid_once_by_the_designated_validator(trio_clock) -> None:  # type: ignore[no-untyped-def]
    chain = RewardFakeChain()
    nodes = [make(chain, v) for v in VALIDATORS]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await node.add(quorum(SUBJECT))
            nursery.start_soon(node.run)
        await run_until(lambda: all(not n.pending() for n in nodes), chain, 30)
        nursery.cancel_scope.cancel()
    assert chain.sent == [(submitter_order(VALIDATORS, SUBJECT)[0], SUBJECT)]
    assert all(n.status()["done"] == {"paid": 1} for n in nodes)
    assert nodes[0].known_done(SUBJECT)


@pytest.mark.parametrize("trio_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_reward_job_resumes_after_restart(trio_clock, tmp_path) -> None:  # type: ignore[no-untyped-def]
    chain = RewardFakeChain()
    chain.down = True
    me = submitter_order(VALIDATORS, SUBJECT)[0]
    first = make(chain, me, tmp_path / "jobs.sqlite")
    await first.add(quorum(SUBJECT))
    again = make(chain, me, tmp_path / "jobs.sqlite")
    assert [j.kind for j in again.pending()] == [REWARD] and again.pending()[0].quorum.subject == SUBJECT
    chain.down = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(again.run)
        await run_until(lambda: not again.pending(), chain, 30)
        nursery.cancel_scope.cancel()
    assert chain.sent == [(me, SUBJECT)]


def test_reward_subject_json_round_trip() -> None:
    assert subject_from_json(REWARD, subject_to_json(SUBJECT)) == SUBJECT


@pytest.mark.parametrize("trio_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_a_chain_without_rewards_leaves_the_job_pending(trio_clock) -> None:  # type: ignore[no-untyped-def]
    chain = FakeChain()  # no reward_paid / submit_rewards
    node = make(chain, submitter_order(VALIDATORS, SUBJECT)[0])
    await node.add(quorum(SUBJECT))
    with trio.move_on_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.run)
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
    assert [j.kind for j in node.pending()] == [REWARD] and chain.sent == []
