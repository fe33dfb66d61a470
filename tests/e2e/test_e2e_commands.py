"""Manager commands end to end (issue 13): the device manager's `devsen charger` CLI signs a
command, a node admits it, the network commits it, the node holding the demo charger's OCPP
connection sends the CALL, and the charger's answer is committed so every node reports it.

The network is the module fixture `network` of test_e2e_network.py (anvil, the contracts, 4
`devsen node` processes), instantiated again for this module. The devnet's manager account
(anvil dev key 1) manages the demo charger; the driver account (dev key 2) is the hostile one.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import test_e2e_network
import trio

from anchoring.chain.deploy import Deployment
from devsen.demo_charger import DemoCharger, connect_demo_charger
from devsen.devnet import DEMO_CHARGER, DEMO_PASSWORD
from devsen.http_api import http_get_json, http_post_json
from devsen.ledger.commands import command_digest, json_text
from primitives.eip712 import Domain, SigningKey

network = test_e2e_network.network  # the devnet fixture: one network for this module


def _key_file(network: dict[str, Any], index: int, name: str) -> Path:
    path = Path(network["deployment_path"]).with_name(f"{name}.key")
    path.write_text(network["anvil"].dev_keys[index])
    return path


def command_domain(network: dict[str, Any]) -> Domain:
    """The network's EIP-712 domain of manager commands (its DeviceFactory)."""
    return Deployment.from_json(Path(network["deployment_path"]).read_text()).domain("DeviceFactory")


async def cli(network: dict[str, Any], node: Any, *args: str, key: str = "manager") -> tuple[int, dict[str, Any]]:
    """`devsen charger ... --json` as a process; (exit code, its JSON document)."""
    key_file = _key_file(network, 1 if key == "manager" else 2, key)
    command = [sys.executable, "-m", "devsen.cli", "charger", *args, "--node", node.http_url,
               "--deployment", str(network["deployment_path"]), "--key-file", str(key_file), "--json"]
    done = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    assert done.stdout.strip(), done.stderr.decode()
    return done.returncode, json.loads(done.stdout)


