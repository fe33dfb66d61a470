"""The e2e start-up shared by modules: anvil, the contracts, N `devsen node` processes."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

from anchoring.chain.anvil import start_anvil
from devsen.config import KeysSection, NodeSection
from devsen.devnet import (
    CHAIN_ID,
    DevnetNode,
    deploy_network,
    free_ports,
    prepare_nodes,
    start_node_process,
    stop_process,
    wait_until_serving,
)
from p2p.keys import init_keys, load_identity


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


def full_node_beside(validators: list[Any], name: str = "full-1", *, accept_chargers: bool = False,
                     state_sync: bool = True) -> DevnetNode:
    """A `role = "full"` node beside the devnet: a validator's config with its own directory,
    ports and libp2p identity, bootstrapped to the validators. With `accept_chargers` it has an
    operator key too (keys/validator_secp256k1.key) and opens its OCPP port; else no key file."""
    template = validators[0]
    data_dir = Path(template.config.node.data_dir).parent / name
    keys = init_keys(data_dir / "keys") if accept_chargers else load_identity(data_dir / "keys")
    p2p_port, ocpp_port, http_port = free_ports(3)
    config = dataclasses.replace(
        template.config,
        node=NodeSection(name=name, data_dir=str(data_dir), role="full", accept_chargers=accept_chargers),
        keys=KeysSection(dir=str(data_dir / "keys")),
        p2p=dataclasses.replace(template.config.p2p, listen=f"/ip4/127.0.0.1/tcp/{p2p_port}", state_sync=state_sync,
                                bootstrap=[f"{n.config.p2p.listen}/p2p/{n.keys.peer_id.to_base58()}"
                                           for n in validators]),
        ocpp=dataclasses.replace(template.config.ocpp, port=ocpp_port),
        http=dataclasses.replace(template.config.http, port=http_port))
    return DevnetNode(len(validators) + 1, config, keys, data_dir / "node.toml", data_dir / "node.log")
