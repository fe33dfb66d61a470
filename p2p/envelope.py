"""Signed envelopes for every application message, and the validator <-> peer id directory.

Wire form: msgpack `[1, network_id, kind, sender, body, signature]` where
- `network_id` (32 bytes) is the consensus EIP-712 domain separator (chain id + ValidatorSet
  contract): a node of another network or chain derives another id and is dropped;
- `kind` says which protocol the body belongs to (a gossip topic or a stream protocol);
- `sender` is the 20-byte validator address, `signature` its 65-byte secp256k1 signature
  over `keccak256("DEVSEN/p2p-envelope/v1" || network_id || kind || sender || keccak256(body))`.

`open_envelope` checks, cheapest first: shape, network id, kind, sender in the validator
set, the libp2p peer id the message came from is the one bound to that sender, signature.
Every refusal is an `EnvelopeDropped` with a `DropReason`, counted by `DropCounters`.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgpack

from primitives.eip712 import (
    SIGNATURE_BYTES,
    Domain,
    SignatureError,
    SigningKey,
    recover_address,
    to_checksum_hex,
)
from primitives.hashing import keccak256

ENVELOPE_VERSION = 1
ENVELOPE_DOMAIN_TAG = b"DEVSEN/p2p-envelope/v1"
NETWORK_ID_BYTES = 32
ADDRESS_BYTES = 20
ENVELOPE_OVERHEAD_BYTES = 160  # msgpack framing + ids + signature, an upper bound
MAX_PEER_ID_BYTES = 64  # ValidatorSet.MAX_PEER_ID_BYTES
MAX_LOGGED_REFUSALS = 1024

log = logging.getLogger("devsen.p2p.directory")


class MessageKind(enum.IntEnum):
    """What an envelope's body is; one kind per topic or stream protocol."""

    EVENT_BATCH = 1
    CONSENSUS = 2
    SYNC_REQUEST = 3
    SYNC_RESPONSE = 4
    PEER_EXCHANGE = 5


class DropReason(enum.StrEnum):
    """Why an incoming message was dropped."""

    MALFORMED = "malformed"
    WRONG_NETWORK = "wrong_network"
    WRONG_KIND = "wrong_kind"
    NOT_VALIDATOR = "not_validator"
    PEER_MISMATCH = "peer_mismatch"
    BAD_SIGNATURE = "bad_signature"
    OVERSIZE = "oversize"


class EnvelopeDropped(Exception):
    """An incoming envelope is refused; `reason` says why."""

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason


def network_id_of(domain: Domain) -> bytes:
    """The network id: the consensus domain separator (chain id + ValidatorSet contract)."""
    return domain.separator


@dataclass(frozen=True, slots=True)
class Envelope:
    """An opened (verified) envelope."""

    network_id: bytes
    kind: MessageKind
    sender: bytes
    body: bytes
    signature: bytes


def envelope_digest(network_id: bytes, kind: int, sender: bytes, body: bytes) -> bytes:
    """The 32-byte digest a sender signs."""
    return keccak256(
        ENVELOPE_DOMAIN_TAG + network_id + bytes([kind]) + sender + keccak256(body)
    )


def seal(key: SigningKey, network_id: bytes, kind: MessageKind, body: bytes) -> bytes:
    """Wrap `body` in a signed envelope (wire bytes)."""
    assert len(network_id) == NETWORK_ID_BYTES
    sender = key.address
    signature = key.sign(envelope_digest(network_id, kind, sender, body))
    wire = msgpack.packb(
        [ENVELOPE_VERSION, network_id, int(kind), sender, body, signature], use_bin_type=True
    )
    assert isinstance(wire, bytes)
    return wire


def peer_id_problem(peer: object) -> str | None:
    """Why `peer` cannot be a libp2p peer id (raw bytes, 1..MAX_PEER_ID_BYTES), or None.

    Bytes that are no valid multihash are kept: such a peer can never connect, so the
    binding only makes its validator unreachable, which is what it asked for.
    """
    if not isinstance(peer, bytes):
        return f"peer id is a {type(peer).__name__}, not bytes"
    if not peer:
        return "empty peer id"
    if len(peer) > MAX_PEER_ID_BYTES:
        return f"peer id of {len(peer)} bytes exceeds {MAX_PEER_ID_BYTES}"
    return None


