"""Micro-benchmark of the profile's two top costs on a node (bench/results/compare_profile.md):
chain JSON-RPC on the event path and signature recovery. Drives the real NodeApplication and
ledger path as the consensus shell does for each block: check_tx of every payload (mempool
admission), fetch_facts + process_proposal (validation), fetch_facts(committed=True) +
finalize_block + commit (the decided block).

The chain is an in-process fake with the real node's read pattern: eth_blockNumber and a fresh
eth_getBlockByNumber count one RPC each; device / idTag / escrow reads and the ValidatorSet are
cached across blocks (as devsen.chain_view.ReadCache does) and cost one RPC the first time.
Each RPC sleeps --rpc-ms (a loopback eth_call to anvil); RPCs and ECDSA recoveries are counted.
Events are MeterValues of --chargers chargers, --events per block; a quarter are vouched by this
node (submitted through it, seeded as node.py does when the hook exists), the rest by the other
three validators.

    .venv/bin/python bench/perf_wins.py --label before [--blocks 200] [--events 50] [--rpc-ms 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anchoring.batches import BatchPolicy
from anchoring.proofs import AnchorIndex
from consensus.types import Block, CommitCertificate
from devsen.app import AppSettings, NodeApplication, encode_app_header
from devsen.ledger import DeviceInfo, EscrowSession, IdTagInfo, Ledger, Tariff
from devsen.ledger.chain import ChainReservation
from ocpp_adapter import vouching
from ocpp_adapter.events import ChargerEvent
from primitives.eip712 import ZERO_HASH, Domain, SigningKey

RESULTS = Path("bench") / "results"  # run from the repository root
KEYS = [SigningKey(bytes([i]) * 32) for i in range(1, 5)]
VALIDATORS = tuple(sorted(k.address for k in KEYS))
ANCHOR = Domain(31337, b"\x0a" * 20)
ESCROW = Domain(31337, b"\x0e" * 20)
CERT = CommitCertificate.__new__(CommitCertificate)  # finalize_block does not read it
ETH_BLOCK = 5


class Counter:
    def __init__(self, rpc_s: float) -> None:
        self.rpc_s = rpc_s
        self.rpcs = 0

    def rpc(self) -> None:
        self.rpcs += 1
        time.sleep(self.rpc_s)


class CachedReader:
    """Reads at one Ethereum block; a key costs one RPC the first time (the cross-block cache)."""

    def __init__(self, counter: Counter, cache: dict[tuple[str, Any], Any]) -> None:
        self.counter = counter
        self.cache = cache

    def _get(self, kind: str, key: Any, value: Any) -> Any:
        if (kind, key) not in self.cache:
            self.counter.rpc()
            self.cache[(kind, key)] = value
        return self.cache[(kind, key)]

    def device(self, charge_box_id: str) -> DeviceInfo | None:
        device: DeviceInfo | None = self._get("device", charge_box_id,
                         DeviceInfo(charge_box_id.encode().ljust(32, b"\0"), "0x" + "11" * 20, 2, Tariff(300_000)))
        return device

    def id_tag(self, tag_hash: bytes) -> IdTagInfo | None:
        info: IdTagInfo | None = self._get("id_tag", tag_hash, IdTagInfo("0x" + "22" * 20))
        return info

    def open_escrow_sessions(self, charge_box_id: str) -> Sequence[EscrowSession]:
        return ()  # the session index is local (eth_getLogs per new Ethereum block)

    def escrow_session(self, session_id: bytes) -> EscrowSession | None:
        session: EscrowSession | None = self._get("session", session_id, None)
        return session

    def reservations(self, charge_box_id: str) -> Sequence[ChainReservation]:
        return ()  # read per charger like the open sessions; the bench has no reservations


class CountingChain:
    """devsen.app.ChainAccess with the real node's RPC pattern (module docstring)."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.cache: dict[tuple[str, Any], Any] = {}

    def head(self, max_age_s: float = 0.25) -> int:
        self.counter.rpc()
        return ETH_BLOCK + 10

    def block_hash(self, number: int, fresh: bool = False) -> bytes:
        if fresh:
            self.counter.rpc()
        return number.to_bytes(32, "big")

    def view_at(self, number: int, block_hash: bytes) -> CachedReader:
        return CachedReader(self.counter, self.cache)

    def validators_at(self, number: int, block_hash: bytes) -> tuple[int, tuple[bytes, ...], dict[bytes, bytes]]:
        if ("validators", number) not in self.cache:
            self.counter.rpc()
            self.cache[("validators", number)] = None
        return 0, VALIDATORS, {a: b"peer" + a for a in VALIDATORS}


