"""State-sync join time for a network holding 10k, 100k and 1M committed events.

How the state is built (offline, deterministic): one NodeApplication finalizes certified
blocks (consensus.testkit.CertifiedChain: linked blocks, commit certificates signed by 3 of
the 4 validators) of real vouched charger events through the real `fetch_facts` +
`finalize_block` path, without running consensus or a chain (a static chain view with the
chargers registered). Chargers: one per 100 events (up to the ledger's 10,000 devices), each
boots (at most 64 new chargers per voucher per block, the validity share), then sends
MeterValues; events are vouched by the 4 validators in turn, 2,000 per block (500 per
voucher, the block validity share). The application snapshots block S (the last but one),
so block S+1 certifies its app hash.

Above REAL_EVENTS_MAX (the 1M figure) driving every event through finalize_block takes
longer than this shared machine allows (~1.6 ms per event: ~30 min), so the state is built
from REAL_EVENTS_MAX real events and then padded deterministically to the size of the
state the full count leaves: one stored OCPP reply per event (the table that grows with
traffic: at 2,000 events per block all 1M replies fall inside the ledger's 600-height reply
window), with synthetic dedup keys and the ledger's sequence counter advanced; that ledger
passes `Ledger.from_bytes` (canonical form, invariants) and a fresh block S+1, certified by
3 of the 4 validators, carries its app hash. The chargers stay those of the real part.

What is measured: a fresh NodeApplication joins by `devsen.state_sync.join` over real
libp2p (loopback TCP, Noise, yamux) from 2 serving processes (each serves the same snapshot
from disk with `p2p.snapshots.SnapshotServer`): list offers, verify block S+1's certificate
against the validator set from its chain reads, fetch every chunk (hash-checked), restore,
check the ledger against the certified app hash and the validator set against the chain.
Time from the first list request to the restored, checked state. Build time is reported apart.

Run: `.venv/bin/python bench/state_sync.py [--sizes 10000,100000,1000000]`.
Writes bench/results/state_sync.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import trio

from anchoring.batches import BatchPolicy
from anchoring.proofs import AnchorIndex
from consensus.testkit import CertifiedChain
from consensus.types import CommittedBlock
from devsen.app import AppSettings, NodeApplication, encode_app_header
from devsen.consensus_service import ServedSnapshots
from devsen.ledger import DeviceInfo, Ledger, StaticChainView, Tariff
from devsen.state_sync import ChainReads, join
from ocpp_adapter.events import ChargerEvent
from ocpp_adapter.vouching import ingress_domain, vouch
from p2p.host import HostConfig, open_host, parse_peer_addr
from p2p.keys import init_keys
from p2p.snapshots import SnapshotServer
from primitives.eip712 import Domain, SigningKey
from primitives.hashing import keccak256

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = sorted((SigningKey(bytes([0x31 + i]) * 32) for i in range(4)), key=lambda k: k.address)
VALIDATORS = tuple(k.address for k in KEYS)
ANCHOR = Domain(31337, b"\x0a" * 20)
ESCROW = Domain(31337, b"\x0e" * 20)
CONSENSUS = Domain(31337, b"\x05" * 20)
NETWORK = b"\x5b" * 32
ETH_BLOCK = 5
PER_VOUCHER = 500  # devsen.app.vouched_share(4)
NEW_PER_VOUCHER = 64  # devsen.app.new_charger_share(4)
SERVERS = 2
REAL_EVENTS_MAX = 100_000


class BenchChain:
    """The chain the application reads: Ethereum blocks 0..10, one static view, one set."""

    def __init__(self, chargers: int) -> None:
        self.view = StaticChainView(devices={
            charger_id(i): DeviceInfo(i.to_bytes(32, "big"), "0x" + "11" * 20, 2, Tariff(300_000))
            for i in range(chargers)})

    def head(self, max_age_s: float = 0.25) -> int:
        return 10

    def block_hash(self, number: int, fresh: bool = False) -> bytes:
        return number.to_bytes(32, "big")

    def view_at(self, number: int, block_hash: bytes) -> StaticChainView:
        return self.view

    def validators_at(self, number: int, block_hash: bytes) -> tuple[int, tuple[bytes, ...], dict[bytes, bytes]]:
        return 0, VALIDATORS, {}


def charger_id(i: int) -> str:
    return f"CP-{i:05d}"


def chargers_for(events: int) -> int:
    return max(4, min(10_000, events // 100))


def make_app(directory: Path, chargers: int, key: SigningKey = KEYS[0]) -> NodeApplication:
    directory.mkdir(parents=True, exist_ok=True)
    app = NodeApplication(
        AppSettings(key, VALIDATORS, ANCHOR, ESCROW, BatchPolicy(every_blocks=10, every_ms=10**9), 2),
        BenchChain(chargers), Ledger(), AnchorIndex(directory / "anchors.sqlite"))
    app.snapshot_path = directory / "app_snapshot.msgpack"
    return app


def event(i: int, charger: int, voucher: SigningKey, boot: bool) -> bytes:
    if boot:
        unsigned = ChargerEvent(charger_id(charger), "1.6", "BootNotification", f"b-{charger}",
                                {"chargePointVendor": "V", "chargePointModel": "M"}, "", 1_700_000_000_000 + i)
    else:
        unsigned = ChargerEvent(charger_id(charger), "1.6", "MeterValues", f"m-{i}",
                                {"connectorId": 1, "meterValue": [{"timestamp": "2026-11-22T02:00:00Z",
                                                                   "sampledValue": [{"value": str(i)}]}]},
                                "", 1_700_000_000_000 + i)
    return vouch(unsigned, voucher, ingress_domain(ANCHOR)).to_bytes()


def build(events: int, directory: Path) -> dict[str, Any]:
    """The serving node's state (see the module docstring); reused if built before."""
    done = directory / "built.json"
    if done.is_file():
        built: dict[str, Any] = json.loads(done.read_text())
        return built
    started = time.perf_counter()
    chargers = chargers_for(events)
    app = make_app(directory, chargers)
    header = encode_app_header(ETH_BLOCK, ETH_BLOCK.to_bytes(32, "big"))

    def finalize(committed: CommittedBlock) -> bytes:
        block = committed.block
        facts = app.fetch_facts(block.height, block.app_header, block.payloads, committed=True, block_ms=block.timestamp_ms)
        return app.finalize_block(block, committed.certificate, facts).app_hash

    chain = CertifiedChain(finalize, KEYS[:3], CONSENSUS)
    real = min(events, REAL_EVENTS_MAX)
    mine = [list(range(v, chargers, len(KEYS))) for v in range(len(KEYS))]  # each voucher's chargers
    booted = [0] * len(KEYS)
    made = 0
    while made < real:
        payloads = []
        for v, voucher in enumerate(KEYS):
            known, boots = booted[v], 0  # MeterValues only from chargers booted in earlier blocks
            for _ in range(PER_VOUCHER):
                if made >= real:
                    break
                if booted[v] < len(mine[v]) and boots < NEW_PER_VOUCHER:
                    payloads.append(event(made, mine[v][booted[v]], voucher, True))
                    booted[v] += 1
                    boots += 1
                elif known:
                    payloads.append(event(made, mine[v][made % known], voucher, False))
                else:
                    break
                made += 1
        chain.add(tuple(payloads), header)
    while len(chain.blocks) < 3:
        chain.add((), header)
    if events > real:
        app.ledger = pad_replies(app.ledger, events - real)
        chain.app_hash = app.app_state_hash()
        chain.add((), header)  # a block applied on the padded state: S is its height
    height = len(chain.blocks)
    app.write_snapshot(height, chain.blocks[-1].block.hash)  # S = height; S+1 certifies it
    chain.add((), header)
    (directory / "records.msgpack").write_bytes(msgpack.packb(chain.records(height - 1, height + 1)))
    snapshot = app.list_snapshots()[0]
    built = {"events": events, "chargers": chargers, "blocks": len(chain.blocks), "snapshot_height": height,
             "snapshot_chunks": snapshot.chunks,
             "snapshot_bytes": (app.snapshot_dir / f"{height:012d}.snap").stat().st_size,  # type: ignore[operator]
             "app_hash": "0x" + snapshot.app_hash.hex(), "build_s": round(time.perf_counter() - started, 1)}
    done.write_text(json.dumps(built))
    return built


