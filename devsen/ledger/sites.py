"""Load management (issue 13): the ledger divides a site's power among its running transactions.

A device manager groups chargers into a site on chain (DeviceFactory `createSite`,
`setDeviceSite`: a maximum power `max_power_w` and a minimum per session `min_session_w`);
the device read at the block's Ethereum block carries its site (`DeviceInfo.site_id`,
`site_max_power_w`, `site_min_session_w`). The ledger learns a charger's site from its events
(table "site_members", charger -> site id), and at the end of every block re-divides each site
whose membership or running transactions may have changed: the sites of the block's chargers,
and those whose committed schedule names a transaction no longer open.

Division (`divide`, pure and total over non-negative integers): the running, paid (bound)
transactions of the site's chargers, oldest first (ledger open order), each capped by its
connector's maximum (`Session.max_power_w`, the device's on-chain `maxPowerW`):
- each needs min(min_session_w, its cap); the oldest transactions whose needs fit in the limit
  are admitted, in order; the first that does not fit and every later one get 0 W: the charger
  is told to pause them (a TxProfile limit of 0 W; OCPP chargers then suspend, SuspendedEVSE)
  until an older one stops;
- the limit is shared equally among the admitted (water-filling: a transaction capped below
  the equal share gets its cap, the rest is shared by the others), in whole watts rounded
  down: the sum never exceeds the limit, and every admitted transaction gets at least its need.

The committed schedule (table "site_schedules": site id -> limit, minimum, height, shares) is
what every node reports (GET /v1/sites/{id}). Each share whose power is new or changed becomes a
ledger-originated SetChargingProfile (TxProfile, Relative, one period from 0 s, rate unit W, stack
level 0, one profile id per transaction so a newer one replaces it: OCPP 1.6 §3.13.2, 2.0.1 K01)
for the charger, delivered like a manager's command by the node holding its connection
(devsen/charger_commands.py), at most once per connection, until PROFILE_TTL_MS.

Limits: a charger taken out of its site keeps its running transactions' last profile until they
end (no profile lifts it); a site's new power applies at the next event of one of its chargers;
membership is remembered for at most MAX_MEMBERS chargers (oldest forgotten first), and a
profile is not queued for a charger with MAX_PENDING_PER_CHARGER commands pending (the schedule
still records the share).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from devsen.ledger.state import HashedTable
from primitives.hashing import keccak256

MAX_MEMBERS = 65_536  # chargers whose site is remembered (oldest dropped beyond)
MAX_SITE_POWER_W = 4_000_000_000  # DeviceFactory.MAX_SITE_POWER_W
MAX_SITE_ID = 2**32 - 1  # a uint32 on chain
PROFILE_TTL_MS = 3_600_000  # a SetChargingProfile waits for its charger this long
PROFILE_STACK_LEVEL = 0


@dataclass(frozen=True, slots=True)
class SiteShare:
    """One running transaction's share of its site's power, in watts (0: paused)."""

    charger_id: str
    tx_ref: str
    connector_id: int
    ocpp_version: str
    power_w: int


@dataclass(frozen=True, slots=True)
class SiteSchedule:
    """A site's committed division: its on-chain power, the height it changed, the shares."""

    site_id: int
    max_power_w: int
    min_session_w: int
    height: int
    shares: tuple[SiteShare, ...]

    @property
    def allocated_w(self) -> int:
        return sum(share.power_w for share in self.shares)


def site_problem(site_id: object, max_power_w: object, min_session_w: object) -> str | None:
    """Why these are not a site within the ledger's bounds (site 0: no site), or None."""
    if type(site_id) is not int or not 0 <= site_id <= MAX_SITE_ID:
        return f"site_id must be in 0..{MAX_SITE_ID}"
    if site_id == 0:
        return None
    if type(max_power_w) is not int or not 1 <= max_power_w <= MAX_SITE_POWER_W:
        return f"site_max_power_w must be in 1..{MAX_SITE_POWER_W}"
    if type(min_session_w) is not int or not 0 <= min_session_w <= max_power_w:
        return "site_min_session_w must be in 0..site_max_power_w"
    return None


