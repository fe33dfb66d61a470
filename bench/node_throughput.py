"""Benchmark: end to end throughput of a 4-node DEVSEN network under OCPP load.

Starts anvil and 4 `devsen node` processes with the devnet helpers, registers one device
per simulated charger (own chargeBoxId and password), then for each C in --chargers runs C
concurrent OCPP 1.6 chargers, connected round-robin to the nodes, each alternating
Heartbeat and MeterValues in a closed loop (one outstanding CALL, as OCPP-J requires) for
--duration seconds. A node replies only after the block carrying the message is committed
and applied, so reply latency is commit latency.

Measured per run: committed events/s (from the nodes' /v1/status `app.events` counters and
from replies received), reply latency p50/p99, blocks/s, payloads per block, CPU and RSS of
every node process (from /proc), plus one run with a node SIGKILLed mid-run (its chargers
fail over to the next node), and the cost of one uncached chain read. With --profile, py-spy
(if installed in the venv) samples node 1 during the largest run, summarised per area.
Prints a table and writes bench/results/node_throughput.json and .md.

    .venv/bin/python bench/node_throughput.py [--chargers 1 10 50 100] [--duration 20]

Everything runs on 127.0.0.1; every process started here is stopped by pid on exit.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError

from anchoring.chain import ChainClient, Deployment, TransactionSender, connect
from anchoring.chain.anvil import AnvilProcess, start_anvil
from anchoring.chain.client import DEFAULT_MAX_POWER_W
from devsen.config import ConsensusSection
from devsen.demo_charger import (
    ChargerCallFailed,
    DemoCharger,
    connect_demo_charger,
    demo_meter_key,
    iso_now,
)
from devsen.devnet import (
    CHAIN_ID,
    DevnetNode,
    deploy_network,
    prepare_nodes,
    start_node_process,
    stop_process,
    wait_until_serving,
)
from devsen.http_api import http_get_json
from devsen.wallet import create_device
from primitives.credentials import new_auth_credential

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ocpp_ingest import cpu_seconds, percentile, rss_kib  # noqa: E402  (the sibling bench script's /proc helpers)

SIGNED = {"on": False}  # --signed: every MeterValues also carries an OCMF-signed reading (test key)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NODES = 4
TOTAL_BUDGET_S = 360.0  # the whole benchmark, setup included
CONNECT_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 35.0
STATUS_TIMEOUT_S = 10.0
MAX_LATENCIES = 1_000_000  # bound on samples kept per run
MAX_UNANSWERED_KEPT = 20
RSS_SAMPLE_S = 5.0
PY_SPY = Path(sys.executable).parent / "py-spy"


def charger_id(index: int) -> str:
    return f"BENCH-CP-{index:04d}"


def charger_password(index: int) -> str:
    return f"bench-password-{index:04d}"  # bench devnet only


# ---------------------------------------------------------------- network setup

def register_devices(anvil: AnvilProcess, deployment_path: Path, count: int, shared_password: str | None = None) -> None:
    """One device per simulated charger, created by the devnet's device manager (dev key 1),
    one transaction after another on the automining chain (~60 ms of scrypt each). With
    `shared_password` every device gets that password's one salted hash (bench only: hashed
    once, so thousands of devices register in seconds; a node still runs scrypt per login)."""
    w3 = connect(anvil.url)
    deployment = Deployment.from_json(deployment_path.read_text())
    manager = ChainClient(w3, deployment, TransactionSender(w3, anvil.dev_keys[1]))
    if shared_password is not None:
        salt, auth_hash = new_auth_credential(shared_password)
        for index in range(count):
            manager.create_device(charger_id(index), location="bench", connector_count=2, price_per_kwh=300_000,
                                  per_minute_fee=0, auth_salt=salt, auth_hash=auth_hash,
                                  max_power_w=DEFAULT_MAX_POWER_W)
        return
    for index in range(count):
        create_device(manager, charger_id(index), charger_password(index), connectors=2, location="bench")


def probe_device_reads(anvil: AnvilProcess, deployment_path: Path, reads: int = 50) -> dict[str, Any]:
    """Wall time of one uncached device read (`ChainClient.device` at head - 2, what the ledger's
    chain view does on a cache miss) and the JSON-RPC requests it makes (counted in anvil's log);
    run before the nodes start."""
    w3 = connect(anvil.url)
    client = ChainClient(w3, Deployment.from_json(deployment_path.read_text()), None)
    block = max(int(w3.eth.block_number) - 2, 0)
    client.device(charger_id(0), block)
    log_size = anvil.log_path.stat().st_size
    started = time.perf_counter()
    for _ in range(reads):
        client.device(charger_id(0), block)
    elapsed = time.perf_counter() - started
    time.sleep(0.3)  # let anvil flush its log
    with open(anvil.log_path, "rb") as log:
        log.seek(log_size)
        methods = collections.Counter(line.strip() for line in log.read().decode(errors="replace").splitlines()
                                      if line.strip().startswith("eth_"))
    return {"device_read_ms": round(1000 * elapsed / reads, 2),
            "rpc_requests_per_device_read": {m: round(n / reads, 2) for m, n in methods.items()}}


@dataclass
class Network:
    """The running benchmark network."""

    root: Path
    anvil: AnvilProcess
    nodes: list[DevnetNode]
    dead: set[int] = field(default_factory=set)  # indexes (0-based) of nodes killed on purpose
    chain_read_probe: dict[str, Any] = field(default_factory=dict)

    def live_nodes(self) -> list[DevnetNode]:
        return [n for i, n in enumerate(self.nodes) if i not in self.dead]


def start_network(root: Path, devices: int, shared_password: str | None = None,
                  start_node: Callable[[DevnetNode], None] = start_node_process,
                  block_interval_ms: int | None = None) -> Network:
    """anvil (automining while seeding, then one block per second), contracts, devices, 4 nodes
    (each started by `start_node`, with `consensus.block_interval_ms` set when given)."""
    anvil = start_anvil(root / "anvil.log", chain_id=CHAIN_ID)
    network = Network(root, anvil, [])
    try:
        deployment_path = root / "deployment.json"
        network.nodes = prepare_nodes(root, NODES, deployment_path, anvil.url)
        if block_interval_ms is not None:
            for node in network.nodes:
                node.config = dataclasses.replace(node.config, consensus=dataclasses.replace(
                    node.config.consensus, block_interval_ms=block_interval_ms))
                node.config.consensus.validate()
        deploy_network(anvil, network.nodes, deployment_path)
        started = time.monotonic()
        register_devices(anvil, deployment_path, devices, shared_password)
        print(f"registered {devices} devices in {time.monotonic() - started:.1f} s")
        network.chain_read_probe = probe_device_reads(anvil, deployment_path)
        print(f"one device() chain read: {network.chain_read_probe}")
        connect(anvil.url).provider.make_request("evm_setIntervalMining", [1])  # type: ignore[arg-type]
        for node in network.nodes:
            start_node(node)
        trio.run(wait_until_serving, network.nodes)
    except BaseException:
        stop_network(network)
        raise
    return network


def stop_network(network: Network) -> None:
    for node in network.nodes:
        stop_process(node.process)
    network.anvil.stop()


@contextmanager
def running_network(prefix: str, devices: int, keep: bool, shared_password: str | None = None,
                    start_node: Callable[[DevnetNode], None] = start_node_process,
                    block_interval_ms: int | None = None) -> Iterator[Network]:
    """A network in a fresh temporary directory, stopped (and the directory removed unless
    `keep`) on the way out, whatever happens."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        network = start_network(root, devices, shared_password, start_node, block_interval_ms)
        try:
            yield network
        finally:
            stop_network(network)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- load

@dataclass
class RunStats:
    """What the simulated chargers saw during one run."""

    latencies_ms: list[float] = field(default_factory=list)
    replies_in_window: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    connected: int = 0
    failovers: int = 0
    connect_seconds: float = 0.0
    rss_series: list[float] = field(default_factory=list)  # node-1 RSS MiB every RSS_SAMPLE_S of the window
    unanswered: list[dict[str, Any]] = field(default_factory=list)  # first MAX_UNANSWERED_KEPT timeouts

    def record(self, latency_ms: float, in_window: bool) -> None:
        if in_window:
            self.replies_in_window += 1
            if len(self.latencies_ms) < MAX_LATENCIES:
                self.latencies_ms.append(latency_ms)


@dataclass
class Window:
    """The measurement window, shared by every charger task of a run."""

    go: trio.Event = field(default_factory=trio.Event)
    start: float = 0.0
    end: float = float("inf")

    def contains(self, sent_at: float, replied_at: float) -> bool:
        return self.go.is_set() and sent_at >= self.start and replied_at <= self.end


async def closed_loop(charger: DemoCharger, node_name: str, window: Window, stats: RunStats, seq: list[int]) -> None:
    """Heartbeat and MeterValues alternately until the window ends."""
    while trio.current_time() < window.end:
        seq[0] += 1
        if seq[0] % 2:
            action, payload = "Heartbeat", {}
        else:
            samples: list[dict[str, Any]] = [
                {"value": str(seq[0]), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]
            if charger.meter_key is not None:
                samples.append(charger.signed_sample("", "X", seq[0]))
            payload = {"connectorId": 1, "meterValue": [{"timestamp": iso_now(), "sampledValue": samples}]}
            action = "MeterValues"
        sent_at = trio.current_time()
        try:
            # DemoCharger's own ids ("{chargeBoxId}-{n}-{ns}") pass OCPP's 36-character limit from
            # the 100th message of a 13-character chargeBoxId on; these stay under 26 and unique.
            await charger.call(action, payload, message_id=f"{seq[0]}-{time.time_ns()}")
        except ChargerCallFailed as exc:
            stats.errors[f"CALLERROR {exc.code}"] += 1
            await trio.sleep(0.1)
            continue
        except trio.TooSlowError:
            stats.errors["reply timeout"] += 1
            if len(stats.unanswered) < MAX_UNANSWERED_KEPT:
                stats.unanswered.append({"charger": charger.charge_box_id, "message_id": charger.sent[-1][0],
                                         "action": action, "node": node_name})
            continue
        replied_at = trio.current_time()
        stats.record((replied_at - sent_at) * 1000, window.contains(sent_at, replied_at))


async def run_charger(network: Network, index: int, window: Window, stats: RunStats,
                      ready: list[int], all_ready: trio.Event, count: int) -> None:
    """Connect to node index % 4, boot, then load until the window ends; fail over to the next
    live node when the connection is lost."""
    node_index = index % NODES
    first = True
    seq = [0]
    while trio.current_time() < window.end:
        if node_index in network.dead:
            node_index = (node_index + 1) % NODES
            continue
        node = network.nodes[node_index]
        try:
            meter_key = demo_meter_key(charger_id(index)) if SIGNED["on"] else None
            async with connect_demo_charger(node.ocpp_url, charger_id(index), charger_password(index),
                                            meter_key) as charger:
                charger.timeout_s = CALL_TIMEOUT_S
                await charger.call("BootNotification", {"chargePointVendor": "DEVSEN", "chargePointModel": "bench"})
                if first:
                    first = False
                    stats.connected += 1
                    ready[0] += 1
                    if ready[0] == count:
                        all_ready.set()
                    await window.go.wait()
                await closed_loop(charger, node.config.node.name, window, stats, seq)
                return
        except (ConnectionClosed, HandshakeError, OSError, trio.TooSlowError, ChargerCallFailed) as exc:
            stats.errors[f"connection: {type(exc).__name__}"] += 1
            if not first:
                stats.failovers += 1
                node_index = (node_index + 1) % NODES
            await trio.sleep(0.2)


def rpc_counts(log_path: Path, offset: int) -> tuple[collections.Counter[str], int]:
    """JSON-RPC methods anvil logged after byte `offset`; and the log's new size."""
    with open(log_path, "rb") as log:
        log.seek(offset)
        text = log.read()
    methods = collections.Counter(line.strip() for line in text.decode(errors="replace").splitlines()
                                  if line.strip().startswith(("eth_", "net_", "web3_", "anvil_", "evm_")))
    return methods, offset + len(text)


async def node_status(node: DevnetNode) -> dict[str, Any] | None:
    try:
        status, body = await http_get_json(node.http_url + "/v1/status", timeout=STATUS_TIMEOUT_S)
    except (OSError, trio.TooSlowError, ValueError):
        return None
    return body if status == 200 else None


async def snapshot(network: Network) -> dict[str, Any]:
    """Status, CPU seconds and memory of every live node (and anvil), at one moment."""
    out: dict[str, Any] = {"t": trio.current_time(), "nodes": {}}
    for i, node in enumerate(network.nodes):
        if i in network.dead or node.process is None or node.process.poll() is not None:
            continue
        status = await node_status(node)
        out["nodes"][i] = {"status": status, "cpu_s": cpu_seconds(node.process.pid),
                           "mem": rss_kib(node.process.pid)}
    out["anvil_cpu_s"] = cpu_seconds(network.anvil.pid)
    out["client_cpu_s"] = cpu_seconds(os.getpid())
    return out


def counter_delta(before: dict[str, Any], after: dict[str, Any], node: int, *path: str) -> int | None:
    values = []
    for snap in (before, after):
        entry = snap["nodes"].get(node)
        if entry is None or entry["status"] is None:
            return None
        value: Any = entry["status"]
        for key in path:
            value = value.get(key, 0)
        values.append(int(value))
    return values[1] - values[0]


def summarize(name: str, chargers: int, stats: RunStats, before: dict[str, Any], after: dict[str, Any],
              kill_after_s: float | None = None, after_kill: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row of results from the chargers' figures and two snapshots."""
    elapsed = after["t"] - before["t"]
    reference = min(after["nodes"])  # a node alive throughout
    events = counter_delta(before, after, reference, "app", "events")
    blocks = counter_delta(before, after, reference, "committed_height")
    payloads = counter_delta(before, after, reference, "consensus", "committed_payloads")
    latencies = sorted(stats.latencies_ms)
    rpcs: collections.Counter[str] = after.get("rpc_methods") or collections.Counter()
    nodes: dict[str, Any] = {}
    for i, entry in after["nodes"].items():
        cpu = entry["cpu_s"] - before["nodes"][i]["cpu_s"]
        nodes[f"node-{i + 1}"] = {"cpu_pct": round(100 * cpu / elapsed, 1), "rss_mib": round(entry["mem"]["VmRSS"] / 1024, 1),
                                  "peak_rss_mib": round(entry["mem"]["VmHWM"] / 1024, 1)}
    row: dict[str, Any] = {
        "run": name, "chargers": chargers, "connected": stats.connected,
        "connect_s": round(stats.connect_seconds, 2), "window_s": round(elapsed, 2),
        "events_per_s_ledger": round(events / elapsed, 1) if events is not None else None,
        "replies_per_s": round(stats.replies_in_window / elapsed, 1),
        "latency_ms": {"p50": _round(percentile(latencies, 0.5)), "p99": _round(percentile(latencies, 0.99)),
                       "max": _round(latencies[-1] if latencies else None)},
        "blocks_per_s": round(blocks / elapsed, 2) if blocks is not None else None,
        "payloads_per_block": round(payloads / blocks, 1) if payloads is not None and blocks else None,
        "events_per_block": round(events / blocks, 1) if events is not None and blocks else None,
        "nodes": nodes,
        "node_cpu_pct_total": round(sum(n["cpu_pct"] for n in nodes.values()), 1),
        "anvil_cpu_pct": round(100 * (after["anvil_cpu_s"] - before["anvil_cpu_s"]) / elapsed, 1),
        # JSON-RPC requests anvil served in the window (all nodes), per second and per block per node
        "anvil_rpc_per_s": round(sum(rpcs.values()) / elapsed, 1),
        "rpc_per_block_per_node": round(sum(rpcs.values()) / blocks / NODES, 2) if blocks else None,
        "anvil_rpc_methods_per_s": {m: round(n / elapsed, 1) for m, n in rpcs.most_common()},
        "client_cpu_pct": round(100 * (after["client_cpu_s"] - before["client_cpu_s"]) / elapsed, 1),
        "errors": dict(stats.errors), "failovers": stats.failovers, "unanswered": stats.unanswered,
        "node1_rss_mib_every_5s": stats.rss_series,
        "machine_load_1m": round(os.getloadavg()[0], 1),
    }
    if kill_after_s is not None and after_kill is not None:
        tail = after["t"] - after_kill["t"]
        tail_events = counter_delta(after_kill, after, reference, "app", "events")
        tail_blocks = counter_delta(after_kill, after, reference, "committed_height")
        row["killed"] = {"node": "node-4", "at_s": kill_after_s, "window_after_kill_s": round(tail, 2),
                         "events_per_s_3_of_4": round(tail_events / tail, 1) if tail_events is not None else None,
                         "blocks_per_s_3_of_4": round(tail_blocks / tail, 2) if tail_blocks is not None else None}
    return row


def _round(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 1)


async def run_load(network: Network, chargers: int, duration_s: float, *, kill_after_s: float | None = None,
                   profile_out: Path | None = None) -> dict[str, Any]:
    """C chargers in a closed loop for `duration_s`; optionally SIGKILL node 4 mid-run."""
    stats, window = RunStats(), Window()
    ready, all_ready = [0], trio.Event()
    name = f"C={chargers}" + (" kill node-4" if kill_after_s is not None else "")
    profiler: trio.Process | None = None
    after_kill: dict[str, Any] | None = None
    async with trio.open_nursery() as nursery:
        connect_started = trio.current_time()
        for index in range(chargers):
            nursery.start_soon(run_charger, network, index, window, stats, ready, all_ready, chargers)
        with trio.move_on_after(CONNECT_TIMEOUT_S):
            await all_ready.wait()
        stats.connect_seconds = trio.current_time() - connect_started
        before = await snapshot(network)
        _, rpc_offset = rpc_counts(network.anvil.log_path, 0)
        window.start, window.end = trio.current_time(), trio.current_time() + duration_s
        window.go.set()
        nursery.start_soon(sample_rss, network, window, stats.rss_series)
        if profile_out is not None and PY_SPY.exists():
            node = network.nodes[0]
            assert node.process is not None
            profiler = await trio.lowlevel.open_process(
                [str(PY_SPY), "record", "--pid", str(node.process.pid), "--duration", str(int(duration_s) - 2),
                 "--rate", "50", "--format", "raw", "--output", str(profile_out), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kill_after_s is not None:
            await trio.sleep(kill_after_s)
            victim = network.nodes[NODES - 1]
            assert victim.process is not None
            network.dead.add(NODES - 1)
            victim.process.send_signal(signal.SIGKILL)
            await trio.to_thread.run_sync(lambda: victim.process.wait(10) if victim.process else None)
            await trio.sleep(2.0)  # let the remaining 3 settle into rounds without node 4
            after_kill = await snapshot(network)
        await trio.sleep_until(window.end)
        after = await snapshot(network)
        after["rpc_methods"], _ = rpc_counts(network.anvil.log_path, rpc_offset)
        nursery.cancel_scope.deadline = trio.current_time() + CALL_TIMEOUT_S + 5
    if profiler is not None:
        with trio.move_on_after(30):
            await profiler.wait()
        if profiler.returncode is None:
            profiler.kill()
            await profiler.wait()
    await look_up_unanswered(network, stats.unanswered)
    return summarize(name, chargers, stats, before, after, kill_after_s, after_kill)


async def sample_rss(network: Network, window: Window, series: list[float]) -> None:
    """node-1's RSS (MiB) at the start of the window and every RSS_SAMPLE_S until its end."""
    node = network.nodes[0]
    while trio.current_time() <= window.end and node.process is not None and node.process.poll() is None:
        series.append(round(rss_kib(node.process.pid)["VmRSS"] / 1024, 1))
        await trio.sleep(RSS_SAMPLE_S)


async def look_up_unanswered(network: Network, unanswered: list[dict[str, Any]]) -> None:
    """For each CALL left without a reply: did the live nodes commit it (and at which height)?"""
    for entry in unanswered:
        found = {}
        for i, node in enumerate(network.nodes):
            if i in network.dead:
                continue
            url = f"{node.http_url}/v1/chargers/{entry['charger']}/messages/{entry['message_id']}"
            try:
                status, body = await http_get_json(url, timeout=STATUS_TIMEOUT_S)
            except (OSError, trio.TooSlowError, ValueError) as exc:
                status, body = 0, {"error": type(exc).__name__}
            found[node.config.node.name] = body.get("height", "committed") if status == 200 else status
        entry["committed_per_node"] = found


async def idle_run(network: Network, seconds: float) -> dict[str, Any]:
    """No chargers: what the network costs doing nothing."""
    before = await snapshot(network)
    await trio.sleep(seconds)
    after = await snapshot(network)
    return summarize("idle", 0, RunStats(), before, after)


# ---------------------------------------------------------------- py-spy summary

# Areas of a node's time, first match wins: (area, file prefixes of any frame in the stack).
PROFILE_AREAS = (
    ("chain JSON-RPC (web3)", ("web3/",)),
    ("WAL, block store, anchor index (disk)", ("consensus/wal.py", "consensus/store.py", "sqlite3/",
                                               "anchoring/proofs.py", "anchoring/submitter")),
    ("signatures and hashes", ("nacl/", "coincurve/", "Crypto/", "eth_keys/", "primitives/")),
    ("OCPP endpoint (websocket, JSON schema)", ("ocpp_adapter/", "trio_websocket/", "wsproto/", "jsonschema/")),
    ("p2p (libp2p, links, gossip)", ("libp2p/", "p2p/", "multiaddr/")),
    ("ledger and app apply", ("devsen/ledger/", "devsen/app.py")),
    ("consensus core and service", ("consensus/", "devsen/consensus_service.py")),
    ("HTTP status API", ("devsen/http_api.py",)),
    ("event loop wait (epoll)", ("trio/_core/_io_epoll.py",)),
)
BOILERPLATE_FRAMES = ("<frozen runpy>", "devsen/cli.py", "threading.py", "trio/_core/_run.py",
                      "trio/_core/_thread_cache.py", "trio/_threads.py", "outcome/_impl.py")


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Sample shares from py-spy's raw (collapsed) output: per area (PROFILE_AREAS; all threads and
    the event loop thread alone), per function (self), and per project or library function
    (inclusive, boilerplate left out)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    loop_areas: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short_frame(f) for f in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        files = [f.rsplit(" (", 1)[-1] for f in frames]
        area = next((a for a, prefixes in PROFILE_AREAS if any(f.startswith(prefixes) for f in files)), "other")
        areas[area] += count
        if not any(f.startswith("threading.py") for f in files):  # the trio thread, not a to_thread worker
            loop_areas[area] += count
    share = (lambda c: round(100 * c / total, 1)) if total else (lambda c: 0.0)
    kept = [(f, c) for f, c in inclusive.most_common()
            if not f.rsplit(" (", 1)[-1].startswith(BOILERPLATE_FRAMES) and not f.startswith("run_node ")]
    return {"samples": total,
            "areas_pct": [[a, share(c), share(loop_areas[a])] for a, c in areas.most_common()],
            "event_loop_thread_pct": share(sum(loop_areas.values())),
            "self_pct": [[f, share(c)] for f, c in own.most_common(top)],
            "inclusive_pct": [[f, share(c)] for f, c in kept[:top * 2]]}


def _short_frame(frame: str) -> str:
    """`function (path/to/file.py:123)` -> `function (file.py)`: group lines of one function."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    for marker in ("site-packages/", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{name} ({file})"


# ---------------------------------------------------------------- report

def markdown(result: dict[str, Any]) -> str:
    code = result["code"]
    lines = ["# Node throughput: 4 validator processes + anvil on one 2-core machine", "",
             result["note"], "",
             f"Code: commit {code['commit'][:12]}, {code['product_files_changed']} product files modified in the "
             "work tree at the time of the run.", "",
             "| run | chargers | events/s (ledger) | replies/s | p50 ms | p99 ms | blocks/s | payloads/block "
             "| node CPU % (sum of 4) | node RSS MiB (max) | errors | machine load (1 min) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["runs"]:
        rss = max((n["rss_mib"] for n in row["nodes"].values()), default=0)
        errors = sum(row["errors"].values())
        lines.append(f"| {row['run']} | {row['chargers']} | {row['events_per_s_ledger']} | {row['replies_per_s']} "
                     f"| {row['latency_ms']['p50']} | {row['latency_ms']['p99']} | {row['blocks_per_s']} "
                     f"| {row['payloads_per_block']} | {row['node_cpu_pct_total']} | {rss} | {errors} "
                     f"| {row['machine_load_1m']} |")
    for row in result["runs"]:
        if "killed" in row:
            k = row["killed"]
            lines += ["", f"Kill run: node-4 SIGKILLed {k['at_s']} s into the window; over the last "
                          f"{k['window_after_kill_s']} s with 3 of 4 up: {k['events_per_s_3_of_4']} events/s, "
                          f"{k['blocks_per_s_3_of_4']} blocks/s; {row['failovers']} charger failovers."]
    probe = result.get("chain_read_probe")
    if probe:
        lines += ["", f"One uncached `ChainClient.device` read (the chain read behind a charger event when the "
                      f"node's read cache misses), from a fresh process to the same anvil: {probe['device_read_ms']} "
                      f"ms, JSON-RPC requests per read: {probe['rpc_requests_per_device_read']}."]
    profile = result.get("profile")
    if profile:
        lines += ["", f"## Where node-1's time goes (py-spy, {profile['samples']} samples, run {profile['run']})", "",
                  "| area (any frame of the stack, first match) | % of samples | of which on the event loop thread |",
                  "|---|---|---|"]
        lines += [f"| {a} | {p} | {loop} |" for a, p, loop in profile["areas_pct"]]
        lines += ["", f"py-spy samples every thread; {profile['event_loop_thread_pct']} % of samples were on the trio "
                      "thread, the rest in worker threads (trio.to_thread: chain reads, hashing)."]
        lines += ["", "| function (self) | % |", "|---|---|"]
        lines += [f"| `{f}` | {p} |" for f, p in profile["self_pct"]]
        lines += ["", "| function (inclusive) | % |", "|---|---|"]
        lines += [f"| `{f}` | {p} |" for f, p in profile["inclusive_pct"]]
    return "\n".join(lines) + "\n"


TABLE_HEADER = (f"{'run':<18}{'ev/s':>8}{'rep/s':>8}{'p50ms':>9}{'p99ms':>9}{'blk/s':>7}{'pl/blk':>8}"
                f"{'cpu%':>7}{'rssMiB':>8}{'err':>5}")


def print_table(rows: list[dict[str, Any]]) -> None:
    """One line per run (node CPU % summed over the nodes, RSS of the largest node)."""
    for row in rows:
        rss = max((n["rss_mib"] for n in row["nodes"].values()), default=0)
        print(f"{row['run']:<18}{row['events_per_s_ledger'] or 0:>8}{row['replies_per_s']:>8}"
              f"{row['latency_ms']['p50'] or 0:>9}{row['latency_ms']['p99'] or 0:>9}{row['blocks_per_s'] or 0:>7}"
              f"{row['payloads_per_block'] or 0:>8}{row['node_cpu_pct_total']:>7}{rss:>8}{sum(row['errors'].values()):>5}")


def code_version() -> dict[str, Any]:
    """The commit the nodes ran, and whether product files differed from it (shared work tree)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(HERE.parent), *args], capture_output=True, text=True, timeout=10)
        return done.stdout.strip()
    changed = git("status", "--porcelain", "--", "consensus", "devsen", "anchoring", "p2p", "ocpp_adapter")
    return {"commit": git("rev-parse", "HEAD"), "product_files_changed": len(changed.splitlines())}


async def bench(network: Network, args: argparse.Namespace) -> dict[str, Any]:
    print(TABLE_HEADER)
    runs = [await idle_run(network, 5.0)]
    print_table(runs[-1:])
    profile_path = network.root / "node1.pyspy.txt"
    for count in args.chargers:
        largest = count == max(args.chargers)
        runs.append(await run_load(network, count, args.duration,
                                   profile_out=profile_path if args.profile and largest else None))
        print_table(runs[-1:])
    if not args.no_kill:
        kill_chargers = min(50, max(args.chargers))
        runs.append(await run_load(network, kill_chargers, args.duration, kill_after_s=round(args.duration / 3, 1)))
        print_table(runs[-1:])
    result: dict[str, Any] = {
        "nodes": NODES, "duration_s": args.duration, "cpu_count": os.cpu_count(), "runs": runs,
        "chain_read_probe": network.chain_read_probe,
        "note": ("All on one machine: 4 node processes, anvil (1 block/s) and the chargers (one trio process) share "
                 f"{os.cpu_count()} cores. Chargers alternate Heartbeat and MeterValues in a closed loop; a reply "
                 "comes only after commit, so reply latency = commit latency. replies/s counts CALLs sent and answered "
                 "inside the window (under a long latency it trails events/s). events/s from /v1/status app.events "
                 "deltas of a node alive throughout; CPU % is of one core. The machine is shared with other "
                 "work: its 1-minute load average is given per run, and figures vary between invocations."),
    }
    if profile_path.exists():
        result["profile"] = {"run": f"C={max(args.chargers)}", **summarize_profile(profile_path)}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chargers", type=int, nargs="+", default=[1, 10, 50, 100])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per run")
    parser.add_argument("--profile", action="store_true", help="py-spy node 1 during the largest run")
    parser.add_argument("--no-kill", action="store_true", help="skip the run with node 4 SIGKILLed")
    parser.add_argument("--keep", action="store_true", help="keep the data directory (node logs)")
    parser.add_argument("--signed", action="store_true", help="chargers sign their readings (OCMF, test keys)")
    parser.add_argument("--block-interval-ms", type=int, default=None,
                        help="the nodes' consensus.block_interval_ms (default: the config default)")
    args = parser.parse_args()
    SIGNED["on"] = args.signed
    if not all(1 <= c <= 1000 for c in args.chargers) or not 5 <= args.duration <= 60:
        parser.error("chargers in 1..1000, duration in 5..60 s")
    started = time.monotonic()
    code = code_version()  # what the node processes are about to load
    with running_network("devsen-bench-", max(args.chargers), args.keep,
                         block_interval_ms=args.block_interval_ms) as network:
        print(f"network up in {time.monotonic() - started:.1f} s (data in {network.root})")
        result = trio.run(_bench_bounded, network, args, TOTAL_BUDGET_S - (time.monotonic() - started))
    result["code"] = code
    result["block_interval_ms"] = network_block_interval(args.block_interval_ms)
    result["total_s"] = round(time.monotonic() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "node_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "node_throughput.md").write_text(markdown(result))
    print(f"total {result['total_s']} s; wrote {RESULTS / 'node_throughput.json'} and .md")
    return 0


def network_block_interval(override: int | None) -> int:
    """The nodes' consensus.block_interval_ms (the override, else the config default)."""
    return override if override is not None else ConsensusSection().block_interval_ms


async def _bench_bounded(network: Network, args: argparse.Namespace, budget_s: float) -> dict[str, Any]:
    with trio.fail_after(budget_s):
        return await bench(network, args)


if __name__ == "__main__":
    sys.exit(main())
