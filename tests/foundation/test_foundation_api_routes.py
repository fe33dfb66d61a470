"""The public read API (devsen/api_routes.py) on a real ledger, in process and over a socket:
every route, pagination, OpenAPI, byte-identical answers from two nodes' states, hostile
parameters, and OCPP replies undelayed by 200 idle HTTP connections."""

from __future__ import annotations

import base64
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ledger"))

from ledger_world import CHARGER, CHARGER_201, ESCROW_2, T0_MS, World, ev, iso, start16  # noqa: E402

from anchoring.attestations import AnchorBatch  # noqa: E402
from anchoring.chain.client import DeviceRecord, ValidatorInfo  # noqa: E402
from consensus.types import Block, CommitCertificate, CommittedBlock  # noqa: E402
from devsen.api_routes import ReadSources, distance_m, parse_location, read_routes  # noqa: E402
from devsen.http_api import Router, asgi_request, http_get, serve_http  # noqa: E402
from devsen.metrics import Levels, NodeMetrics  # noqa: E402
from ocpp_adapter.auth import ChargerCredentials, InMemoryChargerRegistry  # noqa: E402
from ocpp_adapter.config import OcppServerConfig  # noqa: E402
from ocpp_adapter.memory_ingest import MemoryIngest  # noqa: E402
from ocpp_adapter.server import ChargerConnections, serve_ocpp  # noqa: E402

VALIDATORS = (b"\x0a" * 20, b"\x0b" * 20)
LOCATIONS = {CHARGER: "52.52,13.405;connectors=CCS2+Type2;name=Depot", CHARGER_201: "48.137,11.575;connectors=Type2"}
POWER = {CHARGER: 150_000, CHARGER_201: 22_000}


def blocks_of_events() -> list[list[Any]]:
    """Two chargers booted, CP-1 connector 1 Available, a session open on CP-1 connector 2, an anomaly."""
    boot16 = {"chargePointVendor": "ACME", "chargePointModel": "Fast", "firmwareVersion": "1.2.3"}
    return [
        [ev("BootNotification", boot16)],
        [ev("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available"}),
         ev("StatusNotification", {"connectorId": 2, "errorCode": "NoError", "status": "Preparing"})],
        [ev("Heartbeat", {})],
        [ev("BootNotification", {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}},
            version="2.0.1")],
        [start16(connector=2, at_ms=T0_MS + 4_000)],
        [ev("StatusNotification", {"connectorId": 9, "errorCode": "NoError", "status": "Available",
                                   "timestamp": iso(T0_MS)})],  # an anomaly: no connector 9
    ]


def build_world(blocks: list[list[Any]] | None = None) -> World:
    world = World()
    for events in blocks or blocks_of_events():
        world.block(*events)
    return world


def chain_device(charger_id: str, block: int) -> DeviceRecord | None:
    if charger_id not in LOCATIONS:
        return None
    return DeviceRecord(b"\x11" * 32, charger_id, "0x" + "aa" * 20, LOCATIONS[charger_id], 2, 2_000, 5,
                        b"", b"", b"", True, POWER[charger_id])


def committed_block(height: int) -> CommittedBlock | None:
    """Block `height` (1..20), with a certificate of one (format-valid) signature."""
    if not 1 <= height <= 20:
        return None
    block = Block(height, T0_MS + height * 1_000, VALIDATORS[height % 2], b"\x00" * 32, b"\x01" * 32, (b"p",) * height, b"")
    return CommittedBlock(block, CommitCertificate(height, 0, block.hash, (b"\x01" * 64 + b"\x1b",)))


def sources_of(world: World) -> ReadSources:
    batches = [AnchorBatch(0, b"\x01" * 32, 1, 3, 4), AnchorBatch(1, b"\x02" * 32, 4, 5, 2)]
    return ReadSources(
        ledger=world.ledger, eth_block=lambda: 100 + world.ledger.height, block=committed_block,
        last_batch=lambda: batches[-1], batch=lambda i: batches[i] if 0 <= i < len(batches) else None,
        validators=lambda: (3, VALIDATORS), chain_device=chain_device,
        chain_validators=lambda block: [ValidatorInfo("0x" + v.hex(), b"", f"ws://10.0.0.{i}/ocpp")
                                        for i, v in enumerate(VALIDATORS)],
    )


def router_of(world: World) -> Router:
    router = Router()
    router.include(read_routes(sources_of(world)))
    return router


ROUTES = ["/v1/chargers", "/v1/chargers?status=Available", "/v1/chargers?near=52.5,13.4&radius_m=10000",
          "/v1/chargers?connector_type=Type2&limit=1&offset=1", "/v1/chargers?min_power_w=50000",
          f"/v1/chargers/{CHARGER}", f"/v1/chargers/{CHARGER}/sessions", f"/v1/chargers/{CHARGER}/anomalies",
          "/v1/sessions", "/v1/sessions?state=open", f"/v1/sessions/0x{ESCROW_2.hex()}", "/v1/validators",
          "/v1/blocks", "/v1/anchors?limit=1"]


