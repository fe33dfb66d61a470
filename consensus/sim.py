"""Deterministic fault simulator for the consensus core (in the spirit of TigerBeetle's VOPR).

    python -m consensus.sim --seeds 1000 --validators 4
    python -m consensus.sim --seed 1234 --validators 7 --trace     # replay one seed exactly
    python -m consensus.sim --bench --validators 4                 # throughput vs batch size

Every run is a pure function of (seed, config): one seeded PRNG drives the network
(delays, drops, duplicates, reordering, partitions that heal at GST), crashes at any point
of a node's output processing with restart from its WAL and block store (SQLite, in
memory), timer skew, client retries, and up to f Byzantine validators (equivocating
proposer, double voter, silent, garbage sender). Honest nodes are `Replica`s with a small
deterministic application. After every commit it checks agreement, validity, no payload
committed twice, chain links and certificates; at every prevote, the lock invariant (an
honest validator locked on a block prevotes another only after a newer polka for it, its
lock read from its own signed precommits, so a node that forgot it is caught too); at the
end, liveness (every submitted payload committed by every honest node once the network is
good). Lock splits (`_plan_split`) make the schedules where only locks keep a height safe.
"""

from __future__ import annotations

import argparse
import enum
import hashlib
import heapq
import itertools
import random
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import msgpack

from consensus.abci import (
    CheckResult,
    FinalizeResult,
    Prepared,
    Snapshot,
    TxResult,
    ValidatorUpdate,
)
from consensus.core import (
    Broadcast,
    Commit,
    ConsensusCore,
    Dropped,
    Output,
    ReportEvidence,
    RequestCatchUp,
    RequestProposal,
    ScheduleTimeout,
    SendTo,
    TimeoutConfig,
    ValidateBlock,
)
from consensus.mempool import Mempool, MempoolFull
from consensus.replica import FaultHook, Replica
from consensus.types import (
    Block,
    BlockRequest,
    CertificateError,
    CommitCertificate,
    CommittedBlock,
    Evidence,
    EvidenceKind,
    Message,
    Proposal,
    ValidatorSet,
    Vote,
    VoteType,
    WireError,
    decode_message,
    verify_certificate,
)
from primitives.eip712 import ZERO_HASH, Domain, SigningKey
from primitives.hashing import keccak256

SIM_DOMAIN = Domain(31337, bytes.fromhex("5e" * 20))
SIM_TIMEOUTS = TimeoutConfig(
    propose_ms=400, propose_delta_ms=100, prevote_ms=100, prevote_delta_ms=50,
    precommit_ms=100, precommit_delta_ms=50, retransmit_ms=300, max_ms=5000,
)
_db_ids = itertools.count()


class Behavior(enum.Enum):
    HONEST = "honest"
    SILENT = "silent"
    GARBAGE = "garbage"
    FLOODER = "flooder"  # validly signed votes of future heights and rounds, in bursts
    DOUBLE_VOTER = "double-voter"
    EQUIVOCATOR = "equivocating-proposer"


BYZANTINE = [Behavior.SILENT, Behavior.GARBAGE, Behavior.DOUBLE_VOTER, Behavior.EQUIVOCATOR,
             Behavior.FLOODER]


class MajorityQuorumCore(ConsensusCore):
    """FAULTY (the simulator must catch it): decides on a simple majority instead of 2f+1."""

    @property
    def validators(self) -> ValidatorSet:
        real = self.schedule.set_for(self.height)
        return _MajoritySet(real.addresses, real.powers, real.epoch)


class _MajoritySet(ValidatorSet):
    @property
    def quorum_power(self) -> int:
        return sum(self.powers) // 2 + 1


class IgnoredLockCore(ConsensusCore):
    """FAULTY: prevotes any valid proposal, whatever it is locked on (L23/L29 ignored)."""

    def _rule_prevote_on_proposal(self, out: list[Output]) -> bool:
        locked = self.locked_round, self.locked_hash
        self.locked_round, self.locked_hash = -1, None
        try:
            return super()._rule_prevote_on_proposal(out)
        finally:
            self.locked_round, self.locked_hash = locked


FAULTY_CORES = ("no-wal", "majority-quorum", "ignored-lock")


@contextmanager
def _verify_once() -> Iterator[None]:
    """While one run lasts, each distinct Vote/Proposal's signature is checked once.

    Every simulated node receives the same messages, and recovering a secp256k1 signature
    (with its EIP-712 digest) was most of the simulator's time. `verify` is a pure function
    of (message, domain), so remembering its result changes no outcome: every call still
    gets what the real check answers for that exact message."""
    originals = Vote.verify, Proposal.verify
    memo: dict[tuple[Any, Domain], bool] = {}

    def once(original: Any) -> Any:
        def verify(self: Any, domain: Domain) -> bool:
            key = (self, domain)
            verdict = memo.get(key)
            if verdict is None:
                if len(memo) > 200_000:
                    memo.clear()
                verdict = memo[key] = original(self, domain)
            return verdict
        return verify

    Vote.verify, Proposal.verify = once(originals[0]), once(originals[1])  # type: ignore[method-assign]
    try:
        yield
    finally:
        Vote.verify, Proposal.verify = originals  # type: ignore[method-assign]


class SimCrash(Exception):
    """Raised by the fault hook: the node dies at this exact point."""


class SafetyViolation(AssertionError):
    """An invariant failed; the message says which."""


@dataclass
class SimConfig:
    """Knobs of one simulated run (ticks are simulated milliseconds)."""

    validators: int = 4
    payloads: int = 12
    batch: int = 8
    faults: bool = True
    byzantine: int | None = None  # None: a random number in 0..f
    submit_until: int = 2500
    gst_min: int = 1500
    gst_max: int = 3500
    max_delay_before_gst: int = 60
    max_delay_after_gst: int = 10
    drop_rate: float = 0.1
    hold_precommit_rate: float = 0.5  # precommits held back until about GST
    hold_certified_rate: float = 0.5  # certified blocks (catch-up help) held back likewise
    duplicate_rate: float = 0.05
    crash_rate: float = 0.5  # expected crashes per honest node before GST
    idle_block_ticks: int = 150
    heartbeat_ticks: int = 2000  # an idle network still makes a block this often (the node's app does)
    client_retry_ticks: int = 500
    liveness_window: int = 40_000  # ticks after GST for everything to be committed
    epoch_change_height: int | None = 1  # at this commit, weights change from height + 2
    hold_prevote_rate: float = 0.6  # prevotes to one node per height held back (it misses polkas)
    split_rate: float = 0.9  # chance that a height before GST gets a lock split (`_plan_split`)
    faulty_core: str = ""  # one of FAULTY_CORES: every honest node runs that bug (must be caught)
    # The application's cost per payload, in ticks (issue 16): a validator's verdict on a
    # proposed block (valid(v)) comes `apply_ticks_per_payload` x its payloads after the
    # ValidateBlock; the proposer's block (prepare_proposal) `build_ticks_per_payload` x its
    # payloads after RequestProposal.
    apply_ticks_per_payload: float = 0.0
    build_ticks_per_payload: float = 0.0
    timeouts: TimeoutConfig | None = None  # None: SIM_TIMEOUTS


