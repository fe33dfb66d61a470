"""Conformance with the `ocpp` package's own asyncio ChargePoint over the `websockets`
library (a client nobody here wrote), run in a thread with its own asyncio loop."""

from __future__ import annotations

import asyncio
import base64
from typing import Any, cast

import pytest
import trio
import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp_testkit import PASSWORD, running_server

from ocpp_adapter.events import ChargerEvent

NOW = "2026-01-01T00:00:00Z"


class Charger16(ChargePoint16):  # type: ignore[misc]  # ocpp ships no type hints
    remote_started: asyncio.Event

    @on("RemoteStartTransaction")  # type: ignore[untyped-decorator]
    async def on_remote_start(self, id_tag: Any, **kwargs: Any) -> Any:
        self.remote_started.set()
        return result16.RemoteStartTransaction(status="Accepted")


class Charger201(ChargePoint201):  # type: ignore[misc]  # ocpp ships no type hints
    remote_started: asyncio.Event

    @on("RequestStartTransaction")  # type: ignore[untyped-decorator]
    async def on_request_start(self, id_token: Any, remote_start_id: Any, **kwargs: Any) -> Any:
        self.remote_started.set()
        return result201.RequestStartTransaction(status="Accepted")


async def session16(cp: Any) -> list[Any]:
    out = [await cp.call(call16.BootNotification(charge_point_model="m", charge_point_vendor="v"))]
    out.append(await cp.call(call16.StatusNotification(connector_id=1, error_code="NoError", status="Available")))
    out.append(await cp.call(call16.Authorize(id_tag="TAG-OK")))
    start = await cp.call(call16.StartTransaction(connector_id=1, id_tag="TAG-OK", meter_start=0, timestamp=NOW))
    out.append(start)
    out.append(await cp.call(call16.MeterValues(connector_id=1, transaction_id=start.transaction_id, meter_value=[
        {"timestamp": NOW, "sampledValue": [{"value": "1234.5", "unit": "Wh"}]}])))
    out.append(await cp.call(call16.StopTransaction(meter_stop=2000, timestamp=NOW,
                                                    transaction_id=start.transaction_id, id_tag="TAG-OK")))
    return out


async def session201(cp: Any) -> list[Any]:
    token = {"id_token": "TAG-OK", "type": "ISO14443"}
    out = [await cp.call(call201.BootNotification(charging_station={"model": "m", "vendor_name": "v"},
                                                  reason="PowerUp"))]
    out.append(await cp.call(call201.StatusNotification(timestamp=NOW, connector_status="Available",
                                                        evse_id=1, connector_id=1)))
    out.append(await cp.call(call201.Authorize(id_token=token)))
    for seq, kind in enumerate(("Started", "Ended")):
        out.append(await cp.call(call201.TransactionEvent(
            event_type=kind, timestamp=NOW, trigger_reason="Authorized", seq_no=seq,
            transaction_info={"transaction_id": "tx-9"}, id_token=token)))
    out.append(await cp.call(call201.MeterValues(evse_id=1, meter_value=[
        {"timestamp": NOW, "sampled_value": [{"value": 12.5}]}])))
    return out


def run_charger(url: str, charge_box_id: str, subprotocol: str) -> dict[str, Any]:
    """A whole charger life in its own asyncio loop (called in a worker thread)."""

    async def main() -> dict[str, Any]:
        auth = base64.b64encode(f"{charge_box_id}:{PASSWORD}".encode()).decode()
        async with websockets.connect(url, subprotocols=[cast(Any, subprotocol)],
                                      additional_headers={"Authorization": f"Basic {auth}"}) as ws:
            cls = Charger16 if subprotocol == "ocpp1.6" else Charger201
            cp = cls(charge_box_id, ws)
            cp.remote_started = asyncio.Event()
            runner = asyncio.create_task(cp.start())
            try:
                results = await (session16(cp) if subprotocol == "ocpp1.6" else session201(cp))
                await asyncio.wait_for(cp.remote_started.wait(), 10)
                heartbeat = await cp.call((call16 if subprotocol == "ocpp1.6" else call201).Heartbeat())
            finally:
                runner.cancel()
            return {"results": results, "heartbeat": heartbeat}

    return asyncio.run(main())


@pytest.mark.parametrize("subprotocol", ["ocpp1.6", "ocpp2.0.1"])
async def test_ocpp_package_chargepoint_full_session(subprotocol: str) -> None:
    async with running_server() as harness:
        outcome: dict[str, Any] = {}

        async def charger_thread() -> None:
            outcome.update(await trio.to_thread.run_sync(run_charger, harness.url("CP020"), "CP020", subprotocol))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(charger_thread)
            with trio.fail_after(20):
                while len(harness.ingest.events) < 6:
                    await trio.sleep(0.02)
            if subprotocol == "ocpp1.6":
                reply = await harness.connections.call("CP020", "RemoteStartTransaction", {"idTag": "TAG-OK"})
            else:
                reply = await harness.connections.call(
                    "CP020", "RequestStartTransaction",
                    {"idToken": {"idToken": "TAG-OK", "type": "ISO14443"}, "remoteStartId": 1})
            assert reply == {"status": "Accepted"}
    results = outcome["results"]
    assert results[0].status == "Accepted"
    if subprotocol == "ocpp1.6":
        assert results[2].id_tag_info == {"status": "Accepted"}
        assert results[3].transaction_id == 1
        assert results[5].id_tag_info == {"status": "Accepted"}
    else:
        assert results[2].id_token_info == {"status": "Accepted"}
        assert results[3].id_token_info == {"status": "Accepted"}
    assert outcome["heartbeat"].current_time
    actions = [e.action for e in harness.ingest.events]
    assert len(actions) == 7 and actions[-1] == "Heartbeat"
    # payloads are stored exactly as sent on the wire (camelCase), and round-trip canonically
    first = harness.ingest.events[0].payload
    assert "chargePointVendor" in first or "chargingStation" in first
    for event in harness.ingest.events:
        assert ChargerEvent.from_bytes(event.to_bytes()) == event
