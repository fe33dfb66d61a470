"""Every manager command of issue 13 round trips, in OCPP 1.6 and 2.0.1, on one devnet
(anvil, the contracts, 4 `devsen node` processes) with the `ocpp` package's own ChargePoint
as the charger (tests/e2e/ocpp_charger_client.py, real WebSockets).

For each version: the device manager (anvil dev key 1) signs each command and submits it to a
node that does NOT hold the charger's connection (nodes 0, 2, 3; the charger is at node 1); the
outcome is committed and identical at every node (`GET /v1/commands/{id}`); the charger got
exactly the signed payload, once. Also: a command for an offline charger reaches it when it
connects at another node; configuration becomes shared state (GetConfiguration /
ChangeConfiguration, GetVariables / SetVariables / GetBaseReport + NotifyReport); a
non-manager's command, a replayed nonce and a command expiring too soon to be proposed are
refused and never reach the charger; an expired command is never sent. Latencies (submit -> outcome committed at the submitting node)
go to bench/results/commands_e2e.json for bench/commands.py.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from e2e_devnet import running_devnet
from ocpp_charger_client import ocpp_charger
from test_e2e_commands import command_domain, same_everywhere

from anchoring.chain import ChainClient, TransactionSender, connect
from devsen.http_api import http_get_json, http_post_json
from devsen.ledger.chain import MAX_POWER_W
from devsen.ledger.commands import ChargerCommand, json_text, sign_command
from devsen.wallet import create_device, wait_for_confirmations
from primitives.eip712 import Domain, SigningKey

NODES = 4
CHARGER_NODE = 1  # the node holding the chargers' connections; commands go to the others
SUBMIT_NODES = (0, 2, 3)
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "commands_e2e.json"
SEQUENTIAL = 8  # the first commands of each version are sent one at a time (clean latencies)
EXPIRY_S = 60  # an expiring command: past the proposers' 30 s margin, so it is admitted

CHARGERS = {"1.6": ("RT-CP-16", "round-trip-password-16"), "2.0.1": ("RT-CP-201", "round-trip-password-201")}
OFFLINE = {"1.6": ("RT-OFF-16", "offline-password-16"), "2.0.1": ("RT-OFF-201", "offline-password-201")}
LATER = "2026-12-31T00:00:00Z"
TOKEN = {"idToken": "RT-TAG-1", "type": "ISO14443"}

# (action, payload, expected outcome or None when only "a result" is expected), in sending order.
COMMANDS: dict[str, list[tuple[str, dict[str, Any], dict[str, Any] | None]]] = {
    "1.6": [
        ("GetConfiguration", {}, None),
        ("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "60"}, {"status": "Accepted"}),
        ("SendLocalList", {"listVersion": 3, "updateType": "Full", "localAuthorizationList": [
            {"idTag": "RT-TAG-1", "idTagInfo": {"status": "Accepted"}}]}, {"status": "Accepted"}),
        ("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": {
            "chargingProfileId": 7, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute", "chargingSchedule": {
                "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.5}]}}},
         {"status": "Accepted"}),
        ("Reset", {"type": "Soft"}, {"status": "Accepted"}),
        ("DataTransfer", {"vendorId": "com.devsen", "messageId": "echo", "data": '{"snake_key": 1}'},
         {"status": "Accepted", "data": '{"snake_key": 1}'}),
        ("UnlockConnector", {"connectorId": 1}, {"status": "Unlocked"}),
        ("RemoteStopTransaction", {"transactionId": 4242}, {"status": "Rejected"}),  # no such transaction
        ("TriggerMessage", {"requestedMessage": "Heartbeat"}, {"status": "Accepted"}),
        ("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}, {"status": "Accepted"}),
        ("ClearCache", {}, {"status": "Accepted"}),
        ("GetLocalListVersion", {}, {"listVersion": 3}),
        ("ClearChargingProfile", {"id": 7}, {"status": "Accepted"}),
        ("GetCompositeSchedule", {"connectorId": 1, "duration": 3600, "chargingRateUnit": "A"}, None),
        ("UpdateFirmware", {"location": "http://127.0.0.1/firmware.bin", "retrieveDate": LATER}, {}),
        ("GetDiagnostics", {"location": "ftp://127.0.0.1/diagnostics/"}, {"fileName": "diagnostics.log"}),
        ("ReserveNow", {"connectorId": 1, "expiryDate": LATER, "idTag": "RT-TAG-1", "reservationId": 11},
         {"status": "Accepted"}),
        ("CancelReservation", {"reservationId": 11}, {"status": "Accepted"}),
    ],
    "2.0.1": [
        ("GetVariables", {"getVariableData": [
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
            {"component": {"name": "Nope"}, "variable": {"name": "Nothing"}}]}, None),
        ("SetVariables", {"setVariableData": [{"attributeValue": "30", "component": {"name": "SampledDataCtrlr"},
                                               "variable": {"name": "TxUpdatedInterval"}}]}, None),
        ("GetBaseReport", {"requestId": 5, "reportBase": "FullInventory"}, {"status": "Accepted"}),
        ("SendLocalList", {"versionNumber": 3, "updateType": "Full", "localAuthorizationList": [
            {"idToken": TOKEN, "idTokenInfo": {"status": "Accepted"}}]}, {"status": "Accepted"}),
        ("SetChargingProfile", {"evseId": 1, "chargingProfile": {
            "id": 7, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile", "chargingProfileKind": "Absolute",
            "chargingSchedule": [{"id": 1, "chargingRateUnit": "W",
                                  "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11000.5}]}]}},
         {"status": "Accepted"}),
        ("Reset", {"type": "OnIdle"}, {"status": "Accepted"}),
        ("DataTransfer", {"vendorId": "com.devsen", "messageId": "echo", "data": {"items": [1, 2.5], "note": "x"}},
         {"status": "Accepted", "data": {"items": [1, 2.5], "note": "x"}}),
        ("UnlockConnector", {"evseId": 1, "connectorId": 1}, {"status": "Unlocked"}),
        ("RequestStopTransaction", {"transactionId": "tx-4242"}, {"status": "Rejected"}),
        ("TriggerMessage", {"requestedMessage": "Heartbeat"}, {"status": "Accepted"}),
        ("ChangeAvailability", {"operationalStatus": "Inoperative", "evse": {"id": 1}}, {"status": "Accepted"}),
        ("ClearCache", {}, {"status": "Accepted"}),
        ("GetLocalListVersion", {}, {"versionNumber": 3}),
        ("ClearChargingProfile", {"chargingProfileId": 7}, {"status": "Accepted"}),
        ("GetCompositeSchedule", {"duration": 3600, "evseId": 1, "chargingRateUnit": "W"}, None),
        ("UpdateFirmware", {"requestId": 9, "firmware": {"location": "http://127.0.0.1/firmware.bin",
                                                         "retrieveDateTime": LATER}}, {"status": "Accepted"}),
        ("GetLog", {"logType": "DiagnosticsLog", "requestId": 10, "log": {"remoteLocation": "ftp://127.0.0.1/logs/"}},
         {"status": "Accepted", "filename": "station.log"}),
        ("ReserveNow", {"id": 11, "expiryDateTime": LATER, "idToken": TOKEN, "evseId": 1}, {"status": "Accepted"}),
        ("CancelReservation", {"reservationId": 11}, {"status": "Accepted"}),
    ],
}
VERSIONS = tuple(COMMANDS)
_nonce = [time.time_ns() // 1_000]
_latencies: dict[str, dict[str, Any]] = {}


def next_nonce() -> int:
    _nonce[0] += 1
    return _nonce[0]


def signed_body(domain: Domain, key: SigningKey, charger_id: str, version: str, action: str,
                payload: dict[str, Any], nonce: int | None = None, ttl_s: float = 600) -> str:
    """A POST /v1/chargers/{id}/commands body as a manager's client sends it."""
    nonce = next_nonce() if nonce is None else nonce
    expires = int((time.time() + ttl_s) * 1000)
    command = sign_command(key, domain, charger_id, version, action, payload, nonce, expires)
    return json_text({"ocpp_version": version, "action": action, "payload_json": command.payload_json.decode(),
                      "nonce": str(nonce), "expires_at_ms": expires,
                      "signature": "0x" + command.signature.hex()}).decode()


