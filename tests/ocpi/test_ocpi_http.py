"""The OCPI interface over real HTTP (Hypercorn on loopback) with a hostile client: no token,
wrong token, a used registration token, bad paging, huge limits and bodies, injection strings.
Every answer is an OCPI envelope; every object validates against the OCPI 2.2.1 definitions."""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from ocpi_world import CHARGER, FakeLedger, world

from devsen.http_api import Router, serve_http
from devsen.ocpi.client import OcpiAnswer, ocpi_request
from devsen.ocpi.mapping import ocpi_time
from devsen.ocpi.routes import OcpiApi, ocpi_routes
from devsen.ocpi.schemas import validator

MSP: dict[str, Any] = {"token": "msp-token-b-0123456789", "url": "http://127.0.0.1:1/ocpi/versions",
       "roles": [{"role": "EMSP", "country_code": "NL", "party_id": "MSP", "business_details": {"name": "An MSP"}}]}
V = "/ocpi/2.2.1"


class Client:
    """The OCPI client (devsen/ocpi/client.py) on the test server; every answer is an OCPI envelope."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def request(self, method: str, target: str, token: str | None = None, body: bytes = b"",
                      headers: dict[str, str] | None = None, raw_auth: str | None = None) -> OcpiAnswer:
        answer = await ocpi_request(f"http://127.0.0.1:{self.port}{target}", method, token, body,
                                    headers=headers, authorization=raw_auth, timeout=10)
        validator("Response")(answer.json)
        return answer


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Client, OcpiApi, FakeLedger]]:
    ledger, _, api = world(tmp_path)
    router = Router()
    router.include(ocpi_routes(api))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, router, "127.0.0.1", 0)
        yield Client(port), api, ledger
        nursery.cancel_scope.cancel()


async def _register(client: Client, api: OcpiApi) -> str:
    token_a = api.store.create_registration_token()
    answer = await client.request("POST", f"{V}/credentials", token_a, json.dumps(MSP).encode())
    assert answer.status == 200 and answer.code == 1000, answer.json
    validator("Credentials")(answer.data)
    assert answer.data["roles"][0]["role"] == "CPO" and answer.data["url"].endswith("/ocpi/versions")
    return str(answer.data["token"])


async def test_no_token_wrong_token_and_registration_token_limits(served: Any) -> None:
    client, api, _ = served
    for auth in (None, "Token " + base64.b64encode(b"not-a-known-token").decode(), "Bearer x", "Token", "Token \x7f",
                 "Token " + "A" * 600):
        answer = await client.request("GET", "/ocpi/versions", raw_auth=auth)
        assert (answer.status, answer.code) == (401, 2000), (auth, answer.json)
        assert "data" not in answer.json
    token_a = api.store.create_registration_token()
    versions = await client.request("GET", "/ocpi/versions", token_a)
    assert versions.status == 200 and versions.code == 1000
    for item in versions.data:
        validator("Version")(item)
    details = await client.request("GET", V, token_a)
    validator("VersionDetails")(details.data)
    assert {(e["identifier"], e["role"]) for e in details.data["endpoints"]} >= {
        ("credentials", "SENDER"), ("locations", "SENDER"), ("tariffs", "SENDER"), ("sessions", "SENDER"),
        ("cdrs", "SENDER")}
    for module in ("locations", "tariffs", "cdrs"):
        answer = await client.request("GET", f"{V}/{module}", token_a)
        assert (answer.status, answer.code) == (401, 2000)  # token A reaches versions and credentials only
    put = await client.request("PUT", f"{V}/credentials", token_a, json.dumps(MSP).encode())
    assert (put.status, put.code) == (405, 2000)


async def test_credentials_handshake_update_and_unregister(served: Any) -> None:
    client, api, _ = served
    token_a = api.store.create_registration_token()
    for bad, name in ((b"not json", "body"), (b"[]", "body"), (json.dumps({**MSP, "token": ""}).encode(), "token"),
                      (json.dumps({**MSP, "url": "javascript:alert(1)"}).encode(), "url"),
                      (json.dumps({**MSP, "roles": [{**MSP["roles"][0], "party_id": "'; DROP TABLE"}]}).encode(),
                       "roles[0].party_id"),
                      (json.dumps({**MSP, "roles": [{**MSP["roles"][0], "role": "ROOT"}]}).encode(), "roles[0].role")):
        answer = await client.request("POST", f"{V}/credentials", token_a, bad)
        assert (answer.status, answer.code) == (400, 2001) and f"'{name}'" in answer.json["status_message"], bad
    huge = await client.request("POST", f"{V}/credentials", token_a, b"{" + b" " * 40_000 + b"}")
    assert huge.status == 413
    ok = await client.request("POST", f"{V}/credentials", token_a, json.dumps(MSP).encode())
    assert ok.status == 200
    token_c = ok.data["token"]
    assert token_c != token_a and api.store.party("NL*MSP") == {**MSP, "roles": MSP["roles"]}
    again = await client.request("POST", f"{V}/credentials", token_a, json.dumps(MSP).encode())
    assert (again.status, again.code) == (401, 2000)  # token A was used up
    twice = await client.request("POST", f"{V}/credentials", token_c, json.dumps(MSP).encode())
    assert (twice.status, twice.code) == (405, 2000)
    mine = await client.request("GET", f"{V}/credentials", token_c)
    assert mine.data["token"] == token_c
    raw = await client.request("GET", f"{V}/credentials", raw_auth=f"Token {token_c}")  # OCPI 2.1.1 style
    assert raw.status == 200
    updated = await client.request("PUT", f"{V}/credentials", token_c, json.dumps(MSP).encode())
    new_token = updated.data["token"]
    assert new_token != token_c and (await client.request("GET", f"{V}/locations", token_c)).status == 401
    gone = await client.request("DELETE", f"{V}/credentials", new_token)
    assert gone.status == 200 and gone.code == 1000
    assert (await client.request("GET", f"{V}/locations", new_token)).status == 401
    assert api.store.parties() == []


async def test_modules_page_validate_and_refuse_bad_parameters(served: Any) -> None:
    client, api, ledger = served
    token = await _register(client, api)
    locations = await client.request("GET", f"{V}/locations", token, headers={"X-Request-ID": "req-1"})
    assert locations.status == 200 and locations.headers["x-total-count"] == "1"  # NOWHERE-1 has no coordinates
    assert locations.headers["x-devsen-height"] == "42" and locations.headers["x-devsen-eth-block"] == "1234"
    assert locations.headers["x-request-id"] == "req-1" and locations.headers["x-limit"] == "100"
    for loc in locations.data:
        validator("Location")(loc)
    assert locations.json["timestamp"] == ocpi_time(ledger.block_ms)  # the committed block's time, not a clock
    again = await client.request("GET", f"{V}/locations", token, headers={"X-Request-ID": "req-1"})
    assert again.raw == locations.raw  # same height, same bytes
    one = await client.request("GET", f"{V}/locations/{CHARGER}", token)
    assert one.data == locations.data[0]
    evse = await client.request("GET", f"{V}/locations/{CHARGER}/{urllib.parse.quote(CHARGER + '*2')}", token)
    validator("EVSE")(evse.data)
    plug = await client.request("GET", f"{V}/locations/{CHARGER}/{urllib.parse.quote(CHARGER + '*2')}/1", token)
    validator("Connector")(plug.data)
    for target in (f"{V}/locations/NOWHERE-1", f"{V}/locations/{urllib.parse.quote(chr(39) + 'OR(1=1)--')}",
                   f"{V}/locations/{CHARGER}/nope", f"{V}/locations/{CHARGER}/{urllib.parse.quote(CHARGER + '*2')}/9"):
        answer = await client.request("GET", target, token)
        assert (answer.status, answer.code) == (404, 2003), target
    for target in (f"{V}/locations/{'x' * 37}", f"{V}/locations/%00%01",
                   f"{V}/locations/{urllib.parse.quote(chr(39) + ' OR 1=1 --')}"):
        answer = await client.request("GET", target, token)
        assert (answer.status, answer.code) == (400, 2001), target

    tariffs = await client.request("GET", f"{V}/tariffs?limit=1", token)
    assert tariffs.headers["x-total-count"] == "2" and len(tariffs.data) == 1
    validator("Tariff")(tariffs.data[0])
    assert tariffs.headers["link"].endswith('/ocpi/2.2.1/tariffs?offset=1&limit=1>; rel="next"')
    last = await client.request("GET", f"{V}/tariffs?offset=1&limit=1", token)
    assert "link" not in last.headers and last.data[0]["id"] != tariffs.data[0]["id"]
    clipped = await client.request("GET", f"{V}/tariffs?limit=100000000", token)
    assert clipped.status == 200 and clipped.headers["x-limit"] == "100" and len(clipped.data) == 2

    for query, name in (("limit=0", "limit"), ("limit=-5", "limit"), ("limit=abc", "limit"),
                        ("offset=-1", "offset"), ("offset=99999999999", "offset"), ("limit=1e9", "limit"),
                        ("date_from=yesterday", "date_from"), ("date_to=2026-12-02T10%3A00%3A00%2B02%3A00", "date_to"),
                        ("date_from=2026-12-02T00:00:00Z&date_to=2026-12-01T00:00:00Z", "date_to"),
                        ("offset=1%27%20OR%20%271%27=%271", "offset")):
        answer = await client.request("GET", f"{V}/tariffs?{query}", token)
        assert (answer.status, answer.code) == (400, 2001), query
        assert f"'{name}'" in answer.json["status_message"], (query, answer.json)

    no_date = await client.request("GET", f"{V}/sessions", token)
    assert (no_date.status, no_date.code) == (400, 2001) and "date_from" in no_date.json["status_message"]
    sessions = await client.request("GET", f"{V}/sessions?date_from=2020-01-01T00:00:00Z", token)
    assert sessions.headers["x-total-count"] == "2"
    for session in sessions.data:
        validator("Session")(session)
    assert sorted(s["status"] for s in sessions.data) == ["ACTIVE", "COMPLETED"]
    future = await client.request("GET", f"{V}/sessions?date_from=2030-01-01T00:00:00Z", token)
    assert future.data == [] and future.headers["x-total-count"] == "0"
    cdrs = await client.request("GET", f"{V}/cdrs", token)
    assert cdrs.headers["x-total-count"] == "1"
    validator("CDR")(cdrs.data[0])
    before = await client.request("GET", f"{V}/cdrs?date_from=2026-11-30T00:00:00Z&date_to=2026-11-30T01:00:00Z",
                                  token)
    assert before.data == []  # settled at 01:23:20, after the window
    within = await client.request("GET", f"{V}/cdrs?date_from=2026-11-30T01:23:20Z&date_to=2026-11-30T01:23:21Z",
                                  token)
    assert [c["id"] for c in within.data] == [cdrs.data[0]["id"]]  # date_from inclusive


async def test_a_failing_chain_read_is_an_ocpi_server_error(served: Any, monkeypatch: Any) -> None:
    client, api, ledger = served
    token = await _register(client, api)

    def broken(charger_id: str, block: int) -> Any:
        raise ConnectionError("RPC down")

    monkeypatch.setattr(api.sources, "chain_device", broken)
    ledger.height += 1  # a new height: nothing memoised
    answer = await client.request("GET", f"{V}/locations", token)
    assert (answer.status, answer.code) == (503, 3000) and "ConnectionError" in answer.json["status_message"]


async def test_openapi_documents_every_ocpi_route(tmp_path: Path) -> None:
    _, _, api = world(tmp_path)
    router = Router()
    router.include(ocpi_routes(api))
    status, document = await router.dispatch("GET", "/openapi.json")
    assert status == 200
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert router.declared == documented and len(documented) == 13
    names = {p["name"] for p in document["paths"][f"{V}/cdrs"]["get"]["parameters"]}
    assert names == {"offset", "limit", "date_from", "date_to", "Authorization"}
