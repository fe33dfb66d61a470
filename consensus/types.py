"""Consensus data types and their canonical wire encoding (consensus/SIGNING.md).

Blocks, signed votes and proposals, commit certificates, validator sets and equivocation
evidence. Every wire message is a msgpack array `[WIRE_VERSION, tag, fields...]`; decoding
is strict (size bounds, exact field types, canonical re-encoding), so a hostile peer can
only make `decode_message` raise `WireError`, never allocate without bound.

Quorum: validators may carry voting power; a quorum is more than 2/3 of the total power,
`floor(2 * total / 3) + 1`. With every power equal to 1 (what the on-chain contracts
assume) that is SIGNING.md's `floor(2n/3) + 1` signatures.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import msgpack

from consensus.signing import PROPOSAL_TYPE, VOTE_TYPE
from primitives.eip712 import (
    SIGNATURE_BYTES,
    ZERO_HASH,
    Domain,
    SignatureError,
    SigningKey,
    abi_encode,
    recover_address,
    typed_digest,
)
from primitives.hashing import keccak256, validators_hash

WIRE_VERSION = 1

MAX_PAYLOADS_PER_BLOCK = 4096
MAX_PAYLOAD_BYTES = 1024 * 1024  # one opaque payload (a batch of charger events)
MAX_BLOCK_PAYLOAD_BYTES = 4 * 1024 * 1024  # sum of payload sizes in one block
MAX_APP_HEADER_BYTES = 4096
MAX_VALIDATORS = 128
MAX_TOTAL_POWER = 10_000  # bounds the weighted round-robin proposer schedule
MAX_HEIGHT = (1 << 64) - 1
MAX_ROUND = (1 << 31) - 1  # fits uint32 and int32 polRound
MAX_MESSAGE_BYTES = MAX_BLOCK_PAYLOAD_BYTES + MAX_PAYLOADS_PER_BLOCK * 8 + 64 * 1024
MAX_BLOCKS_PER_REQUEST = 64

ADDRESS_BYTES = 20
HASH_BYTES = 32


class WireError(ValueError):
    """Bytes or fields that cannot form a valid consensus message."""


class CertificateError(ValueError):
    """A commit certificate that does not prove a quorum of precommits."""


class VoteType(enum.IntEnum):
    """SIGNING.md voteType: 1 = prevote, 2 = precommit."""

    PREVOTE = 1
    PRECOMMIT = 2


class Tag(enum.IntEnum):
    """Wire message tags (second element of every message array)."""

    PROPOSAL = 1
    VOTE = 2
    COMMITTED_BLOCK = 3
    BLOCK_REQUEST = 4
    EVIDENCE = 5


def _check_bytes(name: str, value: object, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise WireError(f"{name} must be {size} bytes")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise WireError(f"{name} must be an integer in [{low}, {high}]")


def _check_signature(value: object) -> None:
    _check_bytes("signature", value, SIGNATURE_BYTES)


# --------------------------------------------------------------------------- blocks


def payloads_hash_of(payload_hashes: Iterable[bytes]) -> bytes:
    """payloadsHash of SIGNING.md from the payloads' keccak-256 hashes, in block order."""
    return keccak256(b"".join(payload_hashes))


def block_hash(height: int, timestamp_ms: int, proposer: bytes, prev_block_hash: bytes,
               app_state_hash: bytes, payloads_hash: bytes, app_header_hash: bytes) -> bytes:
    """The block hash of SIGNING.md: keccak256 of abi.encode of the seven header fields.

    One definition for the replicas (`Block.hash`) and the audit, which has only the header
    fields and payload hashes of a proof document."""
    return keccak256(abi_encode(
        ["uint64", "uint64", "address", "bytes32", "bytes32", "bytes32", "bytes32"],
        [height, timestamp_ms, proposer, prev_block_hash, app_state_hash, payloads_hash, app_header_hash]))


