"""The node's trio shell around the one durable `consensus.replica.Replica`.

The Replica (shared with the simulator and the crash tests) owns the core, the WAL, the
block store, the catch-up buffer and the application's pure calls. This service keeps only
what needs trio: timers, the mempool, p2p, waiting submitters and the worker-thread calls:

  Broadcast / SendTo -> direct links;  ScheduleTimeout -> timer heap
  RequestProposal    -> mempool reap + `propose_facts` in a worker thread -> Replica.propose
  ValidateBlock      -> `fetch_facts` in a worker thread -> Replica.validate
  Commit             -> `fetch_facts` in a worker thread -> Replica.finalize (block and its
                        validator-set change stored together) -> mempool, waiters (the
                        receipt carries the payload's TxResult), p2p bindings of every set in
                        force, own `outbound_payloads` submitted, `notices` to `on_notices`
  RequestCatchUp     -> block sync from a validator, blocks fed back to the Replica

Consensus input is queued per sender (bounded) and served round-robin, so one peer's flood
cannot delay another's messages. An idle network makes no blocks: the Replica holds a new
height until payloads wait here, the application's `block_needed_by_ms` passes, or the
application's `chain_wants_block` (polled while idle, `_watch_chain`) sees a chain-side change.

`submit(payload)` puts a payload in the mempool, gossips it (batched) and returns only
after a block carrying it is committed and applied. A full mempool raises
`ConsensusOverloaded` at once.

A full node (`follower`) has no mempool that counts: `relay(payload)` hands a charger event
it vouched for to a validator (p2p/relay.py, the validators in turn, again every
RELAY_RESEND_S while it is not committed; what waits is sent as one batch per request,
`_relay_sender`) and returns once the block carrying it is applied
here by block sync. A validator takes relayed events like gossip (`_on_relayed`): events and
command outcomes only (the outcomes of the commands the full node delivered to its chargers),
a token bucket per relaying peer (1/8 of a gossip origin's rate) and one for all of them (1/4:
relayed events gossiped on spend this validator's gossip budget at the others, so full nodes
cannot crowd out its own events), admission, then its mempool under the vouching operator's own
share, and gossip to the other validators.

Gossiped payloads are bounded per source, cheapest check first, every bound proportional to
one source's share of a block (`block_max_payloads / n` validators, `ServiceConfig.derived`):
a payload already pending or committed is skipped; so is one whose origin (the validator that
signed the batch envelope, so it cannot be spoofed) has `gossip_max_pending_per_origin`
(8 shares) payloads waiting here already (admission then follows what blocks take from it);
each origin has a token bucket (`gossip_rate_per_origin`/s: a share per block at 10 blocks/s,
burst 2 shares), and a payload over it is refused before `check_tx` recovers any signature.
An admitted payload is pooled under its accountable source (`CheckResult.source`: the
vouching validator; this node's own are "local"), and no source holds more than
`mempool_max_count / n` payloads. The events topic's validator already refuses a batch from
a backlogged or out-of-budget origin (neither delivered nor forwarded). A proposal reaps
round-robin over the sources with pending payloads (so each gets an equal part of the block,
and what one leaves unused goes to the others), at most `block_max_per_source` (one share) of
one source; the app defers whatever is over a voucher's validity share to the next block.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import trio

from anchoring.proofs import EVENT_PAYLOAD_FIRST_BYTE
from consensus.abci import Application, CheckResult, FinalizeResult, Snapshot, TxResult
from consensus.core import (
    Broadcast,
    Commit,
    ConsensusCore,
    Dropped,
    Output,
    Persist,
    ReportEvidence,
    RequestCatchUp,
    RequestProposal,
    ScheduleTimeout,
    SendTo,
    Timeout,
    TimeoutConfig,
    ValidateBlock,
)
from consensus.mempool import Mempool, MempoolFull
from consensus.replica import Replica
from consensus.store import BlockStore
from consensus.types import (
    MAX_BLOCKS_PER_REQUEST,
    Block,
    CommittedBlock,
    Evidence,
    Proposal,
    ValidatorSet,
    Vote,
    WireError,
    decode_message,
)
from devsen.ledger.commands import OUTCOME_PAYLOAD_TAG
from p2p.batching import BatchError
from p2p.envelope import ValidatorDirectory, network_id_of
from p2p.gossip import GossipOverloaded
from p2p.host import HostConfig
from p2p.keys import NodeKeys
from p2p.node import P2PConfig, P2PHandlers, P2PNode, open_p2p
from p2p.relay import RelayError, relay_batch_length
from p2p.sync import SyncError
from primitives.eip712 import Domain
from primitives.hashing import keccak256

logger = logging.getLogger(__name__)

MAX_INPUTS_PER_SENDER = 256
MAX_SENDERS = 512
MAX_SYNC_INPUTS = 2 * MAX_BLOCKS_PER_REQUEST
MAX_TIMERS = 4096
MAX_RECENT_RECEIPTS = 100_000
# Gossip admission per origin is sized from what blocks can take from it: its share of a block
# (block_max_payloads / n validators) times this block rate (about what 4 validators on one
# 2-core machine commit under load; bench/results/node_throughput.json).
GOSSIP_PLANNED_BLOCKS_PER_S = 10
GOSSIP_BURST_BLOCKS = 2  # an origin may send this many blocks' shares at once (a boot storm)
GOSSIP_PENDING_BLOCKS = 8  # an origin with this many blocks' shares waiting here is backlogged
# A gossiped batch of at least this many budgeted payloads has its signatures recovered in a
# worker thread first (the GIL is released there; a thread hop costs about 2-3 recoveries).
OFF_LOOP_RECOVERY_MIN = 4
# A full node's events waiting for their commit (`relay`): more are refused (ConsensusOverloaded).
MAX_RELAY_WAITERS = 4096
RELAYS_IN_FLIGHT = 4  # a full node's concurrent relay requests (p2p/relay.py allows 4 per peer)
MAX_RELAY_QUEUE = 2 * 4096  # payloads waiting for a relay request (MAX_RELAY_WAITERS callers, and resends)
RELAY_RESEND_S = 5.0  # an event relayed but not committed since is handed to the next validator
RELAY_PEER_FRACTION = 8  # one full node's relayed events: 1/8 of a gossip origin's rate and burst
RELAY_TOTAL_FRACTION = 4  # all full nodes' relayed events at one validator: 1/4 of them
# What a full node may relay: its vouched charger events and the outcomes of the commands it
# delivered to its chargers (both signed by its operator key; admission judges them).
RELAYED_KINDS = frozenset({EVENT_PAYLOAD_FIRST_BYTE, OUTCOME_PAYLOAD_TAG})


class ConsensusOverloaded(Exception):
    """The node cannot take the payload now (mempool full); the caller should retry later."""


class AlreadyCommitted(Exception):
    """The payload was committed long ago; its receipt is no longer in memory."""


class CommitTimeout(Exception):
    """The payload was accepted but not committed within the caller's deadline (it may still be)."""


