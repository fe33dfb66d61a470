"""A small OCPP-J charge point (1.6 or 2.0.1) on trio-websocket, used by the devnet demo and tests.

It speaks the wire protocol as a charger does (Basic auth, subprotocol `ocpp1.6` or
`ocpp2.0.1`, one outstanding CALL, CALLRESULT/CALLERROR correlation), accepts a CSMS
RemoteStartTransaction / RequestStartTransaction (queued for `next_remote_start`) and answers
other CSMS-initiated CALLs with `NotSupported`, so a node can be exercised end to end without vendor hardware.

Remote stops are honoured like a real charger does: a RemoteStopTransaction (1.6) or
RequestStopTransaction (2.0.1) naming a transaction this charger runs is Accepted (any other
is Rejected), and as soon as no CALL of its own is outstanding the charger ends it:
StopTransaction with reason Remote (1.6) or TransactionEvent Ended, triggerReason RemoteStop,
stoppedReason Remote (2.0.1), at the last meter reading it sent. `remote_stops` records each
(when it arrived, what the node answered to the stop); `next_remote_stop` waits for one.

It answers the manager commands of devsen/ledger/commands.py as a charger does
(`answer_command`: a configuration it reads and changes, Reset, UnlockConnector,
TriggerMessage, ChangeAvailability, ClearCache, DataTransfer, charging profiles, local list;
each call is recorded in `csms_calls`); `serve` answers CSMS calls while the charger is otherwise idle.

Reservations are honoured as OCPP 1.6 §5.13 / 2.0.1 H01 describe: ReserveNow (1.6 connectorId,
idTag, parentIdTag; 2.0.1 evseId, idToken, groupIdToken) is Accepted on a free connector and
answered Occupied on one that runs a transaction or holds another reservation; CancelReservation
of a held reservation is Accepted (Rejected if unknown). A remote start on a reserved connector
is Accepted only for the reservation's idTag or group, or for an idTag whose Authorize reply
names that group as parentIdTag / groupIdToken (what the node answers for the holder's session
token); any other is Rejected. A transaction started on the connector uses the reservation up,
and a reservation past its expiry holds nothing. `reservations` holds them (reservation id -> record).

A card presented at a running transaction stops it only as a real charger allows
(`present_card`, OCPP 1.6 §3.5.4 / 2.0.1 C01 "stop authorization"): the idTag that started it,
or another idTag whose Authorize reply names the same parentIdTag (1.6) / groupIdToken (2.0.1)
as the transaction's own (from its start reply, else its idTag's last Authorize); any other
card is refused as a stop and the transaction goes on.

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
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from trio_websocket import WebSocketConnection, open_websocket_url

from devsen.ledger.chain import MAX_POWER_W
from devsen.ledger.commands import variable_key
from ocpp_adapter import ocmf
from primitives.hashing import keccak256

CALL, CALLRESULT, CALLERROR = 2, 3, 4
MAX_QUEUED_REMOTE_STARTS = 16  # a demo charger runs one transaction at a time
MAX_RUNNING_TRANSACTIONS = 16  # transactions it tracks for remote stops (one per connector)
MAX_REMOTE_STOPS_KEPT = 64
ENERGY_REGISTER = "Energy.Active.Import.Register"
MAX_RECORDED_CALLS = 256
MAX_RESERVATIONS = 8  # reservations a demo charger holds at once (one per connector, and a few expired)


def demo_configuration() -> dict[str, tuple[str, bool]]:
    """The demo charger's 1.6 configuration keys: key -> (value, read-only)."""
    return {"HeartbeatInterval": ("300", False), "MeterValueSampleInterval": ("60", False),
            "MeterValuesSampledData": ("Energy.Active.Import.Register", False), "NumberOfConnectors": ("2", True),
            "AuthorizeRemoteTxRequests": ("true", False), "StopTxnSampledData": ("", False)}


