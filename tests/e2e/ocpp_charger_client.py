"""A test-side charger: the `ocpp` package's own ChargePoint (v16 and v201) over a real
WebSocket (the `websockets` library), implementing every CSMS-to-charger command of issue 13.

Why this shape: the `ocpp` package's ChargePoint is asyncio-bound (asyncio Lock/Queue, its
validators run in an asyncio executor) and the tests are trio. trio-asyncio would tie both loops
to one thread; instead each charger runs its own asyncio loop in a daemon thread, and the trio
test talks to it through thread-safe calls (`trio.to_thread`). ocpp-rpc (node) was the other
choice: it would need a Node process and an IPC protocol to report what it received, where
this client records every CALL in-process. Being the third-party package's ChargePoint, it
checks each CALL the node sends against the OCPP request schema (a bad one is answered with a
CALLERROR by the package) and each of its own answers against the response schema before sending.

What it records: `received`, every CSMS CALL as (action, payload) exactly as it came off the
wire (the raw JSON, before the package's snake_case conversion), and `notify_reports`, the
NotifyReport payloads it streamed after a GetBaseReport (2.0.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio
import websockets
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201

from devsen.demo_charger import basic_auth_header
from devsen.ledger.provisioning import desired_settings

# What the network sends every charger on boot: the default profile's settings and, in 2.0.1, the
# network profiles of the nodes' endpoints (and their priority) (devsen/ledger/provisioning.py)
PROVISIONING_CALLS = [(setting.action, setting.payload) for version in ("1.6", "2.0.1")
                      for setting in desired_settings(version)]


def is_provisioning(call: tuple[str, dict[str, Any]]) -> bool:
    """Whether a CSMS CALL is the ledger's boot-time provisioning (no manager sends SetNetworkProfile)."""
    action, payload = call
    named = [item.get("variable", {}).get("name") for item in payload.get("setVariableData", [])
             if isinstance(item, dict)] if action == "SetVariables" else []
    return call in PROVISIONING_CALLS or action == "SetNetworkProfile" or named == ["NetworkConfigurationPriority"]

SUBPROTOCOLS = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}
CONNECT_TIMEOUT_S = 20.0
NOW = "2026-12-02T00:00:00Z"


def config_16() -> dict[str, tuple[str, bool]]:
    """The 1.6 test charger's configuration keys: key -> (value, read-only)."""
    return {"HeartbeatInterval": ("300", False), "MeterValueSampleInterval": ("60", False),
            "NumberOfConnectors": ("2", True), "LocalAuthListEnabled": ("true", False)}


def variables_201() -> dict[str, str]:
    """The 2.0.1 test station's variables: "Component/Variable" -> value."""
    return {"OCPPCommCtrlr/HeartbeatInterval": "300", "SampledDataCtrlr/TxUpdatedInterval": "0",
            "AuthCtrlr/LocalAuthorizeOffline": "true"}


class _Recording:
    """What both versions' charge points share: the raw CALL being handled and the record of CALLs."""

    _request: dict[str, Any]
    received: list[tuple[str, dict[str, Any]]]
    local_list_version: int
    running_transactions: set[str]

    def _record(self, raw: str | bytes) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            return
        if isinstance(frame, list) and len(frame) == 4 and frame[0] == 2:
            self._request = frame[3] if isinstance(frame[3], dict) else {}
            self.received.append((str(frame[2]), self._request))


