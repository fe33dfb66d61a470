"""The public read API, OpenAPI and /metrics on real `devsen node` processes (anvil + 4 nodes):
two nodes at the same height answer byte-identically; hostile parameters get 400/404."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import trio
from e2e_devnet import running_devnet

from devsen.demo_charger import connect_demo_charger
from devsen.devnet import DEMO_CHARGER, DEMO_PASSWORD
from devsen.http_api import http_get

NODES = 4
ROUTES = ["/v1/chargers", "/v1/chargers?status=Available", f"/v1/chargers/{DEMO_CHARGER}",
          f"/v1/chargers/{DEMO_CHARGER}/sessions", f"/v1/chargers/{DEMO_CHARGER}/anomalies", "/v1/sessions",
          "/v1/validators", "/v1/blocks?limit=5", "/v1/anchors"]


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
        started = time.perf_counter()
        status, body = await http_get(nodes[3].http_url + route)
        assert status == expected and "error" in json.loads(body), (route, status, body)
        assert time.perf_counter() - started < 2.0