@dataclass(frozen=True)
class Block:
    """A proposed value: opaque payloads in order plus the chain links and app header.

    `app_state_hash` is the application state hash after applying the previous block;
    `app_header` is opaque to consensus (Ethereum read height, anchor data, ...).
    """

    height: int
    timestamp_ms: int
    proposer: bytes
    prev_block_hash: bytes
    app_state_hash: bytes
    payloads: tuple[bytes, ...]
    app_header: bytes

    def __post_init__(self) -> None:
        _check_int("height", self.height, 1, MAX_HEIGHT)
        _check_int("timestamp_ms", self.timestamp_ms, 0, MAX_HEIGHT)
        _check_bytes("proposer", self.proposer, ADDRESS_BYTES)
        _check_bytes("prev_block_hash", self.prev_block_hash, HASH_BYTES)
        _check_bytes("app_state_hash", self.app_state_hash, HASH_BYTES)
        if not isinstance(self.payloads, tuple):
            raise WireError("payloads must be a tuple of bytes")
        if len(self.payloads) > MAX_PAYLOADS_PER_BLOCK:
            raise WireError(f"{len(self.payloads)} payloads, limit {MAX_PAYLOADS_PER_BLOCK}")
        total = 0
        for payload in self.payloads:
            if not isinstance(payload, bytes) or not payload:
                raise WireError("every payload must be non-empty bytes")
            if len(payload) > MAX_PAYLOAD_BYTES:
                raise WireError(f"payload of {len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}")
            total += len(payload)
        if total > MAX_BLOCK_PAYLOAD_BYTES:
            raise WireError(f"payloads total {total} bytes, limit {MAX_BLOCK_PAYLOAD_BYTES}")
        if not isinstance(self.app_header, bytes) or len(self.app_header) > MAX_APP_HEADER_BYTES:
            raise WireError(f"app_header must be bytes of at most {MAX_APP_HEADER_BYTES}")

    @cached_property
    def payloads_hash(self) -> bytes:
        """keccak256(abi.encodePacked(keccak256(p_0), ..., keccak256(p_n-1)))."""
        return payloads_hash_of(keccak256(p) for p in self.payloads)

    @cached_property
    def hash(self) -> bytes:
        """The block hash of SIGNING.md (abi.encode of the seven header fields)."""
        return block_hash(self.height, self.timestamp_ms, self.proposer, self.prev_block_hash,
                          self.app_state_hash, self.payloads_hash, keccak256(self.app_header))

    @property
    def payload_bytes(self) -> int:
        """Sum of payload sizes."""
        return sum(len(p) for p in self.payloads)

    def to_wire(self) -> list[Any]:
        return [
            self.height,
            self.timestamp_ms,
            self.proposer,
            self.prev_block_hash,
            self.app_state_hash,
            list(self.payloads),
            self.app_header,
        ]

    @classmethod
    def from_wire(cls, fields: object) -> Block:
        if not isinstance(fields, list) or len(fields) != 7:
            raise WireError("a block is a 7-element array")
        height, timestamp, proposer, prev, state, payloads, header = fields
        if not isinstance(payloads, list):
            raise WireError("payloads must be an array")
        return cls(height, timestamp, proposer, prev, state, tuple(payloads), header)


# --------------------------------------------------------------------------- votes


