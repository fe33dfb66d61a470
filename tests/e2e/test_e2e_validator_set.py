"""The validator set follows the on-chain ValidatorSet, on a real network.

A candidate bonds the devnet's minimum stake (registerCandidate); the operators of 3 of the
4 validators sign a ValidatorSetUpdate that adds it as a fifth validator; the update lands on chain; a fifth `devsen node` starts, publishes its peer id,
catches up and joins consensus at the epoch boundary every node derived from the chain.
Then validator 4 is killed: 4 of 5 is a quorum only if the newcomer really votes, and the
network must keep committing.

Then 2 of the 5 (the dead validator 4 and validator 3) are replaced by two more newcomers
while charger events wait to be anchored: the contracts refuse quorums of the old set, so
the nodes re-collect them from the new set, and anchoring goes on. The removed validator 3
starts unbonding; withdrawing before the unbonding period ends is refused.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from typing import Any

import pytest
import test_e2e_network
import trio

from anchoring.audit import ChainReader
from anchoring.chain import ChainClient, ChainRevert, TransactionSender, connect
from anchoring.chain.deploy import fund_devnet_accounts
from consensus.signing import VALIDATOR_SET_UPDATE_TYPE
from devsen.config import HttpSection, KeysSection, NodeSection, OcppSection, P2PSection
from devsen.demo_charger import connect_demo_charger
from devsen.devnet import (
    DEMO_CHARGER,
    DEMO_PASSWORD,
    DEVNET_STAKE,
    DevnetNode,
    free_ports,
    register_devnet_candidate,
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


def _extra_node(network: Any, index: int) -> DevnetNode:
    """A node-`index`: keys, funds for its transactions, a config next to the others'."""
    nodes: list[DevnetNode] = network["nodes"]
    anvil, deployment = network["anvil"], network["deployment"]
    deployer = TransactionSender(connect(anvil.url), anvil.dev_keys[0])
    root = nodes[0].log_path.parent.parent
    data_dir = root / f"node-{index}"
    keys = init_keys(data_dir / "keys")
    fund_devnet_accounts(deployer, deployment, [to_checksum_hex(keys.validator.address)], eth_wei=10**19, tokens=0)
    p2p_port, ocpp_port, http_port = free_ports(3)
    # a candidate bonds the devnet's minimum stake first: the quorum cannot admit it otherwise
    register_devnet_candidate(deployer.w3, deployment, keys.validator.secret, keys.peer_id.to_bytes(),
                              f"ws://127.0.0.1:{ocpp_port}/ocpp")
    template = nodes[0].config
    config = dataclasses.replace(
        template,
        node=NodeSection(name=f"node-{index}", data_dir=str(data_dir)),
        keys=KeysSection(dir=str(data_dir / "keys")),
        p2p=P2PSection(listen=f"/ip4/127.0.0.1/tcp/{p2p_port}", bootstrap=template.p2p.bootstrap or
                       [f"{nodes[1].config.p2p.listen}/p2p/{nodes[1].keys.peer_id.to_base58()}"]),
        ocpp=OcppSection(port=ocpp_port),
        http=HttpSection(port=http_port),
    )
    return DevnetNode(index, config, keys, data_dir / "node.toml", data_dir / "node.log")


async def test_added_validator_joins_at_the_epoch_and_counts_for_the_quorum(network: Any) -> None:
    nodes: list[DevnetNode] = network["nodes"]
    anvil, deployment = network["anvil"], network["deployment"]
    w3 = connect(anvil.url)
    deployer = TransactionSender(w3, anvil.dev_keys[0])
    newcomer = _extra_node(network, 5)
    newcomer_keys = newcomer.keys

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
        network["node-5"] = newcomer  # the next test restarts it
    finally:
        stop_process(newcomer.process)
        print(f"--- {newcomer.log_path} (tail) ---\n" + newcomer.log_path.read_text()[-3000:])


async def _heartbeat_event(node: DevnetNode, charger: Any) -> str:
    """Send a Heartbeat through `node`; the committed event's id."""
    message_id = f"hb-{time.time_ns()}"
    with trio.fail_after(90):
        await charger.call("Heartbeat", {}, message_id=message_id)
    status, found = await _get(f"{node.http_url}/v1/chargers/{DEMO_CHARGER}/messages/{message_id}")
    assert status == 200, found
    return str(found["event_id"])


