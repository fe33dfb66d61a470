"""Follow the DEVSEN contracts' events from a block, `confirmations` blocks behind the head.

`EventFollower.poll()` returns the decoded events of the next confirmed block range and the
cursor after it; `acknowledge(batch)` persists that cursor (JSON, written atomically) once
the caller has handled the events, so a restart resumes exactly after the last handled
range (at-least-once: a crash between handling and acknowledging replays that range).
Each poll asks the head first (one request when nothing new is confirmed); before reading a
new range it checks that the last processed block still has the hash recorded for it; if
not, the chain reorganised deeper than the confirmation depth: `ReorgDetected`.
`follow_events` is the trio shell: poll in a worker thread, hand events over, sleep.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from eth_utils.abi import event_abi_to_log_topic
from web3 import Web3
from web3.types import FilterParams

from anchoring.chain.deploy import Deployment
from anchoring.chain.errors import ChainError
from anchoring.chain.transact import RetryPolicy, with_retries
from contracts import load_artifact

DEFAULT_CONFIRMATIONS = 2
MAX_BLOCKS_PER_POLL = 2_000
MAX_EVENTS_PER_POLL = 10_000
CURSOR_FORMAT = "devsen-event-cursor/1"


class ReorgDetected(ChainError):
    """A block this follower already processed is no longer on the chain."""

    def __init__(self, block_number: int, recorded_hash: bytes, current_hash: bytes):
        self.block_number = block_number
        self.recorded_hash = recorded_hash
        self.current_hash = current_hash
        super().__init__(
            f"reorg below the confirmation depth: block {block_number} was 0x{recorded_hash.hex()}, "
            f"now 0x{current_hash.hex()}"
        )


@dataclass(frozen=True, slots=True)
class ChainEvent:
    """One decoded contract event."""

    contract: str
    name: str
    args: dict[str, Any]
    block_number: int
    block_hash: bytes
    tx_hash: bytes
    log_index: int


@dataclass(frozen=True, slots=True)
class FollowCursor:
    """Next block to read, and the number and hash of the last block processed."""

    next_block: int
    last_block: int | None = None
    last_block_hash: bytes | None = None

    def to_json(self) -> str:
        return json.dumps({
            "format": CURSOR_FORMAT,
            "next_block": self.next_block,
            "last_block": self.last_block,
            "last_block_hash": self.last_block_hash.hex() if self.last_block_hash else None,
        }) + "\n"

    @classmethod
    def from_json(cls, text: str) -> FollowCursor:
        data = json.loads(text)
        if data.get("format") != CURSOR_FORMAT:
            raise ValueError(f"not a {CURSOR_FORMAT} file")
        raw_hash = data["last_block_hash"]
        return cls(data["next_block"], data["last_block"], bytes.fromhex(raw_hash) if raw_hash else None)


@dataclass(frozen=True, slots=True)
class EventBatch:
    """The events of blocks [from_block, cursor.next_block) and the cursor after them."""

    from_block: int
    events: tuple[ChainEvent, ...]
    cursor: FollowCursor
    caught_up: bool = True  # it reached the confirmed head (False: more confirmed blocks wait)


class EventFollower:
    """Reads confirmed DEVSEN events in block order with a cursor persisted at `cursor_path`."""

    def __init__(
        self,
        w3: Web3,
        deployment: Deployment,
        cursor_path: Path,
        *,
        confirmations: int = DEFAULT_CONFIRMATIONS,
        max_blocks_per_poll: int = MAX_BLOCKS_PER_POLL,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        assert confirmations >= 0 and 1 <= max_blocks_per_poll <= MAX_BLOCKS_PER_POLL
        self.w3 = w3
        self.confirmations = confirmations
        self.max_blocks_per_poll = max_blocks_per_poll
        self.cursor_path = cursor_path
        self._retry = retry
        self._addresses = {Web3.to_checksum_address(a): n for n, a in deployment.addresses().items()}
        self._decoders: dict[tuple[str, bytes], Any] = {}
        for address, name in self._addresses.items():
            contract = w3.eth.contract(address=address, abi=load_artifact(name)["abi"])
            for item in load_artifact(name)["abi"]:
                if item["type"] == "event":
                    topic = bytes(event_abi_to_log_topic(item))
                    self._decoders[(name, topic)] = contract.events[item["name"]]()
        if cursor_path.is_file():
            self.cursor = FollowCursor.from_json(cursor_path.read_text())
        else:
            self.cursor = FollowCursor(next_block=deployment.deploy_block)

    def _rpc(self, operation: Callable[[], Any]) -> Any:
        return with_retries(operation, self._retry)

    def poll(self) -> EventBatch | None:
        """The next confirmed range's events, or None when there is no new confirmed block
        (then one eth_blockNumber was all it asked). Before a new range is read, raises
        ReorgDetected if the last processed block changed."""
        cursor = self.cursor
        head = int(self._rpc(lambda: self.w3.eth.block_number))
        safe = head - self.confirmations
        if safe < cursor.next_block:
            return None
        last_block, last_hash = cursor.last_block, cursor.last_block_hash
        if last_block is not None:
            assert last_hash is not None
            current = bytes(self._rpc(lambda: self.w3.eth.get_block(last_block))["hash"])
            if current != last_hash:
                raise ReorgDetected(last_block, last_hash, current)
        to_block = min(safe, cursor.next_block + self.max_blocks_per_poll - 1)
        while True:
            query: FilterParams = {
                "fromBlock": cursor.next_block,
                "toBlock": to_block,
                "address": list(self._addresses),
            }
            logs = self._rpc(functools.partial(self.w3.eth.get_logs, query))
            if len(logs) <= MAX_EVENTS_PER_POLL:
                break
            if to_block == cursor.next_block:
                raise ChainError(f"{len(logs)} logs in block {to_block} exceed {MAX_EVENTS_PER_POLL}")
            to_block = cursor.next_block + (to_block - cursor.next_block) // 2  # halve the range
        events = tuple(self._decode(log) for log in logs)
        to_hash = bytes(self._rpc(lambda: self.w3.eth.get_block(to_block))["hash"])
        for event in events:
            if event.block_number == to_block and event.block_hash != to_hash:
                raise ReorgDetected(to_block, event.block_hash, to_hash)
        return EventBatch(cursor.next_block, events, FollowCursor(to_block + 1, to_block, to_hash),
                          caught_up=to_block >= safe)

    def acknowledge(self, batch: EventBatch) -> None:
        """Record that `batch` was handled: advance and persist the cursor."""
        assert batch.from_block == self.cursor.next_block, "acknowledge batches in order"
        self._store(batch.cursor)

    def rewind(self, next_block: int) -> None:
        """After a ReorgDetected: re-read from `next_block` (at or below the fork point) on the
        chain as it is now. The handler then sees those blocks' events again."""
        if not 0 <= next_block <= self.cursor.next_block:
            raise ValueError(f"rewind to {next_block}: must be in [0, {self.cursor.next_block}]")
        if next_block == 0:
            self._store(FollowCursor(0))
            return
        parent = bytes(self._rpc(lambda: self.w3.eth.get_block(next_block - 1))["hash"])
        self._store(FollowCursor(next_block, next_block - 1, parent))

    def _store(self, cursor: FollowCursor) -> None:
        tmp = self.cursor_path.with_name(self.cursor_path.name + ".tmp")
        tmp.write_text(cursor.to_json())
        os.replace(tmp, self.cursor_path)
        self.cursor = cursor

    def _decode(self, log: Any) -> ChainEvent:
        contract = self._addresses[Web3.to_checksum_address(log["address"])]
        topic = bytes(log["topics"][0])
        event = self._decoders.get((contract, topic))
        if event is None:
            raise ChainError(f"unknown event topic 0x{topic.hex()} from {contract}")
        decoded = event.process_log(log)
        return ChainEvent(
            contract=contract,
            name=decoded["event"],
            args=dict(decoded["args"]),
            block_number=int(log["blockNumber"]),
            block_hash=bytes(log["blockHash"]),
            tx_hash=bytes(log["transactionHash"]),
            log_index=int(log["logIndex"]),
        )


