"""State-sync transport: list a peer's snapshots and fetch their chunks over libp2p.

Request/response on `/devsen/snapshots/1.0.0`, one stream per request (a chunk is up to
1 MiB, so the ~7 ms of a new stream is small next to moving it). The client writes one
framed msgpack request, the server answers one framed msgpack response and closes:

    [network_id, "list"]                          -> ["ok", [offer, ...]]
    [network_id, "chunk", height, format, index]  -> ["ok", chunk] | ["none"]

An offer is `[height, format, chunks, hash, app_hash, metadata, [record, ...]]`: the
snapshot (consensus.abci.Snapshot) and the committed blocks the joining node needs to trust
it (block records as the block store keeps them, `height - 1 .. height + 1`). Nothing in an
answer is trusted: the joiner verifies the records' certificate and chain links, the chunk
hashes against the snapshot's metadata and the restored state against the certified app hash
(devsen/state_sync.py). Any peer may ask (full nodes join this way; what is served is public
and content-addressed), so the server is bounded instead: MAX_STREAMS_PER_PEER concurrent
requests per peer and MAX_STREAMS_TOTAL overall (extra streams are reset unread), a request
of at most MAX_REQUEST_BYTES within REQUEST_TIMEOUT_S.

`ChunkFetcher` moves one snapshot's chunks from several peers at once: at most `per_peer`
requests in flight per peer, each bounded by `timeout_s`; a chunk whose hash is not the one
expected, or that is oversized, bans its peer at once (it served hostile bytes) and the chunk
is fetched from another; a peer that times out or fails is struck and banned after
`max_strikes`. Chunks already held (a resumed fetch) are skipped.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack
import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from consensus.abci import Snapshot
from p2p.framing import (
    RequestFailed,
    StreamSlots,
    encode_frame,
    framed_request,
    read_request,
    reset_quietly,
)
from p2p.host import RunningHost
from primitives.hashing import keccak256

logger = logging.getLogger(__name__)

SNAPSHOT_PROTOCOL = TProtocol("/devsen/snapshots/1.0.0")
MAX_CHUNK_BYTES = 1 << 20  # devsen.app.SNAPSHOT_CHUNK_BYTES: a longer chunk is refused
MAX_REQUEST_BYTES = 256
MAX_OFFERS = 3  # snapshots one list answer may carry (the app keeps 3)
MAX_OFFER_RECORDS = 3
MAX_LIST_BYTES = 16 * 1024 * 1024  # 3 offers of <= 4096 chunk hashes and 3 blocks each
MAX_CHUNK_FRAME_BYTES = MAX_CHUNK_BYTES + 1024
MAX_STREAMS_PER_PEER = 4
MAX_STREAMS_TOTAL = 32
REQUEST_TIMEOUT_S = 10.0


class SnapshotFetchError(Exception):
    """A list or chunk request failed: unreachable, refused, timed out or malformed."""


class SnapshotSource(Protocol):
    """What a serving node offers: its kept snapshots, the block records that let a joiner trust
    one, and chunks. `snapshots` and `chunk` read files and are called in a worker thread (they
    must not touch state the event loop mutates); `records` is called on the event loop."""

    def snapshots(self) -> Sequence[Snapshot]: ...

    def records(self, from_height: int, to_height: int) -> Sequence[bytes]: ...

    def chunk(self, height: int, format: int, index: int) -> bytes | None: ...


def trusted_offers(snapshots: Sequence[Snapshot], records: Callable[[int, int], Sequence[bytes]]
                   ) -> list[tuple[Snapshot, Sequence[bytes]]]:
    """Each snapshot S with the blocks S-1, S and S+1 a joining node needs to trust it (offered
    once block S+1 is stored), at most MAX_OFFERS."""
    out: list[tuple[Snapshot, Sequence[bytes]]] = []
    for snapshot in snapshots:
        blocks = records(snapshot.height - 1, snapshot.height + 1)
        if len(blocks) == 3:
            out.append((snapshot, blocks))
            if len(out) == MAX_OFFERS:
                break
    return out


@dataclass(frozen=True, slots=True)
class Offer:
    """One peer's snapshot offer (untrusted) and the block records that come with it."""

    snapshot: Snapshot
    records: tuple[bytes, ...]


