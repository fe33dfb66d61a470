"""The demo charger honours remote stops like a real charger (1.6 and 2.0.1), over a real
WebSocket to a tiny scripted CSMS in this process: the stop of a running transaction is
Accepted and the transaction ends at its last reading with reason Remote; a stop naming
another transaction, or in the other version's action, is Rejected and nothing is sent."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection, WebSocketRequest, serve_websocket

from devsen.demo_charger import CALL, CALLRESULT, connect_demo_charger, iso_now


class ScriptedCsms:
    """Answers every charger CALL; `stop(action, payload)` sends a CSMS CALL and returns its answer."""

    def __init__(self) -> None:
        self.ws: WebSocketConnection | None = None
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.answers: dict[str, Any] = {}
        self.connected = trio.Event()
        self.stop_reply_delay_s = 0.0

    async def handler(self, request: WebSocketRequest) -> None:
        self.ws = await request.accept(subprotocol=request.proposed_subprotocols[0])
        self.connected.set()
        try:
            while True:
                frame = json.loads(await self.ws.get_message())
                if frame[0] == CALL:
                    self.received.append((frame[2], frame[3]))
                    reply: dict[str, Any] = {}
                    if frame[2] == "StartTransaction":
                        reply = {"transactionId": 7, "idTagInfo": {"status": "Accepted"}}
                    elif frame[2] == "StopTransaction":
                        reply = {"idTagInfo": {"status": "Accepted"}}
                        await trio.sleep(self.stop_reply_delay_s)  # a node committing the stop
                    await self.ws.send_message(json.dumps([CALLRESULT, frame[1], reply]))
                else:
                    self.answers[frame[1]] = frame[2]
        except Exception:
            return

    async def send(self, message_id: str, action: str, payload: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_message(json.dumps([CALL, message_id, action, payload]))


async def _run(version: str, script: Any) -> tuple[ScriptedCsms, Any]:
    csms = ScriptedCsms()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, csms.handler, "127.0.0.1", 0, None)
        port = server.port
        async with connect_demo_charger(f"ws://127.0.0.1:{port}", "CP-X", "pw", ocpp_version=version) as charger:
            await csms.connected.wait()
            result = await script(charger, csms)
        nursery.cancel_scope.cancel()
    return csms, result


def _meter(wh: int, version: str) -> list[dict[str, Any]]:
    value: Any = str(wh) if version == "1.6" else wh
    return [{"timestamp": iso_now(), "sampledValue": [{"value": value, "measurand": "Energy.Active.Import.Register"}]}]


async def test_1_6_remote_stop_of_a_running_transaction_ends_it_with_reason_remote() -> None:
    async def script(charger: Any, csms: ScriptedCsms) -> Any:
        start = await charger.call("StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 100,
                                                        "timestamp": iso_now()})
        await charger.call("MeterValues", {"connectorId": 1, "transactionId": 7, "meterValue": _meter(640, "1.6")})
        await csms.send("wrong-tx", "RemoteStopTransaction", {"transactionId": 8})
        await csms.send("wrong-action", "RequestStopTransaction", {"transactionId": "7"})
        await csms.send("stop", "RemoteStopTransaction", {"transactionId": start["transactionId"]})
        return await charger.next_remote_stop(10)

    csms, record = await _run("1.6", script)
    assert csms.answers == {"wrong-tx": {"status": "Rejected"}, "wrong-action": {"status": "Rejected"},
                            "stop": {"status": "Accepted"}}
    stops = [payload for action, payload in csms.received if action == "StopTransaction"]
    assert len(stops) == 1
    assert stops[0]["transactionId"] == 7 and stops[0]["meterStop"] == 640 and stops[0]["reason"] == "Remote"
    assert record["stop_answer"] == {"idTagInfo": {"status": "Accepted"}}
    assert record["stopped_at"] >= record["received_at"]


async def test_2_0_1_request_stop_ends_the_transaction_event_ended_remote() -> None:
    async def script(charger: Any, csms: ScriptedCsms) -> Any:
        await charger.call("TransactionEvent", {
            "eventType": "Started", "timestamp": iso_now(), "triggerReason": "Authorized",
            "seqNo": charger.next_seq_no(), "transactionInfo": {"transactionId": "tx-a"}, "evse": {"id": 1},
            "idToken": {"idToken": "T", "type": "Central"}, "meterValue": _meter(0, "2.0.1")})
        await charger.call("TransactionEvent", {
            "eventType": "Updated", "timestamp": iso_now(), "triggerReason": "MeterValuePeriodic",
            "seqNo": charger.next_seq_no(), "transactionInfo": {"transactionId": "tx-a"},
            "meterValue": _meter(1_250, "2.0.1")})
        await csms.send("old-action", "RemoteStopTransaction", {"transactionId": 1})
        await csms.send("stop", "RequestStopTransaction", {"transactionId": "tx-a"})
        await csms.send("again", "RequestStopTransaction", {"transactionId": "tx-a"})
        return await charger.next_remote_stop(10)

    csms, record = await _run("2.0.1", script)
    assert csms.answers["old-action"] == {"status": "Rejected"} and csms.answers["stop"] == {"status": "Accepted"}
    assert csms.answers["again"] == {"status": "Rejected"}  # already ending
    ended = [p for action, p in csms.received if action == "TransactionEvent" and p["eventType"] == "Ended"]
    assert len(ended) == 1
    assert ended[0]["triggerReason"] == "RemoteStop"
    assert ended[0]["transactionInfo"] == {"transactionId": "tx-a", "stoppedReason": "Remote"}
    assert ended[0]["seqNo"] == 2
    assert ended[0]["meterValue"][0]["sampledValue"][0]["value"] == 1_250
    assert record["stop_action"] == "TransactionEvent"


async def test_a_stop_taking_longer_than_the_serve_window_is_still_sent_and_answered() -> None:
    async def script(charger: Any, csms: ScriptedCsms) -> Any:
        csms.stop_reply_delay_s = 0.6
        await charger.call("StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0,
                                                "timestamp": iso_now()})
        await csms.send("stop", "RemoteStopTransaction", {"transactionId": 7})
        await charger.serve(0.2)  # the stop arrives at once; its answer takes 0.6 s
        return list(charger.remote_stops)

    csms, records = await _run("1.6", script)
    assert len(records) == 1 and records[0]["stop_answer"] == {"idTagInfo": {"status": "Accepted"}}
    assert [action for action, _ in csms.received].count("StopTransaction") == 1


async def test_unknown_version_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="ocpp_version"):
        async with connect_demo_charger("ws://127.0.0.1:1", "CP", "pw", ocpp_version="1.5"):
            pass
