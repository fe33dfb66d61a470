"""End to end: uptime rewards on a real local network (anvil, the contracts, 4 `devsen node`
processes, a 20 s reward epoch). A charger online with both connectors Available earns the
epoch's budget for its owner; the validators quorum-sign the distribution, one of them pays it
through the Rewards contract, and `devsen wallet rewards` shows earned == paid."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from anchoring.chain import ChainClient, TransactionSender, connect
from anchoring.chain.anvil import start_anvil
from anchoring.rewards import fund as fund_pool
from devsen.demo_charger import connect_demo_charger
from devsen.devnet import (
    CHAIN_ID,
    DEMO_CHARGER,
    DEMO_PASSWORD,
    DEMO_REWARD_BUDGET,
    deploy_network,
    prepare_nodes,
    start_node_process,
    stop_process,
    wait_until_serving,
)
from devsen.wallet import owner_rewards

EPOCH_S = 20


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root: Path = tmp_path_factory.mktemp("devnet")
    anvil = start_anvil(root / "anvil.log", chain_id=CHAIN_ID, block_time_s=1)
    nodes = []
    try:
        deployment_path = root / "deployment.json"
        nodes = prepare_nodes(root, 4, deployment_path, anvil.url)
        deployment, seeded = deploy_network(anvil, nodes, deployment_path, reward_epoch_s=EPOCH_S)
        w3 = connect(anvil.url)
        funder = ChainClient(w3, deployment, TransactionSender(w3, anvil.dev_keys[3]))
        with anvil.mining_each_transaction():
            funder.faucet_mint(funder.sender.address, 5 * DEMO_REWARD_BUDGET)  # type: ignore[union-attr]
            fund_pool(funder, 5 * DEMO_REWARD_BUDGET)
        for node in nodes:
            start_node_process(node)
        trio.run(wait_until_serving, nodes)
        yield {"nodes": nodes, "deployment": deployment, "w3": w3, "seeded": seeded}
    finally:
        for node in nodes:
            stop_process(node.process)
        anvil.stop()
        for node in nodes:  # shown by pytest only when a test failed
            print(f"--- {node.log_path} (tail) ---\n" + node.log_path.read_text()[-3000:])


async def _online(ocpp_url: str, seconds: float) -> None:
    async with connect_demo_charger(ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as device:
        await device.call("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
        for connector in (1, 2):
            await device.call("StatusNotification", {"connectorId": connector, "errorCode": "NoError",
                                                     "status": "Available"})
        with trio.move_on_after(seconds):
            while True:
                await device.call("Heartbeat", {})
                await trio.sleep(2)


def test_online_charger_earns_and_is_paid_on_chain(network: Any) -> None:
    nodes, deployment, w3 = network["nodes"], network["deployment"], network["w3"]
    owner = network["seeded"]["manager"]
    reader = ChainClient(w3, deployment)
    trio.run(_online, nodes[0].ocpp_url, 2.5 * EPOCH_S)
    deadline = time.monotonic() + 120
    doc: dict[str, Any] = {}
    while not (doc.get("epochs") and doc.get("paid_units")):
        assert time.monotonic() < deadline, f"no reward paid within 120 s: {doc}"
        time.sleep(2)
        try:
            _, doc = owner_rewards(reader, nodes[1].http_url, owner)
        except ValueError:
            doc = {}  # the node is busy: try again
    paid = [e for e in doc["epochs"] if e["paid_units"]]
    assert all(e["paid_units"] == e["amount_units"] <= DEMO_REWARD_BUDGET for e in paid)
    assert paid[0]["devices"][0]["charger_id"] == DEMO_CHARGER and paid[0]["devices"][0]["units"] == 2
    print(f"rewards e2e: {doc}")
