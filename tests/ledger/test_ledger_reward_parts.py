"""An epoch with more owners than one Rewards transaction pays is split into parts
(anchoring/rewards.py `reward_parts`): deterministic, sorted by owner, at most MAX_PAYOUTS each."""

from __future__ import annotations

import random

import pytest
from ledger_world import TARIFF, World, ev

from anchoring.rewards import MAX_PARTS, MAX_PAYOUTS, RewardError, reward_parts
from devsen.ledger import DeviceInfo, LedgerParams
from devsen.ledger.chain import StaticChainView
from devsen.ledger.uptime import RewardDistribution
from primitives.eip712 import Domain

EPOCH_MS = 60_000
PARAMS = LedgerParams(reward_epoch_ms=EPOCH_MS, offline_after_ms=30_000, reward_pool_per_epoch=10**12)
OWNERS = 450


def _chain() -> StaticChainView:
    devices = {f"CP-{i:04d}": DeviceInfo(i.to_bytes(32, "big"), "0x" + (i * 7919).to_bytes(20, "big").hex(),
                                         1 + i % 3, TARIFF) for i in range(1, OWNERS + 1)}
    return StaticChainView(devices)


def _distribution_on_a_ledger(seed: int) -> RewardDistribution:
    """One ledger's closed epoch: every charger reports Available, in an order given by `seed`."""
    world = World(PARAMS)
    world.chain = _chain()
    chargers = sorted(world.chain.devices)
    random.Random(seed).shuffle(chargers)
    events = [ev("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available"},
                 charger=c) for c in chargers]
    world.block(*events, advance_ms=5_000)
    closed: list[RewardDistribution] = []
    while not closed:
        closed = list(world.block(*[ev("Heartbeat", {}, charger=c) for c in sorted(chargers)[::3]], advance_ms=10_000).rewards)
    return closed[0]


def test_450_owners_split_into_3_parts_identical_on_two_ledgers() -> None:
    first, second = _distribution_on_a_ledger(1), _distribution_on_a_ledger(2)
    assert first == second and len(first.payouts()) == OWNERS
    parts_a = reward_parts(first.epoch, first.payouts())
    parts_b = reward_parts(second.epoch, second.payouts())
    assert parts_a == parts_b
    assert [len(p.payouts) for p in parts_a] == [MAX_PAYOUTS, MAX_PAYOUTS, OWNERS - 2 * MAX_PAYOUTS]
    assert [(p.part, p.parts) for p in parts_a] == [(0, 3), (1, 3), (2, 3)]
    owners = [o for p in parts_a for o, _ in p.payouts]
    assert owners == sorted(owners) and len(set(owners)) == OWNERS  # everyone, once, in owner order
    assert sum(p.total for p in parts_a) == first.paid <= PARAMS.reward_pool_per_epoch
    domain = Domain(31337, b"\x42" * 20)
    digests = [p.digest(domain) for p in parts_a]
    assert digests == [p.digest(domain) for p in parts_b] and len(set(digests)) == 3  # part index is signed


def test_split_bounds() -> None:
    assert reward_parts(1, []) == ()
    one = reward_parts(1, [("0x" + "01" * 20, 5)])
    assert len(one) == 1 and (one[0].part, one[0].parts) == (0, 1)
    exact = [("0x" + i.to_bytes(20, "big").hex(), 1) for i in range(1, 2 * MAX_PAYOUTS + 1)]
    assert [len(p.payouts) for p in reward_parts(1, exact)] == [MAX_PAYOUTS, MAX_PAYOUTS]
    too_many = [("0x" + i.to_bytes(20, "big").hex(), 1) for i in range(1, MAX_PARTS * MAX_PAYOUTS + 2)]
    with pytest.raises(RewardError, match="parts"):
        reward_parts(1, too_many)
    with pytest.raises(RewardError, match="part"):
        reward_parts(1, exact)[0].__class__(1, ((b"\x01" * 20, 1),), 2, 2)  # part index out of range