async def follow_events(
    follower: EventFollower,
    handle: Callable[[tuple[ChainEvent, ...]], Awaitable[None]],
    *,
    poll_interval_s: float = 1.0,
    paused: Callable[[], bool] | None = None,
    max_pause_s: float = 60.0,
) -> None:
    """Trio shell: forever poll (in a thread), await `handle(events)`, acknowledge, and sleep
    `poll_interval_s` once caught up with the confirmed head (a backlog is read without
    pausing). While `paused()` is true (checked in-process every `poll_interval_s`, e.g. no
    one here to hand events to) the chain is not asked at all, except once per `max_pause_s`
    so the cursor stays near the head; the blocks skipped are read (and handled) as one range
    on resuming. ReorgDetected and exhausted RPC retries propagate to the caller's nursery."""
    idle_since = trio.current_time()
    while True:
        if paused is not None:
            while paused() and trio.current_time() - idle_since < max_pause_s:
                await trio.sleep(poll_interval_s)
            idle_since = trio.current_time()
        batch = await trio.to_thread.run_sync(follower.poll)
        if batch is None:
            await trio.sleep(poll_interval_s)
            continue
        if batch.events:
            await handle(batch.events)
        follower.acknowledge(batch)
        if batch.caught_up:
            await trio.sleep(poll_interval_s)
