"""Remote start end to end (issue 13, "remote start that does not give up"): a driver opens an
escrow session on chain, the ledger issues the remote start (devsen/ledger/remote_starts.py),
the node holding the charger's connection sends it with the session token, the charge settles.

Real parts: anvil, the contracts, 4 `devsen node` processes (the module fixture `network` of
test_e2e_network.py, instantiated again for this module), the demo charger over WebSockets.
- a connected, idle charger is started at once (no event of its own needed);
- a charger offline when the request is made, connecting later at another node, is started then;
- a charger that rejects the remote start: the outcome is committed and every node reports it
  identically on the session (GET /v1/sessions/{id} "remote_start").
The pure parts (calls, issuance, outcomes, expiry) are tests/ledger/test_ledger_remote_starts.py.
"""

from __future__ import annotations

import time
from typing import Any

import test_e2e_network
import trio
from ocpp.messages import get_validator

from anchoring.chain.client import SessionStatus
from devsen.demo_charger import DemoCharger, connect_demo_charger
from devsen.devnet import DEMO_CHARGER, DEMO_ID_TAG, DEMO_PASSWORD, DEMO_PRICE_PER_KWH
from devsen.http_api import http_get_json
from devsen.ledger import session_token
from devsen.ledger.remote_starts import remote_start_call, remote_start_command_id
from devsen.wallet import open_prepaid_session

network = test_e2e_network.network  # the devnet fixture: one network for this module
DEPOSIT = 5 * 10**6


def test_remote_start_calls_are_schema_valid_for_both_versions() -> None:
    for version in ("1.6", "2.0.1"):
        action, payload = remote_start_call(version, bytes(range(1, 33)), 2)
        get_validator(2, action, version).validate(payload)


async def remote_start_everywhere(nodes: list[Any], session_id: bytes, state: str) -> dict[str, Any]:
    """The session's "remote_start" once every node reports it alike, in `state`."""
    path = f"/v1/sessions/0x{session_id.hex()}"
    with trio.fail_after(60):
        while True:
            docs = []
            for node in nodes:
                status, doc = await http_get_json(node.http_url + path, timeout=10)
                docs.append((doc or {}).get("session", {}).get("remote_start") if status == 200 else None)
            if docs[0] is not None and docs[0]["state"] == state and all(d == docs[0] for d in docs):
                return dict(docs[0])
            await trio.sleep(0.3)


async def _consensus_status(nodes: list[Any]) -> list[dict[str, Any]]:
    out = []
    for node in nodes:
        status, doc = await http_get_json(node.http_url + "/v1/status", timeout=10)
        assert status == 200, doc
        out.append(doc["consensus"])
    return out


async def chain_woke(nodes: list[Any]) -> list[int]:
    """Each node's count of blocks its chain watch asked for (ConsensusService._watch_chain)."""
    return [int(c.get("chain_woke", 0)) for c in await _consensus_status(nodes)]


async def network_idle(nodes: list[Any]) -> list[int]:
    """Wait until every node holds its next height with no block due for 10 s (no payload
    waits, the anchor batch is closed, the idle heartbeat is far) and return the nodes'
    chain-watch counts then."""
    with trio.fail_after(90):
        while not all(c["idle"] and (c["block_due_in_s"] or 0) > 10 for c in await _consensus_status(nodes)):
            await trio.sleep(0.5)
    return await chain_woke(nodes)


async def start_for(charger: DemoCharger, token: str) -> dict[str, Any]:
    """The remote start carrying `token` (older sessions' starts are skipped)."""
    with trio.fail_after(60):
        request = await charger.next_remote_start(60)
        while request["idTag"] != token:
            request = await charger.next_remote_start(60)
    return request


async def charge_and_settle(charger: DemoCharger, driver: Any, session_id: bytes, connector: int) -> None:
    token = session_token(session_id)
    result = await charger.transaction(token, connector=connector, meter_start_wh=5_000, meter_stop_wh=9_000)
    assert result["start"]["idTagInfo"]["status"] == "Accepted"
    with trio.fail_after(60):
        while (session := driver.session(session_id, "latest")).status != SessionStatus.SETTLED:
            await trio.sleep(0.5)
    assert session.energy_wh == 4_000
    assert session.settled_amount >= 4_000 * DEMO_PRICE_PER_KWH // 1000