def payloads_of(app: NodeApplication, block_index: int, events: int, chargers: int) -> tuple[bytes, ...]:
    out = []
    for i in range(events):
        n = (block_index * events + i) % chargers
        payload = {"connectorId": 1, "meterValue": [{"timestamp": "2026-12-02T04:00:00Z", "sampledValue": [
            {"value": str(1000 + block_index), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}]}
        event = ChargerEvent(f"BENCH-CP-{n:05d}", "1.6", "MeterValues", f"{block_index}-{i}", payload, "",
                             1_700_000_000_000 + block_index * 1000 + i)
        key = KEYS[i % 4]
        own = getattr(app.vouches, "remember_own", None)  # how devsen/node.py vouches, when it exists
        if key == app.settings.key and own is not None:
            out.append(own(event, key).to_bytes())
        else:
            out.append(vouching.vouch(event, key, app.vouches.domain).to_bytes())
    return tuple(out)


def gossip_admission(app: NodeApplication, batches: int, events: int) -> tuple[float, float]:
    """(event-loop thread CPU ms, wall ms) per gossiped batch of `events` events vouched by the
    other validators, admitted as devsen/consensus_service.py `_on_payloads` does: the batch's
    signatures recovered in a worker thread first when the application offers it, then check_tx
    of each payload on the loop thread."""
    recover = getattr(app, "recover_signatures", None)
    loop_cpu = wall = 0.0
    for b in range(batches):
        batch = []
        for i in range(events):
            event = ChargerEvent(f"GOSSIP-CP-{i:05d}", "1.6", "Heartbeat", f"g{b}-{i}", {}, "", 1_800_000_000_000 + i)
            batch.append(vouching.vouch(event, KEYS[1 + i % 3], app.vouches.domain).to_bytes())
        started_cpu, started = time.thread_time(), time.perf_counter()
        if recover is not None:
            worker = threading.Thread(target=recover, args=(batch,))  # trio.to_thread.run_sync in the node
            worker.start()
            worker.join()
        for payload in batch:
            assert app.check_tx(payload).ok
        loop_cpu += time.thread_time() - started_cpu
        wall += time.perf_counter() - started
    return 1000 * loop_cpu / batches, 1000 * wall / batches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=200)
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--chargers", type=int, default=1000)
    parser.add_argument("--rpc-ms", type=float, default=1.0)
    parser.add_argument("--gossip-batches", type=int, default=100)
    parser.add_argument("--label", default="after")
    args = parser.parse_args()
    counter = Counter(args.rpc_ms / 1000)
    recoveries = [0]
    real_recover = vouching.recovered_voucher

    def counted(event: ChargerEvent, domain: Domain) -> bytes | str:
        recoveries[0] += 1
        return real_recover(event, domain)

    vouching.recovered_voucher = counted  # VouchCache looks it up here
    with tempfile.TemporaryDirectory() as tmp:
        app = NodeApplication(
            AppSettings(KEYS[0], VALIDATORS, ANCHOR, ESCROW, BatchPolicy(every_blocks=4, every_ms=10**9), 2),
            CountingChain(counter), Ledger(), AnchorIndex(Path(tmp) / "anchors.sqlite"))
        blocks = [payloads_of(app, b, args.events, args.chargers) for b in range(args.blocks)]
        header = encode_app_header(ETH_BLOCK, ETH_BLOCK.to_bytes(32, "big"))
        wall, cpu = time.perf_counter(), time.process_time()
        for index, payloads in enumerate(blocks):
            height = index + 1
            for payload in payloads:
                assert app.check_tx(payload).ok
            block = Block(height, 1_700_000_000_000 + height * 1000, KEYS[0].address, ZERO_HASH, ZERO_HASH,
                          payloads, header)
            assert app.process_proposal(block, app.fetch_facts(height, header, payloads, block_ms=block.timestamp_ms))
            app.finalize_block(block, CERT, app.fetch_facts(height, header, payloads, committed=True,
                                                             block_ms=block.timestamp_ms))
            app.commit(height)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        gossip_loop, gossip_wall = gossip_admission(app, args.gossip_batches, args.events)
    n = args.blocks
    result = {"label": args.label, "blocks": n, "events_per_block": args.events, "chargers": args.chargers,
              "rpc_ms": args.rpc_ms, "wall_ms_per_block": round(1000 * wall / n, 2),
              "cpu_ms_per_block": round(1000 * cpu / n, 2), "rpcs_per_block": round(counter.rpcs / n, 2),
              "recoveries_per_block": round(recoveries[0] / n, 2),
              "gossip_batches": args.gossip_batches, "gossip_loop_cpu_ms_per_batch": round(gossip_loop, 2),
              "gossip_wall_ms_per_batch": round(gossip_wall, 2),
              "load_1m": round(os.getloadavg()[0], 1), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(json.dumps(result))
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "perf_wins.jsonl", "a") as out:
        out.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
