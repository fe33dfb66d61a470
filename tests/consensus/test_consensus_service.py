"""ConsensusService in-process: four services on loopback libp2p, driving the shared Replica.

Payloads commit with their TxResult in the receipt; outbound payloads and notices leave
through FinalizeResult; an idle network makes no blocks; a restarted service replays.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
import trio

from consensus.abci import CheckResult, FinalizeResult, Prepared, TxResult
from consensus.testkit import HashChainApp
from consensus.types import CommittedBlock, ValidatorSet
from devsen.consensus_service import CommitTimeout, ConsensusService, SenderQueues, ServiceConfig
from p2p.envelope import ValidatorDirectory
from p2p.host import HostConfig
from p2p.keys import init_keys
from primitives.eip712 import ZERO_HASH, Domain
from primitives.hashing import keccak256

DOMAIN = Domain(31337, bytes.fromhex("cd" * 20))


class EchoApp(HashChainApp):
    """Replies b"ok:" + payload; a payload starting with b"attest" makes every node submit its
    own b"own-<node>-<height>" payload and hand a notice to the node. No snapshots."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.app_hash = ZERO_HASH
        self.height = 0
        self.loop_calls = 0

    def check_tx(self, payload: bytes) -> CheckResult:
        return CheckResult(not payload.startswith(b"bad"), "bad payload")

    def propose_facts(self, height: int) -> Any:
        try:  # called in a worker thread, never on the event loop
            trio.lowlevel.current_trio_token()
            self.loop_calls += 1
        except RuntimeError:
            pass
        return height

    def prepare_proposal(self, height: int, payloads: tuple[bytes, ...], facts: Any) -> Prepared:
        return Prepared(b"echo", payloads)

    def fetch_facts(self, height: int, app_header: bytes, payloads: tuple[bytes, ...] = (),
                    *, committed: bool = False, block_ms: int | None = None) -> Any:
        return app_header

    def process_proposal(self, block: Any, facts: Any) -> bool:
        return bool(facts == b"echo")

    def finalize_block(self, block: Any, certificate: Any, facts: Any) -> FinalizeResult:
        assert block.height == self.height + 1
        self.height = block.height
        self.app_hash = keccak256(self.app_hash + block.hash)
        own = tuple(b"own-%s-%d" % (self.name.encode(), block.height)
                    for p in block.payloads if p.startswith(b"attest"))
        return FinalizeResult(tuple(TxResult(0, b"ok:" + p) for p in block.payloads), self.app_hash,
                              outbound_payloads=own, notices=tuple(("quorum", p) for p in own))


def _network(tmp_path: Path, n: int = 4) -> tuple[list[Any], ValidatorSet, dict[bytes, bytes]]:
    return _network_of([init_keys(tmp_path / f"keys{i}") for i in range(n)])


def _network_of(keys: list[Any]) -> tuple[list[Any], ValidatorSet, dict[bytes, bytes]]:
    bindings = {k.validator_address: k.peer_id.to_bytes() for k in keys}
    return keys, ValidatorSet.equal(list(bindings)), bindings


def _config(tmp_path: Path, i: int, validators: ValidatorSet, bindings: dict[bytes, bytes],
            bootstrap: list[str]) -> ServiceConfig:
    return ServiceConfig(data_dir=tmp_path / f"node{i}", domain=DOMAIN, validators=validators,
                         directory=ValidatorDirectory(bindings),
                         host=HostConfig(listen="/ip4/127.0.0.1/tcp/0", bootstrap=tuple(bootstrap)),
                         durable=False)


async def _start(nursery: trio.Nursery, service: ConsensusService) -> list[str]:
    net = await nursery.start(service.run)
    return list(net.running.listen_addrs())


async def _start_all(nursery: trio.Nursery, tmp_path: Path, keys: list[Any], apps: list[Any],
                     **config: Any) -> list[ConsensusService]:
    """One service per app, the first one every other bootstraps from (`config`: ServiceConfig fields)."""
    _, validators, bindings = _network_of(keys)
    services: list[ConsensusService] = []
    boot: list[str] = []
    for i, app in enumerate(apps):
        service = ConsensusService(keys[i], replace(_config(tmp_path, i, validators, bindings, boot), **config), app)
        addrs = await _start(nursery, service)
        boot = boot or addrs
        services.append(service)
    return services


