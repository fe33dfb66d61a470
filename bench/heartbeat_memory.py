"""Benchmark: does a node's memory plateau under a steady stream of committed Heartbeats? (issue 16)

A 4-node devnet (bench/node_throughput.py's network: anvil, `--chargers` devices registered on
chain with one shared password, 4 `devsen node` processes); every charger connects to node-1 and
sends a Heartbeat every `--heartbeat-s` seconds (staggered; a node replies only once the block
carrying it is committed) for `--minutes`. node-1's RSS is sampled every `--sample-s`; KiB per
committed Heartbeat is the RSS growth after the first minute (warm-up: connections, first
logins, caches filling) divided by the Heartbeats answered in the same span, and the run says
whether RSS plateaus (the last third of the samples grew less than `PLATEAU_KIB` per minute).

`--trace`: node-1 runs under tracemalloc (bench/traced_node.py, a wrapper outside the product
path: SIGUSR1 writes a snapshot) and the run lists the allocation tracebacks that grew most
between the end of the warm-up and the end of the run. `--cap-scale 0.1`: node-1's local
per-event caches (commit receipts, the mempool's committed ids, recovered vouchers, the OCPP
reply cache, the HTTP message look-up) get a tenth of their caps (same wrapper), so a few
minutes of Heartbeats fill them and show where RSS levels off.

Each run is stored under `--label` in --out (JSON, other labels kept) and the same name .md.

    .venv/bin/python bench/heartbeat_memory.py --label before --minutes 4 [--trace]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError

from devsen.demo_charger import ChargerCallFailed, DemoCharger, connect_demo_charger
from devsen.devnet import DevnetNode, start_node_process

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import PASSWORD  # noqa: E402  (sibling bench scripts)
from node_throughput import charger_id, code_version, node_status, running_network  # noqa: E402
from ocpp_ingest import cpu_seconds, rss_kib  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "heartbeat_memory.json"
CALL_TIMEOUT_S = 30.0
CONNECT_CONCURRENCY = 16
WARMUP_S = 60.0
PLATEAU_KIB_PER_MIN = 512.0  # growth over the last third below this, per minute: a plateau
TRACED_NODE = HERE / "traced_node.py"
SNAPSHOT_TIMEOUT_S = 120.0


class Beats:
    """Heartbeats answered (committed) and failed, shared by the charger tasks."""

    def __init__(self) -> None:
        self.ok = 0
        self.errors = 0
        self.connected = 0
        self.connect_errors = 0


async def charger(url: str, charge_box_id: str, period_s: float, beats: Beats, limit: trio.CapacityLimiter) -> None:
    seq = 0
    while True:
        try:
            async with limit:
                ws = connect_demo_charger(url, charge_box_id, PASSWORD)
                client: DemoCharger = await ws.__aenter__()
            try:
                beats.connected += 1
                client.timeout_s = CALL_TIMEOUT_S
                await trio.sleep((zlib.crc32(charge_box_id.encode()) % 1000) / 1000 * period_s)
                while True:
                    started = trio.current_time()
                    seq += 1
                    try:
                        await client.call("Heartbeat", {}, message_id=f"{seq}-{time.time_ns()}")
                        beats.ok += 1
                    except (ChargerCallFailed, trio.TooSlowError):
                        beats.errors += 1
                    await trio.sleep_until(started + period_s)
            finally:
                beats.connected -= 1
                await ws.__aexit__(None, None, None)
        except (HandshakeError, ConnectionClosed, trio.BrokenResourceError, OSError, trio.TooSlowError):
            beats.connect_errors += 1
            await trio.sleep(1.0)


class Snapshots:
    """tracemalloc snapshots of the traced node-1 (written by bench/traced_node.py on SIGUSR1)."""

    def __init__(self, directory: Path, pid: int) -> None:
        self.directory = directory
        self.pid = pid
        self.count = 0

    async def take(self) -> Path:
        self.count += 1
        os.kill(self.pid, signal.SIGUSR1)
        with trio.fail_after(SNAPSHOT_TIMEOUT_S):
            while not (self.directory / f"done-{self.count}").exists():
                await trio.sleep(0.5)
        return self.directory / f"snap-{self.count}.bin"


async def drive(node: DevnetNode, pid: int, chargers: int, period_s: float, minutes: float, sample_s: float,
                snapshots: Snapshots | None) -> dict[str, Any]:
    beats = Beats()
    limit = trio.CapacityLimiter(CONNECT_CONCURRENCY)
    samples: list[dict[str, Any]] = []
    snaps: list[Path] = []
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        for i in range(chargers):
            nursery.start_soon(charger, node.ocpp_url, charger_id(i), period_s, beats, limit)
        end = t0 + 60 * minutes
        next_sample = t0
        while trio.current_time() < end:
            await trio.sleep_until(next_sample)
            status = await node_status(node) or {}
            elapsed = trio.current_time() - t0
            if snapshots is not None and not snaps and elapsed >= WARMUP_S:
                snaps.append(await snapshots.take())
            samples.append({"t_s": round(elapsed, 1), "rss_kib": rss_kib(pid)["VmRSS"],
                            "cpu_s": cpu_seconds(pid), "heartbeats": beats.ok, "errors": beats.errors,
                            "connected": beats.connected, "committed_height": status.get("committed_height"), "load_1m": round(os.getloadavg()[0], 2)})
            print(json.dumps(samples[-1]), flush=True)
            next_sample += sample_s
        if snapshots is not None:
            snaps.append(await snapshots.take())
        nursery.cancel_scope.cancel()
    return {"samples": samples, "snapshots": [str(p) for p in snaps], "connect_errors": beats.connect_errors}


def figures(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """KiB per committed Heartbeat after the warm-up, and whether the last third plateaus."""
    warm = [s for s in samples if s["t_s"] >= WARMUP_S] or samples
    first, last = warm[0], warm[-1]
    beats = last["heartbeats"] - first["heartbeats"]
    tail = warm[len(warm) * 2 // 3:]
    tail_minutes = (tail[-1]["t_s"] - tail[0]["t_s"]) / 60 if len(tail) > 1 else 0
    tail_growth = (tail[-1]["rss_kib"] - tail[0]["rss_kib"]) / tail_minutes if tail_minutes else None
    return {"heartbeats_after_warmup": beats,
            "rss_growth_kib_after_warmup": last["rss_kib"] - first["rss_kib"],
            "kib_per_heartbeat": round((last["rss_kib"] - first["rss_kib"]) / beats, 2) if beats else None,
            "heartbeats_per_s": round(beats / max(1e-9, last["t_s"] - first["t_s"]), 1),
            "last_third_kib_per_minute": round(tail_growth, 1) if tail_growth is not None else None,
            "plateau": tail_growth is not None and tail_growth < PLATEAU_KIB_PER_MIN}


def trace_summary(first: Path, last: Path, heartbeats: int, top: int = 15) -> dict[str, Any]:
    """The allocation tracebacks that grew most between two snapshots, bytes per Heartbeat."""
    before, after = tracemalloc.Snapshot.load(str(first)), tracemalloc.Snapshot.load(str(last))
    per = max(1, heartbeats)

    def short(path: str) -> str:
        return path.split("site-packages/", 1)[-1].split(str(HERE.parent) + "/", 1)[-1]
    by_trace = after.compare_to(before, "traceback")
    by_file = after.compare_to(before, "filename")
    return {"traced_growth_kib": round(sum(s.size_diff for s in by_trace) / 1024, 1),
            "traced_bytes_per_heartbeat": round(sum(s.size_diff for s in by_trace) / per, 1),
            "top_tracebacks": [{"bytes_per_heartbeat": round(s.size_diff / per, 1),
                                "blocks_per_heartbeat": round(s.count_diff / per, 3),
                                "frames": [f"{short(f.filename)}:{f.lineno}" for f in s.traceback][-8:]}
                               for s in by_trace[:top]],
            "top_files": [{"file": short(s.traceback[0].filename), "bytes_per_heartbeat": round(s.size_diff / per, 1)}
                          for s in by_file[:12]]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    snap_dir = Path(tempfile.mkdtemp(prefix="devsen-hbmem-snaps-"))
    first_index: list[int] = []

    def start(node: DevnetNode) -> None:
        if first_index and node.index != first_index[0] or not (args.trace or args.cap_scale):
            first_index.append(node.index)
            start_node_process(node)
            return
        first_index.append(node.index)
        node.config_path.write_text(_config_toml(node))
        env = {**os.environ, **({"DEVSEN_BENCH_SNAPSHOT_DIR": str(snap_dir)} if args.trace else {}),
               **({"DEVSEN_BENCH_CAP_SCALE": str(args.cap_scale)} if args.cap_scale else {})}
        with open(node.log_path, "ab") as log_file:
            node.process = subprocess.Popen(
                [sys.executable, str(TRACED_NODE), "node", "--config", str(node.config_path)], env=env,
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    try:
        with running_network("devsen-hbmem-", args.chargers, args.keep, PASSWORD, start) as network:
            node = network.nodes[0]
            assert node.process is not None
            snapshots = Snapshots(snap_dir, node.process.pid) if args.trace else None
            driven = trio.run(drive, node, node.process.pid, args.chargers, args.heartbeat_s,
                              args.minutes, args.sample_s, snapshots)
        result: dict[str, Any] = {"samples": driven["samples"], "connect_errors": driven["connect_errors"],
                                  **figures(driven["samples"])}
        if args.trace and len(driven["snapshots"]) == 2:
            result["tracemalloc"] = trace_summary(Path(driven["snapshots"][0]), Path(driven["snapshots"][1]),
                                                  result["heartbeats_after_warmup"])
    finally:
        shutil.rmtree(snap_dir, ignore_errors=True)
    return result


def _config_toml(node: DevnetNode) -> str:
    from devsen.config import config_to_toml

    return config_to_toml(node.config)


FINDINGS = """\
## What holds the memory (tracemalloc in node-1, then each structure's bytes per entry measured alone)

