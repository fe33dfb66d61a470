"""Bounded mempool of opaque payloads waiting for a block.

Deduplicated by payload hash (keccak-256; for a payload that is one charger event this is
its event id), bounded in count and bytes: a full pool raises `MempoolFull`, which the
submitter passes back (OCPP: retry later); nothing is dropped silently. Reaping is fair
across sources (round-robin over submitters, FIFO within each), so one flooding source
cannot starve the others. Payloads leave the pool when committed; their hashes are
remembered (bounded) so a late duplicate is not proposed again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from consensus.signing import keccak256
from consensus.types import MAX_PAYLOAD_BYTES

DEFAULT_MAX_COUNT = 100_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_COMMITTED_MEMORY = 200_000


class MempoolFull(Exception):
    """The pool is at its count or byte bound; the payload was not taken."""


class Mempool:
    """Pending payloads by source, FIFO per source; see the module docstring."""

    def __init__(
        self,
        max_count: int = DEFAULT_MAX_COUNT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        committed_memory: int = DEFAULT_COMMITTED_MEMORY,
    ) -> None:
        assert max_count > 0 and max_bytes >= MAX_PAYLOAD_BYTES and committed_memory > 0
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.committed_memory = committed_memory
        self._by_source: OrderedDict[str, OrderedDict[bytes, bytes]] = OrderedDict()
        self._source_of: dict[bytes, str] = {}
        self._committed: OrderedDict[bytes, None] = OrderedDict()
        self.total_bytes = 0

    def __len__(self) -> int:
        return len(self._source_of)

    def __contains__(self, payload_hash: object) -> bool:
        return payload_hash in self._source_of

    def add(self, payload: bytes, source: str = "") -> bool:
        """Take `payload`; False if it is already pending or recently committed.

        Raises MempoolFull when a bound would be exceeded, ValueError for an empty or
        oversize payload.
        """
        if not isinstance(payload, bytes) or not payload:
            raise ValueError("a payload is non-empty bytes")
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload of {len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}")
        digest = keccak256(payload)
        if digest in self._source_of or digest in self._committed:
            return False
        if len(self._source_of) >= self.max_count:
            raise MempoolFull(f"mempool holds its maximum of {self.max_count} payloads")
        if self.total_bytes + len(payload) > self.max_bytes:
            raise MempoolFull(f"mempool holds its maximum of {self.max_bytes} bytes")
        self._by_source.setdefault(source, OrderedDict())[digest] = payload
        self._source_of[digest] = source
        self.total_bytes += len(payload)
        return True

    def reap(self, max_count: int, max_bytes: int) -> tuple[bytes, ...]:
        """Up to `max_count` payloads / `max_bytes` bytes, round-robin over sources, FIFO each.

        Payloads stay in the pool until `remove_committed`.
        """
        assert max_count >= 0 and max_bytes >= 0
        iterators = [iter(queue.values()) for queue in self._by_source.values()]
        chosen: list[bytes] = []
        size = 0
        while iterators and len(chosen) < max_count:
            still: list = []
            for it in iterators:
                if len(chosen) >= max_count:
                    break
                payload = next(it, None)
                if payload is None or size + len(payload) > max_bytes:
                    continue  # this source is exhausted or its next payload does not fit
                chosen.append(payload)
                size += len(payload)
                still.append(it)
            iterators = still
        assert size <= max_bytes and len(chosen) <= max_count
        return tuple(chosen)

    def remove_committed(self, payloads: Iterable[bytes]) -> int:
        """Drop committed payloads and remember their hashes; returns how many were pending."""
        removed = 0
        for payload in payloads:
            digest = keccak256(payload)
            self._committed[digest] = None
            self._committed.move_to_end(digest)
            source = self._source_of.pop(digest, None)
            if source is not None:
                queue = self._by_source[source]
                del queue[digest]
                if not queue:
                    del self._by_source[source]
                self.total_bytes -= len(payload)
                removed += 1
        while len(self._committed) > self.committed_memory:
            self._committed.popitem(last=False)
        assert self.total_bytes >= 0
        return removed

    def is_committed(self, payload_hash: bytes) -> bool:
        """True if the payload was committed recently (within `committed_memory`)."""
        return payload_hash in self._committed
