"""The Byzantine network fixture shared by the modules of this suite: anvil, the contracts, 3
honest `devsen node` processes and node 4 started through `launch.py` ("honest" until a test
swaps its behaviour). One network per module; a module sets `SIGNED_METER = True` to have the
demo charger registered with its OCMF meter key and requireSignedMeter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from byz_network import ByzNetwork, start_with_behaviour

from anchoring.chain.anvil import start_anvil
from devsen.devnet import (
    CHAIN_ID,
    deploy_network,
    prepare_nodes,
    start_node_process,
    wait_until_serving,
)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ByzNetwork]:
    signed_meter = bool(getattr(request.module, "SIGNED_METER", False))
    root: Path = tmp_path_factory.mktemp("byzantine-signed" if signed_meter else "byzantine")
    anvil = start_anvil(root / "anvil.log", chain_id=CHAIN_ID, block_time_s=1)
    network = None
    try:
        deployment_path = root / "deployment.json"
        nodes = prepare_nodes(root, 4, deployment_path, anvil.url)
        _, seeded = deploy_network(anvil, nodes, deployment_path, signed_meter=signed_meter)
        network = ByzNetwork(anvil, nodes, deployment_path, seeded, root)
        for node in nodes[:3]:
            start_node_process(node)
        start_with_behaviour(nodes[3], "honest")
        trio.run(wait_until_serving, nodes)
        yield network
    finally:
        if network is not None:
            network.stop()
            for node in network.nodes:  # shown by pytest only when a test failed
                print(f"--- {node.log_path} (tail) ---\n" + node.log_path.read_text()[-2500:])
        else:
            anvil.stop()
