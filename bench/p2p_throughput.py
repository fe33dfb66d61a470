"""p2p + consensus figures for 4 local node processes (127.0.0.1), written to bench/results/p2p.json.

1. Transport: small (200 B) messages/s delivered to the 3 other nodes, one sender, over
   (a) gossipsub, one message per publish, and (b) the direct consensus links.
2. Consensus: each node is offered `--rate` ChargerEvent-sized (~300 B) payloads/s, each
   awaited until committed; events committed/s and submit-to-commit latency p50/p99 as
   events per gossip message grows (1, 10, 100, 1000), and libp2p messages per committed block
   (consensus frames sent by all nodes, and gossip messages originated).

Run: `.venv/bin/python bench/p2p_throughput.py [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devsen.testnode import LocalNetwork, NodeProcess  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stats(node: NodeProcess) -> dict[str, Any]:
    return node.request({"cmd": "stats"}, "stats")


def transport(via: str, count: int, size: int = 200) -> dict[str, Any]:
    """Messages/s from node 0 to the 3 others over `via` ("gossip" or "links")."""
    with tempfile.TemporaryDirectory() as tmp:
        net = LocalNetwork.start(Path(tmp), 4, extra={"mode": "p2p", "batch_max_count": 1, "batch_max_delay_s": 0.0, "batch_min_interval_s": 0.0})
        try:
            sender, receivers = net.nodes[0], net.nodes[1:]
            deadline = time.monotonic() + 20
            while _stats(sender)["linked_validators"] < 3 and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.5)  # gossip mesh forms on the 1 s heartbeat
            key = "consensus" if via == "links" else "payloads"
            started = time.monotonic()
            sender.send({"cmd": "flood", "via": via, "count": count, "size": size})
            received = [0] * len(receivers)
            while time.monotonic() - started < 120:
                received = [_stats(r)["received"][key] for r in receivers]
                if min(received) >= count:
                    break
                time.sleep(0.1)
            seconds = time.monotonic() - started
            drops = _stats(sender)["drops"]
        finally:
            net.stop()
    return {"via": via, "load_avg_1m": round(os.getloadavg()[0], 1), "messages": count, "bytes": size, "seconds": round(seconds, 2),
            "delivered_min": min(received), "msgs_per_s": round(min(received) / seconds, 1),
            "sender_drops": drops}


def consensus(events_per_message: int, rate_per_node: float, seconds: float) -> dict[str, Any]:
    """4 validators, each offered `rate_per_node` ChargerEvent-sized payloads/s for `seconds`."""
    with tempfile.TemporaryDirectory() as tmp:
        net = LocalNetwork.start(Path(tmp), 4, extra={
            "batch_max_count": events_per_message, "min_block_interval_s": 0.05,
            "empty_block_interval_s": 0.5, "submit_timeout_s": 120,
            "timeouts": {"propose_ms": 3000, "propose_delta_ms": 500, "prevote_ms": 1000,
                         "prevote_delta_ms": 500, "precommit_ms": 1000, "precommit_delta_ms": 500,
                         "retransmit_ms": 2000},
        })
        try:
            net.wait_all_height(1, 30)
            time.sleep(1.0)
            before = [_stats(n) for n in net.nodes]
            start_height = net.nodes[0].committed_height()
            replies: list[dict[str, Any]] = []

            def load(node: NodeProcess, tag: int) -> None:
                node.send({"cmd": "load", "id": f"n{tag}", "rate": rate_per_node, "seconds": seconds})
                replies.append(node.wait_for("loaded", 300))

            threads = [threading.Thread(target=load, args=(n, i)) for i, n in enumerate(net.nodes)]
            cpu_before = sum(_cpu_seconds(n.pid) for n in net.nodes)
            started = time.time()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            last_commit = max(c["t"] for c in net.nodes[0].commits)
            cpu_used = sum(_cpu_seconds(n.pid) for n in net.nodes) - cpu_before
            after = [_stats(n) for n in net.nodes]
            blocks = net.nodes[0].committed_height() - start_height
        finally:
            net.stop()
    results = [r for reply in replies for r in reply["results"]]
    latencies = sorted(r[1] for r in results if isinstance(r[0], int))
    elapsed = last_commit - started
    frames = sum(a["p2p"]["consensus_sent_frames"] - b["p2p"]["consensus_sent_frames"] for a, b in zip(after, before, strict=True))
    gossip = sum(a["p2p"]["events_published_messages"] - b["p2p"]["events_published_messages"] for a, b in zip(after, before, strict=True))
    return {
        "events_per_gossip_message": events_per_message,
        "load_avg_1m": round(os.getloadavg()[0], 1),
        "offered_events_per_s": 4 * rate_per_node,
        "events": len(results), "committed": len(latencies), "seconds": round(elapsed, 2),
        "events_per_s": round(len(latencies) / elapsed, 1),
        "latency_ms_p50": round(statistics.median(latencies), 1) if latencies else None,
        "latency_ms_p99": round(latencies[int(0.99 * (len(latencies) - 1))], 1) if latencies else None,
        "blocks": blocks,
        # CPU of all 4 node processes per 1000 committed events: the machine-independent cost
        "cpu_s_per_1000_events": round(1000 * cpu_used / max(len(latencies), 1), 2),
        "consensus_frames_per_block": round(frames / max(blocks, 1), 1),
        "gossip_messages_per_block": round(gossip / max(blocks, 1), 2),
        "errors": [r for r in results if not isinstance(r[0], int)][:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs (a ~2 minute run)")
    parser.add_argument("--rate", type=float, default=150.0, help="offered events/s per node")
    args = parser.parse_args()
    scale = 1 if args.quick else 3
    out: dict[str, Any] = {"machine": f"{os.cpu_count()} cores, shared with other jobs (see load_avg_1m)",
                 "nodes": 4, "transport": [], "consensus": []}
    for via, count in (("gossip", 400 * scale), ("links", 2000 * scale)):
        out["transport"].append(transport(via, count))
        print(json.dumps(out["transport"][-1]), flush=True)
    for k in (1, 10, 100, 1000):
        out["consensus"].append(consensus(k, rate_per_node=args.rate, seconds=4.0 * scale))
        print(json.dumps(out["consensus"][-1]), flush=True)
    # Latency when not saturated: a light load (events rarely share a gossip message).
    out["consensus_light"] = consensus(1000, rate_per_node=5.0, seconds=4.0 * scale)
    print(json.dumps(out["consensus_light"]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "p2p.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS / 'p2p.json'}")


if __name__ == "__main__":
    main()
