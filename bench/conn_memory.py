"""Benchmark: memory per charger connection, and heartbeat latency, at thousands of connections.

Two modes (issue 16, target: one node holds 10,000 charger connections with heartbeat traffic,
under 30 KiB each, while committing):

- `--mode node`: the 4-node network of bench/compare.py (anvil, chargers registered on chain
  with one shared password, 4 `devsen node` processes). Every charger connects to node-1, in
  cumulative steps (`--steps 1000 2000 ...`); after each step the chargers send Heartbeats
  (each one every `--heartbeat-s`, staggered; every Heartbeat is committed by the network) for
  `--window` seconds, then node-1's RSS is read. KiB per connection = RSS growth / connections
  added, per step and overall. Each login costs the node a scrypt (Basic auth against the
  on-chain hash): its CPU seconds and wall time per login are given.
- `--mode endpoint`: the OCPP endpoint alone (`serve_ocpp` with the in-memory ingest, security
  profile 0: no scrypt, so 10,000 connections take seconds) in a child process; RSS per
  connection, and with `--trace` a tracemalloc comparison (before the first connection, after
  the last) of where the per-connection memory is allocated.

Writes --out (JSON) and the same name with .md.

    .venv/bin/python bench/conn_memory.py --mode endpoint --steps 2000 5000 10000 --out bench/results/conn_memory_endpoint.json
    .venv/bin/python bench/conn_memory.py --mode node --steps 1000 2000 --out bench/results/conn_memory.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError

from devsen.demo_charger import ChargerCallFailed, DemoCharger, connect_demo_charger

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ocpp_ingest import cpu_seconds, rss_kib  # noqa: E402  (sibling bench scripts)

HERE = Path(__file__).resolve().parent
TARGET_KIB = 30.0
CONNECT_CONCURRENCY = 16
CALL_TIMEOUT_S = 30.0
MAX_LATENCIES = 1_000_000


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))], 1)


class Fleet:
    """The connected chargers: each holds its WebSocket open and sends Heartbeats while `beating`."""

    def __init__(self, url: str, password: str, heartbeat_s: float) -> None:
        self.url = url
        self.password = password
        self.heartbeat_s = heartbeat_s
        self.connected = 0
        self.failed: list[str] = []
        self.beating = False
        self.latencies_ms: list[float] = []
        self.heartbeat_errors = 0
        self.lost = 0

    async def charger(self, charge_box_id: str, limit: trio.CapacityLimiter, up: Callable[[], None]) -> None:
        token = object()
        await limit.acquire_on_behalf_of(token)
        connected = False
        try:
            async with connect_demo_charger(self.url, charge_box_id, self.password) as charger:
                limit.release_on_behalf_of(token)
                connected = True
                self.connected += 1
                up()
                await self.beat(charger, charge_box_id)
        except (HandshakeError, ConnectionClosed, trio.BrokenResourceError, OSError, trio.TooSlowError) as exc:
            if connected:
                self.lost += 1
            else:
                self.failed.append(f"{charge_box_id}: {type(exc).__name__}: {str(exc)[:120]}")
                up()
        finally:
            if not connected:
                limit.release_on_behalf_of(token)

    async def beat(self, charger: DemoCharger, charge_box_id: str) -> None:
        charger.timeout_s = CALL_TIMEOUT_S
        offset = (zlib.crc32(charge_box_id.encode()) % 1000) / 1000 * self.heartbeat_s  # staggered
        await trio.sleep(offset)
        while True:
            if not self.beating:
                await trio.sleep(0.5)
                continue
            started = trio.current_time()
            try:
                await charger.call("Heartbeat", {})
                if len(self.latencies_ms) < MAX_LATENCIES:
                    self.latencies_ms.append((trio.current_time() - started) * 1000)
            except (ChargerCallFailed, trio.TooSlowError):
                self.heartbeat_errors += 1
            await trio.sleep_until(started + self.heartbeat_s)


async def _generation(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """A nursery for one generation of charger connections (cancelled to close them all)."""
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()


class Arrivals:
    """Counts chargers that finished connecting (or failed to); `done` once `want` did."""

    def __init__(self, want: int) -> None:
        self.want = want
        self.count = 0
        self.done = trio.Event()

    def up(self) -> None:
        self.count += 1
        if self.count >= self.want:
            self.done.set()


async def run_steps(ids: list[str], url: str, password: str, steps: list[int], heartbeat_s: float, window_s: float,
                                    measure: Callable[[str], Awaitable[dict[str, Any]]], settle_s: float,
                    reconnect: bool = False) -> list[dict[str, Any]]:
    """Connect the chargers in cumulative `steps`; after each, a heartbeat window and `measure`.
    `reconnect`: then close every connection, measure, connect them all again (no password
    hashing: the server remembers verified credentials) and measure: the memory of the
    connections alone, without what a charger's first login and first events leave behind."""
    fleet = Fleet(url, password, heartbeat_s)
    rows: list[dict[str, Any]] = []
    limit = trio.CapacityLimiter(CONNECT_CONCURRENCY)
    async with trio.open_nursery() as outer:
        nursery: trio.Nursery = await outer.start(_generation)
        rows.append({"connections": 0, **await measure("start")})
        started_ids = 0
        for step in steps:
            want = step - started_ids
            arrivals = Arrivals(want)
            done, up = arrivals.done, arrivals.up
            t0 = trio.current_time()
            before = await measure("before_logins")
            for charge_box_id in ids[started_ids:step]:
                nursery.start_soon(fleet.charger, charge_box_id, limit, up)
            started_ids = step
            while not done.is_set():
                with trio.move_on_after(10):
                    await done.wait()
                print(f"  step {step}: connected {fleet.connected}, failed {len(fleet.failed)}, "
                      f"{trio.current_time() - t0:.0f} s", flush=True)
            login_s = trio.current_time() - t0
            after_logins = await measure("after_logins")
            await trio.sleep(settle_s)
            fleet.latencies_ms = []
            errors_before = fleet.heartbeat_errors
            fleet.beating = True
            await trio.sleep(window_s)
            fleet.beating = False
            sample = list(fleet.latencies_ms)
            await trio.sleep(1.0)
            row = {"connections": fleet.connected, "failed_connects": len(fleet.failed), "lost": fleet.lost,
                   "login_wall_s": round(login_s, 1),
                   "login_ms_per_charger_wall": round(1000 * login_s / max(1, want), 1),
                   "node_cpu_ms_per_login": round(1000 * (after_logins["cpu_s"] - before["cpu_s"]) / max(1, want), 1)
                   if "cpu_s" in before else None,
                   "heartbeats": len(sample), "heartbeat_errors": fleet.heartbeat_errors - errors_before,
                   "heartbeat_ms": {"p50": percentile(sample, 0.5), "p99": percentile(sample, 0.99),
                                    "max": percentile(sample, 1.0)},
                   "load_1m": round(os.getloadavg()[0], 2),
                   "rss_kib_before_logins": before["rss_kib"], "rss_kib_after_logins": after_logins["rss_kib"],
                   **await measure("after_window")}
            prev = rows[-1]
            added = row["connections"] - prev["connections"]
            row["kib_per_connection_step"] = round((row["rss_kib"] - prev["rss_kib"]) / added, 1) if added else None
            row["kib_per_connection_total"] = round((row["rss_kib"] - rows[0]["rss_kib"]) / row["connections"], 1) \
                if row["connections"] else None
            rows.append(row)
            print(json.dumps(row), flush=True)
        if reconnect:
            nursery.cancel_scope.cancel()
            await trio.sleep(settle_s + 5)
            closed = {"connections": 0, "phase": "all closed", **await measure("closed")}
            print(json.dumps(closed), flush=True)
            nursery = await outer.start(_generation)
            arrivals = Arrivals(len(ids))
            fleet.connected = 0
            t0 = trio.current_time()
            for charge_box_id in ids:
                nursery.start_soon(fleet.charger, charge_box_id, limit, arrivals.up)
            await arrivals.done.wait()
            reconnect_s = trio.current_time() - t0
            await trio.sleep(settle_s)
            again = {"connections": fleet.connected, "phase": "reconnected (no password hashing)",
                     "reconnect_wall_s": round(reconnect_s, 1), "load_1m": round(os.getloadavg()[0], 2),
                     **await measure("reconnected")}
            again["kib_per_connection_reconnected"] = round((again["rss_kib"] - closed["rss_kib"]) / max(1, again["connections"]), 1)
            print(json.dumps(again), flush=True)
            rows += [closed, again]
        outer.cancel_scope.cancel()
    if fleet.failed:
        rows[-1]["failed_samples"] = fleet.failed[:5]
    return rows