Every committed Heartbeat leaves one entry in each of these; all are bounded, none shrinks by itself:

| holder | bound | bytes/entry | at the bound |
|---|---|---|---|
| OCPP reply cache, `ocpp_adapter/idempotency.py` `ReplyCache` (server.py:234) | 100,000 entries (`reply_cache_entries`); its 600 s TTL was checked only on a hit, now decided entries past it go at every new submission: min(100,000, 600 s of messages) | ~740 before, ~460 after (no trio.Event per decided entry) | ~72 -> ~45 MiB (60,000 entries at 100 msg/s: ~27 MiB) |
| commit receipts, `devsen/consensus_service.py` `_receipts` | 100,000 (`MAX_RECENT_RECEIPTS`) | ~330 | ~32 MiB |
| mempool's committed ids, `consensus/mempool.py` `_committed` | 200,000 (`DEFAULT_COMMITTED_MEMORY`) | ~140 | ~27 MiB |
| recovered vouchers, `ocpp_adapter/vouching.py` `VouchCache` | 65,536 (`MAX_CACHED_VOUCHES`) | ~140 | ~9 MiB |
| decoded events, `devsen/app.py` `_decoded` | 4,096 payloads of <= 4 KiB | ~1,900 | ~8 MiB |
| ledger replies, `devsen/ledger/ledger.py` `_replies` (consensus state) | 600 heights (`reply_window_heights`) x <= 4,096 payloads per block | ~400 | ~1 GiB worst case; ~55 s of traffic at this bench's ~10 blocks/s |
| HTTP message look-up, `devsen/app.py` `by_message` | was 1,000 heights only (x 4,096 payloads: ~1.2 GiB); now also 100,000 entries (`MESSAGE_LOOKUP_MAX`) | ~300 | ~30 MiB |
| commit waiters, `devsen/consensus_service.py` `_waiters` (submit) | was **none**: a payload that never committed (refused at proposal, or its caller timed out and it was dropped) left its waiter for ever; now removed when its last caller gives up | ~400 | callers waiting (<= `max_in_flight_submissions`) |