def command_id_of(domain: Domain, charger_id: str, body: str) -> str:
    doc = json.loads(body)
    command = ChargerCommand(charger_id, doc["ocpp_version"], doc["action"], doc["payload_json"].encode(),
                             int(doc["nonce"]), doc["expires_at_ms"], bytes.fromhex(doc["signature"][2:]))
    return "0x" + command.digest(domain).hex()


async def submit(node: Any, charger_id: str, body: str) -> tuple[int, dict[str, Any]]:
    """POST a command; a device the node has not read from chain yet is retried (agreed block lag)."""
    with trio.fail_after(90):
        while True:
            status, answer = await http_post_json(f"{node.http_url}/v1/chargers/{charger_id}/commands", body, 60)
            if not (status == 400 and "not registered" in answer.get("error", "")):
                return status, answer
            await trio.sleep(0.5)


async def outcome_at(node: Any, command_id: str) -> dict[str, Any]:
    with trio.fail_after(60):
        while True:
            status, doc = await http_get_json(f"{node.http_url}/v1/commands/{command_id}", timeout=10)
            if status == 200 and doc["status"] != "pending":
                return dict(doc)
            await trio.sleep(0.1)


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The devnet, its chargers registered (managed by dev key 1), and the commands that are to
    expire submitted for the offline chargers right away (their expiry runs while the rest is tested)."""
    with running_devnet(tmp_path_factory.mktemp("devnet"), NODES) as net:
        anvil = net["anvil"]
        w3 = connect(anvil.url)
        manager = ChainClient(w3, net["deployment"], TransactionSender(w3, anvil.dev_keys[1]))
        receipt = None
        for charger_id, password in (*CHARGERS.values(), *OFFLINE.values()):
            receipt = create_device(manager, charger_id, password, connectors=2, max_power_w=MAX_POWER_W)
        assert receipt is not None and wait_for_confirmations(manager, receipt.block_number)
        net["domain"] = command_domain(net)
        net["manager"] = SigningKey(bytes.fromhex(anvil.dev_keys[1].removeprefix("0x")))
        net["hostile"] = SigningKey(bytes.fromhex(anvil.dev_keys[2].removeprefix("0x")))
        net["expiring"] = trio.run(_submit_expiring, net)
        yield net
    if _latencies:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(_latencies, indent=1, sort_keys=True) + "\n")


async def _submit_expiring(net: dict[str, Any]) -> dict[str, tuple[str, float]]:
    """One Reset per offline charger, expiring in EXPIRY_S, submitted together (so they expire
    together): version -> (command id, expiry time)."""
    expiring = {}

    async def one(version: str, charger_id: str) -> None:
        payload = {"type": "Hard"} if version == "1.6" else {"type": "Immediate"}
        body = signed_body(net["domain"], net["manager"], charger_id, version, "Reset", payload, ttl_s=EXPIRY_S)
        status, answer = await submit(net["nodes"][0], charger_id, body)
        assert status == 200, answer
        expiring[version] = (answer["command_id"], json.loads(body)["expires_at_ms"] / 1000)

    async with trio.open_nursery() as nursery:
        for version, (charger_id, _) in OFFLINE.items():
            nursery.start_soon(one, version, charger_id)
    return expiring


@pytest.mark.parametrize("version", VERSIONS)
async def test_every_command_round_trips_from_other_nodes_identical_everywhere(devnet: dict[str, Any],
                                                                               version: str) -> None:
    nodes, domain, manager = devnet["nodes"], devnet["domain"], devnet["manager"]
    charger_id, password = CHARGERS[version]
    commands = COMMANDS[version]
    sent: dict[str, tuple[str, dict[str, Any]]] = {}  # command id -> (action, payload)
    latencies: list[float] = []
    submitted_at: dict[str, Any] = {}

    async def one(index: int, action: str, payload: dict[str, Any]) -> None:
        node = nodes[SUBMIT_NODES[index % len(SUBMIT_NODES)]]
        body = signed_body(domain, manager, charger_id, version, action, payload)
        began = time.perf_counter()
        status, answer = await submit(node, charger_id, body)
        assert status == 200, (action, answer)
        sent[answer["command_id"]] = (action, payload)
        submitted_at[answer["command_id"]] = node
        await outcome_at(node, answer["command_id"])
        if index < SEQUENTIAL:
            latencies.append(time.perf_counter() - began)

    # The first command is submitted while the charger is offline; it connects (at node 1) later.
    first_action, first_payload, _ = commands[0]
    offline_body = signed_body(domain, manager, charger_id, version, first_action, first_payload)
    status, answer = await submit(nodes[0], charger_id, offline_body)
    assert status == 200, answer
    offline_id = answer["command_id"]
    sent[offline_id] = (first_action, first_payload)
    pending = await same_everywhere(nodes, f"/v1/commands/{offline_id}", settled=False)
    assert pending["status"] == "pending" and pending["payload"] == first_payload

    began = time.perf_counter()
    async with ocpp_charger(nodes[CHARGER_NODE].ocpp_url, charger_id, password, version, retry_s=60) as charger:
        assert charger.boot["status"] == "Accepted", charger.boot
        await charger.wait_until(lambda: charger.actions()[:1] == [first_action])
        await outcome_at(nodes[0], offline_id)
        for index, (action, payload, _) in enumerate(commands[1:SEQUENTIAL], start=1):
            await one(index, action, payload)
        async with trio.open_nursery() as nursery:  # the rest at once, to three nodes
            for index, (action, payload, _) in enumerate(commands[SEQUENTIAL:], start=SEQUENTIAL):
                nursery.start_soon(one, index, action, payload)
        if version == "2.0.1":  # the report stream GetBaseReport triggered is sent
            point = charger.charge_point
            assert point is not None
            await charger.wait_until(lambda: len(getattr(point, "notify_reports", [])) == 3)
        received = charger.received
        await trio.sleep(1.5)  # nothing more arrives: each command once on this connection
        assert charger.received == received
    wall_s = time.perf_counter() - began

    # The charger saw exactly each signed payload, once, in order of admission per command.
    assert sorted(a for a, _ in received) == sorted(a for a, _ in sent.values()), (received, sent)
    for action, payload in sent.values():
        assert received.count((action, payload)) == 1, (action, payload, received)
    # Each outcome is committed, identical at every node, reported by the charger's node.
    expected = {action: outcome for action, _, outcome in commands}
    for command_id, (action, payload) in sent.items():
        doc = await same_everywhere(nodes, f"/v1/commands/{command_id}")
        assert doc["status"] == "result", doc
        assert doc["payload"] == payload and doc["action"] == action and doc["ocpp_version"] == version
        if expected[action] is not None:
            assert doc["outcome"] == expected[action], (action, doc["outcome"])
    log = nodes[CHARGER_NODE].log_path.read_text()
    assert all(f"command {cid}: {a} {version} at {charger_id}" in log for cid, (a, _) in sent.items())
    for index in SUBMIT_NODES:
        assert f"at {charger_id}:" not in nodes[index].log_path.read_text()  # only the charger's node sent

    config = await same_everywhere(nodes, f"/v1/chargers/{charger_id}/configuration", ("at_height", "connected_here"))
    keys = {e["key"]: e["value"] for e in config["keys"]}
    if version == "1.6":
        assert keys == {"HeartbeatInterval": "60", "MeterValueSampleInterval": "60", "NumberOfConnectors": "2",
                        "LocalAuthListEnabled": "true"}
        readonly = {e["key"] for e in config["keys"] if e["readonly"]}
        assert readonly == {"NumberOfConnectors"}
    else:  # GetVariables, then SetVariables, then the base report of all three
        provisioned = {k: v for k, v in keys.items() if k.endswith("Measurands")}  # the boot-time provisioning's
        assert keys == {"OCPPCommCtrlr/HeartbeatInterval": "300", "SampledDataCtrlr/TxUpdatedInterval": "30",
                        "AuthCtrlr/LocalAuthorizeOffline": "true", **provisioned}
    assert config["ocpp_version"] == version
    _latencies[version] = {"commands": len(sent), "all_commands_wall_s": round(wall_s, 2),
                           "sequential_round_trip_s": [round(x, 3) for x in latencies]}
    print(f"OCPP {version}: {len(sent)} commands round tripped in {wall_s:.1f} s; one at a time: "
          f"median {statistics.median(latencies):.2f} s submit -> outcome committed")


@pytest.mark.parametrize("version", VERSIONS)
async def test_non_manager_and_replayed_nonce_are_refused_and_never_reach_the_charger(
        devnet: dict[str, Any], version: str) -> None:
    nodes, domain, manager, hostile = devnet["nodes"], devnet["domain"], devnet["manager"], devnet["hostile"]
    charger_id, password = CHARGERS[version]
    reset = {"type": "Hard"} if version == "1.6" else {"type": "Immediate"}
    trigger = {"requestedMessage": "Heartbeat"}
    async with ocpp_charger(nodes[CHARGER_NODE].ocpp_url, charger_id, password, version, retry_s=60) as charger:
        forged = signed_body(domain, hostile, charger_id, version, "Reset", reset)
        status, answer = await submit(nodes[0], charger_id, forged)
        assert status == 400 and "not by the device's manager" in answer["error"], answer

        good = signed_body(domain, manager, charger_id, version, "TriggerMessage", trigger)
        status, answer = await submit(nodes[2], charger_id, good)
        assert status == 200, answer
        done = await outcome_at(nodes[2], answer["command_id"])
        assert done["outcome"] == {"status": "Accepted"}
        # The same signed command again, at a node that has applied its block: refused.
        with trio.fail_after(30):
            while (await http_get_json(f"{nodes[3].http_url}/v1/status"))[1]["committed_height"] < answer["height"]:
                await trio.sleep(0.2)
        status, replay = await submit(nodes[3], charger_id, good)
        assert status == 400 and "already used" in replay["error"], replay
        # A new payload under the used nonce, properly signed by the manager: refused as well.
        reused = signed_body(domain, manager, charger_id, version, "Reset", reset, nonce=int(json.loads(good)["nonce"]))
        status, again = await submit(nodes[0], charger_id, reused)
        assert status == 400 and "already used" in again["error"], again
        # Expiring too soon for any proposer to include it: refused at once, not a 30 s wait and a 503.
        soon = signed_body(domain, manager, charger_id, version, "Reset", reset, ttl_s=10)
        status, early = await submit(nodes[2], charger_id, soon)
        assert status == 400 and "must expire more than 30 s after submission" in early["error"], early
        await trio.sleep(2)  # had anything slipped through, the charger would be sent it now
        assert charger.received == [("TriggerMessage", trigger)], charger.received
    for body in (forged, reused, soon):
        command_id = command_id_of(domain, charger_id, body)
        for node in nodes:
            status, _ = await http_get_json(f"{node.http_url}/v1/commands/{command_id}")
            assert status == 404, (node.index, command_id)


@pytest.mark.parametrize("version", VERSIONS)
async def test_expired_command_is_never_sent_even_when_the_charger_connects(devnet: dict[str, Any],
                                                                             version: str) -> None:
    """The Reset submitted (fixture) for the offline charger expires; a live command submitted
    after that (its block is past the expiry: the ledger marks the Reset expired) is what the
    charger gets when it connects at another node, the expired Reset never."""
    nodes, domain, manager = devnet["nodes"], devnet["domain"], devnet["manager"]
    command_id, expires_at = devnet["expiring"][version]
    charger_id, password = OFFLINE[version]
    await trio.sleep(max(0.0, expires_at - time.time() + 1))
    trigger = {"requestedMessage": "Heartbeat"}
    status, live = await submit(nodes[0], charger_id,
                                signed_body(domain, manager, charger_id, version, "TriggerMessage", trigger))
    assert status == 200, live
    doc = await same_everywhere(nodes, f"/v1/commands/{command_id}")
    assert doc["status"] == "expired" and doc.get("outcome") is None, doc
    async with ocpp_charger(nodes[2].ocpp_url, charger_id, password, version, retry_s=60) as charger:
        await charger.wait_until(lambda: bool(charger.received))
        await trio.sleep(3)  # several delivery polls
        assert charger.received == [("TriggerMessage", trigger)], charger.received
    assert (await same_everywhere(nodes, f"/v1/commands/{live['command_id']}"))["status"] == "result"
    assert (await same_everywhere(nodes, f"/v1/commands/{command_id}"))["status"] == "expired"