# ---------------------------------------------------------------- endpoint mode (child process)

async def serve_endpoint(snapshot_dir: Path) -> None:
    """The child: the OCPP endpoint alone; SIGUSR1 writes a tracemalloc snapshot (when tracing)."""
    from ocpp_adapter.auth import InMemoryChargerRegistry
    from ocpp_adapter.config import OcppServerConfig
    from ocpp_adapter.memory_ingest import MemoryIngest
    from ocpp_adapter.server import serve_ocpp

    config = OcppServerConfig(port=0, security_profile=0, node_name="conn-memory", max_connections=20_000)
    count = [0]
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_ocpp, config, MemoryIngest(), InMemoryChargerRegistry())
        print(f"port {port}", flush=True)
        with trio.open_signal_receiver(signal.SIGUSR1) as signals:
            async for _ in signals:
                count[0] += 1
                if tracemalloc.is_tracing():
                    tracemalloc.take_snapshot().dump(str(snapshot_dir / f"snap-{count[0]}.bin"))
                (snapshot_dir / f"done-{count[0]}").write_text("ok")


def endpoint_mode(args: argparse.Namespace) -> dict[str, Any]:
    snapshot_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"conn-memory-{os.getpid()}"
    snapshot_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, *(["-X", "tracemalloc=1"] if args.trace else []), str(Path(__file__).resolve()),
               "--serve-endpoint", str(snapshot_dir)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=open(snapshot_dir / "child.log", "wb"),
                             start_new_session=True)
    snaps = [0]
    try:
        assert child.stdout is not None
        line = child.stdout.readline().decode()
        port = int(line.split()[1])

        async def measure(edge: str) -> dict[str, Any]:
            if args.trace and edge in ("start", "after_window"):
                snaps[0] += 1
                os.kill(child.pid, signal.SIGUSR1)
                while not (snapshot_dir / f"done-{snaps[0]}").exists():
                    await trio.sleep(0.2)
            return {"rss_kib": rss_kib(child.pid)["VmRSS"], "cpu_s": cpu_seconds(child.pid)}

        ids = [f"MEM-CP-{i:05d}" for i in range(max(args.steps))]
        rows = trio.run(run_steps, ids, f"ws://127.0.0.1:{port}/ocpp", "unused", args.steps, args.heartbeat_s,
                        args.window, measure, 2.0, args.reconnect)
    finally:
        child.terminate()
        child.wait(10)
    result: dict[str, Any] = {"mode": "endpoint", "steps": rows,
                              "what": "serve_ocpp + MemoryIngest alone (security profile 0), one child process"}
    if args.trace:
        result["tracemalloc"] = trace_summary(snapshot_dir / "snap-1.bin", snapshot_dir / f"snap-{snaps[0]}.bin",
                                              rows[-1]["connections"])
    return result


