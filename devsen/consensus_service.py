"""The trio shell that drives the sans-I/O consensus core over the p2p layer.

One driver task owns the `ConsensusCore`: it takes inputs from one bounded channel
(consensus messages from the links, certified blocks from sync, wake-ups), fires timers
from a heap against trio's clock, and carries the core's outputs out in order:

  Persist        -> WAL (own messages fsynced before anything after them leaves the node)
  Broadcast      -> direct links to every other validator;  SendTo -> one validator
  ScheduleTimeout-> timer heap;  RequestProposal -> mempool + Application header
  ValidateBlock  -> Application.validate_block (+ the block's app state hash must be ours)
  Commit         -> block store, Application.apply_block, mempool, waiting submitters
  RequestCatchUp -> block sync from a validator, blocks fed back to the core (it verifies)
  ReportEvidence / Dropped -> counted and logged

`submit(payload)` puts a payload in the mempool, gossips it (batched) and returns only
after a block carrying it is committed and applied, so the node replies to a charger only
for committed events. A full mempool raises `ConsensusOverloaded` at once.

The proposer waits (up to `empty_block_interval_s`) for payloads before proposing, so an
idle network does not spin out empty blocks, and at least `min_block_interval_s` between
blocks so payloads arriving together share a block.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from consensus.core import (
    MAX_RECENT_COMMITS,
    Broadcast,
    Commit,
    ConsensusCore,
    Dropped,
    Output,
    Persist,
    ProposalContent,
    ReportEvidence,
    RequestCatchUp,
    RequestProposal,
    ScheduleTimeout,
    SendTo,
    Timeout,
    TimeoutConfig,
    ValidateBlock,
    ValidatorSchedule,
)
from consensus.mempool import Mempool, MempoolFull
from consensus.signing import ZERO_HASH, Domain, keccak256
from consensus.store import BlockStore
from consensus.types import (
    MAX_BLOCKS_PER_REQUEST,
    Block,
    CommitCertificate,
    CommittedBlock,
    Proposal,
    ValidatorSet,
    Vote,
    WireError,
    decode_message,
)
from consensus.wal import WriteAheadLog
from p2p.batching import BatchError
from p2p.envelope import ValidatorDirectory, network_id_of
from p2p.gossip import GossipOverloaded
from p2p.host import HostConfig
from p2p.keys import NodeKeys
from p2p.node import P2PConfig, P2PHandlers, P2PNode, open_p2p
from p2p.sync import SyncError

logger = logging.getLogger(__name__)

MAX_INPUTS = 1024
MAX_TIMERS = 4096
MAX_RECENT_RECEIPTS = 100_000


class ConsensusOverloaded(Exception):
    """The node cannot take the payload now (mempool full); the caller should retry later."""


class AlreadyCommitted(Exception):
    """The payload was committed long ago; its receipt is no longer in memory."""


class CommitTimeout(Exception):
    """The payload was accepted but not committed within the caller's deadline (it may still be)."""


class Application(Protocol):
    """What consensus needs from the deterministic application (the ledger)."""

    def propose_app_header(self, height: int) -> bytes:
        """Opaque header bytes for a block this node proposes at `height`."""
        ...

    def validate_block(self, block: Block) -> bool:
        """Deterministic validity of a proposed block (same verdict on every honest node)."""
        ...

    def apply_block(self, block: Block, certificate: CommitCertificate) -> bytes:
        """Apply a committed block; returns the 32-byte application state hash after it."""
        ...


class ValidatorSetChanges(Protocol):
    """Optional application hook: a committed block changes the validator set."""

    def validator_update(self, height: int) -> tuple[ValidatorSet, dict[bytes, bytes]] | None:
        """After committing `height`: the new set and its address -> peer id bindings."""
        ...


@dataclass(frozen=True, slots=True)
class CommitReceipt:
    """Where a submitted payload was committed."""

    height: int
    block_hash: bytes
    index: int


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
    batch_max_count: int = 1000
    batch_max_delay_s: float = 0.005
    durable: bool = True


