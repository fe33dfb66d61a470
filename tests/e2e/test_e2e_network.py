"""End to end on a real local network: anvil, the contracts, 4 `devsen node` processes.

One network per module (it takes ~15 s to start). The tests drive it as chargers, drivers
and auditors would: a full prepaid charging session over OCPP, an audit of its events
against the chain, tampered proofs, a retry at another node, and a validator killed.
"""

from __future__ import annotations

import copy
import json
import signal
import time
from typing import Any, cast

import pytest
import trio
from e2e_devnet import running_devnet
from trio_websocket import ConnectionRejected

from anchoring.audit import ChainReader, block_loader, http_fetcher, verify_event
from anchoring.chain import connect
from anchoring.chain.client import SessionStatus
from devsen.demo_charger import connect_demo_charger
from devsen.devnet import (
    DEMO_CHARGER,
    DEMO_DEPOSIT,
    DEMO_ID_TAG,
    DEMO_PASSWORD,
    DEMO_PRICE_PER_KWH,
    start_node_process,
    wait_until_serving,
)
from devsen.http_api import http_get_json

NODES = 4


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_devnet(tmp_path_factory.mktemp("devnet"), NODES) as devnet:
        yield devnet


async def _get(url: str) -> tuple[int, Any]:
    """GET JSON; a node busy past 10 s (a loaded CI machine) counts as 'not yet' (status 0)."""
    try:
        return await http_get_json(url, timeout=10)
    except (OSError, trio.TooSlowError):
        return 0, None


async def _wait_for_proof(url: str, event_id: str, chain: ChainReader, timeout_s: float = 90) -> dict[str, Any]:
    with trio.fail_after(timeout_s):
        while True:
            status, document = await _get(f"{url}/v1/events/{event_id}/proof")
            if status == 200 and chain.batch(int(document["batch"]["batch_id"])) is not None:
                return cast(dict[str, Any], document)
            await trio.sleep(0.5)


async def test_prepaid_session_is_committed_anchored_audited_and_settled(network: dict[str, Any]) -> None:
    nodes = network["nodes"]
    entry, auditor = nodes[1], nodes[2]
    async with connect_demo_charger(entry.ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        result = await charger.charge_session(DEMO_ID_TAG, connector=1, meter_start_wh=2_000, meter_stop_wh=12_000)
        stop_message_id = charger.sent[-1][0]
    assert result["boot"]["status"] == "Accepted"
    assert result["authorize"]["idTagInfo"]["status"] == "Accepted"
    assert result["start"]["idTagInfo"]["status"] == "Accepted" and result["start"]["transactionId"] >= 1

    status, found = await _get(f"{entry.http_url}/v1/chargers/{DEMO_CHARGER}/messages/{stop_message_id}")
    assert status == 200
    event_id = found["event_id"]
    chain = ChainReader(connect(network["anvil"].url), bytes.fromhex(network["deployment"].anchor[2:]))
    document = await _wait_for_proof(auditor.http_url, event_id, chain)

    load = block_loader(http_fetcher(auditor.http_url))
    checks = verify_event(document, bytes.fromhex(event_id[2:]), chain, load)
    assert checks and all(c.ok for c in checks), [c.line() for c in checks if not c.ok]

    # idTags leave the ingress node only as hashes: nothing an auditor reads carries the tag.
    published = [json.dumps(document), *(c.line() for c in checks)]
    _, auditor_status = await _get(f"{auditor.http_url}/v1/status")
    for height in range(1, auditor_status["committed_height"] + 1):
        _, block_document = await _get(f"{auditor.http_url}/v1/blocks/{height}")
        published.append(json.dumps(block_document))
    text = "\n".join(published).lower()
    assert DEMO_ID_TAG.lower() not in text and DEMO_ID_TAG.encode().hex() not in text

    # Tampering with the event, the proof, or the claimed batch is caught.
    tampered_event = copy.deepcopy(document)
    raw = bytearray.fromhex(tampered_event["event_bytes"].removeprefix("0x"))
    raw[-1] ^= 1
    tampered_event["event_bytes"] = "0x" + raw.hex()
    other_batch = copy.deepcopy(document)
    other_batch["batch"]["batch_id"] = int(document["batch"]["batch_id"]) + 1000
    bad_proof = copy.deepcopy(document)
    bad_proof["proof"] = ["0x" + "11" * 32] + list(document["proof"])
    bad_proof["directions"] = 0
    for tampered in (tampered_event, other_batch, bad_proof):
        assert not all(c.ok for c in verify_event(tampered, bytes.fromhex(event_id[2:]), chain, load))

    # The escrow pays the manager for 10 kWh at the device tariff and refunds the rest.
    client = network["seeded"]["driver_client"]
    with trio.fail_after(90):
        while True:
            session = client.session(network["seeded"]["session_id"], "latest")
            if session.status == SessionStatus.SETTLED:
                break
            await trio.sleep(0.5)
    assert session.energy_wh == 10_000
    assert session.settled_amount == min(10_000 * DEMO_PRICE_PER_KWH // 1000, DEMO_DEPOSIT)

    # Every node agrees on the chain of blocks it committed.
    heights = []
    for node in nodes:
        status, body = await _get(f"{node.http_url}/v1/status")
        assert status == 200
        heights.append(body["committed_height"])
    common = min(heights)
    hashes = set()
    for node in nodes:
        status, body = await _get(f"{node.http_url}/v1/blocks/{common}")
        assert status == 200
        hashes.add(json.dumps(body["block_hash"] if "block_hash" in body else body["block"], sort_keys=True))
    assert len(hashes) == 1


async def test_retry_at_another_node_gets_the_same_reply_once(network: dict[str, Any]) -> None:
    nodes = network["nodes"]
    payload = {"chargePointVendor": "DEVSEN", "chargePointModel": "retry-test"}
    message_id = f"retry-{time.time_ns()}"
    async with connect_demo_charger(nodes[0].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        first = await charger.call("BootNotification", payload, message_id=message_id)
    async with connect_demo_charger(nodes[3].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        second = await charger.call("BootNotification", payload, message_id=message_id)
    assert first == second and first["status"] == "Accepted"


async def test_unknown_charger_and_wrong_password_are_refused(network: dict[str, Any]) -> None:
    node = network["nodes"][0]
    for charger_id, password in ((DEMO_CHARGER, "wrong-password"), ("NOT-REGISTERED", DEMO_PASSWORD)):
        with pytest.raises(ConnectionRejected) as info:
            async with connect_demo_charger(node.ocpp_url, charger_id, password) as charger:
                await charger.call("Heartbeat", {})
        assert info.value.status_code in (401, 403)


async def test_network_keeps_committing_with_one_validator_killed(network: dict[str, Any]) -> None:
    nodes = network["nodes"]
    victim = nodes[3]
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=10)
    async with connect_demo_charger(nodes[0].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        with trio.fail_after(60):
            reply = await charger.call("Heartbeat", {})
    assert "currentTime" in reply
    # Restarted, it catches up from its WAL and its peers, and serves again.
    start_node_process(victim)
    await wait_until_serving([victim])
    status, alive = await _get(f"{nodes[0].http_url}/v1/status")
    with trio.fail_after(60):
        while True:
            _, body = await _get(f"{victim.http_url}/v1/status")
            if body["committed_height"] >= alive["committed_height"]:
                break
            await trio.sleep(0.5)