The caps are in entries (one per committed event, whatever its source), so a charger flooding
as fast as allowed (20 messages/s) fills them no faster per event than 200 honest chargers: it
evicts others' entries sooner but cannot add memory past the caps. At ~100 Heartbeats/s the count-bounded caches fill in
11-33 minutes, which is why a few minutes of Heartbeats showed growth without a plateau
(conn_memory.md's ~12 KiB per heartbeat also counted each new charger's first-event state: every
window there brought 1,000 new chargers). The `x0.1` runs give node-1's local caps a tenth of
their size: they fill within 3-4 minutes and RSS stays flat after (12 min run: 194.6 -> 195.4 MiB
from minute 4 to 12, ~0.1 MiB/min, over ~45,000 more Heartbeats). As shipped (12 min run), RSS
was still growing at 12 minutes (286 MiB, ~1.9 KiB per heartbeat): the caps hold ~113 MiB more
when full (reply cache <= 45, receipts 32, committed ids 27, vouchers 9) and the last one (the
mempool's 200,000 committed ids) fills after ~33 min at 100 payloads/s; not run that long. From
the per-entry sizes, the height windows and allocator overhead, a rough ceiling at this load is
~350-400 MiB (an estimate, not a measurement). Not bounded by node-1's
caps and left as is: the ledger's 600-height reply window (consensus state; ~55-120 s of
traffic here). "after" ran the first commit's three product files before they were committed
(hence "+3"); glibc arenas (MALLOC_ARENA_MAX) were not compared.
"""


SUMMARY_COLUMNS = ("run", "code", "chargers", "hb every s", "minutes", "hb/s", "RSS start -> end MiB",
                   "KiB per heartbeat", "last third KiB/min", "plateau", "errors", "caps", "tracemalloc")


def table_head(columns: tuple[str, ...]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def store_run(path: Path, label: str, result: dict[str, Any]) -> str:
    """Put `result` under `label` in the JSON at `path` (other runs kept); rewrite its .md; return the .md."""
    doc = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    doc["runs"][label] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    text = markdown(doc)
    path.with_suffix(".md").write_text(text)
    return text


def markdown(doc: dict[str, Any]) -> str:
    lines = ["# Memory under committed Heartbeats (issue 16): does node-1 plateau?", "",
             "`bench/heartbeat_memory.py`: a 4-node devnet, every charger connected to node-1, one Heartbeat per "
             "charger every `heartbeat_s` (each committed before its reply). KiB per heartbeat = node-1's RSS "
             f"growth after a {WARMUP_S:g} s warm-up / Heartbeats answered in the same span; plateau = the last "
             f"third of the samples grew less than {PLATEAU_KIB_PER_MIN:g} KiB per minute.", "",
             *table_head(SUMMARY_COLUMNS)]
    for label, r in doc["runs"].items():
        s = r["samples"]
        lines.append(f"| {label} | {r['code']['commit'][:10]} (+{r['code']['product_files_changed']}) | {r['chargers']} | "
                     f"{r['heartbeat_s']:g} | {r['minutes']:g} | {r['heartbeats_per_s']} | "
                     f"{s[0]['rss_kib'] / 1024:.1f} -> {s[-1]['rss_kib'] / 1024:.1f} | {r['kib_per_heartbeat']} | "
                     f"{r['last_third_kib_per_minute']} | {'yes' if r['plateau'] else 'no'} | {s[-1]['errors']} | "
                     f"{'x' + str(r['cap_scale']) if r.get('cap_scale') else 'as shipped'} | "
                     f"{'yes' if r['trace'] else 'no'} |")
    lines += ["", FINDINGS.rstrip()]
    for label, r in doc["runs"].items():
        lines += ["", f"## {label} ({r['finished_utc']})", "",
                  *table_head(("t s", "RSS MiB", "heartbeats", "height", "node CPU s", "load 1m"))]
        lines += [f"| {s['t_s']:g} | {s['rss_kib'] / 1024:.1f} | {s['heartbeats']} | {s.get('committed_height', '-')} | {s['cpu_s']:.1f} | {s['load_1m']} |"
                  for s in r["samples"]]
        trace = r.get("tracemalloc")
        if trace:
            lines += ["", f"tracemalloc: {trace['traced_growth_kib']} KiB traced growth after the warm-up, "
                          f"{trace['traced_bytes_per_heartbeat']} bytes per heartbeat.", "",
                      "| bytes/hb | blocks/hb | allocated at (innermost last) |", "|---|---|---|"]
            lines += [f"| {t['bytes_per_heartbeat']} | {t['blocks_per_heartbeat']} | "
                      f"{' <- '.join(reversed(t['frames'][-4:]))} |" for t in trace["top_tracebacks"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="the run's name in --out (a run of that name is replaced)")
    parser.add_argument("--chargers", type=int, default=200)
    parser.add_argument("--heartbeat-s", type=float, default=2.0, help="seconds between one charger's Heartbeats")
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--sample-s", type=float, default=20.0, help="seconds between RSS samples")
    parser.add_argument("--trace", action="store_true", help="node-1 under tracemalloc; top growth by traceback")
    parser.add_argument("--cap-scale", type=float, default=None,
                        help="node-1's local per-event cache caps times this (e.g. 0.1), to see them fill")
    parser.add_argument("--keep", action="store_true", help="keep the network's temporary directory")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not 1 <= args.chargers <= 5000 or args.heartbeat_s < 0.2 or not 1.5 <= args.minutes <= 30:
        parser.error("--chargers 1..5000, --heartbeat-s >= 0.2, --minutes 1.5..30")
    code = code_version()
    result = run(args)
    result.update({"code": code, "chargers": args.chargers, "heartbeat_s": args.heartbeat_s, "minutes": args.minutes,
                   "trace": args.trace, "cap_scale": args.cap_scale, "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"),
                   "finished_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    print(store_run(args.out, args.label, result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
