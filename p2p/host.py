"""The libp2p host of a node: identity from the key directory, Noise-only TCP, gossipsub with
settings fixed on purpose, a peer keeper that dials bootstrap and validator peers and
redials them with backoff, and an inbound gate that enforces `max_peers`.

Every gossipsub/pubsub setting below departs from py-libp2p 0.8.1's defaults for a reason
written next to it (see also p2p/README.md and ../shared/knowledge/py-libp2p.md): those
defaults drop messages silently or slow a small validator network down.
"""

from __future__ import annotations

import functools
import gc
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, IMuxedConn, INetStream
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.peer.peerstore import PERMANENT_ADDR_TTL
from libp2p.pubsub import pubsub as pubsub_module
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service

from p2p.envelope import DropCounters, ValidatorDirectory
from p2p.keys import NodeKeys
from p2p.reachability import Reachability, quiet_libp2p_dial_errors

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GossipSettings:
    """Gossipsub and pubsub parameters; each default is chosen on purpose (see field notes)."""

    # Only /meshsub/1.1.0: 1.2+ sends an IDONTWANT per message per mesh peer, measured 2.3x
    # slower on 4 nodes; our messages are few and large, so IDONTWANT saves nothing.
    protocols: tuple[str, ...] = (str(PROTOCOL_ID_V11),)
    # Mesh degrees: D_low >= peers-1 for validator sets up to 6 nodes gives a full mesh
    # (every validator hears every batch first-hand, no gossip round trip).
    degree: int = 6
    degree_low: int = 5
    degree_high: int = 12
    # 1 s heartbeat (default 120 s): mesh repair after a restart within seconds.
    heartbeat_interval: int = 1
    # Adaptive gossip rewrites the heartbeat to 30-60 s on a small idle network: off.
    adaptive_gossip: bool = False
    # Spam protection runs after topic validation, so it only ever drops messages of
    # already-authenticated validators (own publishes included), silently, at ~10 msgs/s:
    # off. Admission is the envelope check (validator set + signature) plus our own
    # per-peer queue backpressure.
    spam_protection: bool = False
    # Eclipse protection wants >= 3 distinct IPs in the mesh; local and single-host
    # networks have one: off (validators are an allow-list anyway).
    eclipse_protection: bool = False
    # Gossipsub peer exchange off: peers learn validator addresses from the signed peer
    # exchange on consensus links only, so a stranger cannot inject addresses.
    do_px: bool = False
    # Back off 10 s (default 60 s) after a PRUNE so a restarted validator regrafts quickly.
    prune_back_off: int = 10
    # Subscription channel (default 32, overflow = a warning and a loss): deep enough for
    # bursts; our reader drains it into bounded application queues.
    subscription_channel_size: int = 1024
    # Our own publish gate: publish only while every peer's outbound RPC queue (fixed at 32
    # in py-libp2p, full = silent drop) holds fewer than this many RPCs.
    max_peer_queue_before_publish: int = 16
    # Signed pubsub messages authenticate from_id before our topic validators run.
    strict_signing: bool = True
    # Clear gossipsub's adaptive delivery log (grows per message when adaptive is off).
    housekeeping_interval_s: float = 10.0


@dataclass(slots=True)
class HostConfig:
    """Where a node listens and whom it dials first."""

    listen: str = "/ip4/127.0.0.1/tcp/0"
    bootstrap: Sequence[str] = ()
    gossip: GossipSettings = field(default_factory=GossipSettings)
    # Redial backoff: first retry after `redial_min_s`, doubling up to `redial_max_s`.
    redial_min_s: float = 0.25
    redial_max_s: float = 5.0
    dial_timeout_s: float = 3.0
    # Inbound bound (InboundGate): at most max_peers connections, of which one slot per
    # current validator is reserved (validators are always admitted); at most
    # max_pending_handshakes unauthenticated handshakes at once, each within handshake_timeout_s.
    max_peers: int = 64
    max_pending_handshakes: int = 16
    handshake_timeout_s: float = 5.0


