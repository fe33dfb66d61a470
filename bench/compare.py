"""Benchmark: DEVSEN (4 validator nodes + anvil) against a centralized CSMS, side by side.

One run, one machine, one load generator (`devsen simulate`, in this process): first the
centralized baseline (bench/baseline_csms.py: the `ocpp` package's ChargePoint over
`websockets`, every message fsync'd to an append log before it is answered), then the 4-node
DEVSEN network (real node processes, anvil, started as bench/node_throughput.py does). For each
size in --sizes the same chargers (OCPP 1.6, full sessions: boot, status, authorize, start,
MeterValues, stop) run a closed loop (the most each system serves) and then open loop phases at
--sweep fractions of that maximum and at the absolute --rates, so latency is seen up to and past
saturation. Logins (a scrypt hash each, 20-76 s per 300 at a node) and the on-chain registration
of the chargers happen before any measured window.

Per phase: committed messages/s (replies, which both systems send only after the message is
durable: fsync'd here, committed by BFT consensus there), p50/p95/p99 (open loop: from the
intended send time), CPU seconds and peak RSS of every process, the generator's CPU, and for
DEVSEN the ledger's event rate and the p2p messages sent per committed event (gossip publishes
+ consensus frames, summed over the nodes, from /v1/status). The machine load average is
recorded at every phase. Writes bench/results/compare.json, compare.md and compare.png.

    .venv/bin/python bench/compare.py [--sizes 100 1000 5000] [--duration 10] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from devsen.devnet import DEMO_ID_TAG
from devsen.simulate import Phase, Plan, charger_specs, simulate, sweep_plan
from primitives.credentials import new_auth_credential

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_throughput import (  # noqa: E402  (sibling bench scripts: network start-up and node snapshots)
    PY_SPY,
    Network,
    charger_id,
    code_version,
    counter_delta,
    running_network,
    snapshot,
    summarize_profile,
)
from ocpp_ingest import cpu_seconds, rss_kib  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PASSWORD = "bench-shared-password"  # bench only: one salted hash for every charger (registered once)
DEFAULT_SIZES = (100, 1000, 5000)
DEFAULT_SWEEP = (0.25, 0.5, 0.75, 1.0, 1.25)
DEFAULT_RATES = (1000.0,)
CALL_TIMEOUT_S = 15.0
ID_TAG = DEMO_ID_TAG  # registered on chain by the devnet deployment (no escrow for the bench chargers)


def combined_plan(duration_s: float, fractions: Sequence[float], rates: Sequence[float]) -> Plan:
    """Closed loop, open loop at `fractions` of its maximum, then at the absolute `rates`."""
    sweep = sweep_plan(duration_s, fractions)

    def plan(done: list[dict[str, Any]]) -> Phase | None:
        if len(done) <= len(fractions):
            return sweep(done)
        k = len(done) - 1 - len(fractions)
        return Phase(rates[k], duration_s) if k < len(rates) else None
    return plan


# ---------------------------------------------------------------- process figures

Sampler = Callable[[], Awaitable[dict[str, Any]]]


def proc_figures(pids: dict[str, int]) -> dict[str, dict[str, float]]:
    out = {}
    for name, pid in pids.items():
        try:
            mem = rss_kib(pid)
            out[name] = {"cpu_s": cpu_seconds(pid), "rss_kib": mem["VmRSS"], "peak_kib": mem["VmHWM"]}
        except (OSError, KeyError, IndexError):
            continue
    return out


def phase_processes(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, Any]:
    """CPU seconds (and % of one core) over the window, peak RSS (MiB, VmHWM) per process."""
    rows = {}
    for name, end in after["procs"].items():
        start = before["procs"].get(name)
        if start is None:
            continue
        cpu = end["cpu_s"] - start["cpu_s"]
        rows[name] = {"cpu_s": round(cpu, 2), "cpu_pct": round(100 * cpu / seconds, 1),
                      "peak_rss_mib": round(end["peak_kib"] / 1024, 1)}
    return rows


async def drive(system: str, urls: list[str], size: int, plan: Plan, pids: Callable[[], dict[str, int]],
                extra: Callable[[], Awaitable[dict[str, Any]]] | None,
                profile: tuple[int, Path] | None = None) -> dict[str, Any]:
    """Run the generator once against `urls`; annotate each phase with process figures.
    `profile` (pid, output): py-spy samples that process through the closed loop phase."""
    marks: dict[int, dict[str, Any]] = {}
    profiler: list[trio.Process] = []

    async def hook(edge: str, number: int, phase: Phase) -> None:
        if profile is not None and phase.rate is None and PY_SPY.exists():
            if edge == "start":
                profiler.append(await trio.lowlevel.open_process(
                    [str(PY_SPY), "record", "--pid", str(profile[0]), "--duration", str(max(1, int(phase.duration_s) - 1)),
                     "--rate", "50", "--format", "raw", "--output", str(profile[1]), "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            elif profiler:
                with trio.move_on_after(30):
                    await profiler[0].wait()
                if profiler[0].returncode is None:
                    profiler[0].kill()
                    await profiler[0].wait()
        mark = {"t": trio.current_time(), "procs": proc_figures({**pids(), "generator": os.getpid()}),
                "load_1m": round(os.getloadavg()[0], 2)}
        if extra is not None:
            mark["extra"] = await extra()
        marks[2 * number + (edge == "end")] = mark

    def show(line: str) -> None:
        print(f"  {system} C={size} {line}", flush=True)

    specs = charger_specs(urls, [(charger_id(i), PASSWORD) for i in range(size)], "1.6")
    result = await simulate(specs, plan, id_tag=ID_TAG, call_timeout_s=CALL_TIMEOUT_S, connect_concurrency=32,
                            progress=show, hook=hook)
    for number, row in enumerate(result["phases"]):
        before, after = marks.get(2 * number), marks.get(2 * number + 1)
        if before is None or after is None:
            continue
        seconds = after["t"] - before["t"]
        row["processes"] = phase_processes(before, after, seconds)
        row["load_1m_at_start"] = before["load_1m"]
        if "extra" in before:
            row["devsen"] = devsen_phase(before["extra"], after["extra"], seconds)
    result["system"] = system
    return result


def devsen_phase(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Ledger events/s, blocks/s and p2p messages per committed event over one window."""
    reference = min(after["nodes"])
    events = counter_delta(before, after, reference, "app", "events")
    blocks = counter_delta(before, after, reference, "committed_height")
    wire = 0
    for node in after["nodes"]:
        for key in ("events_published_messages", "consensus_sent_frames"):
            delta = counter_delta(before, after, node, "p2p", key)
            wire += delta or 0
    return {"events_per_s": round(events / seconds, 1) if events is not None else None,
            "blocks_per_s": round(blocks / seconds, 2) if blocks is not None else None,
            "events_per_block": round(events / blocks, 1) if events and blocks else None,
            "p2p_messages_sent": wire,
            "p2p_messages_per_event": round(wire / events, 2) if events else None}


