"""Idle CPU of consensus: 4 in-process ConsensusServices on loopback libp2p, no payloads.

    .venv/bin/python bench/idle_cpu.py [--seconds 20]

Measures the process CPU time (user + system) over an idle window after a warm-up commit,
with `create_empty_blocks` False (the shipping default: no blocks while idle) and True (the
old behaviour: an empty block every `empty_block_interval_s` = 1 s), and writes
bench/results/idle_consensus.json with % of one core per node (the whole node
process on a devnet: bench/idle.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consensus.testkit import HashChainApp  # noqa: E402
from consensus.types import ValidatorSet  # noqa: E402
from devsen.consensus_service import ConsensusService, ServiceConfig  # noqa: E402
from p2p.envelope import ValidatorDirectory  # noqa: E402
from p2p.host import HostConfig  # noqa: E402
from p2p.keys import init_keys  # noqa: E402
from primitives.eip712 import Domain  # noqa: E402

NODES = 4


async def measure(root: Path, empty_blocks: bool, seconds: float) -> dict[str, float]:
    keys = [init_keys(root / f"keys{i}") for i in range(NODES)]
    bindings = {k.validator_address: k.peer_id.to_bytes() for k in keys}
    validators = ValidatorSet.equal(list(bindings))
    domain = Domain(31337, bytes.fromhex("ee" * 20))
    async with trio.open_nursery() as nursery:
        services = []
        boot: list[str] = []
        for i in range(NODES):
            config = ServiceConfig(data_dir=root / f"node{i}", domain=domain, validators=validators,
                                   directory=ValidatorDirectory(bindings),
                                   host=HostConfig(bootstrap=tuple(boot)), create_empty_blocks=empty_blocks)
            service = ConsensusService(keys[i], config, HashChainApp())
            net = await nursery.start(service.run)
            boot = boot or list(net.running.listen_addrs())
            services.append(service)
        await services[0].submit(b"warm-up", timeout_s=60)
        await trio.sleep(2)
        start_h = services[0].committed_height
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await trio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        blocks = services[0].committed_height - start_h
        nursery.cancel_scope.cancel()
    return {"create_empty_blocks": empty_blocks, "seconds": round(wall, 1), "blocks": blocks,
            "cpu_percent_per_node": round(100 * cpu / wall / NODES, 2),
            "cpu_percent_all_nodes": round(100 * cpu / wall, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    rows = []
    for empty in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(trio.run(measure, Path(tmp), empty, args.seconds))
            print(json.dumps(rows[-1]), flush=True)
    out = Path(__file__).resolve().parent / "results" / "idle_consensus.json"
    out.write_text(json.dumps({"nodes": NODES, "in_process": True, "cores": os.cpu_count(),
                               "before_is": "create_empty_blocks=True (an empty block per second)",
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
