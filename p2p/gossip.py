"""The charger-events topic: payloads batched into signed gossip messages, with backpressure.

Publishing: `publish(payload)` puts the payload into the open batch; closed batches wait in
a bounded ready queue; one sender task seals each batch in an envelope and hands it to
gossipsub only while every peer's outbound RPC queue is below the configured mark (py-libp2p
drops silently when a queue is full), at most one message per `min_interval_s` (100 ms), so
batches grow with load while an event on a quiet network leaves after `max_delay_s` (5 ms).
The spacing is what keeps a steady trickle cheap: a gossip message costs the network about
nine hops (3 sends, 6 forwards in a 4-node mesh) of Noise, yamux, protobuf and an Ed25519
check whatever its size, so one message per event (the old 20 ms spacing at ~40 events/s per
node, 1,000 chargers in open loop) left the event loops no time for consensus: the commit
rate fell to a tenth of the offered load (bench/results/open_loop_fix.md). An event waits at
most `min_interval_s` more for its batch. When the ready queue stays full for `publish_timeout_s`
the caller gets `GossipOverloaded`: nothing is dropped without the caller knowing.

Receiving: a topic validator opens the envelope (network id, validator set, origin peer id
bound to the sender, signature) before gossipsub forwards anything; refusals are counted
by reason, and `accept_origin` (set by the node) refuses batches of an origin it is
backlogged with. Accepted batches go to `on_payloads(sender_address, payloads)`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from p2p.batching import Batcher, BatchError, decode_batch, encode_batch
from p2p.envelope import (
    DropReason,
    EnvelopeDropped,
    MessageKind,
    ValidatorDirectory,
    open_envelope,
    seal,
)
from p2p.host import RunningHost
from p2p.keys import NodeKeys

logger = logging.getLogger(__name__)

PayloadHandler = Callable[[bytes, list[bytes]], Awaitable[None]]
MAX_STASHED_VALIDATIONS = 4096


class GossipOverloaded(Exception):
    """The events topic cannot take more payloads now; retry later."""


def events_topic(network_id: bytes) -> str:
    """Topic name of the charger-events batches of one network."""
    return f"/devsen/{network_id[:8].hex()}/events/1"


class EventGossip:
    """Publishes and receives batched payloads on the events topic of one network."""

    def __init__(
        self,
        running: RunningHost,
        keys: NodeKeys,
        network_id: bytes,
        directory: ValidatorDirectory,
        on_payloads: PayloadHandler,
        *,
        max_count: int = 1000,
        max_bytes: int = 512 * 1024,
        max_delay_s: float = 0.005,
        min_interval_s: float = 0.1,
        max_ready_batches: int = 8,
        publish_timeout_s: float = 2.0,
    ) -> None:
        self._running = running
        self._keys = keys
        self._network_id = network_id
        self._directory = directory
        self._on_payloads = on_payloads
        self._batcher = Batcher(max_count, max_bytes, max_delay_s)
        self._ready: deque[list[bytes]] = deque()
        self._max_ready = max_ready_batches
        self._min_interval_s = min_interval_s
        self._publish_timeout_s = publish_timeout_s
        self._wake_sender = trio.Event()
        self._space = trio.Event()
        self._stash: OrderedDict[bytes, tuple[bytes, list[bytes]]] = OrderedDict()
        # Application backpressure: a batch whose origin validator this returns False for (it
        # has more waiting here than blocks take) is neither delivered nor forwarded.
        self.accept_origin: Callable[[bytes], bool] | None = None
        self.topic = events_topic(network_id)
        self.drops = running.drops
        self.published_messages = 0
        self.published_payloads = 0
        self.received_messages = 0
        self.received_payloads = 0
        self.gate_waits = 0

    # -- publishing --------------------------------------------------------------------

    async def publish(self, payload: bytes) -> None:
        """Queue `payload` for the next batch; waits while full, then GossipOverloaded."""
        try:
            with trio.fail_after(self._publish_timeout_s):
                while not self._batcher.room_for(payload) and len(self._batcher):
                    if len(self._ready) < self._max_ready:
                        self._ready.append(self._batcher.take())
                        continue
                    self._space = trio.Event() if self._space.is_set() else self._space
                    await self._space.wait()
        except trio.TooSlowError as exc:
            raise GossipOverloaded(
                f"events topic overloaded: {len(self._ready)} batches waiting for slow peers"
            ) from exc
        closed = self._batcher.add(payload, trio.current_time())
        assert closed is None
        if self._batcher.full() or len(self._batcher) == 1 or self._ready:
            self._wake_sender.set()

    async def _send_loop(self) -> None:
        """Seal and publish due batches, one at a time, gated on peers' queue lengths."""
        pubsub = self._running.pubsub
        while True:
            if not self._ready:
                deadline = self._batcher.deadline()
                if deadline is None or not self._batcher.due(trio.current_time()):
                    self._wake_sender = trio.Event()
                    with trio.move_on_at(deadline if deadline is not None else float("inf")):
                        await self._wake_sender.wait()
                    continue
                self._ready.append(self._batcher.take())
            batch = self._ready.popleft()
            self._space.set()
            while self._running.max_outbound_queue() >= self._running.settings.max_peer_queue_before_publish:
                self.gate_waits += 1
                await trio.sleep(0.002)
            wire = seal(self._keys.validator, self._network_id, MessageKind.EVENT_BATCH, encode_batch(batch))
            published_at = trio.current_time()
            await pubsub.publish(self.topic, wire)
            self.published_messages += 1
            self.published_payloads += len(batch)
            # Space publishes: under load the open batch grows meanwhile (a gossip message
            # costs ~1 ms CPU per hop whatever its size); a lone event still leaves at once.
            await trio.sleep_until(published_at + self._min_interval_s)

    # -- receiving ---------------------------------------------------------------------

    def _validate(self, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        """Topic validator: envelope checks against the origin peer; stashes the payloads."""
        try:
            envelope = open_envelope(
                msg.data,
                network_id=self._network_id,
                kinds=(MessageKind.EVENT_BATCH,),
                directory=self._directory,
                from_peer=msg.from_id,
                max_body_bytes=self._batcher.max_bytes + 64,
            )
            payloads = decode_batch(envelope.body, self._batcher.max_count)
        except EnvelopeDropped as exc:
            self.drops.add(self.topic, exc.reason.value)
            logger.debug("dropped events message from %s: %s", ID(msg.from_id), exc)
            return False
        except BatchError as exc:
            self.drops.add(self.topic, DropReason.MALFORMED.value)
            logger.debug("dropped malformed batch from %s: %s", ID(msg.from_id), exc)
            return False
        if self.accept_origin is not None and not self.accept_origin(envelope.sender):
            self.drops.add(self.topic, "origin_backlogged")
            return False
        self._stash[msg.from_id + msg.seqno] = (envelope.sender, payloads)
        while len(self._stash) > MAX_STASHED_VALIDATIONS:
            self._stash.popitem(last=False)
        return True

    async def _receive_loop(self, subscription: object) -> None:
        my_id = self._running.peer_id.to_bytes()
        get = subscription.get  # type: ignore[attr-defined]
        while True:
            msg = await get()
            stashed = self._stash.pop(msg.from_id + msg.seqno, None)
            if msg.from_id == my_id:
                continue  # our own publish echoed back
            if stashed is None and not self._validate(ID(msg.from_id), msg):
                continue
            sender, payloads = stashed or self._stash.pop(msg.from_id + msg.seqno)
            self.received_messages += 1
            self.received_payloads += len(payloads)
            await self._on_payloads(sender, payloads)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, install the validator, and run the sender and receiver until cancelled."""
        pubsub = self._running.pubsub
        pubsub.set_topic_validator(self.topic, self._validate, is_async_validator=False)
        subscription = await pubsub.subscribe(self.topic)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_loop)
            nursery.start_soon(self._receive_loop, subscription)
            task_status.started()
