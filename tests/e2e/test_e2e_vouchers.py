"""Payment vouchers end to end: real `devsen node` processes on a local devnet (anvil).

- The driver posts vouchers over HTTP to a node the charger is not connected to; they are
  gossiped, agreed in blocks and visible at every node; bad vouchers get a clear 400 and never
  enter a block (a session not opened in voucher mode settles at its metered cost).
- `devsen wallet stream` signs chunk by chunk and stops signing on a mismatch with the car.
- Voucher mode (Escrow.openVoucherSession), the wallet streaming: the session settles on chain
  at min(metered cost, latest voucher).
- Voucher mode, the wallet stops signing (its cap): the ledger decides the stop once the
  metered cost runs more than a chunk past the latest voucher, the node holding the charger's
  connection sends RemoteStopTransaction, the demo charger stops (reason Remote), the stop is
  committed and the settlement is the last voucher, nothing beyond.
- Voucher mode, all nodes down: the device manager closes the escrow with the driver's latest
  voucher alone (`devsen wallet close-with-voucher --voucher FILE`, the file the wallet
  wrote); after the restart the charger's late StopTransaction settles nothing more, no
  settlement job is left pending, nobody is paid twice. Runs last: it stops the whole network.

Figures (sign/verify µs, HTTP submit → commit, stop latency) go to bench/results/vouchers.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import test_e2e_network
import trio

from anchoring.chain.client import SessionStatus
from devsen.demo_charger import DemoCharger, connect_demo_charger, iso_now
from devsen.devnet import (
    DEMO_CHARGER,
    DEMO_ID_TAG,
    DEMO_PASSWORD,
    DEMO_PRICE_PER_KWH,
    start_node_process,
    stop_process,
    wait_until_serving,
)
from devsen.http_api import http_get_json, http_post_json
from devsen.ledger import session_token
from devsen.ledger.chain import MAX_POWER_W
from devsen.ledger.vouchers import (
    chunk_amount,
    sign_voucher,
    voucher_document,
    voucher_from_document,
)
from devsen.wallet import latest_voucher, open_prepaid_session
from primitives.eip712 import SigningKey

network = test_e2e_network.network  # the devnet fixture: one network for this module
DEPOSIT = 5 * 10**6
CHUNK = chunk_amount(DEMO_PRICE_PER_KWH)  # 0.5 kWh at the demo tariff
SUBMITS = 12  # vouchers posted one after another for the submit -> commit figures
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "vouchers.json"


def body(voucher: Any) -> str:
    return json.dumps(voucher_document(voucher))


def record(section: str, figures: dict[str, Any]) -> None:
    """Merge one section of figures into bench/results/vouchers.json (the other sections stay)."""
    try:
        results = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        results = {}
    results[section] = {**figures, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "load_average_1m": round(os.getloadavg()[0], 1), "cpus": os.cpu_count()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


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
        for n in range(1, SUBMITS + 1):
            began = time.perf_counter()
            status, answer = await http_post_json(other.http_url + url + "/vouchers",
                                                  body(sign_voucher(key, domain, session_id, chunk * n)))
            latencies.append((time.perf_counter() - began) * 1000)
            assert status == 200, answer
        print(f"\nHTTP voucher submit to commit (4 real nodes): median {statistics.median(latencies):.0f} ms, "
              f"max {max(latencies):.0f} ms")
        record("http_submit_to_commit", {
            "nodes": 4, "vouchers": len(latencies), "median_ms": round(statistics.median(latencies), 1),
            "max_ms": round(max(latencies), 1), "min_ms": round(min(latencies), 1),
            "what": "POST /v1/sessions/{id}/vouchers at a node the charger is not on, until its 200 (committed)"})
        for voucher, why in ((sign_voucher(stranger, domain, session_id, chunk * (SUBMITS + 4)), "not by the session's driver"),
                             (sign_voucher(key, domain, session_id, chunk * SUBMITS), "not above the latest"),
                             (sign_voucher(key, domain, session_id, DEPOSIT + 1), "exceeds the deposit")):
            status, answer = await http_post_json(other.http_url + url + "/vouchers", body(voucher))
            assert status == 400 and why in answer["error"], answer
        with trio.fail_after(30):
            while True:
                status, seen = await http_get_json(follower.http_url + url + "/payment")
                if status == 200 and seen["latest_voucher"] == str(chunk * SUBMITS) and seen.get("energy_wh") == 400:
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


def _start_stream(network: Any, key_file: Any, session_id: bytes, node_url: str, out_path: Any, *extra: str,
                  cap: int = DEPOSIT) -> tuple[Any, Any]:
    """`devsen wallet --json stream ...` as a child process (time-bounded by --timeout-s; the test kills it)."""
    out = open(out_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "devsen.cli", "wallet", "--rpc", network["anvil"].url, "--deployment",
         str(network["deployment_path"]), "--key-file", str(key_file), "--json", "stream", "0x" + session_id.hex(),
         "--cap", str(cap), "--node", node_url, "--poll-s", "0.3", "--timeout-s", "120", *extra],
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return process, out


def _stream_lines(out_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out_path.read_text().splitlines() if line.startswith("{")]


async def _stream_exit(process: Any) -> None:
    """Wait for the wallet stream to end by itself (the session stopped)."""
    with trio.fail_after(60):
        while process.poll() is None:
            await trio.sleep(0.3)


def _stream_result(process: Any, out_path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The stream's JSON lines and the amounts it signed; it must have exited 0."""
    lines = _stream_lines(out_path)
    assert process.returncode == 0, out_path.read_text()
    return lines, [line["cumulative_amount"] for line in lines if line["event"] == "signed"]


