"""The validator set follows the on-chain ValidatorSet, on a real network.

The operators of 3 of the 4 validators sign a ValidatorSetUpdate that adds a fifth
validator; the update lands on chain; a fifth `devsen node` starts, publishes its peer id,
catches up and joins consensus at the epoch boundary every node derived from the chain.
Then validator 4 is killed: 4 of 5 is a quorum only if the newcomer really votes, and the
network must keep committing.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from typing import Any

import test_e2e_network
import trio

from anchoring.chain import ChainClient, TransactionSender, connect
from anchoring.chain.deploy import fund_devnet_accounts
from consensus.signing import VALIDATOR_SET_UPDATE_TYPE
from devsen.config import HttpSection, KeysSection, NodeSection, OcppSection, P2PSection
from devsen.demo_charger import connect_demo_charger
from devsen.devnet import (
    DEMO_CHARGER,
    DEMO_PASSWORD,
    DevnetNode,
    free_ports,
    start_node_process,
    stop_process,
    wait_until_serving,
)
from p2p.keys import init_keys, load_keys
from primitives.eip712 import to_checksum_hex, typed_digest
from primitives.hashing import validators_hash

network = test_e2e_network.network  # the devnet fixture: one network for this module
_get = test_e2e_network._get


async def _height(node: DevnetNode) -> int:
    status, body = await _get(f"{node.http_url}/v1/status")
    return int(body["committed_height"]) if status == 200 else -1


async def test_added_validator_joins_at_the_epoch_and_counts_for_the_quorum(network: Any) -> None:
    nodes: list[DevnetNode] = network["nodes"]
    anvil, deployment = network["anvil"], network["deployment"]
    w3 = connect(anvil.url)
    deployer = TransactionSender(w3, anvil.dev_keys[0])

    # A fifth node: keys, funds for its transactions, a config next to the others'.
    root = nodes[0].log_path.parent.parent
    data_dir = root / "node-5"
    newcomer_keys = init_keys(data_dir / "keys")
    fund_devnet_accounts(deployer, deployment, [to_checksum_hex(newcomer_keys.validator.address)],
                         eth_wei=10**19, tokens=0)
    p2p_port, ocpp_port, http_port = free_ports(3)
    template = nodes[0].config
    config = dataclasses.replace(
        template,
        node=NodeSection(name="node-5", data_dir=str(data_dir)),
        keys=KeysSection(dir=str(data_dir / "keys")),
        p2p=P2PSection(listen=f"/ip4/127.0.0.1/tcp/{p2p_port}", bootstrap=template.p2p.bootstrap or
                       [f"{nodes[1].config.p2p.listen}/p2p/{nodes[1].keys.peer_id.to_base58()}"]),
        ocpp=OcppSection(port=ocpp_port),
        http=HttpSection(port=http_port),
    )
    newcomer = DevnetNode(5, config, newcomer_keys, data_dir / "node.toml", data_dir / "node.log")

    # 3 of the 4 current validators sign the new set; anyone may submit it.
    new_set = sorted([to_checksum_hex(n.keys.validator.address) for n in nodes]
                     + [to_checksum_hex(newcomer_keys.validator.address)],
                     key=lambda a: bytes.fromhex(a[2:]))
    digest = typed_digest(deployment.domain("ValidatorSet"), VALIDATOR_SET_UPDATE_TYPE,
                          [1, validators_hash(new_set)])
    signers = sorted((load_keys(n.config.keys_dir).validator for n in nodes[:3]), key=lambda k: k.address)
    ChainClient(w3, deployment, deployer).update_validators(1, new_set, [k.sign(digest) for k in signers])

    try:
        start_node_process(newcomer)
        await wait_until_serving([newcomer])
        with trio.fail_after(90):
            while await _height(newcomer) < await _height(nodes[0]) or await _height(newcomer) < 1:
                await trio.sleep(0.5)
        # Every old node has switched: its status shows the new epoch's set size.
        with trio.fail_after(60):
            for node in nodes:
                while True:
                    status, body = await _get(f"{node.http_url}/v1/status")
                    if status == 200 and body.get("validators") == len(new_set):
                        break
                    await trio.sleep(0.5)

        # Kill validator 4: only the newcomer's votes make 4 of 5.
        victim = nodes[3]
        assert victim.process is not None
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(timeout=10)
        before = await _height(nodes[0])
        async with connect_demo_charger(nodes[0].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
            with trio.fail_after(90):
                reply = await charger.call("Heartbeat", {}, message_id=f"after-epoch-{time.time_ns()}")
        assert "currentTime" in reply
        assert await _height(nodes[0]) > before
        with trio.fail_after(60):
            while await _height(newcomer) < await _height(nodes[0]):
                await trio.sleep(0.5)
    finally:
        stop_process(newcomer.process)
        print(f"--- {newcomer.log_path} (tail) ---\n" + newcomer.log_path.read_text()[-3000:])
