"""Remote start end to end: a driver opens an escrow session on chain, the node the charger is
connected to starts it over OCPP with the session token, the charge settles from escrow.

The end-to-end test runs its own local network (anvil, the contracts, 4 `devsen node`
processes): the module fixture `network` of test_e2e_network.py, instantiated again for this
module. The fast tests before it cover devsen.remote_start's pure parts and its worker (with
stand-ins for the chain client and the charger connections).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import test_e2e_network
import trio
from ocpp.messages import get_validator

from anchoring.chain import ChainEvent
from anchoring.chain.client import EscrowSession, SessionStatus
from devsen.demo_charger import connect_demo_charger
from devsen.devnet import DEMO_CHARGER, DEMO_ID_TAG, DEMO_PASSWORD, DEMO_PRICE_PER_KWH
from devsen.ledger import session_token
from devsen.remote_start import (
    HandledSessions,
    RemoteStart,
    remote_start_call,
    remote_start_worker,
    remote_starts,
)
from devsen.wallet import open_prepaid_session
from ocpp_adapter.errors import ChargerCallTimeout

network = test_e2e_network.network  # the devnet fixture: one network for this module
DEPOSIT = 5 * 10**6
SESSION_ID = bytes(range(1, 33))


def test_remote_start_calls_are_schema_valid_for_both_versions() -> None:
    start = RemoteStart(SESSION_ID, "CP-9", 2)
    for version in ("1.6", "2.0.1"):
        action, payload = remote_start_call(version, start)
        get_validator(2, action, version).validate(payload)
    assert remote_start_call("1.6", start) == ("RemoteStartTransaction", {"connectorId": 2, "idTag": start.token})
    _, payload = remote_start_call("2.0.1", start)
    assert payload["idToken"] == {"idToken": session_token(SESSION_ID), "type": "Central"} and payload["evseId"] == 2
    with pytest.raises(ValueError):
        remote_start_call("2.1", start)


def test_only_session_requested_events_become_remote_starts() -> None:
    def event(contract: str, name: str, **args: Any) -> ChainEvent:
        return ChainEvent(contract, name, args, 7, b"\x00" * 32, b"\x00" * 32, 0)

    requested = event("Escrow", "SessionRequested", sessionId=SESSION_ID, chargeBoxId="CP-9", connectorId=1,
                      driver="0x" + "11" * 20, idTagHash=b"\x22" * 32, deposit=10)
    others = [event("Escrow", "SessionSettled", sessionId=SESSION_ID), event("Anchor", "SessionRequested")]
    assert remote_starts([others[0], requested, others[1]]) == [RemoteStart(SESSION_ID, "CP-9", 1)]


class EscrowReader:
    """Stand-in for the chain client in worker tests: escrow sessions by id, each with a status."""

    def __init__(self, statuses: dict[bytes, tuple[SessionStatus, int]]) -> None:
        self.statuses = statuses

    def session(self, session_id: bytes, block: str) -> EscrowSession | None:
        if session_id not in self.statuses:
            return None
        status, opened_at = self.statuses[session_id]
        return EscrowSession(session_id, "0x" + "11" * 20, b"\x00" * 32, 1, b"\x00" * 32, 10, 0, 0, opened_at, status)


class Chargers:
    """Stand-in for ChargerConnections in worker tests: who is connected, what each call does."""

    def __init__(self, versions: dict[str, str], failing: dict[str, Exception]) -> None:
        self.versions, self.failing = versions, failing
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def version(self, charge_box_id: str) -> str | None:
        return self.versions.get(charge_box_id)

    async def call(self, charge_box_id: str, action: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.calls.append((charge_box_id, action, payload))
        if charge_box_id in self.failing:
            raise self.failing[charge_box_id]
        return {"status": "Accepted"}


async def test_worker_sends_only_for_open_recent_sessions_of_connected_chargers_and_survives_failures(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="devsen.remote_start")
    now = int(time.time())
    sid = {name: name.encode().ljust(32, b"\x00") for name in ("ok16", "ok201", "settled", "old", "away", "slow")}
    chain = EscrowReader({
        sid["ok16"]: (SessionStatus.OPEN, now), sid["ok201"]: (SessionStatus.OPEN, now),
        sid["settled"]: (SessionStatus.SETTLED, now), sid["old"]: (SessionStatus.OPEN, now - 3_600),
        sid["away"]: (SessionStatus.OPEN, now), sid["slow"]: (SessionStatus.OPEN, now),
    })
    chargers = Chargers({"CP-16": "1.6", "CS-201": "2.0.1", "CP-SLOW": "1.6"},
                        {"CP-SLOW": ChargerCallTimeout("'CP-SLOW' did not answer")})
    starts = [RemoteStart(sid["slow"], "CP-SLOW", 1), RemoteStart(sid["settled"], "CP-16", 1),
              RemoteStart(sid["old"], "CP-16", 1), RemoteStart(sid["away"], "CP-GONE", 1),
              RemoteStart(b"\x09" * 32, "CP-16", 1),  # unknown to the escrow
              RemoteStart(sid["ok16"], "CP-16", 2), RemoteStart(sid["ok201"], "CS-201", 1)]
    send, receive = trio.open_memory_channel[RemoteStart](len(starts))
    for start in starts:
        send.send_nowait(start)
    send.close()
    with trio.fail_after(10):
        await remote_start_worker(chain, chargers, receive, timeout_s=1.0)  # type: ignore[arg-type]
    assert [(cbid, action) for cbid, action, _ in chargers.calls] == [
        ("CP-SLOW", "RemoteStartTransaction"), ("CP-16", "RemoteStartTransaction"),
        ("CS-201", "RequestStartTransaction")]
    assert chargers.calls[1][2] == {"connectorId": 2, "idTag": session_token(sid["ok16"])}
    assert "ChargerCallTimeout" in caplog.text and "no longer open" in caplog.text and "ago" in caplog.text


def test_handled_sessions_forget_the_oldest_beyond_capacity() -> None:
    handled = HandledSessions(capacity=2)
    assert [handled.first_time(x) for x in (b"a", b"b", b"a", b"c", b"a")] == [True, True, False, True, True]


async def test_session_opened_on_chain_is_started_remotely_and_settles(network: Any) -> None:
    nodes, driver = network["nodes"], network["seeded"]["driver_client"]
    entry = nodes[1]
    async with connect_demo_charger(entry.ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        assert (await charger.boot(connector=2))["status"] == "Accepted"
        session_id = await trio.to_thread.run_sync(
            open_prepaid_session, driver, DEMO_CHARGER, 2, DEMO_ID_TAG, DEPOSIT)
        token = session_token(session_id)
        with trio.fail_after(30):
            request = await charger.next_remote_start(30)
            while request["idTag"] != token:  # a start for an older session of this charger
                request = await charger.next_remote_start(30)
        assert request == {"connectorId": 2, "idTag": token}
        result = await charger.transaction(token, connector=2, meter_start_wh=5_000, meter_stop_wh=9_000)
    assert result["authorize"]["idTagInfo"]["status"] == "Accepted"
    assert result["start"]["idTagInfo"]["status"] == "Accepted"
    assert result["stop"]["idTagInfo"]["status"] == "Accepted"

    with trio.fail_after(60):
        while (session := driver.session(session_id, "latest")).status != SessionStatus.SETTLED:
            await trio.sleep(0.5)
    assert session.energy_wh == 4_000
    assert session.settled_amount == 4_000 * DEMO_PRICE_PER_KWH // 1000

    # Only the node the charger is connected to sent the remote start.
    senders = [n.index for n in nodes if f"0x{session_id.hex()} at {DEMO_CHARGER}" in n.log_path.read_text()]
    assert senders == [entry.index]
