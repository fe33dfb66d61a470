"""Real node processes on 127.0.0.1: agreement, intruders, crash and catch-up.

One 4-validator network (nodes 1-3 know only node 0's address) is shared by the tests of
this module, in file order; the last test kills and restarts a node. Every process is
started by the harness and killed by pid at the end.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devsen.testnode import LocalNetwork, NodeProcess
from p2p.keys import init_keys


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    net = LocalNetwork.start(tmp_path_factory.mktemp("p2pnet"), 4)
    try:
        yield net
    finally:
        net.stop()


def _payloads(tag: str, count: int) -> list[str]:
    return [f"{tag}-{i:05d}".encode().hex() for i in range(count)]


def _submit(node: NodeProcess, tag: str, count: int, timeout_s: float = 40.0) -> list[Any]:
    reply = node.request({"cmd": "submit", "id": tag, "payloads": _payloads(tag, count)}, "submitted", timeout_s)
    results: list[Any] = reply["results"]
    return results


def _chain(node: NodeProcess, to_height: int) -> list[str]:
    hashes: list[str] = node.request({"cmd": "chain", "from": 1, "to": to_height}, "chain")["hashes"]
    return hashes


def _drops(node: NodeProcess) -> dict[str, int]:
    drops: dict[str, int] = node.request({"cmd": "stats"}, "stats")["p2p"]["drops"]
    return drops


def _assert_same_chain(nodes: list[NodeProcess]) -> int:
    height = min(n.committed_height() for n in nodes)
    chains = [_chain(n, height) for n in nodes]
    assert all(h is not None for h in chains[0])
    assert all(c == chains[0] for c in chains), "nodes disagree on the chain"
    return height


def test_four_nodes_from_one_bootstrap_commit_submitted_payloads_and_agree(network: LocalNetwork) -> None:
    results_a = _submit(network.nodes[1], "a", 40)
    results_b = _submit(network.nodes[3], "b", 40)
    for result in results_a + results_b:
        assert isinstance(result[0], int), result  # [height, latency_ms]
    top = max(r[0] for r in results_a + results_b)
    network.wait_all_height(top, 20)
    height = _assert_same_chain(network.nodes)
    assert height >= top
    # every node holds every link (peer exchange filled in what bootstrap did not give)
    for node in network.nodes:
        assert node.request({"cmd": "stats"}, "stats")["p2p"]["linked_validators"] == 3
    # each payload is in exactly one committed block on every node (count them on one)
    committed = sum(c["payloads"] for c in network.nodes[0].commits)
    assert committed == 80


def test_non_validator_publisher_is_ignored_and_does_not_slow_validators(network: LocalNetwork, tmp_path: Path) -> None:
    baseline = [r[1] for r in _submit(network.nodes[2], "base", 30)]
    intruder_keys = init_keys(tmp_path / "intruder-keys")
    intruder_config = dict(network.nodes[0].config)
    intruder_config.update(
        # it believes it is a validator, so its own pubsub lets its messages out
        validators=network.nodes[0].config["validators"] + [
            {"address": intruder_keys.validator_address.hex(), "peer_id": intruder_keys.peer_id.to_base58()}],
        mode="p2p", key_dir=str(tmp_path / "intruder-keys"), data_dir=str(tmp_path / "intruder"),
        listen="/ip4/127.0.0.1/tcp/0", bootstrap=network.nodes[0].ready["addrs"], batch_max_count=1,
        batch_max_delay_s=0.0,
    )
    intruder = NodeProcess("intruder", intruder_config, tmp_path)
    try:
        intruder.start()
        time.sleep(2.0)  # connects, joins the events mesh
        intruder.send({"cmd": "flood", "via": "gossip", "count": 300, "size": 200})
        during = [r for r in _submit(network.nodes[2], "during", 30)]
        intruder.wait_for("flooded", 30)
    finally:
        intruder.stop()
    assert all(isinstance(r[0], int) for r in during)
    drops = [_drops(node) for node in network.nodes]
    events_drops = sum(v for d in drops for k, v in d.items() if k.endswith("/events/1/not_validator"))
    assert events_drops > 0, drops
    # nothing of the intruder reached a validator's mempool or chain
    for node in network.nodes:
        assert not any("intruder" in json.dumps(c) for c in node.commits)
    # the flood must not slow commits down noticeably (slack for a shared, busy machine)
    assert statistics.median(r[1] for r in during) < 3 * statistics.median(baseline) + 1000, (baseline, during)


def test_wrong_network_and_foreign_keys_cannot_join(network: LocalNetwork, tmp_path: Path) -> None:
    base = network.nodes[0].config
    foreign_keys = init_keys(tmp_path / "foreign-keys")
    strangers = []
    # Foreign keys, right network: not in the validator set.
    foreign = dict(base, key_dir=str(tmp_path / "foreign-keys"), data_dir=str(tmp_path / "foreign"),
                   listen="/ip4/127.0.0.1/tcp/0", bootstrap=network.nodes[0].ready["addrs"])
    # Another network id (other ValidatorSet contract) that believes it is a validator.
    wrong_keys = init_keys(tmp_path / "wrong-keys")
    wrong = dict(base, key_dir=str(tmp_path / "wrong-keys"), data_dir=str(tmp_path / "wrong"),
                 listen="/ip4/127.0.0.1/tcp/0", bootstrap=network.nodes[0].ready["addrs"],
                 verifying_contract="22" * 20,
                 validators=base["validators"] + [{"address": wrong_keys.validator_address.hex(),
                                                   "peer_id": wrong_keys.peer_id.to_base58()}])
    assert foreign_keys.validator_address.hex() not in json.dumps(base["validators"])
    try:
        for name, config in (("foreign", foreign), ("wrongnet", wrong)):
            node = NodeProcess(name, config, tmp_path)
            strangers.append(node)
            node.start()
        before = network.nodes[0].committed_height()
        for result in _submit(network.nodes[1], "strangers", 20):
            assert isinstance(result[0], int), result
        time.sleep(3.0)  # several retransmit periods of the strangers
        assert network.nodes[0].committed_height() > before
        wrong_node, foreign_node = strangers[1], strangers[0]
        assert wrong_node.commits == [], "the wrong network's node committed blocks"
        assert wrong_node.request({"cmd": "stats"}, "stats")["height"] == 1
        # Right network, foreign keys: like a full node it may follow by block sync (validators
        # serve certified blocks to outsiders, bounded), but only the validators' own blocks.
        ours = {(c["height"], c["hash"]) for c in network.nodes[0].commits}
        assert all((c["height"], c["hash"]) in ours for c in foreign_node.commits), foreign_node.commits
        # The wrong network shows itself in its sync request: a validator that cannot link asks
        # the validators it knows directly after at most 10 s (not only when a link came up).
        deadline = time.monotonic() + 30
        while not ((drops := _stranger_drops(network))["wrong_network"] > 0 and drops["not_validator"] > 0) \
                and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        for node in strangers:
            node.stop()
    assert drops["wrong_network"] > 0 and drops["not_validator"] > 0, dict(drops)


def _stranger_drops(network: LocalNetwork) -> defaultdict[str, int]:
    """The validators' drop counters summed by reason (the last path segment)."""
    drops: defaultdict[str, int] = defaultdict(int)
    for validator in network.nodes:
        for key, value in _drops(validator).items():
            drops[key.rsplit("/", 1)[1]] += value
    return drops