def answer_command(config: dict[str, tuple[str, bool]], action: str, payload: Any) -> dict[str, Any] | None:
    """A 1.6 charger's CALLRESULT to a CSMS command (None: not supported). Changes `config`."""
    if not isinstance(payload, dict):
        return None
    if action == "GetConfiguration":
        wanted = payload.get("key")
        keys = [k for k in wanted if isinstance(k, str)] if isinstance(wanted, list) else sorted(config)
        return {"configurationKey": [{"key": k, "value": config[k][0], "readonly": config[k][1]}
                                     for k in keys if k in config],
                "unknownKey": [k for k in keys if k not in config]}
    if action == "ChangeConfiguration":
        key, value = payload.get("key"), payload.get("value")
        if not isinstance(key, str) or not isinstance(value, str) or key not in config:
            return {"status": "NotSupported"}
        if config[key][1]:
            return {"status": "Rejected"}
        config[key] = (value, False)
        return {"status": "Accepted"}
    if action == "SetVariables":  # 2.0.1: any variable is kept (keys as the ledger names them), but a read-only one
        results = []
        for item in payload.get("setVariableData") or []:
            key = variable_key(item.get("component"), item.get("variable"), item.get("attributeType")) \
                if isinstance(item, dict) else None
            if key is not None and config.get(key, ("", False))[1]:
                key = None  # read-only: Rejected, unchanged
            elif key is not None and isinstance(item.get("attributeValue"), str):
                config[key] = (item["attributeValue"], False)
            results.append({"attributeStatus": "Accepted" if key is not None else "Rejected",
                            "component": item.get("component") if isinstance(item, dict) else {"name": "?"},
                            "variable": item.get("variable") if isinstance(item, dict) else {"name": "?"}})
        return {"setVariableResult": results}
    if action == "SetNetworkProfile":
        slot, data = payload.get("configurationSlot"), payload.get("connectionData")
        if type(slot) is not int or not isinstance(data, dict) or not isinstance(data.get("ocppCsmsUrl"), str):
            return {"status": "Rejected"}
        config[f"NetworkConnectionProfiles/{slot}"] = (data["ocppCsmsUrl"], False)
        return {"status": "Accepted"}
    simple: dict[str, dict[str, Any]] = {
        "Reset": {"status": "Accepted"}, "UnlockConnector": {"status": "Unlocked"},
        "TriggerMessage": {"status": "Accepted"}, "ChangeAvailability": {"status": "Accepted"},
        "ClearCache": {"status": "Accepted"}, "DataTransfer": {"status": "Accepted"},
        "SetChargingProfile": {"status": "Accepted"}, "ClearChargingProfile": {"status": "Accepted"},
        "GetCompositeSchedule": {"status": "Rejected"}, "GetLocalListVersion": {"listVersion": 0},
        "SendLocalList": {"status": "Accepted"},
        "UpdateFirmware": {}, "GetDiagnostics": {},
    }
    reply = simple.get(action)
    return dict(reply) if reply is not None else None
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
    ocpp_version: str = "1.6"  # or "2.0.1"
    running: dict[str, dict[str, Any]] = field(default_factory=dict)  # tx ref -> connector, id_tag, meter_wh
    remote_stops: list[dict[str, Any]] = field(default_factory=list)  # honoured remote stops, oldest first
    _stops_due: list[str] = field(default_factory=list)
    _seq_no: int = 0
    _sending_stops: bool = False
    config: dict[str, tuple[str, bool]] = field(default_factory=demo_configuration)
    csms_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (action, payload) received
    # reservation id -> {"connector", "id_tag", "group", "expires_at" (unix s)}
    reservations: dict[int, dict[str, Any]] = field(default_factory=dict)
    refused_remote_starts: list[dict[str, Any]] = field(default_factory=list)  # Rejected for a reservation
    parents: dict[str, str | None] = field(default_factory=dict)  # idTag -> parent of its last Authorize

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
                    break
                raise ChargerCallFailed(frame[2], frame[3])
        self._track(action, payload, result)
        await self._send_due_stops()
        return result

    def _track(self, action: str, payload: dict[str, Any], result: dict[str, Any]) -> None:
        """Follow the transactions this charger runs (what a remote stop may name) and their meters."""
        accepted = (result.get("idTagInfo") or {}).get("status") == "Accepted"
        if action == "StartTransaction" and accepted:
            self._use_reservation(payload.get("connectorId"))
        if action == "TransactionEvent" and payload.get("eventType") == "Started":
            self._use_reservation((payload.get("evse") or {}).get("id"))
        if action == "Authorize":
            tag = payload.get("idTag") if self.ocpp_version == "1.6" else (payload.get("idToken") or {}).get("idToken")
            if isinstance(tag, str):
                self.parents[tag] = group_of(result)
                while len(self.parents) > MAX_RUNNING_TRANSACTIONS * 4:
                    self.parents.pop(next(iter(self.parents)))
        if action == "StartTransaction" and accepted and len(self.running) < MAX_RUNNING_TRANSACTIONS:
            tag = payload.get("idTag")
            self.running[str(result["transactionId"])] = {"connector": payload.get("connectorId"), "id_tag": tag,
                                                          "meter_wh": payload.get("meterStart", 0),
                                                          "parent": group_of(result) or self.parents.get(str(tag))}
        elif action == "MeterValues" and str(payload.get("transactionId")) in self.running:
            wh = _last_register_wh(payload.get("meterValue"))
            if wh is not None:
                self.running[str(payload["transactionId"])]["meter_wh"] = wh
        elif action == "StopTransaction":
            self.running.pop(str(payload.get("transactionId")), None)
        elif action == "TransactionEvent":
            ref = str((payload.get("transactionInfo") or {}).get("transactionId"))
            if payload.get("eventType") == "Ended":
                self.running.pop(ref, None)
                return
            if payload.get("eventType") == "Started" and len(self.running) < MAX_RUNNING_TRANSACTIONS:
                tag = (payload.get("idToken") or {}).get("idToken")
                self.running.setdefault(ref, {"connector": (payload.get("evse") or {}).get("id"), "id_tag": tag,
                                              "meter_wh": 0, "parent": group_of(result) or self.parents.get(str(tag))})
            wh = _last_register_wh(payload.get("meterValue"))
            if ref in self.running and wh is not None:
                self.running[ref]["meter_wh"] = wh

    def _use_reservation(self, connector: Any) -> None:
        """A transaction started on `connector`: its reservation is used up."""
        for reservation_id in [i for i, r in self.reservations.items() if r["connector"] == connector]:
            del self.reservations[reservation_id]

    def reservation_on(self, connector: Any) -> dict[str, Any] | None:
        """The unexpired reservation holding `connector`, if any."""
        now = time.time()
        return next((r for r in self.reservations.values() if r["connector"] == connector and r["expires_at"] > now),
                    None)

    def reserve(self, action: str, payload: Any) -> dict[str, Any]:
        """The reply to a ReserveNow / CancelReservation (changes `reservations`)."""
        if not isinstance(payload, dict):
            return {"status": "Rejected"}
        if action == "CancelReservation":
            reservation_id = payload.get("reservationId")
            known = self.reservations.pop(reservation_id, None) if isinstance(reservation_id, int) else None
            return {"status": "Accepted" if known is not None else "Rejected"}
        if self.ocpp_version == "1.6":
            reservation_id, connector = payload.get("reservationId"), payload.get("connectorId")
            id_tag, group, expiry = payload.get("idTag"), payload.get("parentIdTag"), payload.get("expiryDate")
        else:
            reservation_id, connector = payload.get("id"), payload.get("evseId")
            id_tag = (payload.get("idToken") or {}).get("idToken")
            group = (payload.get("groupIdToken") or {}).get("idToken")
            expiry = payload.get("expiryDateTime")
        try:
            expires_at = datetime.fromisoformat(str(expiry).replace("Z", "+00:00")).timestamp()
        except ValueError:
            return {"status": "Rejected"}
        if not isinstance(reservation_id, int) or not isinstance(connector, int) or not 1 <= connector <= 2 \
                or not isinstance(id_tag, str):
            return {"status": "Rejected"}
        held = self.reservation_on(connector)
        busy = any(t.get("connector") == connector for t in self.running.values())
        if busy or (held is not None and held["id"] != reservation_id):
            return {"status": "Occupied"}
        if reservation_id not in self.reservations and len(self.reservations) >= MAX_RESERVATIONS:
            return {"status": "Rejected"}
        self.reservations[reservation_id] = {"id": reservation_id, "connector": connector, "id_tag": id_tag,
                                             "group": group, "expires_at": expires_at}
        return {"status": "Accepted"}

    async def _may_start_on(self, connector: Any, id_tag: str) -> bool:
        """Whether a remote start by `id_tag` may use `connector` (free, or reserved for it)."""
        held = self.reservation_on(connector)
        if held is None:
            return True
        holders = {t for t in (held["id_tag"], held["group"]) if isinstance(t, str)}
        if id_tag in holders:
            return True
        if self.ocpp_version == "1.6":
            info = (await self.call("Authorize", {"idTag": id_tag})).get("idTagInfo") or {}
            return info.get("status") == "Accepted" and info.get("parentIdTag") in holders
        reply = await self.call("Authorize", {"idToken": {"idToken": id_tag, "type": "Central"}})
        info = reply.get("idTokenInfo") or {}
        return info.get("status") == "Accepted" and (info.get("groupIdToken") or {}).get("idToken") in holders
    async def present_card(self, tx_ref: str, id_tag: str) -> dict[str, Any]:
        """A driver presents `id_tag` at running transaction `tx_ref`: stop it if the charger may.

        The transaction's own idTag stops it at once; another is Authorized first and stops it
        only if Accepted with the same parentIdTag / groupIdToken as the transaction's. Returns
        {"stopped": bool, "authorize": reply or None, "stop": reply (when stopped)}."""
        tx = self.running[tx_ref]
        authorize = None
        if id_tag != tx.get("id_tag"):
            token = {"idTag": id_tag} if self.ocpp_version == "1.6" else {"idToken": {"idToken": id_tag,
                                                                                       "type": "ISO14443"}}
            authorize = await self.call("Authorize", token)
            info = authorize.get("idTagInfo") or authorize.get("idTokenInfo") or {}
            parent = group_of(authorize)
            if info.get("status") != "Accepted" or parent is None or parent != tx.get("parent"):
                return {"stopped": False, "authorize": authorize}
        action, payload = self.stop_call(tx_ref, reason="Local")
        if self.ocpp_version == "1.6":
            payload["idTag"] = id_tag
        else:
            payload["idToken"] = {"idToken": id_tag, "type": "ISO14443"}
        stop = await self.call(action, payload)
        self.running.pop(tx_ref, None)
        return {"stopped": True, "authorize": authorize, "stop": stop}

    def next_seq_no(self) -> int:
        """The 2.0.1 TransactionEvent seqNo (one counter per charger)."""
        self._seq_no += 1
        return self._seq_no - 1

    def stop_call(self, tx_ref: str, reason: str = "Remote") -> tuple[str, dict[str, Any]]:
        """(action, payload) ending transaction `tx_ref` at its last reading, in this charger's version."""
        tx = self.running[tx_ref]
        wh = int(tx["meter_wh"])
        if self.ocpp_version == "2.0.1":
            return "TransactionEvent", {
                "eventType": "Ended", "timestamp": iso_now(), "seqNo": self.next_seq_no(),
                "triggerReason": "RemoteStop" if reason == "Remote" else "StopAuthorized",
                "transactionInfo": {"transactionId": tx_ref, "stoppedReason": reason},
                "meterValue": [{"timestamp": iso_now(), "sampledValue": [
                    {"value": wh, "measurand": ENERGY_REGISTER, "context": "Transaction.End",
                     "unitOfMeasure": {"unit": "Wh"}}]}]}
        payload: dict[str, Any] = {"transactionId": int(tx_ref), "meterStop": wh, "timestamp": iso_now(),
                                   "reason": reason}
        if self.meter_key is not None and isinstance(tx.get("id_tag"), str):
            payload["transactionData"] = [
                {"timestamp": iso_now(), "sampledValue": [self.signed_sample(tx["id_tag"], "E", wh)]}]
        return "StopTransaction", payload

    async def _send_due_stops(self) -> None:
        """End the transactions a remote stop named (once no CALL of ours is outstanding)."""
        if self._sending_stops:
            return  # the stop's own CALL returning: the outer loop goes on
        self._sending_stops = True
        try:
            while self._stops_due:
                tx_ref = self._stops_due[0]  # stays due (a repeated stop is Rejected) until sent
                if tx_ref in self.running:
                    action, payload = self.stop_call(tx_ref)
                    record = next((r for r in reversed(self.remote_stops) if r["transaction_id"] == tx_ref), None)
                    try:
                        answer: dict[str, Any] | str = await self.call(action, payload)
                    except ChargerCallFailed as exc:
                        answer = str(exc)
                    self.running.pop(tx_ref, None)
                    if record is not None:
                        record.update(stop_action=action, stop_payload=payload, stop_answer=answer,
                                      stopped_at=time.perf_counter())
                self._stops_due.pop(0)
        finally:
            self._sending_stops = False

    async def _answer_csms_call(self, frame: list[Any]) -> None:
        """Accept a RemoteStartTransaction with an idTag (queue it) and a remote stop of a running
        transaction (end it next); refuse every other CSMS call."""
        message_id, action, payload = frame[1], frame[2], frame[3]
        if action in ("RemoteStopTransaction", "RequestStopTransaction"):
            expected = "RemoteStopTransaction" if self.ocpp_version == "1.6" else "RequestStopTransaction"
            ref = payload.get("transactionId") if isinstance(payload, dict) else None
            ok = action == expected and isinstance(ref, int if action == "RemoteStopTransaction" else str) \
                and str(ref) in self.running and str(ref) not in self._stops_due
            if ok:
                self._stops_due.append(str(ref))
                self.remote_stops.append({"transaction_id": str(ref), "action": action, "payload": payload,
                                          "received_at": time.perf_counter()})
                del self.remote_stops[:-MAX_REMOTE_STOPS_KEPT]
            await self.ws.send_message(json.dumps([CALLRESULT, message_id, {"status": "Accepted" if ok else "Rejected"}]))
            return
        if action in ("RemoteStartTransaction", "RequestStartTransaction") and isinstance(payload, dict):
            id_tag = payload.get("idTag") if action == "RemoteStartTransaction" else \
                (payload.get("idToken") or {}).get("idToken")
            connector = payload.get("connectorId", 1) if action == "RemoteStartTransaction" else payload.get("evseId", 1)
            if isinstance(id_tag, str) and not await self._may_start_on(connector, id_tag):
                self.refused_remote_starts.append(payload)
                del self.refused_remote_starts[:-MAX_REMOTE_STOPS_KEPT]
                await self.ws.send_message(json.dumps([CALLRESULT, message_id, {"status": "Rejected"}]))
                return
        if (action == "RemoteStartTransaction" and isinstance(payload, dict) and isinstance(payload.get("idTag"), str)
                and len(self.remote_starts) < MAX_QUEUED_REMOTE_STARTS):
            self.remote_starts.append(payload)
            await self.ws.send_message(json.dumps([CALLRESULT, message_id, {"status": "Accepted"}]))
            return
        if action == "RemoteStartTransaction":
            await self.ws.send_message(json.dumps([CALLRESULT, message_id, {"status": "Rejected"}]))
            return
        if action == "RequestStartTransaction" and self.ocpp_version == "2.0.1":  # queued like a 1.6 one
            token = (payload.get("idToken") or {}).get("idToken") if isinstance(payload, dict) else None
            ok = isinstance(token, str) and len(self.remote_starts) < MAX_QUEUED_REMOTE_STARTS
            if ok:
                self.remote_starts.append({**payload, "idTag": token})
            await self.ws.send_message(json.dumps([CALLRESULT, message_id, {"status": "Accepted" if ok else "Rejected"}]))
            return
        if len(self.csms_calls) < MAX_RECORDED_CALLS:
            self.csms_calls.append((action, payload))
        reply = self.reserve(action, payload) if action in ("ReserveNow", "CancelReservation") else \
            answer_command(self.config, action, payload)
        if reply is not None:
            await self.ws.send_message(json.dumps([CALLRESULT, message_id, reply]))
            return
        await self.ws.send_message(json.dumps([CALLERROR, message_id, "NotSupported", "demo charger", {}]))

    async def next_remote_start(self, timeout_s: float) -> dict[str, Any]:
        """The oldest accepted RemoteStartTransaction payload, waiting up to `timeout_s` for one."""
        with trio.fail_after(timeout_s):
            while not self.remote_starts:
                frame = json.loads(await self.ws.get_message())
                if frame[0] == CALL:
                    await self._answer_csms_call(frame)
                    await self._send_due_stops()
                # a CALLRESULT/CALLERROR here answers a call given up earlier: dropped
        return self.remote_starts.pop(0)

    async def serve(self, seconds: float, until: Callable[[], bool] = lambda: False) -> None:
        """Answer CSMS calls (and honour remote stops) for about `seconds`, or until `until()`
        holds after one, sending nothing else. Only the wait for a frame times out: a stop being
        sent is finished, however long it takes."""
        deadline = trio.current_time() + seconds
        await self._send_due_stops()
        while not until():
            with trio.move_on_at(deadline) as waiting:
                message = await self.ws.get_message()
            if waiting.cancelled_caught:
                return
            frame = json.loads(message)
            if frame[0] == CALL:
                await self._answer_csms_call(frame)
                await self._send_due_stops()

    async def next_remote_stop(self, timeout_s: float) -> dict[str, Any]:
        """The next remote stop honoured from now on (its record, once the stop was answered),
        waiting up to `timeout_s` while answering CSMS calls."""
        seen = len(self.remote_stops)
        with trio.fail_after(timeout_s):
            await self._send_due_stops()
            while not (len(self.remote_stops) > seen and "stop_answer" in self.remote_stops[-1]):
                frame = json.loads(await self.ws.get_message())
                if frame[0] == CALL:
                    await self._answer_csms_call(frame)
                    await self._send_due_stops()
        return self.remote_stops[-1]

    async def boot(self, connector: int) -> dict[str, Any]:
        """BootNotification and an Available StatusNotification (2.0.1: of EVSE `connector`,
        connector 1); returns the boot reply."""
        if self.ocpp_version == "2.0.1":
            boot = await self.call("BootNotification", {"reason": "PowerUp",
                                                        "chargingStation": {"model": "demo", "vendorName": "DEVSEN"}})
            await self.call("StatusNotification", {"timestamp": iso_now(), "connectorStatus": "Available",
                                                   "evseId": connector, "connectorId": 1})
            return boot
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


