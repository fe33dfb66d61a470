"""A full (non-validator) node that accepts chargers (issue 15 part 1), on real processes: anvil,
4 validator nodes and one `role = "full"`, `accept_chargers = true` node registered on chain as
an operator (ValidatorSet.registerOperator, DEVNET_STAKE bonded).

The demo charger (OCMF-signed begin and end readings, the devnet's requireSignedMeter device)
runs a whole session through the full node only: every reply comes after the block carrying the
event is applied at the full node, which relayed the events to the validators (it has no
consensus link; `relay_taken` counts them). The stop event is vouched by the operator's key, is
anchored, `devsen audit verify` accepts it through the full node, and the escrow session settles
on chain at the signed energy; the proof's event names the operator as its ingress
(attributable). Then the ledger's commands reach a charger connected to the full node: a driver
opens a session on chain, the ledger issues its remote start, the full node sends it (and the
boot's provisioning commands), relays the outcome it signs with the operator key, and every node
reports the same "accepted" outcome, reported by the operator. Hostile side: a second full node, not registered, that relays its charger's
events anyway (tests/byzantine/behaviours/unregistered_operator.py): every validator refuses
them (`relay_payload_refused`), the charger gets a CALLERROR, nothing is committed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from e2e_devnet import full_node_beside, running_devnet
from test_e2e_remote_start import remote_start_everywhere, start_for

from anchoring.audit import audit_main
from anchoring.chain import ChainClient, TransactionSender, connect
from anchoring.chain.client import SessionStatus
from anchoring.chain.deploy import fund_devnet_accounts
from devsen.config import config_to_toml
from devsen.demo_charger import ChargerCallFailed, connect_demo_charger, demo_meter_key
from devsen.devnet import (
    DEMO_CHARGER,
    DEMO_ID_TAG,
    DEMO_PASSWORD,
    DEVNET_STAKE,
    DevnetNode,
    start_node_process,
    stop_process,
    wait_until_serving,
)
from devsen.http_api import http_get
from devsen.ledger import session_token
from devsen.wallet import open_prepaid_session
from ocpp_adapter.events import ChargerEvent

NODES = 4
SETTLE_TIMEOUT_S = 60
REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "tests" / "byzantine" / "launch.py"
RESULTS = REPO / "bench" / "results" / "full_node_ingress.json"


def _start_with_behaviour(node: DevnetNode, behaviour: str) -> None:
    """`devsen node` for `node` through the Byzantine launcher (one product method patched)."""
    node.config_path.write_text(config_to_toml(node.config))
    with open(node.log_path, "ab") as log_file:
        node.process = subprocess.Popen(
            [sys.executable, str(LAUNCH), "--behaviour", behaviour, "--", "node", "--config", str(node.config_path)],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=str(REPO))


async def _status(url: str) -> Any:
    status, body = await http_get(url + "/v1/status")
    assert status == 200, body
    return json.loads(body)


async def _get(url: str) -> tuple[int, Any]:
    status, body = await http_get(url)
    return status, json.loads(body)


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_devnet(tmp_path_factory.mktemp("devnet-ingress"), NODES, signed_meter=True) as net:
        yield net


async def test_a_full_node_relays_a_chargers_whole_session_which_settles_and_audits(devnet: Any) -> None:
    begun = time.perf_counter()
    nodes, anvil, deployment = devnet["nodes"], devnet["anvil"], devnet["deployment"]
    full = full_node_beside(nodes, "operator-1", accept_chargers=True, state_sync=False)
    operator = full.keys.validator.address
    w3 = connect(anvil.url)
    fund_devnet_accounts(TransactionSender(w3, anvil.dev_keys[0]), deployment, [w3.to_checksum_address(operator)],
                         eth_wei=10**18, tokens=DEVNET_STAKE)
    client = ChainClient(w3, deployment, TransactionSender(w3, full.keys.validator.secret))
    client.approve(deployment.validator_set, DEVNET_STAKE)
    registered = client.register_operator(DEVNET_STAKE, full.keys.peer_id.to_bytes(), full.ocpp_url)
    assert client.operators("latest") == (operator,)
    start_node_process(full)
    try:
        await wait_until_serving([full])
        mine = await _status(full.http_url)
        assert mine["role"] == "full" and mine["validator"] is None and mine["operator"] == "0x" + operator.hex()
        # the validators admit the operator's events once a block names an Ethereum block that
        # shows the registration: make blocks through a validator until one does
        async with connect_demo_charger(nodes[0].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
            with trio.fail_after(60):
                while min([(await _status(n.http_url))["chain"]["agreed_block"] for n in nodes]) \
                        < registered.block_number:
                    await charger.call("Heartbeat", {})
                    await trio.sleep(0.5)
        ready = time.perf_counter()

        async with connect_demo_charger(full.ocpp_url, DEMO_CHARGER, DEMO_PASSWORD, demo_meter_key()) as charger:
            result = await charger.charge_session(DEMO_ID_TAG, connector=1, meter_start_wh=1_000,
                                                  meter_stop_wh=13_000)
            stop_message_id = charger.sent[-1][0]
        session_s = time.perf_counter() - ready
        assert result["boot"]["status"] == "Accepted"
        assert result["start"]["idTagInfo"]["status"] == "Accepted", result
        status, found = await _get(f"{full.http_url}/v1/chargers/{DEMO_CHARGER}/messages/{stop_message_id}")
        assert status == 200, found
        event_id = found["event_id"]
        mine = await _status(full.http_url)
        assert mine["consensus"].get("relay_taken", 0) >= 6, mine["consensus"]  # boot .. stop, all relayed
        theirs = [await _status(n.http_url) for n in nodes]
        assert sum(s["consensus"].get("relay_payload_pooled", 0) for s in theirs) >= 6
        assert all(s["p2p"]["linked_validators"] == NODES - 1 for s in theirs)  # it never joined consensus

        proof: Any = None
        with trio.fail_after(SETTLE_TIMEOUT_S):
            while True:
                status, proof = await _get(f"{full.http_url}/v1/events/{event_id}/proof")
                if status == 200 and client.anchored_batch(int(proof["batch"]["batch_id"]), "latest") is not None:
                    break
                await trio.sleep(1.0)
        stop_event = ChargerEvent.from_bytes(bytes.fromhex(proof["event_bytes"][2:]))
        assert stop_event.action == "StopTransaction" and stop_event.ingress_node == "0x" + operator.hex()
        verdict = await trio.to_thread.run_sync(lambda: audit_main(
            ["verify", event_id, "--node", full.http_url, "--rpc", anvil.url,
             "--deployment", str(devnet["deployment_path"])]))
        assert verdict == 0

        driver: ChainClient = devnet["seeded"]["driver_client"]
        session_id = devnet["seeded"]["session_id"]
        session = None
        with trio.fail_after(SETTLE_TIMEOUT_S):
            while session is None or session.status != SessionStatus.SETTLED:
                session = driver.session(session_id, "latest")
                await trio.sleep(1.0)
        assert session.energy_wh == 12_000 and session.settled_amount > 0  # the signed readings
        print(f"full-node session: {session_s:.1f} s from connect to the stop's reply; settled "
              f"{session.energy_wh} Wh / {session.settled_amount} units; test {time.perf_counter() - begun:.1f} s")
        RESULTS.write_text(json.dumps({
            "what": "one demo-charger session (boot, status, authorize, start, meter, stop) through a full node "
                    "registered as an operator, 4 validators + anvil on 127.0.0.1 (tests/e2e/test_e2e_full_node_ingress.py)",
            "session_s": round(session_s, 1),
            "session_s_note": "includes the ~13 s the demo charger waits so 12 kWh fit its 4 MW maximum power",
            "events_relayed": mine["consensus"].get("relay_taken", 0),
            "settled_energy_wh": session.energy_wh, "settled_amount_base_units": session.settled_amount,
            "test_s": round(time.perf_counter() - begun, 1),
            "audit_verify": "VALID",
            "remote_start_s": round(await _remote_start_through(full, nodes, driver, operator), 1),
            "remote_start_note": "from the session's opening on chain to its Accepted outcome at every node; the charger sends "
                                 "nothing meanwhile, so the block issuing the start is the idle block (30 s)",
            "events_relayed_note": "charger events and the outcomes of the commands the full node delivered "
                                   "(remote start, provisioning)",
        }, indent=1, sort_keys=True) + "\n")
        assert "Traceback" not in full.log_path.read_text()
    finally:
        stop_process(full.process)
        print(f"--- {full.log_path} (tail) ---\n" + full.log_path.read_text()[-3000:])


async def _remote_start_through(full: DevnetNode, nodes: list[Any], driver: ChainClient, operator: bytes) -> float:
    """A remote start delivered by the full node, its outcome committed; seconds it took."""
    async with connect_demo_charger(full.ocpp_url, DEMO_CHARGER, DEMO_PASSWORD, demo_meter_key()) as charger:
        assert (await charger.boot(connector=2))["status"] == "Accepted"
        began = time.perf_counter()
        session_id = await trio.to_thread.run_sync(open_prepaid_session, driver, DEMO_CHARGER, 2, DEMO_ID_TAG,
                                                   5 * 10**6)
        request = await start_for(charger, session_token(session_id))
        assert request == {"connectorId": 2, "idTag": session_token(session_id)}
        doc = await remote_start_everywhere([*nodes, full], session_id, "accepted")
        took = time.perf_counter() - began
    status, command = await _get(f"{nodes[0].http_url}/v1/commands/{doc['command_id']}")
    assert status == 200 and command["status"] == "result", command
    assert command["reported_by"] == "0x" + operator.hex()  # the operator's signed outcome, relayed
    log = full.log_path.read_text()
    assert f"command {doc['command_id']}: RemoteStartTransaction 1.6 at {DEMO_CHARGER}: Accepted" in log
    mine = await _status(full.http_url)
    print(f"remote start through the full node: {took:.1f} s from the opening to the committed outcome; "
          f"relay counters {({k: v for k, v in mine['consensus'].items() if k.startswith('relay')})}")
    return took


async def test_an_unregistered_full_node_relaying_anyway_is_refused_by_every_validator(devnet: Any) -> None:
    nodes = devnet["nodes"]
    rogue = full_node_beside(nodes, "rogue-1", accept_chargers=True, state_sync=False)
    assert rogue.keys.validator.address not in ChainClient(connect(devnet["anvil"].url), devnet["deployment"]) \
        .operators("latest")
    before = [await _status(n.http_url) for n in nodes]
    refused_before = sum(s["consensus"].get("relay_payload_refused", 0) for s in before)
    _start_with_behaviour(rogue, "unregistered_operator")
    try:
        await wait_until_serving([rogue])
        async with connect_demo_charger(rogue.ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
            with pytest.raises(ChargerCallFailed) as failed:
                await charger.call("Heartbeat", {}, message_id="rogue-heartbeat")
        assert "no validator took the event" in str(failed.value), str(failed.value)
        assert "nor a registered operator" in str(failed.value)
        statuses = [await _status(n.http_url) for n in nodes]
        refused = sum(s["consensus"].get("relay_payload_refused", 0) for s in statuses) - refused_before
        assert refused >= NODES, [s["consensus"] for s in statuses]  # each validator, at least once
        for node in nodes:
            status, _ = await _get(f"{node.http_url}/v1/chargers/{DEMO_CHARGER}/messages/rogue-heartbeat")
            assert status == 404  # never committed
    finally:
        stop_process(rogue.process)
        print(f"--- {rogue.log_path} (tail) ---\n" + rogue.log_path.read_text()[-2000:])