@dataclass
class SimResult:
    seed: int
    ok: bool
    failure: str = ""
    heights: int = 0
    rounds: int = 0
    ticks: int = 0
    events: int = 0
    crashes: int = 0
    evidence: int = 0
    dropped: int = 0
    behaviors: list[str] = field(default_factory=list)
    fingerprint: str = ""
    latencies: list[int] = field(default_factory=list)
    committed_payloads: int = 0


class SimApp:
    """The deterministic application of a simulated node (implements `consensus.abci.Application`):
    a hash chain of blocks; at `epoch_change` it re-weights the validators from height + 2."""

    def __init__(self, submitted: set[bytes], honest: bool = True,
                 epoch_change: tuple[int, ValidatorSet] | None = None, heartbeat_ticks: int = 0) -> None:
        self.state_hash = ZERO_HASH
        self.height = 0
        self.committed: set[bytes] = set()
        self.submitted = submitted
        self.honest = honest
        self.epoch_change = epoch_change
        self.heartbeat_ticks = heartbeat_ticks
        self.mempool = Mempool(max_count=10_000, max_bytes=64 * 1024 * 1024)

    def check_tx(self, payload: bytes) -> CheckResult:
        return CheckResult(payload not in self.committed, "committed")

    def propose_facts(self, height: int) -> Any:
        return None

    def prepare_proposal(self, height: int, payloads: tuple[bytes, ...], facts: Any) -> Prepared:
        return Prepared(b"sim", tuple(p for p in payloads if p not in self.committed))

    def fetch_facts(self, height: int, app_header: bytes, payloads: tuple[bytes, ...] = (),
                    *, committed: bool = False, block_ms: int | None = None) -> Any:
        return None

    def process_proposal(self, block: Block, facts: Any) -> bool:
        if not self.honest:
            return True  # Byzantine nodes vote for anything
        payloads = block.payloads
        return (len(set(payloads)) == len(payloads)
                and all(p in self.submitted and p not in self.committed for p in payloads))

    def finalize_block(self, block: Block, certificate: CommitCertificate, facts: Any) -> FinalizeResult:
        if block.height != self.height + 1 or block.app_state_hash != self.state_hash:
            raise SafetyViolation(f"app applies block {block.height} out of order or on another state")
        self.height = block.height
        self.state_hash = keccak256(self.state_hash + block.hash)
        self.committed.update(block.payloads)
        self.mempool.remove_committed(block.payloads)
        update = None
        if self.epoch_change is not None and block.height == self.epoch_change[0]:
            update = ValidatorUpdate(block.height + 2, self.epoch_change[1])
        needed = block.timestamp_ms + self.heartbeat_ticks if self.heartbeat_ticks else None
        return FinalizeResult(tuple(TxResult() for _ in block.payloads), self.state_hash, update,
                              block_needed_by_ms=needed)

    def commit(self, height: int) -> None:
        pass

    def restore(self, last_height: int, get_block: Any) -> tuple[int, bytes] | None:
        return None

    def list_snapshots(self) -> tuple[Snapshot, ...]:
        return ()

    def load_snapshot_chunk(self, height: int, format: int, index: int) -> bytes | None:
        return None

    def offer_snapshot(self, snapshot: Snapshot, app_hash: bytes) -> bool:
        return False

    def apply_snapshot_chunk(self, index: int, chunk: bytes) -> bool | None:
        return False


@dataclass
class SimNode:
    index: int
    key: SigningKey
    behavior: Behavior
    wal_uri: str
    store_uri: str
    skew: float
    replica: Replica | None = None
    app: SimApp = field(default_factory=lambda: SimApp(set()))
    incarnation: int = 0
    crash_countdown: int | None = None
    pending_content: RequestProposal | None = None

    @property
    def up(self) -> bool:
        return self.replica is not None

    @property
    def honest(self) -> bool:
        return self.behavior == Behavior.HONEST