def pad_replies(ledger: Ledger, extra: int) -> Ledger:
    """`ledger` with `extra` more stored replies (copies of its newest, synthetic dedup keys,
    sequence numbers after its own), through the snapshot format (see the module docstring)."""
    version, params, counters, tables = msgpack.unpackb(ledger.to_bytes(), raw=False)
    replies = tables[4]
    if extra:
        template = replies[-1][1]
        seq = counters[3]
        for i in range(extra):
            seq += 1
            replies.append([keccak256(b"bench-reply-%d" % i), [seq, *template[1:]]])
        counters[3] = seq
    return Ledger.from_bytes(msgpack.packb([version, params, counters, tables], use_bin_type=True))


async def serve(directory: Path, chargers: int, index: int) -> None:
    """A serving process: the built snapshot and its blocks on SNAPSHOT_PROTOCOL; prints its address."""
    app = make_app(directory, chargers)
    records = msgpack.unpackb((directory / "records.msgpack").read_bytes())

    def block_records(lo: int, hi: int) -> list[bytes]:
        return list(records) if len(records) == 3 and hi - lo == 2 else []

    source = ServedSnapshots(app.list_snapshots, app.load_snapshot_chunk, block_records)
    async with open_host(init_keys(directory / f"server-keys-{index}"), HostConfig()) as running:
        SnapshotServer(running, NETWORK, source).install()
        print(running.listen_addrs()[0], flush=True)
        await trio.sleep_forever()


