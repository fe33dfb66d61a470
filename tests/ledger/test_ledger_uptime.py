"""Uptime accounting and the reward distribution rule (devsen/ledger/uptime.py, LEDGER.md)."""

from __future__ import annotations

import random
from collections.abc import Callable

from ledger_world import CHARGER, CHARGER_201, T0_MS, World, ev

from devsen.ledger import Ledger, LedgerParams
from devsen.ledger.uptime import UP_STATUSES, RewardDistribution, split_pool
from ocpp_adapter.events import ChargerEvent

EPOCH_MS = 60_000
OFFLINE_MS = 10_000
POOL = 1_000
PARAMS = LedgerParams(reward_epoch_ms=EPOCH_MS, offline_after_ms=OFFLINE_MS, reward_pool_per_epoch=POOL)
EPOCH0 = T0_MS // EPOCH_MS
EPOCH_END = (EPOCH0 + 1) * EPOCH_MS  # T0 is 20 s into its epoch: 40 s remain
OWNER_16 = "0x" + "aa" * 20
OWNER_201 = "0x" + "bb" * 20


def status16(connector: int, status: str, error: str = "NoError") -> ChargerEvent:
    return ev("StatusNotification", {"connectorId": connector, "errorCode": error, "status": status})


def status201(evse: int, status: str, connector: int = 1) -> ChargerEvent:
    return ev("StatusNotification", {"timestamp": "2026-09-21T00:00:00Z", "connectorStatus": status,
                                     "evseId": evse, "connectorId": connector}, version="2.0.1")


def hb(version: str = "1.6") -> ChargerEvent:
    return ev("Heartbeat", {}, version=version)


def run_until_close(world: World, per_block: Callable[[], list[ChargerEvent]], until_ms: int,
                    step_ms: int = 5_000) -> list[RewardDistribution]:
    """Blocks every `step_ms` carrying `per_block()` events, until a block at or after `until_ms`."""
    closed: list[RewardDistribution] = []
    while world.now_ms < until_ms:
        out = world.block(*per_block(), advance_ms=step_ms)
        closed.extend(out.rewards)
    out = world.block()
    closed.extend(out.rewards)
    return closed


def test_full_uptime_two_owners_share_pool_with_remainder() -> None:
    world = World(PARAMS)
    world.block(status16(1, "Available"), status16(2, "Charging"),
                status201(1, "Available"), status201(2, "Faulted"), advance_ms=5_000)
    closed = run_until_close(world, lambda: [hb(), hb("2.0.1")], EPOCH_END)
    assert len(closed) == 1
    dist = closed[0]
    assert dist.epoch == EPOCH0 and dist.pool == POOL
    by_device = {d.charger_id: d for d in dist.devices}
    assert by_device[CHARGER].unit_ms == 2 * 40_000 and by_device[CHARGER].online_ms == 40_000
    assert by_device[CHARGER_201].unit_ms == 1 * 40_000
    assert dist.payouts() == ((OWNER_16, 666), (OWNER_201, 333))  # 1 unit of remainder stays in the pool
    assert dist.paid == 999 <= POOL
    assert world.ledger.reward_distributions() == (dist,)


def test_silence_counts_offline_after_the_bound() -> None:
    world = World(PARAMS)
    world.block(status16(1, "Available"), status16(2, "Available"), advance_ms=EPOCH_END - T0_MS)
    dist = world.block().rewards[0]
    (device,) = dist.devices
    assert device.online_ms == OFFLINE_MS and device.unit_ms == 2 * OFFLINE_MS


def test_status_transitions_change_weight_at_block_time() -> None:
    world = World(PARAMS)
    world.block(status16(1, "Available"), status16(2, "Available"), advance_ms=5_000)  # T0
    world.block(status16(2, "Faulted", "GroundFailure"), advance_ms=5_000)  # T0+5s: one unit down
    world.block(status16(1, "Unavailable"), advance_ms=5_000)  # T0+10s: none up
    world.block(status16(1, "Preparing"), status16(2, "SuspendedEVSE"), advance_ms=5_000)  # T0+15s: both up
    closed = run_until_close(world, lambda: [hb()], EPOCH_END)
    (device,) = closed[0].devices
    assert device.unit_ms == 2 * 5_000 + 1 * 5_000 + 0 + 2 * 25_000


