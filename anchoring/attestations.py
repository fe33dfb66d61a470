"""Attestations: a validator's EIP-712 signature over an anchor batch, a settlement batch or a
reward distribution, carried as a consensus payload so that every node learns the same signature set.

Wire format of a payload (strict, bounded, canonical): one tag byte, then msgpack of a
fixed-order array.

    ANCHOR_ATTESTATION_TAG (0xA1) || [1, batchId, root(bin 32), firstHeight, lastHeight,
                                      eventCount, signer(bin 20), signature(bin 65)]
    SETTLEMENT_ATTESTATION_TAG (0xA2) || [1, batchId, count, settlementsHash(bin 32),
                                          signer(bin 20), signature(bin 65)]

A settlement batch's entries are not on the wire: every node derives the same list of
`Settlement`s from its own ledger (devsen/app.py, `settlement_batches`), and an attestation
counts only where its (batchId, count, settlementsHash) equals the node's own batch.

    REWARD_ATTESTATION_TAG (0xA5) || [1, epoch, part, parts, [[owner(bin 20), amount(bin 32)], ...],
                                      signer(bin 20), signature(bin 65)]   (anchoring/rewards.py)

A reward attestation signs one part (0..parts-1) of an epoch's distribution; an epoch with more
than MAX_PAYOUTS owners is several parts, each with its own quorum and transaction.

The node tells payload kinds apart by the first byte (`payload_kind`). Decoding rejects
anything that does not re-encode to the same bytes, so one attestation has one encoding.
Signatures follow consensus/SIGNING.md: `AnchorBatch` under the Anchor contract's domain,
`SettlementBatch(bytes32 settlementsHash)` under the Escrow contract's domain (settlementsHash:
anchoring/escrow_sign.py), `RewardDistribution` under the Rewards contract's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from anchoring.rewards import MAX_PAYOUTS, RewardError, RewardSubject
from consensus.signing import ANCHOR_BATCH_TYPE, SETTLEMENT_BATCH_TYPE, SETTLEMENT_TYPE
from primitives.eip712 import (
    SIGNATURE_BYTES,
    Domain,
    SignatureError,
    SigningKey,
    hash_struct,
    recover_address,
    typed_digest,
)
from primitives.hashing import keccak256

ANCHOR_ATTESTATION_TAG = 0xA1
SETTLEMENT_ATTESTATION_TAG = 0xA2
REWARD_ATTESTATION_TAG = 0xA5
ATTESTATION_TAGS = frozenset({ANCHOR_ATTESTATION_TAG, SETTLEMENT_ATTESTATION_TAG, REWARD_ATTESTATION_TAG})
ATTESTATION_VERSION = 1
MAX_ATTESTATION_BYTES = 256  # both kinds encode to < 200 bytes
UINT64_MAX = (1 << 64) - 1
MAX_REWARD_ATTESTATION_BYTES = 128 + 60 * MAX_PAYOUTS  # a payout encodes to 58 bytes


class AttestationError(ValueError):
    """A payload is not a well-formed attestation, or its signature does not match its signer."""


def _check_uint(name: str, value: int, bits: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << bits:
        raise AttestationError(f"{name} must be a uint{bits}, got {value!r}")


def _check_bytes(name: str, value: bytes, length: int) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise AttestationError(f"{name} must be {length} bytes")


@dataclass(frozen=True, slots=True)
class AnchorBatch:
    """The EIP-712 `AnchorBatch`: a Merkle root over the events of heights first..last."""

    batch_id: int
    root: bytes
    first_height: int
    last_height: int
    event_count: int

    def __post_init__(self) -> None:
        for name in ("batch_id", "first_height", "last_height", "event_count"):
            _check_uint(name, getattr(self, name), 64)
        _check_bytes("root", self.root, 32)
        if self.first_height > self.last_height:
            raise AttestationError("first_height must not exceed last_height")
        if (self.event_count == 0) != (self.root == b"\x00" * 32):
            raise AttestationError("the root is zero exactly when the batch has no events")

    def digest(self, domain: Domain) -> bytes:
        """The EIP-712 digest validators sign, under the Anchor contract's domain."""
        return typed_digest(domain, ANCHOR_BATCH_TYPE, [
            self.batch_id, self.root, self.first_height, self.last_height, self.event_count])


