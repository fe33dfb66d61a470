"""The p2p side of a node in one place: host, events topic, consensus links, block sync.

    async with open_p2p(keys, config, handlers) as net:
        net.broadcast_consensus(body)          # to every other validator (direct links)
        await net.publish_event(payload)       # batched on the events topic
        latest, records = await net.fetch_blocks(address, lo, hi)
        verdicts = await net.relay(address, payloads)   # a full node hands events to a validator
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from p2p.envelope import ValidatorDirectory
from p2p.gossip import EventGossip
from p2p.host import HostConfig, RunningHost, open_host
from p2p.keys import NodeKeys
from p2p.links import ConsensusLinks
from p2p.relay import RelayError, RelayHandler, RelayServer, relay_payloads
from p2p.snapshots import SnapshotServer, SnapshotSource
from p2p.sync import BlockSource, BlockSyncServer, LatestHeight, fetch_blocks


@dataclass(slots=True)
class P2PConfig:
    """Network id, validator directory, host settings and event batch bounds."""

    network_id: bytes
    directory: ValidatorDirectory
    host: HostConfig = field(default_factory=HostConfig)
    batch_max_count: int = 1000
    batch_max_bytes: int = 512 * 1024
    batch_max_delay_s: float = 0.005
    batch_min_interval_s: float = 0.1  # one events message per 100 ms at most (p2p/gossip.py)
    publish_timeout_s: float = 2.0


@dataclass(slots=True)
class P2PHandlers:
    """What the node does with traffic: consensus messages, event payloads, sync reads."""

    on_consensus: Callable[[bytes, bytes], Awaitable[None]]
    on_payloads: Callable[[bytes, list[bytes]], Awaitable[None]]
    block_source: BlockSource
    latest_height: LatestHeight
    snapshots: SnapshotSource | None = None  # state sync served to any peer (p2p/snapshots.py)
    on_relayed: RelayHandler | None = None  # a validator takes full nodes' vouched events (p2p/relay.py)


class P2PNode:
    """A running p2p stack (see module docstring)."""

    def __init__(self, running: RunningHost, keys: NodeKeys, config: P2PConfig, gossip: EventGossip, links: ConsensusLinks, sync_server: BlockSyncServer) -> None:
        self.running = running
        self.keys = keys
        self.config = config
        self.gossip = gossip
        self.links = links
        self.sync_server = sync_server
        self.snapshot_server: SnapshotServer | None = None
        self.relay_server: RelayServer | None = None

    @property
    def directory(self) -> ValidatorDirectory:
        """The validator set as address <-> peer id."""
        return self.config.directory

    def broadcast_consensus(self, body: bytes) -> int:
        """Queue a consensus message for every other linked validator; how many got it."""
        return self.links.broadcast(body)

    async def publish_event(self, payload: bytes) -> None:
        """Gossip one payload (batched); raises GossipOverloaded when peers cannot keep up."""
        await self.gossip.publish(payload)

    async def fetch_blocks(self, address: bytes, from_height: int, to_height: int) -> tuple[int, list[bytes]]:
        """Block records from validator `address`; raises SyncError."""
        peer = self.directory.peer_of(address)
        if peer is None:
            raise ValueError("not a validator address")
        return await fetch_blocks(self.running, self.keys, self.config.network_id, self.directory, peer, from_height, to_height)

    async def relay(self, address: bytes, payloads: list[bytes]) -> list[str | None]:
        """Hand payloads to validator `address` (a full node's events); its verdict per payload.
        Raises RelayError."""
        peer = self.directory.peer_of(address)
        if peer is None:
            raise RelayError(f"0x{address.hex()} has no known peer id")
        return await relay_payloads(self.running, self.config.network_id, peer, payloads)

    def dialable_validators(self) -> list[bytes]:
        """Validator addresses whose peer the host has dial addresses for (bootstrap, peer exchange)."""
        known = {peer.to_bytes() for peer in self.running.keeper.known_addresses()}
        return [a for a in self.directory.addresses() if (p := self.directory.peer_of(a)) is not None and p in known]

    def connected_validators(self) -> list[bytes]:
        """Validator addresses with a live outbound consensus link."""
        return self.links.linked_validators()

    def stats(self) -> dict[str, object]:
        """Counters for metrics and tests."""
        return {
            "peer_id": self.running.peer_id.to_base58(),
            "linked_validators": len(self.links.linked_validators()),
            "events_published_messages": self.gossip.published_messages,
            "events_published_payloads": self.gossip.published_payloads,
            "events_received_messages": self.gossip.received_messages,
            "events_received_payloads": self.gossip.received_payloads,
            "events_gate_waits": self.gossip.gate_waits,
            "consensus_sent_frames": self.links.sent_frames,
            "consensus_received_frames": self.links.received_frames,
            "consensus_max_queued": self.links.max_queued(),
            "sync_served": self.sync_server.served_requests,
            "sync_served_outsiders": self.sync_server.served_outsiders,
            "snapshots_served": dict(self.snapshot_server.served) if self.snapshot_server is not None else {},
            "relay_served": self.relay_server.served if self.relay_server is not None else 0,
            "dial_failures": self.running.keeper.dial_failures,
            "peers_connected": sum(1 for p in self.running.keeper.known_addresses()
                                   if self.running.keeper.is_connected(p)),
            "peers_unreachable": self.running.keeper.reachability.unreachable(),
            "linked_validator_addresses": ["0x" + a.hex() for a in self.links.linked_validators()],
            "drops": self.running.drops.snapshot(),
        }


@asynccontextmanager
async def open_p2p(keys: NodeKeys, config: P2PConfig, handlers: P2PHandlers) -> AsyncIterator[P2PNode]:
    """Start the p2p stack; everything stops when the block exits."""
    async with open_host(keys, config.host, config.directory) as running, trio.open_nursery() as nursery:
        gossip = EventGossip(
            running, keys, config.network_id, config.directory, handlers.on_payloads,
            max_count=config.batch_max_count, max_bytes=config.batch_max_bytes,
            max_delay_s=config.batch_max_delay_s, min_interval_s=config.batch_min_interval_s,
            publish_timeout_s=config.publish_timeout_s,
        )
        links = ConsensusLinks(running, keys, config.network_id, config.directory, handlers.on_consensus)
        sync_server = BlockSyncServer(running, keys, config.network_id, config.directory, handlers.block_source, handlers.latest_height)
        sync_server.install()
        snapshot_server = None
        if handlers.snapshots is not None:
            snapshot_server = SnapshotServer(running, config.network_id, handlers.snapshots)
            snapshot_server.install()
        relay_server = None
        if handlers.on_relayed is not None:
            relay_server = RelayServer(running, config.network_id, handlers.on_relayed)
            relay_server.install()
        await nursery.start(links.run)
        await nursery.start(gossip.run)
        try:
            node = P2PNode(running, keys, config, gossip, links, sync_server)
            node.snapshot_server = snapshot_server
            node.relay_server = relay_server
            yield node
        finally:
            nursery.cancel_scope.cancel()
