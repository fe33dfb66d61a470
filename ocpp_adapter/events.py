"""ChargerEvent: what a charger reported, with one canonical byte encoding and an id.

The canonical encoding is msgpack of a fixed-order array with every map's keys sorted,
so every node derives the same bytes, and so the same event id (keccak-256 of the bytes),
from the same event. Anchoring proves these bytes; the ledger replays them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import msgpack
from Crypto.Hash import keccak

ENCODING_VERSION = 1
MAX_EVENT_BYTES = 64 * 1024  # one event never exceeds this once encoded
OCPP_VERSIONS = ("1.6", "2.0.1")


class EventEncodingError(ValueError):
    """The bytes or fields cannot form a valid ChargerEvent."""


def keccak256(data: bytes) -> bytes:
    """Keccak-256 (Ethereum's hash) of `data`."""
    h = keccak.new(digest_bits=256)
    h.update(data)
    return h.digest()


def canonical_value(value: Any) -> Any:
    """Return `value` with maps key-sorted, recursively; reject types with no canonical form."""
    if isinstance(value, dict):
        out = {}
        for key in sorted(value):
            if not isinstance(key, str):
                raise EventEncodingError(f"map key {key!r} is not a string")
            out[key] = canonical_value(value[key])
        return out
    if isinstance(value, (list, tuple)):
        return [canonical_value(v) for v in value]
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise EventEncodingError("NaN and infinities have no canonical form")
        return value
    raise EventEncodingError(f"type {type(value).__name__} has no canonical encoding")


def canonical_bytes(value: Any) -> bytes:
    """msgpack of `canonical_value(value)`."""
    try:
        return msgpack.packb(canonical_value(value), use_bin_type=True)
    except UnicodeEncodeError as exc:
        raise EventEncodingError(f"a string is not valid Unicode: {exc.reason}") from exc


@dataclass(frozen=True)
class ChargerEvent:
    """One charger-to-CSMS call, as received by one node.

    `payload` is the OCPP payload as the charger sent it (camelCase keys, plain JSON types).
    `ingress_node` names the node that received it; `received_at_ms` is that node's clock.
    The event is immutable (do not mutate `payload`): its bytes and ids are computed once.
    """

    charger_id: str
    ocpp_version: str
    action: str
    message_id: str
    payload: dict[str, Any]
    ingress_node: str
    received_at_ms: int

    def __post_init__(self) -> None:
        if self.ocpp_version not in OCPP_VERSIONS:
            raise EventEncodingError(f"ocpp_version {self.ocpp_version!r} not in {OCPP_VERSIONS}")
        if not self.charger_id or not self.action or not self.message_id:
            raise EventEncodingError("charger_id, action and message_id must be non-empty")
        if not isinstance(self.payload, dict):
            raise EventEncodingError("payload must be a JSON object")
        if self.received_at_ms < 0:
            raise EventEncodingError("received_at_ms must be >= 0")

    def to_bytes(self) -> bytes:
        """The canonical encoding; the same event always gives the same bytes."""
        return self._encoded

    @cached_property
    def _encoded(self) -> bytes:
        data = canonical_bytes(
            [
                ENCODING_VERSION,
                self.charger_id,
                self.ocpp_version,
                self.action,
                self.message_id,
                self.payload,
                self.ingress_node,
                self.received_at_ms,
            ]
        )
        if len(data) > MAX_EVENT_BYTES:
            raise EventEncodingError(f"event is {len(data)} bytes, limit {MAX_EVENT_BYTES}")
        return data

    @cached_property
    def event_id(self) -> bytes:
        """keccak-256 of the canonical bytes: the event's identity in mempool, blocks and proofs."""
        return keccak256(self.to_bytes())

    @cached_property
    def dedup_key(self) -> bytes:
        """Identity of the *charger message*, independent of which node received it or when.

        A charger retrying the same message id with the same payload (at any node) has the
        same dedup key, so the ledger applies it once and answers every retry the same way.
        """
        return keccak256(
            canonical_bytes([self.charger_id, self.ocpp_version, self.message_id, self.action, self.payload])
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ChargerEvent:
        """Decode canonical bytes; reject anything that does not re-encode to the same bytes."""
        if len(data) > MAX_EVENT_BYTES:
            raise EventEncodingError(f"event is {len(data)} bytes, limit {MAX_EVENT_BYTES}")
        try:
            fields = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types
            raise EventEncodingError(f"not msgpack: {exc}") from exc
        if not isinstance(fields, list) or len(fields) != 8 or fields[0] != ENCODING_VERSION:
            raise EventEncodingError("not a version-1 ChargerEvent array")
        _, charger_id, version, action, message_id, payload, ingress, received = fields
        if not all(isinstance(x, str) for x in (charger_id, version, action, message_id, ingress)):
            raise EventEncodingError("text fields must be strings")
        if not isinstance(received, int) or isinstance(received, bool):
            raise EventEncodingError("received_at_ms must be an integer")
        event = cls(charger_id, version, action, message_id, payload, ingress, received)
        if event.to_bytes() != data:
            raise EventEncodingError("bytes are not in canonical form")
        return event
