"""Load management (devsen/ledger/sites.py): the division of a site's power, property-style,
and the ledger re-dividing it as transactions start and stop, issuing schema-valid
SetChargingProfile (TxProfile) commands in both OCPP versions; hostile chain data and a
hostile division input never make the ledger raise; a snapshot keeps the schedule."""

from __future__ import annotations

import json
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_world import (
    CHARGER,
    CHARGER_201,
    ESCROW_1,
    ESCROW_2,
    ESCROW_201,
    T0_MS,
    World,
    ev,
    start16,
    stop16,
    tx_event,
)
from ocpp.messages import get_validator

from devsen.ledger import Ledger
from devsen.ledger.sites import (
    MAX_SITE_POWER_W,
    SiteShare,
    divide,
    profile_id,
    set_charging_profile_payload,
)

caps_strategy = st.lists(st.integers(min_value=0, max_value=4_000_000), max_size=40)


@settings(max_examples=400, deadline=None)
@given(limit=st.integers(min_value=0, max_value=MAX_SITE_POWER_W), minimum=st.integers(min_value=0, max_value=400_000),
       caps=caps_strategy)
def test_division_respects_the_limit_caps_and_minimum_and_shares_equally(limit: int, minimum: int,
                                                                        caps: list[int]) -> None:
    power = divide(limit, minimum, caps)
    assert power == divide(limit, minimum, list(caps))  # deterministic
    assert len(power) == len(caps) and sum(power) <= limit
    assert all(0 <= p <= cap for p, cap in zip(power, caps, strict=True))
    needs = [min(minimum, cap) for cap in caps]
    admitted = 0
    while admitted < len(caps) and sum(needs[:admitted + 1]) <= limit:
        admitted += 1
    assert all(p >= need for p, need in zip(power[:admitted], needs, strict=False))  # the oldest get their minimum
    assert all(p == 0 for p in power[admitted:])  # the first that does not fit and every later one: paused
    uncapped = [p for p, cap in zip(power[:admitted], caps, strict=False) if p < cap]
    assert not uncapped or max(uncapped) - min(uncapped) <= 1  # equal shares (whole watts)
    if uncapped:  # nothing is left over but rounding: someone could have had more
        assert limit - sum(power) < len(uncapped)


@given(limit=st.integers(min_value=-2**70, max_value=2**70), minimum=st.integers(min_value=-2**70, max_value=2**70),
       caps=st.lists(st.integers(min_value=-2**70, max_value=2**70), max_size=10))
def test_division_is_total_on_hostile_integers(limit: int, minimum: int, caps: list[int]) -> None:
    power = divide(limit, minimum, caps)
    assert sum(power) <= max(0, limit) and all(p >= 0 for p in power)


def test_division_examples() -> None:
    assert divide(30_000, 6_000, [22_000, 22_000, 22_000]) == [10_000, 10_000, 10_000]
    assert divide(30_000, 6_000, [22_000, 22_000]) == [15_000, 15_000]
    assert divide(30_000, 6_000, [4_000, 22_000, 22_000]) == [4_000, 13_000, 13_000]  # a small car's cap is its share
    assert divide(30_000, 11_000, [22_000] * 3) == [15_000, 15_000, 0]  # 3 x 11 kW > 30 kW: the newest pauses
    assert divide(10, 0, [22_000] * 3) == [3, 3, 4]  # rounding: the last of the equal shares gets the rest
    assert divide(0, 0, [7]) == [0]


