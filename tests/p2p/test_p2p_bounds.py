"""Bounds and backpressure of the p2p shells, with a fake libp2p host (this layer only)."""

from __future__ import annotations

from types import SimpleNamespace

import msgpack
import pytest
import trio
import trio.testing

from p2p.envelope import DropCounters, ValidatorDirectory
from p2p.gossip import EventGossip, GossipOverloaded
from p2p.host import GossipSettings
from p2p.keys import NodeKeys
from p2p.sync import MAX_SYNC_BLOCKS, MAX_SYNC_RESPONSE_BYTES, BlockSyncServer
from primitives.eip712 import SigningKey

KEYS = NodeKeys(libp2p_seed=b"\x07" * 32, validator=SigningKey(b"\x05" * 32))
NETWORK = b"\x01" * 32


class FakePubsub:
    """Records publishes; the fake host reports its peer queues as configured."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, data: bytes) -> None:
        self.published.append((topic, data))


def _fake_host(queue_length: int) -> SimpleNamespace:
    return SimpleNamespace(
        drops=DropCounters(), settings=GossipSettings(), pubsub=FakePubsub(),
        peer_id=KEYS.peer_id, max_outbound_queue=lambda: queue_length,
    )


def test_sync_answers_are_bounded_in_blocks_and_bytes() -> None:
    def source(lo: int, hi: int) -> list[bytes]:
        return [b"%d" % h + b"x" * size for h in range(lo, hi + 1)]

    server = BlockSyncServer(_fake_host(0), KEYS, NETWORK, ValidatorDirectory(),  # type: ignore[arg-type]
                             source, lambda: 10_000)
    size = 10
    latest, records = msgpack.unpackb(server.answer(1, 1000))
    assert latest == 10_000 and len(records) == MAX_SYNC_BLOCKS
    size = 1024 * 1024
    _, records = msgpack.unpackb(server.answer(1, 1000))
    assert sum(map(len, records)) <= MAX_SYNC_RESPONSE_BYTES and len(records) == 7
    assert msgpack.unpackb(server.answer(5, 4)) == [10_000, []]


async def test_event_publish_waits_then_reports_overload_when_peers_are_slow() -> None:
    host = _fake_host(queue_length=99)  # every peer queue above the publish mark
    gossip = EventGossip(host, KEYS, NETWORK, ValidatorDirectory(), on_payloads=None,  # type: ignore[arg-type]
                         max_count=2, max_delay_s=0.001, max_ready_batches=2, publish_timeout_s=0.3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gossip._send_loop)
        accepted = 0
        with pytest.raises(GossipOverloaded, match="overloaded"):
            for i in range(100):
                await gossip.publish(b"event-%d" % i)
                accepted += 1
        # nothing was published while peers were full, nothing dropped: all are queued
        assert host.pubsub.published == []
        queued = len(gossip._batcher) + sum(len(b) for b in gossip._ready)
        assert accepted - queued <= 2  # at most the one batch held by the gated sender
        host.max_outbound_queue = lambda: 0  # peers drain
        with trio.fail_after(5):
            while gossip.published_payloads < accepted:
                await trio.sleep(0.01)
        assert gossip.published_payloads == accepted
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("trio_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_a_steady_trickle_of_events_rides_in_few_messages_and_a_lone_event_leaves_at_once(
        trio_clock: trio.testing.MockClock) -> None:
    """40 events/s for 5 s (1,000 chargers in open loop, one node's share): at most one message
    per 100 ms, so ~4 events per message instead of one message per event (each message costs
    every node its hops whatever its size); a lone event on a quiet topic still leaves in 5 ms."""
    host = _fake_host(queue_length=0)
    gossip = EventGossip(host, KEYS, NETWORK, ValidatorDirectory(), on_payloads=None)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gossip._send_loop)
        started = trio.current_time()
        for i in range(200):
            await trio.sleep_until(started + i / 40)
            await gossip.publish(b"event-%d" % i)
        await trio.sleep(0.5)
        assert gossip.published_payloads == 200
        assert gossip.published_messages <= 5 / 0.1 + 2, gossip.published_messages
        await trio.sleep(1.0)  # quiet
        before, quiet_at = gossip.published_messages, trio.current_time()
        await gossip.publish(b"lone")
        while gossip.published_messages == before:
            await trio.sleep(0.001)
        assert trio.current_time() - quiet_at <= 0.006
        nursery.cancel_scope.cancel()
