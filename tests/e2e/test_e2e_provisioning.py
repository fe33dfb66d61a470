"""Provisioning end to end (issue 13), real node processes: a boot gets the ledger's provisioning
commands (1.6 ChangeConfiguration, 2.0.1 SetVariables and SetNetworkProfile naming the 4 nodes'
on-chain endpoints, then NetworkConfigurationPriority), their outcomes are committed alike at
every node (GET /v1/chargers/{id}/provisioning), and a reboot at another node re-sends nothing.
A charger that rejects settings has the outcomes recorded and visible; the manager (only) changes
the device's profile; a transaction ending without an energy reading shows `no_energy_reading` to
the manager (the charger's anomalies) and the driver (the escrow session)."""

from __future__ import annotations

import time
from typing import Any

import test_e2e_network
import trio
from test_e2e_commands import cli, same_everywhere

from anchoring.chain import ChainClient, TransactionSender, connect
from devsen.demo_charger import connect_demo_charger, iso_now
from devsen.devnet import DEMO_CHARGER, DEMO_ID_TAG, DEMO_PASSWORD, DEMO_PRICE_PER_KWH
from devsen.http_api import http_get_json
from devsen.ledger.chain import MAX_POWER_W
from devsen.ledger.provisioning import MAX_NETWORK_SLOTS, desired_settings, network_slots
from devsen.wallet import create_device, open_prepaid_session

network = test_e2e_network.network  # the devnet fixture: one network for this module
PROVISIONING = "/v1/chargers/{}/provisioning"
ACTIONS = ("ChangeConfiguration", "SetVariables", "SetNetworkProfile")
MEASURAND_VARIABLES = tuple(f"SampledDataCtrlr/{v}" for v in ("TxStartedMeasurands", "TxUpdatedMeasurands",
                                                               "TxEndedMeasurands"))


def provisioning_calls(charger: Any) -> list[tuple[str, Any]]:
    return [(a, p) for a, p in charger.csms_calls if a in ACTIONS]


def node_slots(nodes: list[Any], charger_id: str) -> tuple[str, ...]:
    """The network profiles the ledger derives for `charger_id`: the nodes' endpoints by validator address."""
    by_address = sorted((bytes(n.keys.validator.address), n.ocpp_url) for n in nodes)
    return network_slots(charger_id, [url for _, url in by_address])


def wanted_count(version: str, nodes: list[Any]) -> int:
    """Settings of a boot: the profile's, and in 2.0.1 a network profile per node and the priority."""
    return len(desired_settings(version)) + (min(len(nodes), MAX_NETWORK_SLOTS) + 1 if version == "2.0.1" else 0)


async def serve_until(charger: Any, wanted: int) -> None:
    """Answer the node's calls until `wanted` provisioning commands have arrived."""
    def enough() -> bool:
        return len(provisioning_calls(charger)) >= wanted

    with trio.fail_after(60):
        while not enough():
            await charger.serve(2, until=enough)


async def settled(nodes: list[Any], version: str, charger_id: str = DEMO_CHARGER, count: int = 0) -> dict[str, Any]:
    """The provisioning document of `version` once at least `count` settings are listed and every
    setting's command has its outcome, alike at every node."""
    with trio.fail_after(60):
        while True:
            doc = await same_everywhere(nodes, PROVISIONING.format(charger_id), settled=False)
            if doc["ocpp_version"] == version and len(doc["settings"]) >= max(count, 1) \
                    and all(s["status"] not in (None, "pending") for s in doc["settings"]):
                return doc
            await trio.sleep(0.5)


async def test_boot_provisions_outcomes_agree_and_a_reboot_resends_nothing(network: dict[str, Any]) -> None:
    nodes = network["nodes"]
    for version in ("1.6", "2.0.1"):
        wanted = wanted_count(version, nodes)
        async with connect_demo_charger(nodes[1].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD,
                                        ocpp_version=version) as charger:
            assert (await charger.boot(connector=1))["status"] == "Accepted"
            await serve_until(charger, wanted)
            doc = await settled(nodes, version, count=wanted)
        assert doc["ocpp_version"] == version
        assert [s["status"] for s in doc["settings"]] == ["result"] * wanted, doc
        assert all(s["satisfied"] for s in doc["settings"]), doc
        assert doc["profile"]["source"] == "default"
        if version == "2.0.1":  # the 4 nodes' on-chain endpoints, in the ledger's priority order, at every node
            slots = node_slots(nodes, DEMO_CHARGER)
            assert sorted(slots) == sorted(n.ocpp_url for n in nodes)
            assert [s["url"] for s in doc["network"]["slots"]] == list(slots)
            assert [(s["key"], s["desired"]) for s in doc["settings"][4:]] == [
                *((f"NetworkConnectionProfiles/{i}", url) for i, url in enumerate(slots, start=1)),
                ("OCPPCommCtrlr/NetworkConfigurationPriority", "1,2,3,4")]
            assert [charger.config[f"NetworkConnectionProfiles/{i}"][0] for i in (1, 2, 3, 4)] == list(slots)
            assert charger.config["OCPPCommCtrlr/NetworkConfigurationPriority"] == ("1,2,3,4", False)
        print(f"{version}: {wanted} provisioning commands sent and answered, identical at {len(nodes)} nodes")
        async with connect_demo_charger(nodes[2].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD,
                                        ocpp_version=version) as charger:
            assert (await charger.boot(connector=1))["status"] == "Accepted"
            await charger.serve(6)
            assert provisioning_calls(charger) == []  # the reboot re-sends nothing already set