MAX_ADDRS_PER_PEER = 8  # dial addresses kept per peer (newest first)
KEEPER_IDLE_CHECK_S = 1.0  # the peer keeper's look at its connections while all are up
# libp2p's own global cap sits above ours by this many (validators beyond max_peers, our own
# dials): it must never be what refuses a validator link, since outsiders can fill it.
LIBP2P_CONNECTION_HEADROOM = 1024


def outsider_slots(max_peers: int, validators: int) -> int:
    """Inbound connections non-validator peers may hold: max_peers less one per validator."""
    return max(0, max_peers - validators)


class InboundGate:
    """Bounds inbound connections (`p2p.max_peers`) so that no flood of outsiders can take a
    validator's place.

    Before the handshake nothing is known of the peer, so only the number of concurrent
    unauthenticated handshakes is bounded (cheap refusal: the socket is closed unread). Right
    after the Noise handshake proves the peer id, and before the connection is multiplexed
    or announced to pubsub, a validator of the current set is always admitted and an outsider
    only while fewer than `outsider_slots` outsiders are connected. Validators keep their links
    anyway through our own dials, which no inbound bound touches.
    """

    def __init__(self, max_peers: int, max_pending: int, is_validator: Callable[[bytes], bool],
                 validator_count: Callable[[], int], drops: DropCounters) -> None:
        self.max_peers = max_peers
        self.max_pending = max_pending
        self.is_validator = is_validator
        self.validator_count = validator_count
        self.drops = drops
        self.pending = 0
        self.outsiders = 0
        self.validators = 0

    def begin_handshake(self) -> bool:
        """Take a handshake slot, or refuse (counted) when all are busy."""
        if self.pending >= self.max_pending:
            self.drops.add("inbound", "handshakes_busy")
            return False
        self.pending += 1
        return True

    def end_handshake(self) -> None:
        self.pending -= 1

    def admit(self, peer: bytes) -> str | None:
        """"validator" or "outsider" (a slot taken: release it), or None (refused, counted)."""
        if self.is_validator(peer):
            self.validators += 1
            return "validator"
        if self.outsiders >= outsider_slots(self.max_peers, self.validator_count()):
            self.drops.add("inbound", "outsider_slots_full")
            return None
        self.outsiders += 1
        return "outsider"

    def release(self, kind: str) -> None:
        if kind == "outsider":
            self.outsiders -= 1
        else:
            self.validators -= 1


async def _close_quietly(*closables: Any) -> None:
    for closable in closables:
        if closable is None:
            continue
        try:
            with trio.move_on_after(1):
                await closable.close()
        except Exception:
            pass


async def _gated_inbound(swarm: Any, gate: InboundGate, timeout_s: float, original: Any,
                         read_write_closer: Any, maddr: multiaddr.Multiaddr) -> None:
    """py-libp2p's inbound handler with `gate` applied (TCP: security, admission, muxer).

    Also ends with the connection: py-libp2p's own handler waits for the whole swarm to stop,
    so every inbound connection ever accepted left a task and an inbound-limiter token behind
    (after max_connections - min_connections accepts in a node's life, no inbound at all)."""
    if isinstance(read_write_closer, IMuxedConn):  # pre-multiplexed transports: not ours (TCP only)
        await original(read_write_closer, maddr)
        return
    if not gate.begin_handshake():
        await _close_quietly(read_write_closer)
        return
    raw = RawConnection(read_write_closer, False)
    secured: Any = None
    admitted: str | None = None
    try:
        try:
            with trio.fail_after(timeout_s):
                secured = await swarm.upgrader.upgrade_security(raw, False)
                peer_id = secured.get_remote_peer()
                admitted = gate.admit(peer_id.to_bytes())
                if admitted is None:
                    logger.debug("inbound connection from %s refused: outsider slots full", peer_id)
                    await _close_quietly(secured, raw)
                    return
                muxed = await swarm.upgrader.upgrade_connection(secured, peer_id)
        finally:
            gate.end_handshake()
        connection = await swarm.add_conn(muxed, direction="inbound")
        await connection.event_closed.wait()
    except Exception as exc:  # handshake failed, timed out, or the connection was refused
        logger.debug("inbound connection on %s ended: %r", maddr, exc)
        await _close_quietly(secured, raw)
    finally:
        if admitted is not None:
            gate.release(admitted)