async def test_every_read_route_answers_with_its_height() -> None:
    world = build_world()
    router = router_of(world)
    answers = {}
    for route in ROUTES:
        status, body = await router.dispatch("GET", route)
        assert status == 200, (route, body)
        assert body["height"] == world.ledger.height
        answers[route] = body
    items = answers["/v1/chargers"]["items"]
    assert [c["charger_id"] for c in items] == [CHARGER, CHARGER_201]
    cp1 = items[0]
    assert cp1["location"]["lat"] == 52.52 and cp1["tariff"] == {"price_per_kwh": "2000", "per_minute_fee": "5"}
    assert cp1["last_heartbeat_ms"] > 0 and cp1["firmware"]["version"] == "1.2.3"
    assert [c["connector"] for c in cp1["connectors"] if c["status"] == "Available"] == ["1"]
    assert [c["charger_id"] for c in answers["/v1/chargers?status=Available"]["items"]] == [CHARGER]
    near = answers["/v1/chargers?near=52.5,13.4&radius_m=10000"]["items"]
    assert [c["charger_id"] for c in near] == [CHARGER] and 0 < near[0]["distance_m"] < 10_000
    typed = answers["/v1/chargers?connector_type=Type2&limit=1&offset=1"]
    assert typed["total"] == 2 and [c["charger_id"] for c in typed["items"]] == [CHARGER_201]
    assert [c["charger_id"] for c in answers["/v1/chargers?min_power_w=50000"]["items"]] == [CHARGER]
    session = answers[f"/v1/sessions/0x{ESCROW_2.hex()}"]["session"]
    assert session["charger_id"] == CHARGER and session["connector_id"] == 2
    assert session["id_tag_hash"].startswith("0x") and "TAG-OK" not in json.dumps(answers)  # idTags only as hashes
    assert answers[f"/v1/chargers/{CHARGER}"]["charger"]["open_sessions"] == 1
    assert answers[f"/v1/chargers/{CHARGER}/anomalies"]["total"] >= 1
    validators = answers["/v1/validators"]
    assert validators["epoch"] == 3 and [v["endpoint"] for v in validators["items"]] == \
        ["ws://10.0.0.0/ocpp", "ws://10.0.0.1/ocpp"]
    assert [b["batch_id"] for b in answers["/v1/anchors?limit=1"]["items"]] == [1]
    assert [(b["height"], b["payloads"]) for b in answers["/v1/blocks"]["items"]] == [(h, h) for h in range(6, 0, -1)]
    status, older = await router.dispatch("GET", "/v1/blocks?before=3&limit=1")
    assert status == 200 and [b["height"] for b in older["items"]] == [2]


async def test_two_nodes_at_the_same_height_answer_byte_identically() -> None:
    blocks = blocks_of_events()  # the same committed blocks, applied by two nodes
    one, two = router_of(build_world(blocks)).app(), router_of(build_world(blocks)).app()
    for route in ROUTES:
        first, second = await asgi_request(one, "GET", route), await asgi_request(two, "GET", route)
        assert first == second, route
    assert first[1].startswith(b'{"height":') or b'"height":' in first[1]


def test_location_parsing_and_distance_are_total() -> None:
    assert parse_location("52.52,13.405;connectors=CCS2")["connector_types"] == ["CCS2"]
    for junk in ("", "devnet", "91,0", "0,181", "1e308,0", ";;;", "nan,nan", "\x00" * 300):
        location = parse_location(junk)
        assert location["text"] == junk and (location["lat"] is None or junk == "")
    assert round(distance_m(52.52, 13.405, 48.137, 11.575)) in range(500_000, 510_000)


HOSTILE = {
    "/v1/chargers?limit=1000000": ("400", "limit"),
    "/v1/chargers?limit=-1": ("400", "limit"),
    "/v1/chargers?offset=99999999999999999999": ("400", "offset"),
    "/v1/chargers?near=91,0&radius_m=5": ("400", "near"),
    "/v1/chargers?near=nan,nan&radius_m=5": ("400", "near"),
    "/v1/chargers?near=1,2,3&radius_m=5": ("400", "near"),
    "/v1/chargers?near=52,13": ("400", "radius_m"),
    "/v1/chargers?near=52,13&radius_m=1e30": ("400", "radius_m"),
    "/v1/chargers?status=Available'%20OR%201=1--": ("400", "status"),
    "/v1/chargers?connector_type=%3Cscript%3E": ("400", "connector_type"),
    "/v1/sessions?state=open;DROP%20TABLE": ("400", "state"),
    "/v1/chargers/%27%20OR%20%271%27=%271": ("404", "no charger"),
    "/v1/chargers/" + "A" * 65: ("400", "charger_id"),
    "/v1/chargers/UNKNOWN/sessions": ("404", "no charger"),
    "/v1/sessions/0x" + "ff" * 32: ("404", "no escrow session"),
    "/v1/sessions/0xnothex": ("400", "escrow_session_id"),
    "/v1/blocks?before=0": ("400", "before"),
    "/v1/nope": ("404", "no route"),
}