@dataclass(frozen=True)
class Vote:
    """A signed prevote or precommit; `block_hash == ZERO_HASH` is a vote for nil."""

    vote_type: VoteType
    height: int
    round: int
    block_hash: bytes
    validator: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if self.vote_type not in (VoteType.PREVOTE, VoteType.PRECOMMIT):
            raise WireError("vote_type must be 1 (prevote) or 2 (precommit)")
        _check_int("height", self.height, 1, MAX_HEIGHT)
        _check_int("round", self.round, 0, MAX_ROUND)
        _check_bytes("block_hash", self.block_hash, HASH_BYTES)
        _check_bytes("validator", self.validator, ADDRESS_BYTES)
        _check_signature(self.signature)

    @property
    def is_nil(self) -> bool:
        return self.block_hash == ZERO_HASH

    @staticmethod
    def digest_for(domain: Domain, vote_type: int, height: int, round: int, block_hash: bytes) -> bytes:
        """The EIP-712 digest of Vote(voteType, height, round, blockHash)."""
        return typed_digest(domain, VOTE_TYPE, [int(vote_type), height, round, block_hash])

    @classmethod
    def sign(
        cls, key: SigningKey, domain: Domain, vote_type: VoteType, height: int, round: int,
        block_hash: bytes,
    ) -> Vote:
        """Create and sign a vote with `key`."""
        digest = cls.digest_for(domain, vote_type, height, round, block_hash)
        return cls(VoteType(vote_type), height, round, block_hash, key.address, key.sign(digest))

    def verify(self, domain: Domain) -> bool:
        """True when the signature recovers to `validator` under `domain`."""
        digest = self.digest_for(domain, self.vote_type, self.height, self.round, self.block_hash)
        try:
            return recover_address(digest, self.signature) == self.validator
        except SignatureError:
            return False

    def to_bytes(self) -> bytes:
        return _pack(Tag.VOTE, [int(self.vote_type), self.height, self.round, self.block_hash,
                                self.validator, self.signature])

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Vote:
        if len(fields) != 6:
            raise WireError("a vote has 6 fields")
        vote_type, height, round_, block_hash, validator, signature = fields
        _check_int("vote_type", vote_type, 1, 2)
        return cls(VoteType(vote_type), height, round_, block_hash, validator, signature)


@dataclass(frozen=True)
class Proposal:
    """A signed proposal of `block` for (height, round); `pol_round` is -1 or the POL round.

    The signature covers Proposal(height, round, polRound, blockHash) with blockHash =
    block.hash, so it binds the whole block.
    """

    height: int
    round: int
    pol_round: int
    block: Block
    proposer: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_int("height", self.height, 1, MAX_HEIGHT)
        _check_int("round", self.round, 0, MAX_ROUND)
        _check_int("pol_round", self.pol_round, -1, MAX_ROUND)
        if not isinstance(self.block, Block):
            raise WireError("proposal block must be a Block")
        if self.block.height != self.height:
            raise WireError("proposal height differs from its block's height")
        if self.pol_round >= self.round:
            raise WireError("pol_round must be below round")
        _check_bytes("proposer", self.proposer, ADDRESS_BYTES)
        _check_signature(self.signature)

    @property
    def block_hash(self) -> bytes:
        return self.block.hash

    def digest(self, domain: Domain) -> bytes:
        """The EIP-712 digest of Proposal(height, round, polRound, blockHash)."""
        return typed_digest(domain, PROPOSAL_TYPE, [self.height, self.round, self.pol_round,
                                                    self.block.hash])

    @classmethod
    def sign(cls, key: SigningKey, domain: Domain, round: int, pol_round: int, block: Block) -> Proposal:
        """Create and sign a proposal of `block` with `key`."""
        digest = typed_digest(domain, PROPOSAL_TYPE, [block.height, round, pol_round, block.hash])
        return cls(block.height, round, pol_round, block, key.address, key.sign(digest))

    def verify(self, domain: Domain) -> bool:
        """True when the signature recovers to `proposer` under `domain`."""
        try:
            return recover_address(self.digest(domain), self.signature) == self.proposer
        except SignatureError:
            return False

    def to_bytes(self) -> bytes:
        return _pack(Tag.PROPOSAL, [self.height, self.round, self.pol_round, self.block.to_wire(),
                                    self.proposer, self.signature])

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Proposal:
        if len(fields) != 6:
            raise WireError("a proposal has 6 fields")
        height, round_, pol_round, block, proposer, signature = fields
        return cls(height, round_, pol_round, Block.from_wire(block), proposer, signature)


# --------------------------------------------------------------------------- validator sets