async def test_rejected_settings_the_managers_profile_and_a_transaction_without_energy(network: dict[str, Any]) -> None:
    """A fresh 2.0.1 charger whose sampled-data variables are read-only (its firmware refuses them)."""
    began = time.perf_counter()
    nodes, anvil = network["nodes"], network["anvil"]
    charger_id, password = "NOREAD-CS-1", "noread-charger-password"
    w3 = connect(anvil.url)
    manager = ChainClient(w3, network["deployment"], TransactionSender(w3, anvil.dev_keys[1]))
    driver = network["seeded"]["driver_client"]
    await trio.to_thread.run_sync(lambda: create_device(manager, charger_id, password, connectors=1,
                                                        price_per_kwh=DEMO_PRICE_PER_KWH, max_power_w=MAX_POWER_W))
    session_id = await trio.to_thread.run_sync(lambda: open_prepaid_session(driver, charger_id, 1, DEMO_ID_TAG,
                                                                            2 * 10**6))
    async with connect_demo_charger(nodes[0].ocpp_url, charger_id, password, ocpp_version="2.0.1") as charger:
        for key in MEASURAND_VARIABLES:
            charger.config[key] = ("", True)
        assert (await charger.boot(connector=1))["status"] == "Accepted"
        wanted = wanted_count("2.0.1", nodes)
        await serve_until(charger, wanted)
        doc = await settled(nodes, "2.0.1", charger_id, count=wanted)
        rows = {s["key"]: s for s in doc["settings"]}
        for key in MEASURAND_VARIABLES:  # refused by the charger: recorded, visible, not satisfied
            assert rows[key]["status"] == "result" and not rows[key]["satisfied"], rows[key]
            assert rows[key]["outcome"]["setVariableResult"][0]["attributeStatus"] == "Rejected"
        assert rows["SampledDataCtrlr/TxUpdatedInterval"]["satisfied"]
        assert [s["url"] for s in doc["network"]["slots"]] == list(node_slots(nodes, charger_id))

        # The manager's override: applied by the ledger, then sent; the charger keeps refusing measurands.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(charger.serve, 60)
            code, refused = await cli(network, nodes[2], "provisioning", charger_id, "--interval", "30", key="driver")
            assert code == 1 and "not by the device's manager" in refused["error"], refused
            code, silly = await cli(network, nodes[2], "provisioning", charger_id, "--interval", "0")
            assert code == 1 and "sample_interval_s must be an integer of 10..3600" in silly["error"], silly
            code, applied = await cli(network, nodes[3], "provisioning", charger_id, "--interval", "30",
                                      "--measurands", "Voltage")
            assert code == 0 and applied["status"] == "applied", applied
            doc = await settled(nodes, "2.0.1", charger_id, count=wanted)
            nursery.cancel_scope.cancel()
        assert doc["profile"] == {"source": "manager", "sample_interval_s": 30, "interval_rule": "exactly",
                                  "measurands": ["Energy.Active.Import.Register", "Voltage"],
                                  "command_id": applied["command_id"], "height": applied["height"]}
        assert {s["key"]: s["desired"] for s in doc["settings"]}["SampledDataCtrlr/TxUpdatedInterval"] == "30"
        assert charger.config["SampledDataCtrlr/TxUpdatedInterval"] == ("30", False)

        # A paid transaction that ends with no meter reading at all.
        tx = {"transactionId": "NOREAD-TX-1"}
        started = await charger.call("TransactionEvent", {
            "eventType": "Started", "timestamp": iso_now(), "triggerReason": "Authorized",
            "seqNo": charger.next_seq_no(), "transactionInfo": tx, "evse": {"id": 1, "connectorId": 1},
            "idToken": {"idToken": DEMO_ID_TAG, "type": "ISO14443"}})
        assert started["idTokenInfo"]["status"] == "Accepted", started
        await charger.call("TransactionEvent", {
            "eventType": "Ended", "timestamp": iso_now(), "triggerReason": "EVDeparted",
            "seqNo": charger.next_seq_no(), "transactionInfo": {**tx, "stoppedReason": "EVDisconnected"}})
    manager_view: dict[str, Any] = {}
    driver_view: dict[str, Any] = {}
    with trio.move_on_after(30):
        while True:
            manager_view = await same_everywhere(nodes, f"/v1/chargers/{charger_id}/anomalies", ("height",))
            _, driver_view = await http_get_json(f"{nodes[1].http_url}/v1/sessions/0x{session_id.hex()}", timeout=10)
            kinds = [a["kind"] for a in (driver_view or {}).get("session", {}).get("anomalies", [])]
            if "no_energy_reading" in [a["kind"] for a in manager_view["items"]] and "no_energy_reading" in kinds:
                break
            await trio.sleep(0.5)
    assert "no_energy_reading" in [a["kind"] for a in manager_view.get("items", [])], manager_view
    assert "no_energy_reading" in [a["kind"] for a in driver_view["session"].get("anomalies", [])], driver_view
    print(f"rejected provisioning, the manager's profile and a no-energy transaction: "
          f"{time.perf_counter() - began:.1f} s")