class Simulation:
    """One seeded run; `run()` returns a SimResult (ok False with the first failure)."""

    def __init__(self, seed: int, config: SimConfig | None = None, trace: bool = False) -> None:
        self.seed = seed
        self.config = config or SimConfig()
        self.trace = trace
        self.rng = random.Random(seed)
        self.now = 0
        self._queue: list[tuple[int, int, str, Any]] = []
        self._seq = itertools.count()
        self.fingerprint = hashlib.sha256()
        cfg = self.config
        n = cfg.validators
        f = (n - 1) // 3
        keys = [SigningKey(keccak256(b"sim-key-%d-%d" % (seed, i))) for i in range(n)]
        keys.sort(key=lambda k: k.address)
        self.genesis = ValidatorSet.equal([k.address for k in keys])
        byzantine = cfg.byzantine if cfg.byzantine is not None else self.rng.randint(0, f)
        assert 0 <= byzantine <= f, "the simulator keeps f < n/3"
        bad = set(self.rng.sample(range(n), byzantine))
        db = next(_db_ids)
        self.nodes: list[SimNode] = []
        for i, key in enumerate(keys):
            behavior = self.rng.choice(BYZANTINE) if i in bad else Behavior.HONEST
            skew = self.rng.uniform(0.7, 1.5) if cfg.faults else 1.0
            self.nodes.append(SimNode(
                i, key, behavior,
                f"file:sim{db}-{i}-wal?mode=memory&cache=shared",
                f"file:sim{db}-{i}-blocks?mode=memory&cache=shared", skew))
        # Keep every in-memory database alive across crashes: they are the nodes' disks.
        self._disks = [sqlite3.connect(u, uri=True) for nd in self.nodes for u in (nd.wal_uri, nd.store_uri)]
        self.gst = self.rng.randint(cfg.gst_min, cfg.gst_max) if cfg.faults else 0
        self.partition: list[set[int]] | None = None
        self.submitted: set[bytes] = set()
        self.submit_time: dict[bytes, int] = {}
        self.decided: dict[int, bytes] = {}
        self.decided_blocks: dict[int, Block] = {}
        self.committed_at: dict[bytes, int] = {}
        self.rounds_at: dict[int, int] = {}
        self.result = SimResult(seed, True, behaviors=[nd.behavior.value for nd in self.nodes])
        self.signed: dict[tuple[int, str, int, int, int], bytes] = {}  # across restarts
        self.amplified: set[tuple[int, int, int, int, bytes]] = set()
        # Every prevote anyone signed: (height, round, block hash) -> signers (the lock invariant).
        self.prevotes: dict[tuple[int, int, bytes], set[bytes]] = {}
        # Each honest node's lock per height as its own signed precommits show it (survives its
        # crashes: a node that forgot its lock is caught too): (node, height) -> (round, hash).
        self.locks: dict[tuple[int, int], tuple[int, bytes]] = {}
        # Lock splits (`_plan_split`): height -> (round-1 proposer, who gets whose round-0
        # precommits), or None for a height decided without one.
        self.splits: dict[int, tuple[int, dict[int, set[int]]] | None] = {}
        self.bounced: set[tuple[int, int]] = set()  # (node, height): crashed once after locking
        self.garbage_key = SigningKey(keccak256(b"sim-outsider-%d" % seed))
        self._decoded: dict[bytes, Message | None] = {}  # one decode per distinct message (immutable)

    # ------------------------------------------------------------------ event queue

    def _push(self, at: int, kind: str, data: Any) -> None:
        heapq.heappush(self._queue, (at, next(self._seq), kind, data))

    def _log(self, text: str) -> None:
        self.fingerprint.update(f"{self.now}:{text}\n".encode())
        if self.trace:
            print(f"[{self.now:6d}] {text}")

    def _good(self) -> bool:
        return self.now >= self.gst

    def _send(self, src: int, dst: int, channel: str, data: bytes, targeted: float = 0.0,
              message: Vote | Proposal | None = None) -> None:
        """Put a message on the simulated network (drop, duplicate, delay, partition).

        Before GST the network is adversarial: messages that finish a height (precommits,
        certified blocks) are held back until about GST with probability `targeted`, so
        some nodes decide while others keep voting at that height: the schedules where
        only the locks (L23/L29) keep validators from deciding something else.
        """
        cfg = self.config
        hold = 0
        if message is not None and cfg.faults and not self._good():
            held = self._split_hold(src, dst, message)
            if held is not None:  # the adversary controls this delivery exactly
                at = (self.gst if held else self.now) + self.rng.randint(1, cfg.max_delay_after_gst)
                self._push(at, "deliver", (dst, src, channel, data))
                return
        if not self._good() and cfg.faults:
            if self.partition and not any(src in g and dst in g for g in self.partition):
                return
            if self.rng.random() < cfg.drop_rate:
                return
            if targeted and self.rng.random() < targeted:
                hold = self.rng.randint(0, self.gst - self.now)
            copies = 2 if self.rng.random() < cfg.duplicate_rate else 1
            max_delay = cfg.max_delay_before_gst
        else:
            copies = 2 if cfg.faults and self.rng.random() < cfg.duplicate_rate else 1
            max_delay = cfg.max_delay_after_gst
        for _ in range(copies):
            at = self.now + hold + self.rng.randint(1, max_delay)
            self._push(at, "deliver", (dst, src, channel, data))

    # ------------------------------------------------------------------ setup and run

    def run(self) -> SimResult:
        with _verify_once():
            return self._run()

    def _decode(self, body: bytes) -> Message | None:
        """The decoded message (shared by every receiver: messages are immutable), or None."""
        if body in self._decoded:
            return self._decoded[body]
        if len(self._decoded) > 100_000:
            self._decoded.clear()
        try:
            message: Message | None = decode_message(body)
        except WireError:
            message = None
        self._decoded[body] = message
        return message

    def _run(self) -> SimResult:
        cfg = self.config
        try:
            for node in self.nodes:
                if node.behavior != Behavior.SILENT:
                    self._boot(node)
            for k in range(cfg.payloads):
                payload = b"tx-%d-%d" % (self.seed, k)
                self._push(self.rng.randint(0, cfg.submit_until), "submit", payload)
            if cfg.faults:
                self._plan_faults()
            deadline = max(self.gst, cfg.submit_until) + cfg.liveness_window
            while self._queue:
                at, _, kind, data = heapq.heappop(self._queue)
                if at > deadline:
                    break
                self.now = at
                self.result.events += 1
                self._step(kind, data)
                self._check_step()
                if self._finished():
                    break
            self._check_liveness()
        except SafetyViolation as exc:
            self.result.ok = False
            self.result.failure = str(exc)
        finally:
            for node in self.nodes:
                if node.replica:
                    node.replica.close()
            for disk in self._disks:
                disk.close()
        self.result.ticks = self.now
        self.result.heights = len(self.decided)
        self.result.rounds = sum(self.rounds_at.values())
        self.result.fingerprint = self.fingerprint.hexdigest()[:16]
        self.result.committed_payloads = len(self.committed_at)
        return self.result

    def _plan_faults(self) -> None:
        cfg = self.config
        for node in self.nodes:
            if not node.honest:
                continue
            crashes = sum(1 for _ in range(3) if self.rng.random() < cfg.crash_rate / 3)
            for _ in range(crashes):
                self._push(self.rng.randint(0, max(1, self.gst - 1)), "crash", node.index)
        at = 0
        while at < self.gst:
            at += self.rng.randint(200, 1500)
            if at >= self.gst:
                break
            self._push(at, "partition", None)
            self._push(min(self.gst, at + self.rng.randint(100, 1200)), "heal", None)
        self._push(self.gst, "heal", None)
        for node in self.nodes:
            if node.behavior in (Behavior.GARBAGE, Behavior.FLOODER):
                self._push(self.rng.randint(1, 100), "garbage", node.index)

    def _boot(self, node: SimNode) -> None:
        node.incarnation += 1
        node.crash_countdown = None
        node.pending_content = None
        node.app = SimApp(self.submitted, node.honest, self._epoch_change(), self.config.heartbeat_ticks)
        replica = Replica(node.key, SIM_DOMAIN, self.genesis, "", node.app,
                          timeouts=self.config.timeouts or SIM_TIMEOUTS,
                          durable=False, max_payloads=self.config.batch,
                          fault_hook=self._fault_hook(node), wal_path=node.wal_uri,
                          store_path=node.store_uri, core_class=self._core_class(node))
        if self.config.faulty_core == "no-wal":
            replica.wal.append = lambda message, own: None  # type: ignore[method-assign]
        node.replica = replica
        for height in replica.replay_heights():  # rebuild the application
            committed = replica.store.get(height)
            assert committed is not None
            self._on_commit(node, Commit(committed.block, committed.certificate))
            replica.replay(height, None)
        self._run_node(node, lambda r: r.start())

    def _core_class(self, node: SimNode) -> type[ConsensusCore]:
        if not node.honest:
            return ConsensusCore
        return {"majority-quorum": MajorityQuorumCore, "ignored-lock": IgnoredLockCore}.get(
            self.config.faulty_core, ConsensusCore)

    def _fault_hook(self, node: SimNode) -> FaultHook:
        def hook(output: Output, phase: str) -> None:
            self._countdown(node)
        return hook

    def _countdown(self, node: SimNode) -> None:
        if node.crash_countdown is None:
            return
        if node.crash_countdown <= 0:
            raise SimCrash()
        node.crash_countdown -= 1

    def _crash(self, node: SimNode, restart_within: int = 1500) -> None:
        assert node.replica is not None
        self._log(f"crash n{node.index} at height {node.replica.height}")
        node.replica.close()
        node.replica = None
        node.crash_countdown = None
        node.incarnation += 1
        self.result.crashes += 1
        restart = self.now + self.rng.randint(min(50, restart_within), restart_within)
        self._push(min(restart, self.gst), "restart", node.index)

    # ------------------------------------------------------------------ events

    def _step(self, kind: str, data: Any) -> None:
        if kind == "deliver":
            dst, src, channel, body = data
            node = self.nodes[dst]
            if not node.up:
                return
            if channel == "payload":
                self._take_payload(node, body, gossip=False)
            else:
                if node.behavior in (Behavior.DOUBLE_VOTER, Behavior.EQUIVOCATOR):
                    self._amplify(node, body)
                decoded = self._decode(body)  # undecodable bytes go in as bytes: the replica drops them
                self._run_node(node, lambda r: r.handle_message(decoded or body, str(src)))
        elif kind == "timer":
            index, incarnation, timeout = data
            node = self.nodes[index]
            if node.up and node.incarnation == incarnation:
                self._run_node(node, lambda r: r.handle_timeout(timeout))
        elif kind == "heartbeat":
            index, incarnation, height = data
            node = self.nodes[index]
            if node.up and node.incarnation == incarnation and node.replica is not None \
                    and node.replica.idle and node.replica.height == height:
                self._run_node(node, lambda r: r.wake())
        elif kind == "content":
            index, incarnation = data
            node = self.nodes[index]
            if node.up and node.incarnation == incarnation and node.pending_content:
                self._answer_content(node)
        elif kind in ("validated", "built"):
            index, incarnation, *rest = data
            node = self.nodes[index]
            if node.up and node.incarnation == incarnation:
                if kind == "validated":
                    self._run_node(node, lambda r: r.validate(rest[0], None))
                else:
                    self._run_node(node, lambda r: r.propose(rest[0], rest[1], None, self.now))
        elif kind == "submit":
            self._client_submit(data)
        elif kind == "crash":
            node = self.nodes[data]
            if node.up and not self._good() and self._splitting(node):
                self._push(self.now + self.rng.randint(100, 500), "crash", data)  # later
            elif node.up and not self._good():
                if self.rng.random() < 0.5:
                    self._crash(node)
                else:
                    node.crash_countdown = self.rng.randint(0, 8)  # dies mid-processing
        elif kind == "bounce":  # crash and restart soon (before the next round's proposal)
            node = self.nodes[data]
            if node.up and not self._good():
                self._crash(node, restart_within=200)
        elif kind == "restart":
            node = self.nodes[data]
            if not node.up:
                self._log(f"restart n{node.index}")
                self._boot(node)
        elif kind == "partition":
            members = list(range(len(self.nodes)))
            self.rng.shuffle(members)
            cut = self.rng.randint(1, len(members) - 1)
            self.partition = [set(members[:cut]), set(members[cut:])]
            self._log(f"partition {sorted(self.partition[0])} | {sorted(self.partition[1])}")
        elif kind == "heal":
            self.partition = None
            if self.now >= self.gst:
                for node in self.nodes:
                    node.crash_countdown = None
        elif kind == "garbage":
            self._send_garbage(self.nodes[data])
            if self.now < self.gst + 2000:
                self._push(self.now + self.rng.randint(20, 200), "garbage", data)

    def _client_submit(self, payload: bytes) -> None:
        """A charger (client) hands a payload to a random node, retrying until committed."""
        if payload in self.committed_at:
            return
        if payload not in self.submitted:
            self.submitted.add(payload)
            self.submit_time[payload] = self.now
        node = self.rng.choice(self.nodes)
        self._log(f"submit {payload.decode()} to n{node.index}")
        if node.up and node.behavior != Behavior.SILENT:
            self._take_payload(node, payload, gossip=True)
        self._push(self.now + self.config.client_retry_ticks, "submit", payload)

    def _take_payload(self, node: SimNode, payload: bytes, gossip: bool) -> None:
        if payload in node.app.committed:
            return
        try:
            added = node.app.mempool.add(payload, source="client" if gossip else "peer")
        except MempoolFull:
            return
        if added and gossip:
            for other in self.nodes:
                if other is not node:
                    self._send(node.index, other.index, "payload", payload)
        if added and node.replica is not None and node.replica.idle:
            self._run_node(node, lambda r: r.wake())
        if added and node.pending_content and node.up:
            self._answer_content(node)

    def _answer_content(self, node: SimNode) -> None:
        self._run_node(node, self._content_call(node))

    def _content_call(self, node: SimNode) -> Any:
        """The proposer's application answers RequestProposal from its mempool."""
        assert node.pending_content is not None and node.replica is not None
        request = node.pending_content
        node.pending_content = None
        payloads = node.app.mempool.reap(self.config.batch, 1 << 20)
        cost = int(self.config.build_ticks_per_payload * len(payloads))
        if cost:  # the block is ready `cost` ticks later (the shell's prepare_proposal)
            self._push(self.now + cost, "built", (node.index, node.incarnation, request, payloads))
            return lambda r: []
        return lambda r: r.propose(request, payloads, None, self.now)


    # ------------------------------------------------------------------ driving one node

    def _run_node(self, node: SimNode, call: Any) -> None:
        """Call into the node's replica and carry out its outputs, unless it crashes."""
        assert node.replica is not None
        work = [call]
        while work:
            if node.replica is None:
                return
            try:
                outputs = work.pop(0)(node.replica)
                for output in outputs:
                    self._countdown(node)
                    work.extend(self._dispatch(node, output))
                    if node.replica is None:
                        return
                replica = node.replica
                if not work and replica.idle and replica.pending_commit is None and len(node.app.mempool):
                    work.append(lambda r: r.wake())  # payloads wait: start the height
            except SimCrash:
                self._crash(node)
                return

    def _dispatch(self, node: SimNode, output: Output) -> Iterator[Any]:
        """Carry out one output; yields follow-up calls into the same replica."""
        if isinstance(output, Broadcast):
            self._broadcast(node, output)
        elif isinstance(output, SendTo):
            self._send(node.index, int(str(output.peer)), "consensus", output.data,
                       self.config.hold_certified_rate if isinstance(output.message, CommittedBlock) else 0.0)
        elif isinstance(output, ScheduleTimeout):
            delay = max(1, int(output.duration_ms * node.skew))
            self._push(self.now + delay, "timer", (node.index, node.incarnation, output.timeout))
        elif isinstance(output, RequestProposal):
            node.pending_content = output
            if len(node.app.mempool) or not self.config.idle_block_ticks:
                yield self._content_call(node)
            else:
                self._push(self.now + self.config.idle_block_ticks, "content",
                           (node.index, node.incarnation))
        elif isinstance(output, ValidateBlock):
            block = output.block
            cost = int(self.config.apply_ticks_per_payload * len(block.payloads))
            if cost:  # the verdict comes `cost` ticks later (the application checks each payload)
                self._push(self.now + cost, "validated", (node.index, node.incarnation, block))
            else:
                yield lambda r: r.validate(block, None)
        elif isinstance(output, Commit):
            self._on_commit(node, output)
            yield lambda r: self._finalize(node, r, output)
        elif isinstance(output, RequestCatchUp):
            peers = [i for i in range(len(self.nodes)) if i != node.index]
            peer = int(str(output.peer)) if output.peer is not None else self.rng.choice(peers)
            request = BlockRequest(output.from_height, 16)
            self._send(node.index, peer, "consensus", request.to_bytes())
        elif isinstance(output, ReportEvidence):
            if not output.evidence.verify(SIM_DOMAIN):
                raise SafetyViolation("core reported evidence that does not verify")
            if self.nodes[self._index_of(output.evidence.validator)].honest:
                raise SafetyViolation(f"evidence against honest validator: {output.evidence.kind!r}")
            self.result.evidence += 1
        elif isinstance(output, Dropped):
            self.result.dropped += 1

    def _finalize(self, node: SimNode, replica: Replica, commit: Commit) -> list[Output]:
        """Apply the commit; like the node's service, wake the next height when the application
        needs a block (an idle network's heartbeat: a node left behind then finds out)."""
        result, outputs = replica.finalize(commit, None)
        if result.block_needed_by_ms is not None:
            self._push(max(self.now + 1, result.block_needed_by_ms), "heartbeat",
                       (node.index, node.incarnation, commit.block.height + 1))
        return outputs

    def _index_of(self, address: bytes) -> int:
        return next(n.index for n in self.nodes if n.key.address == address)

    def _broadcast(self, node: SimNode, output: Broadcast) -> None:
        message = output.message
        if node.honest and isinstance(message, Vote | Proposal) and _signer(message) == node.key.address:
            slot = (node.index, type(message).__name__, int(getattr(message, "vote_type", 0)),
                    message.height, message.round)
            first = self.signed.setdefault(slot, message.block_hash)
            if first != message.block_hash:
                raise SafetyViolation(f"honest n{node.index} signed two different messages for {slot}")
            if isinstance(message, Vote) and message.vote_type == VoteType.PREVOTE:
                self._check_lock(node, message)
            elif isinstance(message, Vote) and message.block_hash != ZERO_HASH:  # L36-L39: locked
                key = (node.index, message.height)
                if message.round > self.locks.get(key, (-1, b""))[0]:
                    self.locks[key] = (message.round, message.block_hash)
                if (self.splits.get(message.height) and message.round == 0 and not self._good()
                        and key not in self.bounced and self.rng.random() < 0.5):
                    self.bounced.add(key)
                    self._push(self.now + 1, "bounce", node.index)  # it locked: does it remember?
        if isinstance(message, Vote):
            self._note_vote(message)
        for other in self.nodes:
            if other is node:
                continue
            data = output.data
            sent: Vote | Proposal | None = message if isinstance(message, Vote | Proposal) else None
            if node.behavior == Behavior.DOUBLE_VOTER and isinstance(message, Vote) and self.rng.random() < 0.5:
                other_hash = self.rng.choice([ZERO_HASH, keccak256(self.rng.getrandbits(64).to_bytes(8, "big"))])
                if other_hash != message.block_hash:
                    other_vote = Vote.sign(node.key, SIM_DOMAIN, message.vote_type, message.height,
                                           message.round, other_hash)
                    self._note_vote(other_vote)
                    data, sent = other_vote.to_bytes(), other_vote
            elif (node.behavior == Behavior.EQUIVOCATOR and isinstance(message, Proposal)
                  and other.index % 2 == 1):
                twin = Proposal.sign(node.key, SIM_DOMAIN, message.round, -1, self._twin(node, message.block))
                data, sent = twin.to_bytes(), twin
            precommit = isinstance(message, Vote) and message.vote_type == VoteType.PRECOMMIT
            prevote = isinstance(message, Vote) and message.vote_type == VoteType.PREVOTE
            # One node per height misses the polkas (it may propose something else next round,
            # which only locked validators refuse).
            blind = prevote and other.index == self._blind_node(message.height)
            self._send(node.index, other.index, "consensus", data,
                       self.config.hold_precommit_rate if precommit
                       else self.config.hold_prevote_rate if blind else 0.0, sent)

    def _note_vote(self, vote: Vote) -> None:
        if vote.vote_type == VoteType.PREVOTE:
            self.prevotes.setdefault((vote.height, vote.round, vote.block_hash), set()).add(vote.validator)

    def _check_lock(self, node: SimNode, prevote: Vote) -> None:
        """Locks (L23/L29): an honest validator locked on L in round lr < r prevotes another
        block X in round r only if X had a polka (2f+1 prevotes) in some round vr, lr <= vr < r."""
        assert node.replica is not None
        x, r = prevote.block_hash, prevote.round
        locked_round, locked = self.locks.get((node.index, prevote.height), (-1, ZERO_HASH))
        if x == ZERO_HASH or locked_round < 0 or locked_round >= r or locked == x:
            return
        validators = node.replica.core.schedule.set_for(prevote.height)
        for vr in range(locked_round, r):
            signers = self.prevotes.get((prevote.height, vr, x), ())
            if sum(validators.power(a) for a in signers) >= validators.quorum_power:
                return
        raise SafetyViolation(f"lock: n{node.index} locked on {locked.hex()[:8]} in round "
                              f"{locked_round} prevoted {x.hex()[:8]} in round {r} at "
                              f"h{prevote.height} without a newer polka")

    def _plan_split(self, height: int) -> tuple[int, dict[int, set[int]]] | None:
        """The schedule where only locks keep a height safe (Tendermint's L23/L29).

        Planned when a height's round-0 proposal is first sent, with probability `split_rate`,
        if GST is not near. With P the proposer of round 0 and D that of round 1 (not silent;
        D is not crashed meanwhile), until GST: D never gets round 0's proposal, so it cannot know B1 and prevotes nil;
        every other node sees the polka for B1 and locks on it; each node gets just enough
        round-0 precommits to time out (2f+1 in all) but fewer than 2f+1 for B1, so nobody
        decides and all move to round 1, where D proposes a fresh block B2. Locked validators
        must prevote nil for B2 (a core ignoring its lock prevotes B2: the lock invariant
        fails, and with 2f+1 such prevotes B2 is decided where B1 may be).
        """
        if self.now > self.gst - 600 or self.rng.random() >= self.config.split_rate:
            return None
        validators = self._set_for(height)
        p = self._index_of(validators.proposer(height, 0))
        d = self._index_of(validators.proposer(height, 1))
        if p == d or Behavior.SILENT in (self.nodes[p].behavior, self.nodes[d].behavior):
            return None
        power = [validators.power(node.key.address) for node in self.nodes]
        quorum = validators.quorum_power
        others = [i for i in range(len(self.nodes)) if i != d]
        self.rng.shuffle(others)
        allowed: dict[int, set[int]] = {}
        for t in range(len(self.nodes)):
            senders = {d} if t != d else set()
            total = power[t] + (power[d] if t != d else 0)  # its own precommit and D's nil
            for_b1 = power[t] if t != d else 0
            start = others.index(t) + 1 if t in others else 0
            for o in (others[(start + j) % len(others)] for j in range(len(others))):
                if total >= quorum:
                    break
                if o != t:
                    senders.add(o)
                    total += power[o]
                    for_b1 += power[o]
            if total < quorum or for_b1 >= quorum:
                return None  # these powers admit no split
            allowed[t] = senders
        self._log(f"split at h{height}: n{d} proposes round 1")
        return d, allowed

    def _set_for(self, height: int) -> ValidatorSet:
        change = self._epoch_change()
        return change[1] if change is not None and height >= change[0] + 2 else self.genesis

    def _splitting(self, node: SimNode) -> bool:
        """`node` is the round-1 proposer of a split still undecided (it is not crashed then)."""
        return any(split is not None and split[0] == node.index and h not in self.decided
                   for h, split in self.splits.items())

    def _split_hold(self, src: int, dst: int, message: Vote | Proposal) -> bool | None:
        """None: not a message of a split; True: held until GST; False: delivered now."""
        if message.height not in self.splits:
            if not (isinstance(message, Proposal) and message.round == 0) or message.height in self.decided:
                return None
            self.splits[message.height] = self._plan_split(message.height)
        split = self.splits[message.height]
        if split is None or message.round > 1:
            return None
        d, allowed = split
        if message.round == 1:
            return False
        if isinstance(message, Proposal):
            return dst == d
        if message.vote_type == VoteType.PREVOTE:
            return False
        return src not in allowed[dst]

    def _blind_node(self, height: int) -> int:
        """The proposer of round 1: missing round 0's polka, it proposes a fresh block that
        the validators locked in round 0 must refuse."""
        return self._index_of(self.genesis.proposer(height, 1))

    def _twin(self, node: SimNode, block: Block) -> Block:
        """A conflicting block: fewer payloads, a forged payload, or an already committed one."""
        payloads = block.payloads[:-1]
        choice = self.rng.randint(0, 2)
        if choice == 1:
            payloads = (*payloads, b"forged-%d" % self.rng.getrandbits(32))
        elif choice == 2 and node.app.committed:
            payloads = (*payloads, min(node.app.committed))
        return Block(block.height, block.timestamp_ms + 1, block.proposer, block.prev_block_hash,
                     block.app_state_hash, payloads, block.app_header)

    def _amplify(self, node: SimNode, body: bytes) -> None:
        """Double voters and equivocators also vote for every value they see anyone vote
        for (worst case: their power joins every would-be quorum)."""
        message = self._decode(body)
        if not isinstance(message, Vote) or message.validator == node.key.address:
            return
        slot = (node.index, message.vote_type, message.height, message.round, message.block_hash)
        if slot in self.amplified:
            return
        self.amplified.add(slot)
        vote = Vote.sign(node.key, SIM_DOMAIN, message.vote_type, message.height, message.round,
                         message.block_hash)
        self._note_vote(vote)
        echo = vote.to_bytes()
        for other in self.nodes:
            if other is not node:
                self._send(node.index, other.index, "consensus", echo, message=vote)

    def _send_garbage(self, node: SimNode) -> None:
        """Hostile inputs: random bytes, forged/non-validator votes, wrong heights, oversize;
        a flooder sends bursts of validly signed votes for the next height (they fill only
        its own share of every core's future-height buffer)."""
        if not node.up:
            return
        if node.behavior == Behavior.FLOODER:
            height = node.replica.core.height if node.replica else 1
            for _ in range(40):
                flood = Vote.sign(node.key, SIM_DOMAIN, VoteType.PREVOTE, height + 1,
                                  self.rng.randint(0, 10_000), keccak256(b"%d" % self.rng.getrandbits(32)))
                for other in self.nodes:
                    if other is not node:
                        self._send(node.index, other.index, "consensus", flood.to_bytes())
            return
        core = node.replica.core if node.replica else None
        height = core.height if core else 1
        target = self.rng.choice([n.index for n in self.nodes if n is not node])
        choice = self.rng.randint(0, 7)
        if choice == 0:
            data = bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(0, 200)))
        elif choice == 1:
            data = Vote.sign(self.garbage_key, SIM_DOMAIN, VoteType.PRECOMMIT, height, 0,
                             keccak256(b"x")).to_bytes()
        elif choice == 2:
            vote = Vote.sign(node.key, SIM_DOMAIN, VoteType.PREVOTE, height, 0, keccak256(b"y"))
            data = Vote(vote.vote_type, vote.height, vote.round, vote.block_hash, vote.validator,
                        vote.signature[:10] + bytes([vote.signature[10] ^ 1]) + vote.signature[11:]).to_bytes()
        elif choice == 3:
            data = Vote.sign(node.key, SIM_DOMAIN, VoteType.PRECOMMIT,
                             self.rng.choice([height + 50, max(1, height - 1)]),
                             self.rng.randint(0, 1000), keccak256(b"z")).to_bytes()
        elif choice == 4:
            data = msgpack.packb([1, 1, height, 0, -1, [height, 1, node.key.address, ZERO_HASH,
                                  ZERO_HASH, [b"p"] * 5000, b""], node.key.address, b"\x00" * 65])
        elif choice == 5:
            prev = core.prev_block_hash if core else ZERO_HASH
            block = Block(height, 1, node.key.address, prev, ZERO_HASH, (b"forged",), b"")
            forged = CommitCertificate(height, 0, block.hash, (node.key.sign(keccak256(b"no")),))
            data = CommittedBlock(block, forged).to_bytes()
        elif choice == 6:
            vote = Vote.sign(node.key, SIM_DOMAIN, VoteType.PREVOTE, height, 0, ZERO_HASH)
            data = Evidence(EvidenceKind.DUPLICATE_VOTE, node.key.address, height, 0,
                            vote.to_bytes(), b"junk").to_bytes()
        else:
            data = BlockRequest(1, 64).to_bytes()[:-1] + b"\xff"
        self._send(node.index, target, "consensus", data)

    # ------------------------------------------------------------------ invariants

    def _on_commit(self, node: SimNode, commit: Commit) -> None:
        block, certificate = commit.block, commit.certificate
        self._log(f"n{node.index} commits h{block.height} r{certificate.round} "
                  f"{block.hash.hex()[:8]} {len(block.payloads)} payloads")
        if node.honest:
            assert node.replica is not None
            validators = node.replica.core.schedule.set_for(block.height)
            try:
                verify_certificate(certificate, validators, SIM_DOMAIN, block.hash)
            except CertificateError as exc:
                raise SafetyViolation(f"n{node.index} committed h{block.height} with a bad certificate: {exc}") from exc
            first = self.decided.setdefault(block.height, block.hash)
            if first != block.hash:
                raise SafetyViolation(f"agreement: h{block.height} decided {first.hex()[:8]} and "
                                      f"{block.hash.hex()[:8]} (n{node.index})")
            if block.height not in self.decided_blocks:
                self.decided_blocks[block.height] = block
                self.rounds_at[block.height] = certificate.round + 1
                if len(set(block.payloads)) != len(block.payloads):
                    raise SafetyViolation(f"payload twice in block {block.height}")
                for payload in block.payloads:
                    if payload not in self.submitted:
                        raise SafetyViolation(f"validity: h{block.height} holds unsubmitted payload")
                    if payload in self.committed_at:
                        raise SafetyViolation(f"payload committed at h{self.committed_at[payload]} "
                                              f"and again at h{block.height}")
                    self.committed_at[payload] = block.height
                    self.result.latencies.append(self.now - self.submit_time[payload])
            if block.height > 1 and block.prev_block_hash != self.decided.get(block.height - 1, block.prev_block_hash):
                raise SafetyViolation(f"h{block.height} does not extend the decided chain")

    def _epoch_change(self) -> tuple[int, ValidatorSet] | None:
        """At one height the application re-weights the validators (an epoch change)."""
        change = self.config.epoch_change_height
        if change is None:
            return None
        heavy = next(n.index for n in self.nodes if n.honest)  # Byzantine power stays < 1/3
        powers = tuple(2 if i == heavy else 1 for i in range(len(self.genesis.addresses)))
        return change, ValidatorSet(self.genesis.addresses, powers, 1)

    def _check_step(self) -> None:
        """After every event: each live honest node's application, store and core agree."""
        top = len(self.decided)
        for node in self.nodes:
            if node.honest and node.replica is not None:
                core = node.replica.core
                if node.app.height != core.height - 1 or core.height > top + 1:
                    raise SafetyViolation(f"n{node.index}: core at {core.height}, app at "
                                          f"{node.app.height}, decided {top}")
                if core.height > 1 and core.prev_block_hash != self.decided[core.height - 1]:
                    raise SafetyViolation(f"n{node.index} builds on a block nobody decided")

    def _finished(self) -> bool:
        if not self._good() or len(self.committed_at) < self.config.payloads:
            return False
        target = max(self.committed_at.values())
        return all(n.up and n.app.height >= target for n in self.nodes if n.honest)

    def _check_liveness(self) -> None:
        missing = self.config.payloads - len(self.committed_at)
        if missing:
            raise SafetyViolation(f"liveness: {missing} payloads never committed (GST {self.gst})")
        target = max(self.committed_at.values(), default=0)
        for node in self.nodes:
            if node.honest and (not node.up or node.app.height < target):
                raise SafetyViolation(f"liveness: n{node.index} stuck below height {target}")


