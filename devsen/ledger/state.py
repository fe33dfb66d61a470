"""The ledger's state records and the hashed table that holds them.

Every record is a frozen dataclass of ints, strings, bytes, bools, None, tuples and (for
reply payloads) string-keyed dicts of those: no floats. A `HashedTable` keeps a digest that
is a pure function of its entries and is updated in O(1) per change: the sum, modulo 2**256,
of keccak-256 over each (table, key, value) entry's canonical bytes (an additive multiset
hash). Insertion order, which decides eviction, is itself recorded in each entry (`seq`), so
the digest covers it, and a snapshot restores it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgpack

from primitives.hashing import keccak256

_MOD = 2**256
_BIG_INT_EXT = 1  # msgpack ext type: a non-negative int >= 2**64, minimal big-endian bytes
_NATIVE_INT_END = 2**64
K = TypeVar("K")
V = TypeVar("V")


def state_value(value: Any) -> Any:
    """`value` as plain msgpack-ready data: dataclasses -> lists, dict keys sorted; no floats."""
    kind = type(value)
    if kind is str or kind is bytes or kind is bool or value is None:
        return value
    if kind is int:
        if value >= _NATIVE_INT_END:
            return msgpack.ExtType(_BIG_INT_EXT, value.to_bytes((value.bit_length() + 7) // 8, "big"))
        assert value >= -(2**63), "no large negative integers in state"
        return value
    if kind is tuple or kind is list:
        return [state_value(v) for v in value]
    if kind is dict:
        assert all(type(k) is str for k in value), "state maps have string keys"
        return {k: state_value(value[k]) for k in sorted(value)}
    names = _FIELD_NAMES.get(kind)
    if names is None:
        assert dataclasses.is_dataclass(value), f"no {kind.__name__} in state"
        names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(value))
    return [state_value(getattr(value, name)) for name in names]


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def state_bytes(value: Any) -> bytes:
    """Canonical msgpack of `state_value(value)`; token amounts up to uint256 and beyond fit."""
    packed: bytes = msgpack.packb(state_value(value), use_bin_type=True)
    return packed


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _BIG_INT_EXT or not data or data[0] == 0:
        raise ValueError("not a canonical state encoding")
    value = int.from_bytes(data, "big")
    if value < _NATIVE_INT_END:
        raise ValueError("not a canonical state encoding")
    return value


def from_state_bytes(data: bytes) -> Any:
    """Inverse of `state_bytes` up to dataclasses: arrays come back as tuples."""
    return msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=True, ext_hook=_ext_hook)


def _sorted_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    for (a, _), (b, _) in zip(pairs, pairs[1:], strict=False):
        if not (type(a) is str and type(b) is str and a < b):
            raise ValueError("not a canonical state encoding: map keys out of order")
    return dict(pairs)


def raw_state(data: bytes) -> Any:
    """`data` decoded as written: big integers stay msgpack ext values and every map must have
    its keys in ascending order (as `state_value` writes them). A canonical encoding is one
    that re-packs (`msgpack.packb(raw, use_bin_type=True)`) to itself and holds no floats;
    each entry of a canonical snapshot then packs to exactly the bytes `state_bytes` gives
    its record, which lets `HashedTable.restore` hash entries without `state_value`."""
    return msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=True, object_pairs_hook=_sorted_map)


def has_float(value: Any) -> bool:
    """True if a float is anywhere in decoded `value` (state holds none)."""
    kind = type(value)
    if kind is float:
        return True
    if kind is tuple or kind is list:
        return any(has_float(v) for v in value)
    if kind is dict:
        return any(has_float(v) for v in value.values())
    return False


class HashedTable(Generic[K, V]):
    """An insertion-ordered map with an incrementally maintained, order-independent digest."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._items: dict[K, V] = {}
        self._hashes: dict[K, int] = {}
        self._sum = 0

    def _entry_hash(self, key: K, value: V) -> int:
        return int.from_bytes(keccak256(state_bytes([self.name, key, value])), "big")

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def items(self) -> Iterator[tuple[K, V]]:
        return iter(self._items.items())

    def values(self) -> Iterator[V]:
        return iter(self._items.values())

    def put(self, key: K, value: V, *, to_end: bool = False) -> None:
        """Insert or replace; a new key goes last; `to_end` also moves an existing key last."""
        if key in self._items:
            self._sum -= self._hashes[key]
            if to_end:
                del self._items[key]
        h = self._entry_hash(key, value)
        self._items[key] = value
        self._hashes[key] = h
        self._sum = (self._sum + h) % _MOD

    def restore(self, key: K, value: V, raw_key: Any, raw_value: Any) -> None:
        """Append a snapshot entry whose canonical encoding was checked (`raw_state`): hashed
        from its raw form in C, as `_entry_hash` would hash the record (a new key only)."""
        assert key not in self._items, "snapshot keys are unique"
        h = int.from_bytes(keccak256(msgpack.packb([self.name, raw_key, raw_value], use_bin_type=True)), "big")
        self._items[key] = value
        self._hashes[key] = h
        self._sum = (self._sum + h) % _MOD

    def pop(self, key: K) -> V:
        """Remove and return the entry for `key` (which must exist)."""
        value = self._items.pop(key)
        self._sum = (self._sum - self._hashes.pop(key)) % _MOD
        return value

    def oldest(self) -> K:
        """The first key in insertion order (the table must not be empty)."""
        return next(iter(self._items))

    def digest(self) -> bytes:
        """keccak-256 over (name, entry count, sum of entry hashes)."""
        return keccak256(state_bytes([self.name, len(self._items), self._sum.to_bytes(32, "big")]))

    def to_state(self) -> list[Any]:
        """Entries in insertion order, for a snapshot."""
        return [[key, value] for key, value in self._items.items()]


