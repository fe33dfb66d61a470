"""The Byzantine test network: anvil, the contracts, 3 honest `devsen node` processes and one
node (node 4) started through `launch.py` with a swappable behaviour.

`net` is the module-scoped fixture every module of this suite uses (`net = byz_network.net`):
one network per module, node 4 "honest" until a test swaps its behaviour; a module sets
`SIGNED_METER = True` to have the demo charger registered with its OCMF meter key and
requireSignedMeter.

Everything listens on 127.0.0.1; every process is stopped by pid (its process group).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from anchoring.chain.anvil import AnvilProcess, start_anvil
from devsen.config import config_to_toml
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

LAUNCH = Path(__file__).resolve().parent / "launch.py"
REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(os.environ.get("BYZ_RESULTS", "/tmp/devsen-byzantine-results.jsonl"))


def start_with_behaviour(node: DevnetNode, behaviour: str, extra_env: dict[str, str] | None = None) -> None:
    """Start `devsen node` for `node` through the launcher with `behaviour` installed."""
    node.config_path.write_text(config_to_toml(node.config))
    env = {**os.environ, "PYTHONPATH": str(REPO), **(extra_env or {})}
    with open(node.log_path, "ab") as log_file:
        log_file.write(f"\n===== behaviour {behaviour} =====\n".encode())
        log_file.flush()
        node.process = subprocess.Popen(
            [sys.executable, str(LAUNCH), "--behaviour", behaviour, "--", "node", "--config", str(node.config_path)],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env=env, cwd=str(REPO))


async def get(url: str) -> tuple[int, Any]:
    """GET JSON; a busy or dead node counts as status 0."""
    try:
        return await http_get_json(url, timeout=5)
    except (OSError, trio.TooSlowError, ValueError):
        return 0, None


async def height(node: DevnetNode) -> int | None:
    status, body = await get(node.http_url + "/v1/status")
    return body["committed_height"] if status == 200 else None


def record_line(line: dict[str, Any]) -> None:
    """Print one scenario's figures and append them to $BYZ_RESULTS (JSON Lines)."""
    print("BYZANTINE", json.dumps(line))
    with open(RESULTS, "a") as out:
        out.write(json.dumps(line) + "\n")


