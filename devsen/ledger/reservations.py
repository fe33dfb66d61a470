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

The network tells the charger (a ledger-originated command, delivered like a manager's by the
node holding the connection, devsen/charger_commands.py): when a block carries an event of a
charger with an active reservation not yet sent, the ledger admits a ReserveNow command for
it (id `reservation_command_id`, signer empty: the ledger itself), expiring with the
reservation. The charger only knows plaintext idTags and the chain only hashes, so the
ReserveNow names the reservation token `reservation_token` ("R" + 19 hex digits of the idTag
hash) as idTag and parentIdTag (1.6) / idToken and groupIdToken (2.0.1); the ledger's Authorize
reply for the reserving idTag, or for the session token of its driver's escrow session (a remote
start), carries that token as its parentIdTag / groupIdToken, so the charger admits the driver's
card, or the remote start, on the reserved connector (OCPP 1.6 §5.13 "ReserveNow":
idTag or parentIdTag matches). A reservation whose ReserveNow was issued and that is no longer
open on chain before its expiry (the driver cancelled it) gets a CancelReservation the same
way, once (table "reservations_sent" remembers the ReserveNows issued until they expire); an
expired one is not sent (the charger's reservation expires at the same time).

The fee: the Escrow applies it to the holder's escrow session opened on the reserved connector
(contracts/src/Escrow.sol: the session's deposit includes it and it is the session's minimum
charge), so the ledger settles that session as any other; a no-show pays the owner on chain.

The consumed set is part of the ledger state (table "reservations_used"), pruned once each
entry's reservation has expired, and bounded (oldest dropped first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from devsen.ledger.chain import ChainReservation
from devsen.ledger.parse import format_timestamp_ms
from devsen.ledger.state import HashedTable
from primitives.hashing import keccak256

MAX_CONSUMED_KEPT = 65_536  # consumed reservations remembered until they expire (oldest dropped beyond)
RESERVED_STATUS = "Blocked"  # the idTag status for a start by another idTag on a held connector


RESERVATION_TOKEN_PREFIX = "R"
RESERVATION_TOKEN_HEX_DIGITS = 19  # "R" + 19 hex digits: an OCPP 1.6 CiString20


def reservation_token(id_tag_hash: bytes) -> str:
    """The driver's group token for the idTag hashing to `id_tag_hash`: the idTag the network
    names in ReserveNow for a reservation held for it, and the parentIdTag (1.6) / groupIdToken
    (2.0.1) the ledger gives that card and the session tokens of its escrow sessions, so a
    charger lets either stop a transaction the other started (LEDGER.md "Driver's group")."""
    return RESERVATION_TOKEN_PREFIX + id_tag_hash.hex()[:RESERVATION_TOKEN_HEX_DIGITS]


def reservation_command_id(reservation: ChainReservation) -> bytes:
    """The id of the ReserveNow command the ledger issues for `reservation`."""
    return keccak256(b"devsen:ReserveNow:" + reservation.charge_box_id.encode() + b":"
                     + reservation.reservation_id.to_bytes(4, "big"))


def cancel_command_id(charge_box_id: str, reservation_id: int) -> bytes:
    """The id of the CancelReservation command the ledger issues for a cancelled reservation."""
    return keccak256(b"devsen:CancelReservation:" + charge_box_id.encode() + b":" + reservation_id.to_bytes(4, "big"))


def reserve_now_payload(ocpp_version: str, reservation: ChainReservation) -> dict[str, Any]:
    """The ReserveNow CALL payload for `reservation` in the charger's OCPP version."""
    token = reservation_token(reservation.id_tag_hash)
    expiry = format_timestamp_ms(reservation.expires_at_s * 1000)
    if ocpp_version == "1.6":
        return {"connectorId": reservation.connector_id, "expiryDate": expiry, "idTag": token,
                "parentIdTag": token, "reservationId": reservation.reservation_id}
    central = {"idToken": token, "type": "Central"}
    return {"id": reservation.reservation_id, "evseId": reservation.connector_id, "expiryDateTime": expiry,
            "idToken": central, "groupIdToken": central}


class ReservationBook:
    """The reservations consumed by a start, until they expire (reservation id -> expiry, s)."""

    def __init__(self) -> None:
        self.table: HashedTable[int, int] = HashedTable("reservations_used")
        # reservation id -> [charger, expiry s] of the ReserveNows issued and not yet expired
        self.sent: HashedTable[int, tuple[str, int]] = HashedTable("reservations_sent")
        self._sent_by_charger: dict[str, set[int]] = {}  # derived from `sent` (rebuilt on restore)

    def in_use(self) -> bool:
        return bool(len(self.table) or len(self.sent))

    def prune(self, block_ms: int) -> None:
        """Forget consumed and sent reservations that have expired (they hold nothing any more)."""
        for reservation_id in [k for k, expires_s in self.table.items() if expires_s * 1000 <= block_ms]:
            self.table.pop(reservation_id)
        for reservation_id in [k for k, (_, expires_s) in self.sent.items() if expires_s * 1000 <= block_ms]:
            self._forget_sent(reservation_id)

    def note_sent(self, reservation: ChainReservation) -> None:
        """A ReserveNow was issued for `reservation` (bounded: the oldest forgotten first)."""
        self.sent.put(reservation.reservation_id, (reservation.charge_box_id, reservation.expires_at_s))
        self._sent_by_charger.setdefault(reservation.charge_box_id, set()).add(reservation.reservation_id)
        while len(self.sent) > MAX_CONSUMED_KEPT:
            self._forget_sent(self.sent.oldest())

    def cancelled(self, charge_box_id: str, open_ids: set[int]) -> list[int]:
        """The reservations of this charger sent in a ReserveNow, unexpired, no longer open on
        chain (cancelled): forgotten here, the caller issues their CancelReservation."""
        gone = sorted(self._sent_by_charger.get(charge_box_id, set()) - open_ids)
        for reservation_id in gone:
            self._forget_sent(reservation_id)
        return gone

    def _forget_sent(self, reservation_id: int) -> None:
        charger, _ = self.sent.pop(reservation_id)
        ids = self._sent_by_charger.get(charger)
        if ids is not None:
            ids.discard(reservation_id)
            if not ids:
                del self._sent_by_charger[charger]

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
        return [self.table.to_state(), self.sent.to_state()]

    def restore(self, state: Any) -> None:
        used, sent = state
        for key, value in used:
            if type(key) is not int or type(value) is not int:
                raise ValueError("reservations_used entries must be integers")
            self.table.put(key, value)
        for key, (charger, expires_s) in sent:
            if type(key) is not int or type(charger) is not str or type(expires_s) is not int:
                raise ValueError("reservations_sent entries must be [id, [charger, expiry]]")
            self.sent.put(key, (charger, expires_s))
            self._sent_by_charger.setdefault(charger, set()).add(key)
