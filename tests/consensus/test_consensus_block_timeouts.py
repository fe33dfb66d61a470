"""Timeouts that grow with the block (issue 16): under a backlog, blocks of 500-800 payloads timed
out at round 0 because validating (and building) them takes longer than the plain propose
timeout. The grace is pure (TimeoutConfig.size_grace), bounded (size_cap_ms, max_ms), and zero
for blocks of at most `free_payloads`, which keep the old timeouts exactly."""

from __future__ import annotations

from dataclasses import replace

import pytest
from consensus_testkit import KEYS, TIMEOUTS, block, core_for, outputs_of, proposal, vote
from test_consensus_core import feed, own_votes

from consensus.core import (
    ConsensusCore,
    Output,
    ScheduleTimeout,
    Timeout,
    TimeoutConfig,
    TimeoutKind,
    ValidateBlock,
)
from consensus.sim import SIM_TIMEOUTS, SimConfig, Simulation
from consensus.types import VoteType

PLAIN = replace(SIM_TIMEOUTS, per_payload_ms=0)  # the timeouts before issue 16
ME = 0  # KEYS[0] is not the proposer of (1, 0)


def test_the_grace_is_zero_for_small_blocks_linear_then_capped() -> None:
    t = TimeoutConfig()
    for kind in (TimeoutKind.PROPOSE, TimeoutKind.PREVOTE, TimeoutKind.PRECOMMIT, TimeoutKind.RETRANSMIT):
        for round in (0, 3):
            plain = replace(t, per_payload_ms=0).duration(kind, round)
            assert t.duration(kind, round) == t.duration(kind, round, 0) == t.duration(kind, round, 64) == plain
    assert t.duration(TimeoutKind.PROPOSE, 0, 800) == t.propose_ms + (800 - 64) * t.per_payload_ms
    assert t.duration(TimeoutKind.RETRANSMIT, 0, 800) == t.retransmit_ms  # not a consensus step
    assert t.size_grace(100_000) == t.size_cap_ms  # bounded by its cap (node.max_block_payloads <= 100,000)...
    assert replace(t, max_ms=5000).duration(TimeoutKind.PREVOTE, 50, 100_000) == 5000  # ...and by max_ms
    assert t.size_grace(-1) == 0


def _pending_big_proposal(payloads: int) -> tuple[ConsensusCore, list[Output]]:
    core = core_for(ME)
    core.start()
    b = block(payloads=tuple(b"p%d" % i for i in range(payloads)))
    out = feed(core, proposal(b))
    return core, out


def test_a_large_block_still_being_validated_gets_the_size_grace_once() -> None:
    """The propose timer fires while valid(v) of an 800-payload block is pending: instead of a nil
    prevote (L57) the core waits once more, by the block's grace; at the second expiry it prevotes
    nil as before. A verdict in between makes it prevote the block."""
    core, out = _pending_big_proposal(800)
    fired = core.on_timeout(Timeout(1, 0, TimeoutKind.PROPOSE))
    assert not own_votes(fired)
    [again] = outputs_of(fired, ScheduleTimeout)
    assert again.timeout == Timeout(1, 0, TimeoutKind.PROPOSE)
    assert again.duration_ms == TIMEOUTS.size_grace(800) > 0
    second = core.on_timeout(Timeout(1, 0, TimeoutKind.PROPOSE))
    assert [v.block_hash for v in own_votes(second, VoteType.PREVOTE)] == [bytes(32)]  # nil, once extended

    core, out = _pending_big_proposal(800)
    core.on_timeout(Timeout(1, 0, TimeoutKind.PROPOSE))
    [check] = outputs_of(out, ValidateBlock)
    voted = core.on_validation_result(check.block.hash, True)
    assert [v.block_hash for v in own_votes(voted, VoteType.PREVOTE)] == [check.block.hash]


@pytest.mark.parametrize("payloads", [0, 1, 64])
def test_a_small_block_keeps_the_old_propose_timeout(payloads: int) -> None:
    core, _ = _pending_big_proposal(payloads)
    fired = core.on_timeout(Timeout(1, 0, TimeoutKind.PROPOSE))
    assert [v.block_hash for v in own_votes(fired, VoteType.PREVOTE)] == [bytes(32)]
    assert not [o for o in outputs_of(fired, ScheduleTimeout) if o.timeout.kind == TimeoutKind.PROPOSE]


