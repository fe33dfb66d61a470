"""The public read API, OpenAPI and /metrics on real `devsen node` processes (anvil + 4 nodes):
two nodes at the same height answer byte-identically; hostile parameters get 400/404."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from e2e_devnet import full_node_beside, running_devnet

from devsen.app import SNAPSHOT_EVERY_BLOCKS
from devsen.demo_charger import connect_demo_charger
from devsen.devnet import (
    DEMO_CHARGER,
    DEMO_PASSWORD,
    DevnetNode,
    start_node_process,
    stop_process,
    wait_until_serving,
)
from devsen.http_api import http_get, http_post_json

NODES = 4
ROUTES = ["/v1/chargers", "/v1/chargers?status=Available", f"/v1/chargers/{DEMO_CHARGER}",
          f"/v1/chargers/{DEMO_CHARGER}/sessions", f"/v1/chargers/{DEMO_CHARGER}/anomalies", "/v1/sessions",
          "/v1/validators", "/v1/blocks?limit=5", "/v1/anchors"]
# What a node joined by state sync answers like the others: everything read from the ledger
# and recent blocks; the anchor history before the snapshot (/v1/anchors) needs `--archive`.
# Its block list starts at the snapshot's base: the last two blocks are compared (the test
# runs until the joiner is at least two blocks above its snapshot).
SYNCED_ROUTES = [r.replace("limit=5", "limit=2") for r in ROUTES if r != "/v1/anchors"]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_devnet(tmp_path_factory.mktemp("devnet-api"), NODES) as devnet:
        yield devnet["nodes"]


async def _same_height_pair(url_a: str, url_b: str, route: str) -> tuple[bytes, bytes]:
    """The route's answers from two nodes read at the same committed height."""
    with trio.fail_after(60):
        while True:
            (status_a, a), (status_b, b) = await http_get(url_a + route), await http_get(url_b + route)
            assert (status_a, status_b) == (200, 200), (route, a, b)
            if json.loads(a)["height"] == json.loads(b)["height"]:
                return a, b
            await trio.sleep(0.2)


async def test_read_api_is_identical_across_nodes_and_hostile_input_is_refused(network: Any) -> None:
    nodes = network
    async with connect_demo_charger(nodes[0].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        await charger.call("BootNotification", {"chargePointVendor": "DEVSEN", "chargePointModel": "api"})
        await charger.call("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available"})
        await charger.call("Heartbeat", {})
    for route in ROUTES:
        a, b = await _same_height_pair(nodes[0].http_url, nodes[2].http_url, route)
        assert a == b, (route, a, b)
    charger = json.loads((await http_get(nodes[1].http_url + ROUTES[2]))[1])["charger"]
    assert charger["registered"] and charger["location"]["text"] == "devnet" and charger["tariff"]["price_per_kwh"]
    assert [c["status"] for c in charger["connectors"] if c["connector"] == "1"] == ["Available"]
    validators = json.loads((await http_get(nodes[1].http_url + "/v1/validators"))[1])
    assert len(validators["items"]) == NODES and all(v["peer_id"] and v["endpoint"] for v in validators["items"])

    status, body = await http_get(nodes[1].http_url + "/openapi.json")
    paths = json.loads(body)["paths"]
    assert status == 200 and {"/v1/status", "/v1/blocks/{height}", "/v1/events/{event_id}/proof",
                              "/v1/chargers", "/v1/chargers/{charger_id}/sessions", "/metrics"} <= set(paths)

    status, body = await http_get(nodes[1].http_url + "/metrics")
    text = body.decode()
    assert status == 200 and "devsen_height " in text and "devsen_blocks_committed_total" in text
    assert "devsen_chain_rpc_seconds_count" in text and "devsen_commit_latency_seconds_bucket" in text

    for route, expected in (("/v1/chargers?limit=100000", 400), ("/v1/chargers?near=95,0&radius_m=1", 400),
                            ("/v1/chargers/NOPE", 404), ("/v1/sessions/0x" + "00" * 32, 404),
                            ("/v1/chargers?status=%27%3B--", 400)):
        with trio.fail_after(20):  # refused, not hung (speed is the benchmarks' business, not a timed test)
            status, body = await http_get(nodes[3].http_url + route)
        assert status == expected and "error" in json.loads(body), (route, status, body)


def _wipe_keeping_keys(data_dir: Path) -> None:
    for path in data_dir.iterdir():
        if path.name not in ("keys", "node.toml", "node.log"):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


async def _height(url: str) -> int:
    status, body = await http_get(url + "/v1/status")
    assert status == 200, body
    height: int = json.loads(body)["committed_height"]
    return height


