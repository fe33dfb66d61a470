"""Bench only: `devsen` with bench-side instruments (bench/heartbeat_memory.py).

    DEVSEN_BENCH_SNAPSHOT_DIR=/tmp/x [DEVSEN_BENCH_CAP_SCALE=0.1] python bench/traced_node.py node --config node.toml

- SIGUSR1 (with DEVSEN_BENCH_SNAPSHOT_DIR): the first one starts tracemalloc (tracing from
  start-up makes the node's imports too slow to serve within the devnet's start-up timeout), so
  snapshot 1 is (almost) empty and snapshot n holds what was allocated after the first signal
  and is still alive. Snapshot n goes to $DEVSEN_BENCH_SNAPSHOT_DIR/snap-n.bin, then done-n.
- DEVSEN_BENCH_CAP_SCALE: multiplies this node's local per-event cache caps (commit receipts,
  the mempool's committed ids, recovered vouchers, the OCPP reply cache, the HTTP message
  look-up) so that a few minutes of Heartbeats fill them: shows where RSS levels off. Nothing
  consensus-visible is changed (the ledger's parameters stay as at genesis).

Not in the product path: a node started by `devsen node` has none of this.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType
from typing import Any

FRAMES = 12


def scale_caps(scale: float) -> dict[str, int]:
    """Scale the node-local per-event caps by `scale`; returns the caps now in force."""
    import consensus.mempool as mempool
    import devsen.app as app
    import devsen.consensus_service as service
    import ocpp_adapter.idempotency as idempotency
    import ocpp_adapter.vouching as vouching

    def scaled(n: int) -> int:
        return max(1, int(n * scale))
    service.MAX_RECENT_RECEIPTS = scaled(service.MAX_RECENT_RECEIPTS)
    defaults = list(mempool.Mempool.__init__.__defaults__ or ())
    defaults[2] = scaled(defaults[2])  # committed_memory
    mempool.Mempool.__init__.__defaults__ = tuple(defaults)
    vouches = scaled(vouching.MAX_CACHED_VOUCHES)
    vouching.VouchCache.__init__.__defaults__ = (vouches,)
    caps = {"receipts": service.MAX_RECENT_RECEIPTS, "mempool_committed": defaults[2], "vouches": vouches}
    if hasattr(app, "MESSAGE_LOOKUP_MAX"):
        app.MESSAGE_LOOKUP_MAX = scaled(app.MESSAGE_LOOKUP_MAX)
        caps["message_lookup"] = app.MESSAGE_LOOKUP_MAX
    original = idempotency.ReplyCache.__init__

    def reply_cache_init(self: Any, capacity: int, max_in_flight: int, ttl: float = 600.0) -> None:
        original(self, scaled(capacity), max_in_flight, ttl)
    idempotency.ReplyCache.__init__ = reply_cache_init  # type: ignore[method-assign]
    return caps


def main() -> int:
    scale = os.environ.get("DEVSEN_BENCH_CAP_SCALE")
    if scale:
        print(f"bench: local caps scaled by {scale}: {scale_caps(float(scale))}", flush=True)
    directory = os.environ.get("DEVSEN_BENCH_SNAPSHOT_DIR")
    count = [0]

    def dump(signum: int, frame: FrameType | None) -> None:
        assert directory is not None
        count[0] += 1
        gc.collect()
        if not tracemalloc.is_tracing():
            tracemalloc.start(FRAMES)
        tracemalloc.take_snapshot().dump(str(Path(directory) / f"snap-{count[0]}.bin"))
        (Path(directory) / f"done-{count[0]}").write_text("ok")

    if directory:
        signal.signal(signal.SIGUSR1, dump)
    from devsen.cli import main as devsen_main

    return devsen_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