def install_inbound_gate(host: IHost, gate: InboundGate, timeout_s: float) -> None:
    """Route the host's inbound connections through `gate` (before it listens)."""
    swarm: Any = host.get_network()
    original = swarm._handle_inbound_connection
    swarm._handle_inbound_connection = functools.partial(_gated_inbound, swarm, gate, timeout_s, original)


class CountingGossipSub(GossipSub):
    """GossipSub that counts the outbound RPCs py-libp2p drops (queue full, oversize)."""

    drops: DropCounters

    def _handle_dropped_rpc(self, peer_id: ID, rpc: rpc_pb2.RPC, reason: str) -> None:
        if rpc.publish:
            self.drops.add("pubsub_outbound", reason, len(rpc.publish))
            logger.warning("libp2p dropped %d outbound messages to %s: %s", len(rpc.publish), peer_id, reason)
        super()._handle_dropped_rpc(peer_id, rpc, reason)


class CountingPubsub(Pubsub):
    """Pubsub that counts deliveries its subscription channels could not take."""

    drops: DropCounters

    async def continuously_read_stream(self, stream: INetStream) -> None:
        """py-libp2p's reader, guarded: bytes that are not a pubsub RPC (py-libp2p lets the
        protobuf DecodeError escape and stop the whole node) close that peer's stream only."""
        try:
            await super().continuously_read_stream(stream)
        except Exception as exc:  # any peer-supplied garbage; the node must stay up
            peer_id = stream.muxed_conn.peer_id
            self.drops.add("pubsub_inbound", "malformed_rpc")
            logger.warning("peer %s sent a malformed pubsub RPC (%s); closing its stream",
                           peer_id, type(exc).__name__)
            try:
                await stream.reset()
            except Exception:
                pass
            self._handle_dead_peer(peer_id)

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        for topic in publish_message.topicIDs:
            channel = self.subscribed_topics_send.get(topic)
            if channel is None:
                continue
            try:
                channel.send_nowait(publish_message)
            except trio.WouldBlock:
                self.drops.add(topic, "subscription_full")
                logger.warning("subscription channel of %s full: message lost", topic)


def parse_peer_addr(address: str) -> PeerInfo:
    """`/ip4/.../tcp/N/p2p/<peer id>` -> PeerInfo; a clear error without the /p2p part."""
    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(address))
    except Exception as exc:
        raise ValueError(f"bad peer address {address!r} (needs /p2p/<peer id>): {exc}") from exc


