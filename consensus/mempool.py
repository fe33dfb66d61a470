"""Bounded mempool of opaque payloads waiting for a block.

Deduplicated by payload hash (keccak-256; for a payload that is one charger event this is
its event id), bounded in count and bytes. Every payload has a source: the accountable
origin (the peer that relayed it, "local" for this node's own submissions). The bounds are
shared fairly: while the pool has room anyone may fill it, but once it is full each of the n
active sources is entitled to bound/n payloads and bytes. A source within its share still
gets in, by evicting the newest payloads of whichever source is furthest over its share
(never a protected source such as "local", whose payloads a submitter is waiting on); a
source at or over its share gets `MempoolFull`, which the submitter passes back (OCPP:
retry later). So a flood only ever refuses or evicts the flooder. Independently of fullness,
`max_per_source` caps what one unprotected source may hold at all, so no single source ever
fills the pool. Reaping is fair across sources too (round-robin over submitters, FIFO within
each, at most `max_per_source` payloads of one source per block while the rest wait). Payloads
leave the pool when committed; their hashes are remembered (bounded) so a late duplicate is
not proposed again.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable, Iterator

from consensus.types import MAX_PAYLOAD_BYTES
from primitives.hashing import keccak256

DEFAULT_MAX_COUNT = 100_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_COMMITTED_MEMORY = 200_000
LOCAL_SOURCE = "local"  # this node's own submissions: refused at their share, never evicted


class MempoolFull(Exception):
    """The pool is full and the payload's source holds its share; the payload was not taken."""