def test_connector_zero_down_takes_the_device_down() -> None:
    world = World(PARAMS)
    world.block(status16(1, "Available"), status16(2, "Available"), status16(0, "Unavailable"), advance_ms=5_000)
    closed = run_until_close(world, lambda: [hb()], EPOCH_END)
    assert closed[0].devices[0].unit_ms == 0 and closed[0].devices[0].online_ms == 40_000
    assert closed[0].payouts() == ()


def test_hostile_statuses_count_down_and_stay_deterministic() -> None:
    first = [ev("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": s}, raw=True)
             for s in ("available", "Reserved", "Bogus" * 9)]
    second = [ev("StatusNotification", {"connectorId": 2, "errorCode": 7, "status": None}, raw=True),
              ev("StatusNotification", {"connectorId": 9, "errorCode": "NoError", "status": "Available"})]
    beats = [hb() for _ in range(9)]
    worlds = [World(PARAMS), World(PARAMS)]
    for world in worlds:
        world.block(*first, advance_ms=5_000)
        world.block(*second, advance_ms=5_000)
        for beat in beats:
            world.block(beat, advance_ms=5_000)
    a, b = (w.ledger for w in worlds)
    assert a.state_hash() == b.state_hash()
    (dist,) = a.reward_distributions()
    assert dist.devices[0].unit_ms == 0 and dist.devices[0].online_ms == 40_000  # online, but no unit up


def test_unregistered_and_inactive_devices_earn_nothing() -> None:
    world = World(PARAMS)
    world.block(ev("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available"},
                   charger="OFF-1"),
                ev("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available"},
                   charger="GHOST"),
                status16(1, "Available"), advance_ms=5_000)
    world.chain.devices[CHARGER] = world.chain.devices["OFF-1"]  # deactivated before the epoch closes
    closed = run_until_close(world, lambda: [hb()], EPOCH_END)
    assert closed == [] or closed[0].devices == ()


def test_epoch_boundary_skipped_epochs_close_once() -> None:
    world = World(PARAMS)
    world.block(status16(1, "Available"), advance_ms=EPOCH_MS * 3)  # chain halts three epochs
    out = world.block(hb(), advance_ms=5_000)
    assert [d.epoch for d in out.rewards] == [EPOCH0]
    assert out.rewards[0].devices[0].unit_ms == OFFLINE_MS
    rec = world.ledger.uptime(CHARGER)
    assert rec is not None and rec.epoch == EPOCH0 + 3 and rec.unit_ms == 0  # the silent gap earns nothing


def test_state_hash_covers_uptime_and_snapshot_round_trips() -> None:
    a, b = World(PARAMS), World(PARAMS)
    for w in (a, b):
        w.block(status16(1, "Available"), advance_ms=5_000)
    a.block(hb(), advance_ms=5_000)
    b.block(ev("Heartbeat", {}, charger="OFF-1"), advance_ms=5_000)  # same height and time, CP-1 silent
    assert a.ledger.table_digests()["uptime"] != b.ledger.table_digests()["uptime"]
    assert a.ledger.state_hash() != b.ledger.state_hash()
    run_until_close(a, lambda: [hb()], EPOCH_END)
    restored = Ledger.from_bytes(a.ledger.to_bytes())
    assert restored.state_hash() == a.ledger.state_hash()
    assert restored.reward_distributions() == a.ledger.reward_distributions()


def test_distributions_are_bounded() -> None:
    params = LedgerParams(reward_epoch_ms=EPOCH_MS, offline_after_ms=OFFLINE_MS, reward_pool_per_epoch=POOL,
                          max_reward_epochs=2)
    world = World(params)
    for _ in range(5):
        world.block(status16(1, "Available"), advance_ms=EPOCH_MS)
    assert len(world.ledger.reward_distributions()) == 2