@dataclass(frozen=True, slots=True)
class Settlement:
    """One entry of a settlement batch (the EIP-712 `Settlement` struct): pay `amount` for
    `energy_wh` from escrow session `session_id`."""

    session_id: bytes
    energy_wh: int
    amount: int

    def __post_init__(self) -> None:
        _check_bytes("session_id", self.session_id, 32)
        _check_uint("energy_wh", self.energy_wh, 64)
        _check_uint("amount", self.amount, 256)


MAX_SETTLEMENT_BATCH = 256  # Escrow.MAX_BATCH: entries of one settleBatch transaction


@dataclass(frozen=True, slots=True)
class SettlementBatch:
    """The EIP-712 `SettlementBatch(bytes32 settlementsHash)` of `Escrow.settleBatch(entries)`.

    Identity and equality are (batch_id, count, settlements_hash); `entries` travel only inside
    a node (its own ledger derives them), so an attestation decoded from the wire has none."""

    batch_id: int
    count: int
    settlements_hash: bytes
    entries: tuple[Settlement, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        _check_uint("batch_id", self.batch_id, 64)
        _check_bytes("settlements_hash", self.settlements_hash, 32)
        if not isinstance(self.count, int) or not 1 <= self.count <= MAX_SETTLEMENT_BATCH:
            raise AttestationError(f"count must be 1..{MAX_SETTLEMENT_BATCH}, got {self.count!r}")
        if self.entries and (len(self.entries) != self.count
                             or settlements_hash(self.entries) != self.settlements_hash):
            raise AttestationError("the entries do not match count and settlements_hash")

    @classmethod
    def of(cls, batch_id: int, entries: Sequence[Settlement]) -> SettlementBatch:
        """The batch of `entries` (1..MAX_SETTLEMENT_BATCH, in settleBatch order)."""
        if not 1 <= len(entries) <= MAX_SETTLEMENT_BATCH:
            raise AttestationError(f"a settlement batch has 1..{MAX_SETTLEMENT_BATCH} entries, got {len(entries)}")
        return cls(batch_id, len(entries), settlements_hash(entries), tuple(entries))

    def digest(self, domain: Domain) -> bytes:
        """The EIP-712 digest validators sign, under the Escrow contract's domain."""
        return typed_digest(domain, SETTLEMENT_BATCH_TYPE, [self.settlements_hash])


def settlements_hash(entries: Sequence[Settlement]) -> bytes:
    """keccak256 of the entries' `Settlement` struct hashes, in order (EIP-712 `Settlement[]`)."""
    return keccak256(b"".join(hash_struct(SETTLEMENT_TYPE, [e.session_id, e.energy_wh, e.amount]) for e in entries))


Subject = AnchorBatch | SettlementBatch | RewardSubject  # what validators attest


@dataclass(frozen=True, slots=True)
class Attestation:
    """One validator's signature over `subject`."""

    subject: Subject
    signer: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_bytes("signer", self.signer, 20)
        _check_bytes("signature", self.signature, SIGNATURE_BYTES)

    @property
    def tag(self) -> int:
        """The payload tag byte of this attestation's kind."""
        if isinstance(self.subject, RewardSubject):
            return REWARD_ATTESTATION_TAG
        return ANCHOR_ATTESTATION_TAG if isinstance(self.subject, AnchorBatch) else SETTLEMENT_ATTESTATION_TAG

    def encode(self) -> bytes:
        """The canonical payload bytes (tag byte + msgpack)."""
        subject = self.subject
        fields: list[Any]
        if isinstance(subject, AnchorBatch):
            fields = [ATTESTATION_VERSION, subject.batch_id, subject.root, subject.first_height,
                      subject.last_height, subject.event_count]
        elif isinstance(subject, RewardSubject):
            fields = [ATTESTATION_VERSION, subject.epoch, subject.part, subject.parts,
                      [[owner, amount.to_bytes(32, "big")] for owner, amount in subject.payouts]]
        else:
            fields = [ATTESTATION_VERSION, subject.batch_id, subject.count, subject.settlements_hash]
        data: bytes = bytes([self.tag]) + msgpack.packb([*fields, self.signer, self.signature], use_bin_type=True)
        assert len(data) <= (MAX_REWARD_ATTESTATION_BYTES if self.tag == REWARD_ATTESTATION_TAG
                             else MAX_ATTESTATION_BYTES)
        return data

    def verify(self, domain: Domain) -> None:
        """Raise AttestationError unless the signature recovers to `signer` under `domain`."""
        try:
            recovered = recover_address(self.subject.digest(domain), self.signature)
        except SignatureError as exc:
            raise AttestationError(f"bad attestation signature: {exc}") from exc
        if recovered != self.signer:
            raise AttestationError(
                f"signature recovers to 0x{recovered.hex()}, not the claimed signer 0x{self.signer.hex()}")


def attest(subject: Subject, key: SigningKey, domain: Domain) -> Attestation:
    """Sign `subject` with `key` under `domain` (Anchor domain for batches, Escrow for settlements)."""
    return Attestation(subject, key.address, key.sign(subject.digest(domain)))


def payload_kind(payload: bytes) -> int | None:
    """The attestation tag of `payload`, or None if it is not an attestation payload."""
    return payload[0] if payload and payload[0] in ATTESTATION_TAGS else None


def decode_attestation(payload: bytes) -> Attestation:
    """Parse a payload strictly; the signature is not checked here (see `Attestation.verify`)."""
    if not payload or payload[0] not in ATTESTATION_TAGS:
        raise AttestationError("not an attestation payload (unknown tag byte)")
    if payload[0] == REWARD_ATTESTATION_TAG:
        return _decode_reward_attestation(payload)
    if len(payload) > MAX_ATTESTATION_BYTES:
        raise AttestationError(f"attestation is {len(payload)} bytes, limit {MAX_ATTESTATION_BYTES}")
    try:
        fields = msgpack.unpackb(payload[1:], raw=False, strict_map_key=True, max_bin_len=SIGNATURE_BYTES,
                                 max_str_len=0, max_array_len=8, max_map_len=0, max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise AttestationError(f"attestation body is not msgpack: {exc}") from exc
    expected = 8 if payload[0] == ANCHOR_ATTESTATION_TAG else 6
    if not isinstance(fields, list) or len(fields) != expected or fields[0] != ATTESTATION_VERSION:
        raise AttestationError(f"attestation body must be a version-{ATTESTATION_VERSION} array of {expected}")
    try:
        subject: AnchorBatch | SettlementBatch
        if payload[0] == ANCHOR_ATTESTATION_TAG:
            _, batch_id, root, first, last, count, signer, signature = fields
            subject = AnchorBatch(batch_id, root, first, last, count)
        else:
            _, batch_id, count, hashed, signer, signature = fields
            subject = SettlementBatch(batch_id, count, hashed)
        attestation = Attestation(subject, signer, signature)
    except (TypeError, ValueError) as exc:
        raise AttestationError(f"bad attestation field: {exc}") from exc
    if attestation.encode() != payload:
        raise AttestationError("attestation is not in canonical form")
    return attestation


def _decode_reward_attestation(payload: bytes) -> Attestation:
    """Strict decoding of a REWARD_ATTESTATION_TAG payload (bounded by MAX_PAYOUTS)."""
    if len(payload) > MAX_REWARD_ATTESTATION_BYTES:
        raise AttestationError(f"reward attestation is {len(payload)} bytes, limit {MAX_REWARD_ATTESTATION_BYTES}")
    try:
        fields = msgpack.unpackb(payload[1:], raw=False, strict_map_key=True, max_bin_len=SIGNATURE_BYTES,
                                 max_str_len=0, max_array_len=MAX_PAYOUTS, max_map_len=0, max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise AttestationError(f"attestation body is not msgpack: {exc}") from exc
    if not isinstance(fields, list) or len(fields) != 7 or fields[0] != ATTESTATION_VERSION:
        raise AttestationError(f"reward attestation body must be a version-{ATTESTATION_VERSION} array of 7")
    try:
        _, epoch, part, parts, payouts, signer, signature = fields
        items = []
        for item in payouts:
            owner, amount = item
            _check_bytes("amount", amount, 32)
            items.append((owner, int.from_bytes(amount, "big")))
        _check_uint("epoch", epoch, 64)
        _check_uint("part", part, 32)
        _check_uint("parts", parts, 32)
        attestation = Attestation(RewardSubject(epoch, tuple(items), part, parts), signer, signature)
    except (TypeError, ValueError, RewardError) as exc:
        raise AttestationError(f"bad reward attestation field: {exc}") from exc
    if attestation.encode() != payload:
        raise AttestationError("attestation is not in canonical form")
    return attestation
