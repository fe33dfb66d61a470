"""Uptime accounting and the per-epoch reward distribution (DEVSEN whitepaper section 5).

Pure and total like the rest of the ledger: every input is agreed block time (block header
`timestamp_ms`), the ledger's device records and the block's ChainView; no clocks, no floats.
The rule is written down in LEDGER.md ("Uptime and rewards"); in short:

- A reward epoch is `reward_epoch_ms` of block time: epoch e = block_ms // reward_epoch_ms.
- A device counts online from each of its events until `offline_after_ms` after its last one.
- Its units are its on-chain connectors (1.6) or EVSEs (2.0.1), 1..connector_count; a unit
  counts up while its last reported status is in UP_STATUSES (for 2.0.1: any connector of
  the EVSE), else down (Faulted, Unavailable, Reserved, unknown text, never reported). A 1.6
  connector-0 status that is not up takes the whole device down.
- Weight of a device in an epoch = unit-milliseconds up while online (= uptime fraction x
  connectors x epoch length). An owner (the device's on-chain manager) gets
  pool * owner_weight // total_weight; the remainder stays in the pool.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from devsen.ledger.chain import ChainView, DeviceInfo, device_problem
from devsen.ledger.state import DeviceRecord, HashedTable

UP_STATUSES = frozenset(
    {"Available", "Occupied", "Charging", "Preparing", "SuspendedEV", "SuspendedEVSE", "Finishing"}
)


@dataclass(frozen=True, slots=True)
class UptimeRecord:
    """One device's uptime in the open epoch, and what it looked like at its last event."""

    charger_id: str
    touch_seq: int
    epoch: int
    accrued_to_ms: int  # uptime is counted up to here
    last_seen_ms: int  # block time of the device's last event
    up_units: int  # units up after its last event
    units: int  # on-chain connector (EVSE) count at its last event
    online_ms: int = 0  # this epoch
    unit_ms: int = 0  # this epoch: sum over units of ms up while online


@dataclass(frozen=True, slots=True)
class DeviceUptime:
    """Why a device earned what it earned in one epoch."""

    charger_id: str
    owner: str
    units: int
    online_ms: int
    unit_ms: int


@dataclass(frozen=True, slots=True)
class OwnerReward:
    """One owner's share: `amount` token base units for `weight` unit-milliseconds."""

    owner: str
    amount: int
    weight: int


@dataclass(frozen=True, slots=True)
class RewardDistribution:
    """The reward distribution of one closed epoch. `amount` sums to at most `pool`."""

    epoch: int
    epoch_ms: int
    pool: int
    total_weight: int
    rewards: tuple[OwnerReward, ...]  # sorted by owner, amount > 0 or not
    devices: tuple[DeviceUptime, ...]  # sorted by charger id

    @property
    def paid(self) -> int:
        return sum(r.amount for r in self.rewards)

    def payouts(self) -> tuple[tuple[str, int], ...]:
        """(owner, amount) with amount > 0, sorted by owner: what the Rewards contract pays."""
        return tuple((r.owner, r.amount) for r in self.rewards if r.amount > 0)


def up_units(record: DeviceRecord, connector_count: int) -> int:
    """How many of the device's units (1..connector_count) count up after its last status reports."""
    up: set[int] = set()
    for entry in record.connectors:
        head, _, _sub = entry.connector.partition("/")
        if not head.isdigit() or len(head) > 3:
            continue
        number = int(head)
        if number == 0:
            if not _sub and entry.status not in UP_STATUSES:
                return 0  # 1.6 connector 0: the charge point as a whole is down
            continue
        if number <= connector_count and entry.status in UP_STATUSES:
            up.add(number)
    return len(up)


