"""Conformance with a client nobody here wrote: npm `ocpp-rpc` in strict mode (1.6 and 2.0.1).

ocpp-rpc validates every reply and every server-initiated call against the OCPP schemas
itself; a schema-invalid answer from us would surface as an error in its output.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import trio
from ocpp_testkit import JS_DIR, PASSWORD, REPO, JsonLines, running_server

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")

SERVER_CALL = {
    "ocpp1.6": ("RemoteStartTransaction", {"idTag": "TAG-OK", "connectorId": 1}),
    "ocpp2.0.1": ("RequestStartTransaction", {"idToken": {"idToken": "TAG-OK", "type": "ISO14443"}, "remoteStartId": 7}),
}


async def run_session(harness: Any, charge_box_id: str, protocol: str, password: str = PASSWORD) -> list[dict[str, Any]]:
    """Run the JS session, answering its 'ready' with a server-initiated call; return its lines."""
    endpoint = f"ws://127.0.0.1:{harness.port}/ocpp"
    lines: list[dict[str, Any]] = []
    proc = await trio.lowlevel.open_process(
        ["node", f"{JS_DIR}/ocpp_rpc_session.js", endpoint, charge_box_id, password, protocol],
        stdout=subprocess.PIPE, cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        reader = JsonLines(proc.stdout)
        while (line := await reader.next()) is not None:
            lines.append(line)
            if line.get("ready_for_server_call"):
                action, payload = SERVER_CALL[protocol]
                reply = await harness.connections.call(charge_box_id, action, payload, timeout=5)
                lines.append({"csms_got": reply})
        with trio.fail_after(10):
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
    return lines


def results(lines: list[dict[str, Any]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for line in lines:
        if "method" in line:
            out.setdefault(line["method"], []).append(line.get("result", line.get("error")))
    return out


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
async def test_full_session_strict(protocol: str) -> None:
    async with running_server() as harness:
        lines = await run_session(harness, "CP001", protocol)
    assert not any("fatal" in line or "error" in line for line in lines), lines
    assert lines[0] == {"connected": protocol}
    got = results(lines)
    assert got["BootNotification"][0]["status"] == "Accepted"
    assert got["BootNotification"][0]["interval"] == 60
    assert len(got["Heartbeat"]) == 2 and all("currentTime" in r for r in got["Heartbeat"])
    if protocol == "ocpp1.6":
        assert got["Authorize"] == [{"idTagInfo": {"status": "Accepted"}}]
        assert got["StartTransaction"][0]["transactionId"] >= 1
        assert got["StopTransaction"] == [{"idTagInfo": {"status": "Accepted"}}]
        expected_events = ["BootNotification", "StatusNotification", "Authorize", "StartTransaction",
                           "MeterValues", "StopTransaction", "Heartbeat", "Heartbeat"]
    else:
        assert got["Authorize"] == [{"idTokenInfo": {"status": "Accepted"}}]
        assert got["TransactionEvent"] == [{"idTokenInfo": {"status": "Accepted"}}] * 2
        expected_events = ["BootNotification", "StatusNotification", "Authorize", "TransactionEvent",
                           "MeterValues", "TransactionEvent", "Heartbeat", "Heartbeat"]
    server_call = next(line["server_call"] for line in lines if "server_call" in line)
    assert server_call["method"] == SERVER_CALL[protocol][0]
    assert server_call["params"] == SERVER_CALL[protocol][1]
    assert {"csms_got": {"status": "Accepted"}} in lines
    events = list(harness.ingest.events)
    assert [e.action for e in events] == expected_events
    assert all(e.charger_id == "CP001" and e.ingress_node == "" and not e.signature for e in events)
    assert len({e.event_id for e in events}) == len(events)


async def test_wrong_password_is_refused_with_401() -> None:
    async with running_server() as harness:
        lines = await run_session(harness, "CP002", "ocpp1.6", password="not the password")
    assert lines[0].get("code") == 401, lines
    assert len(harness.ingest.events) == 0