@dataclass(frozen=True)
class ValidatorSet:
    """Validators of one epoch: addresses strictly ascending, positive voting powers."""

    addresses: tuple[bytes, ...]
    powers: tuple[int, ...]
    epoch: int

    def __post_init__(self) -> None:
        if not 1 <= len(self.addresses) <= MAX_VALIDATORS:
            raise ValueError(f"a validator set has 1..{MAX_VALIDATORS} validators")
        if len(self.powers) != len(self.addresses):
            raise ValueError("addresses and powers differ in length")
        for address in self.addresses:
            if not isinstance(address, bytes) or len(address) != ADDRESS_BYTES:
                raise ValueError("validator addresses must be 20 bytes")
        if any(a >= b for a, b in zip(self.addresses, self.addresses[1:], strict=False)):
            raise ValueError("validator addresses must be strictly ascending")
        if any(not isinstance(p, int) or p <= 0 for p in self.powers):
            raise ValueError("voting powers must be positive integers")
        if sum(self.powers) > MAX_TOTAL_POWER:
            raise ValueError(f"total voting power is limited to {MAX_TOTAL_POWER}")
        if self.epoch < 0:
            raise ValueError("epoch must be >= 0")

    @classmethod
    def equal(cls, addresses: list[bytes] | tuple[bytes, ...], epoch: int = 0) -> ValidatorSet:
        """A set where every validator has power 1 (what the contracts verify)."""
        ordered = tuple(sorted(addresses))
        return cls(ordered, (1,) * len(ordered), epoch)

    @cached_property
    def _power_of(self) -> dict[bytes, int]:
        return dict(zip(self.addresses, self.powers, strict=True))

    def power(self, address: bytes) -> int:
        """Voting power of `address`, 0 for non-validators."""
        return self._power_of.get(address, 0)

    def __contains__(self, address: object) -> bool:
        return address in self._power_of

    @property
    def total_power(self) -> int:
        return sum(self.powers)

    @property
    def quorum_power(self) -> int:
        """More than 2/3 of the total power: floor(2 * total / 3) + 1."""
        return (2 * self.total_power) // 3 + 1

    @property
    def skip_power(self) -> int:
        """More than 1/3 of the total power (f + 1): at least one honest validator."""
        return self.total_power // 3 + 1

    @cached_property
    def _schedule(self) -> tuple[int, ...]:
        """Smooth weighted round-robin order over one period of `total_power` slots."""
        current = [0] * len(self.powers)
        total = self.total_power
        order = []
        for _ in range(total):
            for i, power in enumerate(self.powers):
                current[i] += power
            best = max(range(len(current)), key=lambda i: (current[i], -i))
            current[best] -= total
            order.append(best)
        return tuple(order)

    def proposer(self, height: int, round: int) -> bytes:
        """Weighted round-robin proposer of (height, round); every node computes the same."""
        schedule = self._schedule
        return self.addresses[schedule[(height + round) % len(schedule)]]

    @cached_property
    def validators_hash(self) -> bytes:
        """keccak256(abi.encode(address[] sortedValidators)) of SIGNING.md."""
        return validators_hash(self.addresses)


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class CommitCertificate:
    """A quorum of precommit signatures for (height, round, block_hash), ascending by signer."""

    height: int
    round: int
    block_hash: bytes
    signatures: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _check_int("height", self.height, 1, MAX_HEIGHT)
        _check_int("round", self.round, 0, MAX_ROUND)
        _check_bytes("block_hash", self.block_hash, HASH_BYTES)
        if not isinstance(self.signatures, tuple) or not 1 <= len(self.signatures) <= MAX_VALIDATORS:
            raise WireError(f"a certificate has 1..{MAX_VALIDATORS} signatures")
        for signature in self.signatures:
            _check_signature(signature)

    def digest(self, domain: Domain) -> bytes:
        """The precommit digest every signature signs."""
        return Vote.digest_for(domain, VoteType.PRECOMMIT, self.height, self.round, self.block_hash)

    def signers(self, domain: Domain) -> list[bytes]:
        """Recovered signer addresses in signature order (raises SignatureError)."""
        digest = self.digest(domain)
        return [recover_address(digest, s) for s in self.signatures]

    @classmethod
    def from_votes(cls, votes: list[Vote]) -> CommitCertificate:
        """Build a certificate from precommits for one (height, round, block_hash)."""
        if not votes:
            raise CertificateError("no precommits")
        first = votes[0]
        for vote in votes:
            if (vote.vote_type, vote.height, vote.round, vote.block_hash) != (
                VoteType.PRECOMMIT, first.height, first.round, first.block_hash
            ):
                raise CertificateError("precommits are for different (height, round, block)")
        by_signer = {v.validator: v.signature for v in votes}
        return cls(first.height, first.round, first.block_hash,
                   tuple(by_signer[a] for a in sorted(by_signer)))

    def to_wire(self) -> list[Any]:
        return [self.height, self.round, self.block_hash, list(self.signatures)]

    @classmethod
    def from_wire(cls, fields: object) -> CommitCertificate:
        if not isinstance(fields, list) or len(fields) != 4:
            raise WireError("a certificate is a 4-element array")
        height, round_, block_hash, signatures = fields
        if not isinstance(signatures, list):
            raise WireError("signatures must be an array")
        return cls(height, round_, block_hash, tuple(signatures))


