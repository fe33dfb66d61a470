"""Test harness node process: `python -m devsen.testnode CONFIG.json` (tests and benchmarks only).

Runs either the consensus service with a minimal deterministic application (a hash chain of
payloads) or, with `"mode": "p2p"`, the bare p2p stack (to measure transports, or to play a
non-validator intruder). Control is JSON lines: commands on stdin, events on stdout.

Commands: {"cmd": "submit", "id": k, "payloads": [hex, ...]}   -> {"event": "submitted", ...}
          {"cmd": "load", "rate": r, "seconds": s} -> {"event": "loaded", "results": [...]}
          {"cmd": "stats"} -> {"event": "stats", ...}
          {"cmd": "chain", "from": 1, "to": n} -> {"event": "chain", "hashes": [hex, ...]}
          {"cmd": "flood", "via": "links" | "gossip", "count": n, "size": bytes}
Events:   ready (peer id, addresses, validator address), commit (height, hash, payloads).
Own signed votes/proposals are appended to <data_dir>/signed.jsonl (an audit trail the
tests compare with the other nodes' blocks).

`NodeProcess` and `LocalNetwork` start, drive and kill such processes (127.0.0.1 only).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consensus.testkit import HashChainApp


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def _read_commands(handle: Any) -> None:
    import trio

    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""
    async with trio.open_nursery() as nursery:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                nursery.cancel_scope.cancel()
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    nursery.start_soon(handle, json.loads(line))


def _build(config: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    from libp2p.peer.id import ID

    from consensus.types import ValidatorSet
    from p2p.envelope import ValidatorDirectory
    from p2p.host import HostConfig
    from p2p.keys import init_keys
    from primitives.eip712 import Domain

    keys = init_keys(config["key_dir"])
    domain = Domain(int(config["chain_id"]), bytes.fromhex(config["verifying_contract"]))
    bindings = {bytes.fromhex(v["address"]): ID.from_base58(v["peer_id"]).to_bytes() for v in config["validators"]}
    host = HostConfig(listen=config["listen"], bootstrap=config.get("bootstrap", []))
    return keys, domain, ValidatorSet.equal(list(bindings)), (ValidatorDirectory(bindings), host)


def _open_audit(data_dir: Path) -> Any:
    """The append-only, line-buffered audit trail of own signed messages."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return open(data_dir / "signed.jsonl", "a", buffering=1)