def test_four_services_commit_reply_and_stay_idle(tmp_path: Path) -> None:
    keys, _, _ = _network(tmp_path)
    apps = [EchoApp(f"n{i}") for i in range(4)]
    notices: list[tuple[Any, ...]] = []

    async def main() -> None:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                services = await _start_all(nursery, tmp_path, keys, apps)
                services[0].on_notices = notices.append
                receipt = await services[1].submit(b"hello", timeout_s=30)
                assert receipt.result == TxResult(0, b"ok:hello")  # in the receipt, no side map
                with pytest.raises(ValueError, match="bad payload"):
                    await services[2].submit(b"bad one")
                receipt = await services[3].submit(b"attest-1", timeout_s=30)
                # every node's own payload, submitted by its service, commits too
                with trio.fail_after(30):
                    while not all(len([1 for h in range(1, s.committed_height + 1)
                                       for p in cast(CommittedBlock, s.store.get(h)).block.payloads if p.startswith(b"own-")]) == 4
                                  for s in services):
                        await trio.sleep(0.05)
                assert notices and notices[0][0][0] == "quorum"
                # idle: no empty blocks
                await trio.sleep(0.5)
                heights = [s.committed_height for s in services]
                await trio.sleep(2.0)
                assert [s.committed_height for s in services] == heights
                assert all(s.replica.idle for s in services)
                assert all(a.loop_calls == 0 for a in apps)
                hashes = {cast(CommittedBlock, s.store.get(heights[0])).block.hash for s in services}
                assert len(hashes) == 1 and len({s.app_state_hash for s in services}) == 1
                nursery.cancel_scope.cancel()

    trio.run(main)


def test_sender_queues_serve_a_quiet_sender_past_a_flood() -> None:
    queues = SenderQueues(per_sender=100)
    for k in range(1000):
        queues.put(b"flooder", k)
    assert len(queues) == 100 and queues.dropped == 900
    queues.put(b"honest", "vote")
    served = [queues.take() for _ in range(2)]
    assert "vote" in served  # the honest message is second in line, not 101st


class ChainWatchApp(EchoApp):
    """EchoApp whose chain changes when the test says: `chain_wants_block` (worker thread only)
    is True while `changed` is set and no block has been finalized since; `broken` raises."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.changed = False
        self.broken = False
        self.asked = 0

    def chain_wants_block(self) -> bool:
        with pytest.raises(RuntimeError):
            trio.lowlevel.current_trio_token()  # never on the event loop
        self.asked += 1
        if self.broken:
            raise ConnectionError("chain RPC down")
        return self.changed

    def finalize_block(self, block: Any, certificate: Any, facts: Any) -> FinalizeResult:
        self.changed = False  # the block named the change
        return super().finalize_block(block, certificate, facts)


IDLE_WAIT_S = 45.0  # bounded, generous: CI runs these beside multi-process tests on 2 cores


async def _watching_network_gone_idle(nursery: trio.Nursery, tmp_path: Path, keys: list[Any],
                                      apps: list[Any]) -> list[ConsensusService]:
    """Four services watching the chain every 0.1 s, after one committed payload, all idle."""
    services = await _start_all(nursery, tmp_path, keys, apps, chain_watch_interval_s=0.1)
    await services[0].submit(b"first", timeout_s=30)
    with trio.fail_after(IDLE_WAIT_S):
        while not all(s.replica.idle for s in services):
            await trio.sleep(0.05)
    return services


class StaleWatchApp(EchoApp):
    """`chain_wants_block` blocks until the test releases it, then says True: an answer read
    before a block that meanwhile committed (and named the change) is stale. Asked afresh after
    the release, it says False."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.asking = threading.Event()
        self.release = threading.Event()

    def chain_wants_block(self) -> bool:
        if self.release.is_set():
            return False  # the block named the change: asked afresh, nothing is waiting
        self.asking.set()
        self.release.wait(30)
        return True