class Mempool:
    """Pending payloads by source, FIFO per source; see the module docstring."""

    def __init__(
        self,
        max_count: int = DEFAULT_MAX_COUNT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        committed_memory: int = DEFAULT_COMMITTED_MEMORY,
        protected_sources: Iterable[str] = (LOCAL_SOURCE,),
        max_per_source: int | None = None,
    ) -> None:
        assert max_count > 0 and max_bytes >= MAX_PAYLOAD_BYTES and committed_memory > 0
        assert max_per_source is None or max_per_source > 0
        self.max_per_source = max_per_source  # payloads one unprotected source may hold, full or not
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.committed_memory = committed_memory
        self._by_source: OrderedDict[str, OrderedDict[bytes, bytes]] = OrderedDict()
        self._source_of: dict[bytes, str] = {}
        self._bytes_of: dict[str, int] = {}
        self._committed: OrderedDict[bytes, None] = OrderedDict()
        self.total_bytes = 0
        self.protected_sources = frozenset(protected_sources)
        self.evicted: dict[str, int] = {}  # per source: payloads evicted to make room for others

    def __len__(self) -> int:
        return len(self._source_of)

    def __contains__(self, payload_hash: object) -> bool:
        return payload_hash in self._source_of

    def add(self, payload: bytes, source: str = "") -> bool:
        """Take `payload` from `source`; False if it is already pending or recently committed.

        When the pool has room the payload is taken. When it is full, a source that stays within
        its fair share (bound / active sources, in count and in bytes) still gets in: the newest
        payloads of the sources furthest over their share make room (never a protected source's).
        Raises MempoolFull when `source` itself would exceed its share of a full pool (the flooder
        is refused) or hold more than `max_per_source`, ValueError for an empty or oversize payload.
        """
        if not isinstance(payload, bytes) or not payload:
            raise ValueError("a payload is non-empty bytes")
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload of {len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}")
        digest = keccak256(payload)
        if digest in self._source_of or digest in self._committed:
            return False
        if self.max_per_source is not None and source not in self.protected_sources:
            held = len(self._by_source.get(source, ()))
            if held >= self.max_per_source:
                raise MempoolFull(f"source {source!r} holds its maximum of {self.max_per_source} pending "
                                  "payloads; retry later")
        victims = self._make_room(source, len(payload))
        for victim in victims:
            evicted_from = self._drop(victim)
            self.evicted[evicted_from] = self.evicted.get(evicted_from, 0) + 1
        self._by_source.setdefault(source, OrderedDict())[digest] = payload
        self._source_of[digest] = source
        self._bytes_of[source] = self._bytes_of.get(source, 0) + len(payload)
        self.total_bytes += len(payload)
        assert len(self._source_of) <= self.max_count and self.total_bytes <= self.max_bytes
        return True

    def fair_share(self, source: str) -> tuple[int, int]:
        """(payloads, bytes) `source` may hold in a full pool: the bounds over the active sources."""
        active = len(self._by_source) + (source not in self._by_source)
        return self.max_count // active, self.max_bytes // active

    def usage(self, source: str) -> tuple[int, int]:
        """(payloads, bytes) `source` holds now."""
        return len(self._by_source.get(source, ())), self._bytes_of.get(source, 0)

    def _make_room(self, source: str, size: int) -> list[bytes]:
        """Hashes to evict so `size` more bytes from `source` fit; raises MempoolFull if it may not."""
        count_over = len(self._source_of) + 1 - self.max_count
        bytes_over = self.total_bytes + size - self.max_bytes
        if count_over <= 0 and bytes_over <= 0:
            return []
        share_count, share_bytes = self.fair_share(source)
        held_count, held_bytes = self.usage(source)
        if held_count + 1 > share_count or held_bytes + size > share_bytes:
            what = f"{self.max_count} payloads" if count_over > 0 else f"{self.max_bytes} bytes"
            raise MempoolFull(
                f"mempool holds its maximum of {what} and source {source!r} holds its share "
                f"({held_count}/{share_count} payloads, {held_bytes}/{share_bytes} bytes); retry later"
            )
        # Plan first (nothing changes if the plan fails): take the newest payloads of whichever
        # other, evictable source is furthest over its share in the dimension still short.
        usage = {s: [len(q), self._bytes_of[s]] for s, q in self._by_source.items()
                 if s != source and s not in self.protected_sources}
        cursors = {s: reversed(self._by_source[s]) for s in usage}
        victims: list[bytes] = []
        while count_over > 0 or bytes_over > 0:
            dim, share = (0, share_count) if count_over > 0 else (1, share_bytes)
            over = [s for s, u in usage.items() if u[dim] > share]
            if not over:
                raise MempoolFull("mempool is full and no source holds more than its share; retry later")
            victim_source = max(over, key=lambda s: (usage[s][dim], s))
            digest = next(cursors[victim_source])
            freed = len(self._by_source[victim_source][digest])
            usage[victim_source][0] -= 1
            usage[victim_source][1] -= freed
            count_over -= 1
            bytes_over -= freed
            victims.append(digest)
        return victims

    def _drop(self, digest: bytes) -> str:
        """Remove one pending payload; returns its source."""
        source = self._source_of.pop(digest)
        queue = self._by_source[source]
        payload = queue.pop(digest)
        self._bytes_of[source] -= len(payload)
        if not queue:
            del self._by_source[source]
            del self._bytes_of[source]
        self.total_bytes -= len(payload)
        return source

    def reap(self, max_count: int, max_bytes: int, per_source: int | None = None) -> tuple[bytes, ...]:
        """Up to `max_count` payloads / `max_bytes` bytes, round-robin over sources, FIFO each,
        and at most `per_source` payloads of any one source (its later payloads wait for the
        next block, so a flooding source gets its share of a block and honest sources theirs).

        Payloads stay in the pool until `remove_committed`.
        """
        assert max_count >= 0 and max_bytes >= 0 and (per_source is None or per_source >= 0)
        taken = max_count if per_source is None else min(max_count, per_source)
        iterators: list[Iterator[bytes]] = [itertools.islice(queue.values(), taken)
                                            for queue in self._by_source.values()]
        chosen: list[bytes] = []
        size = 0
        while iterators and len(chosen) < max_count:
            still: list[Iterator[bytes]] = []
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
            if digest in self._source_of:
                self._drop(digest)
                removed += 1
        while len(self._committed) > self.committed_memory:
            self._committed.popitem(last=False)
        assert self.total_bytes >= 0
        return removed

    def is_committed(self, payload_hash: bytes) -> bool:
        """True if the payload was committed recently (within `committed_memory`)."""
        return payload_hash in self._committed
