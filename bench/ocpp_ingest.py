"""Benchmark: N simulated chargers sending MeterValues to the OCPP endpoint.

The server runs as its own process (`python -m ocpp_adapter.standalone`, in-memory
ingest) so its RSS is measured alone. Each simulated charger connects, boots, then sends
MeterValues for --duration seconds, one outstanding CALL at a time as OCPP-J requires:
in a closed loop (default), or one message every --interval seconds. Prints sustained messages/s, p50/p99 reply latency and server RSS; writes
bench/results/ocpp_ingest.json.

    .venv/bin/python bench/ocpp_ingest.py --chargers 1000 --duration 10
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import subprocess
import sys
import time
from typing import Any

import trio
from trio_websocket import open_websocket_url

HERE = os.path.dirname(os.path.abspath(__file__))


def rss_kib(pid: int) -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident memory of `pid`, KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time consumed by `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_chargers_file(path: str, count: int, password: str) -> None:
    """TOML for `--chargers`: BENCH00000 .. with one shared password."""
    with open(path, "w") as f:
        for i in range(count):
            f.write(f'BENCH{i:05d} = "{password}"\n')


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[index]


def meter_values(n: int) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "connectorId": 1,
        "transactionId": 1,
        "meterValue": [{"timestamp": now, "sampledValue": [
            {"value": str(1000 + n), "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            {"value": "7200", "measurand": "Power.Active.Import", "unit": "W"},
        ]}],
    }


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.connected = 0
        self.connect_failures = 0


async def one_charger(url: str, cid: str, password: str | None, start: trio.Event, stop_at: list[float],
                      stats: Stats, connect_slots: trio.CapacityLimiter, interval: float = 0.0) -> None:
    headers = []
    if password is not None:
        headers = [(b"Authorization", b"Basic " + base64.b64encode(f"{cid}:{password}".encode()))]
    await connect_slots.acquire()
    holding_slot = True
    try:
        async with open_websocket_url(f"{url}/{cid}", subprotocols=["ocpp1.6"], extra_headers=headers,
                                      connect_timeout=60, disconnect_timeout=5) as ws:
            await ws.send_message(json.dumps([2, "boot", "BootNotification",
                                              {"chargePointVendor": "bench", "chargePointModel": "sim"}]))
            await ws.get_message()
            stats.connected += 1
            connect_slots.release()
            holding_slot = False
            await start.wait()
            n = 0
            if interval:
                await trio.sleep(random.random() * interval)  # spread the chargers over the interval
            next_send = time.perf_counter()
            while time.perf_counter() < stop_at[0]:
                if interval:
                    next_send += interval
                n += 1
                frame = json.dumps([2, f"{cid}-{n}", "MeterValues", meter_values(n)])
                sent = time.perf_counter()
                await ws.send_message(frame)
                reply = json.loads(await ws.get_message())
                if reply[0] == 3:
                    stats.latencies.append(time.perf_counter() - sent)
                else:
                    stats.errors += 1
                if interval:
                    await trio.sleep(max(0.0, next_send - time.perf_counter()))
    except Exception:
        if holding_slot:
            connect_slots.release()
            stats.connect_failures += 1
        else:
            stats.errors += 1


async def run(args: argparse.Namespace) -> dict[str, Any]:
    python = sys.executable
    cmd = [python, "-m", "ocpp_adapter.standalone", "--port", "0", "--log-level", "WARNING",
           "--messages-per-second", "1000", "--max-connections", str(args.chargers + 16),
           "--security-profile", str(args.security_profile)]
    password = None
    chargers_file = None
    if args.security_profile:
        password = "bench-password"
        chargers_file = os.path.join(HERE, "results", "ocpp_ingest_chargers.toml.tmp")
        write_chargers_file(chargers_file, args.chargers, password)
        cmd += ["--chargers", chargers_file]
    server = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        line = b""
        with trio.fail_after(30 + args.chargers * 0.1 * bool(args.security_profile)):
            while b"\n" not in line:
                line += await server.stdout.receive_some(4096)
        url = line.decode().split()[-1].rsplit("/", 1)[0]
        rss_idle = rss_kib(server.pid)
        stats = Stats()
        start = trio.Event()
        stop_at = [float("inf")]
        connect_slots = trio.CapacityLimiter(64)
        async with trio.open_nursery() as nursery:
            t0 = time.perf_counter()
            for i in range(args.chargers):
                nursery.start_soon(
                    one_charger, url, f"BENCH{i:05d}", password, start, stop_at, stats, connect_slots, args.interval
                )
            with trio.fail_after(300):
                while stats.connected + stats.connect_failures + stats.errors < args.chargers:
                    await trio.sleep(0.05)
            connect_seconds = time.perf_counter() - t0
            rss_connected = rss_kib(server.pid)
            stop_at[0] = time.perf_counter() + args.duration
            began = time.perf_counter()
            cpu_before = cpu_seconds(server.pid)
            start.set()
            await trio.sleep(args.duration / 2)
            rss_mid = rss_kib(server.pid)
        elapsed = time.perf_counter() - began
        server_cpu = cpu_seconds(server.pid) - cpu_before
        rss_end = rss_kib(server.pid)
    finally:
        server.kill()
        await server.wait()
        if chargers_file:
            os.unlink(chargers_file)
    lat = sorted(stats.latencies)
    return {
        "chargers": args.chargers,
        "connected": stats.connected,
        "connect_failures": stats.connect_failures,
        "connect_seconds": round(connect_seconds, 2),
        "security_profile": args.security_profile,
        "interval_s": args.interval,
        "duration_s": round(elapsed, 2),
        "messages": len(lat),
        "errors": stats.errors,
        "messages_per_s": round(len(lat) / elapsed, 1),
        "latency_ms": {"p50": round(percentile(lat, 0.50) * 1000, 2), "p99": round(percentile(lat, 0.99) * 1000, 2),
                       "max": round(lat[-1] * 1000, 2) if lat else None},
        "server_rss_kib": {"idle": rss_idle["VmRSS"], "connected": rss_connected["VmRSS"],
                           "under_load": rss_mid["VmRSS"], "peak": rss_end["VmHWM"]},
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_us_per_msg": round(server_cpu / max(1, len(lat)) * 1e6, 1),
        "cpu_count": os.cpu_count(),
        "note": "client and server share the machine; all clients run in one trio process",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chargers", type=int, default=1000)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--interval", type=float, default=0.0,
                   help="seconds between a charger's messages (0 = closed loop, as fast as replies come)")
    p.add_argument("--security-profile", type=int, choices=(0, 1), default=0,
                   help="1 = Basic auth (one scrypt per charger at connect)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "ocpp_ingest.json"))
    args = p.parse_args()
    result = trio.run(run, args)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