async def serving(charger: DemoCharger, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    await charger.serve(600)


async def same_everywhere(nodes: list[Any], path: str, ignore: tuple[str, ...] = ("at_height",),
                          settled: bool = True) -> dict[str, Any]:
    """The document at `path` once every node has it alike (nodes commit at their own pace) and,
    for a command, no longer pending unless `settled` is False."""
    with trio.fail_after(30):
        while True:
            docs = []
            for node in nodes:
                status, doc = await http_get_json(node.http_url + path, timeout=10)
                docs.append({k: v for k, v in (doc or {}).items() if k not in ignore} if status == 200 else None)
            if docs[0] is not None and all(d == docs[0] for d in docs) \
                    and not (settled and docs[0].get("status") == "pending"):
                return docs[0]
            await trio.sleep(0.3)


async def test_config_get_set_and_reset_round_trip_identical_on_every_node(network: dict[str, Any]) -> None:
    nodes = network["nodes"]
    async with connect_demo_charger(nodes[1].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        assert (await charger.boot(connector=1))["status"] == "Accepted"
        async with trio.open_nursery() as nursery:
            await nursery.start(serving, charger)
            began = time.perf_counter()
            code, got = await cli(network, nodes[0], "config", "get", DEMO_CHARGER, "--ocpp", "1.6")
            get_s = time.perf_counter() - began
            assert code == 0 and got["status"] == "result", got
            assert {"key": "HeartbeatInterval", "value": "300", "readonly": False} in got["outcome"]["configurationKey"]
            await same_everywhere(nodes, f"/v1/chargers/{DEMO_CHARGER}/configuration", ("at_height", "connected_here"))
            code, changed = await cli(network, nodes[2], "config", "set", DEMO_CHARGER, "HeartbeatInterval", "60")
            assert code == 0 and changed["outcome"] == {"status": "Accepted"}, changed  # version from the node
            assert charger.config["HeartbeatInterval"] == ("60", False)
            code, reset = await cli(network, nodes[3], "reset", DEMO_CHARGER, "--hard")
            assert code == 0 and reset["outcome"] == {"status": "Accepted"} and reset["payload"] == {"type": "Hard"}
            nursery.cancel_scope.cancel()
    print(f"config get round trip (CLI sign, submit, commit, CALL, outcome commit): {get_s:.2f} s")
    config = await same_everywhere(nodes, f"/v1/chargers/{DEMO_CHARGER}/configuration",
                                   ("at_height", "connected_here"))
    keys = {e["key"]: e["value"] for e in config["keys"]}
    assert keys["HeartbeatInterval"] == "60" and keys["NumberOfConnectors"] == "2"
    for doc in (got, changed, reset):
        shared = await same_everywhere(nodes, f"/v1/commands/{doc['command_id']}")
        assert shared["status"] == "result" and shared["outcome"] == doc["outcome"]
    sender = [n.index for n in nodes if f"command {reset['command_id']}: Reset 1.6 at {DEMO_CHARGER}"
              in n.log_path.read_text()]
    assert sender == [nodes[1].index]  # only the node holding the connection sent it

    # The charger resets: it reconnects (at another node). The Reset it answered is not re-sent.
    async with connect_demo_charger(nodes[2].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as rebooted:
        assert (await rebooted.boot(connector=1))["status"] == "Accepted"
        await rebooted.serve(3)
    assert [a for a, _ in rebooted.csms_calls if a == "Reset"] == []
    assert [a for a, _ in charger.csms_calls].count("Reset") == 1


async def test_offline_charger_gets_the_command_when_it_connects_at_another_node(network: dict[str, Any]) -> None:
    nodes = network["nodes"]
    code, pending = await cli(network, nodes[0], "trigger", DEMO_CHARGER, "StatusNotification", "--connector", "1",
                              "--ocpp", "1.6", "--wait-s", "0")
    assert code == 3 and pending["status"] == "pending", pending  # nobody holds the charger's connection
    async with connect_demo_charger(nodes[3].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        with trio.fail_after(30):
            await charger.serve(30, until=lambda: any(a == "TriggerMessage" for a, _ in charger.csms_calls))
        assert ("TriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": 1}) in charger.csms_calls
        done = await same_everywhere(nodes, f"/v1/commands/{pending['command_id']}")
        await charger.serve(2)  # still connected: the command is not sent twice on this connection
    assert done["status"] == "result" and done["outcome"] == {"status": "Accepted"}
    assert [a for a, _ in charger.csms_calls].count("TriggerMessage") == 1


async def test_hostile_expired_replayed_and_invalid_commands_get_400_and_never_enter_a_block(
        network: dict[str, Any]) -> None:
    nodes = network["nodes"]
    domain = command_domain(network)
    manager = SigningKey(bytes.fromhex(network["anvil"].dev_keys[1].removeprefix("0x")))
    hostile = SigningKey(bytes.fromhex(network["anvil"].dev_keys[2].removeprefix("0x")))
    now = int(time.time() * 1000)
    nonce = time.time_ns() // 1_000  # above the CLI's (microseconds) nonces of the tests before

    def body(key: SigningKey, payload: dict[str, Any], nonce: int, expires: int, action: str = "Reset") -> str:
        signature = key.sign(command_digest(domain, DEMO_CHARGER, "1.6", action, json_text(payload), nonce, expires))
        return json_text({"ocpp_version": "1.6", "action": action, "payload": payload, "nonce": str(nonce),
                          "expires_at_ms": expires, "signature": "0x" + signature.hex()}).decode()

    url = f"{nodes[1].http_url}/v1/chargers/{DEMO_CHARGER}/commands"
    cases = [
        (body(hostile, {"type": "Hard"}, nonce, now + 60_000), "not by the device's manager"),
        (body(manager, {"type": "Hard"}, nonce + 1, now - 1_000), "expired"),
        (body(manager, {"type": "Sideways"}, nonce + 2, now + 60_000), "payload invalid for OCPP 1.6 Reset"),
        (body(manager, {"type": "Soft"}, nonce + 3, now + 60_000, "BootNotification"), "is not a command"),
    ]
    for text, reason in cases:
        status, answer = await http_post_json(url, text)
        assert status == 400 and reason in answer["error"], (reason, answer)
    good = body(manager, {"requestedMessage": "Heartbeat"}, nonce + 4, now + 60_000, "TriggerMessage")
    status, answer = await http_post_json(url, good)
    assert status == 200, answer
    with trio.fail_after(30):  # the replay goes to a node that has applied the block
        while (await http_get_json(f"{nodes[2].http_url}/v1/status"))[1]["committed_height"] < answer["height"]:
            await trio.sleep(0.2)
    status, replay = await http_post_json(f"{nodes[2].http_url}/v1/chargers/{DEMO_CHARGER}/commands", good)
    assert status == 400 and "already used" in replay["error"]
    # The hostile Reset never reached a block: no node knows it.
    from devsen.ledger.commands import ChargerCommand

    forged = json.loads(cases[0][0])
    command_id = ChargerCommand(DEMO_CHARGER, "1.6", "Reset", json_text(forged["payload"]), int(forged["nonce"]),
                                forged["expires_at_ms"], bytes.fromhex(forged["signature"][2:])).digest(domain)
    for node in nodes:
        status, _ = await http_get_json(f"{node.http_url}/v1/commands/0x{command_id.hex()}")
        assert status == 404


class Charger201(DemoCharger):
    """Test-only OCPP 2.0.1 charging station: variables it reads and sets, a base report it
    streams as NotifyReport after accepting GetBaseReport."""

    variables: dict[str, str]

    async def _answer_csms_call(self, frame: list[Any]) -> None:
        message_id, action, payload = frame[1], frame[2], frame[3]
        self.csms_calls.append((action, payload))
        report = False
        if action == "GetVariables":
            results = []
            for item in payload["getVariableData"]:
                key = f"{item['component']['name']}/{item['variable']['name']}"
                found = key in self.variables
                results.append({"attributeStatus": "Accepted" if found else "UnknownVariable",
                                "component": item["component"], "variable": item["variable"],
                                **({"attributeValue": self.variables[key]} if found else {})})
            reply: dict[str, Any] = {"getVariableResult": results}
        elif action == "SetVariables":
            results = []
            for item in payload["setVariableData"]:
                self.variables[f"{item['component']['name']}/{item['variable']['name']}"] = item["attributeValue"]
                results.append({"attributeStatus": "Accepted", "component": item["component"],
                                "variable": item["variable"]})
            reply = {"setVariableResult": results}
        elif action in ("GetBaseReport", "Reset"):
            reply, report = {"status": "Accepted"}, action == "GetBaseReport"
        else:
            await self.ws.send_message(json.dumps([4, message_id, "NotSupported", "test station", {}]))
            return
        await self.ws.send_message(json.dumps([3, message_id, reply]))
        if report:  # the report stream, one NotifyReport per variable (its CALLRESULTs read by `serve`)
            for seq, (key, value) in enumerate(sorted(self.variables.items())):
                component, variable = key.split("/")
                await self.ws.send_message(json.dumps([2, f"report-{seq}", "NotifyReport", {
                    "requestId": payload["requestId"], "generatedAt": "2026-12-02T00:00:00Z", "seqNo": seq,
                    "tbc": seq < len(self.variables) - 1, "reportData": [{
                        "component": {"name": component}, "variable": {"name": variable},
                        "variableAttribute": [{"value": value, "mutability": "ReadWrite"}]}]}]))


async def test_201_variables_and_the_base_report_stream_become_shared_configuration(network: dict[str, Any]) -> None:
    from trio_websocket import open_websocket_url

    from devsen.demo_charger import basic_auth_header

    nodes = network["nodes"]
    url = nodes[2].ocpp_url.rstrip("/") + "/" + DEMO_CHARGER
    async with open_websocket_url(url, subprotocols=["ocpp2.0.1"],
                                  extra_headers=[basic_auth_header(DEMO_CHARGER, DEMO_PASSWORD)]) as ws:
        station = Charger201(ws, DEMO_CHARGER)
        station.variables = {"OCPPCommCtrlr/HeartbeatInterval": "300", "SampledDataCtrlr/TxUpdatedInterval": "0"}
        boot = await station.call("BootNotification", {"reason": "PowerUp",
                                                       "chargingStation": {"model": "demo", "vendorName": "DEVSEN"}})
        assert boot["status"] == "Accepted"
        async with trio.open_nursery() as nursery:
            await nursery.start(serving, station)
            code, got = await cli(network, nodes[0], "config", "get", DEMO_CHARGER, "OCPPCommCtrlr/HeartbeatInterval",
                                  "Nope/Nothing", "--ocpp", "2.0.1")
            assert code == 0 and got["action"] == "GetVariables", got
            assert [r["attributeStatus"] for r in got["outcome"]["getVariableResult"]] == ["Accepted", "UnknownVariable"]
            code, changed = await cli(network, nodes[1], "config", "set", DEMO_CHARGER,
                                      "SampledDataCtrlr/TxUpdatedInterval", "60", "--ocpp", "2.0.1")
            assert code == 0 and changed["action"] == "SetVariables", changed
            assert station.variables["SampledDataCtrlr/TxUpdatedInterval"] == "60"
            code, report = await cli(network, nodes[3], "config", "get", DEMO_CHARGER, "--ocpp", "2.0.1")
            assert code == 0 and report["action"] == "GetBaseReport" and report["outcome"] == {"status": "Accepted"}
            with trio.fail_after(30):  # the NotifyReport stream is committed as charger events
                while True:
                    config = await same_everywhere(nodes, f"/v1/chargers/{DEMO_CHARGER}/configuration",
                                                   ("at_height", "connected_here"))
                    # the station's variables: its own two and the measurands the boot's provisioning set
                    if len(config["keys"]) == len(station.variables) and config["height"] > report["outcome_height"]:
                        break
                    await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
    known = {e["key"]: e["value"] for e in config["keys"]}
    assert known == station.variables and len(known) == 5
    assert (known["OCPPCommCtrlr/HeartbeatInterval"], known["SampledDataCtrlr/TxUpdatedInterval"]) == ("300", "60")
    assert config["ocpp_version"] == "2.0.1"
