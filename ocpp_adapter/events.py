"""ChargerEvent: what a charger reported, with one canonical byte encoding and an id.

The canonical encoding is msgpack of a fixed-order array with every map's keys sorted,
so every node derives the same bytes, and so the same event id (keccak-256 of the bytes),
from the same event. Anchoring proves these bytes; the ledger replays them.

Version 2 (the only one accepted) makes every event attributable: it names the ingress
validator's secp256k1 address, the id of the authenticated WebSocket connection the charger
sent it on (16 bytes chosen when the connection was authenticated as `charger_id`), and the
ingress validator's 65-byte recoverable signature over the typed digest of the body (see
ocpp_adapter/vouching.py). The adapter builds the event unsigned (no ingress address, no
signature); the node that authenticated the charger fills both in (`with_vouch`).

    [2, charger_id, ocpp_version, action, message_id, payload, received_at_ms,
     ingress (20 bytes, or empty if unsigned), connection_id (16 bytes), signature (65 bytes or empty)]

idTags never leave the ingress node in plaintext (they are RFID UIDs: personal data, and
blocks, proofs and the audit are public). The payload of a ChargerEvent is always in
*hashed form*: constructing one replaces each plaintext idTag by its marked hash,

    "keccak256:" + 64 lowercase hex digits of keccak-256(UTF-8 bytes of the idTag)

(the key the on-chain UserRegistry and the Escrow already use), before the event id, the
dedup key and the vouch are computed. The fields hashed (`hash_id_tags`), in every action:
the top-level `idTag` (1.6 Authorize, StartTransaction, StopTransaction), the top-level
`idToken.idToken` (2.0.1 Authorize, TransactionEvent) and every
`idToken.additionalInfo[].additionalIdToken`; and 2.0.1 Authorize's `certificate` (an EV
contract certificate names the driver). A legal plaintext is never mistaken for a hash:
OCPP bounds those idTags to 20 / 36 characters, the hashed form has 74. The plaintext stays
only in the adapter's memory (the call being answered); the charger's reply is unchanged,
since no reply echoes an idTag.
`from_bytes` refuses bytes carrying a plaintext (or malformed hashed) idTag, so a block with
one is invalid everywhere, and the ledger reads only the hashed form (devsen/ledger/LEDGER.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import msgpack

from primitives.hashing import id_tag_hash, keccak256

ENCODING_VERSION = 2
ADDRESS_BYTES = 20
CONNECTION_ID_BYTES = 16
SIGNATURE_BYTES = 65
NO_CONNECTION = b"\x00" * CONNECTION_ID_BYTES
MAX_TEXT_CHARS = 256  # charger id, action, message id: far above what OCPP allows (<= 36..48)
_ADDRESS_HEX = re.compile(r"0x[0-9a-f]{40}")
MAX_EVENT_BYTES = 64 * 1024  # one event never exceeds this once encoded
OCPP_VERSIONS = ("1.6", "2.0.1")
TAG_HASH_PREFIX = "keccak256:"
_TAG_HASH = re.compile(r"keccak256:[0-9a-f]{64}")


class EventEncodingError(ValueError):
    """The bytes or fields cannot form a valid ChargerEvent."""


def hashed_id_tag(id_tag: str) -> str:
    """The hashed form of a plaintext idTag / idToken: "keccak256:" + hex of keccak-256(UTF-8).

    Raises UnicodeEncodeError for a string that is not valid Unicode (lone surrogates).
    """
    return TAG_HASH_PREFIX + id_tag_hash(id_tag).hex()


def tag_hash_of(value: Any) -> bytes | None:
    """The 32-byte hash a hashed-form idTag names, or None if `value` is not exactly that form."""
    if type(value) is not str or _TAG_HASH.fullmatch(value) is None:
        return None
    return bytes.fromhex(value[len(TAG_HASH_PREFIX):])


def _hashed(value: Any) -> Any:
    """`value` in hashed form: strings not already hashed are hashed; anything else unchanged
    (a non-string is malformed for the ledger; an unencodable string makes the event unencodable)."""
    if type(value) is not str or tag_hash_of(value) is not None:
        return value
    try:
        return hashed_id_tag(value)
    except UnicodeEncodeError:
        return value


def hash_id_tags(ocpp_version: str, action: str, payload: Any) -> Any:
    """`payload` with every idTag field in hashed form (the module docstring lists the fields).

    The fields are hashed whatever the version says (a 1.6 `idToken` is no field the ledger
    reads, but it is no less personal). Returns `payload` itself when nothing changes, else a
    copy (the argument is not mutated). Total: any value is accepted; shapes OCPP does not
    allow are left as they are.
    """
    if not isinstance(payload, dict):
        return payload
    out = payload
    tag = payload.get("idTag")
    if (hashed := _hashed(tag)) is not tag:
        out = {**out, "idTag": hashed}
    token = payload.get("idToken")
    if isinstance(token, dict):
        new_token = token
        inner = token.get("idToken")
        if (hashed := _hashed(inner)) is not inner:
            new_token = {**token, "idToken": hashed}
        extra = token.get("additionalInfo")
        if isinstance(extra, list):
            new_extra = [_hash_additional(item) for item in extra]
            if any(a is not b for a, b in zip(new_extra, extra, strict=True)):
                new_token = {**new_token, "additionalInfo": new_extra}
        if new_token is not token:
            out = {**out, "idToken": new_token}
    certificate = payload.get("certificate")
    if ocpp_version == "2.0.1" and action == "Authorize" and (hashed := _hashed(certificate)) is not certificate:
        out = {**out, "certificate": hashed}
    return out


def _hash_additional(item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    extra = item.get("additionalIdToken")
    hashed = _hashed(extra)
    return item if hashed is extra else {**item, "additionalIdToken": hashed}


def canonical_value(value: Any) -> Any:
    """Return `value` with maps key-sorted, recursively; reject types with no canonical form."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or kind is bytes or value is None:  # the common case first
        return value
    if kind is dict or kind is not list and isinstance(value, dict):
        out = {}
        for key in sorted(value):
            if type(key) is not str and not isinstance(key, str):
                raise EventEncodingError(f"map key {key!r} is not a string")
            out[key] = canonical_value(value[key])
        return out
    if kind is list or isinstance(value, (list, tuple)):
        return [canonical_value(v) for v in value]
    if isinstance(value, (bool, int, str, bytes)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise EventEncodingError("NaN and infinities have no canonical form")
        return value
    raise EventEncodingError(f"type {type(value).__name__} has no canonical encoding")


def canonical_bytes(value: Any) -> bytes:
    """msgpack of `canonical_value(value)`."""
    try:
        packed: bytes = msgpack.packb(canonical_value(value), use_bin_type=True)
        return packed
    except UnicodeEncodeError as exc:
        raise EventEncodingError(f"a string is not valid Unicode: {exc.reason}") from exc


class _Packed:
    """Already canonical msgpack bytes, spliced as one element by `canonical_array`."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def canonical_array(items: list[Any]) -> bytes:
    """`canonical_bytes(items)` for at most 15 items, with `_Packed` items spliced in as they
    are (a msgpack array is its header followed by its elements' encodings), so a payload
    shared by several encodings of one event is made canonical and packed once."""
    assert len(items) <= 15
    parts = [bytes((0x90 | len(items),))]
    for item in items:
        parts.append(item.data if type(item) is _Packed else canonical_bytes(item))
    return b"".join(parts)


@dataclass(frozen=True)
class ChargerEvent:
    """One charger-to-CSMS call, as received by one node.

    `payload` is the OCPP payload as the charger sent it (camelCase keys, plain JSON types),
    except that its idTags are in hashed form: the constructor hashes plaintext ones
    (`hash_id_tags`), so no ChargerEvent holds a plaintext idTag.
    `ingress_node` is the 0x-hex (lowercase) address of the validator that authenticated the
    charger and vouches for the event ("" while unsigned); `received_at_ms` is that node's
    clock; `connection_id` names the authenticated connection; `signature` is the ingress
    validator's vouch (b"" while unsigned). Only ocpp_adapter/vouching.py decides whether a vouch
    is valid; this class only bounds the shapes.
    The event is immutable (do not mutate `payload`): its bytes and ids are computed once.
    """

    charger_id: str
    ocpp_version: str
    action: str
    message_id: str
    payload: dict[str, Any]
    ingress_node: str
    received_at_ms: int
    connection_id: bytes = NO_CONNECTION
    signature: bytes = b""

    def __post_init__(self) -> None:
        if self.ocpp_version not in OCPP_VERSIONS:
            raise EventEncodingError(f"ocpp_version {self.ocpp_version!r} not in {OCPP_VERSIONS}")
        if not self.charger_id or not self.action or not self.message_id:
            raise EventEncodingError("charger_id, action and message_id must be non-empty")
        if not isinstance(self.payload, dict):
            raise EventEncodingError("payload must be a JSON object")
        object.__setattr__(self, "payload", hash_id_tags(self.ocpp_version, self.action, self.payload))
        if max(len(self.charger_id), len(self.action), len(self.message_id)) > MAX_TEXT_CHARS:
            raise EventEncodingError(f"charger_id, action and message_id are at most {MAX_TEXT_CHARS} characters")
        if not 0 <= self.received_at_ms < 1 << 63:
            raise EventEncodingError("received_at_ms must be in [0, 2^63)")
        if self.ingress_node and not _ADDRESS_HEX.fullmatch(self.ingress_node):
            raise EventEncodingError("ingress_node must be a lowercase 0x-hex 20-byte address (or empty if unsigned)")
        if not isinstance(self.connection_id, bytes) or len(self.connection_id) != CONNECTION_ID_BYTES:
            raise EventEncodingError(f"connection_id must be {CONNECTION_ID_BYTES} bytes")
        if not isinstance(self.signature, bytes) or len(self.signature) not in (0, SIGNATURE_BYTES):
            raise EventEncodingError(f"signature must be {SIGNATURE_BYTES} bytes (or empty if unsigned)")

    @property
    def ingress_address(self) -> bytes:
        """The ingress validator's 20-byte address (b"" while unsigned)."""
        return bytes.fromhex(self.ingress_node[2:]) if self.ingress_node else b""

    def unsigned(self) -> ChargerEvent:
        """This event without ingress address and signature (what the adapter produced)."""
        return replace(self, ingress_node="", signature=b"")

    def with_vouch(self, ingress: bytes, signature: bytes) -> ChargerEvent:
        """This event named as received by validator `ingress` and carrying its `signature`."""
        if len(ingress) != ADDRESS_BYTES:
            raise EventEncodingError(f"ingress address must be {ADDRESS_BYTES} bytes")
        return replace(self, ingress_node="0x" + ingress.hex(), signature=signature)

    def to_bytes(self) -> bytes:
        """The canonical encoding; the same event always gives the same bytes."""
        return self._encoded

    @cached_property
    def _payload(self) -> _Packed:
        """The payload's canonical bytes, made once for the event's three encodings."""
        return _Packed(canonical_bytes(self.payload))

    def _fields(self) -> list[Any]:
        return [
            ENCODING_VERSION, self.charger_id, self.ocpp_version, self.action, self.message_id, self._payload,
            self.received_at_ms, self.ingress_address, self.connection_id,
        ]

    @cached_property
    def body_hash(self) -> bytes:
        """keccak-256 of the canonical bytes without the signature: what the ingress validator signs."""
        return keccak256(canonical_array(self._fields()))

    @cached_property
    def _encoded(self) -> bytes:
        data = canonical_array([*self._fields(), self.signature])
        if len(data) > MAX_EVENT_BYTES:
            raise EventEncodingError(f"event is {len(data)} bytes, limit {MAX_EVENT_BYTES}")
        return data

    @cached_property
    def event_id(self) -> bytes:
        """keccak-256 of the canonical bytes: the event's identity in mempool, blocks and proofs."""
        return keccak256(self.to_bytes())

    @cached_property
    def dedup_key(self) -> bytes:
        """Identity of the *charger message*, independent of which node received it, when, on
        which connection, and of the signature.

        A charger retrying the same message id with the same payload (at any node) has the
        same dedup key, so the ledger applies it once and answers every retry the same way.
        """
        return keccak256(
            canonical_array([self.charger_id, self.ocpp_version, self.message_id, self.action, self._payload])
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
        if not isinstance(fields, list) or not fields or fields[0] != ENCODING_VERSION:
            found = fields[0] if isinstance(fields, list) and fields else None
            raise EventEncodingError(f"not a version-{ENCODING_VERSION} ChargerEvent array (version {found!r}); "
                                     "older events are unsigned and refused")
        if len(fields) != 10:
            raise EventEncodingError(f"a ChargerEvent array has 10 fields, not {len(fields)}")
        _, charger_id, version, action, message_id, payload, received, ingress, connection, signature = fields
        if not all(isinstance(x, str) for x in (charger_id, version, action, message_id)):
            raise EventEncodingError("text fields must be strings")
        if not isinstance(received, int) or isinstance(received, bool):
            raise EventEncodingError("received_at_ms must be an integer")
        if not all(isinstance(x, bytes) for x in (ingress, connection, signature)):
            raise EventEncodingError("ingress, connection_id and signature must be byte strings")
        if len(ingress) not in (0, ADDRESS_BYTES):
            raise EventEncodingError(f"ingress must be {ADDRESS_BYTES} bytes (or empty if unsigned)")
        if hash_id_tags(version, action, payload) is not payload:
            raise EventEncodingError(f"the {action} payload carries a plaintext idTag (or one not in the hashed form "
                                     f"{TAG_HASH_PREFIX}<64 lowercase hex>): events carry idTags only as hashes")
        event = cls(charger_id, version, action, message_id, payload, "0x" + ingress.hex() if ingress else "",
                    received, connection, signature)
        if event.to_bytes() != data:
            raise EventEncodingError("bytes are not in canonical form")
        return event
