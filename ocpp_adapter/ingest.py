"""The boundary between the OCPP endpoint and whatever decides outcomes (the node's ledger).

The adapter calls `Ingest.submit(event)` and awaits an `IngestResult`; it never decides a
business outcome itself. In the node, `submit` returns only after the event is committed
by consensus and applied to the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ocpp_adapter.events import ChargerEvent


class IngestOverloaded(Exception):
    """The ingest side cannot take more work now (full mempool); the charger should retry."""


class IngestRejected(Exception):
    """The ingest side refuses this event for good (e.g. charger not registered).

    `code` is the OCPP CALLERROR code to answer with (e.g. "NotSupported"); None means
    GenericError.
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class IngestResult:
    """The reply payload for the charger (camelCase, wire-ready) and where it came from."""

    reply: dict[str, Any]
    event_id: bytes
    committed_height: int | None = None
    duplicate: bool = False
    notes: dict[str, Any] = field(default_factory=dict)


class Ingest(Protocol):
    """What the OCPP adapter needs from the rest of the node."""

    async def submit(self, event: ChargerEvent) -> IngestResult:
        """Order/apply `event` and return the reply for the charger.

        Raises IngestOverloaded (transient) or IngestRejected (permanent).
        """
        ...
