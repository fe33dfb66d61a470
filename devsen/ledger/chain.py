"""What the ledger reads from Ethereum: a read-only snapshot at the block's agreed Ethereum block.

Every block names one Ethereum block (number and hash); every node reads the registries and
the escrow at exactly that block, so every node sees the same `ChainView` and the ledger
decides the same way everywhere. The node fills a `ChainView` from the contracts;
`StaticChainView` is the same facts as plain in-memory data (tests, standalone runs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from devsen.ledger.parse import MAX_TIMESTAMP_MS
from devsen.ledger.sites import site_problem
from primitives.hashing import id_tag_hash

MAX_AMOUNT = 2**256 - 1  # token amounts are uint256 on chain
MAX_CONNECTORS = 64  # a device registry entry never declares more connectors (or EVSEs) than this
MAX_POWER_W = 4_000_000  # DeviceFactory.MAX_POWER_W: one connector's maximum power, watts (MCS is 3.75 MW)
DEFAULT_MAX_POWER_W = 350_000  # DeviceFactory.DEFAULT_MAX_POWER_W
MAX_ESCROW_TIME_S = 253_402_300_799  # an escrow opening time after year 9999 is not one
MAX_METER_KEY_BYTES = 128  # DeviceFactory.MAX_PUBLIC_KEY_BYTES: a DER SubjectPublicKeyInfo of the meter


@dataclass(frozen=True, slots=True)
class BlockContext:
    """The agreed facts of one committed block that the ledger needs."""

    height: int
    timestamp_ms: int
    eth_block_number: int
    eth_block_hash: bytes
    # The ingress names (0x-hex, lowercase) of the validators in force: an event vouched by anyone
    # else (a registered operator, a full node) moves money only when signed readings or the
    # driver's vouchers back it. None: every voucher counts as a validator (in-process tests).
    validators: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.height < 1 or not 0 <= self.timestamp_ms <= MAX_TIMESTAMP_MS or self.eth_block_number < 0:
            raise ValueError("height must be >= 1, timestamp within years 1970..9999, Ethereum block >= 0")
        if len(self.eth_block_hash) != 32:
            raise ValueError("eth_block_hash must be 32 bytes")


@dataclass(frozen=True, slots=True)
class Tariff:
    """A device's price: token base units per kWh, plus an optional fee per whole minute."""

    price_per_kwh: int
    per_minute_fee: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.price_per_kwh <= MAX_AMOUNT and 0 <= self.per_minute_fee <= MAX_AMOUNT):
            raise ValueError("tariff amounts must be uint256")


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A charger as the on-chain device registry knows it (keyed by chargeBoxId).

    `connector_count` counts OCPP 1.6 connectors, or OCPP 2.0.1 EVSEs; `max_power_w` is what
    one of them can deliver at most (the ledger caps a session's energy by it).
    `meter_public_key` is the on-chain `chargerPublicKey` (DER SubjectPublicKeyInfo of the
    meter's OCMF signing key, empty if none); with `require_signed_meter` the device settles
    only on OCMF-signed readings (devsen/ledger/signed.py).
    """

    device_id: bytes
    manager: str
    connector_count: int
    tariff: Tariff
    active: bool = True
    max_power_w: int = DEFAULT_MAX_POWER_W
    meter_public_key: bytes = b""
    require_signed_meter: bool = False
    # the load-management site it is in (DeviceFactory.siteOf; 0: none) and that site's power
    # (devsen/ledger/sites.py): at most site_max_power_w for its transactions, site_min_session_w each
    site_id: int = 0
    site_max_power_w: int = 0
    site_min_session_w: int = 0

    def __post_init__(self) -> None:
        problem = device_problem(self)
        if problem is not None:
            raise ValueError(problem)


def device_problem(device: object) -> str | None:
    """Why `device` is not a DeviceInfo within the ledger's bounds, or None if it is.

    Used where chain data is converted (and again by the ledger on whatever a ChainView
    returns), so out-of-bound data becomes "unregistered", never an exception.
    """
    if not isinstance(device, DeviceInfo):
        return f"not a DeviceInfo: {type(device).__name__}"
    count, power, tariff = device.connector_count, device.max_power_w, device.tariff
    if type(count) is not int or not 0 <= count <= MAX_CONNECTORS:
        return f"connector_count must be in 0..{MAX_CONNECTORS}"
    if type(power) is not int or not 1 <= power <= MAX_POWER_W:
        return f"max_power_w must be in 1..{MAX_POWER_W}"
    if type(device.active) is not bool or not isinstance(tariff, Tariff):
        return "active must be a bool and tariff a Tariff"
    fee, price = tariff.per_minute_fee, tariff.price_per_kwh
    if type(price) is not int or type(fee) is not int or not (0 <= price <= MAX_AMOUNT and 0 <= fee <= MAX_AMOUNT):
        return "tariff amounts must be uint256"
    key = device.meter_public_key
    if type(key) is not bytes or len(key) > MAX_METER_KEY_BYTES or type(device.require_signed_meter) is not bool:
        return f"meter_public_key must be at most {MAX_METER_KEY_BYTES} bytes and require_signed_meter a bool"
    return site_problem(device.site_id, device.site_max_power_w, device.site_min_session_w)


@dataclass(frozen=True, slots=True)
class IdTagInfo:
    """An idTag (RFID uid, token) as the on-chain registry knows it (keyed by keccak256 of it).

    `expiry_s` is a Unix time in seconds; 0 means it never expires.
    """

    account: str
    expiry_s: int = 0
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class EscrowSession:
    """A prepaid session a driver opened in the Escrow contract and that is still open.

    `tariff` is the device tariff the Escrow copied when the session was opened (the terms
    the driver agreed to; None: not known, the device's current tariff applies);
    `refund_at_s` is when the driver may refund it (None: unknown, no deadline enforced).
    """

    session_id: bytes
    driver: str
    charge_box_id: str
    connector_id: int
    id_tag_hash: bytes
    deposit: int
    opened_at_s: int
    tariff: Tariff | None = None
    refund_at_s: int | None = None
    # Opened in voucher mode (issue 12): the driver pays by per-chunk vouchers, the ledger stops
    # the charge when they fall behind. Read from the Escrow session when the contract has it.
    voucher_mode: bool = False

    def __post_init__(self) -> None:
        problem = escrow_problem(self)
        if problem is not None:
            raise ValueError(problem)


def escrow_problem(session: object) -> str | None:
    """Why `session` is not an EscrowSession within the ledger's bounds, or None if it is."""
    if not isinstance(session, EscrowSession):
        return f"not an EscrowSession: {type(session).__name__}"
    s = session
    if type(s.session_id) is not bytes or type(s.id_tag_hash) is not bytes or len(s.session_id) != 32 \
            or len(s.id_tag_hash) != 32:
        return "session_id and id_tag_hash must be 32 bytes"
    if type(s.deposit) is not int or not 0 <= s.deposit <= MAX_AMOUNT:
        return "deposit must be uint256"
    if type(s.opened_at_s) is not int or not 0 <= s.opened_at_s <= MAX_ESCROW_TIME_S:
        return f"opened_at_s must be in 0..{MAX_ESCROW_TIME_S}"
    if type(s.connector_id) is not int or not 0 <= s.connector_id <= 255:
        return "connector_id must be a uint8"
    if type(s.charge_box_id) is not str:
        return "charge_box_id must be a string"
    if s.tariff is not None:
        if not isinstance(s.tariff, Tariff):
            return "tariff must be a Tariff or None"
        price, fee = s.tariff.price_per_kwh, s.tariff.per_minute_fee
        if type(price) is not int or type(fee) is not int or not (0 <= price <= MAX_AMOUNT and 0 <= fee <= MAX_AMOUNT):
            return "tariff amounts must be uint256"
    if s.refund_at_s is not None and (type(s.refund_at_s) is not int
                                      or not s.opened_at_s <= s.refund_at_s <= MAX_ESCROW_TIME_S):
        return f"refund_at_s must be in opened_at_s..{MAX_ESCROW_TIME_S}"
    if type(s.voucher_mode) is not bool:
        return "voucher_mode must be a bool"
    return None


@dataclass(frozen=True, slots=True)
class ChainReservation:
    """An open reservation in the Escrow (issue 13): `connector_id` of `charge_box_id` held for
    the idTag hashing to `id_tag_hash` until `expires_at_s` (unix seconds). Open on chain means
    not cancelled nor closed; the ledger treats it as holding the connector only before its
    expiry at the block's time. `reservation_id` is the OCPP reservationId (1, 2, 3, ...)."""

    reservation_id: int
    charge_box_id: str
    connector_id: int
    id_tag_hash: bytes
    expires_at_s: int

    def __post_init__(self) -> None:
        problem = reservation_problem(self)
        if problem is not None:
            raise ValueError(problem)


MAX_RESERVATION_ID = 2**31 - 1  # Escrow.MAX_RESERVATION_ID: an OCPP integer


def reservation_problem(reservation: object) -> str | None:
    """Why `reservation` is not a ChainReservation within the ledger's bounds, or None if it is."""
    if not isinstance(reservation, ChainReservation):
        return f"not a ChainReservation: {type(reservation).__name__}"
    r = reservation
    if type(r.reservation_id) is not int or not 1 <= r.reservation_id <= MAX_RESERVATION_ID:
        return f"reservation_id must be in 1..{MAX_RESERVATION_ID}"
    if type(r.connector_id) is not int or not 1 <= r.connector_id <= MAX_CONNECTORS:
        return f"connector_id must be in 1..{MAX_CONNECTORS}"
    if type(r.id_tag_hash) is not bytes or len(r.id_tag_hash) != 32 or type(r.charge_box_id) is not str:
        return "id_tag_hash must be 32 bytes and charge_box_id a string"
    if type(r.expires_at_s) is not int or not 0 <= r.expires_at_s <= MAX_ESCROW_TIME_S:
        return f"expires_at_s must be in 0..{MAX_ESCROW_TIME_S}"
    return None


def id_tag_problem(info: object) -> str | None:
    """Why `info` is not an IdTagInfo within the ledger's bounds, or None if it is."""
    if not isinstance(info, IdTagInfo):
        return f"not an IdTagInfo: {type(info).__name__}"
    if type(info.expiry_s) is not int or not 0 <= info.expiry_s < 2**64 or type(info.revoked) is not bool:
        return "expiry_s must be a uint64 and revoked a bool"
    return None


SESSION_TOKEN_PREFIX = "S"
SESSION_TOKEN_HEX_DIGITS = 19  # "S" + 19 hex digits = 20 characters, an OCPP 1.6 CiString20
MAX_TOKEN_HASHES_CACHED = 65_536  # session token hashes memoised (open sessions are far fewer in use at once)


def session_token(session_id: bytes) -> str:
    """The idTag a node sends in a remote start for an escrow session: "S" + the first 19
    lowercase hex digits of its id (1.6 idTag; 2.0.1 idToken of type Central)."""
    if len(session_id) != 32:
        raise ValueError("session_id must be 32 bytes")
    return SESSION_TOKEN_PREFIX + session_id.hex()[:SESSION_TOKEN_HEX_DIGITS]


@lru_cache(maxsize=MAX_TOKEN_HASHES_CACHED)
def session_token_hash(session_id: bytes) -> bytes:
    """keccak-256 of the session token of `session_id`: how a token arrives in an event
    (events carry idTags only as hashes). Memoised (bounded): the ledger compares it for
    every open escrow session of a charger on each idTag look-up."""
    return id_tag_hash(session_token(session_id))


def is_session_token(id_tag: str) -> bool:
    """Whether `id_tag` has the shape of a session token (it may still match no open session)."""
    digits = id_tag[len(SESSION_TOKEN_PREFIX):]
    return (id_tag.startswith(SESSION_TOKEN_PREFIX) and len(digits) == SESSION_TOKEN_HEX_DIGITS
            and all(c in "0123456789abcdef" for c in digits))


class ChainView(Protocol):
    """Read-only on-chain facts at one Ethereum block. Must not change while a block applies."""

    def device(self, charge_box_id: str) -> DeviceInfo | None:
        """The registered device with this chargeBoxId, or None."""
        ...

    def id_tag(self, tag_hash: bytes) -> IdTagInfo | None:
        """The registered idTag with this keccak-256 hash, or None."""
        ...

    def open_escrow_sessions(self, charge_box_id: str) -> Sequence[EscrowSession]:
        """Open escrow sessions for this chargeBoxId (any order; the ledger sorts)."""
        ...

    def escrow_session(self, session_id: bytes) -> EscrowSession | None:
        """The escrow session with this id if it is still open, else None."""
        ...

    def reservations(self, charge_box_id: str) -> Sequence[ChainReservation]:
        """The open Escrow reservations on this chargeBoxId's connectors (expired or not)."""
        ...


class StaticChainView:
    """A `ChainView` over plain in-memory data."""

    def __init__(
        self,
        devices: dict[str, DeviceInfo] | None = None,
        id_tags: dict[str, IdTagInfo] | None = None,
        escrow_sessions: Iterable[EscrowSession] = (),
        reservations: Iterable[ChainReservation] = (),
    ) -> None:
        """`id_tags` is keyed by the idTag text; it is hashed here as the registry does."""
        self.devices = dict(devices or {})
        self.id_tags = {id_tag_hash(tag): info for tag, info in (id_tags or {}).items()}
        self.sessions = {s.session_id: s for s in escrow_sessions}
        self.reserved = {r.reservation_id: r for r in reservations}
        self.requested: tuple[str, ...] = ()  # chargers with new session requests (remote_starts.py)
        self.endpoints: list[tuple[bytes, str]] = []  # (validator address, OCPP endpoint) (provisioning.py)

    def validator_endpoints(self) -> Sequence[tuple[bytes, str]]:
        return self.endpoints

    def requested_chargers(self) -> tuple[str, ...]:
        return self.requested

    def device(self, charge_box_id: str) -> DeviceInfo | None:
        return self.devices.get(charge_box_id)

    def id_tag(self, tag_hash: bytes) -> IdTagInfo | None:
        return self.id_tags.get(tag_hash)

    def open_escrow_sessions(self, charge_box_id: str) -> Sequence[EscrowSession]:
        return [s for s in self.sessions.values() if s.charge_box_id == charge_box_id]

    def escrow_session(self, session_id: bytes) -> EscrowSession | None:
        return self.sessions.get(session_id)

    def reservations(self, charge_box_id: str) -> Sequence[ChainReservation]:
        return [r for r in self.reserved.values() if r.charge_box_id == charge_box_id]

    def end_reservation(self, reservation_id: int) -> None:
        """Mark a reservation cancelled or closed, as the Escrow does."""
        self.reserved.pop(reservation_id, None)

    def close_escrow_session(self, session_id: bytes) -> None:
        """Mark a session closed, as the Escrow contract does once it is settled or refunded."""
        self.sessions.pop(session_id, None)
