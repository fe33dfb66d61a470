"""The charger password hash stored in the on-chain device record.

`authHash = scrypt(password, salt=authSalt, n=16384, r=8, p=1, dklen=32)`, `authSalt` 16
random bytes: what `DeviceFactory.createDevice` / `setAuth` store and what the OCPP server
checks a charger's HTTP Basic password against.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import hmac
import secrets

SALT_BYTES = 16
HASH_BYTES = 32
SCRYPT_N, SCRYPT_R, SCRYPT_P = 16384, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
MAX_PASSWORD_BYTES = 256
LARGE_ALLOCATION_BYTES = 1024 * 1024  # at and above: mmapped, unmapped when freed (glibc)
_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


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


def return_scrypt_buffers_to_the_os() -> bool:
    """Make large allocations (scrypt's 16 MiB buffer) go back to the OS when freed; call once
    at process start in a process that checks passwords. True if done (glibc), False elsewhere.

    glibc raises its mmap threshold dynamically after the first large free, so every later
    16 MiB buffer comes from the arena of the worker thread that hashed and stays resident
    there: a node whose worker threads hash logins kept 16-32 MiB per thread (measured +129 MiB
    for 8 threads, +93 MiB over 1,000 logins; bench/results/conn_memory.md). A fixed threshold
    of LARGE_ALLOCATION_BYTES keeps them mmapped, so they are unmapped when freed."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, LARGE_ALLOCATION_BYTES))
    except (OSError, AttributeError):  # not glibc
        return False


def new_auth_credential(password: str) -> tuple[bytes, bytes]:
    """A fresh (authSalt, authHash) pair for DeviceFactory.createDevice / setAuth."""
    salt = secrets.token_bytes(SALT_BYTES)
    return salt, hash_charger_password(password, salt)
