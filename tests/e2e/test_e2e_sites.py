"""Load management and the driver's card, end to end on a real local network (anvil, the
contracts, 4 `devsen node` processes, demo chargers over OCPP WebSockets).

- A device manager puts 3 chargers (22 kW connectors) in a 30 kW site (6 kW minimum). Each
  charger, connected to another node, starts a prepaid transaction; the network sends each a
  SetChargingProfile (TxProfile) and the profiles the chargers hold sum to at most 30 kW (10 kW
  each once all three run); every node reports the same committed schedule (GET /v1/sites/{id}).
  When one stops, the other two are re-divided (15 kW each).
- A remote-started transaction (session token as idTag) is stopped by the driver's own card at
  a demo charger that enforces parentIdTag matching; another registered card is refused.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from e2e_devnet import running_devnet
from ocpp.messages import get_validator

from anchoring.chain import ChainClient, TransactionSender, connect
from anchoring.chain.client import SessionStatus
from devsen.demo_charger import DemoCharger, connect_demo_charger, iso_now
from devsen.devnet import DEMO_CHARGER, DEMO_ID_TAG, DEMO_PASSWORD
from devsen.http_api import http_get_json
from devsen.ledger import session_token
from devsen.wallet import create_device, open_prepaid_session

NODES = 4
SITE_CHARGERS = ("SITE-CP-1", "SITE-CP-2", "SITE-CP-3")
SITE_PASSWORD = "site-charger-password"
SITE_LIMIT_W, SITE_MIN_W, CONNECTOR_W = 30_000, 6_000, 22_000
DEPOSIT = 5 * 10**6


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_devnet(tmp_path_factory.mktemp("devnet"), NODES) as devnet:
        yield devnet


def _setup_site(network: dict[str, Any]) -> tuple[int, dict[str, bytes]]:
    """On chain: 3 chargers of the demo manager in one site, a prepaid session on each."""
    anvil = network["anvil"]
    w3 = connect(anvil.url)
    manager = ChainClient(w3, network["deployment"], TransactionSender(w3, anvil.dev_keys[1]))
    for charger in SITE_CHARGERS:
        create_device(manager, charger, SITE_PASSWORD, connectors=1, max_power_w=CONNECTOR_W)
    manager.create_site(SITE_LIMIT_W, SITE_MIN_W)
    site_id = int(manager.read("DeviceFactory", "siteCount", block="latest"))
    for charger in SITE_CHARGERS:
        manager.set_device_site(charger, site_id)
    driver = network["seeded"]["driver_client"]
    sessions = {charger: open_prepaid_session(driver, charger, 1, DEMO_ID_TAG, DEPOSIT) for charger in SITE_CHARGERS}
    return site_id, sessions


def _profile_limits(charger: DemoCharger) -> dict[str, int]:
    """Transaction -> the limit (W) of the last SetChargingProfile the charger received for it."""
    limits = {}
    for action, payload in charger.csms_calls:
        if action == "SetChargingProfile":
            get_validator(2, action, "1.6").validate(payload)
            profile = payload["csChargingProfiles"]
            assert profile["chargingProfilePurpose"] == "TxProfile"
            assert profile["chargingSchedule"]["chargingRateUnit"] == "W"
            limits[str(profile["transactionId"])] = profile["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"]
    return limits


async def _serve_until(chargers: list[DemoCharger], wanted: dict[str, tuple[str, int]], timeout_s: float) -> None:
    """Answer CSMS calls on every charger until each holds the wanted (transaction, limit W)."""
    def done(charger: DemoCharger) -> bool:
        tx, limit = wanted[charger.charge_box_id]
        return _profile_limits(charger).get(tx) == limit

    with trio.fail_after(timeout_s):
        while not all(done(c) for c in chargers):
            async with trio.open_nursery() as nursery:
                for charger in chargers:
                    nursery.start_soon(charger.serve, 1.0, lambda c=charger: done(c))


async def _site_everywhere(nodes: list[Any], site_id: int, shares: dict[str, int], timeout_s: float) -> list[Any]:
    """Wait until every node reports this division of the site; the documents."""
    with trio.fail_after(timeout_s):
        while True:
            documents = []
            for node in nodes:
                try:
                    status, document = await http_get_json(f"{node.http_url}/v1/sites/{site_id}", timeout=10)
                except (OSError, trio.TooSlowError):
                    status, document = 0, None
                documents.append(document["site"] if status == 200 else None)
            if all(d is not None and {s["charger_id"]: s["power_w"] for s in d["shares"]} == shares
                   for d in documents):
                return documents
            await trio.sleep(0.5)


async def test_a_site_limit_is_shared_by_three_chargers_and_redivided_when_one_stops(network: Any) -> None:
    nodes = network["nodes"]
    site_id, _ = await trio.to_thread.run_sync(_setup_site, network)
    started_at = trio.current_time()
    async with connect_demo_charger(nodes[0].ocpp_url, SITE_CHARGERS[0], SITE_PASSWORD) as a, \
            connect_demo_charger(nodes[1].ocpp_url, SITE_CHARGERS[1], SITE_PASSWORD) as b, \
            connect_demo_charger(nodes[2].ocpp_url, SITE_CHARGERS[2], SITE_PASSWORD) as c:
        chargers = [a, b, c]
        tx = {}
        for charger in chargers:
            assert (await charger.boot(connector=1))["status"] == "Accepted"
            start = await charger.call("StartTransaction", {"connectorId": 1, "idTag": DEMO_ID_TAG, "meterStart": 0,
                                                            "timestamp": iso_now()})
            assert start["idTagInfo"]["status"] == "Accepted", start
            tx[charger.charge_box_id] = str(start["transactionId"])
        await _serve_until(chargers, {c.charge_box_id: (tx[c.charge_box_id], 10_000) for c in chargers}, 60)
        all_three_s = trio.current_time() - started_at
        held = [_profile_limits(ch)[tx[ch.charge_box_id]] for ch in chargers]
        assert sum(held) <= SITE_LIMIT_W and held == [10_000] * 3
        documents = await _site_everywhere(nodes, site_id, {ch: 10_000 for ch in SITE_CHARGERS}, 30)
        assert all(d == documents[0] for d in documents)  # one committed schedule, at every node
        assert documents[0]["allocated_w"] == 30_000 <= documents[0]["max_power_w"] == SITE_LIMIT_W
        assert sorted(documents[0]["chargers"]) == sorted(SITE_CHARGERS)

        stopped_at = trio.current_time()
        stop = await c.call("StopTransaction", {"transactionId": int(tx[c.charge_box_id]), "meterStop": 10,
                                                "timestamp": iso_now(), "idTag": DEMO_ID_TAG})
        assert stop["idTagInfo"]["status"] == "Accepted"
        await _serve_until([a, b], {ch.charge_box_id: (tx[ch.charge_box_id], 15_000) for ch in (a, b)}, 60)
        redivided_s = trio.current_time() - stopped_at
        held = [_profile_limits(ch)[tx[ch.charge_box_id]] for ch in (a, b)]
        assert sum(held) <= SITE_LIMIT_W and held == [15_000, 15_000]
        documents = await _site_everywhere(nodes, site_id, {SITE_CHARGERS[0]: 15_000, SITE_CHARGERS[1]: 15_000}, 30)
        assert all(d == documents[0] for d in documents)
    print(f"\nsite of 3 chargers: profiles of 10 kW at all three {all_three_s:.1f} s after the first boot; "
          f"re-divided to 15 kW {redivided_s:.1f} s after the stop")
    status, _ = await http_get_json(f"{nodes[3].http_url}/v1/sites/{site_id + 50}", timeout=10)
    assert status == 404


async def test_the_drivers_card_stops_a_remote_started_session_another_card_does_not(network: Any) -> None:
    nodes, driver = network["nodes"], network["seeded"]["driver_client"]
    await trio.to_thread.run_sync(driver.register_id_tag, "OTHER-CARD-9")  # a registered card, not this session's
    async with connect_demo_charger(nodes[3].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        assert (await charger.boot(connector=2))["status"] == "Accepted"
        session_id = await trio.to_thread.run_sync(open_prepaid_session, driver, DEMO_CHARGER, 2, DEMO_ID_TAG, DEPOSIT)
        token = session_token(session_id)
        with trio.fail_after(30):
            request = await charger.next_remote_start(30)
            while request["idTag"] != token:  # a start for an older session of this charger
                request = await charger.next_remote_start(30)
        start = await charger.call("StartTransaction", {"connectorId": 2, "idTag": token, "meterStart": 100,
                                                        "timestamp": iso_now()})
        assert start["idTagInfo"]["status"] == "Accepted"
        tx_ref = str(start["transactionId"])
        assert charger.running[tx_ref]["parent"] is not None
        await charger.call("MeterValues", {"connectorId": 2, "transactionId": int(tx_ref), "meterValue": [
            {"timestamp": iso_now(), "sampledValue": [{"value": "600", "measurand": "Energy.Active.Import.Register",
                                                      "unit": "Wh"}]}]})
        other = await charger.present_card(tx_ref, "OTHER-CARD-9")
        assert other["stopped"] is False and other["authorize"]["idTagInfo"]["status"] == "Accepted"
        assert tx_ref in charger.running
        mine = await charger.present_card(tx_ref, DEMO_ID_TAG)
        assert mine["stopped"] is True and mine["stop"]["idTagInfo"]["status"] == "Accepted"
    with trio.fail_after(60):
        while (session := driver.session(session_id, "latest")).status != SessionStatus.SETTLED:
            await trio.sleep(0.5)
    assert session.energy_wh == 500

