"""Block sync: request committed blocks (with their certificates) by height range.

Request/response over a fresh stream per call (catch-up is rare; ~7 ms per stream is fine):
the client writes one framed SYNC_REQUEST envelope `[from_height, to_height]`, the server
answers one framed SYNC_RESPONSE envelope `[latest_height, [record, ...]]` and closes.
Records are opaque bytes from the server's block store (block + certificate, as the
consensus layer encodes them); the client verifies them with the consensus core before use.

Bounds: at most `MAX_SYNC_BLOCKS` records and `MAX_SYNC_RESPONSE_BYTES` per response (the
first record is always sent if it alone fits a frame); the client asks again from where
the answer stopped. Only validators are served and only validators are believed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from p2p.envelope import (
    DropReason,
    EnvelopeDropped,
    MessageKind,
    ValidatorDirectory,
    open_envelope,
    seal,
)
from p2p.framing import (
    RequestFailed,
    StreamSlots,
    encode_frame,
    framed_request,
    read_request,
    reset_quietly,
)
from p2p.host import RunningHost
from p2p.keys import NodeKeys

logger = logging.getLogger(__name__)

SYNC_PROTOCOL = TProtocol("/devsen/sync/1.0.0")
MAX_SYNC_BLOCKS = 64
MAX_SYNC_RESPONSE_BYTES = 8 * 1024 * 1024
MAX_SYNC_FRAME_BYTES = MAX_SYNC_RESPONSE_BYTES + 64 * 1024
MAX_REQUEST_BYTES = 256
MAX_OUTSIDER_STREAMS_PER_PEER = 1  # a full node's concurrent sync requests to one validator
MAX_OUTSIDER_STREAMS = 8  # all full nodes' concurrent sync requests to one validator

# (from_height, to_height) inclusive -> records in height order, starting at from_height,
# possibly fewer than asked; and the server's latest committed height.
BlockSource = Callable[[int, int], Sequence[bytes]]
LatestHeight = Callable[[], int]


class SyncError(Exception):
    """A sync request failed: peer unreachable, refused, malformed or oversized answer."""


class BlockSyncServer:
    """Answers sync requests from validators out of the local block store."""

    def __init__(
        self,
        running: RunningHost,
        keys: NodeKeys,
        network_id: bytes,
        directory: ValidatorDirectory,
        block_source: BlockSource,
        latest_height: LatestHeight,
    ) -> None:
        self._running = running
        self._keys = keys
        self._network_id = network_id
        self._directory = directory
        self._block_source = block_source
        self._latest_height = latest_height
        self.served_requests = 0
        self.served_outsiders = 0
        self.drops = running.drops
        self._outsiders = StreamSlots(MAX_OUTSIDER_STREAMS_PER_PEER, MAX_OUTSIDER_STREAMS)

    def install(self) -> None:
        """Register the stream handler."""
        self._running.host.set_stream_handler(SYNC_PROTOCOL, self._handle)

    def answer(self, from_height: int, to_height: int) -> bytes:
        """The bounded response body for a request (pure apart from the block source)."""
        records: list[bytes] = []
        total = 0
        if 0 <= from_height <= to_height:
            last = min(to_height, from_height + MAX_SYNC_BLOCKS - 1)
            for record in self._block_source(from_height, last):
                if records and total + len(record) > MAX_SYNC_RESPONSE_BYTES:
                    break
                if len(record) > MAX_SYNC_RESPONSE_BYTES:
                    break
                records.append(record)
                total += len(record)
        body = msgpack.packb([self._latest_height(), records], use_bin_type=True)
        assert isinstance(body, bytes)
        return body

    def _admit_outsider(self, remote: bytes) -> bool:
        """Full (non-validator) nodes sync too, bounded: one request at a time per peer and
        MAX_OUTSIDER_STREAMS in all (a validator's requests are never counted against these)."""
        refused = self._outsiders.take(remote)
        if refused is not None:
            self.drops.add("sync_in", "outsider_busy" if refused == "peer" else "outsiders_full")
            return False
        return True

    async def _handle(self, stream: INetStream) -> None:
        remote = stream.muxed_conn.peer_id.to_bytes()
        if self._directory.address_of(remote) is not None:
            await self._serve(stream, remote, self._directory)
            return
        if not self._admit_outsider(remote):
            await reset_quietly(stream)
            return
        try:
            await self._serve(stream, remote, None)
            self.served_outsiders += 1
        finally:
            self._outsiders.give_back(remote)

    async def _serve(self, stream: INetStream, remote: bytes, directory: ValidatorDirectory | None) -> None:
        """Answer one request; `directory` None: an outsider, whose envelope must be signed by
        the key it names (bound to nothing: it asks for public, certified blocks only)."""
        try:
            wire = await read_request(stream, MAX_REQUEST_BYTES + 256, 10)
            if wire is None:
                return
            with trio.fail_after(10):
                envelope = open_envelope(
                    wire,
                    network_id=self._network_id,
                    kinds=(MessageKind.SYNC_REQUEST,),
                    directory=directory if directory is not None else _self_bound(wire, remote),
                    from_peer=remote,
                    max_body_bytes=MAX_REQUEST_BYTES,
                )
                request = msgpack.unpackb(envelope.body, raw=False)
                if not (isinstance(request, list) and len(request) == 2 and all(isinstance(h, int) for h in request)):
                    raise EnvelopeDropped(DropReason.MALFORMED, "sync request shape")
                body = self.answer(request[0], request[1])
                reply = seal(self._keys.validator, self._network_id, MessageKind.SYNC_RESPONSE, body)
                await stream.write(encode_frame(reply, MAX_SYNC_FRAME_BYTES))
                self.served_requests += 1
                await stream.close()
        except EnvelopeDropped as exc:
            self.drops.add("sync_in", exc.reason.value)
            await reset_quietly(stream)
        except Exception as exc:  # the requester went away, or garbage: drop the stream
            self.drops.add("sync_in", "stream_error")
            logger.debug("sync request from %s failed: %s", ID(remote), exc)
            await reset_quietly(stream)


def _self_bound(wire: bytes, remote: bytes) -> ValidatorDirectory:
    """A one-entry directory binding the sender an outsider's envelope names to its own peer
    id, so `open_envelope` still checks its shape, network, kind, size and signature."""
    try:
        fields = msgpack.unpackb(wire, raw=False)
        sender = fields[3] if isinstance(fields, list) and len(fields) == 6 else None
    except Exception:  # garbage: open_envelope refuses it with the reason
        sender = None
    return ValidatorDirectory({sender: remote} if isinstance(sender, bytes) and len(sender) == 20 else {})


async def fetch_blocks(
    running: RunningHost,
    keys: NodeKeys,
    network_id: bytes,
    directory: ValidatorDirectory,
    peer: bytes,
    from_height: int,
    to_height: int,
    *,
    timeout_s: float = 10.0,
) -> tuple[int, list[bytes]]:
    """Ask validator peer `peer` for records `from_height..to_height`; (its latest, records)."""
    if directory.address_of(peer) is None:
        raise SyncError("sync only from validators")
    request = msgpack.packb([from_height, to_height], use_bin_type=True)
    assert isinstance(request, bytes)
    try:
        wire = await framed_request(lambda: running.host.new_stream(ID(peer), [SYNC_PROTOCOL]),
                                    seal(keys.validator, network_id, MessageKind.SYNC_REQUEST, request),
                                    max_request_bytes=MAX_REQUEST_BYTES + 256, max_answer_bytes=MAX_SYNC_FRAME_BYTES,
                                    timeout_s=timeout_s)
        envelope = open_envelope(
            wire,
            network_id=network_id,
            kinds=(MessageKind.SYNC_RESPONSE,),
            directory=directory,
            from_peer=peer,
            max_body_bytes=MAX_SYNC_FRAME_BYTES,
        )
        answer: Any = msgpack.unpackb(envelope.body, raw=False)
        if not (
            isinstance(answer, list)
            and len(answer) == 2
            and isinstance(answer[0], int)
            and isinstance(answer[1], list)
            and len(answer[1]) <= MAX_SYNC_BLOCKS
            and all(isinstance(r, bytes) for r in answer[1])
        ):
            raise SyncError("malformed sync answer")
        return answer[0], answer[1]
    except RequestFailed as exc:
        raise SyncError(f"sync from {ID(peer)}: {exc}") from exc
    except EnvelopeDropped as exc:
        raise SyncError(f"sync answer refused: {exc}") from exc
    except SyncError:
        raise
    except Exception as exc:  # msgpack garbage
        raise SyncError(f"sync from {ID(peer)}: malformed answer: {exc}") from exc