async def _run_consensus(config: dict[str, Any]) -> None:
    import trio

    from consensus.core import TimeoutConfig
    from consensus.types import Proposal
    from devsen.consensus_service import ConsensusOverloaded, ServiceConfig, open_consensus_service

    keys, domain, validators, (directory, host) = _build(config)
    data_dir = Path(config["data_dir"])
    service_config = ServiceConfig(
        data_dir=data_dir, domain=domain, validators=validators, directory=directory, host=host,
        timeouts=TimeoutConfig(**config.get("timeouts", {})),
        batch_max_count=int(config.get("batch_max_count", 1000)),
        min_block_interval_s=float(config.get("min_block_interval_s", 0.01)),
        empty_block_interval_s=float(config.get("empty_block_interval_s", 1.0)),
        create_empty_blocks=bool(config.get("create_empty_blocks", True)),  # harness: heights tick
        block_max_payloads=int(config.get("block_max_payloads", 4096)),
    )
    audit = _open_audit(data_dir)

    def on_signed(message: Any) -> None:
        kind = "proposal" if isinstance(message, Proposal) else f"vote{int(message.vote_type)}"
        audit.write(json.dumps({"kind": kind, "height": message.height, "round": message.round,
                                "hash": message.block_hash.hex()}) + "\n")

    app = HashChainApp()
    async with open_consensus_service(keys, service_config, app) as service:
        service.signed_listeners.append(on_signed)
        service.commit_listeners.append(lambda c: emit(
            "commit", height=c.height, hash=c.block.hash.hex(), payloads=len(c.block.payloads),
            round=c.certificate.round, state=app.state.hex(), t=time.time()))
        net = service._net
        assert net is not None
        emit("ready", peer_id=net.running.peer_id.to_base58(), addrs=net.running.listen_addrs(),
             address=keys.validator_address.hex(), height=service.height)
        lags: list[float] = []
        import gc

        gc_started = [0.0]
        gc_pauses: list[float] = []

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                gc_started[0] = time.perf_counter()
            else:
                gc_pauses.append(time.perf_counter() - gc_started[0])
                del gc_pauses[:-1000]

        gc.callbacks.append(on_gc)

        async def watch_loop_lag() -> None:
            """Scheduling delay of a 10 ms sleep: how busy this node's event loop is."""
            while True:
                asked = trio.current_time()
                await trio.sleep(0.01)
                lags.append(trio.current_time() - asked - 0.01)
                del lags[:-1000]

        async def submit_one(payload: bytes, results: list[Any], index: int) -> None:
            started = time.monotonic()
            try:
                receipt = await service.submit(payload, timeout_s=float(config.get("submit_timeout_s", 60)))
                results[index] = [receipt.height, round((time.monotonic() - started) * 1000, 2)]
            except ConsensusOverloaded as exc:
                results[index] = ["overloaded", str(exc)]
            except Exception as exc:  # reported to the test, which decides
                results[index] = ["error", repr(exc)]

        async def handle(command: dict[str, Any]) -> None:
            cmd = command["cmd"]
            if cmd == "submit":
                payloads = [bytes.fromhex(p) for p in command["payloads"]]
                results: list[Any] = [None] * len(payloads)
                async with trio.open_nursery() as nursery:
                    for index, payload in enumerate(payloads):
                        nursery.start_soon(submit_one, payload, results, index)
                emit("submitted", id=command.get("id"), results=results)
            elif cmd == "load":
                # Open-loop load: `rate` payloads/s for `seconds`, each awaited to commit.
                rate, seconds, tag = float(command["rate"]), float(command["seconds"]), command.get("id", "load")
                total = int(rate * seconds)
                results = [None] * total
                started = trio.current_time()
                async with trio.open_nursery() as nursery:
                    for index in range(total):
                        await trio.sleep_until(started + index / rate)
                        payload = f"{tag}-{index:07d}-".encode() + b"e" * 280
                        nursery.start_soon(submit_one, payload, results, index)
                emit("loaded", id=command.get("id"), results=results)
            elif cmd == "stats":
                ordered = sorted(lags) or [0.0]
                emit("stats", gc_ms_max=round(1000 * max(gc_pauses, default=0.0), 1), gc_count=len(gc_pauses),
                     loop_lag_ms_p50=round(1000 * ordered[len(ordered) // 2], 1),
                     loop_lag_ms_max=round(1000 * ordered[-1], 1), **service.stats())
            elif cmd == "chain":
                hashes = []
                for height in range(int(command["from"]), int(command["to"]) + 1):
                    committed = service.store.get(height)
                    hashes.append(committed.block.hash.hex() if committed else None)
                emit("chain", hashes=hashes)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_loop_lag)
            await _read_commands(handle)
            nursery.cancel_scope.cancel()


async def _run_p2p(config: dict[str, Any]) -> None:
    import trio

    from p2p.envelope import network_id_of
    from p2p.node import P2PConfig, P2PHandlers, open_p2p

    keys, domain, _, (directory, host) = _build(config)
    received = {"consensus": 0, "payloads": 0, "first": 0.0, "last": 0.0}

    def mark() -> None:
        now = time.monotonic()
        received["first"] = received["first"] or now
        received["last"] = now

    async def on_consensus(sender: bytes, body: bytes) -> None:
        received["consensus"] += 1
        mark()

    async def on_payloads(sender: bytes, payloads: list[bytes]) -> None:
        received["payloads"] += len(payloads)
        mark()

    p2p_config = P2PConfig(network_id_of(domain), directory, host,
                           batch_max_count=int(config.get("batch_max_count", 1000)),
                           batch_max_delay_s=float(config.get("batch_max_delay_s", 0.005)),
                           batch_min_interval_s=float(config.get("batch_min_interval_s", 0.02)))
    handlers = P2PHandlers(on_consensus, on_payloads, lambda lo, hi: [], lambda: 0)
    async with open_p2p(keys, p2p_config, handlers) as net:
        emit("ready", peer_id=net.running.peer_id.to_base58(), addrs=net.running.listen_addrs(),
             address=keys.validator_address.hex(), height=0)

        async def handle(command: dict[str, Any]) -> None:
            cmd = command["cmd"]
            if cmd == "stats":
                emit("stats", received=received, **net.stats())
            elif cmd == "flood":
                body = os.urandom(int(command["size"]))
                started = time.monotonic()
                for i in range(int(command["count"])):
                    tagged = i.to_bytes(8, "big") + body
                    if command["via"] == "links":
                        while net.links.max_queued() > 64:
                            await trio.sleep(0.001)  # pace on the fullest peer queue
                        net.links.broadcast(tagged)
                        await trio.lowlevel.checkpoint()
                    else:
                        await net.publish_event(tagged)
                emit("flooded", seconds=time.monotonic() - started)

        await _read_commands(handle)


def main() -> None:
    """Entry point: run the node described by the JSON config file in argv[1]."""
    import logging

    import trio

    config = json.loads(Path(sys.argv[1]).read_text())
    logging.basicConfig(level=os.environ.get("DEVSEN_TESTNODE_LOG", "WARNING"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    runner = _run_p2p if config.get("mode") == "p2p" else _run_consensus
    profile_to = os.environ.get("DEVSEN_TESTNODE_PROFILE")
    if profile_to:  # where does a node spend its CPU (bench investigations)
        import cProfile

        cProfile.runctx("trio.run(runner, config)", globals(), locals(), f"{profile_to}.{os.getpid()}")
    else:
        trio.run(runner, config)


# ---------------------------------------------------------------------- harness side


class NodeProcess:
    """One node process with a JSON-lines control channel; killed by pid."""

    def __init__(self, name: str, config: dict[str, Any], workdir: Path) -> None:
        self.name = name
        self.config = config
        self.workdir = workdir
        self.config_path = workdir / f"{name}.json"
        self.config_path.write_text(json.dumps(config))
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.commits: list[dict[str, Any]] = []
        self.ready: dict[str, Any] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Spawn the process and wait for its ready line."""
        self.spawn()
        self.ready = self.wait_for("ready", timeout_s=timeout_s)
        return self.ready

    def spawn(self) -> None:
        """Spawn the process (see `start`)."""
        self.ready = {}
        stderr = open(self.workdir / f"{self.name}.stderr", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devsen.testnode", str(self.config_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        stderr.close()
        self.events = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "commit":
                self.commits.append(event)
            else:
                self.events.put(event)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()

    def wait_for(self, event: str, timeout_s: float, **match: Any) -> dict[str, Any]:
        """The next event named `event` (with matching fields); TimeoutError after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no {event!r} event within {timeout_s} s")
            try:
                item = self.events.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if not self.alive():
                    raise RuntimeError(f"{self.name} exited; see {self.workdir / (self.name + '.stderr')}") from None
                continue
            if item.get("event") == event and all(item.get(k) == v for k, v in match.items()):
                return item

    def request(self, command: dict[str, Any], reply: str, timeout_s: float = 30.0) -> dict[str, Any]:
        self.send(command)
        return self.wait_for(reply, timeout_s)

    def committed_height(self) -> int:
        """Last committed height seen: from commit events, or recovered at start."""
        recovered = int(self.ready.get("height", 1)) - 1
        return max(self.commits[-1]["height"] if self.commits else 0, recovered)

    def kill(self) -> None:
        """SIGKILL by pid (a crash)."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            assert self.proc is not None
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Close stdin (the node exits), then SIGKILL if it lingers."""
        if not self.alive():
            return
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (subprocess.TimeoutExpired, OSError):
            self.kill()


@dataclass
class LocalNetwork:
    """n validator processes on 127.0.0.1; the others bootstrap from node 0's address only."""

    workdir: Path
    nodes: list[NodeProcess]

    @classmethod
    def start(cls, workdir: Path, n: int = 4, *, chain_id: int = 31337, contract: str = "11" * 20,
              extra: dict[str, Any] | None = None, timeout_s: float = 40.0) -> LocalNetwork:
        from p2p.keys import init_keys

        keys = [init_keys(workdir / f"node{i}" / "keys") for i in range(n)]
        validators = [{"address": k.validator_address.hex(), "peer_id": k.peer_id.to_base58()} for k in keys]
        nodes = []
        for i in range(n):
            config = {
                "key_dir": str(workdir / f"node{i}" / "keys"), "data_dir": str(workdir / f"node{i}" / "data"),
                "listen": "/ip4/127.0.0.1/tcp/0", "bootstrap": [], "chain_id": chain_id,
                "verifying_contract": contract, "validators": validators,
                "timeouts": {"propose_ms": 1000, "propose_delta_ms": 250, "prevote_ms": 500,
                             "prevote_delta_ms": 250, "precommit_ms": 500, "precommit_delta_ms": 250,
                             "retransmit_ms": 1000},
                "empty_block_interval_s": 0.5,
                **(extra or {}),
            }
            nodes.append(NodeProcess(f"node{i}", config, workdir))
        network = cls(workdir, nodes)
        try:
            nodes[0].start(timeout_s)
            boot = nodes[0].ready["addrs"]
            for node in nodes[1:]:
                node.config["bootstrap"] = boot
                node.config_path.write_text(json.dumps(node.config))
                node.spawn()
            for node in nodes[1:]:
                node.ready = node.wait_for("ready", timeout_s=timeout_s)
            for node in nodes:  # a restart reuses its port
                node.config["listen"] = node.ready["addrs"][0].split("/p2p/")[0]
                node.config_path.write_text(json.dumps(node.config))
        except BaseException:
            network.stop()
            raise
        return network

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def wait_all_height(self, height: int, timeout_s: float, nodes: list[NodeProcess] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        for node in nodes or self.nodes:
            while node.committed_height() < height:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{node.name} at height {node.committed_height()}, wanted {height}")
                if not node.alive():
                    raise RuntimeError(f"{node.name} died")
                time.sleep(0.05)


if __name__ == "__main__":
    main()