class Charger16(_Recording, ChargePoint16):  # type: ignore[misc]
    """OCPP 1.6 charge point answering every CSMS command of issue 13."""

    def __init__(self, charge_box_id: str, connection: Any) -> None:
        super().__init__(charge_box_id, connection)
        self.received = []
        self._request = {}
        self.config = config_16()
        self.local_list_version = 0
        self.running_transactions = set()

    async def route_message(self, raw_msg: Any) -> None:
        self._record(raw_msg)
        await super().route_message(raw_msg)

    @on("GetConfiguration")  # type: ignore[untyped-decorator]
    def on_get_configuration(self, **_: Any) -> Any:
        wanted = self._request.get("key")
        keys = wanted if isinstance(wanted, list) else sorted(self.config)
        return result16.GetConfiguration(
            configuration_key=[{"key": k, "value": self.config[k][0], "readonly": self.config[k][1]}
                               for k in keys if k in self.config],
            unknown_key=[k for k in keys if k not in self.config] or None)

    @on("ChangeConfiguration")  # type: ignore[untyped-decorator]
    def on_change_configuration(self, **_: Any) -> Any:
        key, value = self._request["key"], self._request["value"]
        if key not in self.config:
            return result16.ChangeConfiguration(status="NotSupported")
        if self.config[key][1]:
            return result16.ChangeConfiguration(status="Rejected")
        self.config[key] = (value, False)
        return result16.ChangeConfiguration(status="Accepted")

    @on("Reset")  # type: ignore[untyped-decorator]
    def on_reset(self, **_: Any) -> Any:
        return result16.Reset(status="Accepted")

    @on("UnlockConnector")  # type: ignore[untyped-decorator]
    def on_unlock_connector(self, **_: Any) -> Any:
        return result16.UnlockConnector(status="Unlocked")

    @on("RemoteStopTransaction")  # type: ignore[untyped-decorator]
    def on_remote_stop_transaction(self, **_: Any) -> Any:
        known = str(self._request["transactionId"]) in self.running_transactions
        return result16.RemoteStopTransaction(status="Accepted" if known else "Rejected")

    @on("TriggerMessage")  # type: ignore[untyped-decorator]
    def on_trigger_message(self, **_: Any) -> Any:
        supported = self._request["requestedMessage"] in ("Heartbeat", "StatusNotification")
        return result16.TriggerMessage(status="Accepted" if supported else "NotImplemented")

    @after("TriggerMessage")  # type: ignore[untyped-decorator]
    async def after_trigger_message(self, requested_message: str, connector_id: int = 1, **_: Any) -> None:
        if requested_message == "Heartbeat":
            await self.call(call16.Heartbeat())
        elif requested_message == "StatusNotification":
            await self.call(call16.StatusNotification(connector_id=connector_id, error_code="NoError",
                                                      status="Available", timestamp=NOW))

    @on("ChangeAvailability")  # type: ignore[untyped-decorator]
    def on_change_availability(self, **_: Any) -> Any:
        return result16.ChangeAvailability(status="Accepted")

    @on("ClearCache")  # type: ignore[untyped-decorator]
    def on_clear_cache(self, **_: Any) -> Any:
        return result16.ClearCache(status="Accepted")

    @on("SendLocalList")  # type: ignore[untyped-decorator]
    def on_send_local_list(self, **_: Any) -> Any:
        self.local_list_version = int(self._request["listVersion"])
        return result16.SendLocalList(status="Accepted")

    @on("GetLocalListVersion")  # type: ignore[untyped-decorator]
    def on_get_local_list_version(self, **_: Any) -> Any:
        return result16.GetLocalListVersion(list_version=self.local_list_version)

    @on("SetChargingProfile")  # type: ignore[untyped-decorator]
    def on_set_charging_profile(self, **_: Any) -> Any:
        return result16.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")  # type: ignore[untyped-decorator]
    def on_clear_charging_profile(self, **_: Any) -> Any:
        return result16.ClearChargingProfile(status="Accepted")

    @on("GetCompositeSchedule")  # type: ignore[untyped-decorator]
    def on_get_composite_schedule(self, **_: Any) -> Any:
        return result16.GetCompositeSchedule(
            status="Accepted", connector_id=int(self._request["connectorId"]), schedule_start=NOW,
            charging_schedule={"duration": int(self._request["duration"]), "chargingRateUnit": "A",
                               "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16}]})

    @on("UpdateFirmware")  # type: ignore[untyped-decorator]
    def on_update_firmware(self, **_: Any) -> Any:
        return result16.UpdateFirmware()

    @on("GetDiagnostics")  # type: ignore[untyped-decorator]
    def on_get_diagnostics(self, **_: Any) -> Any:
        return result16.GetDiagnostics(file_name="diagnostics.log")

    @on("ReserveNow")  # type: ignore[untyped-decorator]
    def on_reserve_now(self, **_: Any) -> Any:
        return result16.ReserveNow(status="Accepted")

    @on("CancelReservation")  # type: ignore[untyped-decorator]
    def on_cancel_reservation(self, **_: Any) -> Any:
        return result16.CancelReservation(status="Accepted")

    @on("DataTransfer")  # type: ignore[untyped-decorator]
    def on_data_transfer(self, **_: Any) -> Any:
        return result16.DataTransfer(status="Accepted", data=self._request.get("data"))


class Charger201(_Recording, ChargePoint201):  # type: ignore[misc]
    """OCPP 2.0.1 charging station answering every CSMS command of issue 13; a GetBaseReport it
    accepted is followed by its NotifyReport stream, one report per variable."""

    def __init__(self, charge_box_id: str, connection: Any) -> None:
        super().__init__(charge_box_id, connection)
        self.received = []
        self._request = {}
        self.variables = variables_201()
        self.local_list_version = 0
        self.running_transactions = set()
        self.notify_reports: list[dict[str, Any]] = []

    async def route_message(self, raw_msg: Any) -> None:
        self._record(raw_msg)
        await super().route_message(raw_msg)

    @staticmethod
    def _key(item: dict[str, Any]) -> str:
        return f"{item['component']['name']}/{item['variable']['name']}"

    @on("GetVariables")  # type: ignore[untyped-decorator]
    def on_get_variables(self, **_: Any) -> Any:
        results = []
        for item in self._request["getVariableData"]:
            value = self.variables.get(self._key(item))
            results.append({"attributeStatus": "Accepted" if value is not None else "UnknownVariable",
                            "component": item["component"], "variable": item["variable"],
                            **({"attributeValue": value} if value is not None else {})})
        return result201.GetVariables(get_variable_result=results)

    @on("SetVariables")  # type: ignore[untyped-decorator]
    def on_set_variables(self, **_: Any) -> Any:
        results = []
        for item in self._request["setVariableData"]:
            known = self._key(item) in self.variables
            if known:
                self.variables[self._key(item)] = item["attributeValue"]
            results.append({"attributeStatus": "Accepted" if known else "UnknownVariable",
                            "component": item["component"], "variable": item["variable"]})
        return result201.SetVariables(set_variable_result=results)

    @on("GetBaseReport")  # type: ignore[untyped-decorator]
    def on_get_base_report(self, **_: Any) -> Any:
        return result201.GetBaseReport(status="Accepted")

    @after("GetBaseReport")  # type: ignore[untyped-decorator]
    async def after_get_base_report(self, request_id: int, **_: Any) -> None:
        items = sorted(self.variables.items())
        for seq, (key, value) in enumerate(items):
            component, variable = key.split("/")
            report = {"component": {"name": component}, "variable": {"name": variable},
                      "variableAttribute": [{"value": value, "mutability": "ReadWrite"}]}
            self.notify_reports.append({"requestId": request_id, "seqNo": seq, "reportData": [report]})
            await self.call(call201.NotifyReport(request_id=request_id, generated_at=NOW, seq_no=seq,
                                                 report_data=[report], tbc=seq < len(items) - 1))

    @on("Reset")  # type: ignore[untyped-decorator]
    def on_reset(self, **_: Any) -> Any:
        return result201.Reset(status="Accepted")

    @on("UnlockConnector")  # type: ignore[untyped-decorator]
    def on_unlock_connector(self, **_: Any) -> Any:
        return result201.UnlockConnector(status="Unlocked")

    @on("RequestStopTransaction")  # type: ignore[untyped-decorator]
    def on_request_stop_transaction(self, **_: Any) -> Any:
        known = self._request["transactionId"] in self.running_transactions
        return result201.RequestStopTransaction(status="Accepted" if known else "Rejected")

    @on("TriggerMessage")  # type: ignore[untyped-decorator]
    def on_trigger_message(self, **_: Any) -> Any:
        supported = self._request["requestedMessage"] in ("Heartbeat", "StatusNotification")
        return result201.TriggerMessage(status="Accepted" if supported else "NotImplemented")

    @after("TriggerMessage")  # type: ignore[untyped-decorator]
    async def after_trigger_message(self, requested_message: str, evse: dict[str, Any] | None = None,
                                    **_: Any) -> None:
        if requested_message == "Heartbeat":
            await self.call(call201.Heartbeat())
        elif requested_message == "StatusNotification":
            evse = evse or {"id": 1, "connector_id": 1}
            await self.call(call201.StatusNotification(timestamp=NOW, connector_status="Available",
                                                       evse_id=evse["id"], connector_id=evse.get("connector_id", 1)))

    @on("ChangeAvailability")  # type: ignore[untyped-decorator]
    def on_change_availability(self, **_: Any) -> Any:
        return result201.ChangeAvailability(status="Accepted")

    @on("ClearCache")  # type: ignore[untyped-decorator]
    def on_clear_cache(self, **_: Any) -> Any:
        return result201.ClearCache(status="Accepted")

    @on("SendLocalList")  # type: ignore[untyped-decorator]
    def on_send_local_list(self, **_: Any) -> Any:
        self.local_list_version = int(self._request["versionNumber"])
        return result201.SendLocalList(status="Accepted")

    @on("GetLocalListVersion")  # type: ignore[untyped-decorator]
    def on_get_local_list_version(self, **_: Any) -> Any:
        return result201.GetLocalListVersion(version_number=self.local_list_version)

    @on("SetChargingProfile")  # type: ignore[untyped-decorator]
    def on_set_charging_profile(self, **_: Any) -> Any:
        return result201.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")  # type: ignore[untyped-decorator]
    def on_clear_charging_profile(self, **_: Any) -> Any:
        return result201.ClearChargingProfile(status="Accepted")

    @on("GetCompositeSchedule")  # type: ignore[untyped-decorator]
    def on_get_composite_schedule(self, **_: Any) -> Any:
        return result201.GetCompositeSchedule(status="Accepted", schedule={
            "evseId": int(self._request["evseId"]), "duration": int(self._request["duration"]),
            "scheduleStart": NOW, "chargingRateUnit": "W",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11000}]})

    @on("UpdateFirmware")  # type: ignore[untyped-decorator]
    def on_update_firmware(self, **_: Any) -> Any:
        return result201.UpdateFirmware(status="Accepted")

    @on("GetLog")  # type: ignore[untyped-decorator]
    def on_get_log(self, **_: Any) -> Any:
        return result201.GetLog(status="Accepted", filename="station.log")

    @on("ReserveNow")  # type: ignore[untyped-decorator]
    def on_reserve_now(self, **_: Any) -> Any:
        return result201.ReserveNow(status="Accepted")

    @on("CancelReservation")  # type: ignore[untyped-decorator]
    def on_cancel_reservation(self, **_: Any) -> Any:
        return result201.CancelReservation(status="Accepted")

    @on("DataTransfer")  # type: ignore[untyped-decorator]
    def on_data_transfer(self, **_: Any) -> Any:
        return result201.DataTransfer(status="Accepted", data=self._request.get("data"))


