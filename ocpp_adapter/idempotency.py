"""Adapter-side idempotency: one submission per charger message, shared by its retries.

Keyed by `ChargerEvent.dedup_key`. A retry that arrives while the first submission is
still in flight awaits the same outcome instead of submitting again; a finished outcome
(reply or permanent rejection) is remembered in a bounded LRU. Transient failures
(overload, timeout, cancellation) are not remembered, so the next retry submits afresh.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from ocpp_adapter.bounded import LruMap
from ocpp_adapter.events import ChargerEvent
from ocpp_adapter.ingest import IngestRejected, IngestResult


class SubmissionAborted(Exception):
    """The first submission of this message failed transiently; the retry should resubmit."""


@dataclass(slots=True)
class _Entry:
    done: trio.Event = field(default_factory=trio.Event)
    result: IngestResult | None = None
    rejected: IngestRejected | None = None


class ReplyCache:
    """Bounded map dedup_key -> outcome, with in-flight sharing."""

    def __init__(self, capacity: int) -> None:
        self._entries: LruMap[bytes, _Entry] = LruMap(capacity)

    def __len__(self) -> int:
        return len(self._entries)

    async def submit_once(
        self, event: ChargerEvent, submit: Callable[[ChargerEvent], Awaitable[IngestResult]]
    ) -> IngestResult:
        """Return the outcome for `event`, calling `submit` only if no equal message is
        known or in flight. Raises IngestRejected (remembered), or whatever `submit`
        raised transiently (then forgotten); waiters on a failed first attempt get
        SubmissionAborted."""
        key = event.dedup_key
        entry = self._entries.get(key)
        if entry is not None:
            await entry.done.wait()
            if entry.rejected is not None:
                raise entry.rejected
            if entry.result is None:
                raise SubmissionAborted("the first submission of this message failed; retry")
            return entry.result
        entry = _Entry()
        self._entries.put(key, entry)
        try:
            entry.result = await submit(event)
            return entry.result
        except IngestRejected as exc:
            entry.rejected = exc
            raise
        finally:
            if entry.result is None and entry.rejected is None and self._entries.get(key) is entry:
                self._entries.pop(key)
            entry.done.set()
