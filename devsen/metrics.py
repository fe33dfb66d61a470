"""Prometheus metrics of one node (`GET /metrics`), on the official prometheus-client library.

Events are counted where they happen (`on_finalized` for blocks, `timed_rpc` around the chain
client's requests); levels (height, mempool, chargers, peers, pending work, CALLERRORs by code)
are read when scraped from the node's parts. Each node has its own registry (tests run several).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

T = TypeVar("T")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
COMMIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
RPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class Levels:
    """Callables read at scrape time (each returns the current value)."""

    height: Callable[[], int]
    mempool: Callable[[], int]
    chargers: Callable[[], int]
    peers: Callable[[], int]
    pending: Callable[[], dict[str, int]]  # {"anchors": n, "settlements": n, ...}
    callerrors: Callable[[], dict[str, int]]  # CALLERRORs sent to chargers, by OCPP error code


class _LevelCollector(Collector):
    def __init__(self, levels: Levels) -> None:
        self.levels = levels

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("devsen_height", "Last committed block height", value=self.levels.height())
        yield GaugeMetricFamily("devsen_mempool_payloads", "Payloads waiting in the mempool",
                                value=self.levels.mempool())
        yield GaugeMetricFamily("devsen_chargers_connected", "Chargers connected to this node over OCPP",
                                value=self.levels.chargers())
        yield GaugeMetricFamily("devsen_peers_connected", "libp2p peers connected", value=self.levels.peers())
        pending = GaugeMetricFamily("devsen_pending", "Chain submissions waiting, by kind", labels=["kind"])
        for kind, count in sorted(self.levels.pending().items()):
            pending.add_metric([kind], count)
        yield pending
        errors = CounterMetricFamily("devsen_ocpp_callerrors", "OCPP CALLERRORs sent to chargers, by code",
                                     labels=["code"])
        for code, count in sorted(self.levels.callerrors().items()):
            errors.add_metric([code], count)
        yield errors


class NodeMetrics:
    """One node's metrics registry."""

    def __init__(self, levels: Levels) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.commit_latency = Histogram(
            "devsen_commit_latency_seconds", "From a block's proposal timestamp to its commit on this node",
            buckets=COMMIT_BUCKETS, registry=self.registry)
        self.blocks = Counter("devsen_blocks_committed", "Blocks committed", registry=self.registry)
        self.payloads = Counter("devsen_payloads_committed", "Payloads (events, attestations) committed",
                                registry=self.registry)
        self.rpc_latency = Histogram("devsen_chain_rpc_seconds", "Chain JSON-RPC request time (with retries)",
                                     buckets=RPC_BUCKETS, registry=self.registry)
        self.rpc_errors = Counter("devsen_chain_rpc_errors", "Chain JSON-RPC requests that failed",
                                  ["error"], registry=self.registry)
        self.registry.register(_LevelCollector(levels))

    def on_finalized(self, block: Any, result: Any = None, now_ms: int | None = None) -> None:
        """A finalize listener: count the block and its payloads, observe its commit latency."""
        now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        self.blocks.inc()
        self.payloads.inc(len(block.payloads))
        self.commit_latency.observe(max(0.0, (now_ms - block.timestamp_ms) / 1000))

    def timed_rpc(self, rpc: Callable[[Callable[[], T]], T]) -> Callable[[Callable[[], T]], T]:
        """Wrap a chain client's `rpc(operation)` to time it and count its failures by exception type."""

        def timed(operation: Callable[[], T]) -> T:
            start = time.perf_counter()
            try:
                return rpc(operation)
            except Exception as exc:
                self.rpc_errors.labels(type(exc).__name__[:40]).inc()
                raise
            finally:
                self.rpc_latency.observe(time.perf_counter() - start)

        return timed

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
