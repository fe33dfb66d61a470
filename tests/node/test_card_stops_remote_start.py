"""The driver's own card stops a remote-started session (issue 13), at the OCPP layer.

A remote start names the session token as the transaction's idTag, so a real charger, which
lets a card stop a transaction only if it is the same idTag or has the same parentIdTag (1.6)
/ groupIdToken (2.0.1), refused the driver's RFID card. The ledger gives the token and the
driver's card the same group. Here the ledger answers a demo charger that enforces the rule
(devsen/demo_charger.py `present_card`), over a real WebSocket (serve_ocpp), in 1.6 and 2.0.1:
- a registered card of another driver (its own escrow session on the other connector, so it
  has a group here too) and an unknown card are refused as stops; the transaction goes on;
- the driver's card stops it, and the session settles on the escrow the token opened.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from ocpp.messages import get_validator

from devsen.demo_charger import DemoCharger, connect_demo_charger, iso_now
from devsen.ledger import (
    BlockContext,
    DeviceInfo,
    EscrowSession,
    IdTagInfo,
    Ledger,
    StaticChainView,
    Tariff,
    id_tag_hash,
    session_token,
)
from devsen.ledger.reservations import reservation_token
from ocpp_adapter.auth import ChargerCredentials, InMemoryChargerRegistry
from ocpp_adapter.config import OcppServerConfig
from ocpp_adapter.events import ChargerEvent
from ocpp_adapter.ingest import IngestResult
from ocpp_adapter.server import ChargerConnections, serve_ocpp

CARD, OTHER, UNKNOWN = "04A2B3C4D5E6F7", "04FFEEDDCCBBAA", "04000000000001"
PASSWORD = "card stop test password"
T0_MS = 1_795_000_000_000
ESCROW, OTHER_ESCROW = b"\x01" * 32, b"\x02" * 32


class LedgerIngest:
    """The node's ingest in miniature: each event applied in its own block, replies validated."""

    def __init__(self, charger: str) -> None:
        self.ledger = Ledger()
        opened = T0_MS // 1000 - 600
        self.chain = StaticChainView(
            {charger: DeviceInfo(b"\x11" * 32, "0x" + "aa" * 20, 2, Tariff(price_per_kwh=2_000))},
            {CARD: IdTagInfo("0x" + "dd" * 20), OTHER: IdTagInfo("0x" + "ee" * 20)},
            [EscrowSession(ESCROW, "0x" + "dd" * 20, charger, 1, id_tag_hash(CARD), 100_000, opened),
             EscrowSession(OTHER_ESCROW, "0x" + "ee" * 20, charger, 2, id_tag_hash(OTHER), 100_000, opened)])
        self.settlements: list[Any] = []

    async def submit(self, event: ChargerEvent) -> IngestResult:
        height = self.ledger.height + 1
        context = BlockContext(height, T0_MS + 60_000 * height, height, b"\x00" * 32)
        outcome = self.ledger.apply_block(context, self.chain, [event])
        result = outcome.results[0]
        assert result.reply is not None, (event.action, result.error_code)
        get_validator(3, event.action, event.ocpp_version).validate(result.reply)
        self.settlements += outcome.settlements
        return IngestResult(result.reply, event.event_id, height)


async def _start(charger: DemoCharger, token: str) -> str:
    """A remote-started transaction on connector 1 with the session token; its reference."""
    if charger.ocpp_version == "1.6":
        start = await charger.call("StartTransaction", {"connectorId": 1, "idTag": token, "meterStart": 1_000,
                                                        "timestamp": iso_now()})
        assert start["idTagInfo"]["status"] == "Accepted"
        await charger.call("MeterValues", {"connectorId": 1, "transactionId": start["transactionId"], "meterValue": [
            {"timestamp": iso_now(), "sampledValue": [{"value": "4000", "measurand": "Energy.Active.Import.Register",
                                                      "unit": "Wh"}]}]})
        return str(start["transactionId"])
    started = await charger.call("TransactionEvent", {
        "eventType": "Started", "timestamp": iso_now(), "triggerReason": "RemoteStart", "seqNo": charger.next_seq_no(),
        "transactionInfo": {"transactionId": "tx-1", "remoteStartId": 1}, "evse": {"id": 1, "connectorId": 1},
        "idToken": {"idToken": token, "type": "Central"},
        "meterValue": [{"timestamp": iso_now(), "sampledValue": [
            {"value": 1_000, "measurand": "Energy.Active.Import.Register", "context": "Transaction.Begin"}]}]})
    assert started["idTokenInfo"]["status"] == "Accepted"
    charger.running["tx-1"]["meter_wh"] = 4_000
    await charger.call("TransactionEvent", {
        "eventType": "Updated", "timestamp": iso_now(), "triggerReason": "MeterValuePeriodic",
        "seqNo": charger.next_seq_no(), "transactionInfo": {"transactionId": "tx-1"},
        "meterValue": [{"timestamp": iso_now(), "sampledValue": [
            {"value": 4_000, "measurand": "Energy.Active.Import.Register"}]}]})
    return "tx-1"


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_only_the_drivers_card_stops_the_remote_started_transaction(version: str) -> None:
    charger_id = "CP-1" if version == "1.6" else "CS-2"
    ingest = LedgerIngest(charger_id)
    config = OcppServerConfig(host="127.0.0.1", port=0, node_name="card-stop", ping_interval=None)
    registry = InMemoryChargerRegistry({charger_id: ChargerCredentials.from_password(PASSWORD)})
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve_ocpp(
            config, ingest, registry, connections=ChargerConnections(), task_status=task_status))
        with trio.fail_after(30):
            async with connect_demo_charger(f"ws://127.0.0.1:{port}/ocpp", charger_id, PASSWORD,
                                            ocpp_version=version) as charger:
                tx_ref = await _start(charger, session_token(ESCROW))
                group = reservation_token(id_tag_hash(CARD))
                assert charger.running[tx_ref]["parent"] == group  # from the start reply

                other = await charger.present_card(tx_ref, OTHER)  # another driver's card: its own group
                assert other["stopped"] is False and tx_ref in charger.running
                unknown = await charger.present_card(tx_ref, UNKNOWN)  # Invalid, no group
                assert unknown["stopped"] is False and tx_ref in charger.running
                assert ingest.settlements == []

                mine = await charger.present_card(tx_ref, CARD)
        nursery.cancel_scope.cancel()
    info_key = "idTagInfo" if version == "1.6" else "idTokenInfo"
    assert other["authorize"][info_key]["status"] == "Accepted"
    assert unknown["authorize"][info_key]["status"] == "Invalid"
    assert mine["stopped"] is True and mine["authorize"][info_key]["status"] == "Accepted"
    assert tx_ref not in charger.running
    assert [(s.session_id, s.energy_wh) for s in ingest.settlements] == [(ESCROW, 3_000)]