class PeerKeeper:
    """Keeps connections to known peers: dials, and redials with capped exponential backoff."""

    def __init__(self, host: IHost, config: HostConfig) -> None:
        self._host = host
        self._config = config
        self._targets: dict[ID, list[multiaddr.Multiaddr]] = {}
        self._next_attempt: dict[ID, float] = {}
        self._backoff: dict[ID, float] = {}
        self.dial_failures = 0
        self._wake = trio.Event()
        self.reachability = Reachability()  # log lines for peers that go and come back
        quiet_libp2p_dial_errors()

    def add_target(self, peer: PeerInfo) -> None:
        """Keep a connection to `peer`; addresses never expire (permanent TTL)."""
        if peer.peer_id == self._host.get_id() or not peer.addrs:
            return
        known = self._targets.setdefault(peer.peer_id, [])
        new = [a for a in peer.addrs if a not in known][:MAX_ADDRS_PER_PEER]
        if not new:
            return
        # Newest first, bounded: a peer that restarted on a new port is tried first, and no
        # peer (or a faulty validator advertising for it) can grow this list without end.
        known[:0] = new
        del known[MAX_ADDRS_PER_PEER:]
        self._host.get_peerstore().add_addrs(peer.peer_id, new, PERMANENT_ADDR_TTL)
        if not self.is_connected(peer.peer_id):
            self._next_attempt[peer.peer_id] = 0.0
        self._wake.set()

    def known_addresses(self) -> dict[ID, list[multiaddr.Multiaddr]]:
        """Peers kept and their dial addresses."""
        return {p: list(a) for p, a in self._targets.items()}

    def is_connected(self, peer_id: ID) -> bool:
        """Whether the host has a live (not closed) connection to `peer_id`."""
        connections = self._host.get_network().connections.get(peer_id) or []
        return any(not c.is_closed for c in connections)

    def _forget_dead_connections(self, peer_id: ID) -> None:
        """Drop closed connections py-libp2p still lists, and its 60 s "recently failed"
        mark: either makes `connect` return at once without dialing, so a restarted peer
        would stay unreachable. Our own backoff decides when to redial."""
        network: Any = self._host.get_network()
        for connection in list(network.connections.get(peer_id) or []):
            if connection.is_closed:
                network.remove_conn(connection)
        negative_cache = getattr(network, "_negative_peer_cache", None)
        if negative_cache is not None:
            negative_cache.evict(str(peer_id))

    async def run(self) -> None:
        """Dial every target that is not connected and is due; forever."""
        async with trio.open_nursery() as nursery:
            while True:
                now = time.monotonic()
                for peer_id in list(self._targets):
                    if self.is_connected(peer_id):
                        self._backoff.pop(peer_id, None)
                        self.reachability.connected(str(peer_id))
                        continue
                    self.reachability.lost(str(peer_id))
                    if self._next_attempt.get(peer_id, 0.0) > now:
                        continue
                    backoff = self._backoff.get(peer_id, self._config.redial_min_s / 2) * 2
                    backoff = min(backoff, self._config.redial_max_s)
                    self._backoff[peer_id] = backoff
                    # The attempt itself takes up to dial_timeout_s; jitter spreads redials.
                    self._next_attempt[peer_id] = (
                        now + self._config.dial_timeout_s + backoff * random.uniform(0.8, 1.2)
                    )
                    nursery.start_soon(self._dial, peer_id)
                self.reachability.tick()
                self._wake = trio.Event()
                # All connected (the steady state): a lost connection is noticed within
                # KEEPER_IDLE_CHECK_S; while one is down, dials are due every redial_min_s.
                idle = all(self.is_connected(p) for p in self._targets)
                with trio.move_on_after(max(self._config.redial_min_s, KEEPER_IDLE_CHECK_S) if idle
                                        else self._config.redial_min_s):
                    await self._wake.wait()

    async def _dial(self, peer_id: ID) -> None:
        addrs = self._targets[peer_id]
        self._forget_dead_connections(peer_id)
        try:
            with trio.fail_after(self._config.dial_timeout_s):
                await self._host.connect(PeerInfo(peer_id, addrs))
            logger.debug("connected to %s", peer_id)
            self.reachability.connected(str(peer_id))
            self._next_attempt[peer_id] = 0.0
        except Exception as exc:  # any dial failure: retry later with backoff (logged by reachability)
            self.dial_failures += 1
            self.reachability.dial_failed(str(peer_id), f"{type(exc).__name__}: {exc}")


@dataclass
class RunningHost:
    """A started host with its pubsub, router and peer keeper."""

    host: IHost
    pubsub: CountingPubsub
    router: CountingGossipSub
    keeper: PeerKeeper
    settings: GossipSettings
    drops: DropCounters
    gate: InboundGate | None = None

    @property
    def peer_id(self) -> ID:
        """This node's peer id."""
        return self.host.get_id()

    def listen_addrs(self) -> list[str]:
        """Full dialable addresses (with /p2p/<peer id>) this host listens on."""
        return [f"{a}/p2p/{self.peer_id.to_base58()}" for a in self.host.get_addrs() if "/p2p/" not in str(a)] or [
            str(a) for a in self.host.get_addrs()
        ]

    def max_outbound_queue(self) -> int:
        """The longest per-peer outbound pubsub RPC queue right now."""
        return max((len(q) for q in self.pubsub.peer_queues.values()), default=0)