@dataclass
class Observation:
    """What the honest nodes did during one attack window."""

    scenario: str
    seconds: float
    start_heights: list[int | None]
    end_heights: list[int | None]
    alive: list[bool]
    state_hashes: dict[int, list[Any]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def grown(self) -> list[int]:
        return [(e or 0) - (s or 0) for s, e in zip(self.start_heights, self.end_heights, strict=True)]

    @property
    def commit_rate(self) -> float:
        """Blocks per second, the slowest honest node."""
        return round(min(self.grown) / self.seconds, 2)

    def record(self) -> None:
        line = {"scenario": self.scenario, "seconds": round(self.seconds, 1), "start": self.start_heights,
                "end": self.end_heights, "alive": self.alive, "commit_rate_bps": self.commit_rate,
                "state_hash_agree": self.hashes_agree, **self.notes}
        record_line(line)

    @property
    def hashes_agree(self) -> bool:
        return bool(self.state_hashes) and all(len({json.dumps(v) for v in values}) == 1
                                               for values in self.state_hashes.values())


@dataclass
class ByzNetwork:
    anvil: AnvilProcess
    nodes: list[DevnetNode]
    deployment_path: Path
    seeded: dict[str, Any]
    root: Path
    behaviour: str = "honest"
    byzantine_start_crashes: list[str] = field(default_factory=list)

    @property
    def honest(self) -> list[DevnetNode]:
        return self.nodes[:3]

    @property
    def byzantine(self) -> DevnetNode:
        return self.nodes[3]

    def swap(self, behaviour: str, extra_env: dict[str, str] | None = None, wait: bool = True) -> None:
        """Restart node 4 with `behaviour` (it keeps its keys and data)."""
        self.behaviour = behaviour
        for attempt in range(3):
            stop_process(self.byzantine.process)
            start_with_behaviour(self.byzantine, behaviour, extra_env)
            if not wait:
                return
            try:
                trio.run(wait_until_serving, [self.byzantine])
                return
            except RuntimeError as exc:  # node 4 itself crashed while starting: start it again
                self.byzantine_start_crashes.append(f"{behaviour} attempt {attempt + 1}: {exc}")
        raise RuntimeError(f"node 4 never started with {behaviour}: {self.byzantine_start_crashes[-3:]}")

    def heal(self, attempts: int = 3) -> list[int]:
        """Restart every honest node that died in an earlier scenario (they catch up from
        their stores and peers), so one scenario's damage does not fail the next; a node that
        dies again right after its restart is restarted again. Returns the indexes restarted."""
        from devsen.devnet import start_node_process

        restarted: list[int] = []
        for _ in range(attempts):
            dead = [n for n in self.honest if n.process is None or n.process.poll() is not None]
            if not dead:
                break
            for node in dead:
                start_node_process(node)
                restarted.append(node.index)
            try:
                trio.run(wait_until_serving, dead)
            except (RuntimeError, trio.TooSlowError):
                continue
            trio.run(self._wait_caught_up, 30.0)
        return restarted

    async def _wait_caught_up(self, timeout_s: float) -> None:
        with trio.move_on_after(timeout_s):
            while True:
                heights = [await height(n) for n in self.honest]
                if None not in heights and max(heights) - min(heights) <= 2:  # type: ignore[type-var, operator]
                    return
                await trio.sleep(1)

    def restart_honest(self, node: DevnetNode) -> None:
        from devsen.devnet import start_node_process

        stop_process(node.process)
        start_node_process(node)

    async def observe(self, scenario: str, seconds: float, during: Any = None) -> Observation:
        """Heights of the honest nodes over `seconds` (running `during()` meanwhile), then the
        state hashes at the highest height all of them reached, and which are still alive."""
        starts = [await height(n) for n in self.honest]
        began = time.monotonic()
        notes: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._honest_load, notes)
            if during is not None:
                async def run_during() -> None:
                    notes.update(await during() or {})
                nursery.start_soon(run_during)
            await trio.sleep(seconds)
            nursery.cancel_scope.cancel()
        ends = [await height(n) for n in self.honest]
        elapsed = time.monotonic() - began
        alive = [n.process is not None and n.process.poll() is None for n in self.honest]
        observation = Observation(scenario, elapsed, starts, ends, alive, notes=notes)
        reached = [h for h in ends if h is not None]
        if reached:
            common = min(reached)
            for h in (common, max(1, common - 1)):
                values = []
                for n in self.honest:
                    status, body = await get(f"{n.http_url}/v1/heights/{h}")
                    values.append(body if status == 200 else f"HTTP {status}")
                observation.state_hashes[h] = values
        observation.notes["byzantine_alive"] = self.byzantine.process is not None \
            and self.byzantine.process.poll() is None
        observation.record()
        return observation

    async def _honest_load(self, notes: dict[str, Any]) -> None:
        """An honest charger's heartbeats (4 a second) at an honest node: the network makes no
        empty blocks, so progress during an attack is the commit of honest traffic."""
        from devsen.demo_charger import connect_demo_charger
        from devsen.devnet import DEMO_CHARGER, DEMO_PASSWORD

        answered = refused = 0
        try:
            async with connect_demo_charger(self.honest[2].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
                while True:
                    try:
                        with trio.fail_after(10):
                            await charger.call("Heartbeat", {})
                        answered += 1
                    except Exception:
                        refused += 1
                    notes["honest_heartbeats"] = {"answered": answered, "refused": refused}
                    await trio.sleep(0.25)
        except Exception as exc:  # the honest node is down: the observation shows it
            notes["honest_load_error"] = type(exc).__name__

    def stop(self) -> None:
        for node in self.nodes:
            stop_process(node.process)
        self.anvil.stop()


def assert_honest_progress(observation: Observation, min_blocks: int = 3) -> None:
    """The defended outcome every scenario shares: the 3 honest nodes are alive, keep
    committing, and agree on the state hash at the same height."""
    assert all(observation.alive), f"an honest node died: {observation}"
    assert min(observation.grown) >= min_blocks, f"honest nodes stalled: grew {observation.grown}"
    assert observation.hashes_agree, f"honest state hashes differ: {observation.state_hashes}"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ByzNetwork]:
    signed_meter = bool(getattr(request.module, "SIGNED_METER", False))
    root: Path = tmp_path_factory.mktemp("byzantine-signed" if signed_meter else "byzantine")
    anvil = start_anvil(root / "anvil.log", chain_id=CHAIN_ID, block_time_s=1)
    network = None
    try:
        deployment_path = root / "deployment.json"
        nodes = prepare_nodes(root, 4, deployment_path, anvil.url)
        _, seeded = deploy_network(anvil, nodes, deployment_path, signed_meter=signed_meter)
        network = ByzNetwork(anvil, nodes, deployment_path, seeded, root)
        for node in nodes[:3]:
            start_node_process(node)
        start_with_behaviour(nodes[3], "honest")
        trio.run(wait_until_serving, nodes)
        yield network
    finally:
        if network is not None:
            network.stop()
            for node in network.nodes:  # shown by pytest only when a test failed
                print(f"--- {node.log_path} (tail) ---\n" + node.log_path.read_text()[-2500:])
        else:
            anvil.stop()