def test_split_pool_rule() -> None:
    rng = random.Random(7)
    for _ in range(500):
        pool = rng.choice([0, 1, 7, 10**6, 2**200])
        weights = [(f"0x{rng.randrange(5):040x}", rng.randrange(-3, 10**9)) for _ in range(rng.randrange(0, 12))]
        rewards = split_pool(pool, weights)
        assert sum(r.amount for r in rewards) <= pool
        assert pool - sum(r.amount for r in rewards) < max(1, len(rewards)) or sum(r.weight for r in rewards) == 0
        assert [r.owner for r in rewards] == sorted({o for o, _ in weights})
        assert split_pool(pool, list(reversed(weights))) == rewards
    assert "Faulted" not in UP_STATUSES and "Unavailable" not in UP_STATUSES


def test_rewards_document_explains_the_share() -> None:
    from devsen.rewards_view import format_rewards, rewards_document

    world = World(PARAMS)
    world.block(status16(1, "Available"), status16(2, "Faulted", "GroundFailure"),
                status201(1, "Available"), status201(2, "Available"), advance_ms=5_000)
    run_until_close(world, lambda: [hb(), hb("2.0.1")], EPOCH_END)
    doc = rewards_document(world.ledger.reward_distributions(), OWNER_16.upper().replace("0X", "0x"))
    (epoch,) = doc["epochs"]
    assert epoch["amount_units"] == 333 and epoch["share_ppm"] == 333_333
    (device,) = epoch["devices"]
    assert device["charger_id"] == CHARGER and device["units"] == 2
    assert device["online_ppm"] == 40_000 * 1_000_000 // EPOCH_MS and device["uptime_ppm"] == 333_333
    text = format_rewards(doc)
    assert "CP-1: 2 connectors" in text and "33.33%" in text
    assert rewards_document(world.ledger.reward_distributions(), "0x" + "ee" * 20)["epochs"] == []
    import pytest

    with pytest.raises(ValueError, match="owner must be"):
        rewards_document((), "not-an-address")


def test_a_replayed_heartbeat_does_not_keep_a_device_online() -> None:
    world = World(PARAMS)
    world.block(status16(1, "Available"), advance_ms=5_000)
    beat = hb()
    world.block(beat, advance_ms=5_000)  # T0+5s: seen
    for _ in range(6):
        out = world.block(beat, advance_ms=5_000)  # the same message again: a retry, not a sign of life
        assert out.results[0].duplicate
    closed = run_until_close(world, lambda: [], EPOCH_END)
    assert closed[0].devices[0].online_ms == 5_000 + OFFLINE_MS


def test_only_a_block_that_closes_the_epoch_reads_the_devices_of_its_uptime() -> None:
    """The chain keys of a block hold every charger with uptime only when the block's time is
    past the open epoch's end (a block inside it reads none of them, whatever their number);
    with the time unknown, all of them."""
    world = World(PARAMS)
    world.block(status16(1, "Available"), status201(1, "Available"), advance_ms=5_000)
    both = tuple(sorted((CHARGER, CHARGER_201)))
    inside, closing = world.now_ms, EPOCH_END
    assert world.ledger.uptime_reads(inside) == ()
    assert world.ledger.uptime_reads(EPOCH_END - 1) == ()
    assert world.ledger.uptime_reads(closing) == both == world.ledger.uptime_reads(closing + 3 * EPOCH_MS)
    assert world.ledger.uptime_reads(None) == both
    # and the block that does close it is applied over keys read for its own time: same payout
    closed = run_until_close(world, lambda: [hb()], EPOCH_END)
    assert len(closed) == 1 and {d.charger_id for d in closed[0].devices} == set(both)
    assert world.ledger.uptime_reads(world.now_ms) == ()  # the new epoch's records, not closing yet