# ---------------------------------------------------------------- the two systems

def run_baseline(root: Path, sizes: Sequence[int], plan_for: Callable[[], Plan]) -> list[dict[str, Any]]:
    """The centralized CSMS in its own process, one fresh instance (and log) per size."""
    salt, auth_hash = new_auth_credential(PASSWORD)
    creds = root / "baseline-credentials.json"
    creds.write_text(json.dumps({charger_id(i): [salt.hex(), auth_hash.hex()] for i in range(max(sizes))}))
    runs = []
    for size in sizes:
        log_path = root / f"baseline-{size}.log"
        with open(root / f"baseline-{size}.out", "wb") as out:
            process = subprocess.Popen([sys.executable, str(HERE / "baseline_csms.py"), "--port", "0",
                                        "--credentials", str(creds), "--log", str(log_path)],
                                       stdout=subprocess.PIPE, stderr=out, start_new_session=True)
        try:
            assert process.stdout is not None
            line = process.stdout.readline().decode()
            if not line.startswith("listening "):
                raise RuntimeError(f"baseline did not start: {line!r}; see {root}/baseline-{size}.out")
            port = int(line.split()[1])
            pids = {"baseline": process.pid}
            runs.append(trio.run(drive, "baseline", [f"ws://127.0.0.1:{port}/ocpp"], size, plan_for(),
                                 pids.copy, None))
            runs[-1]["log_bytes"] = log_path.stat().st_size
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
    return runs


def run_devsen(network: Network, sizes: Sequence[int], plan_for: Callable[[], Plan],
               profile_out: Path | None = None) -> list[dict[str, Any]]:
    def pids() -> dict[str, int]:
        out = {n.config.node.name: n.process.pid for n in network.nodes if n.process is not None}
        out["anvil"] = network.anvil.pid
        return out

    async def extra() -> dict[str, Any]:
        return await snapshot(network)

    urls = [node.ocpp_url for node in network.nodes]
    node1 = network.nodes[0].process
    return [trio.run(drive, "devsen", urls, size, plan_for(), pids, extra,
                     (node1.pid, profile_out) if profile_out is not None and node1 is not None and size == max(sizes)
                     else None) for size in sizes]


