"""Payment vouchers end to end: real `devsen node` processes on a local devnet (anvil).

The driver posts vouchers over HTTP to a node the charger is not connected to; they are
gossiped, agreed in blocks and visible at every node; bad vouchers get a clear 400 and never
enter a block. The Escrow on main has no voucher-mode sessions yet (the on-chain half is
another branch), so this session settles at its metered cost; the voucher-mode rules (stop,
settlement = min) are covered at the ledger and application level
(tests/ledger/test_ledger_vouchers.py, tests/node/test_node_vouchers.py).
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import test_e2e_network
import trio

from anchoring.chain.client import SessionStatus
from devsen.demo_charger import connect_demo_charger, iso_now
from devsen.devnet import DEMO_CHARGER, DEMO_ID_TAG, DEMO_PASSWORD, DEMO_PRICE_PER_KWH
from devsen.http_api import http_get_json, http_post_json
from devsen.ledger import session_token
from devsen.ledger.chain import MAX_POWER_W
from devsen.ledger.vouchers import sign_voucher
from devsen.wallet import open_prepaid_session
from primitives.eip712 import SigningKey

network = test_e2e_network.network  # the devnet fixture: one network for this module
DEPOSIT = 5 * 10**6


def body(voucher: Any) -> str:
    return json.dumps({"cumulative_amount": str(voucher.cumulative_amount), "signature": "0x" + voucher.signature.hex()})


async def test_vouchers_posted_to_one_node_are_agreed_by_all_and_bad_ones_refused(network: Any) -> None:
    nodes, driver = network["nodes"], network["seeded"]["driver_client"]
    key = SigningKey(bytes.fromhex(network["anvil"].dev_keys[2].removeprefix("0x")))
    assert "0x" + key.address.hex() == driver.sender.address.lower()
    stranger = SigningKey(b"\x44" * 32)
    domain = network["deployment"].domain("Escrow")
    entry, other, follower = nodes[1], nodes[0], nodes[3]
    async with connect_demo_charger(entry.ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        assert (await charger.boot(connector=1))["status"] == "Accepted"
        session_id = await trio.to_thread.run_sync(open_prepaid_session, driver, DEMO_CHARGER, 1, DEMO_ID_TAG, DEPOSIT)
        token = session_token(session_id)
        with trio.fail_after(30):
            while (await charger.next_remote_start(30))["idTag"] != token:
                pass
        started = trio.current_time()
        start = await charger.call("StartTransaction", {"connectorId": 1, "idTag": token, "meterStart": 0,
                                                        "timestamp": iso_now()})
        assert start["idTagInfo"]["status"] == "Accepted"
        tx = start["transactionId"]
        await charger.call("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [
            {"timestamp": iso_now(), "sampledValue": [{"value": "400", "unit": "Wh"}]}]})
        url = f"/v1/sessions/0x{session_id.hex()}"
        latencies = []
        chunk = 500 * DEMO_PRICE_PER_KWH // 1000
        for n in range(1, 6):
            began = time.perf_counter()
            status, answer = await http_post_json(other.http_url + url + "/vouchers",
                                                  body(sign_voucher(key, domain, session_id, chunk * n)))
            latencies.append((time.perf_counter() - began) * 1000)
            assert status == 200, answer
        print(f"\nHTTP voucher submit to commit (4 real nodes): median {statistics.median(latencies):.0f} ms, "
              f"max {max(latencies):.0f} ms")
        for voucher, why in ((sign_voucher(stranger, domain, session_id, chunk * 9), "not by the session's driver"),
                             (sign_voucher(key, domain, session_id, chunk * 5), "not above the latest"),
                             (sign_voucher(key, domain, session_id, DEPOSIT + 1), "exceeds the deposit")):
            status, answer = await http_post_json(other.http_url + url + "/vouchers", body(voucher))
            assert status == 400 and why in answer["error"], answer
        with trio.fail_after(30):
            while True:
                status, seen = await http_get_json(follower.http_url + url + "/payment")
                if status == 200 and seen["latest_voucher"] == str(chunk * 5) and seen.get("energy_wh") == 400:
                    break
                await trio.sleep(0.3)
        assert seen["running"] and seen["cost"] == str(400 * DEMO_PRICE_PER_KWH // 1000)
        await trio.sleep_until(started + 1.2 * 1_000 * 3600 / MAX_POWER_W)
        stop = await charger.call("StopTransaction", {"transactionId": tx, "meterStop": 1_000, "timestamp": iso_now(),
                                                      "idTag": token})
        assert stop["idTagInfo"]["status"] == "Accepted"
    with trio.fail_after(60):
        while (session := driver.session(session_id, "latest")).status != SessionStatus.SETTLED:
            await trio.sleep(0.5)
    assert session.settled_amount == 1_000 * DEMO_PRICE_PER_KWH // 1000  # not a voucher-mode session on main


def _start_stream(network: Any, key_file: Any, session_id: bytes, node_url: str, car: Any,
                  out_path: Any) -> tuple[Any, Any]:
    """`devsen wallet --json stream ...` as a child process (time-bounded by --timeout-s; the test kills it)."""
    import subprocess
    import sys

    out = open(out_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "devsen.cli", "wallet", "--rpc", network["anvil"].url, "--deployment",
         str(network["deployment_path"]), "--key-file", str(key_file), "--json", "stream", "0x" + session_id.hex(),
         "--cap", str(DEPOSIT), "--node", node_url, "--battery-wh", str(car), "--poll-s", "0.3",
         "--timeout-s", "120"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return process, out


async def test_wallet_stream_cli_signs_chunk_by_chunk_and_stops_on_a_mismatch(network: Any, tmp_path: Any) -> None:
    nodes, driver = network["nodes"], network["seeded"]["driver_client"]
    key_file, car = tmp_path / "driver.key", tmp_path / "car_wh"
    key_file.write_text(network["anvil"].dev_keys[2])
    car.write_text("0")
    entry, wallet_node = nodes[2], nodes[0]
    async with connect_demo_charger(entry.ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        assert (await charger.boot(connector=2))["status"] == "Accepted"
        session_id = await trio.to_thread.run_sync(open_prepaid_session, driver, DEMO_CHARGER, 2, DEMO_ID_TAG, DEPOSIT)
        token = session_token(session_id)
        with trio.fail_after(30):
            while (await charger.next_remote_start(30))["idTag"] != token:
                pass
        process, out = _start_stream(network, key_file, session_id, wallet_node.http_url, car, tmp_path / "stream.out")
        try:
            started = trio.current_time()
            start = await charger.call("StartTransaction", {"connectorId": 2, "idTag": token, "meterStart": 0,
                                                            "timestamp": iso_now()})
            tx = start["transactionId"]
            for n in range(1, 7):
                reported = 100 * n + (300 if n == 6 else 0)  # the sixth reading is inflated by its ingress node
                car.write_text(str(100 * n))
                await charger.call("MeterValues", {"connectorId": 2, "transactionId": tx, "meterValue": [
                    {"timestamp": iso_now(), "sampledValue": [{"value": str(reported), "unit": "Wh"}]}]})
                await trio.sleep(2.0)
            await trio.sleep_until(started + 1.2 * 900 * 3600 / MAX_POWER_W)
            await charger.call("StopTransaction", {"transactionId": tx, "meterStop": 900, "timestamp": iso_now(),
                                                   "idTag": token})
            with trio.fail_after(60):
                while process.poll() is None:
                    await trio.sleep(0.3)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(10)
            out.close()
    lines = [json.loads(line) for line in (tmp_path / "stream.out").read_text().splitlines() if line.startswith("{")]
    signed = [line["cumulative_amount"] for line in lines if line["event"] == "signed"]
    chunk = 500 * DEMO_PRICE_PER_KWH // 1000
    assert process.returncode == 0, (tmp_path / "stream.out").read_text()
    assert signed and all(amount % chunk == 0 for amount in signed) and signed == sorted(set(signed))
    stops = [line for line in lines if line["event"] == "stopped_signing"]
    assert stops and "mismatch" in stops[0]["reason"]
    assert signed[-1] <= (500 * DEMO_PRICE_PER_KWH // 1000) + chunk  # never a chunk past the car's 0.5 kWh
    done = lines[-1]
    assert done["event"] == "done" and done["signed"] == signed[-1]