def split_pool(pool: int, weights: Iterable[tuple[str, int]]) -> tuple[OwnerReward, ...]:
    """Each owner gets pool * weight // total (rounded down); sorted by owner; sum <= pool.

    The remainder (pool minus the sum, less than the number of owners) is not paid: it stays
    in the pool for a later epoch. Negative weights count as 0.
    """
    merged: dict[str, int] = {}
    for owner, weight in weights:
        merged[owner] = merged.get(owner, 0) + max(0, weight)
    total = sum(merged.values())
    if total == 0 or pool <= 0:
        return tuple(OwnerReward(owner, 0, merged[owner]) for owner in sorted(merged))
    return tuple(OwnerReward(owner, pool * merged[owner] // total, merged[owner]) for owner in sorted(merged))


def _accrue(rec: UptimeRecord, until_ms: int, offline_after_ms: int) -> UptimeRecord:
    """Count [accrued_to_ms, until_ms) with the state of the last event (online until silence)."""
    if until_ms <= rec.accrued_to_ms:
        return rec
    online_end = min(until_ms, rec.last_seen_ms + offline_after_ms)
    online = max(0, online_end - rec.accrued_to_ms)
    return replace(
        rec, accrued_to_ms=until_ms, online_ms=rec.online_ms + online, unit_ms=rec.unit_ms + online * rec.up_units
    )


class UptimeBook:
    """The uptime table (one record per device, bounded) and the last closed distributions."""

    def __init__(self, epoch_ms: int, offline_after_ms: int, pool: int, max_devices: int, max_epochs: int) -> None:
        self.epoch_ms = epoch_ms
        self.offline_after_ms = offline_after_ms
        self.pool = pool
        self.max_devices = max_devices
        self.max_epochs = max_epochs
        self.records: HashedTable[str, UptimeRecord] = HashedTable("uptime")
        self.distributions: HashedTable[int, RewardDistribution] = HashedTable("rewards")

    def tables(self) -> tuple[HashedTable[str, UptimeRecord], HashedTable[int, RewardDistribution]]:
        return (self.records, self.distributions)

    def closing_reads(self, prev_ms: int, block_ms: int | None = None) -> tuple[str, ...]:
        """The chargers whose device `begin_block` reads if the next block (at `block_ms`, None:
        any time) closes the epoch of `prev_ms` (their records are in that epoch); sorted, at
        most `max_devices`. A block inside the open epoch reads none (no per-block cost)."""
        old = prev_ms // self.epoch_ms
        if block_ms is not None and block_ms // self.epoch_ms <= old:
            return ()
        return tuple(c for c in sorted(self.records) if (rec := self.records.get(c)) is not None and rec.epoch == old)

    def begin_block(self, prev_ms: int, block_ms: int, chain: ChainView) -> RewardDistribution | None:
        """Close the epoch of the previous block if this block starts a later one; its distribution."""
        old, new = prev_ms // self.epoch_ms, block_ms // self.epoch_ms
        if new <= old or not self.records:
            return None
        end_ms = (old + 1) * self.epoch_ms
        devices: list[DeviceUptime] = []
        for charger_id in sorted(self.records):
            rec = self.records.get(charger_id)
            assert rec is not None
            if rec.epoch == old:
                rec = _accrue(rec, end_ms, self.offline_after_ms)
                info = chain.device(charger_id)
                if isinstance(info, DeviceInfo) and device_problem(info) is None and info.active:
                    devices.append(DeviceUptime(charger_id, info.manager.lower(), rec.units, rec.online_ms, rec.unit_ms))
            start = new * self.epoch_ms
            self.records.put(charger_id, replace(rec, epoch=new, accrued_to_ms=max(start, rec.accrued_to_ms),
                                                  online_ms=0, unit_ms=0))
        if not devices:
            return None
        rewards = split_pool(self.pool, ((d.owner, d.unit_ms) for d in devices))
        total = sum(r.weight for r in rewards)
        dist = RewardDistribution(old, self.epoch_ms, self.pool, total, rewards, tuple(devices))
        self.distributions.put(old, dist)
        while len(self.distributions) > self.max_epochs:
            self.distributions.pop(self.distributions.oldest())
        return dist

    def seen(self, record: DeviceRecord, info: DeviceInfo, block_ms: int, seq: int) -> None:
        """A registered device had an event in this block: count up to now, then take its new state."""
        epoch = block_ms // self.epoch_ms
        units = info.connector_count
        rec = self.records.get(record.charger_id)
        if rec is None:
            rec = UptimeRecord(record.charger_id, seq, epoch, block_ms, block_ms, 0, units)
        rec = _accrue(rec, block_ms, self.offline_after_ms)
        rec = replace(rec, touch_seq=seq, last_seen_ms=block_ms, up_units=up_units(record, units), units=units)
        self.records.put(record.charger_id, rec, to_end=True)
        while len(self.records) > self.max_devices:
            self.records.pop(self.records.oldest())


def restore_distribution(v: tuple[object, ...]) -> RewardDistribution:
    """A RewardDistribution from its snapshot form (tuples of fields)."""
    epoch, epoch_ms, pool, total, rewards, devices = v
    return RewardDistribution(
        epoch,  # type: ignore[arg-type]
        epoch_ms,  # type: ignore[arg-type]
        pool,  # type: ignore[arg-type]
        total,  # type: ignore[arg-type]
        tuple(OwnerReward(*r) for r in rewards),  # type: ignore[attr-defined]
        tuple(DeviceUptime(*d) for d in devices),  # type: ignore[attr-defined]
    )