def test_the_next_heights_propose_timer_follows_the_last_blocks_size() -> None:
    """Under a backlog the next block is as large as the last: its proposer takes as long to build
    it, so the propose timer of the next height carries the last block's grace."""
    core = core_for(ME)
    start = outputs_of(core.start(), ScheduleTimeout)
    plain = next(o.duration_ms for o in start if o.timeout.kind == TimeoutKind.PROPOSE)
    assert plain == TIMEOUTS.propose_ms
    core.prev_payloads = 800
    out: list[ScheduleTimeout] = []
    core._schedule(TimeoutKind.PROPOSE, out)  # type: ignore[arg-type]
    assert out[0].duration_ms == TIMEOUTS.propose_ms + TIMEOUTS.size_grace(800)


def _backlog(timeouts: TimeoutConfig, batch: int, build: float = 0.0) -> Simulation:
    """Every payload waits at tick 0 (a backlog); each costs 1 tick to check in valid(v)."""
    config = SimConfig(validators=4, payloads=3 * batch, batch=batch, faults=False, byzantine=0,
                       submit_until=0, idle_block_ticks=20, epoch_change_height=None,
                       liveness_window=400_000, apply_ticks_per_payload=1.0,
                       build_ticks_per_payload=build, timeouts=timeouts)
    sim = Simulation(1, config)
    result = sim.run()
    assert result.ok, result.failure
    return sim


@pytest.mark.parametrize("batch", [500, 800])
def test_a_large_block_no_longer_times_out_at_round_0_in_the_simulator(batch: int) -> None:
    """Same per-payload apply cost, same seed: with the plain timeouts (propose 400 ticks) every
    large block needs several rounds; with the size grace each commits in round 0."""
    before = _backlog(PLAIN, batch)
    after = _backlog(SIM_TIMEOUTS, batch)
    large = [h for h, b in after.decided_blocks.items() if len(b.payloads) >= batch - 1]
    assert len(large) >= 2
    assert all(before.rounds_at[h] > 1 for h, b in before.decided_blocks.items() if len(b.payloads) >= batch - 1)
    assert all(after.rounds_at[h] == 1 for h in large), after.rounds_at
    assert after.result.ticks < before.result.ticks / 2


def test_with_a_building_cost_too_the_backlog_commits_in_round_0_after_its_first_large_block() -> None:
    """When the proposer also pays per payload, the first large block after small ones cannot be
    foreseen (its size is known only when it arrives); from the second on, the last block's size
    sets the propose timer and every block commits in round 0."""
    before = _backlog(PLAIN, 800, build=1.0)
    after = _backlog(SIM_TIMEOUTS, 800, build=1.0)
    large = sorted(h for h, b in after.decided_blocks.items() if len(b.payloads) >= 799)
    assert all(after.rounds_at[h] == 1 for h in large[1:]), after.rounds_at
    assert all(before.rounds_at[h] > 1 for h in large)


def test_small_blocks_run_exactly_as_before() -> None:
    """Blocks of at most free_payloads: the run is the same, event for event, with or without the grace."""
    config = SimConfig(validators=4, payloads=8)
    for seed in range(3):
        a = Simulation(seed, replace(config, timeouts=PLAIN)).run()
        b = Simulation(seed, replace(config, timeouts=SIM_TIMEOUTS)).run()
        assert a.ok and b.ok and a.fingerprint == b.fingerprint


def test_the_prevote_timer_of_a_large_blocks_round_carries_its_grace() -> None:
    """L34: 2f+1 prevotes of any kind for a round whose proposal is an 800-payload block: the
    prevote timer waits the grace longer (the others may still be validating it)."""
    core, out = _pending_big_proposal(800)
    [check] = outputs_of(out, ValidateBlock)
    core.on_validation_result(check.block.hash, True)
    others = [k for k in KEYS if k.address != core.address]
    out = feed(core, vote(others[0], VoteType.PREVOTE, 1, 0, check.block.hash),
               vote(others[1], VoteType.PREVOTE, 1, 0, bytes(32)))
    [timer] = [o for o in outputs_of(out, ScheduleTimeout) if o.timeout.kind == TimeoutKind.PREVOTE]
    assert timer.duration_ms == TIMEOUTS.prevote_ms + TIMEOUTS.size_grace(800)