def verify_certificate(
    certificate: CommitCertificate, validators: ValidatorSet, domain: Domain,
    block_hash: bytes | None = None,
) -> list[bytes]:
    """Check that `certificate` proves a quorum of `validators` precommitted its block.

    Signatures must recover to validators, strictly ascending by signer (as the contracts
    require), and their power must reach the quorum. If `block_hash` is given, the
    certificate must be for that block. Returns the signers; raises CertificateError.
    """
    if block_hash is not None and certificate.block_hash != block_hash:
        raise CertificateError("certificate is for another block")
    if certificate.block_hash == ZERO_HASH:
        raise CertificateError("certificate is for nil")
    try:
        signers = certificate.signers(domain)
    except SignatureError as exc:
        raise CertificateError(f"bad signature: {exc}") from exc
    if any(a >= b for a, b in zip(signers, signers[1:], strict=False)):
        raise CertificateError("signatures are not strictly ascending by signer")
    power = 0
    for signer in signers:
        if signer not in validators:
            raise CertificateError(f"signer 0x{signer.hex()} is not a validator")
        power += validators.power(signer)
    if power < validators.quorum_power:
        raise CertificateError(f"power {power} below quorum {validators.quorum_power}")
    return signers


@dataclass(frozen=True)
class CommittedBlock:
    """A decided block with the certificate that proves it (catch-up / block sync)."""

    block: Block
    certificate: CommitCertificate

    def __post_init__(self) -> None:
        if self.certificate.block_hash != self.block.hash or self.certificate.height != self.block.height:
            raise WireError("certificate does not match the block")

    @property
    def height(self) -> int:
        return self.block.height

    def to_bytes(self) -> bytes:
        return _pack(Tag.COMMITTED_BLOCK, [self.block.to_wire(), self.certificate.to_wire()])

    @classmethod
    def from_fields(cls, fields: list[Any]) -> CommittedBlock:
        if len(fields) != 2:
            raise WireError("a committed block has 2 fields")
        return cls(Block.from_wire(fields[0]), CommitCertificate.from_wire(fields[1]))


@dataclass(frozen=True)
class BlockRequest:
    """Ask a peer for committed blocks `from_height .. from_height + count - 1`."""

    from_height: int
    count: int

    def __post_init__(self) -> None:
        _check_int("from_height", self.from_height, 1, MAX_HEIGHT)
        _check_int("count", self.count, 1, MAX_BLOCKS_PER_REQUEST)

    def to_bytes(self) -> bytes:
        return _pack(Tag.BLOCK_REQUEST, [self.from_height, self.count])

    @classmethod
    def from_fields(cls, fields: list[Any]) -> BlockRequest:
        if len(fields) != 2:
            raise WireError("a block request has 2 fields")
        return cls(fields[0], fields[1])


class EvidenceKind(enum.IntEnum):
    DUPLICATE_VOTE = 1
    DUPLICATE_PROPOSAL = 2