def _end_stream(process: Any, out: Any) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(10)
    out.close()


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
        process, out = _start_stream(network, key_file, session_id, wallet_node.http_url, tmp_path / "stream.out",
                                     "--battery-wh", str(car))
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
            await _stream_exit(process)
        finally:
            _end_stream(process, out)
    lines, signed = _stream_result(process, tmp_path / "stream.out")
    chunk = 500 * DEMO_PRICE_PER_KWH // 1000
    assert signed and all(amount % chunk == 0 for amount in signed) and signed == sorted(set(signed))
    stops = [line for line in lines if line["event"] == "stopped_signing"]
    assert stops and "mismatch" in stops[0]["reason"]
    assert signed[-1] <= (500 * DEMO_PRICE_PER_KWH // 1000) + chunk  # never a chunk past the car's 0.5 kWh
    done = lines[-1]
    assert done["event"] == "done" and done["signed"] == signed[-1]


def test_voucher_sign_and_verify_cost(network: Any) -> None:
    """What one voucher costs the wallet (sign) and every node (recover the signer), in µs."""
    key = SigningKey(bytes.fromhex(network["anvil"].dev_keys[2].removeprefix("0x")))
    domain = network["deployment"].domain("Escrow")
    session_id, rounds = b"\x5a" * 32, 300
    signing, verifying = [], []
    for n in range(rounds):
        began = time.perf_counter()
        voucher = sign_voucher(key, domain, session_id, CHUNK * (n + 1))
        signed = time.perf_counter()
        assert voucher.signer(domain) == key.address
        signing.append((signed - began) * 1e6)
        verifying.append((time.perf_counter() - signed) * 1e6)
    figures = {"rounds": rounds, "sign_median_us": round(statistics.median(signing), 1),
               "sign_max_us": round(max(signing), 1), "verify_median_us": round(statistics.median(verifying), 1),
               "verify_max_us": round(max(verifying), 1),
               "what": "EIP-712 PaymentVoucher: sign = digest + secp256k1 sign; verify = digest + recover"}
    print(f"\nvoucher sign {figures['sign_median_us']} µs, verify {figures['verify_median_us']} µs (median)")
    record("sign_verify", figures)


async def _open_voucher_session(network: Any, charger: DemoCharger, connector: int) -> tuple[bytes, str]:
    """A voucher-mode escrow session (openVoucherSession) and the remote start it brings."""
    driver = network["seeded"]["driver_client"]
    session_id = await trio.to_thread.run_sync(
        lambda: open_prepaid_session(driver, DEMO_CHARGER, connector, DEMO_ID_TAG, DEPOSIT, voucher_mode=True))
    assert driver.session(session_id, "latest").voucher_mode
    token = session_token(session_id)
    with trio.fail_after(30):
        while (await charger.next_remote_start(30))["idTag"] != token:
            pass
    return session_id, token


async def _first_voucher(node: Any, session_id: bytes) -> None:
    """Wait until `node` has agreed the wallet's first voucher (one chunk, signed before any
    energy flows): the wallet process may take seconds to start on a loaded machine."""
    url = f"{node.http_url}/v1/sessions/0x{session_id.hex()}/payment"
    with trio.fail_after(60):
        while (await http_get_json(url))[1].get("latest_voucher") != str(CHUNK):
            await trio.sleep(0.1)


async def _settled(driver: Any, session_id: bytes, timeout_s: float = 90) -> Any:
    with trio.fail_after(timeout_s):
        while (session := driver.session(session_id, "latest")).status != SessionStatus.SETTLED:
            await trio.sleep(0.5)
    return session


def _reading(connector: int, tx: int, wh: int) -> dict[str, Any]:
    return {"connectorId": connector, "transactionId": tx, "meterValue": [
        {"timestamp": iso_now(), "sampledValue": [{"value": str(wh), "unit": "Wh"}]}]}


def _driver_key_file(network: Any, tmp_path: Path) -> Path:
    key_file = tmp_path / "driver.key"
    key_file.write_text(network["anvil"].dev_keys[2])
    return key_file


async def test_voucher_session_streamed_by_the_wallet_settles_at_min_of_metered_and_voucher(
        network: Any, tmp_path: Path) -> None:
    nodes, driver = network["nodes"], network["seeded"]["driver_client"]
    async with connect_demo_charger(nodes[1].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        assert (await charger.boot(connector=1))["status"] == "Accepted"
        session_id, token = await _open_voucher_session(network, charger, 1)
        process, out = _start_stream(network, _driver_key_file(network, tmp_path), session_id, nodes[0].http_url,
                                     tmp_path / "stream.out")
        try:
            start = await charger.call("StartTransaction", {"connectorId": 1, "idTag": token, "meterStart": 0,
                                                            "timestamp": iso_now()})
            assert start["idTagInfo"]["status"] == "Accepted"
            tx = start["transactionId"]
            await _first_voucher(nodes[2], session_id)
            for wh in (200, 400, 600, 800, 1_000, 1_200):
                await charger.call("MeterValues", _reading(1, tx, wh))
                await charger.serve(1.5)  # answers (and would honour) a remote stop meanwhile
            assert not charger.remote_stops, "the wallet kept a chunk ahead: the network must not stop it"
            stop = await charger.call("StopTransaction", {"transactionId": tx, "meterStop": 1_200,
                                                          "timestamp": iso_now(), "idTag": token})
            assert stop["idTagInfo"]["status"] == "Accepted"
            await _stream_exit(process)
        finally:
            _end_stream(process, out)
    lines, signed = _stream_result(process, tmp_path / "stream.out")
    assert signed == sorted(set(signed)) and all(amount % CHUNK == 0 for amount in signed)
    session = await _settled(driver, session_id)
    metered = 1_200 * DEMO_PRICE_PER_KWH // 1000
    assert signed[-1] >= metered  # one chunk ahead of the committed cost ...
    assert session.energy_wh == 1_200
    assert session.settled_amount == min(metered, signed[-1]) == metered  # ... so the meter sets the price
    assert driver.session(session_id, "latest").deposit == DEPOSIT


async def test_wallet_that_stops_signing_gets_the_charge_stopped_and_pays_its_last_voucher(
        network: Any, tmp_path: Path) -> None:
    nodes, driver = network["nodes"], network["seeded"]["driver_client"]
    entry, wallet_node, observer = nodes[2], nodes[3], nodes[0]
    async with connect_demo_charger(entry.ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        assert (await charger.boot(connector=2))["status"] == "Accepted"
        session_id, token = await _open_voucher_session(network, charger, 2)
        url = f"{observer.http_url}/v1/sessions/0x{session_id.hex()}/payment"
        # The driver agrees to one chunk only: the wallet signs it and then stops signing.
        process, out = _start_stream(network, _driver_key_file(network, tmp_path), session_id,
                                     wallet_node.http_url, tmp_path / "stream.out", cap=CHUNK)
        try:
            start = await charger.call("StartTransaction", {"connectorId": 2, "idTag": token, "meterStart": 0,
                                                            "timestamp": iso_now()})
            tx = start["transactionId"]
            await _first_voucher(observer, session_id)
            last_voucher_seen = time.perf_counter()
            trigger: dict[str, float] = {}
            for step in range(1, 11):
                wh = 300 * step
                beyond = wh * DEMO_PRICE_PER_KWH // 1000 - CHUNK > CHUNK  # more than a chunk past the voucher
                if beyond and not trigger:
                    trigger["sent"] = time.perf_counter()
                await charger.call("MeterValues", _reading(2, tx, wh))
                if beyond and "committed" not in trigger:
                    trigger["committed"] = time.perf_counter()
                if not charger.remote_stops:
                    await charger.serve(1.0)
                if charger.remote_stops:
                    break
            stopped = charger.remote_stops[0] if charger.remote_stops else await charger.next_remote_stop(30)
            await _stream_exit(process)
        finally:
            _end_stream(process, out)
    assert stopped["action"] == "RemoteStopTransaction" and stopped["payload"] == {"transactionId": tx}
    assert stopped["stop_payload"]["reason"] == "Remote"
    assert isinstance(stopped["stop_answer"], dict)  # a CALLRESULT: the node answers once the stop is committed
    stopped_wh = stopped["stop_payload"]["meterStop"]
    assert stopped_wh * DEMO_PRICE_PER_KWH // 1000 - CHUNK > CHUNK  # it ran past the voucher: stopped
    status, state = await http_get_json(url)
    assert status == 200 and not state["running"]  # the stop is committed at every node
    lines, signed = _stream_result(process, tmp_path / "stream.out")
    assert signed == [CHUNK]
    assert any(line["event"] == "stopped_signing" and "cap" in line["reason"] for line in lines)
    session = await _settled(driver, session_id)
    assert session.energy_wh == stopped_wh
    overpaid = session.settled_amount - CHUNK
    print(f"\nmetered {stopped_wh * DEMO_PRICE_PER_KWH // 1000}, last voucher {CHUNK}, "
          f"settled {session.settled_amount}: {max(0, overpaid)} above the voucher")
    assert overpaid == 0  # the last voucher, nothing beyond
    figures = {
        "last_voucher_to_remote_stop_ms": round((stopped["received_at"] - last_voucher_seen) * 1000, 1),
        "trigger_reading_sent_to_remote_stop_ms": round((stopped["received_at"] - trigger["sent"]) * 1000, 1),
        # negative: the remote stop reached the charger before the reading's own CALLRESULT did
        "remote_stop_after_trigger_reply_ms": round((stopped["received_at"] - trigger["committed"]) * 1000, 1),
        "remote_stop_to_stop_committed_ms": round((stopped["stopped_at"] - stopped["received_at"]) * 1000, 1),
        "metered_units": stopped_wh * DEMO_PRICE_PER_KWH // 1000, "voucher_units": CHUNK,
        "settled_units": session.settled_amount, "overpaid_units": max(0, overpaid),
        "what": "4 real nodes; the charger reports 300 Wh a second; last_voucher_* depends on that pace, "
                "trigger_* is the network's reaction to the reading that ran a chunk past the voucher",
    }
    print("stop latency:", figures)
    record("stop_latency", figures)


def _meter_201(wh: int) -> list[dict[str, Any]]:
    return [{"timestamp": iso_now(), "sampledValue": [
        {"value": wh, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "Wh"}}]}]


async def test_2_0_1_charger_gets_request_stop_when_vouchers_fall_behind(network: Any) -> None:
    """The same stop for an OCPP 2.0.1 charger: RequestStopTransaction, TransactionEvent Ended (Remote)."""
    nodes, driver = network["nodes"], network["seeded"]["driver_client"]
    key = SigningKey(bytes.fromhex(network["anvil"].dev_keys[2].removeprefix("0x")))
    domain = network["deployment"].domain("Escrow")
    async with connect_demo_charger(nodes[1].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD, ocpp_version="2.0.1") as charger:
        assert (await charger.boot(connector=1))["status"] == "Accepted"
        session_id, token = await _open_voucher_session(network, charger, 1)
        ref = f"v201-{session_id.hex()[:12]}"
        started = await charger.call("TransactionEvent", {
            "eventType": "Started", "timestamp": iso_now(), "triggerReason": "RemoteStart",
            "seqNo": charger.next_seq_no(), "transactionInfo": {"transactionId": ref},
            "evse": {"id": 1, "connectorId": 1}, "idToken": {"idToken": token, "type": "Central"},
            "meterValue": _meter_201(0)})
        assert started["idTokenInfo"]["status"] == "Accepted"
        # The driver signs one chunk, and no more (posted, like the wallet does, once the node it
        # talks to has committed the start: a node a few blocks behind reads an older chain block).
        url = f"{nodes[3].http_url}/v1/sessions/0x{session_id.hex()}"
        with trio.fail_after(30):
            while not (await http_get_json(url + "/payment"))[1].get("running"):
                await trio.sleep(0.2)
        status, answer = await http_post_json(url + "/vouchers", body(sign_voucher(key, domain, session_id, CHUNK)))
        assert status == 200, answer
        for step in range(1, 11):
            await charger.call("TransactionEvent", {
                "eventType": "Updated", "timestamp": iso_now(), "triggerReason": "MeterValuePeriodic",
                "seqNo": charger.next_seq_no(), "transactionInfo": {"transactionId": ref},
                "meterValue": _meter_201(300 * step)})
            if not charger.remote_stops:
                await charger.serve(1.0)
            if charger.remote_stops:
                break
        stopped = charger.remote_stops[0] if charger.remote_stops else await charger.next_remote_stop(30)
    assert stopped["action"] == "RequestStopTransaction" and stopped["payload"] == {"transactionId": ref}
    assert stopped["stop_action"] == "TransactionEvent" and isinstance(stopped["stop_answer"], dict)
    assert stopped["stop_payload"]["triggerReason"] == "RemoteStop"
    assert stopped["stop_payload"]["transactionInfo"] == {"transactionId": ref, "stoppedReason": "Remote"}
    session = await _settled(driver, session_id)
    assert session.settled_amount == CHUNK  # the voucher, not the metered cost
    assert session.energy_wh * DEMO_PRICE_PER_KWH // 1000 > 2 * CHUNK


def _manager_cli(network: Any, key_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devsen.cli", "wallet", "--rpc", network["anvil"].url, "--deployment",
         str(network["deployment_path"]), "--key-file", str(key_file), "--json", *args],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


async def test_network_down_manager_closes_with_the_drivers_voucher_and_the_network_settles_nothing_more(
        network: Any, tmp_path: Path) -> None:
    """Runs last in this module: it stops all four nodes (and restarts them)."""
    nodes, driver = network["nodes"], network["seeded"]["driver_client"]
    manager_key = tmp_path / "manager.key"
    manager_key.write_text(network["anvil"].dev_keys[1])
    manager = network["seeded"]["manager"]
    voucher_file = tmp_path / "latest-voucher.json"
    async with connect_demo_charger(nodes[0].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        assert (await charger.boot(connector=1))["status"] == "Accepted"
        session_id, token = await _open_voucher_session(network, charger, 1)
        sid = "0x" + session_id.hex()
        process, out = _start_stream(network, _driver_key_file(network, tmp_path), session_id, nodes[1].http_url,
                                     tmp_path / "stream.out", "--voucher-out", str(voucher_file))
        try:
            start = await charger.call("StartTransaction", {"connectorId": 1, "idTag": token, "meterStart": 0,
                                                            "timestamp": iso_now()})
            assert start["idTagInfo"]["status"] == "Accepted", start
            tx = start["transactionId"]
            await _first_voucher(nodes[3], session_id)
            for wh in (200, 400, 600, 800):
                await charger.call("MeterValues", _reading(1, tx, wh))
                await charger.serve(1.5)
            with trio.move_on_after(30):
                while not voucher_file.exists():
                    await trio.sleep(0.2)
            assert voucher_file.exists(), (tmp_path / "stream.out").read_text()
            written = voucher_from_document(session_id, json.loads(voucher_file.read_text()))
            # Before the outage the manager can also take it from the ledger, at any node.
            with trio.fail_after(30):
                while (agreed := await trio.to_thread.run_sync(
                        lambda: latest_voucher(session_id, node_url=nodes[2].http_url))) != written:
                    written = voucher_from_document(session_id, json.loads(voucher_file.read_text()))
                    await trio.sleep(0.3)
        finally:
            _end_stream(process, out)
    assert agreed.cumulative_amount >= 800 * DEMO_PRICE_PER_KWH // 1000

    manager_before, driver_before = driver.token_balance(manager, "latest"), driver.token_balance(
        driver.sender.address, "latest")
    for node in nodes:  # the whole network goes down
        stop_process(node.process)
    try:
        refused = _manager_cli(network, manager_key, "close-with-voucher", sid, "--node", nodes[0].http_url)
        assert refused.returncode == 1 and "cannot read" in refused.stderr, refused
        tampered = tmp_path / "tampered.json"
        tampered.write_text(json.dumps({**voucher_document(written),
                                        "cumulative_amount": str(written.cumulative_amount + CHUNK)}))
        forged = _manager_cli(network, manager_key, "close-with-voucher", sid, "--voucher", str(tampered))
        assert forged.returncode == 1 and "not by the session's driver" in forged.stderr, forged
        not_manager = _manager_cli(network, _driver_key_file(network, tmp_path), "close-with-voucher", sid,
                                   "--voucher", str(voucher_file))
        assert not_manager.returncode == 1 and "NotSessionManager" in not_manager.stderr, not_manager
        closed = _manager_cli(network, manager_key, "close-with-voucher", sid, "--voucher", str(voucher_file))
        assert closed.returncode == 0, closed
        assert json.loads(closed.stdout)["paid_units"] == written.cumulative_amount
        session = driver.session(session_id, "latest")
        assert session.status == SessionStatus.SETTLED and session.settled_amount == written.cumulative_amount
        paid = driver.token_balance(manager, "latest") - manager_before
        refunded = driver.token_balance(driver.sender.address, "latest") - driver_before
        assert (paid, refunded) == (written.cumulative_amount, DEPOSIT - written.cumulative_amount)
    finally:
        for node in nodes:
            start_node_process(node)
        await wait_until_serving(nodes)

    # The charger comes back and delivers the stop it queued while offline (it charged on).
    async with connect_demo_charger(nodes[0].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        stop = await charger.call("StopTransaction", {"transactionId": tx, "meterStop": 1_400,
                                                      "timestamp": iso_now(), "idTag": token, "reason": "Local"})
    assert "idTagInfo" in stop
    for node in nodes:
        with trio.fail_after(30):
            while True:
                status, state = await http_get_json(f"{node.http_url}/v1/sessions/{sid}/payment", timeout=10)
                if status == 200 and not state["running"]:
                    break
                await trio.sleep(0.5)
        assert state["settlement"] is None  # nothing for the network to settle
    await trio.sleep(15)  # several submitter rounds
    for node in nodes:
        _, body = await http_get_json(f"{node.http_url}/v1/status", timeout=10)
        pending = json.dumps(body["submitter"]["pending"])
        assert session_id.hex() not in pending, f"node {node.index} still has a job for the session: {pending}"
    session = driver.session(session_id, "latest")
    assert session.status == SessionStatus.SETTLED and session.settled_amount == written.cumulative_amount
    assert driver.token_balance(manager, "latest") - manager_before == written.cumulative_amount  # paid once
    assert driver.token_balance(driver.sender.address, "latest") - driver_before == DEPOSIT - written.cumulative_amount
