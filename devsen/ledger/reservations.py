"""Reservations from the chain (issue 13): the ledger holds a reserved connector for its driver.

A driver reserves a connector in the Escrow (`reserve`, a fee per started minute at the
device's per-minute fee); the ledger reads the charger's open reservations at the block's
agreed Ethereum block (`ChainView.reservations`). Until its expiry at the block's time, and
until it is consumed, a reservation holds its connector:

- a start (1.6 StartTransaction, 2.0.1 TransactionEvent authorization) there by another idTag
  is refused with status "Blocked" (valid in both versions; the charger ends the transaction,
  as for any non-Accepted idTagInfo), and a 1.6/2.0.1 Authorize is refused ("Blocked") when
  every connector of the charger is held for another idTag (Authorize names no connector);
- the reserving idTag, or the session token of an escrow session opened with that idTag,
  starts normally, and its start consumes the reservation (recorded here, so the connector is
  free once that session ends, while the chain still lists the reservation until it expires).

The consumed set is part of the ledger state (table "reservations_used"), pruned once each
entry's reservation has expired, and bounded (oldest dropped first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from devsen.ledger.chain import ChainReservation
from devsen.ledger.state import HashedTable

MAX_CONSUMED_KEPT = 65_536  # consumed reservations remembered until they expire (oldest dropped beyond)
RESERVED_STATUS = "Blocked"  # the idTag status for a start by another idTag on a held connector


class ReservationBook:
    """The reservations consumed by a start, until they expire (reservation id -> expiry, s)."""

    def __init__(self) -> None:
        self.table: HashedTable[int, int] = HashedTable("reservations_used")

    def prune(self, block_ms: int) -> None:
        """Forget consumed reservations that have expired (they hold nothing any more)."""
        for reservation_id in [k for k, expires_s in self.table.items() if expires_s * 1000 <= block_ms]:
            self.table.pop(reservation_id)

    def holding(self, reservations: Sequence[ChainReservation], connector_id: int,
                block_ms: int) -> ChainReservation | None:
        """The reservation holding `connector_id` at `block_ms`, if any: open on chain, not
        expired, not consumed (the lowest id if the chain lists several)."""
        held = [r for r in reservations if r.connector_id == connector_id and r.expires_at_s * 1000 > block_ms
                and r.reservation_id not in self.table]
        return min(held, key=lambda r: r.reservation_id) if held else None

    def consume(self, reservation: ChainReservation) -> None:
        """A start by its holder used the reservation."""
        self.table.put(reservation.reservation_id, reservation.expires_at_s)
        while len(self.table) > MAX_CONSUMED_KEPT:
            self.table.pop(self.table.oldest())

    def to_state(self) -> list[Any]:
        return self.table.to_state()

    def restore(self, state: Any) -> None:
        for key, value in state:
            if type(key) is not int or type(value) is not int:
                raise ValueError("reservations_used entries must be integers")
            self.table.put(key, value)