@dataclass(frozen=True)
class Evidence:
    """Equivocation: two conflicting messages signed by one validator for one (height, round).

    `first` and `second` are the wire bytes of the two Votes or two Proposals, so anyone can
    re-verify the signatures.
    """

    kind: EvidenceKind
    validator: bytes
    height: int
    round: int
    first: bytes
    second: bytes

    def __post_init__(self) -> None:
        _check_int("kind", int(self.kind), 1, 2)
        _check_bytes("validator", self.validator, ADDRESS_BYTES)
        _check_int("height", self.height, 1, MAX_HEIGHT)
        _check_int("round", self.round, 0, MAX_ROUND)
        if not isinstance(self.first, bytes) or not isinstance(self.second, bytes):
            raise WireError("evidence messages must be bytes")
        if self.first == self.second:
            raise WireError("evidence needs two different messages")

    def to_bytes(self) -> bytes:
        return _pack(Tag.EVIDENCE, [int(self.kind), self.validator, self.height, self.round,
                                    self.first, self.second])

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Evidence:
        if len(fields) != 6:
            raise WireError("evidence has 6 fields")
        kind, validator, height, round_, first, second = fields
        _check_int("kind", kind, 1, 2)
        return cls(EvidenceKind(kind), validator, height, round_, first, second)

    def verify(self, domain: Domain) -> bool:
        """True when both messages decode, are signed by `validator` and truly conflict."""
        try:
            a, b = decode_message(self.first), decode_message(self.second)
        except WireError:
            return False
        if isinstance(a, Vote) and isinstance(b, Vote) and self.kind == EvidenceKind.DUPLICATE_VOTE:
            same_slot = (a.vote_type, a.height, a.round) == (b.vote_type, b.height, b.round)
            conflict = a.block_hash != b.block_hash
        elif (isinstance(a, Proposal) and isinstance(b, Proposal)
              and self.kind == EvidenceKind.DUPLICATE_PROPOSAL):
            same_slot = (a.height, a.round) == (b.height, b.round)
            conflict = (a.block_hash, a.pol_round) != (b.block_hash, b.pol_round)
        else:
            return False
        return (same_slot and conflict and a.height == self.height and a.round == self.round
                and self.validator == _signer(a) == _signer(b)
                and a.verify(domain) and b.verify(domain))


def _signer(message: Vote | Proposal) -> bytes:
    return message.validator if isinstance(message, Vote) else message.proposer


# --------------------------------------------------------------------------- wire codec

Message = Proposal | Vote | CommittedBlock | BlockRequest | Evidence

_DECODERS: dict[int, Any] = {
    Tag.PROPOSAL: Proposal.from_fields,
    Tag.VOTE: Vote.from_fields,
    Tag.COMMITTED_BLOCK: CommittedBlock.from_fields,
    Tag.BLOCK_REQUEST: BlockRequest.from_fields,
    Tag.EVIDENCE: Evidence.from_fields,
}


def _pack(tag: Tag, fields: list[Any]) -> bytes:
    data: bytes = msgpack.packb([WIRE_VERSION, int(tag), *fields], use_bin_type=True)
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {len(data)} bytes, limit {MAX_MESSAGE_BYTES}")
    return data


def decode_message(data: bytes) -> Message:
    """Decode one wire message strictly; raises WireError on anything malformed."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError("a message is bytes")
    data = bytes(data)
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {len(data)} bytes, limit {MAX_MESSAGE_BYTES}")
    try:
        fields = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
            max_bin_len=MAX_PAYLOAD_BYTES, max_str_len=0, max_map_len=0, max_ext_len=0,
            max_array_len=MAX_PAYLOADS_PER_BLOCK,
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(f"not a msgpack message: {exc}") from exc
    if not isinstance(fields, list) or len(fields) < 2:
        raise WireError("a message is an array [version, tag, ...]")
    if fields[0] != WIRE_VERSION or isinstance(fields[0], bool):
        raise WireError(f"unknown wire version {fields[0]!r}")
    decoder = _DECODERS.get(fields[1]) if isinstance(fields[1], int) and not isinstance(fields[1], bool) else None
    if decoder is None:
        raise WireError(f"unknown message tag {fields[1]!r}")
    try:
        message: Message = decoder(fields[2:])
    except WireError:
        raise
    except (TypeError, ValueError) as exc:
        raise WireError(f"malformed message: {exc}") from exc
    if message.to_bytes() != data:
        raise WireError("message is not in canonical encoding")
    return message
