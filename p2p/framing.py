"""Unsigned-varint length-prefixed frames, sans-I/O (bytes in, frames out), and a stream reader.

A frame is `uvarint(len(body)) || body`. The decoder refuses a declared length above its
bound before buffering the body, so a peer cannot make a node buffer more than
`max_frame_bytes` (+ one read) per stream.

The request/response protocols (p2p/relay.py, p2p/sync.py, p2p/snapshots.py: one stream per
request, one framed request, one framed answer) share `framed_request` (client) and
`read_request` (server), and `StreamSlots` for a server's concurrent streams.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import trio
from libp2p.network.stream.exceptions import StreamEOF

MAX_VARINT_BYTES = 10


class FrameError(ValueError):
    """The byte stream is not a valid frame sequence (bad varint, frame above its bound)."""


def encode_uvarint(value: int) -> bytes:
    """Unsigned LEB128 varint of a non-negative int."""
    if value < 0:
        raise ValueError("uvarint of a negative number")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_frame(body: bytes, max_frame_bytes: int) -> bytes:
    """`uvarint(len(body)) || body`; refuses a body above `max_frame_bytes`."""
    if len(body) > max_frame_bytes:
        raise FrameError(f"frame of {len(body)} bytes exceeds the bound {max_frame_bytes}")
    return encode_uvarint(len(body)) + body


class FrameDecoder:
    """Incremental frame decoder: `feed(data)` then `next_frame()` until it returns None."""

    def __init__(self, max_frame_bytes: int) -> None:
        assert max_frame_bytes > 0
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer)

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or None if more bytes are needed."""
        length = 0
        shift = 0
        for index, byte in enumerate(self._buffer):
            if index >= MAX_VARINT_BYTES:
                raise FrameError("varint length prefix too long")
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte & 0x80:
                continue
            if length > self.max_frame_bytes:
                raise FrameError(f"peer announced a {length}-byte frame (bound {self.max_frame_bytes})")
            start = index + 1
            if len(self._buffer) - start < length:
                return None
            body = bytes(self._buffer[start : start + length])
            del self._buffer[: start + length]
            return body
        if len(self._buffer) >= MAX_VARINT_BYTES:
            raise FrameError("varint length prefix too long")
        return None


class ReadableStream(Protocol):
    """What `FrameReader` needs: libp2p's INetStream.read."""

    async def read(self, n: int | None = None) -> bytes: ...


class FrameReader:
    """Reads whole frames from a libp2p stream; `None` at a clean end of stream."""

    READ_CHUNK = 64 * 1024

    def __init__(self, stream: ReadableStream, max_frame_bytes: int) -> None:
        self._stream = stream
        self._decoder = FrameDecoder(max_frame_bytes)

    async def read_frame(self) -> bytes | None:
        """The next frame; None when the stream ended between frames."""
        while True:
            frame = self._decoder.next_frame()
            if frame is not None:
                return frame
            try:
                data = await self._stream.read(self.READ_CHUNK)
            except StreamEOF:
                data = b""
            if not data:
                if self._decoder.buffered:
                    raise FrameError("stream ended inside a frame")
                return None
            self._decoder.feed(data)


class ResettableStream(Protocol):
    """A libp2p stream that can be reset."""

    async def reset(self) -> None: ...


async def reset_quietly(stream: ResettableStream) -> None:
    """Reset a stream, ignoring that it may already be closed or reset."""
    try:
        await stream.reset()
    except Exception:  # already closed or reset by the other side
        pass


class StreamSlots:
    """Concurrent inbound streams per peer and in all, bounded (a server's admission): `take`
    says which bound refused (None: taken; the caller resets the stream), `give_back` frees one."""

    def __init__(self, per_peer: int, total: int) -> None:
        assert per_peer >= 1 and total >= per_peer
        self.per_peer = per_peer
        self.total = total
        self._open: dict[bytes, int] = {}

    def take(self, peer: bytes) -> str | None:
        """"peer" when `peer` holds `per_peer` slots, "total" when all are held, else None (taken)."""
        if self._open.get(peer, 0) >= self.per_peer:
            return "peer"
        if sum(self._open.values()) >= self.total:
            return "total"
        self._open[peer] = self._open.get(peer, 0) + 1
        return None

    def give_back(self, peer: bytes) -> None:
        left = self._open.get(peer, 0) - 1
        if left > 0:
            self._open[peer] = left
        else:
            self._open.pop(peer, None)


class RequestFailed(Exception):
    """One framed request/response exchange failed: `kind` is "timeout", "closed" (the peer ended
    the stream without an answer) or "failed" (stream trouble, a frame above its bound, truncated)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class RequestStream(ReadableStream, ResettableStream, Protocol):
    """A client's stream: written, read, reset."""

    async def write(self, data: bytes) -> None: ...


async def framed_request(open_stream: Callable[[], Awaitable[RequestStream]], request: bytes, *,
                         max_request_bytes: int, max_answer_bytes: int, timeout_s: float) -> bytes:
    """The client side of the request/response protocols (relay, sync, snapshots): open a stream,
    write one frame, read one answer frame of at most `max_answer_bytes` (refused before it is
    buffered), all within `timeout_s`; the stream is reset after. Raises RequestFailed."""
    stream: RequestStream | None = None
    try:
        with trio.fail_after(timeout_s):
            stream = await open_stream()
            await stream.write(encode_frame(request, max_request_bytes))
            wire = await FrameReader(stream, max_answer_bytes).read_frame()
        if wire is None:
            raise RequestFailed("closed", "the peer closed the stream without an answer")
        return wire
    except trio.TooSlowError as exc:
        raise RequestFailed("timeout", f"no answer within {timeout_s:g} s") from exc
    except RequestFailed:
        raise
    except Exception as exc:  # stream/connection failures, frames over their bound, truncated frames
        raise RequestFailed("failed", f"{type(exc).__name__}: {exc}") from exc
    finally:
        if stream is not None:
            await reset_quietly(stream)


async def read_request(stream: ReadableStream, max_request_bytes: int, timeout_s: float) -> bytes | None:
    """The server side: the one request frame of a stream (None: it ended first), read within
    `timeout_s` (trio.TooSlowError) and at most `max_request_bytes` (FrameError)."""
    with trio.fail_after(timeout_s):
        return await FrameReader(stream, max_request_bytes).read_frame()
