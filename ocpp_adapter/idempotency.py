"""Adapter-side idempotency: one submission per charger message, shared by its retries.

Keyed by `ChargerEvent.dedup_key`. Each submission runs as a task of the server's own
nursery, not of the connection that received it: a charger that reconnects and retries
while the first submission is still in flight awaits that same submission instead of
submitting twice, and the first is not cancelled with the old connection. A finished
outcome (reply or permanent rejection) is remembered in a bounded LRU for `ttl` seconds (OCPP
retries come within minutes; chargers that restart their message-id counter after a reboot
must not get a stale Heartbeat time); transient failures (overload, timeout, ingest bug)
are forgotten at once, so the next retry submits afresh.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from ocpp_adapter.bounded import LruMap
from ocpp_adapter.events import ChargerEvent
from ocpp_adapter.ingest import IngestOverloaded, IngestRejected, IngestResult

log = logging.getLogger("ocpp_adapter.idempotency")

Submit = Callable[[ChargerEvent], Awaitable[IngestResult]]


class SubmissionFailed(Exception):
    """The submission ended without a decision (timeout or ingest failure); retry later."""


# What a decided entry holds as `done` once its waiters are woken: one shared, set Event instead
# of one per entry (~280 of an entry's ~740 bytes; the cache keeps up to `capacity` entries).
_DECIDED = trio.Event()
_DECIDED.set()


@dataclass(slots=True)
class _Entry:
    done: trio.Event = field(default_factory=trio.Event)
    result: IngestResult | None = None
    rejected: IngestRejected | None = None
    transient: Exception | None = None
    decided_at: float = 0.0


class ReplyCache:
    """Bounded map dedup_key -> outcome, with in-flight sharing and a cap on submissions.

    At most `capacity` entries, and decided ones are dropped once older than `ttl` (checked
    from the least recently used end at every new submission): the cache holds about
    `ttl` seconds of messages, not `capacity` of them, at ordinary rates."""

    def __init__(self, capacity: int, max_in_flight: int, ttl: float = 600.0) -> None:
        assert max_in_flight > 0 and ttl > 0
        self._entries: LruMap[bytes, _Entry] = LruMap(capacity)
        self.ttl = ttl
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def submit_once(
        self, event: ChargerEvent, submit: Submit, nursery: trio.Nursery, timeout: float
    ) -> IngestResult:
        """The outcome for `event`, submitting it (in `nursery`, within `timeout`) only if
        no equal message is known or in flight.

        Raises IngestRejected (remembered), IngestOverloaded or SubmissionFailed (forgotten).
        """
        key = event.dedup_key
        now = trio.current_time()
        entry = self._entries.get(key)
        if entry is not None and entry.done.is_set() and now - entry.decided_at > self.ttl:
            self._entries.pop(key)
            entry = None
        if entry is None:
            if self.in_flight >= self.max_in_flight:
                raise IngestOverloaded(f"{self.in_flight} submissions in flight at this endpoint")
            self._expire(now)
            entry = _Entry()
            self._entries.put(key, entry)
            self.in_flight += 1
            nursery.start_soon(self._run, key, entry, event, submit, timeout)
        await entry.done.wait()
        if entry.result is not None:
            return entry.result
        if entry.rejected is not None:
            raise entry.rejected
        if isinstance(entry.transient, IngestOverloaded):
            raise entry.transient
        raise SubmissionFailed(str(entry.transient or "no decision"))

    def _expire(self, now: float) -> None:
        """Drop decided entries older than `ttl` from the least recently used end (stops at the
        first one in flight or still fresh: each entry is dropped once, so O(1) amortized)."""
        while (oldest := self._entries.oldest()) is not None:
            key, entry = oldest
            if not entry.done.is_set() or now - entry.decided_at <= self.ttl:
                return
            self._entries.pop(key)

    async def _run(self, key: bytes, entry: _Entry, event: ChargerEvent, submit: Submit, timeout: float) -> None:
        """Never raises (it runs in the server's nursery)."""
        try:
            with trio.move_on_after(timeout):
                try:
                    entry.result = await submit(event)
                except IngestRejected as exc:
                    entry.rejected = exc
                except IngestOverloaded as exc:
                    entry.transient = exc
                except Exception as exc:
                    log.exception("ingest failed on %s from %s", event.action, event.charger_id)
                    entry.transient = exc
            if entry.result is None and entry.rejected is None and entry.transient is None:
                entry.transient = SubmissionFailed(f"not decided within {timeout:g}s")
        finally:
            entry.decided_at = trio.current_time()
            self.in_flight -= 1
            if entry.result is None and entry.rejected is None and self._entries.get(key) is entry:
                self._entries.pop(key)
            entry.done.set()
            entry.done = _DECIDED