def _signed(node: NodeProcess) -> list[dict[str, Any]]:
    path = Path(node.config["data_dir"]) / "signed.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_sigkill_one_node_others_continue_and_it_catches_up_without_conflicts(network: LocalNetwork) -> None:
    victim, submitter = network.nodes[2], network.nodes[1]
    # payloads are flowing (submitted at two nodes, one of them the victim) when it dies
    submitter.send({"cmd": "load", "id": "flow", "rate": 40, "seconds": 3})
    victim.send({"cmd": "load", "id": "lost", "rate": 40, "seconds": 3})
    time.sleep(1.0)
    victim.kill()
    killed_at = max(n.committed_height() for n in network.nodes)
    flow = submitter.wait_for("loaded", 40)["results"]
    assert all(isinstance(r[0], int) for r in flow), [r for r in flow if not isinstance(r[0], int)][:3]
    for i in range(2):
        results = _submit(submitter, f"down{i}", 15)
        assert all(isinstance(r[0], int) for r in results), results
    survivors = [n for n in network.nodes if n is not victim]
    top = max(n.committed_height() for n in survivors)
    assert top >= killed_at + 2, "the three survivors kept committing"
    victim.commits.clear()
    victim.start()
    results = _submit(submitter, "after", 10)
    top = max(r[0] for r in results)
    network.wait_all_height(top, 30)
    height = _assert_same_chain(network.nodes)
    assert height >= top
    # Nothing conflicting signed: one hash per (height, round, kind) across the crash, and
    # every own precommit in a block's commit round names that block.
    committed = dict(enumerate(_chain(network.nodes[0], height), start=1))
    seen: dict[tuple[Any, ...], str] = {}
    for record in _signed(victim):
        slot = (record["height"], record["round"], record["kind"])
        assert seen.setdefault(slot, record["hash"]) == record["hash"], f"conflicting signatures at {slot}"
    rounds = {c["height"]: c["round"] for c in network.nodes[0].commits}
    for (h, r, kind), block_hash in seen.items():
        if kind == "vote2" and block_hash != "00" * 32 and rounds.get(h) == r and h in committed:
            assert block_hash == committed[h], f"precommit at {h}/{r} for another block"


@pytest.mark.slow
def test_bootstrap_node_crash_under_load_restart_and_full_agreement(tmp_path: Path) -> None:
    """Kill node 0 (everyone's only bootstrap address) under load, restart it twice."""
    net = LocalNetwork.start(tmp_path, 4)
    try:
        net.wait_all_height(1, 30)
        loaders = net.nodes[1:]
        for node in loaders:
            node.send({"cmd": "load", "id": node.name, "rate": 30, "seconds": 12})
        for _ in range(2):
            time.sleep(2.0)
            net.nodes[0].kill()
            time.sleep(2.0)
            net.nodes[0].commits.clear()
            net.nodes[0].start()
        for node in loaders:
            results = node.wait_for("loaded", 90)["results"]
            assert all(isinstance(r[0], int) for r in results), [r for r in results if not isinstance(r[0], int)][:3]
        top = max(n.committed_height() for n in loaders)
        net.wait_all_height(top, 40)
        _assert_same_chain(net.nodes)
        seen: dict[tuple[Any, ...], str] = {}
        for record in _signed(net.nodes[0]):
            slot = (record["height"], record["round"], record["kind"])
            assert seen.setdefault(slot, record["hash"]) == record["hash"], f"conflicting signatures at {slot}"
    finally:
        net.stop()