async def _past_a_snapshot(node: Any) -> None:
    """Heartbeats through `node` until the network holds a snapshot (at SNAPSHOT_EVERY_BLOCKS)
    and the block after it, which certifies it: what a state-syncing node needs."""
    async with connect_demo_charger(node.ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        await charger.call("BootNotification", {"chargePointVendor": "DEVSEN", "chargePointModel": "api"})
        with trio.fail_after(240):
            while await _height(node.http_url) < SNAPSHOT_EVERY_BLOCKS + 2:
                await charger.call("Heartbeat", {})


async def test_a_node_that_lost_its_data_rejoins_by_state_sync(network: Any) -> None:
    """Node 4's data is wiped (keys kept); restarted with `p2p.state_sync`, it restores the
    network's snapshot (certified by block S+1 against the ValidatorSet on anvil) instead of
    replaying from genesis, catches up by block sync and answers the ledger's read routes
    byte-identically. (A joining node here is a validator: full nodes are not built yet.)"""
    nodes = network
    await _past_a_snapshot(nodes[0])
    joiner = nodes[3]
    stop_process(joiner.process)
    _wipe_keeping_keys(Path(joiner.config.node.data_dir))
    joiner.config = dataclasses.replace(joiner.config, p2p=dataclasses.replace(
        joiner.config.p2p, state_sync=True,
        bootstrap=[f"{n.config.p2p.listen}/p2p/{n.keys.peer_id.to_base58()}" for n in nodes[:3]]))
    start_node_process(joiner)
    await wait_until_serving([joiner])
    log_text = joiner.log_path.read_text()
    assert "joined by state sync at height" in log_text, log_text[-3000:]
    synced_at = int(log_text.split("joined by state sync at height ")[-1].split()[0])
    assert synced_at >= SNAPSHOT_EVERY_BLOCKS and synced_at % SNAPSHOT_EVERY_BLOCKS == 0
    status, _ = await http_get(joiner.http_url + "/v1/blocks/1")
    assert status == 404  # nothing below the snapshot was fetched or replayed
    target = await _height(nodes[0].http_url)  # the network's height now: the joiner must reach it
    with trio.move_on_after(90):
        while await _height(joiner.http_url) < target:
            await trio.sleep(0.5)
    reached = await _height(joiner.http_url)
    assert reached >= target, (reached, target, [line for line in joiner.log_path.read_text().splitlines()
                                                 if "WARNING" in line or "ERROR" in line or "sync" in line][-40:])
    async with connect_demo_charger(joiner.ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        await charger.call("Heartbeat", {})  # it takes part: an event through the joined node commits
    for route in SYNCED_ROUTES:
        a, b = await _same_height_pair(nodes[0].http_url, joiner.http_url, route)
        assert a == b, (route, a, b)
    assert await _height(joiner.http_url) >= synced_at + 2


def _full_node(validators: list[Any]) -> DevnetNode:
    """A `role = "full"` node beside the devnet (no validator key file), joining by state sync."""
    return full_node_beside(validators)


async def _status(url: str) -> Any:
    status, body = await http_get(url + "/v1/status")
    assert status == 200, body
    return json.loads(body)


async def test_a_full_node_follows_the_network_serves_reads_and_never_signs(network: Any) -> None:
    """A `role = "full"` node (no validator key) joins by state sync, follows by verified block
    sync to the head and answers the read routes byte-identically to a validator. Hostile side:
    it dials the validators' consensus links like any node would, and every validator refuses
    the stream (counted `consensus_in/not_validator`), so no vote of its can reach a core; it
    opens no OCPP port; the validators keep their links to each other."""
    nodes = network
    await _past_a_snapshot(nodes[0])
    full = _full_node(nodes)
    assert not (Path(full.config.keys.dir) / "validator_secp256k1.key").exists()
    start_node_process(full)
    try:
        await wait_until_serving([full])
        started = time.perf_counter()
        with trio.move_on_after(90):
            while await _height(full.http_url) < await _height(nodes[0].http_url):
                await trio.sleep(0.5)
        heights = (await _height(full.http_url), await _height(nodes[0].http_url))
        assert heights[0] >= heights[1] > 0, (heights, full.log_path.read_text()[-3000:])
        print(f"full node reached the head (height {heights[0]}) {time.perf_counter() - started:.1f} s after serving")
        async with connect_demo_charger(nodes[1].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
            await charger.call("Heartbeat", {})  # a new block the full node must follow
        for route in SYNCED_ROUTES:
            a, b = await _same_height_pair(nodes[1].http_url, full.http_url, route)
            assert a == b, (route, a, b)

        mine = await _status(full.http_url)
        assert mine["role"] == "full" and mine["validator"] is None
        assert mine["own_attestations_pending"] == 0 and mine["submitter"]["pending_count"] == 0
        assert mine["peer_id"] == full.keys.peer_id.to_base58()
        theirs = [await _status(n.http_url) for n in nodes]
        assert all(s["role"] == "validator" and s["p2p"]["linked_validators"] == NODES - 1 for s in theirs)
        assert all(mine["peer_id"] not in json.dumps(s["validators_seen"]) for s in theirs)
        refused = sum(s["p2p"]["drops"].get("consensus_in/not_validator", 0) for s in theirs)
        served = sum(s["p2p"]["sync_served_outsiders"] for s in theirs)
        assert refused > 0 and served > 0, ([s["p2p"] for s in theirs])
        validators = json.loads((await http_get(full.http_url + "/v1/validators"))[1])["items"]
        assert mine["peer_id"] not in {v["peer_id"] for v in validators}
        with pytest.raises(OSError):  # no OCPP port: chargers connect to validators
            await trio.open_tcp_stream("127.0.0.1", full.config.ocpp.port)
        assert "not in the on-chain ValidatorSet" not in full.log_path.read_text()
        for write in (f"/v1/chargers/{DEMO_CHARGER}/commands", "/v1/sessions/0x" + "00" * 32 + "/vouchers"):
            status, body = await http_post_json(full.http_url + write, "{}")
            assert status == 503 and "full (non-validator) node" in json.dumps(body), (write, status, body)
    finally:
        stop_process(full.process)