def _pack(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


class SnapshotServer:
    """Serves `source` on SNAPSHOT_PROTOCOL to any peer, bounded per peer and overall."""

    def __init__(self, running: RunningHost, network_id: bytes, source: SnapshotSource) -> None:
        self._running = running
        self._network_id = network_id
        self._source = source
        self._slots = StreamSlots(MAX_STREAMS_PER_PEER, MAX_STREAMS_TOTAL)
        self.served: Counter[str] = Counter()
        self.drops = running.drops

    def install(self) -> None:
        self._running.host.set_stream_handler(SNAPSHOT_PROTOCOL, self._handle)

    async def answer(self, request: Any) -> bytes:
        """The response to a decoded request; raises ValueError. The snapshot files are read in a
        worker thread, never on the event loop (a chunk is up to MAX_CHUNK_BYTES)."""
        if not (isinstance(request, list) and len(request) >= 2 and request[0] == self._network_id):
            raise ValueError("not a request of this network")
        kind = request[1]
        if kind == "list" and len(request) == 2:
            offers = []
            snapshots = await trio.to_thread.run_sync(self._source.snapshots)
            for snapshot, records in trusted_offers(snapshots, self._source.records):
                offers.append([snapshot.height, snapshot.format, snapshot.chunks, snapshot.hash, snapshot.app_hash,
                               snapshot.metadata, list(records)[:MAX_OFFER_RECORDS]])
            self.served["list"] += 1
            return _pack(["ok", offers])
        if kind == "chunk" and len(request) == 5 and all(type(v) is int for v in request[2:]):
            chunk = await trio.to_thread.run_sync(self._source.chunk, request[2], request[3], request[4])
            self.served["chunk"] += 1
            return _pack(["none"] if chunk is None else ["ok", chunk])
        raise ValueError("unknown request")

    async def _handle(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id.to_bytes()
        if self._slots.take(peer) is not None:
            self.drops.add("snapshots_in", "busy")
            await reset_quietly(stream)
            return
        try:
            wire = await read_request(stream, MAX_REQUEST_BYTES, REQUEST_TIMEOUT_S)
            if wire is None:
                return
            body = await self.answer(msgpack.unpackb(wire, raw=False))
            with trio.fail_after(REQUEST_TIMEOUT_S):
                await stream.write(encode_frame(body, MAX_LIST_BYTES))
                await stream.close()
        except Exception as exc:  # garbage, too slow, or the requester went away
            self.drops.add("snapshots_in", "bad_request" if isinstance(exc, ValueError) else "stream_error")
            logger.debug("snapshot request from %s failed: %s", ID(peer), exc)
            await reset_quietly(stream)
        finally:
            self._slots.give_back(peer)


async def _request(running: RunningHost, peer: bytes, request: list[Any], max_bytes: int, timeout_s: float) -> Any:
    try:
        wire = await framed_request(lambda: running.host.new_stream(ID(peer), [SNAPSHOT_PROTOCOL]), _pack(request),
                                    max_request_bytes=MAX_REQUEST_BYTES, max_answer_bytes=max_bytes,
                                    timeout_s=timeout_s)
        return msgpack.unpackb(wire, raw=False)
    except RequestFailed as exc:
        raise SnapshotFetchError(f"snapshot request to {ID(peer)}: {exc}") from exc
    except Exception as exc:  # msgpack garbage
        raise SnapshotFetchError(f"snapshot request to {ID(peer)}: malformed answer: {exc}") from exc


async def list_offers(running: RunningHost, network_id: bytes, peer: bytes,
                      timeout_s: float = REQUEST_TIMEOUT_S) -> list[Offer]:
    """The snapshots `peer` offers (shape-checked only; nothing trusted)."""
    answer = await _request(running, peer, [network_id, "list"], MAX_LIST_BYTES, timeout_s)
    if not (isinstance(answer, list) and len(answer) == 2 and answer[0] == "ok" and isinstance(answer[1], list)
            and len(answer[1]) <= MAX_OFFERS):
        raise SnapshotFetchError("malformed list answer")
    offers = []
    for fields in answer[1]:
        try:
            height, format_, chunks, digest, app_hash, metadata, records = fields
            if not (all(type(v) is int for v in (height, format_, chunks))
                    and all(isinstance(v, bytes) for v in (digest, app_hash, metadata))
                    and isinstance(records, list) and len(records) <= MAX_OFFER_RECORDS
                    and all(isinstance(r, bytes) for r in records)):
                raise ValueError("field types")
        except (TypeError, ValueError) as exc:
            raise SnapshotFetchError(f"malformed snapshot offer: {exc}") from exc
        offers.append(Offer(Snapshot(height, format_, chunks, digest, app_hash, metadata), tuple(records)))
    return offers


class HostileChunk(SnapshotFetchError):
    """A peer served bytes that are not the chunk the snapshot lists (hostile or broken)."""


async def fetch_chunk(running: RunningHost, network_id: bytes, peer: bytes, height: int, format: int, index: int,
                      timeout_s: float = REQUEST_TIMEOUT_S) -> bytes:
    """Chunk `index` of `peer`'s snapshot at `height`; raises SnapshotFetchError (an oversized
    chunk is refused by the frame bound before it is buffered)."""
    answer = await _request(running, peer, [network_id, "chunk", height, format, index], MAX_CHUNK_FRAME_BYTES,
                            timeout_s)
    if isinstance(answer, list) and answer == ["none"]:
        raise SnapshotFetchError(f"{ID(peer)} has no chunk {index} of the snapshot at height {height}")
    if not (isinstance(answer, list) and len(answer) == 2 and answer[0] == "ok" and isinstance(answer[1], bytes)):
        raise SnapshotFetchError("malformed chunk answer")
    if len(answer[1]) > MAX_CHUNK_BYTES:
        raise HostileChunk(f"an oversized chunk of {len(answer[1])} bytes (bound {MAX_CHUNK_BYTES})")
    return answer[1]


ChunkGetter = Callable[[bytes, int], Awaitable[bytes]]  # (peer, index) -> chunk bytes


@dataclass(slots=True)
class PeerScore:
    """How a serving peer fared during one fetch."""

    served: int = 0
    strikes: int = 0
    banned: str = ""  # why, once banned


@dataclass(slots=True)
class ChunkFetcher:
    """Fetch every chunk of one snapshot from `peers` (see the module docstring)."""

    peers: Sequence[bytes]
    hashes: Sequence[bytes]  # the snapshot's chunk hashes, index order
    get: ChunkGetter
    per_peer: int = 2
    max_strikes: int = 3
    have: set[int] = field(default_factory=set)  # indices held already (resumed)
    scores: dict[bytes, PeerScore] = field(default_factory=dict)

    async def run(self, on_chunk: Callable[[int, bytes], Awaitable[None]], deadline_s: float = 600.0) -> None:
        """Fetch the missing chunks, handing each verified one to `on_chunk` (in completion
        order); raises SnapshotFetchError when every peer is banned or the deadline passes."""
        missing: deque[int] = deque(i for i in range(len(self.hashes)) if i not in self.have)
        failed_at: dict[int, set[bytes]] = {}
        for peer in self.peers:
            self.scores.setdefault(peer, PeerScore())
        wake = trio.Event()
        total = len(self.hashes)

        def live() -> list[bytes]:
            return [p for p in self.peers if not self.scores[p].banned]

        def next_for(peer: bytes) -> int | None:
            """The first missing chunk this peer has not failed, if another live peer could serve it."""
            others = [p for p in live() if p != peer]
            for _ in range(len(missing)):
                index = missing.popleft()
                if peer not in failed_at.get(index, set()) or not others:
                    return index
                missing.append(index)
            return None

        async def worker(peer: bytes) -> None:
            nonlocal wake
            score = self.scores[peer]
            while len(self.have) < total and not score.banned:
                index = next_for(peer)
                if index is None:  # the rest is in flight at other peers: wait for news
                    current = wake
                    await current.wait()
                    continue
                try:
                    chunk = await self.get(peer, index)
                    if len(chunk) > MAX_CHUNK_BYTES:
                        raise HostileChunk(f"an oversized chunk ({len(chunk)} bytes)")
                    if keccak256(chunk) != self.hashes[index]:
                        raise HostileChunk(f"chunk {index} does not hash as the snapshot lists")
                except SnapshotFetchError as exc:
                    failed_at.setdefault(index, set()).add(peer)
                    missing.append(index)
                    if isinstance(exc, HostileChunk):
                        score.banned = str(exc)
                    else:
                        score.strikes += 1
                        if score.strikes >= self.max_strikes:
                            score.banned = f"{score.strikes} failed requests, the last: {exc}"
                    if score.banned:
                        logger.warning("state sync: peer %s banned: %s", ID(peer), score.banned)
                    wake.set()
                    wake = trio.Event()
                    continue
                score.served += 1
                self.have.add(index)
                with trio.CancelScope(shield=True):  # the last chunk's apply ends the fetch: never cut it short
                    await on_chunk(index, chunk)
                wake.set()
                wake = trio.Event()

        with trio.move_on_after(deadline_s) as scope:
            async with trio.open_nursery() as nursery:
                async def watch() -> None:
                    nonlocal wake
                    while len(self.have) < total and live():
                        current = wake
                        await current.wait()
                    wake.set()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                for peer in self.peers:
                    for _ in range(self.per_peer):
                        nursery.start_soon(worker, peer)
        if scope.cancelled_caught and len(self.have) < total:
            raise SnapshotFetchError(f"state sync: {total - len(self.have)} chunks missing after {deadline_s:.0f} s")
        if len(self.have) < total:
            bans = {ID(p).to_base58(): s.banned for p, s in self.scores.items() if s.banned}
            raise SnapshotFetchError(f"state sync: {total - len(self.have)} chunks missing; every peer is banned: "
                                     f"{bans}")
