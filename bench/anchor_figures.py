"""Anchoring figures on anvil (cancun): gas per anchor and per anchored event, proof size,
proof and tree timings, and the time from a quorum to a batch anchored at depth.

- Batch sizes 1e2..1e5: build the Merkle tree, anchor its root with 3-of-4 signatures,
  read gas from the receipt. The contract stores only the root, so gas is flat in the batch
  size and gas per event falls as 1/N.
- Proofs: size in bytes (on-chain calldata: 32 per sibling + 32 for directions, and the
  JSON document of AUDIT.md), local verification time (mean over 2,000 random leaves),
  and the gas of the contract's `verifyInclusion` (eth_estimateGas of the view call).
- Proof service: a proof served from the node's block store (the batch tree rebuilt from
  committed blocks: cold; then cached: warm), and the size of the JSON proof document.
- Quorum -> anchored: 4 submitters on anvil mining a block every second, confirmation
  depth 2: seconds from `Submitter.add` until the batch counts as anchored (5 batches).
- Commit -> anchored on a real devnet (anvil with 1 s blocks, 4 `devsen node` processes,
  batches every 5 blocks or 5 s, confirmation depth from the devnet config): a charger's
  Heartbeat is answered (= committed), then the seconds until its proof is served and
  until its batch root is on chain, at the head and 2 blocks deep.

Writes bench/results/anchor.json. Run: `.venv/bin/python bench/anchor_figures.py`.
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from anchoring.attestations import AnchorBatch
from anchoring.batches import BatchBuilder, BatchPolicy, BuilderState
from anchoring.chain import connect
from anchoring.chain.anvil import running_anvil, start_anvil
from anchoring.merkle import MerkleTree, root_from_proof
from anchoring.onchain import OnChain
from anchoring.proofs import AnchorIndex, ProofService, batch_block, block_event_ids
from anchoring.submitter import JobStore, Submitter, SubmitterConfig
from anchoring.testkit import KEYS, Net, charger_event
from consensus.store import BlockStore
from consensus.types import Block, CommitCertificate, CommittedBlock, Vote, VoteType
from primitives.eip712 import ZERO_HASH, Domain

RESULTS = Path(__file__).resolve().parent / "results" / "anchor.json"
SIZES = (100, 1_000, 10_000, 100_000)
VERIFY_SAMPLES = 2_000
LATENCY_BATCHES = 5


def event_ids(n: int, seed: int) -> list[bytes]:
    return [hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(n)]


def gas_and_proofs(net: Net) -> list[dict[str, Any]]:
    client = net.client(KEYS[0])
    rows = []
    for seed, size in enumerate(SIZES):
        ids = event_ids(size, seed)
        started = time.perf_counter()
        tree = MerkleTree(ids)
        build_s = time.perf_counter() - started
        height = client.next_first_height("latest")
        batch = AnchorBatch(client.next_batch_id("latest"), tree.root, height, height + 19, size)
        receipt = client.submit_anchor_batch(batch.batch_id, batch.root, batch.first_height, batch.last_height,
                                             batch.event_count, list(net.quorum(batch).signatures))
        rng = random.Random(seed)
        indices = [rng.randrange(size) for _ in range(VERIFY_SAMPLES)]
        started = time.perf_counter()
        proofs = [tree.proof(i) for i in indices]
        proof_us = (time.perf_counter() - started) / VERIFY_SAMPLES * 1e6
        started = time.perf_counter()
        for i, proof in zip(indices, proofs, strict=True):
            assert root_from_proof(ids[i], proof) == tree.root
        verify_us = (time.perf_counter() - started) / VERIFY_SAMPLES * 1e6
        deepest = max(proofs, key=lambda p: len(p.siblings))
        deepest_index = indices[proofs.index(deepest)]
        call = net.client(KEYS[0]).contracts["Anchor"].functions.verifyInclusion(
            batch.batch_id, ids[deepest_index], list(deepest.siblings), deepest.directions)
        assert call.call()
        json_proof = json.dumps({"proof": ["0x" + s.hex() for s in deepest.siblings],
                                 "directions": deepest.directions})
        rows.append({
            "batch_events": size,
            "anchor_gas": receipt.gas_used,
            "gas_per_event": round(receipt.gas_used / size, 2),
            "tree_build_s": round(build_s, 4),
            "proof_siblings_max": len(deepest.siblings),
            "proof_calldata_bytes": deepest.size_bytes,
            "proof_json_bytes": len(json_proof),
            "proof_generation_us": round(proof_us, 2),
            "local_verify_us": round(verify_us, 2),
            "verify_inclusion_gas": call.estimate_gas(),
        })
        print(rows[-1], flush=True)
    return rows


def proof_service(directory: Path) -> list[dict[str, Any]]:
    """Cold and warm proof latency of ProofService over a 50-block batch of N events."""
    rows = []
    for size in (10_000, 100_000):
        store = BlockStore(directory / f"blocks-{size}.sqlite", durable=False)
        index = AnchorIndex(directory / f"index-{size}.sqlite")
        domain = Domain(1, b"\x01" * 20)
        builder = BatchBuilder(BatchPolicy(every_blocks=50, every_ms=10**12, max_events=10**6), BuilderState(0, 1))
        previous, events = ZERO_HASH, []
        for height in range(1, 51):
            block_events = [charger_event(height * 1_000_000 + i) for i in range(size // 50)]
            events += block_events
            block = Block(height, 1000 * height, KEYS[0].address, previous, ZERO_HASH,
                          tuple(e.to_bytes() for e in block_events), b"")
            votes = [Vote.sign(k, domain, VoteType.PRECOMMIT, height, 0, block.hash) for k in KEYS[:3]]
            store.save(CommittedBlock(block, CommitCertificate.from_votes(votes)))
            previous = block.hash
            index.record_block(height, block_event_ids(block))
            closed = builder.on_block(batch_block(block))
            if closed:
                index.record_batch(closed[0])
        service = ProofService(store, index, chain_id=1, anchor_address=b"\x02" * 20)
        started = time.perf_counter()
        document = service.event_proof(events[size // 2].event_id)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        service.event_proof(events[7].event_id)
        warm = time.perf_counter() - started
        rows.append({"batch_events": size, "blocks": 50, "cold_proof_s": round(cold, 3),
                     "warm_proof_s": round(warm, 4), "proof_document_bytes": len(json.dumps(document))})
        print(rows[-1], flush=True)
        store.close()
        index.close()
    return rows


async def quorum_to_anchored(net: Net, directory: Path) -> list[float]:
    config = SubmitterConfig(confirmations=2, turn_timeout_s=10, poll_interval_s=0.2, rpc_timeout_s=10,
                             backoff_initial_s=0.2, backoff_max_s=2)
    submitters = [Submitter(OnChain(net.client(k)), JobStore(directory / f"{i}.sqlite"), k.address,
                            [v.address for v in KEYS], config) for i, k in enumerate(KEYS)]
    reader = net.client(KEYS[0])
    seconds = []
    async with trio.open_nursery() as nursery:
        for submitter in submitters:
            nursery.start_soon(submitter.run)
        for n in range(LATENCY_BATCHES):
            ids = event_ids(1000, 100 + n)
            height = reader.next_first_height("latest")
            batch = AnchorBatch(reader.next_batch_id("latest"), MerkleTree(ids).root, height, height + 19, 1000)
            quorum = net.quorum(batch)
            started = trio.current_time()
            for submitter in submitters:
                await submitter.add(quorum)
            with trio.fail_after(60):
                while any(s.pending() for s in submitters):
                    await trio.sleep(0.05)
            seconds.append(round(trio.current_time() - started, 2))
            print(f"batch {batch.batch_id}: quorum -> anchored at depth 2 in {seconds[-1]} s", flush=True)
        nursery.cancel_scope.cancel()
    return seconds


async def commit_to_anchored_on_devnet(directory: Path, samples: int = 5) -> list[dict[str, float]]:
    from anchoring.audit import ChainReader
    from devsen.demo_charger import connect_demo_charger
    from devsen.devnet import (
        CHAIN_ID,
        DEMO_CHARGER,
        DEMO_PASSWORD,
        deploy_network,
        prepare_nodes,
        start_node_process,
        stop_process,
        wait_until_serving,
    )
    from devsen.http_api import http_get_json

    anvil = start_anvil(directory / "devnet-anvil.log", chain_id=CHAIN_ID, block_time_s=1)
    nodes = []
    rows = []
    try:
        deployment_path = directory / "deployment.json"
        nodes = prepare_nodes(directory / "devnet", 4, deployment_path, anvil.url)
        deployment, _ = deploy_network(anvil, nodes, deployment_path)
        for node in nodes:
            start_node_process(node)
        await wait_until_serving(nodes)
        anchor = bytes.fromhex(deployment.anchor[2:])
        head, deep = ChainReader(connect(anvil.url), anchor), ChainReader(connect(anvil.url), anchor, 2)
        async with connect_demo_charger(nodes[0].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
            await charger.call("BootNotification", {"chargePointVendor": "DEVSEN", "chargePointModel": "bench"})
            for _ in range(samples):
                await charger.call("Heartbeat", {})
                committed = trio.current_time()
                message_id = charger.sent[-1][0]
                _, found = await http_get_json(f"{nodes[1].http_url}/v1/chargers/{DEMO_CHARGER}/messages/{message_id}")
                event_id = found["event_id"]
                times: dict[str, float] = {}
                with trio.fail_after(120):
                    while "anchored_2_deep_s" not in times:
                        status, document = await http_get_json(f"{nodes[2].http_url}/v1/events/{event_id}/proof")
                        now = round(trio.current_time() - committed, 2)
                        if status == 200:
                            times.setdefault("proof_served_s", now)
                            batch_id = document["batch"]["batch_id"]
                            if "anchored_at_head_s" not in times and head.batch(batch_id) is not None:
                                times["anchored_at_head_s"] = now
                            if deep.batch(batch_id) is not None:
                                times["anchored_2_deep_s"] = now
                        await trio.sleep(0.1)
                rows.append(times)
                print(f"heartbeat {event_id[:10]}: {times}", flush=True)
                await trio.sleep(2.5)  # spread the samples over different batch positions
    finally:
        for node in nodes:
            stop_process(node.process)
        anvil.stop()
    return rows


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        with running_anvil(directory / "anvil.log") as anvil:
            rows = gas_and_proofs(Net(connect(anvil.url)))
        service_rows = proof_service(directory)
        with running_anvil(directory / "anvil-timed.log", block_time_s=1) as anvil:
            latency = trio.run(quorum_to_anchored, Net(connect(anvil.url)), directory)
        devnet_rows = trio.run(commit_to_anchored_on_devnet, directory)
    result = {
        "chain": "anvil 1.7.1, cancun, 4 validators, 3-of-4 EIP-712 signatures per anchor",
        "batches": rows,
        "proof_service": service_rows,
        "quorum_to_anchored_s": {"block_time_s": 1, "confirmations": 2, "samples": latency,
                                 "median": statistics.median(latency)},
        "commit_to_anchored_devnet": {
            "setup": "anvil 1 s blocks, 4 devsen nodes, batches every 5 blocks or 5 s; seconds after the "
                     "charger's Heartbeat was answered (committed)",
            "samples": devnet_rows,
            "median_anchored_at_head_s": statistics.median(r["anchored_at_head_s"] for r in devnet_rows),
            "median_anchored_2_deep_s": statistics.median(r["anchored_2_deep_s"] for r in devnet_rows),
        },
        "notes": "anchor gas is independent of the batch size (only the root is stored); "
                 "gas_per_event = anchor_gas / batch_events. Timings: one core, Python 3.11.",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