def _signer(message: Vote | Proposal) -> bytes:
    return message.validator if isinstance(message, Vote) else message.proposer


# --------------------------------------------------------------------------- command line


def run_seeds(seeds: list[int], config: SimConfig, jobs: int = 1) -> list[SimResult]:
    """Run each seed (in `jobs` processes); returns all results in seed order (failures have
    ok False). A run is a pure function of (seed, config), so jobs change no result."""
    return list(iter_seeds(seeds, config, jobs))


def iter_seeds(seeds: list[int], config: SimConfig, jobs: int = 1) -> Iterator[SimResult]:
    """`run_seeds`, yielding each result (in seed order) as soon as it is there."""
    if jobs <= 1 or len(seeds) < 2:
        yield from (Simulation(seed, config).run() for seed in seeds)
        return
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        yield from pool.imap(_run_one, [(seed, config) for seed in seeds], chunksize=4)


def _run_one(job: tuple[int, SimConfig]) -> SimResult:
    return Simulation(*job).run()


def _bench(validators: int) -> None:
    """Saturated load: every payload is waiting at tick 0; blocks take up to `batch`."""
    print(f"throughput/latency, {validators} validators, no faults, all payloads queued at start;"
          " 1 tick = 1 simulated ms, network delay 1..10 ticks")
    print(f"{'batch':>6} {'payloads':>8} {'heights':>7} {'rounds/h':>8} {'ticks/h':>7} "
          f"{'payl/ktick':>10} {'lat mean':>8} {'lat p99':>7} {'lat heights':>11} {'wall s':>6}")
    for batch in (1, 4, 16, 64, 256, 1024):
        payloads = min(4096, 64 * batch)
        config = SimConfig(validators=validators, payloads=payloads, batch=batch, faults=False,
                           byzantine=0, submit_until=0, idle_block_ticks=20,
                           epoch_change_height=None, liveness_window=400_000)
        started = time.perf_counter()
        result = Simulation(1, config).run()
        wall = time.perf_counter() - started
        lat = sorted(result.latencies)
        p99 = lat[int(len(lat) * 0.99) - 1] if lat else 0
        mean = sum(lat) / len(lat) if lat else 0
        per_height = result.ticks / max(1, result.heights)
        status = "" if result.ok else f"  FAIL {result.failure}"
        print(f"{batch:>6} {result.committed_payloads:>8} {result.heights:>7} "
              f"{result.rounds / max(1, result.heights):>8.2f} {per_height:>7.1f} "
              f"{1000 * result.committed_payloads / max(1, result.ticks):>10.1f} {mean:>8.0f} "
              f"{p99:>7} {mean / per_height:>11.1f} {wall:>6.1f}{status}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consensus.sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, help="run (replay) exactly this seed")
    parser.add_argument("--validators", type=int, default=4, choices=[4, 7, 10])
    parser.add_argument("--faulty-core", default="", choices=["", *FAULTY_CORES],
                        help="seed a known bug into every honest node (the run must fail)")
    parser.add_argument("--summary", help="write a JSON summary of the sweep to this path")
    parser.add_argument("--payloads", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--drop-rate", type=float, default=0.1, help="message loss before GST")
    parser.add_argument("--crash-rate", type=float, default=0.5, help="crashes per honest node")
    parser.add_argument("--byzantine", type=int, help="exactly this many (default: random 0..f)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (results do not depend on it)")
    parser.add_argument("--trace", action="store_true", help="print every event of the run")
    parser.add_argument("--bench", action="store_true", help="throughput/latency as batch grows")
    args = parser.parse_args(argv)
    if args.bench:
        _bench(args.validators)
        return 0
    config = SimConfig(validators=args.validators, payloads=args.payloads, batch=args.batch,
                       drop_rate=args.drop_rate, crash_rate=args.crash_rate,
                       byzantine=args.byzantine, faulty_core=args.faulty_core)
    if args.faulty_core:
        print(f"faulty core {args.faulty_core}: every failure below is the simulator catching it")
    if args.seed is not None:
        result = Simulation(args.seed, config, trace=args.trace).run()
        print(_describe(result))
        return 0 if result.ok else 1
    started = time.perf_counter()
    failures = 0
    totals = {"heights": 0, "rounds": 0, "crashes": 0, "evidence": 0, "dropped": 0}
    caught_by: dict[str, int] = {}
    for result in iter_seeds(list(range(args.first_seed, args.first_seed + args.seeds)), config, args.jobs):
        for key in totals:
            totals[key] += getattr(result, key)
        if not result.ok:
            failures += 1
            kind = _failure_kind(result.failure)
            caught_by[kind] = caught_by.get(kind, 0) + 1
            if not args.faulty_core:
                print(f"FAIL {_describe(result)}", flush=True)
    wall = time.perf_counter() - started
    if args.summary:
        _write_summary(args.summary, {
            "validators": args.validators, "faulty_core": args.faulty_core or None,
            "seeds": args.seeds, "first_seed": args.first_seed, "failed": failures,
            **({"caught": f"{failures}/{args.seeds}"} if args.faulty_core else {}),
            "caught_by": caught_by, "seconds": round(wall, 1), "jobs": args.jobs,
            "seeds_per_s": round(args.seeds / wall, 2), **totals})
    print(f"{args.seeds} seeds, {args.validators} validators: {failures} failed; "
          f"{totals['heights']} heights in {totals['rounds']} rounds, {totals['crashes']} crashes, "
          f"{totals['evidence']} evidence reports, {totals['dropped']} inputs dropped; {wall:.1f} s")
    return 1 if failures else 0


def _failure_kind(failure: str) -> str:
    """The invariant a failure broke, without node ids, heights and hashes."""
    import re

    text = re.sub(r"\bn\d+\b", "n*", failure.split(" for (")[0])
    return re.sub(r"\b[hr]?\d+\b|[0-9a-f]{8}", "*", text)[:80]


def _write_summary(path: str, row: dict[str, Any]) -> None:
    """Add (or replace) this configuration's row in the JSON summary at `path`."""
    import json
    from pathlib import Path

    target = Path(path)
    rows = json.loads(target.read_text())["runs"] if target.exists() else []
    key = (row["validators"], row["faulty_core"])
    rows = [r for r in rows if (r["validators"], r["faulty_core"]) != key] + [row]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"runs": rows}, indent=2) + "\n")


def _describe(result: SimResult) -> str:
    state = "ok" if result.ok else f"FAILED: {result.failure}"
    return (f"seed={result.seed} {state} heights={result.heights} rounds={result.rounds} "
            f"ticks={result.ticks} events={result.events} crashes={result.crashes} "
            f"evidence={result.evidence} behaviors={','.join(result.behaviors)} "
            f"fingerprint={result.fingerprint}")


if __name__ == "__main__":
    sys.exit(main())
