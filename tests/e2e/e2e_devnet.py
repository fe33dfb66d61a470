"""The e2e start-up shared by modules: anvil, the contracts, N `devsen node` processes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

from anchoring.chain.anvil import start_anvil
from devsen.devnet import (
    CHAIN_ID,
    deploy_network,
    prepare_nodes,
    start_node_process,
    stop_process,
    wait_until_serving,
)


@contextlib.contextmanager
def running_devnet(root: Path, count: int = 4, **deploy: Any) -> Iterator[dict[str, Any]]:
    """{"anvil", "nodes", "deployment_path", "deployment", "seeded"} of a running devnet; stops
    every process it started (by pid) and prints the nodes' log tails on the way out."""
    anvil = start_anvil(root / "anvil.log", chain_id=CHAIN_ID, block_time_s=1)
    nodes = []
    try:
        deployment_path = root / "deployment.json"
        nodes = prepare_nodes(root, count, deployment_path, anvil.url)
        deployment, seeded = deploy_network(anvil, nodes, deployment_path, **deploy)
        for node in nodes:
            start_node_process(node)
        trio.run(wait_until_serving, nodes)
        yield {"anvil": anvil, "nodes": nodes, "deployment_path": deployment_path, "deployment": deployment,
               "seeded": seeded}
    finally:
        for node in nodes:
            stop_process(node.process)
        anvil.stop()
        for node in nodes:
            print(f"--- {node.log_path} (tail) ---\n" + node.log_path.read_text()[-3000:])