async def test_session_opened_on_chain_is_started_remotely_at_an_idle_charger_and_settles(network: Any) -> None:
    nodes, driver = network["nodes"], network["seeded"]["driver_client"]
    async with connect_demo_charger(nodes[1].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        assert (await charger.boot(connector=2))["status"] == "Accepted"
        woke = await network_idle(nodes)  # no block due: the heartbeat is up to 30 s away
        session_id = await trio.to_thread.run_sync(
            open_prepaid_session, driver, DEMO_CHARGER, 2, DEMO_ID_TAG, DEPOSIT)
        began = time.perf_counter()
        request = await start_for(charger, session_token(session_id))  # the charger sends nothing meanwhile
        print(f"remote start at an idle connected charger {time.perf_counter() - began:.1f} s after the "
              "session was confirmed")
        # the validators' chain watch saw the request and made the block that issued it
        assert sum(await chain_woke(nodes)) > sum(woke)
        assert request == {"connectorId": 2, "idTag": session_token(session_id)}
        doc = await remote_start_everywhere(nodes, session_id, "accepted")
        assert doc["action"] == "RemoteStartTransaction"
        assert doc["command_id"] == "0x" + remote_start_command_id(session_id).hex()
        await charge_and_settle(charger, driver, session_id, 2)


async def test_an_offline_charger_is_started_when_it_connects_at_another_node(network: Any) -> None:
    nodes, driver = network["nodes"], network["seeded"]["driver_client"]
    async with connect_demo_charger(nodes[1].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        assert (await charger.boot(connector=1))["status"] == "Accepted"
    # offline now: the request is made, the ledger issues its remote start, nobody can send it
    session_id = await trio.to_thread.run_sync(open_prepaid_session, driver, DEMO_CHARGER, 1, DEMO_ID_TAG, DEPOSIT)
    await remote_start_everywhere(nodes, session_id, "waiting")
    await trio.sleep(3)  # several blocks while it is offline
    async with connect_demo_charger(nodes[3].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        began = time.perf_counter()
        request = await start_for(charger, session_token(session_id))
        print(f"remote start {time.perf_counter() - began:.1f} s after the charger connected at another node")
        assert request["connectorId"] == 1
        doc = await remote_start_everywhere(nodes, session_id, "accepted")
        assert doc["outcome_height"] is not None
        await charge_and_settle(charger, driver, session_id, 1)
    log = nodes[3].log_path.read_text()
    assert f"command 0x{remote_start_command_id(session_id).hex()}: RemoteStartTransaction" in log


async def test_a_rejected_remote_start_is_recorded_identically_at_every_node(network: Any) -> None:
    nodes, driver = network["nodes"], network["seeded"]["driver_client"]
    async with connect_demo_charger(nodes[2].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        assert (await charger.boot(connector=1))["status"] == "Accepted"
        # the charger holds connector 1 for someone else (a reservation the operator made at the charger)
        charger.reservations[99] = {"id": 99, "connector": 1, "id_tag": "SOMEONE-ELSE", "group": None,
                                    "expires_at": time.time() + 600}
        session_id = await trio.to_thread.run_sync(
            open_prepaid_session, driver, DEMO_CHARGER, 1, DEMO_ID_TAG, DEPOSIT)
        token = session_token(session_id)
        with trio.fail_after(60):
            await charger.serve(60, until=lambda: any(p.get("idTag") == token for p in charger.refused_remote_starts))
        doc = await remote_start_everywhere(nodes, session_id, "rejected")
        assert doc["status"] == "result" and "Rejected" in doc["detail"]
        await charger.serve(3)  # the charger stays connected: a rejected start is not sent again
        assert [p["idTag"] for p in charger.refused_remote_starts].count(token) == 1
    assert await remote_start_everywhere(nodes, session_id, "rejected") == doc  # recorded once