async def test_hostile_parameters_get_400_or_404_naming_the_problem() -> None:
    router = router_of(build_world())
    for route, (status, word) in HOSTILE.items():
        started = time.perf_counter()
        got, body = await router.dispatch("GET", route)
        assert (str(got), word in body["error"]) == (status, True), (route, got, body)
        assert time.perf_counter() - started < 0.5, route
    assert (await router.dispatch("POST", "/v1/chargers"))[0] == 405


async def test_openapi_document_lists_every_route_with_its_parameters() -> None:
    router = router_of(build_world())

    async def legacy(params: dict[str, str]) -> tuple[int, Any]:
        """A plain handler."""
        return 200, params

    router.get("/v1/things/{thing_id}", legacy)
    status, document = await router.dispatch("GET", "/openapi.json")
    assert status == 200 and document["openapi"].startswith("3.")
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert router.declared == documented and ("GET", "/v1/chargers/{charger_id}/sessions") in documented
    names = {p["name"] for p in document["paths"]["/v1/chargers"]["get"]["parameters"]}
    assert {"near", "radius_m", "status", "connector_type", "min_power_w", "limit", "offset"} <= names
    assert document["paths"]["/v1/things/{thing_id}"]["get"]["parameters"][0]["name"] == "thing_id"
    assert await router.dispatch("GET", "/v1/things/x") == (200, {"thing_id": "x"})


async def test_a_slow_chain_answers_503_within_the_bound_and_the_loop_stays_free() -> None:
    world = build_world()
    sources = sources_of(world)

    def slow(charger_id: str, block: int) -> DeviceRecord | None:
        time.sleep(30)
        return None

    sources.chain_device = slow
    router = Router()
    router.include(read_routes(sources))
    import devsen.api_routes as api_routes

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.05)
            ticks += 1

    bound, api_routes.CHAIN_READ_TIMEOUT_S = api_routes.CHAIN_READ_TIMEOUT_S, 0.5
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            started = time.perf_counter()
            status, body = await router.dispatch("GET", f"/v1/chargers/{CHARGER}")
            elapsed = time.perf_counter() - started
            nursery.cancel_scope.cancel()
    finally:
        api_routes.CHAIN_READ_TIMEOUT_S = bound
    assert status == 503 and "chain RPC" in body["error"] and elapsed < 2.0
    assert ticks >= 5  # the event loop kept running while the chain read waited


def dashboard_series() -> set[str]:
    """The metric names the Grafana dashboard (deploy/grafana/devsen.json) queries."""
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "deploy/grafana/devsen.json").read_text())
    return {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"devsen_[a-z_]+", target["expr"])}