def test_a_chain_watch_answer_read_before_a_commit_wakes_nobody(tmp_path: Path) -> None:
    """The watch asks on an idle network; before the (slow) read answers "yes", a block commits.
    The answer predates that block, so the validator must not wake the network for another."""
    keys, _, _ = _network(tmp_path)
    apps: list[Any] = [EchoApp(f"n{i}") for i in range(3)] + [StaleWatchApp("n3")]

    async def main() -> None:
        with trio.fail_after(150):
            async with trio.open_nursery() as nursery:
                services = await _watching_network_gone_idle(nursery, tmp_path, keys, apps)
                with trio.fail_after(IDLE_WAIT_S):
                    while not apps[3].asking.is_set():  # the watch's read is in flight (since idle)
                        await trio.sleep(0.01)
                before = services[3].committed_height
                await services[0].submit(b"second", timeout_s=IDLE_WAIT_S)
                with trio.fail_after(IDLE_WAIT_S):
                    while services[3].committed_height == before:
                        await trio.sleep(0.02)
                apps[3].release.set()  # the read answers "yes", after the block
                await trio.sleep(1.0)
                assert services[3].counters["chain_woke"] == 0
                assert services[3].committed_height == before + 1  # no second, needless block
                nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        apps[3].release.set()  # never leave the worker thread waiting


def test_a_chain_side_change_seen_by_one_validator_makes_a_block_on_an_idle_network(tmp_path: Path) -> None:
    """No payload waits, no heartbeat is due: one validator's application sees a chain change
    (a driver's escrow session waiting for its remote start) and the network makes one block for
    it, then goes idle again. A failing chain watch makes no block and does not stop the node."""
    keys, _, _ = _network(tmp_path)
    apps = [ChainWatchApp(f"n{i}") for i in range(4)]

    async def main() -> None:
        with trio.fail_after(150):
            async with trio.open_nursery() as nursery:
                services = await _watching_network_gone_idle(nursery, tmp_path, keys, apps)
                await trio.sleep(0.5)
                heights = [s.committed_height for s in services]
                apps[1].broken = True
                await trio.sleep(1.0)
                assert [s.committed_height for s in services] == heights  # asked, failed: no block
                assert apps[1].asked > 2 and all(a.asked > 2 for a in apps)
                apps[1].broken = False
                apps[2].changed = True
                with trio.fail_after(IDLE_WAIT_S):
                    while not all(s.committed_height > h for s, h in zip(services, heights, strict=True)):
                        await trio.sleep(0.05)
                assert services[2].counters["chain_woke"] == 1
                assert sum(s.counters["chain_woke"] for s in services) == 1
                await trio.sleep(1.0)
                after = [s.committed_height for s in services]
                await trio.sleep(1.0)
                assert [s.committed_height for s in services] == after  # idle again
                assert max(after) - max(heights) <= 2
                nursery.cancel_scope.cancel()

    trio.run(main)


def test_hostile_payloads_that_never_commit_leave_no_commit_waiter_behind(tmp_path: Path) -> None:
    """A flood of submissions whose payloads never commit (here: no network runs, so nothing
    does; in a node: payloads left out of every proposal as refused, or given up on) must not
    leave one waiter each behind; a waiter shared by two callers stays until the last gives up."""
    keys, validators, bindings = _network(tmp_path, 1)

    async def main() -> None:
        service = ConsensusService(keys[0], _config(tmp_path, 0, validators, bindings, []), EchoApp("n0"))
        for i in range(2_000):
            with pytest.raises(CommitTimeout):
                await service.submit(b"heartbeat-%d" % i, timeout_s=0.001)
        assert not service._waiters and len(service.mempool) == 2_000  # pending, bounded by the mempool

        async def wait(timeout_s: float) -> None:
            with pytest.raises(CommitTimeout):
                await service.submit(b"shared", timeout_s=timeout_s)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait, 0.05)
            nursery.start_soon(wait, 0.5)
            await trio.sleep(0.2)
            assert len(service._waiters) == 1  # the second caller still waits on it
        assert not service._waiters

    trio.run(main)