def build_host(keys: NodeKeys, config: HostConfig) -> IHost:
    """A libp2p host with the node's identity, Noise as the only security protocol, TCP."""
    key_pair = keys.key_pair
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        listen_addrs=[multiaddr.Multiaddr(config.listen)],
        # One connection per peer: connect() takes ~10 ms instead of ~250 ms (happy eyeballs).
        # The global cap and pruning watermark sit above `max_peers` (the InboundGate bounds
        # inbound): a libp2p cap that outsiders can fill would refuse our dials to validators.
        connection_config=ConnectionConfig(
            max_connections_per_peer=1,
            max_connections=config.max_peers + LIBP2P_CONNECTION_HEADROOM,
            high_watermark=config.max_peers + LIBP2P_CONNECTION_HEADROOM,
        ),
    )
    # The PeerKeeper's backoff spaces the dials; the swarm's own 3 quick retries per address
    # (new_host cannot set them) would only multiply the attempts to a peer that is down.
    network: Any = host.get_network()
    if hasattr(network, "retry_config"):
        network.retry_config = RetryConfig(max_retries=0)
    return host


def build_pubsub(host: IHost, settings: GossipSettings, drops: DropCounters) -> tuple[CountingPubsub, CountingGossipSub]:
    """Pubsub + gossipsub router with `settings`."""
    router = CountingGossipSub(
        protocols=[TProtocol(p) for p in settings.protocols],
        degree=settings.degree,
        degree_low=settings.degree_low,
        degree_high=settings.degree_high,
        heartbeat_interval=settings.heartbeat_interval,
        do_px=settings.do_px,
        prune_back_off=settings.prune_back_off,
        adaptive_gossip_enabled=settings.adaptive_gossip,
        spam_protection_enabled=settings.spam_protection,
        eclipse_protection_enabled=settings.eclipse_protection,
    )
    router.drops = drops
    pubsub = CountingPubsub(host, router, strict_signing=settings.strict_signing)
    pubsub.drops = drops
    # Sequence numbers start at the clock in microseconds, not seconds: a node restarted
    # after publishing more messages than seconds elapsed would otherwise reuse (from, seqno)
    # ids that peers still hold in their seen-cache and have its messages dropped as dups.
    pubsub.counter = time.time_ns() // 1000
    return pubsub, router


def freeze_startup_heap() -> None:
    """Move every object alive now (imports, host, keys: ~1e6 objects after `import libp2p`)
    out of the cyclic collector's reach. Measured: full collections then paused a node's event
    loop for 400-500 ms under load, delaying votes and proposals by as much; after the freeze
    they scan only what the node allocated since."""
    gc.collect()
    gc.freeze()


async def _housekeeping(router: GossipSub, interval_s: float) -> None:
    """Bound gossipsub's per-message delivery log (it grows when adaptive gossip is off)."""
    while True:
        await trio.sleep(interval_s)
        router.recent_message_deliveries.clear()


@asynccontextmanager
async def open_host(keys: NodeKeys, config: HostConfig,
                    directory: ValidatorDirectory | None = None) -> AsyncIterator[RunningHost]:
    """Start host, pubsub and peer keeper; dial the bootstrap peers; stop all on exit.

    Inbound connections pass an InboundGate bounded by `config.max_peers`; `directory` tells
    it who the current validators are (without one, every peer counts as an outsider)."""
    settings = config.gossip
    pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = settings.subscription_channel_size
    bootstrap = [parse_peer_addr(a) for a in config.bootstrap]
    drops = DropCounters()
    host = build_host(keys, config)
    gate = InboundGate(
        config.max_peers, config.max_pending_handshakes,
        (lambda peer: directory.address_of(peer) is not None) if directory is not None else (lambda peer: False),
        (lambda: len(directory)) if directory is not None else (lambda: 0), drops)
    install_inbound_gate(host, gate, config.handshake_timeout_s)
    pubsub, router = build_pubsub(host, settings, drops)
    keeper = PeerKeeper(host, config)
    # Services outside, host.run innermost: the other nesting raised "Nursery is closed to
    # new arrivals" on exit under traffic.
    async with background_trio_service(pubsub), background_trio_service(router):
        async with host.run([multiaddr.Multiaddr(config.listen)]), trio.open_nursery() as nursery:
            await pubsub.wait_until_ready()
            freeze_startup_heap()
            for peer in bootstrap:
                keeper.add_target(peer)
            nursery.start_soon(keeper.run)
            nursery.start_soon(_housekeeping, router, settings.housekeeping_interval_s)
            try:
                yield RunningHost(host, pubsub, router, keeper, settings, drops, gate)
            finally:
                nursery.cancel_scope.cancel()