class OcppChargerClient:
    """One charger connection on its own asyncio loop in a daemon thread (see the module doc)."""

    def __init__(self, url_base: str, charge_box_id: str, password: str, ocpp_version: str,
                 retry_s: float = 0.0) -> None:
        if ocpp_version not in SUBPROTOCOLS:
            raise ValueError(f"ocpp_version {ocpp_version!r} is not one of {sorted(SUBPROTOCOLS)}")
        self.url = url_base.rstrip("/") + "/" + charge_box_id
        self.charge_box_id = charge_box_id
        self.password = password
        self.ocpp_version = ocpp_version
        self.retry_s = retry_s  # a refused handshake (a device the nodes do not know yet) is retried this long
        self.charge_point: Charger16 | Charger201 | None = None
        self.boot: dict[str, Any] = {}
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, name=f"ocpp-{charge_box_id}", daemon=True)

    # ------------------------------------------------------------ thread side (asyncio)

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the trio side
            self.error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        name, value = basic_auth_header(self.charge_box_id, self.password)
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                ws = await websockets.connect(self.url, subprotocols=[SUBPROTOCOLS[self.ocpp_version]],  # type: ignore[list-item]
                                              additional_headers=[(name.decode(), value.decode())],
                                              open_timeout=CONNECT_TIMEOUT_S)
                break
            except websockets.InvalidStatus:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.5)
        async with ws:
            point: Charger16 | Charger201 = Charger16(self.charge_box_id, ws) if self.ocpp_version == "1.6" \
                else Charger201(self.charge_box_id, ws)
            self.charge_point = point
            serving = asyncio.create_task(point.start())
            try:
                if isinstance(point, Charger16):
                    boot = await point.call(call16.BootNotification(charge_point_model="ocpp-package",
                                                                    charge_point_vendor="DEVSEN-tests"))
                else:
                    boot = await point.call(call201.BootNotification(
                        reason="PowerUp", charging_station={"model": "ocpp-package", "vendor_name": "DEVSEN-tests"}))
                self.boot = {"status": boot.status, "interval": boot.interval}
                self._ready.set()
                stop = asyncio.create_task(self._stop.wait())
                await asyncio.wait([serving, stop], return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
            finally:
                serving.cancel()
                with contextlib.suppress(BaseException):
                    await serving

    # ------------------------------------------------------------ caller side (any thread)

    def connect(self) -> None:
        """Connect and boot (blocking); raises what the thread met."""
        self._thread.start()
        if not self._ready.wait(CONNECT_TIMEOUT_S + self.retry_s + 10) or self.charge_point is None or not self.boot:
            raise RuntimeError(f"{self.charge_box_id} did not connect and boot at {self.url}: {self.error!r}")

    def close(self) -> None:
        """Close the connection and end the thread (blocking)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended already
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(15)

    @property
    def all_received(self) -> list[tuple[str, dict[str, Any]]]:
        """Every CSMS CALL, the network's own provisioning on boot included."""
        return list(self.charge_point.received) if self.charge_point is not None else []

    @property
    def received(self) -> list[tuple[str, dict[str, Any]]]:
        """The CSMS CALLs other than the ledger's boot-time provisioning (devsen/ledger/provisioning.py)."""
        return [call for call in self.all_received if not is_provisioning(call)]

    def actions(self) -> list[str]:
        return [action for action, _ in self.received]

    async def wait_until(self, done: Callable[[], bool], timeout_s: float = 30.0) -> None:
        """Poll `done` (reading what this charger recorded) until true; TooSlowError after timeout_s."""
        with trio.fail_after(timeout_s):
            while not done():
                if not self._thread.is_alive():
                    raise RuntimeError(f"{self.charge_box_id}'s connection ended: {self.error!r}")
                await trio.sleep(0.1)


@contextlib.asynccontextmanager
async def ocpp_charger(url_base: str, charge_box_id: str, password: str, ocpp_version: str,
                       retry_s: float = 0.0) -> AsyncIterator[OcppChargerClient]:
    """A connected, booted OcppChargerClient for the duration of the block (from trio)."""
    client = OcppChargerClient(url_base, charge_box_id, password, ocpp_version, retry_s)
    began = time.monotonic()
    await trio.to_thread.run_sync(client.connect)
    client.boot["connect_s"] = round(time.monotonic() - began, 3)
    try:
        yield client
    finally:
        await trio.to_thread.run_sync(client.close)
