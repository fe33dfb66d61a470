"""`devsen simulate` for a few seconds against a real 4-node network (the e2e network fixture:
anvil, the contracts, 4 `devsen node` processes) and against the centralized baseline of
bench/compare.py (bench/baseline_csms.py, its own process): the JSON must be sane, with no
protocol errors, for OCPP 1.6 and 2.0.1 chargers alike."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from test_e2e_network import network  # noqa: F401  (the module's 4-node network fixture)

from anchoring.chain import ChainClient, Deployment, TransactionSender, connect
from devsen.cli import main as devsen_main
from devsen.devnet import DEMO_ID_TAG
from devsen.wallet import create_device, wait_for_confirmations
from primitives.credentials import new_auth_credential

ROOT = Path(__file__).resolve().parents[2]
CHARGERS = 4


def run_simulate(urls: list[str], out: Path, *extra: str) -> dict[str, Any]:
    argv = ["simulate", *[a for url in urls for a in ("--url", url)], "--chargers", str(CHARGERS), "--ocpp", "mixed",
            "--id-tag", DEMO_ID_TAG, "--duration", "4", "--call-timeout", "20", "--out", str(out), "--quiet", *extra]
    code = devsen_main(argv)
    result: dict[str, Any] = json.loads(out.read_text())
    assert code == 0, json.dumps(result, indent=1)[:3000]
    return result


def check_sane(result: dict[str, Any]) -> None:
    assert result["connected"] == CHARGERS and result["versions"] == {"1.6": 2, "2.0.1": 2}
    assert result["protocol_errors"] == 0 and result["errors_total"] == 0
    assert result["setup"]["answered"] == 5 * CHARGERS and result["teardown"]["answered"] == 2 * CHARGERS
    for row in result["phases"]:
        lat = row["latency_ms"]
        assert row["answered"] > 0
        assert lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]


def test_simulate_against_the_network(network: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    anvil = network["anvil"]
    w3 = connect(anvil.url)
    manager = ChainClient(w3, Deployment.from_json(network["deployment_path"].read_text()),
                          TransactionSender(w3, anvil.dev_keys[1]))
    receipt = None
    for i in range(CHARGERS):
        receipt = create_device(manager, f"SIM-CP-{i:05d}", f"sim-password-{i:05d}", location="simulate")
    assert receipt is not None and wait_for_confirmations(manager, receipt.block_number)
    result = run_simulate([node.ocpp_url for node in network["nodes"]], tmp_path / "devsen.json",
                          "--rate", "4", "--closed")
    check_sane(result)
    assert len(result["urls"]) == 4  # spread over every node
    assert result["reply_statuses"].get("Authorize Accepted") == CHARGERS  # the devnet's registered idTag


def test_simulate_against_the_baseline(tmp_path: Path) -> None:
    salt, auth_hash = new_auth_credential("sim-password")
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({f"SIM-CP-{i:05d}": [salt.hex(), auth_hash.hex()] for i in range(CHARGERS)}))
    process = subprocess.Popen([sys.executable, str(ROOT / "bench" / "baseline_csms.py"), "--port", "0",
                                "--credentials", str(creds), "--log", str(tmp_path / "csms.log")],
                               stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        assert line.startswith("listening "), line
        url = f"ws://127.0.0.1:{int(line.split()[1])}/ocpp"
        result = run_simulate([url], tmp_path / "baseline.json", "--password-format", "sim-password",
                              "--rate", "50", "--closed")
    finally:
        process.terminate()
        process.wait(10)
    check_sane(result)
    # answered after it was written: every answered CALL is in the fsync'd log
    logged = (tmp_path / "csms.log").read_text().splitlines()
    answered = result["setup"]["answered"] + result["teardown"]["answered"] + sum(p["answered"] for p in result["phases"])
    assert len(logged) >= answered