def divide(limit_w: int, min_session_w: int, caps_w: Sequence[int]) -> list[int]:
    """The power of each transaction (given oldest first by its cap), in watts; see the module doc.

    Total: negative inputs count as 0. sum(result) <= limit_w, result[i] <= caps_w[i], and every
    transaction admitted (non-zero need, or a cap of 0) gets at least min(min_session_w, cap)."""
    limit = max(0, limit_w)
    caps = [max(0, cap) for cap in caps_w]
    needs = [min(max(0, min_session_w), cap) for cap in caps]
    admitted: list[int] = []
    used = 0
    for index, need in enumerate(needs):
        if used + need > limit:
            break
        used += need
        admitted.append(index)
    power = [0] * len(caps)
    remaining, left = limit, len(admitted)
    for index in sorted(admitted, key=lambda i: (caps[i], i)):  # the smallest caps first: water-filling
        share = min(caps[index], remaining // left)
        power[index] = share
        remaining -= share
        left -= 1
    return power


def profile_id(charger_id: str, tx_ref: str) -> int:
    """The chargingProfileId of a transaction's site profile (31 bits, the same for its updates)."""
    return int.from_bytes(keccak256(b"devsen:site-profile:" + charger_id.encode() + b":" + tx_ref.encode())[:4],
                          "big") >> 1


def profile_command_id(share: SiteShare, height: int) -> bytes:
    """The id of the SetChargingProfile the ledger issues for `share` at `height`."""
    return keccak256(b"devsen:SetChargingProfile:" + share.charger_id.encode() + b":" + share.tx_ref.encode()
                     + b":" + height.to_bytes(8, "big"))


def set_charging_profile_payload(share: SiteShare) -> dict[str, Any]:
    """The SetChargingProfile CALL payload (TxProfile) for `share` in its OCPP version."""
    number = profile_id(share.charger_id, share.tx_ref)
    period = {"startPeriod": 0, "limit": share.power_w}
    if share.ocpp_version == "1.6":
        profile: dict[str, Any] = {
            "chargingProfileId": number, "stackLevel": PROFILE_STACK_LEVEL, "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Relative",
            "chargingSchedule": {"chargingRateUnit": "W", "chargingSchedulePeriod": [period]}}
        if share.tx_ref.isdigit():
            profile["transactionId"] = int(share.tx_ref)
        return {"connectorId": share.connector_id, "csChargingProfiles": profile}
    return {"evseId": share.connector_id, "chargingProfile": {
        "id": number, "stackLevel": PROFILE_STACK_LEVEL, "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Relative", "transactionId": share.tx_ref,
        "chargingSchedule": [{"id": number, "chargingRateUnit": "W", "chargingSchedulePeriod": [period]}]}}


class SiteBook:
    """Site membership of chargers and the committed schedule of each site."""

    def __init__(self) -> None:
        self.members: HashedTable[str, int] = HashedTable("site_members")
        self.schedules: HashedTable[int, SiteSchedule] = HashedTable("site_schedules")
        self._by_site: dict[int, set[str]] = {}  # derived from `members` (rebuilt on restore)

    def in_use(self) -> bool:
        return bool(len(self.members) or len(self.schedules))

    def chargers_of(self, site_id: int) -> list[str]:
        return sorted(self._by_site.get(site_id, ()))

    def note_member(self, charger_id: str, site_id: int) -> set[int]:
        """The charger is in `site_id` (0: none) at this block; the sites whose membership changed."""
        old = self.members.get(charger_id)
        if old == site_id or (old is None and site_id == 0):
            return set()
        changed = {s for s in (old, site_id) if s}
        if old is not None:
            self._forget(charger_id)
        if site_id:
            self.members.put(charger_id, site_id)
            self._by_site.setdefault(site_id, set()).add(charger_id)
            while len(self.members) > MAX_MEMBERS:
                changed.add(self.members.get(self.members.oldest()) or 0)
                self._forget(self.members.oldest())
        changed.discard(0)
        return changed

    def _forget(self, charger_id: str) -> None:
        site_id = self.members.pop(charger_id)
        chargers = self._by_site.get(site_id)
        if chargers is not None:
            chargers.discard(charger_id)
            if not chargers:
                del self._by_site[site_id]

    def settle(self, schedule: SiteSchedule) -> list[SiteShare]:
        """Commit `schedule` (dropped if the site has no members left); the shares that are new or
        changed power, to tell their chargers. The height stays when nothing changed."""
        old = self.schedules.get(schedule.site_id)
        before = {} if old is None else {(s.charger_id, s.tx_ref): s.power_w for s in old.shares}
        changed = [s for s in schedule.shares if before.get((s.charger_id, s.tx_ref)) != s.power_w]
        if schedule.site_id not in self._by_site:
            if old is not None:
                self.schedules.pop(schedule.site_id)
            return changed
        unchanged = old is not None and not changed and len(before) == len(schedule.shares) \
            and (old.max_power_w, old.min_session_w) == (schedule.max_power_w, schedule.min_session_w)
        if not unchanged:
            self.schedules.put(schedule.site_id, schedule)
        return changed

    def to_state(self) -> list[Any]:
        return [self.members.to_state(), self.schedules.to_state()]

    def restore(self, state: Any) -> None:
        members, schedules = state
        for charger_id, site_id in members:
            if type(charger_id) is not str or type(site_id) is not int or site_id < 1:
                raise ValueError("site_members entries must be [charger, site id >= 1]")
            self.members.put(charger_id, site_id)
            self._by_site.setdefault(site_id, set()).add(charger_id)
        for site_id, (sid, max_w, min_w, height, shares) in schedules:
            if site_id != sid or site_problem(sid, max_w, min_w) is not None:
                raise ValueError("site_schedules entries must be [id, schedule of that site]")
            self.schedules.put(site_id, SiteSchedule(sid, max_w, min_w, height,
                                                     tuple(SiteShare(*share) for share in shares)))
