"""End to end on a real local network: anvil, the contracts, 4 `devsen node` processes.

One network per module (it takes ~15 s to start). The tests drive it as chargers, drivers
and auditors would: a full prepaid charging session over OCPP, an audit of its events
against the chain, tampered proofs, a retry at another node, sessions stopped together that
settle in one settleBatch transaction, and a validator killed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import time
from typing import Any, cast

import pytest
import trio
from e2e_devnet import running_devnet
from hexbytes import HexBytes
from trio_websocket import ConnectionRejected

from anchoring.audit import ChainReader, block_loader, http_fetcher, verify_event
from anchoring.chain import ChainClient, TransactionSender, connect
from anchoring.chain.client import SessionStatus
from devsen.demo_charger import connect_demo_charger, iso_now
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
from devsen.ledger.chain import MAX_POWER_W
from devsen.wallet import create_device, open_prepaid_session

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


BATCH_SESSIONS = 4  # sessions stopped at once (one charger each: one OCPP call in flight per connection)


async def _charge_until_started(charger: Any, id_tag: str) -> int:
    await charger.boot(1)
    await charger.call("Authorize", {"idTag": id_tag})
    start = await charger.call("StartTransaction", {"connectorId": 1, "idTag": id_tag, "meterStart": 1_000,
                                                    "timestamp": iso_now()})
    assert start["idTagInfo"]["status"] == "Accepted", start
    return int(start["transactionId"])


async def _stop_and_time_settlement(charger: Any, transaction_id: int, meter_stop_wh: int, client: Any,
                                    session_id: bytes, out: dict[bytes, float]) -> None:
    """Stop the transaction; record the seconds from the stop until the escrow session is settled."""
    stopped_at = time.monotonic()
    await charger.call("StopTransaction", {"transactionId": transaction_id, "meterStop": meter_stop_wh,
                                           "timestamp": iso_now()})
    with trio.fail_after(120):
        while (await trio.to_thread.run_sync(client.session, session_id, "latest")).status != SessionStatus.SETTLED:
            await trio.sleep(0.2)
    out[session_id] = time.monotonic() - stopped_at


async def test_sessions_stopped_together_settle_in_one_settle_batch_transaction(network: dict[str, Any]) -> None:
    """A lone session settles in a settleBatch of one; BATCH_SESSIONS sessions stopped at the
    same time at different nodes are one quorum-signed settlement batch: ONE settleBatch
    transaction on anvil settles them all (counted from the Escrow's SessionSettled events)."""
    anvil, nodes = network["anvil"], network["nodes"]
    w3 = connect(anvil.url)
    manager = ChainClient(w3, network["deployment"], TransactionSender(w3, anvil.dev_keys[1]))
    driver = network["seeded"]["driver_client"]
    chargers = [(f"BATCH-CP-{i}", f"batch-charger-password-{i}", f"BATCH-TAG-{i}") for i in range(BATCH_SESSIONS)]
    for cbid, password, tag in chargers:
        await trio.to_thread.run_sync(lambda c=cbid, p=password: create_device(
            manager, c, p, connectors=1, price_per_kwh=DEMO_PRICE_PER_KWH, max_power_w=MAX_POWER_W))
        await trio.to_thread.run_sync(driver.register_id_tag, tag)
    deposit = 2 * 10**6
    first_block = w3.eth.block_number
    latencies: dict[bytes, float] = {}

    # A lone session: a batch of one.
    lone = await trio.to_thread.run_sync(lambda: open_prepaid_session(driver, chargers[0][0], 1, chargers[0][2], deposit))
    async with connect_demo_charger(nodes[0].ocpp_url, chargers[0][0], chargers[0][1]) as charger:
        tx_id = await _charge_until_started(charger, chargers[0][2])
        await _stop_and_time_settlement(charger, tx_id, 2_000, driver, lone, latencies)

    # BATCH_SESSIONS sessions, each at its own charger and node, stopped at the same moment.
    sessions = [await trio.to_thread.run_sync(lambda c=cbid, t=tag: open_prepaid_session(driver, c, 1, t, deposit))
                for cbid, _, tag in chargers]
    async with contextlib.AsyncExitStack() as stack:
        connected = [await stack.enter_async_context(connect_demo_charger(nodes[i % len(nodes)].ocpp_url, cbid, pw))
                     for i, (cbid, pw, _) in enumerate(chargers)]
        tx_ids = [await _charge_until_started(c, tag) for c, (_, _, tag) in zip(connected, chargers, strict=True)]
        async with trio.open_nursery() as nursery:
            for i, (charger, tx_id, session_id) in enumerate(zip(connected, tx_ids, sessions, strict=True)):
                nursery.start_soon(_stop_and_time_settlement, charger, tx_id, 1_000 + 1_000 * (i + 1), driver,
                                   session_id, latencies)
    for i, session_id in enumerate(sessions):
        session = driver.session(session_id, "latest")
        assert session.energy_wh == 1_000 * (i + 1)
        assert session.settled_amount == 1_000 * (i + 1) * DEMO_PRICE_PER_KWH // 1000

    escrow = driver.contracts["Escrow"]
    logs = escrow.events.SessionSettled().get_logs(from_block=first_block, to_block=w3.eth.block_number)
    by_tx: dict[bytes, set[bytes]] = {}
    for log in logs:
        by_tx.setdefault(bytes(log["transactionHash"]), set()).add(bytes(log["args"]["sessionId"]))
    batch_txs = [tx for tx, settled in by_tx.items() if settled & set(sessions)]
    # Stops committed in one settlement window (settle_every_blocks heights) are ONE transaction;
    # stops that straddle a window boundary are two. Either way fewer transactions than sessions.
    assert set().union(*(by_tx[tx] & set(sessions) for tx in batch_txs)) == set(sessions), by_tx
    assert len(batch_txs) < BATCH_SESSIONS and max(len(by_tx[tx]) for tx in batch_txs) >= 2, by_tx
    print(f"{BATCH_SESSIONS} sessions settled in {len(batch_txs)} settleBatch transaction(s)")
    lone_txs = [tx for tx, settled in by_tx.items() if lone in settled]
    assert len(lone_txs) == 1 and by_tx[lone_txs[0]] == {lone}
    settle_batch = escrow.get_function_by_name("settleBatch")
    for tx in (*batch_txs, *lone_txs):
        function, _ = escrow.decode_function_input(w3.eth.get_transaction(HexBytes(tx))["input"])
        assert function.fn_name == settle_batch.fn_name
    gas_batch = sum(w3.eth.get_transaction_receipt(HexBytes(tx))["gasUsed"] for tx in batch_txs)
    gas_lone = w3.eth.get_transaction_receipt(HexBytes(lone_txs[0]))["gasUsed"]
    figures = {
        "what": "devnet (4 devsen node processes, anvil 1 s blocks, 3-of-4 quorum): sessions settled by the "
                "network's own settleBatch transactions (tests/e2e/test_e2e_network.py)",
        "settle_every_blocks": nodes[0].config.anchoring.settle_every_blocks,
        "gas_per_session": {"1": gas_lone, str(BATCH_SESSIONS): gas_batch // BATCH_SESSIONS},
        "settle_batch_transactions": {"1": 1, str(BATCH_SESSIONS): len(batch_txs)},
        "stop_to_settled_s": {"lone": round(latencies[lone], 2),
                              "batch_max": round(max(latencies[s] for s in sessions), 2),
                              "batch_min": round(min(latencies[s] for s in sessions), 2)},
    }
    print(json.dumps(figures, indent=2))
    out = os.environ.get("DEVSEN_SETTLE_FIGURES")
    if out:  # bench/results/settle_devnet.json is written this way
        await trio.Path(out).write_text(json.dumps(figures, indent=2) + "\n")


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