@dataclass(frozen=True, slots=True)
class ConnectorStatus:
    """The last status a charger reported for one connector (1.6 "N", 2.0.1 "evse/connector")."""

    connector: str
    status: str
    error_code: str
    block_ms: int


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """What the ledger remembers about one registered charger. `touch_seq` orders eviction."""

    charger_id: str
    touch_seq: int
    boot_status: str = ""
    vendor: str = ""
    model: str = ""
    firmware_version: str = ""
    last_boot_ms: int = 0
    last_heartbeat_ms: int = 0
    connectors: tuple[ConnectorStatus, ...] = ()
    firmware_status: str = ""
    diagnostics_status: str = ""
    log_status: str = ""
    last_security_event: str = ""
    security_events: int = 0
    reports: int = 0
    notify_events: int = 0
    data_transfers: int = 0
    meter_paginations: tuple[tuple[str, int], ...] = ()  # (meter serial, highest accepted OCMF pagination)
    paginations_ms: int = 0  # block time at which meter_paginations last changed
    ocpp_version: str = ""  # of the charger's last event ("1.6" or "2.0.1")


@dataclass(frozen=True, slots=True)
class Session:
    """An open charging session (a transaction the ledger accepted or is waiting to authorize).

    `tx_ref` is the transaction id as text: the ledger's counter for 1.6, the charger's
    transactionId for 2.0.1. A session is paid only when bound to an escrow session.
    """

    charger_id: str
    tx_ref: str
    ocpp_version: str
    connector_id: int
    opened_seq: int
    opened_block_ms: int
    id_tag_hash: bytes = b""
    escrow_session_id: bytes = b""
    deposit: int = 0
    escrow_opened_at_s: int = 0
    price_per_kwh: int = 0
    per_minute_fee: int = 0
    max_power_w: int = 0  # the device's maximum power at binding (caps the energy settled)
    charge_start_ms: int = 0
    meter_start_wh: int | None = None
    meter_last_wh: int | None = None
    last_block_ms: int = 0  # block time of the last event about this session
    # Charger-signed (OCMF) readings accepted for this session (devsen/ledger/signed.py).
    require_signed: bool = False  # the device's on-chain policy at binding
    signed_serial: str = ""  # meter serial (MS) of the first accepted document
    signed_pagination: int = -1  # PG counter of the last accepted document
    signed_start_wh: int | None = None
    signed_start_ms: int = 0
    signed_start_event: bytes = b""  # event id of the event that carried the signed start
    signed_last_wh: int | None = None
    signed_last_ms: int = 0
    signed_last_event: bytes = b""
    signed_stopped: bool = False  # an end reading (TX E/L/R/A) was accepted
    escrow_refund_at_s: int = 0  # when the driver may refund the escrow (0 = no deadline known)
    # The first non-validator (operator) ingress whose event opened, bound, metered or stopped this
    # session ("" if none): such a session settles 0 unless signed readings or vouchers back it.
    operator: str = ""

    @property
    def bound(self) -> bool:
        return bool(self.escrow_session_id)


@dataclass(frozen=True, slots=True)
class ClosedTransaction:
    """How a transaction ended: "settled", "rejected", "unpaid" or "escrow_closed"."""

    seq: int
    outcome: str
    energy_wh: int = 0
    amount: int = 0
    escrow_session_id: bytes = b""
    signed_start_event: bytes = b""  # signed-meter sessions: the events whose OCMF readings settled it
    signed_last_event: bytes = b""


@dataclass(frozen=True, slots=True)
class SettlementOrder:
    """Pay `amount` of the escrow session's deposit to the device owner, refund the rest.

    Exactly the fields of the EIP-712 `Settlement(bytes32 sessionId,uint64 energyWh,uint256 amount)`.
    """

    session_id: bytes
    energy_wh: int
    amount: int


@dataclass(frozen=True, slots=True)
class PendingSettlement:
    """A settlement order waiting for the Escrow contract to close its session."""

    seq: int
    height: int
    order: SettlementOrder
    deposit: int


@dataclass(frozen=True, slots=True)
class StoredReply:
    """The answer given to one charger message, kept so that a retry gets the same answer."""

    seq: int
    height: int
    reply: dict[str, Any] | None
    error_code: str | None


@dataclass(frozen=True, slots=True)
class Anomaly:
    """Schema-valid input the ledger could not honour, recorded for operators and auditors."""

    seq: int
    height: int
    charger_id: str
    action: str
    message_id: str
    kind: str
    detail: str
