"""Event batching, sans-I/O: payloads in, batches out when full (count or bytes) or due.

A gossip message costs ~1 ms of CPU per hop whatever its size, so many charger events ride
in one message. The caller supplies the clock (`now`, seconds) and asks `due(now)`.
"""

from __future__ import annotations

import msgpack

MAX_BATCH_WIRE_BYTES = 900 * 1024  # stays under py-libp2p's 1 MiB RPC limit with envelope + RPC


class BatchError(ValueError):
    """A payload or batch violates the batch bounds."""


def encode_batch(payloads: list[bytes]) -> bytes:
    """msgpack array of byte strings."""
    wire = msgpack.packb(payloads, use_bin_type=True)
    assert isinstance(wire, bytes)
    return wire


def decode_batch(wire: bytes, max_payloads: int) -> list[bytes]:
    """Inverse of `encode_batch`; refuses anything else or more than `max_payloads`."""
    try:
        payloads = msgpack.unpackb(wire, raw=False, use_list=True, max_array_len=max_payloads)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise BatchError(f"not a batch: {exc}") from exc
    if not isinstance(payloads, list) or not all(isinstance(p, bytes) for p in payloads):
        raise BatchError("a batch is an array of byte strings")
    return payloads


class Batcher:
    """Collects payloads; a batch closes at `max_count` payloads, `max_bytes`, or `max_delay_s`
    after its first payload."""

    def __init__(self, max_count: int, max_bytes: int, max_delay_s: float) -> None:
        assert 1 <= max_count and 1 <= max_bytes <= MAX_BATCH_WIRE_BYTES and max_delay_s >= 0
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.max_delay_s = max_delay_s
        self._payloads: list[bytes] = []
        self._bytes = 0
        self._opened_at: float | None = None

    def __len__(self) -> int:
        return len(self._payloads)

    def room_for(self, payload: bytes) -> bool:
        """Whether `payload` fits in the open batch without closing it first."""
        return (
            len(self._payloads) < self.max_count
            and self._bytes + len(payload) + 5 <= self.max_bytes
        )

    def add(self, payload: bytes, now: float) -> list[bytes] | None:
        """Add a payload; returns the closed previous batch if `payload` did not fit in it."""
        if len(payload) + 5 > self.max_bytes:
            raise BatchError(f"payload of {len(payload)} bytes exceeds the batch bound {self.max_bytes}")
        closed = None if self.room_for(payload) else self.take()
        if not self._payloads:
            self._opened_at = now
        self._payloads.append(payload)
        self._bytes += len(payload) + 5  # msgpack bin header is at most 5 bytes
        return closed

    def full(self) -> bool:
        """Whether the open batch has reached its count bound."""
        return len(self._payloads) >= self.max_count

    def deadline(self) -> float | None:
        """When the open batch is due, None if empty."""
        return None if self._opened_at is None else self._opened_at + self.max_delay_s

    def due(self, now: float) -> bool:
        """Whether the open batch should be sent now."""
        deadline = self.deadline()
        return self.full() or (deadline is not None and now >= deadline)

    def take(self) -> list[bytes]:
        """Close and return the open batch (possibly empty)."""
        payloads, self._payloads, self._bytes, self._opened_at = self._payloads, [], 0, None
        return payloads
