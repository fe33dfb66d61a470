"""OCPI 2.2.1 on real `devsen node` processes (anvil + 4 nodes): an MSP gets a registration
token from the operator's CLI, walks versions -> credentials -> locations -> tariffs ->
sessions -> cdrs after a session settled on chain; every object validates against the OCPI
2.2.1 definitions, and two nodes at the same height answer byte-identically."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from e2e_devnet import running_devnet

from anchoring.chain import ChainClient, TransactionSender, connect
from anchoring.chain.client import SessionStatus
from devsen.demo_charger import connect_demo_charger
from devsen.devnet import DEMO_DEPOSIT, DEMO_ID_TAG, DEMO_PRICE_PER_KWH
from devsen.ledger.chain import MAX_POWER_W
from devsen.ocpi.client import OcpiAnswer, ocpi_request
from devsen.ocpi.schemas import validator
from devsen.wallet import create_device, open_prepaid_session

NODES = 4
CHARGER = "OCPI-CP-1"
PASSWORD = "ocpi-charger-password-1"
LOCATION = ("52.520008,13.404954;connectors=CCS2+Type2;name=DEVSEN OCPI depot;address=Alexanderplatz 1;"
            "city=Berlin;postal_code=10178")
MSP = {"token": "msp-token-b-e2e-0123456789", "url": "http://127.0.0.1:9/ocpi/versions",
       "roles": [{"role": "EMSP", "country_code": "NL", "party_id": "MSP", "business_details": {"name": "E2E MSP"}}]}
V = "/ocpi/2.2.1"


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_devnet(tmp_path_factory.mktemp("devnet-ocpi"), NODES) as devnet:
        anvil = devnet["anvil"]
        w3 = connect(anvil.url)
        manager = ChainClient(w3, devnet["deployment"], TransactionSender(w3, anvil.dev_keys[1]))
        with anvil.mining_each_transaction():
            create_device(manager, CHARGER, PASSWORD, connectors=2, price_per_kwh=DEMO_PRICE_PER_KWH,
                          location=LOCATION, max_power_w=MAX_POWER_W)
        driver = devnet["seeded"]["driver_client"]
        devnet["session_id"] = open_prepaid_session(driver, CHARGER, 1, DEMO_ID_TAG, DEMO_DEPOSIT)
        yield devnet


def _registration_token(config_path: Path) -> str:
    """What an operator runs: `devsen ocpi token create --config node.toml --json` (against the running node's store)."""
    out = subprocess.run([sys.executable, "-m", "devsen.cli", "ocpi", "token", "create", "--config", str(config_path),
                          "--json"], check=True, capture_output=True, text=True, timeout=60)
    return str(json.loads(out.stdout)["token"])


async def _ok(url: str, token: str, method: str = "GET", body: bytes = b"") -> OcpiAnswer:
    answer = await ocpi_request(url, method, token, body)
    validator("Response")(answer.json)
    assert answer.status == 200 and answer.code == 1000, (url, answer.status, answer.json)
    return answer


async def _register(node: Any) -> str:
    """versions -> version details -> credentials, as an MSP does; returns CREDENTIALS_TOKEN_C."""
    token_a = _registration_token(node.config_path)
    versions = await _ok(node.http_url + "/ocpi/versions", token_a)
    for version in versions.data:
        validator("Version")(version)
    (mine,) = [v for v in versions.data if v["version"] == "2.2.1"]
    assert mine["url"] == node.http_url + V
    details = await _ok(mine["url"], token_a)
    validator("VersionDetails")(details.data)
    endpoints = {(e["identifier"], e["role"]): e["url"] for e in details.data["endpoints"]}
    registered = await _ok(endpoints[("credentials", "SENDER")], token_a, "POST", json.dumps(MSP).encode())
    validator("Credentials")(registered.data)
    assert registered.data["roles"][0]["role"] == "CPO"
    assert (await ocpi_request(node.http_url + V + "/locations", token=token_a)).status == 401  # token A is spent
    return str(registered.data["token"])


async def _settled(client: Any, session_id: bytes) -> None:
    with trio.fail_after(180):
        while (session := client.session(session_id, "latest")) is None or session.status != SessionStatus.SETTLED:
            await trio.sleep(0.5)


async def _cdrs(node: Any, token: str) -> OcpiAnswer:
    """The CDR list once the settlement is visible at the node's agreed Ethereum block."""
    with trio.fail_after(120):
        while True:
            answer = await _ok(node.http_url + V + "/cdrs", token)
            if answer.data:
                return answer
            await trio.sleep(0.5)


async def _same_height(url_a: str, token_a: str, url_b: str, token_b: str) -> tuple[OcpiAnswer, OcpiAnswer]:
    with trio.fail_after(60):
        while True:
            a, b = await _ok(url_a, token_a), await _ok(url_b, token_b)
            if a.headers["x-devsen-height"] == b.headers["x-devsen-height"]:
                return a, b
            await trio.sleep(0.2)


async def test_an_msp_walks_the_ocpi_modules_after_a_settled_session(network: Any) -> None:
    nodes = network["nodes"]
    msp_node, other = nodes[0], nodes[2]
    token = await _register(msp_node)

    async with connect_demo_charger(nodes[1].ocpp_url, CHARGER, PASSWORD) as charger:
        result = await charger.charge_session(DEMO_ID_TAG, connector=1, meter_start_wh=1_000, meter_stop_wh=13_000)
    assert result["stop"]["idTagInfo"]["status"] == "Accepted", result
    await _settled(network["seeded"]["driver_client"], network["session_id"])
    cdrs = await _cdrs(msp_node, token)

    locations = await _ok(msp_node.http_url + V + "/locations", token)
    assert locations.headers["x-total-count"] == "1"  # DEMO-CP-1 ("devnet") has no coordinates: not published
    (location,) = locations.data
    validator("Location")(location)
    assert location["id"] == CHARGER and location["city"] == "Berlin" and location["name"] == "DEVSEN OCPI depot"
    assert location["coordinates"] == {"latitude": "52.520008", "longitude": "13.404954"}
    assert [e["uid"] for e in location["evses"]] == [f"{CHARGER}*1", f"{CHARGER}*2"]
    assert location["evses"][0]["status"] in ("AVAILABLE", "CHARGING")
    evse = await _ok(msp_node.http_url + V + f"/locations/{CHARGER}/{CHARGER}*1", token)
    validator("EVSE")(evse.data)

    tariffs = await _ok(msp_node.http_url + V + "/tariffs", token)
    for tariff in tariffs.data:
        validator("Tariff")(tariff)
    (tariff,) = [t for t in tariffs.data if t["id"] == CHARGER]
    assert tariff["elements"][0]["price_components"][0] == {"type": "ENERGY", "price": 0.3, "step_size": 1}

    sessions = await _ok(msp_node.http_url + V + "/sessions?date_from=2020-01-01T00:00:00Z", token)
    for session in sessions.data:
        validator("Session")(session)
    (done,) = [s for s in sessions.data if s["location_id"] == CHARGER]
    assert done["status"] == "COMPLETED" and done["kwh"] == 12.0 and done["evse_uid"] == f"{CHARGER}*1"

    (cdr,) = cdrs.data
    validator("CDR")(cdr)
    assert cdr["id"] == done["id"] and cdr["total_energy"] == 12.0 and cdr["total_cost"] == {"excl_vat": 3.6}
    assert cdr["cdr_location"]["id"] == CHARGER and "0x" + network["session_id"].hex() in cdr["remark"]
    assert DEMO_ID_TAG not in json.dumps(cdr) and len(cdr["cdr_token"]["uid"]) == 36  # the idTag only as a hash

    other_token = await _register(other)  # credentials are node-local: the MSP registers with each node it uses
    for module in ("/locations", "/tariffs", "/sessions?date_from=2020-01-01T00:00:00Z", "/cdrs"):
        a, b = await _same_height(msp_node.http_url + V + module, token, other.http_url + V + module, other_token)
        assert a.raw == b.raw, (module, a.raw, b.raw)
    bad = await ocpi_request(msp_node.http_url + V + "/cdrs?limit=-1", token=token)
    assert (bad.status, bad.code) == (400, 2001)
    assert (await ocpi_request(msp_node.http_url + V + "/cdrs", token="wrong-token")).status == 401