@dataclass(frozen=True, slots=True)
class CommitReceipt:
    """Where a submitted payload was committed."""

    height: int
    block_hash: bytes
    index: int
    result: TxResult = field(default_factory=TxResult)  # the application's outcome for it


@dataclass(slots=True)
class ServiceConfig:
    """Everything the consensus service needs besides keys and application."""

    data_dir: Path
    domain: Domain
    validators: ValidatorSet
    directory: ValidatorDirectory
    host: HostConfig = field(default_factory=HostConfig)
    timeouts: TimeoutConfig = field(default_factory=TimeoutConfig)
    mempool_max_count: int = 100_000
    mempool_max_bytes: int = 256 * 1024 * 1024
    block_max_payloads: int = 4096
    block_max_bytes: int = 4 * 1024 * 1024
    min_block_interval_s: float = 0.01
    empty_block_interval_s: float = 1.0
    # None: derived from `source_share` (block_max_payloads / n validators), see `derived`.
    block_max_per_source: int | None = None  # payloads of one source in our proposals
    gossip_rate_per_origin: float | None = None  # gossiped payloads/s admitted per origin validator
    gossip_burst_per_origin: int | None = None
    # Gossip from an origin whose events wait here in this number already is refused at once
    # (its own node still proposes them): admission then follows what blocks take from it.
    gossip_max_pending_per_origin: int | None = None
    batch_max_count: int = 1000
    batch_max_delay_s: float = 0.005
    batch_min_interval_s: float = 0.1  # gossip messages of one node at most this often (p2p/gossip.py)
    durable: bool = True
    create_empty_blocks: bool = False  # True: CometBFT's default (a block every interval)
    # False: the node carries FinalizeResult.outbound_payloads itself (a finalize listener with
    # its own retrying outbox); True: this service puts them in the mempool and gossips them.
    submit_outbound: bool = True
    # A full (non-validator) node: no consensus links are granted to it, so it follows the chain
    # by polling validators for certified blocks every `follow_interval_s` (the same Replica
    # verification validators' block sync uses) and never signs (its key is in no set).
    follower: bool = False
    follow_interval_s: float = 0.5
    # While idle, a validator asks its application this often whether the chain needs a block
    # (`chain_wants_block`: e.g. a driver's new escrow session waits for its remote start).
    chain_watch_interval_s: float = 1.0

    @property
    def source_share(self) -> int:
        """One source's (validator's) fair share of a block: block_max_payloads / n."""
        return max(1, self.block_max_payloads // max(1, len(self.validators.addresses)))

    def derived(self) -> ServiceConfig:
        """This config with every per-source bound left None sized from `source_share`: a
        proposal takes at most a share of one source (the app's validity share when
        block_max_payloads is its BLOCK_EVENT_BUDGET; more would only be deferred); an origin
        gets tokens for a share per block at GOSSIP_PLANNED_BLOCKS_PER_S, bursts of
        GOSSIP_BURST_BLOCKS shares, and is backlogged at GOSSIP_PENDING_BLOCKS shares."""
        share = self.source_share
        return replace(
            self,
            block_max_per_source=self.block_max_per_source or share,
            gossip_rate_per_origin=self.gossip_rate_per_origin or float(share * GOSSIP_PLANNED_BLOCKS_PER_S),
            gossip_burst_per_origin=self.gossip_burst_per_origin or share * GOSSIP_BURST_BLOCKS,
            gossip_max_pending_per_origin=self.gossip_max_pending_per_origin or share * GOSSIP_PENDING_BLOCKS)


@dataclass(slots=True)
class _Waiter:
    event: trio.Event = field(default_factory=trio.Event)
    receipt: CommitReceipt | None = None
    waiting: int = 0  # `submit` callers waiting on it (the last one to give up removes it)


CommitListener = Callable[[CommittedBlock], None]
SignedListener = Callable[[Proposal | Vote], None]
NoticeListener = Callable[[tuple[Any, ...]], None]
FinalizeListener = Callable[[Block, FinalizeResult], None]


class SenderQueues:
    """Bounded FIFO per sender, served round-robin (one flooding sender fills only its own)."""

    def __init__(self, per_sender: int = MAX_INPUTS_PER_SENDER, max_senders: int = MAX_SENDERS) -> None:
        self.per_sender = per_sender
        self.max_senders = max_senders
        self._queues: OrderedDict[bytes, deque[Any]] = OrderedDict()
        self.dropped = 0

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def put(self, sender: bytes, item: Any) -> bool:
        queue = self._queues.get(sender)
        if queue is None:
            if len(self._queues) >= self.max_senders:
                self.dropped += 1
                return False
            queue = self._queues[sender] = deque()
        if len(queue) >= self.per_sender:
            self.dropped += 1
            return False
        queue.append(item)
        return True

    def take(self) -> Any | None:
        """The oldest item of the next sender in turn (that sender moves to the back)."""
        while self._queues:
            sender, queue = next(iter(self._queues.items()))
            self._queues.move_to_end(sender)
            if queue:
                item = queue.popleft()
                if not queue:
                    del self._queues[sender]
                return item
            del self._queues[sender]
        return None


class ServedSnapshots:
    """Snapshots as p2p/snapshots.py serves them (its SnapshotSource): `snapshots` and `chunk`
    are the application's file reads (via the Replica; p2p calls them in a worker thread),
    `records(lo, hi)` the block store's (on the event loop)."""

    def __init__(self, snapshots: Callable[[], tuple[Snapshot, ...]],
                 chunk: Callable[[int, int, int], bytes | None],
                 records: Callable[[int, int], list[bytes]]) -> None:
        self._snapshots, self._chunk, self._records = snapshots, chunk, records

    def snapshots(self) -> tuple[Snapshot, ...]:
        return self._snapshots()

    def records(self, from_height: int, to_height: int) -> list[bytes]:
        return self._records(from_height, to_height)

    def chunk(self, height: int, format: int, index: int) -> bytes | None:
        return self._chunk(height, format, index)


class GossipBudget:
    """A token bucket per gossip origin (`rate` payloads/s, up to `burst` at once); bounded
    to `max_origins` origins (the envelope check admits only validators, so far fewer)."""

    def __init__(self, rate: float, burst: int, max_origins: int = MAX_SENDERS) -> None:
        assert rate > 0 and burst >= 1 and max_origins >= 1
        self.rate = rate
        self.burst = burst
        self.max_origins = max_origins
        self._buckets: dict[bytes, list[float]] = {}  # origin -> [tokens, last refill time]

    def has_tokens(self, origin: bytes, now: float) -> bool:
        """True if `origin` could spend a token at `now` (nothing is spent)."""
        bucket = self._buckets.get(origin)
        if bucket is None:
            return len(self._buckets) < self.max_origins
        return bucket[0] + max(0.0, now - bucket[1]) * self.rate >= 1.0

    def take(self, origin: bytes, now: float) -> bool:
        """Spend one of `origin`'s tokens at time `now` (seconds); False when it has none."""
        bucket = self._buckets.get(origin)
        if bucket is None:
            if len(self._buckets) >= self.max_origins:
                return False
            bucket = self._buckets[origin] = [float(self.burst), now]
        tokens = min(float(self.burst), bucket[0] + max(0.0, now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True


@dataclass(eq=False)
class _RelayItem:
    """One payload waiting for a relay request (a full node): its fate once a batch carried it."""

    payload: bytes
    refusal: str | None = None
    done: trio.Event = field(default_factory=trio.Event)

    def finish(self, refusal: str | None) -> None:
        if not self.done.is_set():
            self.refusal = refusal
            self.done.set()


class ConsensusService:
    """Runs the Replica for one validator node (see the module docstring)."""

    def __init__(self, keys: NodeKeys, config: ServiceConfig, app: Application) -> None:
        self.keys = keys
        self.config = config = config.derived()
        self.app = app
        directory = config.directory
        self.replica = Replica(
            keys.validator, config.domain, config.validators, config.data_dir, app,
            genesis_bindings={a: p for a in directory.addresses() if (p := directory.peer_of(a))},
            timeouts=config.timeouts, durable=config.durable, max_payloads=config.block_max_payloads,
            max_payload_bytes=config.block_max_bytes, create_empty_blocks=config.create_empty_blocks,
        )
        # One source may hold 1/n of the pool at most (n validators, at least 2), full or not.
        per_source = max(1, config.mempool_max_count // max(2, len(config.validators.addresses)))
        self.mempool = Mempool(config.mempool_max_count, config.mempool_max_bytes, max_per_source=per_source)
        assert config.gossip_rate_per_origin is not None and config.gossip_burst_per_origin is not None
        self.gossip_budget = GossipBudget(config.gossip_rate_per_origin, config.gossip_burst_per_origin)
        # Relayed events: 1/8 of one gossip origin's rate per full-node peer (bounded like the
        # origins), 1/4 for all of them together: what we gossip on spends this validator's gossip
        # budget at the others, so full nodes never take more than a quarter of it.
        rate, burst = config.gossip_rate_per_origin, config.gossip_burst_per_origin
        self.relay_budget = GossipBudget(rate / RELAY_PEER_FRACTION, max(1, burst // RELAY_PEER_FRACTION))
        self.relay_total = GossipBudget(rate / RELAY_TOTAL_FRACTION, max(1, burst // RELAY_TOTAL_FRACTION), 1)
        self._relay_turn = 0
        self._relay_failing = False  # one log line when relaying starts and stops failing
        self._relay_slots = trio.Semaphore(RELAYS_IN_FLIGHT)
        self._relay_queue: deque[_RelayItem] = deque()  # sent in batches by `_relay_sender`
        self._relay_wake = trio.Event()
        self._own_source = "0x" + keys.validator_address.hex()
        self.counters: Counter[str] = Counter()
        self.commit_listeners: list[CommitListener] = []
        self.signed_listeners: list[SignedListener] = []
        self.on_notices: NoticeListener | None = None
        # Called with (block, FinalizeResult) after each commit and each replayed block.
        self.finalize_listeners: list[FinalizeListener] = []
        # Called with (payload, reason) for each gossiped payload admission refused (evidence).
        self.refusal_listeners: list[Callable[[bytes, str], None]] = []
        # Called with each equivocation Evidence the core reports (slashing: devsen/slashing.py).
        self.evidence_listeners: list[Callable[[Evidence], None]] = []
        self.inputs = SenderQueues()
        self._sync_inputs: deque[tuple[bytes, CommittedBlock]] = deque()
        self._input_ready = trio.Event()
        self._timers: list[tuple[float, int, Timeout]] = []
        self._timer_seq = 0
        self._waiters: dict[bytes, _Waiter] = {}
        self._receipts: OrderedDict[bytes, CommitReceipt] = OrderedDict()
        self._pending_proposal: tuple[RequestProposal, float] | None = None
        self._announced: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        self._installed_bindings: dict[bytes, bytes] = {}
        self._last_commit_at = 0.0
        self._chain_wants_block = False  # the application saw a chain-side change (`_watch_chain`)
        self._catching_up = False
        self._net: P2PNode | None = None
        self._nursery: trio.Nursery | None = None
        self.ready = trio.Event()

    @property
    def store(self) -> BlockStore:
        return self.replica.store

    @property
    def core(self) -> ConsensusCore:
        return self.replica.core

    @property
    def app_state_hash(self) -> bytes:
        return self.replica.app_hash

    @property
    def height(self) -> int:
        """The next height to decide."""
        return self.replica.height

    @property
    def committed_height(self) -> int:
        """Height of the last committed (stored) block."""
        return self.replica.latest_height()

    # ------------------------------------------------------------------ submitting

    async def submit(self, payload: bytes, timeout_s: float = 30.0) -> CommitReceipt:
        """Order `payload`; returns once it is committed and applied (receipt with its result).

        Raises ConsensusOverloaded when the mempool is full, ValueError for a payload the
        application refuses, CommitTimeout when no commit came within `timeout_s`,
        AlreadyCommitted for a payload committed so long ago that its receipt was forgotten.
        """
        digest = keccak256(payload)
        receipt = self._receipts.get(digest)
        if receipt is not None:
            return receipt
        waiter = self._waiters.get(digest)
        if waiter is None:
            verdict = self._check(payload)
            if verdict is not None:
                raise ValueError(f"the application refuses this payload: {verdict}")
            try:
                added = self.mempool.add(payload, source="local")
            except MempoolFull as exc:
                self.counters["submit_overloaded"] += 1
                raise ConsensusOverloaded(str(exc)) from exc
            if not added and digest not in self.mempool:
                raise AlreadyCommitted("payload was committed before (its receipt is no longer kept)")
            waiter = self._waiters[digest] = _Waiter()
            self._input_ready.set()
            gossip = True
        else:
            gossip = False
        waiter.waiting += 1  # before any await: a caller timing out meanwhile must not drop it
        try:
            if gossip:
                await self._gossip(payload)
            with trio.fail_after(timeout_s):
                await waiter.event.wait()
        except trio.TooSlowError as exc:
            raise CommitTimeout(f"payload not committed within {timeout_s} s") from exc
        finally:
            # A payload that never commits (left out of every proposal as refused, or its caller
            # gave up) must not leave its waiter behind: one per such payload, without bound.
            # If it commits later its receipt is kept (`_receipts`) and a retry finds it there.
            waiter.waiting -= 1
            if not waiter.event.is_set() and not waiter.waiting and self._waiters.get(digest) is waiter:
                del self._waiters[digest]
        assert waiter.receipt is not None
        return waiter.receipt

    async def relay(self, payload: bytes, timeout_s: float = 30.0) -> CommitReceipt:
        """A full node: have a validator take `payload` (an event this node vouched for) and
        return once the block carrying it is applied here (module docstring).

        Raises ValueError for a payload our own admission refuses (e.g. this node is not a
        registered operator), ConsensusOverloaded when too many wait or no validator takes it,
        CommitTimeout when it was taken but not committed within `timeout_s`."""
        digest = keccak256(payload)
        receipt = self._receipts.get(digest)
        if receipt is not None:
            return receipt
        verdict = self._check(payload)
        if verdict is not None:
            raise ValueError(f"the application refuses this payload: {verdict}")
        waiter = self._waiters.get(digest)
        if waiter is None:
            if len(self._waiters) >= MAX_RELAY_WAITERS:
                self.counters["relay_overloaded"] += 1
                raise ConsensusOverloaded(f"{MAX_RELAY_WAITERS} events already wait for their commit")
            waiter = self._waiters[digest] = _Waiter()
        taken = False
        try:
            with trio.fail_after(timeout_s):
                while not waiter.event.is_set():
                    refusal = await self._relay_once(payload)
                    taken = taken or refusal is None
                    if refusal is not None and not taken:
                        raise ConsensusOverloaded(f"no validator took the event: {refusal}")
                    with trio.move_on_after(RELAY_RESEND_S):
                        await waiter.event.wait()
        except trio.TooSlowError as exc:
            raise CommitTimeout(f"relayed event not committed within {timeout_s} s") from exc
        finally:
            if not waiter.event.is_set() and self._waiters.get(digest) is waiter:
                del self._waiters[digest]
        assert waiter.receipt is not None
        return waiter.receipt

    async def _relay_once(self, payload: bytes) -> str | None:
        """Queue `payload` for the relay sender and wait for its fate: None once a validator took
        it, else the last refusal (every validator refused it, or none answered)."""
        if self._net is None or self._nursery is None:
            return "p2p is not running"
        if len(self._relay_queue) >= MAX_RELAY_QUEUE:
            self.counters["relay_queue_full"] += 1
            return f"{MAX_RELAY_QUEUE} payloads already wait to be relayed"
        item = _RelayItem(payload)
        self._relay_queue.append(item)
        self._relay_wake.set()
        await item.done.wait()
        return item.refusal

    async def _relay_sender(self) -> None:
        """A full node: send what waits in the relay queue, as one batch per request (p2p/relay.py
        bounds: MAX_RELAY_PAYLOADS payloads, MAX_RELAY_BYTES), RELAYS_IN_FLIGHT requests at a time.
        While every slot is busy the queue grows, so the next request carries all that came meanwhile."""
        async with trio.open_nursery() as nursery:
            while True:
                while not self._relay_queue:
                    self._relay_wake = trio.Event()
                    await self._relay_wake.wait()
                await self._relay_slots.acquire()
                count = relay_batch_length([len(i.payload) for i in self._relay_queue])
                if count == 0:  # the first alone exceeds a request: no validator could take it
                    self._relay_queue.popleft().finish("larger than a relay request may carry")
                    self._relay_slots.release()
                    continue
                batch = [self._relay_queue.popleft() for _ in range(count)]
                nursery.start_soon(self._relay_batch, batch)

    async def _relay_batch(self, items: list[_RelayItem]) -> None:
        """Hand `items` to the validators in turn, each asked for those the previous refused."""
        net = self._net
        refusal = "no validator is known" if net is not None else "p2p is not running"
        try:
            addresses = net.directory.addresses() if net is not None else ()
            remaining = items
            for step in range(len(addresses)):
                assert net is not None
                address = addresses[(self._relay_turn + step) % len(addresses)]
                try:
                    verdicts = await net.relay(address, [i.payload for i in remaining])
                except RelayError as exc:
                    self.counters["relay_failed"] += 1
                    refusal = str(exc)
                    continue
                self.counters["relay_requests"] += 1
                left = []
                for item, verdict in zip(remaining, verdicts, strict=True):
                    if verdict is None:
                        self.counters["relay_taken"] += 1
                        item.finish(None)
                    else:
                        self.counters["relay_refused"] += 1
                        item.refusal = f"0x{address.hex()}: {verdict}"
                        left.append(item)
                if len(left) < len(remaining):
                    self._relay_turn = (self._relay_turn + step + 1) % len(addresses)
                    if self._relay_failing:
                        self._relay_failing = False
                        logger.info("relaying to validators works again (0x%s took %d)", address.hex(),
                                    len(remaining) - len(left))
                remaining = left
                if not remaining:
                    return
            if not self._relay_failing:
                self._relay_failing = True
                logger.warning("no validator takes this node's relayed payloads (%s); retrying",
                               remaining[0].refusal or refusal)
        finally:
            for item in items:  # refused everywhere, or this task cancelled: the callers decide
                item.finish(item.refusal or refusal)
            self._relay_slots.release()

    async def _on_relayed(self, peer: bytes, payloads: list[bytes]) -> list[str | None]:
        """A full node's vouched events (p2p/relay.py): a verdict per payload, None if taken.
        Budgets first; the budgeted payloads' signatures are recovered in a worker thread (the
        event loop never pays for a full node's flood), then admission judges them."""
        now = trio.current_time()
        verdicts: list[str | None] = []
        budgeted: list[int] = []
        for index, payload in enumerate(payloads):
            digest = keccak256(payload)
            if payload[0] not in RELAYED_KINDS:
                verdicts.append("only charger events and command outcomes are relayed")
            elif digest in self.mempool or self.mempool.is_committed(digest):
                verdicts.append(None)  # already here: the caller waits for its commit
            elif not self.relay_budget.take(peer, now):
                self.counters["relay_over_budget"] += 1
                verdicts.append("over this peer's relay budget; retry later")
            elif not self.relay_total.take(b"all", now):
                self.counters["relay_over_total_budget"] += 1
                verdicts.append("over this validator's relay budget for all full nodes; retry later")
            else:
                verdicts.append(None)
                budgeted.append(index)
        recover = getattr(self.app, "recover_signatures", None)
        if recover is not None and budgeted:
            try:
                await trio.to_thread.run_sync(recover, [payloads[i] for i in budgeted])
            except Exception:  # check_tx below recovers (and judges) them itself
                logger.exception("recovering relayed signatures off the loop failed")
        for index in budgeted:
            verdicts[index] = self._pool_relayed(payloads[index])
        self._input_ready.set()
        return verdicts

    def _pool_relayed(self, payload: bytes) -> str | None:
        result = self._check_result(payload)
        if not result.ok:
            self.counters["relay_payload_refused"] += 1
            return result.reason or "refused"
        try:
            self.mempool.add(payload, source=self._source_of(result, b""))
        except MempoolFull as exc:
            self.counters["relay_mempool_full"] += 1
            return f"mempool full: {exc}"
        except ValueError as exc:
            return str(exc)
        self.counters["relay_payload_pooled"] += 1
        if self._nursery is not None:
            self._nursery.start_soon(self._gossip, payload)
        return None

    async def _gossip(self, payload: bytes) -> None:
        if self._net is None:
            return
        try:
            await self._net.publish_event(payload)
        except GossipOverloaded:  # still in our mempool: committed when this node proposes
            self.counters["gossip_overloaded"] += 1
        except BatchError:  # larger than an events message: only this node's proposals carry it
            self.counters["gossip_payload_too_large"] += 1

    def _check(self, payload: bytes) -> str | None:
        """check_tx: None if admitted, else the reason (a failing check refuses, never stops)."""
        result = self._check_result(payload)
        return None if result.ok else (result.reason or "refused")

    def _check_result(self, payload: bytes) -> CheckResult:
        try:
            return self.app.check_tx(payload)
        except Exception as exc:
            logger.exception("payload admission check failed")
            return CheckResult(False, f"admission check failed: {exc}")

    def _accepts_gossip_from(self, origin: bytes) -> bool:
        """The events topic's backpressure (p2p/gossip.py `accept_origin`): a batch from an
        origin that is backlogged here or out of budget is neither taken nor forwarded, so a
        flooder's batches stop costing honest validators relays and duplicates."""
        if self._origin_backlogged("0x" + origin.hex()) \
                or not self.gossip_budget.has_tokens(origin, trio.current_time()):
            self.counters["gossip_batch_refused"] += 1
            return False
        return True

    def _origin_backlogged(self, source: str) -> bool:
        """True if `source` already has more pending here than blocks take from it soon."""
        pending = self.mempool.usage(source)[0]
        limit = self.config.gossip_max_pending_per_origin
        return source != self._own_source and limit is not None and pending >= limit

    def _source_of(self, result: CheckResult, origin: bytes) -> str:
        """The mempool source of an admitted gossiped payload: its accountable source (the
        vouching validator), "local" when that is this node, else the gossip origin."""
        source = result.source or "0x" + origin.hex()
        return "local" if source == self._own_source else source

    # ------------------------------------------------------------------ p2p handlers

    async def _on_consensus(self, sender: bytes, body: bytes) -> None:
        if not self.inputs.put(sender, (sender, body)):
            self.counters["input_dropped_sender_full"] += 1
        self._input_ready.set()

    async def _on_payloads(self, sender: bytes, payloads: list[bytes]) -> None:
        """Gossiped payloads from origin `sender`: cheap checks first (module docstring)."""
        now = trio.current_time()
        taken: list[tuple[bytes, bytes]] = []
        for payload in payloads:
            if not payload:
                self.counters["gossip_payload_invalid"] += 1
                continue
            digest = keccak256(payload)
            if digest in self.mempool or self.mempool.is_committed(digest):
                self.counters["gossip_payload_duplicate"] += 1
                continue
            if self._origin_backlogged("0x" + sender.hex()):  # an origin's own events are pooled under it
                self.counters["gossip_payload_origin_backlogged"] += 1
                continue
            if not self.gossip_budget.take(sender, now):
                # Before any signature is recovered; an honest origin still proposes it itself.
                self.counters["gossip_payload_over_budget"] += 1
                continue
            taken.append((payload, digest))
        recover = getattr(self.app, "recover_signatures", None)
        limit = self.config.gossip_max_pending_per_origin
        room = len(taken) if limit is None else max(0, limit - self.mempool.usage("0x" + sender.hex())[0])
        early = [payload for payload, _ in taken[:room]]  # budgeted, within the origin's backlog room
        if recover is not None and len(early) >= OFF_LOOP_RECOVERY_MIN:
            try:
                await trio.to_thread.run_sync(recover, early)
            except Exception:  # check_tx below recovers (and judges) them itself
                logger.exception("recovering gossiped signatures off the loop failed")
        for payload, digest in taken:
            if digest in self.mempool or self.mempool.is_committed(digest):  # meanwhile (a submit, a block)
                self.counters["gossip_payload_duplicate"] += 1
                continue
            if self._origin_backlogged("0x" + sender.hex()):  # filled up by this batch's earlier payloads
                self.counters["gossip_payload_origin_backlogged"] += 1
                continue
            result = self._check_result(payload)
            if not result.ok:
                self.counters["gossip_payload_refused"] += 1
                for refusal_listener in self.refusal_listeners:
                    refusal_listener(payload, result.reason or "refused")
                continue
            try:
                self.mempool.add(payload, source=self._source_of(result, sender))
            except MempoolFull:
                # The origin node keeps it in its own mempool and proposes it in its turn.
                self.counters["gossip_payload_mempool_full"] += 1
            except ValueError:
                self.counters["gossip_payload_invalid"] += 1
        self._input_ready.set()

    def _block_records(self, from_height: int, to_height: int) -> list[bytes]:
        return self.replica.block_records(from_height, to_height)

    # ------------------------------------------------------------------ the driver

    def _push_timer(self, timeout: Timeout, duration_ms: int) -> None:
        if len(self._timers) >= MAX_TIMERS // 2:  # drop timers of decided heights
            self._timers = [t for t in self._timers if t[2].height >= self.replica.height]
            heapq.heapify(self._timers)
        assert len(self._timers) < MAX_TIMERS, "timer heap bound"
        self._timer_seq += 1
        heapq.heappush(self._timers, (trio.current_time() + duration_ms / 1000, self._timer_seq, timeout))

    def _next_deadline(self) -> float:
        deadline = self._timers[0][0] if self._timers else float("inf")
        if self._pending_proposal is not None:
            deadline = min(deadline, self._proposal_due())
        needed = self.replica.block_needed_by_ms
        if self.replica.idle and needed is not None:
            deadline = min(deadline, trio.current_time() + max(0.0, needed / 1000 - time.time()))
        return deadline

    def _proposal_due(self) -> float:
        """When the pending proposal request is answered (payloads arriving together share it)."""
        assert self._pending_proposal is not None
        _, asked_at = self._pending_proposal
        earliest = max(asked_at, self._last_commit_at + self.config.min_block_interval_s)
        if len(self.mempool) or not self.config.create_empty_blocks:
            return earliest
        return max(earliest, asked_at + self.config.empty_block_interval_s)

    async def _drive(self) -> None:
        await self._carry_out(self.replica.start())
        while True:
            if not len(self.inputs) and not self._sync_inputs:
                with trio.move_on_at(self._next_deadline()):
                    await self._input_ready.wait()
            self._input_ready = trio.Event()
            now = trio.current_time()
            while self._timers and self._timers[0][0] <= now:
                _, _, timeout = heapq.heappop(self._timers)
                await self._carry_out(self.replica.handle_timeout(timeout))
            for _ in range(64):  # a slice of inputs, then timers and proposals again
                if self._sync_inputs:
                    sender, committed = self._sync_inputs.popleft()
                    await self._carry_out(self.replica.handle_committed_block(committed, sender))
                body = self.inputs.take()
                if body is None:
                    break
                sender, data = body
                await self._carry_out(self.replica.handle_message(data, sender))
            if self.replica.idle and self._wants_block():
                await self._carry_out(self.replica.wake())
            if self._pending_proposal is not None and self._proposal_due() <= trio.current_time():
                await self._answer_proposal()

    def _wants_block(self) -> bool:
        needed = self.replica.block_needed_by_ms
        return (bool(len(self.mempool)) or self._chain_wants_block
                or (needed is not None and needed <= time.time() * 1000))

    async def _watch_chain(self) -> None:
        """While the network is idle, ask the application (worker thread: chain reads) every
        `chain_watch_interval_s` whether a chain-side change needs a block now; if so, wake."""
        failing = False
        while True:
            await trio.sleep(self.config.chain_watch_interval_s)
            if not self.replica.idle or self._chain_wants_block:
                continue
            asked_at = self.committed_height
            try:
                wants = await trio.to_thread.run_sync(self.app.chain_wants_block)  # type: ignore[attr-defined]
            except Exception as exc:  # the chain RPC is down: the idle heartbeat still comes
                if not failing:
                    logger.warning("chain watch failed (retried every %.1f s): %s",
                                   self.config.chain_watch_interval_s, exc)
                failing = True
                continue
            if failing:
                logger.info("chain watch works again")
            failing = False
            # A block committed while the worker read answered the question already: the answer
            # is stale (it would wake the network for a second, needless block).
            if wants and self.replica.idle and self.committed_height == asked_at:
                self.counters["chain_woke"] += 1
                self._chain_wants_block = True
                self._input_ready.set()

    async def _answer_proposal(self) -> None:
        assert self._pending_proposal is not None
        request, _ = self._pending_proposal
        self._pending_proposal = None
        if (request.height, request.round) != (self.replica.height, self.replica.core.round):
            return
        payloads = self.mempool.reap(request.max_payloads, request.max_payload_bytes,
                                     per_source=self.config.block_max_per_source)
        try:
            facts = await trio.to_thread.run_sync(self.app.propose_facts, request.height)
        except Exception as exc:  # e.g. the chain RPC is down: skip our turn, the round moves on
            self.counters["proposal_facts_failed"] += 1
            logger.warning("no proposal at height %d: propose_facts failed: %s", request.height, exc)
            return
        if (request.height, request.round) != (self.replica.height, self.replica.core.round):
            return  # the round moved on while the facts were fetched
        outputs = self.replica.propose(request, payloads, facts, int(time.time() * 1000))
        left_out = self.replica.last_refused
        if left_out:
            # Payloads check_tx now refuses can never be in a block: forget them. The rest were
            # over their source's share of this block (prepare_proposal): they wait for the next.
            refused = [p for p in left_out if not self._check_result(p).ok]
            self.mempool.remove_committed(refused)
            self.counters["proposal_payload_refused"] += len(refused)
            self.counters["proposal_payload_deferred"] += len(left_out) - len(refused)
        await self._carry_out(outputs)

    async def _carry_out(self, outputs: list[Output]) -> None:
        """Carry out Replica outputs; a Commit is finalized before anything else."""
        queue = deque(sorted(outputs, key=lambda o: not isinstance(o, Commit)))
        while queue:
            follow = await self._execute(queue.popleft())
            queue.extend(sorted(follow, key=lambda o: not isinstance(o, Commit)))
            if any(isinstance(o, Commit) for o in queue):
                queue = deque(sorted(queue, key=lambda o: not isinstance(o, Commit)))

    async def _execute(self, output: Output) -> list[Output]:
        net = self._net
        if isinstance(output, Broadcast):
            message = output.message
            if self._is_own(message) and self.signed_listeners:  # the WAL has it already
                slot = (type(message).__name__, int(getattr(message, "vote_type", 0)), message.height,
                        message.round, message.block_hash)
                if slot not in self._announced:
                    self._announced[slot] = None
                    while len(self._announced) > 1024:
                        self._announced.popitem(last=False)
                    for listener in self.signed_listeners:
                        listener(message)
            if net is not None:
                net.broadcast_consensus(output.data)
        elif isinstance(output, SendTo):
            if isinstance(output.message, CommittedBlock) and output.message.height >= self.replica.height - 1:
                # A vote of the height we just decided arrived late: its sender is usually just
                # slower, not stuck; one that is really stuck fetches the block by sync.
                self.counters["recent_block_not_pushed"] += 1
            elif net is not None and isinstance(output.peer, bytes):
                net.links.send_to(output.peer, output.data)
        elif isinstance(output, ScheduleTimeout):
            self._push_timer(output.timeout, output.duration_ms)
        elif isinstance(output, RequestProposal):
            self._pending_proposal = (output, trio.current_time())
        elif isinstance(output, ValidateBlock):
            block = output.block
            try:
                facts = await trio.to_thread.run_sync(partial(self.app.fetch_facts, block.height, block.app_header,
                                                              block.payloads, block_ms=block.timestamp_ms))
            except Exception as exc:  # the facts can never be had: the block is refused
                logger.warning("block %d refused: its facts cannot be fetched: %s", block.height, exc)
                self.counters["validation_facts_failed"] += 1
                return self.replica.refuse(block)
            return self.replica.validate(block, facts)
        elif isinstance(output, Commit):
            return await self._commit(output)
        elif isinstance(output, RequestCatchUp):
            self._start_catch_up(output.peer if isinstance(output.peer, bytes) else None, output.from_height)
        elif isinstance(output, ReportEvidence):
            self.counters["evidence"] += 1
            logger.warning("equivocation by 0x%s at height %d", output.evidence.validator.hex(), output.evidence.height)
            for evidence_listener in self.evidence_listeners:
                evidence_listener(output.evidence)
        elif isinstance(output, Dropped):
            self.counters[f"dropped:{output.reason.split(':')[0]}"] += 1
        elif isinstance(output, Persist):  # the Replica keeps these; never returned
            pass
        return []

    def _is_own(self, message: Proposal | Vote) -> bool:
        signer = message.validator if isinstance(message, Vote) else message.proposer
        return signer == self.keys.validator_address

    async def _commit(self, commit: Commit) -> list[Output]:
        block = commit.block
        # Blocks until the facts are had (the application retries inside): a chain outage
        # delays commits, the loop keeps serving everything else meanwhile.
        facts = await trio.to_thread.run_sync(self._committed_facts, block)
        result, follow = self.replica.finalize(commit, facts)
        self._after_commit(CommittedBlock(block, commit.certificate), result)
        return follow

    def _committed_facts(self, block: Block) -> Any:
        """A decided block's chain facts (worker thread; the application waits out RPC trouble)."""
        return self.app.fetch_facts(block.height, block.app_header, block.payloads, committed=True,
                                    block_ms=block.timestamp_ms)

    def _after_commit(self, committed: CommittedBlock, result: FinalizeResult) -> None:
        block = committed.block
        self.mempool.remove_committed(block.payloads)
        self._last_commit_at = trio.current_time()
        self._chain_wants_block = False
        for index, payload in enumerate(block.payloads):
            digest = keccak256(payload)
            tx = result.tx_results[index] if index < len(result.tx_results) else TxResult(1, log="no result")
            receipt = CommitReceipt(block.height, block.hash, index, tx)
            self._receipts[digest] = receipt
            waiter = self._waiters.pop(digest, None)
            if waiter is not None:
                waiter.receipt = receipt
                waiter.event.set()
        while len(self._receipts) > MAX_RECENT_RECEIPTS:
            self._receipts.popitem(last=False)
        self.counters["committed_blocks"] += 1
        self.counters["committed_payloads"] += len(block.payloads)
        self._install_bindings()
        if self.config.submit_outbound:
            for payload in result.outbound_payloads:
                self._submit_own(payload)
        if result.notices and self.on_notices is not None:
            self.on_notices(result.notices)
        for finalize_listener in self.finalize_listeners:
            finalize_listener(block, result)
        for listener in self.commit_listeners:
            listener(committed)

    def _install_bindings(self) -> None:
        """p2p accepts the peers of every validator set deciding now or later (old set until the
        switch height, new set from when it is announced)."""
        bindings = self.replica.bindings_in_force()
        if bindings != self._installed_bindings:
            self.config.directory.replace(bindings)
            self._installed_bindings = bindings

    def _submit_own(self, payload: bytes) -> None:
        """An own payload the application asked for (e.g. an attestation): mempool + gossip."""
        if self._check(payload) is not None:
            self.counters["own_payload_refused"] += 1
            return
        try:
            if self.mempool.add(payload, source="local") and self._nursery is not None:
                self._nursery.start_soon(self._gossip, payload)
        except MempoolFull:
            self.counters["own_payload_mempool_full"] += 1

    # ------------------------------------------------------------------ catch-up

    def _start_catch_up(self, peer: bytes | None, from_height: int) -> None:
        if self._catching_up or self._net is None or self._nursery is None:
            return
        self._catching_up = True
        self._nursery.start_soon(self._catch_up, peer, from_height)

    async def _catch_up(self, peer: bytes | None, from_height: int) -> None:
        """Fetch certified blocks from validators until none is ahead; the Replica verifies them."""
        net = self._net
        assert net is not None
        try:
            candidates = ([peer] if peer is not None else []) + [
                a for a in net.connected_validators() if a != peer
            ]
            if self.config.follower or not candidates:
                # No links (a full node, or a validator that could not link): ask the
                # validators of the directory directly, those we know an address of first.
                dialable = net.dialable_validators()
                others = [a for a in net.directory.addresses() if a not in dialable]
                candidates += [a for a in dialable + others
                               if a not in candidates and a != self.keys.validator_address]
            for address in candidates:
                if await self._catch_up_from(net, address, max(from_height, self.replica.height)):
                    return
        finally:
            self._catching_up = False

    async def _catch_up_from(self, net: P2PNode, address: bytes, height: int) -> bool:
        """Fetch from one validator up to its latest block; True if we reached it."""
        while True:
            try:
                latest, records = await net.fetch_blocks(address, height, height + MAX_BLOCKS_PER_REQUEST - 1)
            except SyncError as exc:
                logger.info("catch-up from 0x%s failed: %s", address.hex(), exc)
                return False
            for record in records:
                try:
                    committed = decode_message(record)
                except WireError:
                    committed = None
                if not isinstance(committed, CommittedBlock):
                    self.counters["sync_malformed"] += 1
                    return False
                while len(self._sync_inputs) >= MAX_SYNC_INPUTS:
                    await trio.sleep(0.01)
                self._sync_inputs.append((address, committed))
                self._input_ready.set()
            self.counters["sync_blocks_fetched"] += len(records)
            if not records:
                return self.replica.height > latest
            height += len(records)
            with trio.move_on_after(5):  # let the driver apply what we fed before asking for more
                while self.replica.height < height:
                    await trio.sleep(0.01)
            if self.replica.height < height:
                return False  # the blocks were refused (bad certificate or chain)

    # ------------------------------------------------------------------ running

    async def _replay(self) -> None:
        """Re-apply stored blocks above the application's snapshot (facts off the loop)."""
        for height in self.replica.replay_heights():
            committed = self.replica.store.get(height)
            assert committed is not None, f"block store misses height {height}"
            block = committed.block
            facts = await trio.to_thread.run_sync(self._committed_facts, block)
            result = self.replica.replay(height, facts)
            for finalize_listener in self.finalize_listeners:
                finalize_listener(block, result)
        logger.info("recovered at height %d with app state %s", self.replica.height,
                    self.replica.app_hash.hex())

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Replay, start p2p, resume from the WAL, and drive consensus until cancelled."""
        handlers = P2PHandlers(self._on_consensus, self._on_payloads, self._block_records, lambda: self.committed_height,
                               snapshots=ServedSnapshots(self.replica.snapshots, self.replica.snapshot_chunk,
                                                         self.replica.block_records),
                               on_relayed=None if self.config.follower else self._on_relayed)
        p2p_config = P2PConfig(
            network_id=network_id_of(self.config.domain),
            directory=self.config.directory,
            host=self.config.host,
            batch_max_count=self.config.batch_max_count,
            batch_max_delay_s=self.config.batch_max_delay_s,
            batch_min_interval_s=self.config.batch_min_interval_s,
        )
        try:
            await self._replay()
            self._install_bindings()
            async with open_p2p(self.keys, p2p_config, handlers) as net, trio.open_nursery() as nursery:
                self._net = net
                net.gossip.accept_origin = self._accepts_gossip_from
                self._nursery = nursery
                nursery.start_soon(self._drive)
                nursery.start_soon(self._follow if self.config.follower else self._initial_sync)
                if self.config.follower:
                    nursery.start_soon(self._relay_sender)
                elif callable(getattr(self.app, "chain_wants_block", None)):
                    nursery.start_soon(self._watch_chain)
                self.ready.set()
                task_status.started(net)
        finally:
            self._net = None
            self.replica.close()

    async def _initial_sync(self) -> None:
        """Once links are up (or after 10 s without any), ask validators for blocks we missed."""
        net = self._net
        assert net is not None
        with trio.move_on_after(10):
            while not net.connected_validators():
                await trio.sleep(0.1)
        self._start_catch_up(None, self.replica.height)

    async def _follow(self) -> None:
        """A full node: ask validators for new certified blocks, forever."""
        while True:
            self._start_catch_up(None, self.replica.height)
            await trio.sleep(self.config.follow_interval_s)

    def stats(self) -> dict[str, Any]:
        """Counters for metrics and tests."""
        out: dict[str, Any] = dict(self.counters)
        out.update(height=self.replica.height, round=self.replica.core.round, mempool=len(self.mempool),
                   inputs_dropped=self.inputs.dropped, idle=self.replica.idle)
        needed = self.replica.block_needed_by_ms
        # while idle: seconds until the application needs its next block (anchor deadline, heartbeat)
        out["block_due_in_s"] = None if needed is None else round(max(0.0, needed / 1000 - time.time()), 1)
        if self._net is not None:
            out["p2p"] = self._net.stats()
        return out


@asynccontextmanager
async def open_consensus_service(keys: NodeKeys, config: ServiceConfig, app: Application) -> AsyncIterator[ConsensusService]:
    """Run a ConsensusService in a nursery for the duration of the block."""
    service = ConsensusService(keys, config, app)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        try:
            yield service
        finally:
            nursery.cancel_scope.cancel()