def group_of(reply: dict[str, Any]) -> str | None:
    """The parentIdTag (1.6 idTagInfo) or groupIdToken.idToken (2.0.1 idTokenInfo) of a CSMS reply."""
    info = reply.get("idTagInfo") or reply.get("idTokenInfo")
    if not isinstance(info, dict):
        return None
    group = info.get("parentIdTag", (info.get("groupIdToken") or {}).get("idToken"))
    return group if isinstance(group, str) else None


def _last_register_wh(meter_values: Any) -> int | None:
    """The last unsigned Energy.Active.Import.Register reading (Wh) of a 1.6/2.0.1 meterValue list."""
    found = None
    for meter_value in meter_values if isinstance(meter_values, list) else ():
        for sample in (meter_value.get("sampledValue") or []) if isinstance(meter_value, dict) else ():
            if not isinstance(sample, dict) or sample.get("format") == "SignedData":
                continue
            if sample.get("measurand", ENERGY_REGISTER) != ENERGY_REGISTER:
                continue
            try:
                found = int(float(sample["value"]))  # 1.6 sends text, 2.0.1 a number
            except (KeyError, TypeError, ValueError):
                continue
    return found


def basic_auth_header(charge_box_id: str, password: str) -> tuple[bytes, bytes]:
    """The HTTP Basic `Authorization` header of OCPP security profile 1."""
    token = base64.b64encode(f"{charge_box_id}:{password}".encode()).decode()
    return (b"Authorization", f"Basic {token}".encode())


@asynccontextmanager
async def connect_demo_charger(url_base: str, charge_box_id: str, password: str,
                               meter_key: ec.EllipticCurvePrivateKey | None = None,
                               ocpp_version: str = "1.6") -> AsyncIterator[DemoCharger]:
    """A DemoCharger connected to `url_base` + "/" + chargeBoxId for the duration of the block;
    with `meter_key` it signs its begin and end readings (OCMF); `ocpp_version` "1.6" or "2.0.1"."""
    if ocpp_version not in SUBPROTOCOLS:
        raise ValueError(f"ocpp_version {ocpp_version!r} is not one of {sorted(SUBPROTOCOLS)}")
    url = url_base.rstrip("/") + "/" + charge_box_id
    async with open_websocket_url(url, subprotocols=[SUBPROTOCOLS[ocpp_version]],
                                  extra_headers=[basic_auth_header(charge_box_id, password)]) as ws:
        yield DemoCharger(ws, charge_box_id, meter_key=meter_key, ocpp_version=ocpp_version)
