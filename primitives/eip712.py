"""EIP-712 typed digests and secp256k1 signatures (consensus/SIGNING.md).

Pure functions: a `Domain`, `hash_struct` for structs of static ABI types, `typed_digest`,
and recoverable, low-s, 65-byte (r || s || v, v in {27, 28}) signatures via coincurve, so
every signature made here verifies with `ecrecover` in a contract. The struct types that
DEVSEN signs are in consensus/signing.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import coincurve

from primitives.hashing import keccak256

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SIGNATURE_BYTES = 65
ZERO_HASH = b"\x00" * 32

DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"


class SignatureError(ValueError):
    """A signature or key is malformed, or does not recover."""


_FIELD = re.compile(r"(\w+) (\w+)")
_TYPE = re.compile(r"^(\w+)\((.*)\)$")


def _encode_static(abi_type: str, value: object) -> bytes:
    """ABI-encode one static value into a 32-byte word."""
    if abi_type == "bytes32":
        if not isinstance(value, bytes) or len(value) != 32:
            raise ValueError("bytes32 value must be 32 bytes")
        return value
    if abi_type == "address":
        raw = bytes.fromhex(value[2:]) if isinstance(value, str) else value
        if not isinstance(raw, bytes) or len(raw) != 20:
            raise ValueError(f"address value {value!r} must be 20 bytes or 0x-hex")
        return b"\x00" * 12 + raw
    if abi_type == "bool":
        if not isinstance(value, bool):
            raise ValueError("bool value must be a bool")
        return int(value).to_bytes(32, "big")
    match = re.fullmatch(r"(u?)int(\d+)", abi_type)
    if match:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{abi_type} value must be an int")
        bits = int(match.group(2))
        if match.group(1):
            if not 0 <= value < 1 << bits:
                raise ValueError(f"{value} out of range for {abi_type}")
            return value.to_bytes(32, "big")
        if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
            raise ValueError(f"{value} out of range for {abi_type}")
        return (value % (1 << 256)).to_bytes(32, "big")
    raise ValueError(f"unsupported static ABI type {abi_type!r}")


def _encode_member(abi_type: str, value: object) -> bytes:
    """EIP-712 `encodeData` of one struct member: `string` and `bytes` (dynamic) as the
    keccak-256 of their contents, as EIP-712 prescribes; static types as their ABI word."""
    if abi_type == "string":
        if not isinstance(value, str):
            raise ValueError("string value must be a str")
        return keccak256(value.encode())
    if abi_type == "bytes":
        if not isinstance(value, bytes):
            raise ValueError("bytes value must be bytes")
        return keccak256(value)
    return _encode_static(abi_type, value)


def abi_encode(types: Sequence[str], values: Sequence[object]) -> bytes:
    """`abi.encode` of static types only (uintN, intN, address, bool, bytes32)."""
    if len(types) != len(values):
        raise ValueError("types and values differ in length")
    return b"".join(_encode_static(t, v) for t, v in zip(types, values, strict=True))


@lru_cache(maxsize=64)
def _parse_struct(type_string: str) -> tuple[bytes, tuple[str, ...]]:
    """(typeHash, member types) of a struct type string; cached, there are a handful."""
    match = _TYPE.match(type_string)
    if not match:
        raise ValueError(f"bad struct type string {type_string!r}")
    fields = _FIELD.findall(match.group(2))
    return keccak256(type_string.encode()), tuple(t for t, _ in fields)


def hash_struct(type_string: str, values: Sequence[object]) -> bytes:
    """EIP-712 hashStruct for a struct whose members are static ABI types, `string` or `bytes`."""
    type_hash, types = _parse_struct(type_string)
    if len(types) != len(values):
        raise ValueError("types and values differ in length")
    return keccak256(type_hash + b"".join(_encode_member(t, v) for t, v in zip(types, values, strict=True)))


@dataclass(frozen=True, slots=True)
class Domain:
    """EIP-712 domain: name "DEVSEN", version "1", chain id, verifying contract (20 bytes)."""

    chain_id: int
    verifying_contract: bytes
    name: str = "DEVSEN"
    version: str = "1"

    def __post_init__(self) -> None:
        if len(self.verifying_contract) != 20:
            raise ValueError("verifying_contract must be 20 bytes")
        if self.chain_id <= 0:
            raise ValueError("chain_id must be positive")

    @property
    def separator(self) -> bytes:
        """The domain separator: hashStruct(EIP712Domain)."""
        return _domain_separator(self)


@lru_cache(maxsize=64)
def _domain_separator(domain: Domain) -> bytes:
    self = domain
    return keccak256(
            keccak256(DOMAIN_TYPE.encode())
            + keccak256(self.name.encode())
            + keccak256(self.version.encode())
            + self.chain_id.to_bytes(32, "big")
            + b"\x00" * 12
            + self.verifying_contract
        )


def typed_digest(domain: Domain, type_string: str, values: Sequence[object]) -> bytes:
    """The 32-byte EIP-712 digest of a struct under `domain`."""
    return keccak256(b"\x19\x01" + domain.separator + hash_struct(type_string, values))


def address_of_public_key(public_key: coincurve.PublicKey) -> bytes:
    """The 20-byte Ethereum address of a secp256k1 public key."""
    return keccak256(public_key.format(compressed=False)[1:])[12:]


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A validator's secp256k1 private key."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != 32 or not 0 < int.from_bytes(self.secret, "big") < SECP256K1_N:
            raise SignatureError("a secp256k1 secret is 32 bytes in [1, n-1]")

    @property
    def address(self) -> bytes:
        """The 20-byte Ethereum address of this key."""
        return _address_of_secret(self.secret)

    def sign(self, digest: bytes) -> bytes:
        """Sign a 32-byte digest: 65 bytes r || s || v with low s and v in {27, 28}."""
        if len(digest) != 32:
            raise SignatureError("digest must be 32 bytes")
        raw = coincurve.PrivateKey(self.secret).sign_recoverable(digest, hasher=None)
        signature = raw[:64] + bytes([raw[64] + 27])
        assert int.from_bytes(signature[32:64], "big") <= SECP256K1_N // 2
        return signature


@lru_cache(maxsize=1024)
def _address_of_secret(secret: bytes) -> bytes:
    return address_of_public_key(coincurve.PrivateKey(secret).public_key)


def recover_address(digest: bytes, signature: bytes) -> bytes:
    """The signer address of a 65-byte signature over `digest`; rejects high-s and bad v."""
    if len(digest) != 32:
        raise SignatureError("digest must be 32 bytes")
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError(f"signature must be {SIGNATURE_BYTES} bytes")
    v = signature[64]
    if v not in (27, 28):
        raise SignatureError("signature v must be 27 or 28")
    s = int.from_bytes(signature[32:64], "big")
    if not 0 < s <= SECP256K1_N // 2:
        raise SignatureError("signature s must be in the lower half of the curve order")
    try:
        public_key = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([v - 27]), digest, hasher=None
        )
    except Exception as exc:  # coincurve raises plain Exception on bad input
        raise SignatureError(f"signature does not recover: {exc}") from exc
    return address_of_public_key(public_key)


def sort_signatures_by_signer(digest: bytes, signatures: Iterable[bytes]) -> list[bytes]:
    """Order signatures by recovered signer address, ascending, dropping duplicate signers."""
    by_signer: dict[bytes, bytes] = {}
    for signature in signatures:
        by_signer.setdefault(recover_address(digest, signature), signature)
    return [by_signer[a] for a in sorted(by_signer)]


def to_checksum_hex(address: bytes) -> str:
    """EIP-55 mixed-case hex of a 20-byte address."""
    plain = address.hex()
    hashed = keccak256(plain.encode()).hex()
    return "0x" + "".join(c.upper() if int(hashed[i], 16) >= 8 else c for i, c in enumerate(plain))
