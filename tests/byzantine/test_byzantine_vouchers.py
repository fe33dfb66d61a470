"""Byzantine ingress against a voucher-mode session (issue 12 part 2): node 4 runs the
`inflate_meter` behaviour and holds the demo charger's connection; every energy reading the
charger sends it (MeterValues, meterStop) is multiplied by 5 before node 4 vouches for it, so
the committed energy is five times what the car received. The driver's wallet (`devsen
wallet stream` at honest node 1, with the car's own view) stops signing at the first
mismatch; the ledger then stops the charge one chunk later and settles at min(metered,
latest voucher). Measured: what the driver paid above what it signed (expected 0) and above
the energy it really received (at most one chunk).

    .venv/bin/pytest -m byzantine tests/byzantine/test_byzantine_vouchers.py -s
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import byz_network
import pytest
import trio
from byz_network import ByzNetwork, get, height, record_line

from anchoring.chain.client import SessionStatus
from devsen.demo_charger import connect_demo_charger, iso_now
from devsen.devnet import DEMO_CHARGER, DEMO_ID_TAG, DEMO_PASSWORD, DEMO_PRICE_PER_KWH
from devsen.ledger import session_token
from devsen.ledger.vouchers import chunk_amount
from devsen.wallet import open_prepaid_session

pytestmark = [pytest.mark.byzantine, pytest.mark.slow]
net = byz_network.net  # the suite's network fixture: one network for this module

FACTOR = 5
CONNECTOR = 2
DEPOSIT = 5 * 10**6
CHUNK = chunk_amount(DEMO_PRICE_PER_KWH)
STEP_WH = 200


def _start_wallet(net: ByzNetwork, key_file: Path, session_id: bytes, car: Path,
                  out_path: Path) -> tuple[subprocess.Popen[bytes], Any]:
    """The driver's honest wallet (`devsen wallet --json stream`, the car's view in `car`) at honest node 1."""
    out = open(out_path, "w")
    wallet = subprocess.Popen(
        [sys.executable, "-m", "devsen.cli", "wallet", "--rpc", net.anvil.url, "--deployment",
         str(net.deployment_path), "--key-file", str(key_file), "--json", "stream", "0x" + session_id.hex(),
         "--cap", str(DEPOSIT), "--node", net.honest[0].http_url, "--battery-wh", str(car), "--poll-s", "0.3",
         "--timeout-s", "120"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return wallet, out


async def _charge(net: ByzNetwork, tmp_path: Path) -> dict[str, Any]:
    driver = net.seeded["driver_client"]
    key_file, car, out_path = tmp_path / "driver.key", tmp_path / "car_wh", tmp_path / "stream.out"
    key_file.write_text(net.anvil.dev_keys[2])
    car.write_text("0")
    async with connect_demo_charger(net.byzantine.ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        assert (await charger.boot(connector=CONNECTOR))["status"] == "Accepted"
        session_id = await trio.to_thread.run_sync(lambda: open_prepaid_session(
            driver, DEMO_CHARGER, CONNECTOR, DEMO_ID_TAG, DEPOSIT, voucher_mode=True))
        token = session_token(session_id)
        with trio.fail_after(30):
            while (await charger.next_remote_start(30))["idTag"] != token:
                pass
        url = f"{net.honest[1].http_url}/v1/sessions/0x{session_id.hex()}/payment"
        wallet, out = _start_wallet(net, key_file, session_id, car, out_path)
        try:
            start = await charger.call("StartTransaction", {"connectorId": CONNECTOR, "idTag": token,
                                                            "meterStart": 0, "timestamp": iso_now()})
            assert start["idTagInfo"]["status"] == "Accepted"
            tx = start["transactionId"]
            with trio.fail_after(60):  # the wallet signs its first chunk before any energy flows
                while ((await get(url))[1] or {}).get("latest_voucher") != str(CHUNK):
                    await trio.sleep(0.2)
            real_wh = 0
            for _ in range(8):
                real_wh += STEP_WH
                car.write_text(str(real_wh))  # the car's own view: what it really received
                await charger.call("MeterValues", {"connectorId": CONNECTOR, "transactionId": tx, "meterValue": [
                    {"timestamp": iso_now(), "sampledValue": [{"value": str(real_wh), "unit": "Wh"}]}]})
                if not charger.remote_stops:
                    await charger.serve(1.5)
                if charger.remote_stops:
                    break
            if not charger.remote_stops:  # never stopped by the network: the charger ends it
                await charger.call("StopTransaction", {"transactionId": tx, "meterStop": real_wh,
                                                       "timestamp": iso_now(), "idTag": token})
            with trio.fail_after(60):
                while wallet.poll() is None:
                    await trio.sleep(0.3)
        finally:
            if wallet.poll() is None:
                wallet.kill()
            wallet.wait(10)
            out.close()
        remote_stops = list(charger.remote_stops)
    lines = [json.loads(line) for line in out_path.read_text().splitlines() if line.startswith("{")]
    return {"session_id": session_id, "real_wh": real_wh, "remote_stops": remote_stops, "lines": lines,
            "wallet_rc": wallet.returncode}


async def _agreement(net: ByzNetwork) -> tuple[list[int | None], bool]:
    heights = [await height(node) for node in net.honest]
    common = min(h for h in heights if h is not None)
    hashes = [json.dumps((await get(f"{node.http_url}/v1/heights/{common}"))[1]) for node in net.honest]
    return heights, len(set(hashes)) == 1


def test_inflating_ingress_cannot_make_a_voucher_driver_pay_more_than_signed(net: ByzNetwork, tmp_path: Path) -> None:
    net.swap("inflate_meter", {"BYZ_CHARGER": DEMO_CHARGER, "BYZ_FACTOR": str(FACTOR)})
    began = time.monotonic()
    run = trio.run(_charge, net, tmp_path)
    lines = run["lines"]
    assert run["wallet_rc"] == 0, lines
    signed = [line["cumulative_amount"] for line in lines if line["event"] == "signed"]
    assert any(line["event"] == "stopped_signing" and "mismatch" in line["reason"] for line in lines), lines
    last_voucher = signed[-1] if signed else 0
    client = net.seeded["driver_client"]
    session = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        session = client.session(run["session_id"], "latest")
        if session is not None and session.status == SessionStatus.SETTLED:
            break
        time.sleep(1)
    assert session is not None and session.status == SessionStatus.SETTLED
    heights, agree = trio.run(_agreement, net)
    real_cost = run["real_wh"] * DEMO_PRICE_PER_KWH // 1000
    figures = {
        "scenario": "inflate_meter_voucher_session", "factor": FACTOR, "seconds": round(time.monotonic() - began, 1),
        "real_wh": run["real_wh"], "committed_wh": session.energy_wh,
        "inflated_cost_units": session.energy_wh * DEMO_PRICE_PER_KWH // 1000, "real_cost_units": real_cost,
        "last_voucher_units": last_voucher, "settled_units": session.settled_amount,
        "paid_above_signed_units": session.settled_amount - last_voucher,
        "paid_above_real_units": session.settled_amount - real_cost, "chunk_units": CHUNK,
        "remote_stop": bool(run["remote_stops"]), "honest_heights": heights, "state_hash_agree": agree,
    }
    record_line(figures)
    assert session.energy_wh > run["real_wh"]  # the attack reached the ledger: the meter was inflated ...
    assert session.settled_amount <= last_voucher  # ... and the driver paid at most what it signed
    assert session.settled_amount - real_cost <= CHUNK  # at most one chunk above the energy received
    assert run["remote_stops"], "the ledger stops a voucher session that runs a chunk past its voucher"
    assert agree, heights
