"""Benchmark: what the flood bounds cost honest chargers (boot storm and one-node load).

Starts the 4-node bench network of bench/node_throughput.py with --storm registered
devices, then:

1. boot storm: all --storm chargers (registered on chain, never seen by the ledger) connect
   to node-1 at once and send BootNotification; measured: the time until every one is
   answered (a reply comes after commit), and the p50/p99 boot latency;
2. for each C in --chargers, the closed-loop Heartbeat/MeterValues load of node_throughput
   (round-robin over the 4 nodes), and the same C chargers all on node-1 (one voucher).

Prints each row and writes JSON to --out. Run it from the work tree whose code is measured
(the node processes run `sys.executable -m devsen.cli`).

    .venv/bin/python bench/flood_bounds_tradeoff.py --storm 1000 --chargers 100 400 --out x.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import node_throughput as nt  # noqa: E402  (the sibling bench script)
from ocpp_ingest import percentile  # noqa: E402

from devsen.demo_charger import ChargerCallFailed, connect_demo_charger  # noqa: E402

STORM_TIMEOUT_S = 240.0


async def boot_storm(network: nt.Network, count: int) -> dict[str, Any]:
    """`count` fresh chargers at node-1: first every one connects (Basic auth: one scrypt per
    new charger at the node, not a consensus cost), then all send BootNotification at once;
    measured: the time until every boot is answered (a reply comes after commit)."""
    node = network.nodes[0]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    connected, go, done = [0], trio.Event(), trio.Event()
    all_connected = trio.Event()
    sent_at = [0.0]

    async def one(index: int) -> None:
        while True:
            try:
                async with connect_demo_charger(node.ocpp_url, nt.charger_id(index), nt.charger_password(index)) as ch:
                    ch.timeout_s = STORM_TIMEOUT_S
                    connected[0] += 1
                    if connected[0] == count:
                        all_connected.set()
                    await go.wait()
                    await ch.call("BootNotification", {"chargePointVendor": "DEVSEN", "chargePointModel": "storm"})
                    latencies.append((trio.current_time() - sent_at[0]) * 1000)
                    if len(latencies) == count:
                        done.set()
                    await done.wait()  # stay connected until the storm is over
                    return
            except Exception as exc:  # noqa: BLE001  (counted; a storm charger never stops the run)
                key = type(exc).__name__ + (f" {exc.code}" if isinstance(exc, ChargerCallFailed) else "")
                errors[key] = errors.get(key, 0) + 1
                if go.is_set():
                    return  # a boot that failed after the start is counted as not booted
                await trio.sleep(0.5)

    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    connect_s = elapsed = -1.0
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        for index in range(count):
            nursery.start_soon(one, index)
        with trio.move_on_after(STORM_TIMEOUT_S):
            await all_connected.wait()
        connect_s = trio.current_time() - started
        await trio.sleep(1.0)
        before = await nt.snapshot(network)
        sent_at[0] = trio.current_time()
        go.set()
        with trio.move_on_after(STORM_TIMEOUT_S):
            await done.wait()
        elapsed = trio.current_time() - sent_at[0]
        try:
            after = await nt.snapshot(network)
        finally:
            print(f"storm: connected {connected[0]} booted {len(latencies)} in {elapsed:.2f} s; "
                  f"cancelled: {nursery.cancel_scope.cancel_called}; errors {errors}", flush=True)
        nursery.cancel_scope.cancel()
    blocks = nt.counter_delta(before, after, 0, "committed_height") if before and after else None
    latencies.sort()
    return {"run": f"boot storm {count} at node-1", "chargers": count, "connected": connected[0],
            "connect_all_s (scrypt logins)": round(connect_s, 2),
            "booted": len(latencies),
            "all_booted_s": round(elapsed, 2) if len(latencies) == count else None,
            "boot_latency_ms": {"p50": nt._round(percentile(latencies, 0.5)),
                                "p99": nt._round(percentile(latencies, 0.99))},
            "blocks": blocks, "errors": errors, "machine_load_1m": round(os.getloadavg()[0], 1)}


async def one_node_load(network: nt.Network, chargers: int, duration_s: float) -> dict[str, Any]:
    """node_throughput's closed loop with every charger on node-1 (one voucher)."""
    saved = nt.NODES
    nt.NODES = 1  # run_charger connects to node index % NODES: node-1 (no kill in this run)
    try:
        row = await nt.run_load(network, chargers, duration_s)
    finally:
        nt.NODES = saved
    row["run"] = f"C={chargers} all at node-1"
    return row


def probe_concurrent_reads(network: nt.Network, count: int, workers: int = 8) -> dict[str, Any]:
    """Uncached device() reads of `count` distinct devices: one after another, then `workers` at once."""
    from concurrent.futures import ThreadPoolExecutor

    from anchoring.chain import ChainClient, Deployment, connect
    w3 = connect(network.anvil.url)
    client = ChainClient(w3, Deployment.from_json((network.root / "deployment.json").read_text()), None)
    block = max(int(w3.eth.block_number) - 2, 0)
    half = count // 2
    started = time.perf_counter()
    for index in range(half):
        client.device(nt.charger_id(index), block)
    sequential = time.perf_counter() - started
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda i: client.device(nt.charger_id(i), block), range(half, 2 * half)))
    concurrent = time.perf_counter() - started
    return {"run": "device() reads", "reads": half, "sequential_ms_per_read": round(1000 * sequential / half, 2),
            f"concurrent_{workers}_ms_per_read": round(1000 * concurrent / half, 2),
            "machine_load_1m": round(os.getloadavg()[0], 1)}


async def bench(network: nt.Network, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [await trio.to_thread.run_sync(probe_concurrent_reads, network, 400)]
    print(json.dumps(rows[-1]), flush=True)
    rows.append(await boot_storm(network, args.storm))
    print(json.dumps(rows[-1]), flush=True)
    for count in args.chargers:
        for run in (nt.run_load(network, count, args.duration), one_node_load(network, count, args.duration)):
            row = await run
            row.pop("unanswered", None)
            row.pop("node1_rss_mib_every_5s", None)
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("run", "events_per_s_ledger", "replies_per_s", "latency_ms",
                                                    "blocks_per_s", "events_per_block", "errors")}), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storm", type=int, default=1000)
    parser.add_argument("--chargers", type=int, nargs="+", default=[100, 400])
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not 1 <= args.storm <= 1000 or not all(1 <= c <= args.storm for c in args.chargers):
        parser.error("storm in 1..1000 and every C at most --storm (one registered device each)")
    commit = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"],
                            capture_output=True, text=True, timeout=10).stdout.strip()
    started = time.monotonic()
    with nt.running_network("devsen-tradeoff-", args.storm, False) as network:
        rows = trio.run(bench, network, args)
    result = {"commit": commit, "total_s": round(time.monotonic() - started, 1), "cpu_count": os.cpu_count(),
              "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
