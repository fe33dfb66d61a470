"""Remote start end to end: a driver opens an escrow session on chain, the node the charger is
connected to starts it over OCPP with the session token, the charge settles from escrow.

Runs its own local network (anvil, the contracts, 4 `devsen node` processes): the module
fixture `network` of test_e2e_network.py, instantiated again for this module.
"""

from __future__ import annotations

from typing import Any

import pytest
import test_e2e_network
import trio
from ocpp.messages import get_validator

from anchoring.chain import ChainEvent
from anchoring.chain.client import SessionStatus
from devsen.demo_charger import connect_demo_charger
from devsen.devnet import DEMO_CHARGER, DEMO_ID_TAG, DEMO_PASSWORD, DEMO_PRICE_PER_KWH
from devsen.ledger import session_token
from devsen.remote_start import RemoteStart, remote_start_call, remote_starts
from devsen.wallet import open_prepaid_session

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