def test_profiles_validate_against_the_ocpp_schemas() -> None:
    for version, tx in (("1.6", "17"), ("2.0.1", "tx-a")):
        payload = set_charging_profile_payload(SiteShare("CP-1", tx, 2, version, 7_333))
        get_validator(2, "SetChargingProfile", version).validate(payload)
    payload = set_charging_profile_payload(SiteShare("CP-1", "17", 2, "1.6", 0))
    profile = payload["csChargingProfiles"]
    assert (profile["chargingProfilePurpose"], profile["transactionId"], payload["connectorId"]) == ("TxProfile", 17, 2)
    assert profile["chargingSchedule"]["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 0}]
    assert profile["chargingProfileId"] == profile_id("CP-1", "17") < 2**31


SITE = 7


def site_world(limit: int = 30_000, minimum: int = 6_000, cap: int = 22_000) -> World:
    """CP-1 (1.6, escrow on connectors 1 and 2) and CS-2 (2.0.1, escrow on EVSE 1) in site 7."""
    world = World()
    for charger in (CHARGER, CHARGER_201):
        device = world.chain.devices[charger]
        world.chain.devices[charger] = replace(device, max_power_w=cap, site_id=SITE, site_max_power_w=limit,
                                               site_min_session_w=minimum)
    return world


def profiles(outcome: object) -> list[tuple[str, str, int]]:
    """(charger, transaction, limit W) of the SetChargingProfile commands a block admitted."""
    found = []
    for admitted in outcome.admitted:  # type: ignore[attr-defined]
        record = admitted.record
        if record.action != "SetChargingProfile":
            continue
        payload = json.loads(record.payload_json)
        get_validator(2, "SetChargingProfile", record.ocpp_version).validate(payload)
        if record.ocpp_version == "1.6":
            profile = payload["csChargingProfiles"]
            tx, period = str(profile["transactionId"]), profile["chargingSchedule"]["chargingSchedulePeriod"]
        else:
            profile = payload["chargingProfile"]
            tx, period = profile["transactionId"], profile["chargingSchedule"][0]["chargingSchedulePeriod"]
        found.append((record.charger_id, tx, period[0]["limit"]))
    return sorted(found)


def shares(world: World) -> list[tuple[str, str, int]]:
    schedule = world.ledger.sites.schedules.get(SITE)
    assert schedule is not None
    assert schedule.allocated_w <= schedule.max_power_w
    return sorted((s.charger_id, s.tx_ref, s.power_w) for s in schedule.shares)


def test_a_site_is_divided_as_transactions_start_and_stop_with_profiles_for_the_changes() -> None:
    world = site_world()
    first = world.block(start16(connector=1))
    assert profiles(first) == [(CHARGER, "1", 22_000)]  # alone: its connector's maximum
    second = world.block(start16(connector=2, meter=500))
    assert profiles(second) == [(CHARGER, "1", 15_000), (CHARGER, "2", 15_000)]
    third = world.block(tx_event("Started", "tx-a", tag="TAG-OK", wh=100))
    assert profiles(third) == [(CHARGER, "1", 10_000), (CHARGER, "2", 10_000), (CHARGER_201, "tx-a", 10_000)]
    assert world.block(ev("Heartbeat", {})).admitted == ()  # nothing changed: nothing sent
    stopped = world.block(stop16(1, 3_000, T0_MS + 5_000))
    assert profiles(stopped) == [(CHARGER, "2", 15_000), (CHARGER_201, "tx-a", 15_000)]
    assert shares(world) == [(CHARGER, "2", 15_000), (CHARGER_201, "tx-a", 15_000)]

    # The schedule is part of the state: a snapshot restores it, byte for byte.
    restored = Ledger.from_bytes(world.ledger.to_bytes())
    assert restored.state_hash() == world.ledger.state_hash()
    assert restored.sites.schedules.get(SITE) == world.ledger.sites.schedules.get(SITE)


def test_minimum_times_sessions_beyond_the_limit_pauses_the_newest() -> None:
    world = site_world(limit=20_000, minimum=8_000)
    world.block(start16(connector=1))
    world.block(start16(connector=2, meter=500))
    third = world.block(tx_event("Started", "tx-a", tag="TAG-OK", wh=100))
    assert profiles(third) == [(CHARGER_201, "tx-a", 0)]  # 3 x 8 kW > 20 kW: told to pause
    assert shares(world) == [(CHARGER, "1", 10_000), (CHARGER, "2", 10_000), (CHARGER_201, "tx-a", 0)]
    resumed = world.block(stop16(2, 3_000, T0_MS + 5_000))
    assert profiles(resumed) == [(CHARGER_201, "tx-a", 10_000)]  # CP-1 transaction 1 keeps 10 kW: not re-sent


def test_a_charger_taken_out_of_the_site_frees_its_share() -> None:
    world = site_world()
    world.block(start16(connector=1))
    world.block(tx_event("Started", "tx-a", tag="TAG-OK", wh=100))
    assert shares(world) == [(CHARGER, "1", 15_000), (CHARGER_201, "tx-a", 15_000)]
    world.chain.devices[CHARGER_201] = replace(world.chain.devices[CHARGER_201], site_id=0, site_max_power_w=0,
                                               site_min_session_w=0)
    out = world.block(tx_event("Updated", "tx-a", seq=1, wh=200))
    assert profiles(out) == [(CHARGER, "1", 22_000)]
    assert shares(world) == [(CHARGER, "1", 22_000)]


def test_unpaid_transactions_and_sites_nobody_uses_cost_nothing() -> None:
    world = World()  # no sites
    out = world.block(start16(connector=1))
    assert profiles(out) == [] and not world.ledger.sites.in_use()
    world = site_world()
    world.block(start16(connector=1, tag="TAG-NOPAY"))  # refused (no escrow): not running
    assert shares(world) == []


def test_hostile_site_data_from_the_chain_is_refused_not_raised() -> None:
    world = site_world()
    device = world.chain.devices[CHARGER]
    for bad in ({"site_id": -1}, {"site_id": 2**32}, {"site_max_power_w": 0}, {"site_max_power_w": MAX_SITE_POWER_W + 1},
                {"site_min_session_w": 40_000}, {"site_id": "7"}):
        forged = object.__new__(type(device))
        for name in device.__slots__:
            object.__setattr__(forged, name, bad.get(name, getattr(device, name)))
        world.chain.devices[CHARGER] = forged
        outcome = world.block(ev("Heartbeat", {}))
        assert outcome.results[0].anomalies == ("bad_chain_data",)
    assert world.ledger.sites.schedules.get(SITE) is None or shares(world) == []
    for escrow in (ESCROW_1, ESCROW_2, ESCROW_201):
        assert escrow in world.chain.sessions