async def idle(network: Network, seconds: float) -> dict[str, Any]:
    """What the 4 nodes and anvil cost doing nothing (no chargers connected)."""
    pids = {n.config.node.name: n.process.pid for n in network.nodes if n.process is not None}
    pids["anvil"] = network.anvil.pid
    before = {"t": trio.current_time(), "procs": proc_figures(pids)}
    status_before = await snapshot(network)
    await trio.sleep(seconds)
    after = {"t": trio.current_time(), "procs": proc_figures(pids)}
    status_after = await snapshot(network)
    return {"seconds": seconds, "processes": phase_processes(before, after, seconds),
            "devsen": devsen_phase(status_before, status_after, seconds), "load_1m": round(os.getloadavg()[0], 2)}


# ---------------------------------------------------------------- report

def closed_row(run: dict[str, Any]) -> dict[str, Any] | None:
    return next((p for p in run["phases"] if p["mode"] == "closed"), None)


def process_totals(phase: dict[str, Any], system: str) -> tuple[float, float]:
    """(CPU % of one core, summed over the system's processes; largest peak RSS MiB)."""
    procs = {k: v for k, v in phase.get("processes", {}).items() if k != "generator"}
    return (round(sum(v["cpu_pct"] for v in procs.values()), 1),
            max((v["peak_rss_mib"] for k, v in procs.items() if k != "anvil"), default=0.0))


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for size in sorted({r["chargers"] for r in runs}):
        base = next((r for r in runs if r["system"] == "baseline" and r["chargers"] == size), None)
        dev = next((r for r in runs if r["system"] == "devsen" and r["chargers"] == size), None)
        if base is None or dev is None:
            continue
        b, d = closed_row(base), closed_row(dev)
        if b is None or d is None:
            continue
        row: dict[str, Any] = {"chargers": size, "baseline_max_per_s": b["answered_per_s"],
                               "devsen_max_per_s": d["answered_per_s"],
                               "throughput_ratio": round(d["answered_per_s"] / b["answered_per_s"], 3)
                               if b["answered_per_s"] else None}
        for q in ("p50", "p99"):
            bl, dl = b["latency_ms"][q], d["latency_ms"][q]
            row[f"closed_{q}_ratio"] = round(dl / bl, 2) if bl and dl else None
        bc, dc = b["processes"], d["processes"]
        b_cpu = sum(v["cpu_s"] for k, v in bc.items() if k != "generator")
        d_cpu = sum(v["cpu_s"] for k, v in dc.items() if k != "generator")
        b_n = b["answered_per_s"] * b["duration_s"]
        d_n = d["answered_per_s"] * d["duration_s"]
        row["cpu_ms_per_message_baseline"] = round(1000 * b_cpu / b_n, 3) if b_n else None
        row["cpu_ms_per_message_devsen"] = round(1000 * d_cpu / d_n, 3) if d_n else None
        rows.append(row)
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = ["# DEVSEN against a centralized CSMS, side by side on one machine", "", result["note"], "",
             f"Code: commit {result['code']['commit'][:12]}; {result['cpu_count']} cores; generated "
             f"{result['finished_utc']}; load average over the run (1 min) {result['load_1m_range']}.", "",
             "## Ratios (DEVSEN / baseline, closed loop: the most each serves to the same chargers)", "",
             "| chargers | baseline msg/s | DEVSEN msg/s | ratio | p50 ratio | p99 ratio | CPU ms/msg baseline "
             "| CPU ms/msg DEVSEN |", "|---|---|---|---|---|---|---|---|"]
    for r in result["ratios"]:
        lines.append(f"| {r['chargers']} | {r['baseline_max_per_s']} | {r['devsen_max_per_s']} | "
                     f"{r['throughput_ratio']} | {r['closed_p50_ratio']} | {r['closed_p99_ratio']} | "
                     f"{r['cpu_ms_per_message_baseline']} | {r['cpu_ms_per_message_devsen']} |")
    lines += ["", "## Every phase", "",
              "| system | chargers | phase | offered msg/s | committed msg/s | ledger events/s | p50 ms | p95 ms "
              "| p99 ms | errors | CPU % (system, of one core) | peak RSS MiB (largest process) | generator CPU % "
              "| p2p msgs/event | load 1m |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in result["runs"]:
        for p in run["phases"]:
            cpu, rss = process_totals(p, run["system"])
            gen = p.get("processes", {}).get("generator", {}).get("cpu_pct", "-")
            wire = p.get("devsen", {}).get("p2p_messages_per_event", "-") if run["system"] == "devsen" else "-"
            ledger = p.get("devsen", {}).get("events_per_s", "-") if run["system"] == "devsen" else "-"
            errors = sum(p["callerrors"].values()) + p["timeouts"] + p["connection_lost"] + p["unsent"]
            lat = p["latency_ms"]
            lines.append(f"| {run['system']} | {run['chargers']} | {p['mode']} | {p['offered_per_s'] or '-'} | "
                         f"{p['answered_per_s']} | {ledger} | {lat['p50']} | {lat['p95']} | {lat['p99']} | {errors} | {cpu} | "
                         f"{rss} | {gen} | {wire} | {p.get('load_1m_at_start', '-')} |")
    lines += ["", "## Setup (outside every measured window)", "",
              "| system | chargers | logins + session start s | connected | setup errors |", "|---|---|---|---|---|"]
    for run in result["runs"]:
        s = run["setup"]
        lines.append(f"| {run['system']} | {run['chargers']} | {s['seconds']} | {run['connected']} | "
                     f"{sum(s['callerrors'].values()) + s['timeouts'] + s['connection_lost'] + run['connect_failed']} |")
    lines += ["", f"On-chain registration of {result['devices']} chargers and the 4 nodes' start: "
                  f"{result['registration_s']} s. Reply statuses (DEVSEN): "
                  + ", ".join(f"{k} {v}" for r in result["runs"] if r["system"] == "devsen"
                              for k, v in r["reply_statuses"].items()) + "."]
    if result.get("idle"):
        i = result["idle"]
        lines += ["", f"Idle network ({i['seconds']} s, no chargers): CPU % of one core per process "
                      + ", ".join(f"{k} {v['cpu_pct']}" for k, v in i["processes"].items())
                      + f"; {i['devsen']['blocks_per_s']} blocks/s."]
    lines += ["", "![latency against offered load](compare.png)"]
    return "\n".join(lines) + "\n"


def profile_markdown(profile: dict[str, Any]) -> str:
    lines = [f"# Where node-1's time goes under load (py-spy, {profile['samples']} samples, {profile['run']})", "",
             "| area (any frame of the stack, first match) | % of samples | of which on the event loop thread |",
             "|---|---|---|"]
    lines += [f"| {a} | {p} | {loop} |" for a, p, loop in profile["areas_pct"]]
    lines += ["", f"{profile['event_loop_thread_pct']} % of samples were on the trio thread, the rest in worker threads.",
              "", "| function (self) | % |", "|---|---|"]
    lines += [f"| `{f}` | {p} |" for f, p in profile["self_pct"]]
    lines += ["", "| function (inclusive) | % |", "|---|---|"]
    lines += [f"| `{f}` | {p} |" for f, p in profile["inclusive_pct"]]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = {"baseline": "tab:blue", "devsen": "tab:red"}
    styles = ["o-", "s--", "^:", "d-."]
    sizes = sorted({r["chargers"] for r in result["runs"]})
    for run in result["runs"]:
        style = styles[sizes.index(run["chargers"]) % len(styles)]
        opened = sorted((p for p in run["phases"] if p["mode"] == "open" and p["latency_ms"]["p99"] is not None),
                        key=lambda p: p["offered_per_s"])
        if not opened:
            continue
        label = f"{run['system']} C={run['chargers']}"
        xs = [p["offered_per_s"] for p in opened]
        left.plot(xs, [p["latency_ms"]["p99"] for p in opened], style, color=colors[run["system"]], label=f"{label} p99")
        left.plot(xs, [p["latency_ms"]["p50"] for p in opened], style, color=colors[run["system"]], alpha=0.35,
                  label=f"{label} p50")
        right.plot(xs, [p["answered_per_s"] for p in opened], style, color=colors[run["system"]], label=label)
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("offered load (messages/s, open loop)")
    left.set_ylabel("reply latency from intended send (ms)")
    left.set_title("latency against offered load")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("offered load (messages/s, open loop)")
    right.set_ylabel("committed (answered) messages/s")
    right.set_title("throughput against offered load")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=7)
    fig.suptitle(f"DEVSEN (4 nodes + anvil) vs centralized CSMS, {result['cpu_count']} cores, "
                 f"load avg {result['load_1m_range']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="charger counts")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--sweep", type=float, nargs="*", default=list(DEFAULT_SWEEP),
                        help="open loop loads as fractions of each system's closed loop maximum")
    parser.add_argument("--rates", type=float, nargs="*", default=list(DEFAULT_RATES),
                        help="open loop loads in messages/s, the same for both systems")
    parser.add_argument("--systems", nargs="+", choices=("baseline", "devsen"), default=["baseline", "devsen"])
    parser.add_argument("--quick", action="store_true", help="smoke test: 20 chargers, 3 s phases, 2 loads")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy node-1 through the closed loop of the largest size (compare_profile.md)")
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default bench/results/compare.json; --quick: compare-quick.json)")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.duration, args.sweep, args.rates = [20], 3.0, [0.5, 1.25], [100.0]
    args.out = args.out or RESULTS / ("compare-quick.json" if args.quick else "compare.json")
    if not all(1 <= s <= 9999 for s in args.sizes) or not 2 <= args.duration <= 300:
        parser.error("--sizes in 1..9999 chargers, --duration in 2..300 s")
    if not all(0 < f <= 10 for f in args.sweep) or not all(0 < r <= 100_000 for r in args.rates):
        parser.error("--sweep fractions in (0, 10], --rates in (0, 100000] messages/s")
    started = time.monotonic()
    code = code_version()
    root = Path(tempfile.mkdtemp(prefix="devsen-compare-"))
    runs: list[dict[str, Any]] = []
    idle_row: dict[str, Any] | None = None
    registration_s = 0.0
    profile_path = root / "node1.pyspy.txt"

    def plan_for() -> Plan:
        return combined_plan(args.duration, args.sweep, args.rates)

    try:
        if "baseline" in args.systems:
            print(f"== baseline CSMS: sizes {args.sizes}", flush=True)
            runs += run_baseline(root, args.sizes, plan_for)
        if "devsen" in args.systems:
            print(f"== DEVSEN: registering {max(args.sizes)} chargers, starting 4 nodes", flush=True)
            t0 = time.monotonic()
            with running_network("devsen-compare-net-", max(args.sizes), args.keep, PASSWORD) as network:
                registration_s = round(time.monotonic() - t0, 1)
                idle_row = trio.run(idle, network, 5.0)
                runs += run_devsen(network, args.sizes, plan_for, profile_path if args.profile else None)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    loads = [p["load_1m_at_start"] for r in runs for p in r["phases"] if "load_1m_at_start" in p]
    result: dict[str, Any] = {
        "sizes": args.sizes, "duration_s": args.duration, "sweep": args.sweep, "rates": args.rates,
        "cpu_count": os.cpu_count(), "code": code, "devices": max(args.sizes),
        "registration_s": registration_s,
        "load_1m_range": f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-",
        "finished_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "total_s": round(time.monotonic() - started, 1),
        "idle": idle_row, "ratios": ratios(runs), "runs": runs,
        "note": ("Both systems on the same machine, one after the other (the baseline first, with the DEVSEN network "
                 "not yet started), driven by the same generator (`devsen simulate`, OCPP 1.6 over WebSockets, Basic "
                 "auth, one outstanding CALL per charger) in the benchmark's own process. A reply means durable: "
                 "the baseline answers after the message is fsync'd to its append log (group commit), DEVSEN after "
                 "the block carrying it is committed by the 4 validators and applied. committed msg/s counts replies "
                 "received inside the window. Open loop latency runs from each message's intended send time. CPU % "
                 "is of one core, summed over the system's processes (DEVSEN: 4 nodes + anvil); the generator's is "
                 "given apart. The machine is shared with other work: the load average is recorded per phase. Under such "
                 "contention the kernel shares the cores per thread, which favours the system with more processes "
                 "(DEVSEN: 5, the baseline: 1); CPU ms per message is the figure least affected by it."),
    }
    if args.profile and profile_path.exists():
        result["profile"] = {"run": f"devsen closed loop C={max(args.sizes)}", **summarize_profile(profile_path)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    plot(result, args.out.with_suffix(".png"))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    if "profile" in result:
        profile_md = args.out.with_name(args.out.stem + "_profile.md")
        profile_md.write_text(profile_markdown(result["profile"]))
    print(markdown(result))
    print(f"total {result['total_s']} s; wrote {args.out}, {args.out.with_suffix('.md').name}, "
          f"{args.out.with_suffix('.png').name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