@dataclass(slots=True)
class _Waiter:
    event: trio.Event = field(default_factory=trio.Event)
    receipt: CommitReceipt | None = None


CommitListener = Callable[[CommittedBlock], None]
SignedListener = Callable[[Proposal | Vote], None]


class ConsensusService:
    """Runs the consensus core for one validator node (see the module docstring)."""

    def __init__(self, keys: NodeKeys, config: ServiceConfig, app: Application) -> None:
        self.keys = keys
        self.config = config
        self.app = app
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.wal = WriteAheadLog(config.data_dir / "wal.sqlite", durable=config.durable)
        self.store = BlockStore(config.data_dir / "blocks.sqlite", durable=config.durable)
        self.mempool = Mempool(config.mempool_max_count, config.mempool_max_bytes)
        self.counters: Counter[str] = Counter()
        self.commit_listeners: list[CommitListener] = []
        self.signed_listeners: list[SignedListener] = []
        self._inputs_send, self._inputs_recv = trio.open_memory_channel[tuple[Any, ...]](MAX_INPUTS)
        self._timers: list[tuple[float, int, Timeout]] = []
        self._timer_seq = 0
        self._waiters: dict[bytes, _Waiter] = {}
        self._receipts: OrderedDict[bytes, CommitReceipt] = OrderedDict()
        self._pending_proposal: tuple[RequestProposal, float] | None = None
        self._last_commit_at = 0.0
        self._catching_up = False
        self._net: P2PNode | None = None
        self._nursery: trio.Nursery | None = None
        self.app_state_hash = ZERO_HASH
        self.core = self._recover()
        self.ready = trio.Event()

    # ------------------------------------------------------------------ recovery

    def _recover(self) -> ConsensusCore:
        """Rebuild the app state from the block store and the core from the WAL."""
        schedule = ValidatorSchedule(self.config.validators)
        for from_height, validators in self.store.validator_sets():
            schedule.add(from_height, validators)
        last = self.store.last()
        first = 1
        restore = getattr(self.app, "restore", None)  # optional: an application snapshot
        if last is not None and restore is not None:
            restored = restore(last.height, self.store.get)
            if restored is not None:
                first, self.app_state_hash = restored[0] + 1, restored[1]
        for height in range(first, (last.height if last else 0) + 1):
            committed = self.store.get(height)
            assert committed is not None, f"block store misses height {height}"
            self.app_state_hash = self.app.apply_block(committed.block, committed.certificate)
        core = ConsensusCore(
            self.keys.validator,
            self.config.domain,
            schedule,
            height=(last.height + 1) if last else 1,
            prev_block_hash=last.block.hash if last else ZERO_HASH,
            prev_timestamp_ms=last.block.timestamp_ms if last else 0,
            timeouts=self.config.timeouts,
            max_payloads=self.config.block_max_payloads,
            max_payload_bytes=self.config.block_max_bytes,
        )
        # Peers that missed our precommit for the last heights can still finish them.
        for height in range(max(1, core.height - MAX_RECENT_COMMITS), core.height):
            recent = self.store.get(height)
            assert recent is not None, f"block store has a gap at height {height}"
            core.remember_committed(recent)
        logger.info("recovered at height %d with app state %s", core.height, self.app_state_hash.hex())
        return core

    @property
    def height(self) -> int:
        """The next height to decide."""
        return self.core.height

    @property
    def committed_height(self) -> int:
        """Height of the last committed block."""
        return self.core.height - 1

    # ------------------------------------------------------------------ submitting

    async def submit(self, payload: bytes, timeout_s: float = 30.0) -> CommitReceipt:
        """Order `payload`; returns once it is committed and applied.

        Raises ConsensusOverloaded when the mempool is full, ValueError for a bad payload,
        CommitTimeout when no commit came within `timeout_s`, AlreadyCommitted for a payload
        committed so long ago that its receipt was forgotten.
        """
        digest = keccak256(payload)
        receipt = self._receipts.get(digest)
        if receipt is not None:
            return receipt
        if not self._payload_ok(payload):
            raise ValueError("the application refuses this payload")
        waiter = self._waiters.get(digest)
        if waiter is None:
            try:
                added = self.mempool.add(payload, source="local")
            except MempoolFull as exc:
                self.counters["submit_overloaded"] += 1
                raise ConsensusOverloaded(str(exc)) from exc
            if not added and digest not in self.mempool:
                raise AlreadyCommitted("payload was committed before (its receipt is no longer kept)")
            waiter = self._waiters[digest] = _Waiter()
            self._wake()
            if self._net is not None:
                try:
                    await self._net.publish_event(payload)
                except GossipOverloaded:
                    # Still in our mempool: it is committed when this node proposes.
                    self.counters["gossip_overloaded"] += 1
                except BatchError:
                    # Larger than an events message: only this node's proposals carry it.
                    self.counters["gossip_payload_too_large"] += 1
        try:
            with trio.fail_after(timeout_s):
                await waiter.event.wait()
        except trio.TooSlowError as exc:
            raise CommitTimeout(f"payload not committed within {timeout_s} s") from exc
        assert waiter.receipt is not None
        return waiter.receipt

    def _wake(self) -> None:
        try:
            self._inputs_send.send_nowait(("wake",))
        except trio.WouldBlock:
            pass  # the driver is busy and will look at the mempool anyway

    # ------------------------------------------------------------------ p2p handlers

    async def _on_consensus(self, sender: bytes, body: bytes) -> None:
        await self._inputs_send.send(("message", sender, body))

    def _payload_ok(self, payload: bytes) -> bool:
        """The application's admission check (if it has one): a payload that could never be in
        a valid block must not enter the mempool, or every proposal carrying it is refused."""
        check = getattr(self.app, "check_payload", None)
        if check is None:
            return True
        try:
            return bool(check(payload))
        except Exception:  # a failing check refuses the payload; it never stops the node
            logger.exception("payload admission check failed")
            return False

    async def _on_payloads(self, sender: bytes, payloads: list[bytes]) -> None:
        for payload in payloads:
            if not self._payload_ok(payload):
                self.counters["gossip_payload_refused"] += 1
                continue
            try:
                self.mempool.add(payload, source=sender.hex())
            except MempoolFull:
                # The origin node keeps it in its own mempool and proposes it in its turn.
                self.counters["gossip_payload_mempool_full"] += 1
            except ValueError:
                self.counters["gossip_payload_invalid"] += 1
        self._wake()

    def _block_records(self, from_height: int, to_height: int) -> list[bytes]:
        return self.store.records(from_height, to_height)

    # ------------------------------------------------------------------ the driver

    def _push_timer(self, timeout: Timeout, duration_ms: int) -> None:
        if len(self._timers) >= MAX_TIMERS // 2:  # drop timers of decided heights
            self._timers = [t for t in self._timers if t[2].height >= self.core.height]
            heapq.heapify(self._timers)
        assert len(self._timers) < MAX_TIMERS, "timer heap bound"
        self._timer_seq += 1
        heapq.heappush(self._timers, (trio.current_time() + duration_ms / 1000, self._timer_seq, timeout))

    def _next_deadline(self) -> float:
        deadline = self._timers[0][0] if self._timers else float("inf")
        if self._pending_proposal is not None:
            deadline = min(deadline, self._proposal_due())
        return deadline

    def _proposal_due(self) -> float:
        """When the pending proposal request must be answered."""
        assert self._pending_proposal is not None
        _, asked_at = self._pending_proposal
        earliest = max(asked_at, self._last_commit_at + self.config.min_block_interval_s)
        if len(self.mempool):
            return earliest
        return max(earliest, asked_at + self.config.empty_block_interval_s)

    async def _drive(self) -> None:
        self._carry_out(self.core.restore(self.wal.messages(self.core.height)))
        while True:
            with trio.move_on_at(self._next_deadline()):
                item = await self._inputs_recv.receive()
                self._handle_input(item)
            now = trio.current_time()
            while self._timers and self._timers[0][0] <= now:
                _, _, timeout = heapq.heappop(self._timers)
                self._carry_out(self.core.on_timeout(timeout))
            if self._pending_proposal is not None and self._proposal_due() <= now:
                self._answer_proposal()

    def _handle_input(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "message":
            _, sender, body = item
            self._carry_out(self.core.on_message(body, sender))
        elif kind == "committed":
            _, sender, committed = item
            self._carry_out(self.core.on_committed_block(committed, sender))
        else:
            assert kind == "wake"

    def _answer_proposal(self) -> None:
        assert self._pending_proposal is not None
        request, _ = self._pending_proposal
        self._pending_proposal = None
        if (request.height, request.round) != (self.core.height, self.core.round):
            return
        payloads = self.mempool.reap(request.max_payloads, request.max_payload_bytes)
        refused = [p for p in payloads if not self._payload_ok(p)]  # e.g. a removed validator's
        if refused:
            self.mempool.remove_committed(refused)
            self.counters["proposal_payload_refused"] += len(refused)
            refused_set = set(refused)
            payloads = tuple(p for p in payloads if p not in refused_set)
        try:
            app_header = self.app.propose_app_header(request.height)
        except Exception as exc:  # e.g. the chain RPC is down: skip our turn, the round moves on
            self.counters["proposal_header_failed"] += 1
            logger.warning("no proposal at height %d: the application header failed: %s", request.height, exc)
            return
        content = ProposalContent(
            payloads=payloads,
            app_header=app_header,
            timestamp_ms=max(int(time.time() * 1000), request.prev_timestamp_ms + 1),
            app_state_hash=self.app_state_hash,
        )
        self._carry_out(self.core.on_proposal_content(request.height, request.round, content))

    def _carry_out(self, outputs: list[Output]) -> None:
        """Execute core outputs in order; outputs of follow-up inputs are appended."""
        queue = list(outputs)
        index = 0
        while index < len(queue):
            output = queue[index]
            index += 1
            follow = self._execute(output)
            if follow:
                queue.extend(follow)

    def _execute(self, output: Output) -> list[Output] | None:
        net = self._net
        if isinstance(output, Persist):
            self.wal.append(output.message, output.own)  # durable before anyone else sees it
            if output.own:
                for listener in self.signed_listeners:
                    listener(output.message)
        elif isinstance(output, Broadcast):
            if net is not None:
                net.broadcast_consensus(output.data)
        elif isinstance(output, SendTo):
            if (
                isinstance(output.message, CommittedBlock)
                and output.message.height >= self.core.height - 1
            ):
                # A vote of the height we just decided arrived late: its sender is usually
                # just slower, not stuck, and a whole block per late vote costs more than the
                # rest of the height. A peer that is really stuck sees f+1 validators ahead and
                # fetches the block by sync.
                self.counters["recent_block_not_pushed"] += 1
            elif net is not None and isinstance(output.peer, bytes) and output.peer in net.directory:
                net.links.send_to(output.peer, output.data)
        elif isinstance(output, ScheduleTimeout):
            self._push_timer(output.timeout, output.duration_ms)
        elif isinstance(output, RequestProposal):
            self._pending_proposal = (output, trio.current_time())
        elif isinstance(output, ValidateBlock):
            return self.core.on_validation_result(output.block.hash, self._validate(output.block))
        elif isinstance(output, Commit):
            return self._commit(output.block, output.certificate)
        elif isinstance(output, RequestCatchUp):
            self._start_catch_up(output.peer if isinstance(output.peer, bytes) else None, output.from_height)
        elif isinstance(output, ReportEvidence):
            self.counters["evidence"] += 1
            logger.warning("equivocation by 0x%s at height %d", output.evidence.validator.hex(), output.evidence.height)
        elif isinstance(output, Dropped):
            self.counters[f"dropped:{output.reason.split(':')[0]}"] += 1
        return None

    def _validate(self, block: Block) -> bool:
        if block.app_state_hash != self.app_state_hash:
            self.counters["invalid_app_state_hash"] += 1
            return False
        try:
            return bool(self.app.validate_block(block))
        except Exception:  # a crashing validator rejects; the block must not be accepted
            logger.exception("application failed to validate block %d", block.height)
            return False

    def _commit(self, block: Block, certificate: CommitCertificate) -> list[Output]:
        committed = CommittedBlock(block, certificate)
        self.store.save(committed)
        self.app_state_hash = self.app.apply_block(block, certificate)
        self.wal.prune_below(block.height)
        self.mempool.remove_committed(block.payloads)
        self._last_commit_at = trio.current_time()
        for index, payload in enumerate(block.payloads):
            digest = keccak256(payload)
            receipt = CommitReceipt(block.height, block.hash, index)
            self._receipts[digest] = receipt
            waiter = self._waiters.pop(digest, None)
            if waiter is not None:
                waiter.receipt = receipt
                waiter.event.set()
        while len(self._receipts) > MAX_RECENT_RECEIPTS:
            self._receipts.popitem(last=False)
        self.counters["committed_blocks"] += 1
        self.counters["committed_payloads"] += len(block.payloads)
        for listener in self.commit_listeners:
            listener(committed)
        update = getattr(self.app, "validator_update", None)
        change = update(block.height) if update is not None else None
        if change is not None:
            validators, bindings = change
            self.store.save_validator_set(block.height + 2, validators)
            if self._net is not None:
                self._net.directory.replace(bindings)
            return self.core.set_validators(block.height + 2, validators)
        return []

    # ------------------------------------------------------------------ catch-up

    def _start_catch_up(self, peer: bytes | None, from_height: int) -> None:
        if self._catching_up or self._net is None or self._nursery is None:
            return
        self._catching_up = True
        self._nursery.start_soon(self._catch_up, peer, from_height)

    async def _catch_up(self, peer: bytes | None, from_height: int) -> None:
        """Fetch certified blocks from validators until none is ahead; the core verifies them."""
        net = self._net
        assert net is not None
        try:
            candidates = ([peer] if peer is not None else []) + [
                a for a in net.connected_validators() if a != peer
            ]
            for address in candidates:
                if await self._catch_up_from(net, address, max(from_height, self.core.height)):
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
                await self._inputs_send.send(("committed", address, committed))
            self.counters["sync_blocks_fetched"] += len(records)
            if not records:
                return self.core.height > latest
            height += len(records)
            # Let the driver apply what we fed before asking for more.
            with trio.move_on_after(5):
                while self.core.height < height:
                    await trio.sleep(0.01)
            if self.core.height < height:
                return False  # the blocks were refused (bad certificate or chain)

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Start p2p, restore from the WAL, and drive consensus until cancelled."""
        handlers = P2PHandlers(self._on_consensus, self._on_payloads, self._block_records, lambda: self.committed_height)
        p2p_config = P2PConfig(
            network_id=network_id_of(self.config.domain),
            directory=self.config.directory,
            host=self.config.host,
            batch_max_count=self.config.batch_max_count,
            batch_max_delay_s=self.config.batch_max_delay_s,
        )
        try:
            async with open_p2p(self.keys, p2p_config, handlers) as net, trio.open_nursery() as nursery:
                self._net = net
                self._nursery = nursery
                nursery.start_soon(self._drive)
                nursery.start_soon(self._initial_sync)
                self.ready.set()
                task_status.started(net)
        finally:
            self._net = None
            self.wal.close()
            self.store.close()

    async def _initial_sync(self) -> None:
        """Once links are up, ask validators for blocks we missed while down."""
        net = self._net
        assert net is not None
        with trio.move_on_after(10):
            while not net.connected_validators():
                await trio.sleep(0.1)
        self._start_catch_up(None, self.core.height)

    def stats(self) -> dict[str, Any]:
        """Counters for metrics and tests."""
        out: dict[str, Any] = dict(self.counters)
        out.update(height=self.core.height, round=self.core.round, mempool=len(self.mempool))
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
