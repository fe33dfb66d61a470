"""Consensus links: one long-lived direct stream per validator peer, varint-framed envelopes.

Measured in py-libp2p 0.8.1 (knowledge/py-libp2p.md, bench/p2p_throughput.py): a direct
stream carries 4-5x the messages/s of gossipsub, each vote reaches its peer in one hop with
no duplicate transmissions, and the sender sees each peer's queue. Consensus traffic (a few
small messages per step, all-to-all among validators) therefore uses links; gossipsub is kept
for the events topic, where batching makes the per-message cost irrelevant.

Each node opens its own outbound stream to every connected validator and only writes on it;
it reads the streams the others opened. Per peer, frames wait in a bounded queue; a full
queue or a missing link counts a drop for that peer (consensus recovers lost messages by
rebroadcast and catch-up, and a slow peer must not stall the others).

The links also carry a signed peer exchange every few seconds: each validator states its
own listen addresses and the validator addresses it knows, so nodes started with one
bootstrap address find the whole validator set. Only validators' statements are accepted
and only addresses of validator peer ids are kept.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import multiaddr
import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from p2p.envelope import (
    DropReason,
    EnvelopeDropped,
    MessageKind,
    ValidatorDirectory,
    open_envelope,
    seal,
)
from p2p.framing import FrameError, FrameReader, encode_frame, reset_quietly
from p2p.host import MAX_ADDRS_PER_PEER, RunningHost
from p2p.keys import NodeKeys

logger = logging.getLogger(__name__)

CONSENSUS_PROTOCOL = TProtocol("/devsen/consensus/1.0.0")
MAX_CONSENSUS_FRAME_BYTES = 8 * 1024 * 1024  # a proposal carries a whole block
MAX_PEER_EXCHANGE_ENTRIES = 256
LINK_RETRY_MIN_S = 0.2  # a link that failed to open is retried after this, doubling...
LINK_RETRY_MAX_S = 2.0  # ...up to this (the connection itself is the keeper's business)
LINKS_CHECK_S = 0.2  # links are looked after this often while a validator has none...
LINKS_IDLE_CHECK_S = 1.0  # ...and this often once every validator is linked

MessageHandler = Callable[[bytes, bytes], Awaitable[None]]


class ConsensusLinks:
    """Direct framed streams among validators for consensus messages and peer exchange."""

    def __init__(
        self,
        running: RunningHost,
        keys: NodeKeys,
        network_id: bytes,
        directory: ValidatorDirectory,
        on_message: MessageHandler,
        *,
        queue_frames: int = 256,
        open_timeout_s: float = 5.0,
        peer_exchange_interval_s: float = 2.0,
    ) -> None:
        self._running = running
        self._keys = keys
        self._network_id = network_id
        self._directory = directory
        self._on_message = on_message
        self._queue_frames = queue_frames
        self._open_timeout_s = open_timeout_s
        self._px_interval_s = peer_exchange_interval_s
        self._links: dict[bytes, trio.MemorySendChannel[bytes]] = {}
        self._opening: set[bytes] = set()
        # Per peer whose link failed to open: (earliest next attempt, current backoff).
        self._retry: dict[bytes, tuple[float, float]] = {}
        self._own_addrs: dict[bytes, list[str]] = {}
        self.drops = running.drops
        self.sent_frames = 0
        self.received_frames = 0

    # -- sending -----------------------------------------------------------------------

    def linked_validators(self) -> list[bytes]:
        """Validator addresses we currently have an outbound link to."""
        return sorted(
            a for a in (self._directory.address_of(p) for p in self._links) if a is not None
        )

    def max_queued(self) -> int:
        """The fullest per-peer send queue, in frames (for producers that pace themselves)."""
        return max((c.statistics().current_buffer_used for c in self._links.values()), default=0)

    def broadcast(self, body: bytes) -> int:
        """Send a consensus message to every other validator; returns how many got it queued."""
        frame = encode_frame(seal(self._keys.validator, self._network_id, MessageKind.CONSENSUS, body), MAX_CONSENSUS_FRAME_BYTES)
        queued = 0
        my_peer = self._running.peer_id.to_bytes()
        for peer in self._directory.peers():
            if peer != my_peer and self._enqueue(peer, frame):
                queued += 1
        return queued

    def send_to(self, address: bytes, body: bytes) -> bool:
        """Send a consensus message to one validator; False (and counted) if not queued."""
        peer = self._directory.peer_of(address)
        if peer is None:
            raise ValueError("not a validator address")
        frame = encode_frame(seal(self._keys.validator, self._network_id, MessageKind.CONSENSUS, body), MAX_CONSENSUS_FRAME_BYTES)
        return self._enqueue(peer, frame)

    def _enqueue(self, peer: bytes, frame: bytes) -> bool:
        channel = self._links.get(peer)
        if channel is None:
            self.drops.add("consensus_out", "no_link")
            return False
        try:
            channel.send_nowait(frame)
        except trio.WouldBlock:
            self.drops.add("consensus_out", "queue_full")
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.drops.add("consensus_out", "link_closed")
            return False
        return True

    async def _outbound_link(self, peer: bytes) -> None:
        """Open our stream to `peer` and write queued frames until it breaks."""
        peer_id = ID(peer)
        send, receive = trio.open_memory_channel[bytes](self._queue_frames)
        stream: INetStream | None = None
        opened = False
        try:
            with trio.fail_after(self._open_timeout_s):
                stream = await self._running.host.new_stream(peer_id, [CONSENSUS_PROTOCOL])
            self._links[peer] = send
            await stream.write(self._peer_exchange_frame())
            opened = True
            self._retry.pop(peer, None)
            async with receive:
                async for frame in receive:
                    await stream.write(frame)
                    self.sent_frames += 1
        except Exception as exc:  # the link broke or never opened; the manager retries
            if opened:
                logger.info("consensus link to %s ended: %r", peer_id, exc)
            else:  # retried with backoff; said once per run of failures
                _, backoff = self._retry.get(peer, (0.0, LINK_RETRY_MIN_S / 2))
                backoff = min(backoff * 2, LINK_RETRY_MAX_S)
                self._retry[peer] = (trio.current_time() + backoff, backoff)
                level = logging.INFO if backoff == LINK_RETRY_MIN_S else logging.DEBUG
                logger.log(level, "consensus link to %s did not open (%r); retrying with backoff", peer_id, exc)
        finally:
            if self._links.get(peer) is send:
                del self._links[peer]
            self._opening.discard(peer)
            if stream is not None:
                with trio.move_on_after(1):
                    await reset_quietly(stream)

    async def _manage_links(self, nursery: trio.Nursery) -> None:
        """Keep one outbound link per connected validator; push peer exchange periodically."""
        my_peer = self._running.peer_id.to_bytes()
        next_px = 0.0
        while True:
            validators = set(self._directory.peers())
            for peer in validators:
                if peer == my_peer or peer in self._links or peer in self._opening:
                    continue
                if self._retry.get(peer, (0.0, 0.0))[0] > trio.current_time():
                    continue
                if self._running.keeper.is_connected(ID(peer)):
                    self._opening.add(peer)
                    nursery.start_soon(self._outbound_link, peer)
            for peer in list(self._links):
                if peer not in validators:
                    self._links.pop(peer).close()  # no longer a validator
            for peer in list(self._retry):
                if peer not in validators:
                    del self._retry[peer]
            now = trio.current_time()
            if now >= next_px:
                next_px = now + self._px_interval_s
                frame = self._peer_exchange_frame()
                for peer in list(self._links):
                    self._enqueue(peer, frame)
            linked = all(p == my_peer or p in self._links for p in validators)
            await trio.sleep(LINKS_IDLE_CHECK_S if linked else LINKS_CHECK_S)

    # -- peer exchange -----------------------------------------------------------------

    def _peer_exchange_entries(self) -> dict[bytes, list[str]]:
        known: dict[bytes, list[str]] = {
            self._running.peer_id.to_bytes(): self._running.listen_addrs()[:MAX_ADDRS_PER_PEER]
        }
        for peer_id, addrs in self._running.keeper.known_addresses().items():
            if self._directory.address_of(peer_id.to_bytes()) is not None:
                known[peer_id.to_bytes()] = [str(a) for a in addrs[:MAX_ADDRS_PER_PEER]]
        for peer, addrs in self._own_addrs.items():
            known.setdefault(peer, addrs)
        return dict(list(known.items())[:MAX_PEER_EXCHANGE_ENTRIES])

    def _peer_exchange_frame(self, entries: dict[bytes, list[str]] | None = None) -> bytes:
        body = msgpack.packb(self._peer_exchange_entries() if entries is None else entries, use_bin_type=True)
        wire = seal(self._keys.validator, self._network_id, MessageKind.PEER_EXCHANGE, body)
        return encode_frame(wire, MAX_CONSENSUS_FRAME_BYTES)

    def _accept_peer_exchange(self, from_peer: bytes, body: bytes) -> None:
        try:
            entries = msgpack.unpackb(body, raw=False, max_map_len=MAX_PEER_EXCHANGE_ENTRIES, strict_map_key=False)
            assert isinstance(entries, dict)
        except Exception:
            self.drops.add("peer_exchange", DropReason.MALFORMED.value)
            return
        for peer, addrs in entries.items():
            if not isinstance(peer, bytes) or self._directory.address_of(peer) is None:
                continue
            if not isinstance(addrs, list):
                continue
            parsed = []
            for text in addrs[:MAX_ADDRS_PER_PEER]:
                try:
                    parsed.append(multiaddr.Multiaddr(str(text).split("/p2p/")[0]))
                except Exception:
                    continue
            if peer == from_peer:
                self._own_addrs[peer] = [f"{a}/p2p/{ID(peer).to_base58()}" for a in parsed]
            self._running.keeper.add_target(PeerInfo(ID(peer), parsed))

    # -- receiving ---------------------------------------------------------------------

    async def _handle_inbound(self, stream: INetStream) -> None:
        """Read a peer's outbound stream: envelopes of consensus and peer exchange."""
        remote = stream.muxed_conn.peer_id.to_bytes()
        if self._directory.address_of(remote) is None:
            self.drops.add("consensus_in", DropReason.NOT_VALIDATOR.value)
            await reset_quietly(stream)
            return
        reader = FrameReader(stream, MAX_CONSENSUS_FRAME_BYTES)
        try:
            while True:
                wire = await reader.read_frame()
                if wire is None:
                    return
                try:
                    envelope = open_envelope(
                        wire,
                        network_id=self._network_id,
                        kinds=(MessageKind.CONSENSUS, MessageKind.PEER_EXCHANGE),
                        directory=self._directory,
                        from_peer=remote,
                        max_body_bytes=MAX_CONSENSUS_FRAME_BYTES,
                    )
                except EnvelopeDropped as exc:
                    self.drops.add("consensus_in", exc.reason.value)
                    if exc.reason in (DropReason.WRONG_NETWORK, DropReason.NOT_VALIDATOR, DropReason.PEER_MISMATCH):
                        await reset_quietly(stream)
                        return
                    continue
                self.received_frames += 1
                if envelope.kind is MessageKind.PEER_EXCHANGE:
                    self._accept_peer_exchange(remote, envelope.body)
                else:
                    await self._on_message(envelope.sender, envelope.body)
        except FrameError as exc:
            self.drops.add("consensus_in", DropReason.MALFORMED.value)
            logger.info("bad frame from %s: %s", ID(remote), exc)
            await reset_quietly(stream)
        except Exception as exc:  # stream reset / connection lost: the peer redials
            logger.debug("consensus stream from %s ended: %s", ID(remote), exc)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve inbound links and keep outbound ones until cancelled."""
        self._running.host.set_stream_handler(CONSENSUS_PROTOCOL, self._handle_inbound)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._manage_links, nursery)
            task_status.started()

