"""A small OCPP 1.6-J charge point on trio-websocket, used by the devnet demo and tests.

It speaks the wire protocol as a charger does (Basic auth, subprotocol `ocpp1.6`, one
outstanding CALL, CALLRESULT/CALLERROR correlation), accepts a CSMS RemoteStartTransaction
(queued for `next_remote_start`) and answers other CSMS-initiated CALLs with `NotSupported`,
so a node can be exercised end to end without vendor hardware.

With a `meter_key` it behaves like an Eichrecht meter: its begin reading (in a MeterValues
`SignedData` sample) and its end reading (in StopTransaction.transactionData) are OCMF
documents signed with that key (`demo_meter_key()` is the devnet's well-known P-256 test key).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from trio_websocket import WebSocketConnection, open_websocket_url

from devsen.ledger.chain import MAX_POWER_W
from ocpp_adapter import ocmf
from primitives.hashing import keccak256

CALL, CALLRESULT, CALLERROR = 2, 3, 4
MAX_QUEUED_REMOTE_STARTS = 16  # a demo charger runs one transaction at a time
MAX_SENT_KEPT = 256  # the last CALLs sent (message id, action), for tests and diagnostics
SUBPROTOCOLS = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}  # OCPP version -> WebSocket subprotocol


def demo_meter_key(label: str = "devsen-demo-meter") -> ec.EllipticCurvePrivateKey:
    """A deterministic P-256 meter key derived from `label`: a TEST key, public by construction."""
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    scalar = int.from_bytes(keccak256(label.encode()), "big") % (order - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def meter_public_key_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The DER SubjectPublicKeyInfo of a meter key (what DeviceFactory.chargerPublicKey holds)."""
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class ChargerCallFailed(Exception):
    """The node answered a CALL with a CALLERROR."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code


def iso_now() -> str:
    """UTC now in the ISO 8601 form chargers send."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class DemoCharger:
    """One OCPP 1.6 charge point connection (use `connect_demo_charger`)."""

    ws: WebSocketConnection
    charge_box_id: str
    timeout_s: float = 60.0
    sent: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=MAX_SENT_KEPT))  # (id, action)
    remote_starts: list[dict[str, Any]] = field(default_factory=list)  # accepted, not yet taken
    meter_key: ec.EllipticCurvePrivateKey | None = None  # sign readings as an OCMF meter
    meter_serial: str = "DEMO-METER-1"
    pagination: int = field(default_factory=lambda: int(time.time()))  # OCMF counters only go up, across runs too

    def signed_sample(self, id_tag: str, tx: str, wh: int) -> dict[str, Any]:
        """A 1.6 sampledValue carrying an OCMF document for one reading (requires `meter_key`)."""
        assert self.meter_key is not None
        self.pagination += 1
        body = ocmf.payload_json(meter_serial=self.meter_serial, pagination=self.pagination, id_data=id_tag,
                                 readings=[(int(time.time() * 1000), tx, wh)], charge_point_id=self.charge_box_id)
        return {"value": ocmf.sign(body, self.meter_key), "format": "SignedData", "context": "Transaction.Begin"
                if tx == "B" else "Transaction.End", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}

    async def call(self, action: str, payload: dict[str, Any], message_id: str | None = None) -> dict[str, Any]:
        """Send a CALL and return the CALLRESULT payload; CALLERROR raises ChargerCallFailed."""
        message_id = message_id or str(uuid.uuid4())  # OCPP-J allows at most 36 characters
        self.sent.append((message_id, action))
        await self.ws.send_message(json.dumps([CALL, message_id, action, payload]))
        with trio.fail_after(self.timeout_s):
            while True:
                frame = json.loads(await self.ws.get_message())
                if frame[0] == CALL:
                    await self._answer_csms_call(frame)
                    continue
                if frame[1] != message_id:
                    continue
                if frame[0] == CALLRESULT:
                    result: dict[str, Any] = frame[2]
                    return result
                raise ChargerCallFailed(frame[2], frame[3])

    async def _answer_csms_call(self, frame: list[Any]) -> None:
        """Accept a RemoteStartTransaction with an idTag (queue it); refuse every other CSMS call."""
        message_id, action, payload = frame[1], frame[2], frame[3]
        if (action == "RemoteStartTransaction" and isinstance(payload, dict) and isinstance(payload.get("idTag"), str)
                and len(self.remote_starts) < MAX_QUEUED_REMOTE_STARTS):
            self.remote_starts.append(payload)
            await self.ws.send_message(json.dumps([CALLRESULT, message_id, {"status": "Accepted"}]))
            return
        if action == "RemoteStartTransaction":
            await self.ws.send_message(json.dumps([CALLRESULT, message_id, {"status": "Rejected"}]))
            return
        await self.ws.send_message(json.dumps([CALLERROR, message_id, "NotSupported", "demo charger", {}]))

    async def next_remote_start(self, timeout_s: float) -> dict[str, Any]:
        """The oldest accepted RemoteStartTransaction payload, waiting up to `timeout_s` for one."""
        with trio.fail_after(timeout_s):
            while not self.remote_starts:
                frame = json.loads(await self.ws.get_message())
                if frame[0] == CALL:
                    await self._answer_csms_call(frame)
                # a CALLRESULT/CALLERROR here answers a call given up earlier: dropped
        return self.remote_starts.pop(0)

    async def boot(self, connector: int) -> dict[str, Any]:
        """BootNotification and an Available StatusNotification; returns the boot reply."""
        boot = await self.call("BootNotification", {"chargePointVendor": "DEVSEN", "chargePointModel": "demo"})
        await self.call("StatusNotification", {"connectorId": connector, "errorCode": "NoError",
                                               "status": "Available", "timestamp": iso_now()})
        return boot

    async def charge_session(self, id_tag: str, connector: int, meter_start_wh: int,
                             meter_stop_wh: int) -> dict[str, Any]:
        """Boot, status, then `transaction`; returns what the node said."""
        boot = await self.boot(connector)
        return {"boot": boot, **await self.transaction(id_tag, connector, meter_start_wh, meter_stop_wh)}

    async def transaction(self, id_tag: str, connector: int, meter_start_wh: int,
                          meter_stop_wh: int, max_power_w: int = MAX_POWER_W) -> dict[str, Any]:
        """Authorize, start, one meter value, stop; returns what the node said to each.

        Physically plausible: the stop comes no sooner than the energy takes at `max_power_w`
        (plus 20 %), since the ledger caps a session's energy at max power x duration."""
        authorize = await self.call("Authorize", {"idTag": id_tag})
        start = await self.call("StartTransaction", {"connectorId": connector, "idTag": id_tag,
                                                     "meterStart": meter_start_wh, "timestamp": iso_now()})
        stop_not_before = trio.current_time() + 1.2 * max(0, meter_stop_wh - meter_start_wh) * 3600 / max_power_w
        transaction_id = start["transactionId"]
        middle = (meter_start_wh + meter_stop_wh) // 2
        samples: list[dict[str, Any]] = [
            {"value": str(middle), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]
        if self.meter_key is not None:
            samples.insert(0, self.signed_sample(id_tag, "B", meter_start_wh))
        await self.call("MeterValues", {"connectorId": connector, "transactionId": transaction_id, "meterValue": [
            {"timestamp": iso_now(), "sampledValue": samples}]})
        await trio.sleep_until(stop_not_before)
        stop_payload: dict[str, Any] = {"transactionId": transaction_id, "meterStop": meter_stop_wh,
                                        "timestamp": iso_now(), "idTag": id_tag}
        if self.meter_key is not None:
            stop_payload["transactionData"] = [
                {"timestamp": iso_now(), "sampledValue": [self.signed_sample(id_tag, "E", meter_stop_wh)]}]
        stop = await self.call("StopTransaction", stop_payload)
        return {"authorize": authorize, "start": start, "stop": stop}


def basic_auth_header(charge_box_id: str, password: str) -> tuple[bytes, bytes]:
    """The HTTP Basic `Authorization` header of OCPP security profile 1."""
    token = base64.b64encode(f"{charge_box_id}:{password}".encode()).decode()
    return (b"Authorization", f"Basic {token}".encode())


@asynccontextmanager
async def connect_demo_charger(url_base: str, charge_box_id: str, password: str,
                               meter_key: ec.EllipticCurvePrivateKey | None = None, *,
                               version: str = "1.6") -> AsyncIterator[DemoCharger]:
    """A DemoCharger connected to `url_base` + "/" + chargeBoxId for the duration of the block;
    with `meter_key` it signs its begin and end readings (OCMF). `version` ("1.6" or "2.0.1")
    picks the subprotocol offered; `call` speaks either (the session helpers here are 1.6)."""
    url = url_base.rstrip("/") + "/" + charge_box_id
    async with open_websocket_url(url, subprotocols=[SUBPROTOCOLS[version]],
                                  extra_headers=[basic_auth_header(charge_box_id, password)]) as ws:
        yield DemoCharger(ws, charge_box_id, meter_key=meter_key)
