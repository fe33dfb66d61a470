"""The charger password hash stored in the on-chain device record.

`authHash = scrypt(password, salt=authSalt, n=16384, r=8, p=1, dklen=32)`, `authSalt` 16
random bytes: what `DeviceFactory.createDevice` / `setAuth` store and what the OCPP server
checks a charger's HTTP Basic password against.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SALT_BYTES = 16
HASH_BYTES = 32
SCRYPT_N, SCRYPT_R, SCRYPT_P = 16384, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
MAX_PASSWORD_BYTES = 256


def hash_charger_password(password: str, salt: bytes) -> bytes:
    """authHash for `password` with `salt` (CPU- and memory-hard: ~50 ms, 16 MiB)."""
    if len(salt) != SALT_BYTES:
        raise ValueError(f"salt must be {SALT_BYTES} bytes, got {len(salt)}")
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=HASH_BYTES,
        maxmem=SCRYPT_MAXMEM,
    )


def verify_charger_password(password: str, salt: bytes, expected_hash: bytes) -> bool:
    """True if `password` hashes to `expected_hash` (constant-time comparison)."""
    if len(expected_hash) != HASH_BYTES or len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        return False
    return hmac.compare_digest(hash_charger_password(password, salt), expected_hash)


def new_auth_credential(password: str) -> tuple[bytes, bytes]:
    """A fresh (authSalt, authHash) pair for DeviceFactory.createDevice / setAuth."""
    salt = secrets.token_bytes(SALT_BYTES)
    return salt, hash_charger_password(password, salt)