async def join_once(directory: Path, chargers: int, addrs: list[str], work: Path) -> dict[str, Any]:
    app = make_app(work / "joiner", chargers, key=KEYS[1])
    chain = BenchChain(0)
    reads = ChainReads(chain.head, chain.block_hash, chain.validators_at)
    async with open_host(init_keys(work / "joiner-keys"), HostConfig()) as me:
        infos = [parse_peer_addr(a) for a in addrs]
        for info in infos:
            await me.host.connect(info)
        started = time.perf_counter()
        trusted, report = await join(me, NETWORK, [i.peer_id.to_bytes() for i in infos], app, CONSENSUS, reads,
                                     work / "statesync", per_peer=2, timeout_s=30.0)
        seconds = time.perf_counter() - started
    assert app.app_state_hash() == trusted.app_hash
    return {"join_s": round(seconds, 2), "height": report.height, "chunks": report.chunks,
            "bytes": report.bytes, "mb_per_s": round(report.bytes / 1e6 / seconds, 1),
            "chunks_per_peer": {k[-8:]: v.served for k, v in report.peers.items()}}


def run_size(events: int, root: Path) -> dict[str, Any]:
    directory = root / f"net-{events}"
    built = build(events, directory)
    servers = [subprocess.Popen([sys.executable, __file__, "--serve", str(directory), "--chargers",
                                 str(built["chargers"]), "--index", str(i)], stdout=subprocess.PIPE, text=True)
               for i in range(SERVERS)]
    try:
        addrs = [s.stdout.readline().strip() for s in servers if s.stdout is not None]
        with tempfile.TemporaryDirectory() as work:
            joined = trio.run(join_once, directory, built["chargers"], addrs, Path(work))
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)
    return {**built, **joined, "serving_peers": SERVERS}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "devsen-bench-state-sync"))
    parser.add_argument("--serve")
    parser.add_argument("--chargers", type=int, default=0)
    parser.add_argument("--index", type=int, default=0)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, Path(args.serve), args.chargers, args.index)
        return 0
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        row = run_size(size, Path(args.root))
        print(json.dumps(row), flush=True)
        rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "state_sync.json"
    existing = {r["events"]: r for r in json.loads(out.read_text())["runs"]} if out.is_file() else {}
    existing.update({r["events"]: r for r in rows})
    out.write_text(json.dumps({"target": "1,000,000 events joined in < 60 s", "machine": "2 cores, shared",
                               "runs": [existing[k] for k in sorted(existing)]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
