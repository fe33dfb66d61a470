"""Keccak-256 and the hashes built on it that nodes, contracts and auditors must agree on.

One backend for the whole code base: safe-pysha3's C keccak (the pre-standard Keccak that
Ethereum uses, not SHA3-256), about 6x faster than pycryptodome for 33/65-byte inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

from sha3 import keccak_256

ADDRESS_BYTES = 20


def keccak256(data: bytes) -> bytes:
    """Keccak-256 (Ethereum's hash) of `data`."""
    digest: bytes = keccak_256(data).digest()
    return digest


def id_tag_hash(id_tag: str) -> bytes:
    """The registry key of an idTag / idToken: keccak-256 of its UTF-8 bytes, exactly as sent."""
    return keccak256(id_tag.encode("utf-8"))


def _address_bytes(address: bytes | str) -> bytes:
    raw = bytes.fromhex(address[2:] if address[:2] in ("0x", "0X") else address) if isinstance(address, str) else address
    if len(raw) != ADDRESS_BYTES:
        raise ValueError(f"an address is {ADDRESS_BYTES} bytes, got {len(raw)}")
    return raw


def validators_hash(sorted_validators: Sequence[bytes | str]) -> bytes:
    """keccak256(abi.encode(address[] sortedValidators)), as ValidatorSetUpdate signs it.

    Addresses are 20 bytes or 0x-hex (any case); the order is the caller's (the contract
    requires ascending).
    """
    words = [(32).to_bytes(32, "big"), len(sorted_validators).to_bytes(32, "big")]
    words += [b"\x00" * 12 + _address_bytes(a) for a in sorted_validators]
    return keccak256(b"".join(words))
