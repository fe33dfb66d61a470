"""Relay: a full (non-validator) node hands the charger events it vouched for to a validator.

A full node has no consensus link and its gossip is refused (the envelope check admits
validators only), so it asks a validator directly, one stream per request
(`/devsen/relay/1.0.0`): the client writes one frame `[network_id, [payload, ...]]`, the
validator answers `["ok", [verdict, ...]]` (a verdict per payload: None = pooled, else why not,
at most MAX_REASON_CHARS) and closes. No envelope: every payload is self-authenticating (the
operator's vouch signature, checked by the validator's admission with the operator registry at
its chain view), so the request needs no signer of its own.

Bounds (the validator's side): at most MAX_RELAY_PAYLOADS payloads and MAX_RELAY_BYTES per
request, read within RELAY_READ_TIMEOUT_S; MAX_RELAY_STREAMS_PER_PEER requests at a time per
peer and MAX_RELAY_STREAMS in all (more are reset unread, counted `relay_in/peer_busy` and
`relay_in/full`); what a request costs after that (signature recovery, mempool share per
voucher) is the handler's business.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from p2p.framing import (
    RequestFailed,
    StreamSlots,
    encode_frame,
    framed_request,
    read_request,
    reset_quietly,
)
from p2p.host import RunningHost

logger = logging.getLogger(__name__)

RELAY_PROTOCOL = TProtocol("/devsen/relay/1.0.0")
MAX_RELAY_PAYLOADS = 64
MAX_RELAY_BYTES = 512 * 1024
MAX_RELAY_FRAME_BYTES = MAX_RELAY_BYTES + 4 * 1024
MAX_ANSWER_FRAME_BYTES = 64 * 1024
MAX_REASON_CHARS = 200
MAX_RELAY_STREAMS_PER_PEER = 4
MAX_RELAY_STREAMS = 32
RELAY_READ_TIMEOUT_S = 10.0

# (peer id bytes, payloads) -> a verdict per payload: None if taken, else the reason
RelayHandler = Callable[[bytes, list[bytes]], Awaitable[list[str | None]]]


def relay_batch_length(sizes: list[int]) -> int:
    """How many of the leading payloads (of these byte lengths) one request carries: at most
    MAX_RELAY_PAYLOADS and MAX_RELAY_BYTES (each payload counted with its msgpack header); 0 if
    the first alone is too large. The request frame stays under MAX_RELAY_FRAME_BYTES."""
    total = 0
    for count, size in enumerate(sizes[:MAX_RELAY_PAYLOADS]):
        total += size + 5
        if total > MAX_RELAY_BYTES:
            return count
    return min(len(sizes), MAX_RELAY_PAYLOADS)


class RelayError(Exception):
    """A relay request failed: peer unreachable, refused, malformed or oversized answer."""


def decode_request(wire: bytes, network_id: bytes) -> list[bytes] | str:
    """The payloads of a request frame, or why it is refused (a drop reason)."""
    try:
        request = msgpack.unpackb(wire, raw=False)
    except Exception:
        return "malformed"
    if not (isinstance(request, list) and len(request) == 2 and isinstance(request[0], bytes)
            and isinstance(request[1], list)):
        return "malformed"
    if request[0] != network_id:
        return "wrong_network"
    payloads = request[1]
    if not 1 <= len(payloads) <= MAX_RELAY_PAYLOADS or not all(isinstance(p, bytes) and p for p in payloads):
        return "malformed"
    return payloads


class RelayServer:
    """Answers relay requests from any peer (bounded), through the node's `on_relayed`."""

    def __init__(self, running: RunningHost, network_id: bytes, on_relayed: RelayHandler) -> None:
        self._running = running
        self._network_id = network_id
        self._on_relayed = on_relayed
        self._slots = StreamSlots(MAX_RELAY_STREAMS_PER_PEER, MAX_RELAY_STREAMS)
        self.served = 0
        self.drops = running.drops

    def install(self) -> None:
        """Register the stream handler."""
        self._running.host.set_stream_handler(RELAY_PROTOCOL, self._handle)

    async def _handle(self, stream: INetStream) -> None:
        remote = stream.muxed_conn.peer_id.to_bytes()
        refused = self._slots.take(remote)
        if refused is not None:
            self.drops.add("relay_in", "peer_busy" if refused == "peer" else "full")
            await reset_quietly(stream)
            return
        try:
            wire = await read_request(stream, MAX_RELAY_FRAME_BYTES, RELAY_READ_TIMEOUT_S)
            if wire is None:
                return
            payloads = decode_request(wire, self._network_id)
            if isinstance(payloads, str):
                self.drops.add("relay_in", payloads)
                await reset_quietly(stream)
                return
            verdicts = await self._on_relayed(remote, payloads)
            answer = msgpack.packb(["ok", [v if v is None else v[:MAX_REASON_CHARS] for v in verdicts]],
                                   use_bin_type=True)
            assert isinstance(answer, bytes)
            await stream.write(encode_frame(answer, MAX_ANSWER_FRAME_BYTES))
            self.served += 1
            await stream.close()
        except Exception as exc:  # the requester went away, a slow or oversized frame: drop the stream
            self.drops.add("relay_in", "stream_error")
            logger.debug("relay request from %s failed: %s", ID(remote), exc)
            await reset_quietly(stream)
        finally:
            self._slots.give_back(remote)


async def relay_payloads(running: RunningHost, network_id: bytes, peer: bytes, payloads: list[bytes],
                         *, timeout_s: float = 10.0) -> list[str | None]:
    """Hand `payloads` to the validator at libp2p peer `peer`; its verdict per payload."""
    assert 1 <= relay_batch_length([len(p) for p in payloads]) == len(payloads), "over the request bounds"
    request = msgpack.packb([network_id, payloads], use_bin_type=True)
    assert isinstance(request, bytes)
    try:
        wire = await framed_request(lambda: running.host.new_stream(ID(peer), [RELAY_PROTOCOL]), request,
                                    max_request_bytes=MAX_RELAY_FRAME_BYTES, max_answer_bytes=MAX_ANSWER_FRAME_BYTES,
                                    timeout_s=timeout_s)
        answer: Any = msgpack.unpackb(wire, raw=False)
    except RequestFailed as exc:
        raise RelayError(f"relay to {ID(peer)}: {exc}") from exc
    except Exception as exc:  # msgpack garbage
        raise RelayError(f"relay to {ID(peer)}: malformed answer: {exc}") from exc
    if not (isinstance(answer, list) and len(answer) == 2 and answer[0] == "ok"
            and isinstance(answer[1], list) and len(answer[1]) == len(payloads)
            and all(v is None or isinstance(v, str) for v in answer[1])):
        raise RelayError("malformed relay answer")
    return [v if v is None else v[:MAX_REASON_CHARS] for v in answer[1]]
