"""Anchoring against the real contracts: Python <-> Solidity Merkle vectors, and the
submitter bringing quorum-signed batches on chain (in-process py-evm chain and anvil)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import trio
from anchoring_world import KEYS, Net
from web3 import Web3

from anchoring.attestations import AnchorBatch, Settlement, SettlementBatch, attest
from anchoring.batches import AttestationBook, submitter_order
from anchoring.chain import ChainClient, TransactionSender, connect
from anchoring.chain.anvil import running_anvil
from anchoring.chain.client import AnchoredBatch
from anchoring.merkle import ZERO_ROOT, MerkleTree, leaf_hash
from anchoring.onchain import OnChain
from anchoring.submitter import (
    SESSION_SETTLED,
    JobStore,
    Submitter,
    SubmitterConfig,
    subject_to_json,
)
from primitives.eip712 import SigningKey

VECTORS = Path(__file__).parents[1] / "vectors" / "merkle_v1.json"


@pytest.fixture(scope="module")
def tester_net() -> Net:
    return Net(connect("tester"))


@pytest.fixture
def anvil_net(tmp_path: Path) -> Iterator[Net]:
    with running_anvil(tmp_path / "anvil.log") as anvil:
        yield Net(connect(anvil.url))


@pytest.mark.parametrize("chain", ["tester", "anvil"])
def test_solidity_verify_inclusion_agrees_with_python_vectors(chain: str, request: pytest.FixtureRequest) -> None:
    net: Net = request.getfixturevalue("tester_net" if chain == "tester" else "anvil_net")
    client = net.client(KEYS[0])
    cases = json.loads(VECTORS.read_text())["cases"]
    first_batch = client.next_batch_id("latest")
    for offset, case in enumerate(cases):
        batch_id = first_batch + offset
        height = client.next_first_height("latest")
        batch = AnchorBatch(batch_id, bytes.fromhex(case["root"][2:]), height, height, case["leaf_count"])
        quorum = net.quorum(batch)
        client.submit_anchor_batch(batch.batch_id, batch.root, batch.first_height, batch.last_height,
                                   batch.event_count, list(quorum.signatures))
    assert client.next_batch_id("latest") == first_batch + len(cases)
    checked = 0
    for offset, case in enumerate(cases):
        batch_id = first_batch + offset
        for index, entry in enumerate(case["leaves"]):
            event_id = bytes.fromhex(entry["event_id"][2:])
            proof = [bytes.fromhex(s[2:]) for s in entry["proof"]]
            directions = entry["directions"]
            assert client.verify_inclusion(batch_id, event_id, proof, directions, "latest")
            checked += 1
            # tampered: other batch, flipped direction, leaf posing as event id, extra direction bit
            assert not client.verify_inclusion(batch_id - 1, event_id, proof, directions, "latest")
            if proof:
                assert not client.verify_inclusion(batch_id, event_id, proof, directions ^ 1, "latest")
            assert not client.verify_inclusion(batch_id, leaf_hash(event_id), proof, directions, "latest")
            assert not client.verify_inclusion(batch_id, event_id, proof, directions | 1 << len(proof),
                                               "latest")
            if index == 0 and len(case["leaves"]) >= 2:
                # second preimage: the parent of leaves 0 and 1 presented as an event id
                tree = MerkleTree([bytes.fromhex(e["event_id"][2:]) for e in case["leaves"]])
                upper = tree.proof(0)
                parent = bytes.fromhex(entry["leaf"][2:])
                parent = Web3.keccak(b"\x01" + parent + upper.siblings[0])
                assert not client.verify_inclusion(batch_id, bytes(parent), list(upper.siblings[1:]),
                                                   upper.directions >> 1, "latest")
    assert checked == sum(c["leaf_count"] for c in cases) == 32
    empty = first_batch + [c["leaf_count"] for c in cases].index(0)
    assert not client.verify_inclusion(empty, ZERO_ROOT, [], 0, "latest")


def batch_for(client: ChainClient, event_ids: list[bytes]) -> AnchorBatch:
    tree = MerkleTree(event_ids)
    height = client.next_first_height("latest")
    return AnchorBatch(client.next_batch_id("latest"), tree.root, height, height + 9, len(tree))


async def drive(net: Net, submitters: list[Submitter], until: Any, seconds: float) -> None:
    """Run the submitters, mining a block every 50 ms, until `until()` holds."""
    async with trio.open_nursery() as nursery:
        for submitter in submitters:
            nursery.start_soon(submitter.run)
        with trio.fail_after(seconds):
            while not until():
                await trio.sleep(0.05)
                await submitters[0].chain.run_sync(net.mine, 1)  # type: ignore[attr-defined]
        nursery.cancel_scope.cancel()


FAST = SubmitterConfig(confirmations=2, turn_timeout_s=1.0, poll_interval_s=0.05, rpc_timeout_s=10,
                       backoff_initial_s=0.05, backoff_max_s=0.4)


def make_submitters(net: Net, keys: list[SigningKey], tmp_path: Path) -> list[Submitter]:
    return [Submitter(OnChain(net.client(k)), JobStore(tmp_path / f"{k.address.hex()}.sqlite"), k.address,
                      [v.address for v in KEYS], FAST) for k in keys]


async def test_submitters_anchor_once_on_the_in_process_chain(tester_net: Net, tmp_path: Path) -> None:
    net = tester_net
    reader = net.client(KEYS[0])
    batch = batch_for(reader, [hashlib.sha256(b"e%d" % i).digest() for i in range(100)])
    quorum = net.quorum(batch)
    submitters = make_submitters(net, KEYS, tmp_path)
    # one shared OnChain would serialise best, but separate ones must also be safe: share the limiter
    for s in submitters[1:]:
        s.chain.limiter = submitters[0].chain.limiter  # type: ignore[attr-defined]
    for s in submitters:
        await s.add(quorum)
    await drive(net, submitters, lambda: all(not s.pending() for s in submitters), 30)
    assert cast(AnchoredBatch, reader.anchored_batch(batch.batch_id, "latest")).root == batch.root
    assert sum(s.status()["sends"] for s in submitters) == 1
    first = submitter_order([k.address for k in KEYS], batch)[0]
    assert [s.status()["sends"] for s in submitters if s.me == first] == [1]
    assert all(s.status()["done"] == {"anchored": 1} for s in submitters)


async def test_settlement_batch_is_settled_once_in_one_transaction(tester_net: Net, tmp_path: Path) -> None:
    net = tester_net
    session_id = net.open_escrow_session(deposit=5_000)
    other = net.open_escrow_session(deposit=5_000, name="ESCROW-2")
    settlement = SettlementBatch.of(0, [Settlement(session_id, 7_250, 3_100), Settlement(other, 10, 1)])
    book = AttestationBook([k.address for k in KEYS], net.anchor_domain, net.deployment.domain("Escrow"))
    book.expect(settlement)
    quorums = [book.on_committed(attest(settlement, k, net.deployment.domain("Escrow")), 9) for k in KEYS[:3]]
    assert quorums[-1] is not None
    submitters = make_submitters(net, KEYS, tmp_path)
    for s in submitters[1:]:
        s.chain.limiter = submitters[0].chain.limiter  # type: ignore[attr-defined]
    for s in submitters:
        await s.add(quorums[-1])
    await drive(net, submitters, lambda: all(not s.pending() for s in submitters), 30)
    session = net.client(KEYS[0]).session(session_id, "latest")
    assert session is not None and (session.energy_wh, session.settled_amount) == (7_250, 3_100)
    assert int(session.status) == SESSION_SETTLED
    second = net.client(KEYS[0]).session(other, "latest")
    assert second is not None and (second.energy_wh, second.settled_amount) == (10, 1)
    assert sum(s.status()["sends"] for s in submitters) == 1  # both sessions in one settleBatch
    assert all(s.status()["done"] == {"settled": 2} for s in submitters)


async def test_dead_submitter_is_replaced_on_anvil(anvil_net: Net, tmp_path: Path) -> None:
    net = anvil_net
    reader = net.client(KEYS[0])
    batch = batch_for(reader, [hashlib.sha256(b"d%d" % i).digest() for i in range(10)])
    first = submitter_order([k.address for k in KEYS], batch)[0]
    alive = make_submitters(net, [k for k in KEYS if k.address != first], tmp_path)
    quorum = net.quorum(batch)
    for s in alive:
        await s.add(quorum)
    started = trio.current_time()
    await drive(net, alive, lambda: all(not s.pending() for s in alive), 30)
    assert trio.current_time() - started >= FAST.turn_timeout_s
    assert cast(AnchoredBatch, reader.anchored_batch(batch.batch_id, "latest")).root == batch.root
    second = submitter_order([k.address for k in KEYS], batch)[1]
    assert [s.status()["sends"] for s in alive if s.me == second] == [1]


async def test_reorg_before_depth_is_resubmitted_on_anvil(anvil_net: Net, tmp_path: Path) -> None:
    net = anvil_net
    reader = net.client(KEYS[0])
    batch = batch_for(reader, [hashlib.sha256(b"r%d" % i).digest() for i in range(10)])
    first = next(k for k in KEYS if k.address == submitter_order([k.address for k in KEYS], batch)[0])
    (node,) = make_submitters(net, [first], tmp_path)
    node.config = SubmitterConfig(confirmations=5, turn_timeout_s=0.5, poll_interval_s=0.05, rpc_timeout_s=5,
                                  send_timeout_s=5, backoff_initial_s=0.05, backoff_max_s=0.4)
    snapshot = net.w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    await node.add(net.quorum(batch))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.run)
        with trio.fail_after(20):
            while reader.next_batch_id("latest") <= batch.batch_id:
                await trio.sleep(0.05)
        assert node.pending(), "not yet 5 blocks deep"
        # the chain drops the block with the batch (a reorg below the confirmation depth)
        await node.chain.run_sync(net.w3.provider.make_request, "evm_revert", [snapshot])  # type: ignore
        assert reader.next_batch_id("latest") == batch.batch_id
        with trio.fail_after(30):
            while node.pending():
                await trio.sleep(0.05)
                await node.chain.run_sync(net.mine, 1)  # type: ignore[attr-defined]
        nursery.cancel_scope.cancel()
    # re-sent after the reorg; a send whose nonce was orphaned by the revert may time out first
    assert 2 <= node.status()["sends"] <= 3
    assert cast(AnchoredBatch, reader.anchored_batch(batch.batch_id, "latest")).root == batch.root


class TcpProxy:
    """A TCP relay to anvil that can be taken down (listener and connections closed) and
    brought back on the same port: the chain RPC failing and recovering, as seen by a node."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._scope: trio.CancelScope | None = None

    async def up(self, nursery: trio.Nursery) -> None:
        await nursery.start(self._serve)

    def down(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    async def _serve(self, task_status: Any=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()
            await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", self.upstream_port) as upstream:
            async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                while data := await source.receive_some(65536):
                    await sink.send_all(data)
                await sink.send_eof()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, upstream)
                nursery.start_soon(pump, upstream, client)


async def test_rpc_outage_during_submission_lands_the_batch_once(tmp_path: Path) -> None:
    with running_anvil(tmp_path / "anvil.log") as anvil:
        net = Net(connect(anvil.url))
        reader = net.client(KEYS[0])
        batch = batch_for(reader, [hashlib.sha256(b"o%d" % i).digest() for i in range(10)])
        first = next(k for k in KEYS if k.address == submitter_order([k.address for k in KEYS], batch)[0])
        proxy = TcpProxy(anvil.port)
        async with trio.open_nursery() as nursery:
            await proxy.up(nursery)
            behind_proxy = connect(f"http://127.0.0.1:{proxy.port}", timeout_s=2)
            client = ChainClient(behind_proxy, net.deployment,
                                 TransactionSender(behind_proxy, first.secret, receipt_timeout_s=2.0))
            node = Submitter(OnChain(client), JobStore(tmp_path / "jobs.sqlite"), first.address,
                             [k.address for k in KEYS], FAST)
            proxy.down()
            await node.add(net.quorum(batch))
            nursery.start_soon(node.run)
            await trio.sleep(4)  # each failure is the chain client's own 5 tries (~1.5 s), then backoff
            assert node.status()["rpc_failures"] >= 2 and node.status()["sends"] == 0
            await proxy.up(nursery)  # the RPC comes back on the same address
            with trio.fail_after(30):
                while node.pending():
                    await trio.sleep(0.05)
                    await node.chain.run_sync(net.mine, 1)  # type: ignore[attr-defined]
            nursery.cancel_scope.cancel()
        logs = reader.contracts["Anchor"].events.BatchAnchored().get_logs(from_block=0)
        assert [log["args"]["batchId"] for log in logs].count(batch.batch_id) == 1
        assert node.status()["sends"] == 1 and node.status()["done"] == {"anchored": 1}


CHILD_SUBMITTER = """
import json, logging, sys, trio
from anchoring.batches import Quorum
from anchoring.chain import ChainClient, Deployment, TransactionSender, connect
from anchoring.onchain import OnChain
from anchoring.submitter import ANCHOR, JobStore, Submitter, SubmitterConfig, subject_from_json
from primitives.eip712 import SigningKey
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
spec = json.load(open(sys.argv[1]))
w3 = connect(spec["rpc"])
key = SigningKey(bytes.fromhex(spec["key"]))
client = ChainClient(w3, Deployment.from_json(spec["deployment"]), TransactionSender(w3, key.secret))
quorum = Quorum(subject_from_json(ANCHOR, spec["batch"]), tuple(bytes.fromhex(s) for s in spec["signers"]),
                tuple(bytes.fromhex(s) for s in spec["signatures"]), 0)
config = SubmitterConfig(confirmations=2, turn_timeout_s=1.0, poll_interval_s=0.05, send_timeout_s=60)
node = Submitter(OnChain(client), JobStore(spec["jobs"]), key.address, [bytes.fromhex(v) for v in spec["validators"]],
                 config)
async def main():
    await node.add(quorum)
    await node.run()
trio.run(main)
"""


def spawn_child_submitter(spec: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """A designated submitter in its own process (output to a file, killed by pid by the test)."""
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-c", CHILD_SUBMITTER, str(spec)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


async def test_submitter_killed_mid_submission_is_replaced_and_resumes(tmp_path: Path) -> None:
    with running_anvil(tmp_path / "anvil.log") as anvil:
        net = Net(connect(anvil.url))
        reader = net.client(KEYS[0])
        batch = batch_for(reader, [hashlib.sha256(b"k%d" % i).digest() for i in range(10)])
        order = submitter_order([k.address for k in KEYS], batch)
        first = next(k for k in KEYS if k.address == order[0])
        quorum = net.quorum(batch)
        spec = tmp_path / "child.json"
        spec.write_text(json.dumps({
            "rpc": anvil.url, "key": first.secret.hex(), "deployment": net.deployment.to_json(),
            "batch": subject_to_json(batch), "signers": [s.hex() for s in quorum.signers],
            "signatures": [s.hex() for s in quorum.signatures], "jobs": str(tmp_path / "first.sqlite"),
            "validators": [k.address.hex() for k in KEYS]}))
        rpc = net.w3.provider.make_request
        rpc("evm_setAutomine", [False])  # type: ignore[arg-type]
        child = spawn_child_submitter(spec, tmp_path / "child.log")
        try:
            with trio.fail_after(30):
                while not (pending := rpc("txpool_content", [])["result"]["pending"]):  # type: ignore[arg-type]
                    await trio.sleep(0.05)
        finally:
            child.kill()  # by pid: the submitter dies after broadcasting, before its receipt
            child.wait(timeout=10)
        (txs,) = pending.values()
        (tx,) = txs.values()
        rpc("anvil_dropTransaction", [tx["hash"]])  # type: ignore[arg-type]  # its tx never propagated
        rpc("evm_setAutomine", [True])  # type: ignore[arg-type]
        others = make_submitters(net, [k for k in KEYS if k.address != first.address], tmp_path)
        for s in others:
            await s.add(quorum)
        await drive(net, others, lambda: all(not s.pending() for s in others), 30)
        second = next(s for s in others if s.me == order[1])
        assert second.status()["sends"] == 1
        # the killed submitter restarts from its persisted job and finds the batch anchored
        restarted = Submitter(OnChain(net.client(first)), JobStore(tmp_path / "first.sqlite"), first.address,
                              [k.address for k in KEYS], FAST)
        assert [j.key for j in restarted.pending()] == [str(batch.batch_id)]
        await restarted.run_round()
        assert restarted.status()["done"] == {"anchored": 1} and restarted.status()["sends"] == 0
        logs = reader.contracts["Anchor"].events.BatchAnchored().get_logs(from_block=0)
        assert [log["args"]["batchId"] for log in logs].count(batch.batch_id) == 1