async def _anchored(node: DevnetNode, event_id: str, chain: ChainReader, timeout_s: float) -> None:
    with trio.fail_after(timeout_s):
        while True:
            status, document = await _get(f"{node.http_url}/v1/events/{event_id}/proof")
            if status == 200 and chain.batch(int(document["batch"]["batch_id"])) is not None:
                return
            await trio.sleep(0.5)


async def test_replacing_two_validators_while_events_wait_keeps_anchoring(network: Any) -> None:
    """Epoch 2 replaces validators 3 and 4 (dead) of {1, 2, 3, 4, 5} by newcomers 6 and 7, signed
    by 4 of the 5, right after a charger event was committed and before it is anchored. That
    event and one sent after the change must both be anchored (before: a quorum of the old set
    formed but not yet submitted was refused by the Anchor for good, and batch ids are
    sequential, so nothing was ever anchored again)."""
    if "node-5" not in network:
        pytest.skip("needs the fifth validator of the previous test")
    nodes: list[DevnetNode] = network["nodes"]
    anvil, deployment = network["anvil"], network["deployment"]
    w3 = connect(anvil.url)
    deployer = TransactionSender(w3, anvil.dev_keys[0])
    fifth: DevnetNode = network["node-5"]
    newcomers = [_extra_node(network, 6), _extra_node(network, 7)]
    kept = [nodes[0], nodes[1], fifth]
    new_set = sorted([to_checksum_hex(n.keys.validator.address) for n in [*kept, *newcomers]],
                     key=lambda a: bytes.fromhex(a[2:]))
    digest = typed_digest(deployment.domain("ValidatorSet"), VALIDATOR_SET_UPDATE_TYPE, [2, validators_hash(new_set)])
    signers = sorted((load_keys(n.config.keys_dir).validator for n in [*nodes, fifth] if n is not nodes[3]),
                     key=lambda k: k.address)
    chain = ChainReader(w3, bytes.fromhex(deployment.anchor[2:]))
    try:
        start_node_process(fifth)  # restarted: it catches up from its own store
        await wait_until_serving([fifth])
        async with connect_demo_charger(nodes[0].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
            before = await _heartbeat_event(nodes[0], charger)
            ChainClient(w3, deployment, deployer).update_validators(2, new_set, [k.sign(digest) for k in signers])
            changed_at = time.monotonic()
            for node in newcomers:  # a node starts only once it is in the on-chain set
                start_node_process(node)
            await wait_until_serving(newcomers)
            with trio.fail_after(90):  # the old nodes switch at the block that names the change
                for node in kept:
                    while True:
                        status, body = await _get(f"{node.http_url}/v1/status")
                        if status == 200 and body.get("epoch") == 2:
                            break
                        await trio.sleep(0.5)
            switched_at = time.monotonic()
            after = await _heartbeat_event(nodes[0], charger)
        await _anchored(nodes[0], before, chain, 120)
        first_anchor_s = time.monotonic() - changed_at
        await _anchored(nodes[0], after, chain, 120)
        both_s = time.monotonic() - changed_at
        status, body = await _get(f"{nodes[0].http_url}/v1/status")
        assert status == 200 and "conflict" not in body["submitter"]["done"]
        # Validator 3 left the set: it starts unbonding; its stake cannot leave before the period.
        leaver = ChainClient(w3, deployment, TransactionSender(w3, load_keys(nodes[2].config.keys_dir).validator.secret))
        leaver.begin_unbonding()
        with pytest.raises(ChainRevert) as refused:
            leaver.withdraw_stake()
        assert refused.value.name == "UnbondingNotOver"
        assert leaver.stake(to_checksum_hex(nodes[2].keys.validator.address), "latest").stake == DEVNET_STAKE
        print(f"\nset change -> nodes on epoch 2: {switched_at - changed_at:.1f} s; -> the event committed before "
              f"the change anchored: {first_anchor_s:.1f} s; -> the one after: {both_s:.1f} s; node-1 app "
              f"counters {body['app']}; submitter {body['submitter']}")
    finally:
        for node in [fifth, *newcomers]:
            stop_process(node.process)
            print(f"--- {node.log_path} (tail) ---\n" + node.log_path.read_text()[-3000:])
