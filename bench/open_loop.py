"""Benchmark: DEVSEN open loop at many chargers (issue 16: the open-loop collapse).

Starts the 4-node network of bench/compare.py (anvil, the chargers registered on chain with one
shared password, 4 `devsen node` processes), connects --chargers OCPP 1.6 chargers with
`devsen simulate` and runs the phases given: `--closed-first` a closed loop, then open loop at
each of --rates (messages/s over all chargers). Per phase: offered and committed msg/s, p50 /
p95 / p99 of the reply after commit (from the intended send time), blocks/s, payloads per
block, p2p messages per event, the nodes' consensus counters that moved, the load average.
`--profile RATE` py-spys node-1 through the open loop phase at RATE. Writes --out (JSON).

    .venv/bin/python bench/open_loop.py --chargers 1000 --closed-first --rates 170 1000 --out X.json
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

from devsen.http_api import http_get_json
from devsen.simulate import Phase, charger_specs, fixed_plan, simulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import CALL_TIMEOUT_S, ID_TAG, PASSWORD, devsen_phase  # noqa: E402  (sibling bench scripts)
from node_throughput import (  # noqa: E402
    PY_SPY,
    Network,
    charger_id,
    code_version,
    running_network,
    snapshot,
    summarize_profile,
)

HERE = Path(__file__).resolve().parent
COUNTER_KEYS = ("consensus", "app", "p2p")


async def block_rounds(network: Network, first: int, last: int) -> dict[str, int]:
    """How many of the blocks first..last (node-1's store) were decided in each round."""
    rounds: dict[str, int] = {}
    for height in range(max(1, first), last + 1):
        try:
            status, body = await http_get_json(f"{network.nodes[0].http_url}/v1/blocks/{height}", timeout=10)
        except (OSError, trio.TooSlowError, ValueError):
            continue
        if status == 200:
            key = str(body["certificate"]["round"])
            rounds[key] = rounds.get(key, 0) + 1
    return dict(sorted(rounds.items()))


def height_of(mark: dict[str, Any]) -> int:
    status = mark["nodes"].get(0, {}).get("status") or {}
    return int(status.get("committed_height", 0))


def counters_moved(before: dict[str, Any], after: dict[str, Any], node: int) -> dict[str, int]:
    """Integer counters of node `node`'s /v1/status sections that changed over the window."""
    out: dict[str, int] = {}
    b, a = before["nodes"].get(node, {}).get("status") or {}, after["nodes"].get(node, {}).get("status") or {}
    for section in COUNTER_KEYS:
        for key, value in (a.get(section) or {}).items():
            old = (b.get(section) or {}).get(key, 0)
            if isinstance(value, int) and isinstance(old, int) and value != old:
                out[f"{section}.{key}"] = value - old
    return out


async def drain(network: Network, limit_s: float) -> None:
    """Wait (at most `limit_s`) until every node's mempool is nearly empty: the setup's backlog
    (logins, boots, provisioning) is committed before the first measured phase."""
    with trio.move_on_after(limit_s):
        while True:
            snap = await snapshot(network)
            pools = [(n.get("status") or {}).get("consensus", {}).get("mempool", 0) for n in snap["nodes"].values()]
            print(f"  draining the setup backlog: mempools {pools}", flush=True)
            if all(p < 20 for p in pools):
                return
            await trio.sleep(2.0)


async def run(network: Network, chargers: int, phases: list[Phase], profile_rate: float | None,
              profile_out: Path, settle_s: float) -> dict[str, Any]:
    marks: dict[int, dict[str, Any]] = {}
    profiler: list[trio.Process] = []
    node1 = network.nodes[0].process
    assert node1 is not None

    async def hook(edge: str, number: int, phase: Phase) -> None:
        if edge == "start" and number == 0 and settle_s > 0:
            await drain(network, settle_s)
        if profile_rate is not None and phase.rate == profile_rate and PY_SPY.exists():
            if edge == "start":
                profiler.append(await trio.lowlevel.open_process(
                    [str(PY_SPY), "record", "--pid", str(node1.pid), "--duration",
                     str(max(1, int(phase.duration_s) - 1)), "--rate", "50", "--format", "raw",
                     "--output", str(profile_out), "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            elif profiler:
                with trio.move_on_after(30):
                    await profiler[0].wait()
        marks[2 * number + (edge == "end")] = {**await snapshot(network), "load_1m": round(os.getloadavg()[0], 2)}

    def show(line: str) -> None:
        print(f"  C={chargers} {line}", flush=True)

    urls = [node.ocpp_url for node in network.nodes]
    specs = charger_specs(urls, [(charger_id(i), PASSWORD) for i in range(chargers)], "1.6")
    result = await simulate(specs, fixed_plan(phases), id_tag=ID_TAG, call_timeout_s=CALL_TIMEOUT_S,
                            connect_concurrency=32, progress=show, hook=hook)
    rows = []
    for number, row in enumerate(result["phases"]):
        before, after = marks[2 * number], marks[2 * number + 1]
        seconds = after["t"] - before["t"]
        rows.append({"phase": row["phase"], "offered_per_s": row["offered_per_s"],
                     "committed_per_s": row["answered_per_s"], "latency_ms": row["latency_ms"],
                     "errors": sum(row["callerrors"].values()) + row["timeouts"] + row["connection_lost"]
                     + row["unsent"], "load_1m_at_start": before["load_1m"],
                     "devsen": devsen_phase(before, after, seconds),
                     "cpu_pct_of_one_core": {**{f"node-{i + 1}": round(100 * (after["nodes"][i]["cpu_s"]
                                                                                - before["nodes"][i]["cpu_s"]) / seconds, 1)
                                                for i in after["nodes"] if i in before["nodes"]},
                                             "anvil": round(100 * (after["anvil_cpu_s"] - before["anvil_cpu_s"]) / seconds, 1)},
                     "node1_counters": counters_moved(before, after, 0),
                     "rounds_of_blocks": await block_rounds(network, height_of(before) + 1, height_of(after))})
        print(json.dumps(rows[-1]), flush=True)
    return {"setup_s": result["setup"]["seconds"], "connected": result["connected"], "phases": rows,
            "reply_statuses": result["reply_statuses"]}


def combine(runs: list[tuple[str, Path]], out: Path, notes: str) -> None:
    """One JSON (every run as written) and one Markdown table of the runs' phases."""
    loaded = [(label, json.loads(path.read_text())) for label, path in runs]
    out.write_text(json.dumps({"runs": {label: run for label, run in loaded}, "notes": notes}, indent=2) + "\n")
    lines = ["| run | code | phase | offered msg/s | committed msg/s | p50 ms | p99 ms | errors | blocks/s "
             "| events/block | p2p msgs/event | rounds (round: blocks) | node CPU % (sum, of one core) | load 1m |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, run in loaded:
        code = run["code"]["commit"][:10] + (f" +{run['code']['product_files_changed']}"
                                             if run["code"]["product_files_changed"] else "")
        for p in run["phases"]:
            d, lat = p["devsen"], p["latency_ms"]
            cpu = p.get("cpu_pct_of_one_core", {})
            nodes_cpu = round(sum(v for k, v in cpu.items() if k.startswith("node")), 1) if cpu else "-"
            rounds = ", ".join(f"{r}: {n}" for r, n in p.get("rounds_of_blocks", {}).items()) or "-"
            lines.append(f"| {label} | {code} | {p['phase']} | {p['offered_per_s'] or '-'} | {p['committed_per_s']} | "
                         f"{lat['p50']} | {lat['p99']} | {p['errors']} | {d['blocks_per_s']} | {d['events_per_block']} | "
                         f"{d['p2p_messages_per_event']} | {rounds} | {nodes_cpu} | {p['load_1m_at_start']} |")
    out.with_suffix(".table.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chargers", type=int, default=1000)
    parser.add_argument("--closed-first", action="store_true", help="a closed loop phase before the open loop ones")
    parser.add_argument("--rates", type=float, nargs="+", default=[170.0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--profile", type=float, default=None, metavar="RATE", help="py-spy node-1 at this rate")
    parser.add_argument("--keep", action="store_true", help="keep the data directory (node logs)")
    parser.add_argument("--settle", type=float, default=120.0,
                        help="before the first phase, wait up to this long for the setup's backlog to commit")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--combine", nargs="+", metavar="LABEL=RUN.json",
                        help="write --out from runs written before (JSON) and a .table.md, run nothing")
    parser.add_argument("--notes", default="", help="with --combine: what the runs are")
    args = parser.parse_args()
    if args.combine:
        combine([(item.split("=", 1)[0], Path(item.split("=", 1)[1])) for item in args.combine], args.out, args.notes)
        return 0
    if not 1 <= args.chargers <= 9999 or not 2 <= args.duration <= 300:
        parser.error("--chargers in 1..9999, --duration in 2..300 s")
    phases = ([Phase(None, args.duration)] if args.closed_first else []) + [Phase(r, args.duration) for r in args.rates]
    started = time.monotonic()
    code = code_version()
    with running_network("devsen-openloop-", args.chargers, args.keep, PASSWORD) as network:
        registration_s = round(time.monotonic() - started, 1)
        print(f"network up in {registration_s} s, data in {network.root}", flush=True)
        profile_out = network.root / "node1.pyspy.txt"
        result = trio.run(run, network, args.chargers, phases, args.profile, profile_out, args.settle)
        if profile_out.exists():
            result["profile"] = summarize_profile(profile_out, top=25)
    result.update({"chargers": args.chargers, "code": code, "cpu_count": os.cpu_count(),
                   "registration_s": registration_s, "finished_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "load_avg_end": [round(x, 2) for x in os.getloadavg()]})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