class ValidatorDirectory:
    """The current validator set as address <-> libp2p peer id (raw peer id bytes).

    The node fills it from the on-chain ValidatorSet; until then, from static config.
    `replace` swaps the whole set atomically (a validator-set change). It is total: a
    malformed entry or a peer id claimed by several validators is a refused entry (logged
    once, listed in `refused`), never an exception. Of several claimants of one peer id,
    the validator already bound to it keeps it, else the lowest address: the same outcome
    on every node fed the same bindings.
    """

    def __init__(self, bindings: Mapping[bytes, bytes] | None = None) -> None:
        self._peer_by_address: dict[bytes, bytes] = {}
        self._address_by_peer: dict[bytes, bytes] = {}
        self.refused: dict[bytes, str] = {}  # address (as given) -> why its binding was refused
        self._logged: set[tuple[bytes, str]] = set()
        self.replace(bindings or {})

    def replace(self, bindings: Mapping[bytes, bytes]) -> None:
        """Install a new validator set; malformed or duplicated bindings are refused entries."""
        refused: dict[bytes, str] = {}
        claims: dict[bytes, list[bytes]] = {}
        for address, peer in bindings.items():
            key = address if isinstance(address, bytes) else repr(address).encode()[:64]
            if not isinstance(address, bytes) or len(address) != ADDRESS_BYTES:
                refused[key] = "validator address is not 20 bytes"
                continue
            problem = peer_id_problem(peer)
            if problem is not None:
                refused[address] = problem
                continue
            assert isinstance(peer, bytes)
            claims.setdefault(peer, []).append(address)
        by_peer: dict[bytes, bytes] = {}
        for peer, claimants in claims.items():
            incumbent = self._address_by_peer.get(peer)
            keeper = incumbent if incumbent in claimants else min(claimants)
            by_peer[peer] = keeper
            for other in claimants:
                if other != keeper:
                    refused[other] = f"peer id already bound to validator {to_checksum_hex(keeper)}"
        self._peer_by_address = {address: peer for peer, address in by_peer.items()}
        self._address_by_peer = by_peer
        self.refused = refused
        for address, reason in sorted(refused.items()):
            if (address, reason) not in self._logged and len(self._logged) < MAX_LOGGED_REFUSALS:
                self._logged.add((address, reason))
                shown = to_checksum_hex(address) if len(address) == ADDRESS_BYTES else repr(address)
                log.warning("validator directory refused the binding of %s: %s", shown, reason)

    def __len__(self) -> int:
        return len(self._peer_by_address)

    def __contains__(self, address: object) -> bool:
        return address in self._peer_by_address

    def addresses(self) -> list[bytes]:
        """Validator addresses, ascending."""
        return sorted(self._peer_by_address)

    def peer_of(self, address: bytes) -> bytes | None:
        """The peer id bound to a validator address."""
        return self._peer_by_address.get(address)

    def address_of(self, peer_id: bytes) -> bytes | None:
        """The validator address bound to a peer id, None for a non-validator peer."""
        return self._address_by_peer.get(peer_id)

    def peers(self) -> Iterable[bytes]:
        """Peer ids of all validators."""
        return self._address_by_peer.keys()


def open_envelope(
    wire: bytes,
    *,
    network_id: bytes,
    kinds: tuple[MessageKind, ...],
    directory: ValidatorDirectory,
    from_peer: bytes,
    max_body_bytes: int,
) -> Envelope:
    """Verify an envelope of one of `kinds` received from libp2p peer `from_peer` (raw id).

    Raises EnvelopeDropped with the reason of the first failed check.
    """
    if len(wire) > max_body_bytes + ENVELOPE_OVERHEAD_BYTES:
        raise EnvelopeDropped(DropReason.OVERSIZE, f"{len(wire)} bytes")
    try:
        fields = msgpack.unpackb(wire, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise EnvelopeDropped(DropReason.MALFORMED, f"not msgpack: {exc}") from exc
    if not isinstance(fields, list) or len(fields) != 6 or fields[0] != ENVELOPE_VERSION:
        raise EnvelopeDropped(DropReason.MALFORMED, "not a version-1 envelope")
    _, got_network, got_kind, sender, body, signature = fields
    if not (
        isinstance(got_network, bytes)
        and isinstance(got_kind, int)
        and isinstance(sender, bytes)
        and isinstance(body, bytes)
        and isinstance(signature, bytes)
        and len(sender) == ADDRESS_BYTES
        and len(signature) == SIGNATURE_BYTES
    ):
        raise EnvelopeDropped(DropReason.MALFORMED, "field types")
    if got_network != network_id:
        raise EnvelopeDropped(DropReason.WRONG_NETWORK)
    if got_kind not in kinds:
        raise EnvelopeDropped(DropReason.WRONG_KIND, f"kind {got_kind} not in {[int(k) for k in kinds]}")
    kind = MessageKind(got_kind)
    if len(body) > max_body_bytes:
        raise EnvelopeDropped(DropReason.OVERSIZE, f"body of {len(body)} bytes")
    bound_peer = directory.peer_of(sender)
    if bound_peer is None:
        raise EnvelopeDropped(DropReason.NOT_VALIDATOR, to_checksum_hex(sender))
    if bound_peer != from_peer:
        raise EnvelopeDropped(DropReason.PEER_MISMATCH, to_checksum_hex(sender))
    try:
        signer = recover_address(envelope_digest(network_id, kind, sender, body), signature)
    except SignatureError as exc:
        raise EnvelopeDropped(DropReason.BAD_SIGNATURE, str(exc)) from exc
    if signer != sender:
        raise EnvelopeDropped(DropReason.BAD_SIGNATURE, "signer is not the sender")
    return Envelope(network_id, kind, sender, body, signature)


class DropCounters:
    """Counts of dropped messages by (where, reason); where = topic or protocol name."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()

    def add(self, where: str, reason: str, count: int = 1) -> None:
        """Count `count` drops."""
        self._counts[(where, reason)] += count

    def get(self, where: str, reason: str) -> int:
        """Drops so far at `where` for `reason`."""
        return self._counts[(where, reason)]

    def total(self) -> int:
        """All drops."""
        return sum(self._counts.values())

    def snapshot(self) -> dict[str, int]:
        """`{"where/reason": count}` for metrics and tests."""
        return {f"{w}/{r}": n for (w, r), n in sorted(self._counts.items())}