def trace_summary(first: Path, last: Path, connections: int, top: int = 25) -> dict[str, Any]:
    """Where the memory added between two snapshots was allocated, per connection."""
    before, after = tracemalloc.Snapshot.load(str(first)), tracemalloc.Snapshot.load(str(last))
    stats = after.compare_to(before, "lineno")
    by_file = after.compare_to(before, "filename")
    total = sum(s.size_diff for s in stats)

    def short(path: str) -> str:
        return path.split("site-packages/", 1)[-1].split("/wt-perf/", 1)[-1]
    return {"traced_kib_per_connection": round(total / 1024 / max(1, connections), 2),
            "top_lines": [{"where": f"{short(s.traceback[0].filename)}:{s.traceback[0].lineno}",
                           "bytes_per_connection": round(s.size_diff / max(1, connections)),
                           "blocks_per_connection": round(s.count_diff / max(1, connections), 2)}
                          for s in stats[:top]],
            "top_files": [{"file": short(s.traceback[0].filename),
                           "bytes_per_connection": round(s.size_diff / max(1, connections))} for s in by_file[:12]]}


# ---------------------------------------------------------------- node mode

def node_mode(args: argparse.Namespace) -> dict[str, Any]:
    from compare import PASSWORD
    from node_throughput import charger_id, running_network, snapshot

    with running_network("devsen-connmem-", max(args.steps), args.keep, PASSWORD) as network:
        node = network.nodes[0]
        assert node.process is not None
        pid = node.process.pid

        async def measure(edge: str) -> dict[str, Any]:
            snap = await snapshot(network)
            status = snap["nodes"].get(0, {}).get("status") or {}
            return {"rss_kib": rss_kib(pid)["VmRSS"], "cpu_s": cpu_seconds(pid),
                    "committed_height": status.get("committed_height"),
                    "chargers_connected": status.get("chargers_connected")}

        ids = [charger_id(i) for i in range(max(args.steps))]
        rows = trio.run(run_steps, ids, node.ocpp_url, PASSWORD, args.steps, args.heartbeat_s, args.window,
                        measure, 5.0, args.reconnect)
    return {"mode": "node", "steps": rows, "what": "node-1 of a 4-node devnet, every charger connected to it"}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Memory per charger connection ({result['mode']} mode)", "", result["what"] + ".", "",
             f"Code: {result['code']['commit'][:12]} (+{result['code']['product_files_changed']} product files changed); "
             f"{result['finished_utc']}; heartbeat every {result['heartbeat_s']} s per charger, "
             f"{result['window_s']} s window per step. Target: < {TARGET_KIB:g} KiB per connection.", "",
             "| connections | RSS MiB | KiB/conn (this step) | KiB/conn (from 0) | login ms/charger (wall) "
             "| node CPU ms/login | heartbeats | p50 ms | p99 ms | errors | load 1m |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["steps"]:
        if "phase" in r:
            extra = f" ({r['kib_per_connection_reconnected']} KiB per connection over the closed state)" \
                if "kib_per_connection_reconnected" in r else ""
            lines.append(f"| {r['phase']}: {r['connections']} | {r['rss_kib'] / 1024:.1f} | - | - | - | - | - | - | - "
                         f"| - | - |{extra}")
            continue
        if not r["connections"]:
            lines.append(f"| 0 | {r['rss_kib'] / 1024:.1f} | - | - | - | - | - | - | - | - | - |")
            continue
        hb = r["heartbeat_ms"]
        lines.append(f"| {r['connections']} | {r['rss_kib'] / 1024:.1f} | {r['kib_per_connection_step']} | "
                     f"{r['kib_per_connection_total']} | {r['login_ms_per_charger_wall']} | {r['node_cpu_ms_per_login']} | "
                     f"{r['heartbeats']} | {hb['p50']} | {hb['p99']} | {r['heartbeat_errors'] + r['failed_connects']} | "
                     f"{r['load_1m']} |")
    trace = result.get("tracemalloc")
    if trace:
        lines += ["", f"tracemalloc: {trace['traced_kib_per_connection']} KiB of Python heap per connection.", "",
                  "| allocated at | bytes/conn | blocks/conn |", "|---|---|---|"]
        lines += [f"| `{t['where']}` | {t['bytes_per_connection']} | {t['blocks_per_connection']} |"
                  for t in trace["top_lines"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("node", "endpoint"), default="node")
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 2000])
    parser.add_argument("--heartbeat-s", type=float, default=60.0, help="seconds between one charger's Heartbeats")
    parser.add_argument("--window", type=float, default=30.0, help="seconds of heartbeats after each step")
    parser.add_argument("--trace", action="store_true", help="endpoint mode: tracemalloc in the child")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--reconnect", action="store_true",
                        help="after the steps, close every connection and connect them all again (measured)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--serve-endpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_endpoint is not None:
        trio.run(serve_endpoint, args.serve_endpoint)
        return 0
    if args.out is None:
        parser.error("--out FILE is required")
    if sorted(args.steps) != args.steps or not 1 <= args.steps[0] or args.steps[-1] > 15_000:
        parser.error("--steps: increasing connection counts, at most 15000")
    from node_throughput import code_version

    code = code_version()
    result = endpoint_mode(args) if args.mode == "endpoint" else node_mode(args)
    result.update({"code": code, "heartbeat_s": args.heartbeat_s, "window_s": args.window,
                   "cpu_count": os.cpu_count(), "finished_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "target_kib": TARGET_KIB})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