async def test_metrics_exposition_counts_blocks_and_levels() -> None:
    metrics = NodeMetrics(Levels(height=lambda: 7, mempool=lambda: 3, chargers=lambda: 2, peers=lambda: 1,
                                 pending=lambda: {"anchors": 1, "settlements": 0},
                                 callerrors=lambda: {"FormationViolation": 4}))

    class Block:
        payloads = (b"a", b"b")
        timestamp_ms = 1_000

    metrics.on_finalized(Block(), None, now_ms=1_250)
    rpc = metrics.timed_rpc(lambda operation: operation())
    assert rpc(lambda: 5) == 5
    with pytest.raises(ZeroDivisionError):
        rpc(lambda: 1 // 0)
    text = metrics.render().decode()
    for line in ("devsen_height 7.0", "devsen_mempool_payloads 3.0", "devsen_chargers_connected 2.0",
                 "devsen_peers_connected 1.0", 'devsen_pending{kind="anchors"} 1.0',
                 'devsen_ocpp_callerrors_total{code="FormationViolation"} 4.0', "devsen_blocks_committed_total 1.0",
                 "devsen_payloads_committed_total 2.0", 'devsen_commit_latency_seconds_bucket{le="0.25"} 1.0',
                 "devsen_chain_rpc_seconds_count 2.0", 'devsen_chain_rpc_errors_total{error="ZeroDivisionError"} 1.0'):
        assert line in text, line
    used = dashboard_series()
    assert used and all(name in text for name in used), used - {n for n in used if n in text}


async def _ocpp_round_trips(port: int, rounds: int) -> list[float]:
    token = base64.b64encode(b"CP000:pw").decode()
    latencies = []
    async with open_websocket_url(f"ws://127.0.0.1:{port}/ocpp/CP000", subprotocols=["ocpp1.6"],
                                  extra_headers=[(b"Authorization", f"Basic {token}".encode())],
                                  connect_timeout=5) as ws:
        for n in range(rounds):
            started = time.perf_counter()
            await ws.send_message(json.dumps([2, f"hb{n}", "Heartbeat", {}]))
            with trio.fail_after(5):
                reply = json.loads(await ws.get_message())
            latencies.append(time.perf_counter() - started)
            assert reply[:2] == [3, f"hb{n}"]
    return latencies


async def _raw_exchange(port: int, request: bytes) -> bytes:
    """Send `request` (the server may hang up part way) and read whatever comes back."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    reply = b""
    try:
        with trio.fail_after(5):
            await stream.send_all(request)
            while chunk := await stream.receive_some(4096):
                reply += chunk
    except trio.BrokenResourceError:
        pass  # refused while still sending
    await stream.aclose()
    return reply


async def test_idle_and_oversize_http_clients_do_not_delay_ocpp_replies() -> None:
    router = router_of(build_world())
    registry = InMemoryChargerRegistry({"CP000": ChargerCredentials.from_password("pw")})
    config = OcppServerConfig(host="127.0.0.1", port=0, node_name="t", ping_interval=None)
    async with trio.open_nursery() as nursery:
        http_port = await nursery.start(serve_http, router, "127.0.0.1", 0)
        ocpp_port = await nursery.start(lambda task_status: serve_ocpp(
            config, MemoryIngest(id_tags=[], heartbeat_interval=60), registry,
            connections=ChargerConnections(), task_status=task_status))
        baseline = sorted(await _ocpp_round_trips(ocpp_port, 30))
        idle = []
        for _ in range(200):
            stream = await trio.open_tcp_stream("127.0.0.1", http_port)
            await stream.send_all(b"GET /v1/chargers HTTP/1.1\r\nHost: x\r\n")  # never finished
            idle.append(stream)
        loaded = sorted(await _ocpp_round_trips(ocpp_port, 30))
        status, body = await http_get(f"http://127.0.0.1:{http_port}/v1/chargers")  # still served
        assert status == 200 and json.loads(body)["total"] == 2
        started = time.perf_counter()
        reply = await _raw_exchange(http_port, b"GET /v1/chargers?near=" + b"1" * 1_000_000 + b" HTTP/1.1\r\n\r\n")
        oversize_s = time.perf_counter() - started
        for stream in idle:
            await stream.aclose()
        nursery.cancel_scope.cancel()
    p50, p95 = baseline[15], baseline[28]
    l50, l95 = loaded[15], loaded[28]
    print(f"OCPP heartbeat round trip p50/p95: idle {p50 * 1000:.1f}/{p95 * 1000:.1f} ms, "
          f"with 200 idle HTTP connections {l50 * 1000:.1f}/{l95 * 1000:.1f} ms; 1 MB query -> {reply[:12]!r} in "
          f"{oversize_s * 1000:.0f} ms")
    assert (reply == b"" or reply.startswith((b"HTTP/1.1 400", b"HTTP/1.1 413", b"HTTP/1.1 431"))) and oversize_s < 3.0
    assert l95 < max(0.25, 5 * p95)


def test_a_settled_escrow_session_is_read_from_chain_with_its_settlement_transaction() -> None:
    from anchoring.attestations import Settlement, SettlementBatch, attest
    from anchoring.chain import connect
    from anchoring.testkit import KEYS, Net
    from devsen.api_routes import chain_session_reader

    net = Net(connect("tester"))
    session_id = net.open_escrow_session(5_000)
    client = net.client(KEYS[0])
    read = chain_session_reader(client, net.deployment.deploy_block)
    opened = read(session_id, client.block_number())
    assert opened is not None and opened["state"] == "open" and opened["settlement_tx"] is None
    subject = SettlementBatch.of(0, [Settlement(session_id, 2_000, 2_000)])
    domain = net.deployment.domain("Escrow")
    signatures = [attest(subject, key, domain).signature for key in KEYS]  # KEYS are sorted by address
    receipt = client.settle_batch([(session_id, 2_000, 2_000)], signatures)
    net.mine(3)
    settled = read(session_id, client.block_number())
    assert settled is not None and settled["state"] == "settled" and settled["amount"] == "2000"
    assert settled["energy_wh"] == 2_000 and settled["settlement_tx"] == "0x" + receipt.tx_hash.hex()
    assert read(session_id, receipt.block_number - 1)["settlement_tx"] is None  # type: ignore[index]
    assert read(b"\x42" * 32, client.block_number()) is None
