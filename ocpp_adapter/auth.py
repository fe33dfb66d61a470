"""Charger authentication (OCPP security profile 1/2: HTTP Basic auth per charger).

The on-chain device record stores `(authSalt: 16 bytes, authHash: 32 bytes)` with
`authHash = scrypt(password, salt=authSalt, n=16384, r=8, p=1, dklen=32)`
(primitives.credentials, where the hash and its check live). The server
asks a `ChargerRegistry` for that record; the node plugs in one backed by the chain,
`InMemoryChargerRegistry` serves standalone runs and tests.

scrypt is deliberately slow, so the server guards it: a reconnect with a password verified
before hits `VerifiedCredentialsCache` (no scrypt), and `LoginBudgets` limits how many wrong
passwords are hashed per (address, charger) and per address across all charger ids, so one
address cycling through the public charger ids cannot keep the password checkers busy.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import tomllib
from dataclasses import dataclass
from typing import Protocol

from ocpp_adapter.bounded import LruMap, TokenBucket
from primitives.credentials import HASH_BYTES, SALT_BYTES, hash_charger_password


@dataclass(frozen=True, slots=True)
class ChargerCredentials:
    """What the registry knows about one charger."""

    auth_salt: bytes
    auth_hash: bytes
    admitted: bool = True

    def __post_init__(self) -> None:
        if len(self.auth_salt) != SALT_BYTES or len(self.auth_hash) != HASH_BYTES:
            raise ValueError("auth_salt must be 16 bytes and auth_hash 32 bytes")

    @classmethod
    def from_password(cls, password: str, *, admitted: bool = True) -> ChargerCredentials:
        """Fresh random salt, hashed password."""
        salt = os.urandom(SALT_BYTES)
        return cls(salt, hash_charger_password(password, salt), admitted)


class RegistryUnavailable(Exception):
    """The registry cannot answer now (e.g. its chain RPC is down): refuse with 503, retry later."""


class ChargerRegistry(Protocol):
    """Where the server looks up a charger's credentials (the node: on-chain registry)."""

    async def credentials(self, charge_box_id: str) -> ChargerCredentials | None:
        """The charger's record, or None if the id is unknown; RegistryUnavailable if it cannot tell now."""
        ...


class InMemoryChargerRegistry:
    """A fixed map charge box id -> credentials, for standalone runs and tests."""

    def __init__(self, entries: dict[str, ChargerCredentials] | None = None) -> None:
        self._entries = dict(entries or {})

    async def credentials(self, charge_box_id: str) -> ChargerCredentials | None:
        return self._entries.get(charge_box_id)

    def add(self, charge_box_id: str, credentials: ChargerCredentials) -> None:
        self._entries[charge_box_id] = credentials

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def from_passwords(cls, passwords: dict[str, str]) -> InMemoryChargerRegistry:
        return cls({cid: ChargerCredentials.from_password(pw) for cid, pw in passwords.items()})

    @classmethod
    def from_toml(cls, path: str) -> InMemoryChargerRegistry:
        """Load `chargeBoxId = "password"` lines, or tables
        `[chargeBoxId]` with `password = "..."` or `salt`/`hash` (hex), and `admitted`."""
        with open(path, "rb") as f:
            data = tomllib.load(f)
        entries: dict[str, ChargerCredentials] = {}
        for charge_box_id, value in data.items():
            if isinstance(value, str):
                entries[charge_box_id] = ChargerCredentials.from_password(value)
                continue
            if not isinstance(value, dict):
                raise ValueError(f"{path}: {charge_box_id}: expected a password or a table")
            admitted = bool(value.get("admitted", True))
            if "password" in value:
                entries[charge_box_id] = ChargerCredentials.from_password(str(value["password"]), admitted=admitted)
            elif "salt" in value and "hash" in value:
                entries[charge_box_id] = ChargerCredentials(
                    bytes.fromhex(value["salt"]), bytes.fromhex(value["hash"]), admitted
                )
            else:
                raise ValueError(f"{path}: {charge_box_id}: needs password, or salt and hash")
        return cls(entries)


def parse_basic_auth(header_value: bytes) -> tuple[str, str] | None:
    """(username, password) from an `Authorization: Basic ...` header value, or None."""
    scheme, _, encoded = header_value.strip().partition(b" ")
    if scheme.lower() != b"basic" or not encoded or len(encoded) > 1024:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, sep, password = decoded.partition(":")
    if not sep:
        return None
    return username, password


class VerifiedCredentialsCache:
    """Remembers recent successful verifications so a reconnecting charger does not cost
    another scrypt. Keyed by a keyed hash of (id, password, salt, hash): a changed record
    or password misses. Bounded."""

    def __init__(self, capacity: int) -> None:
        self._key = os.urandom(32)
        self._seen: LruMap[bytes, bool] = LruMap(capacity)

    def _digest(self, charge_box_id: str, password: str, creds: ChargerCredentials) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (charge_box_id.encode(), password.encode(), creds.auth_salt, creds.auth_hash):
            mac.update(len(part).to_bytes(4, "big") + part)
        return mac.digest()

    def known_good(self, charge_box_id: str, password: str, creds: ChargerCredentials) -> bool:
        return self._seen.get(self._digest(charge_box_id, password, creds)) is not None

    def remember(self, charge_box_id: str, password: str, creds: ChargerCredentials) -> None:
        self._seen.put(self._digest(charge_box_id, password, creds), True)


class LoginBudgets:
    """Failed-login budgets, sans I/O (time is passed in): per (address, charger), so one
    misconfigured charger behind a site's shared NAT address does not lock out its neighbours,
    and per address across charger ids, so one address cycling through public ids is throttled
    as a whole. A budget exists only after a failure; each further hashed attempt takes a token.
    Bounded: at most `capacity` entries of each kind (least recently used forgotten)."""

    def __init__(self, per_charger_per_minute: int, per_address_per_minute: int, capacity: int) -> None:
        assert per_charger_per_minute > 0 and per_address_per_minute > 0 and capacity > 0
        self.per_charger = per_charger_per_minute
        self.per_address = per_address_per_minute
        self._pairs: LruMap[tuple[str, str], TokenBucket] = LruMap(capacity)
        self._addresses: LruMap[str, TokenBucket] = LruMap(capacity)

    def admit(self, address: str, charge_box_id: str, now: float) -> str | None:
        """None if a password from `address` for `charge_box_id` may be hashed now, else why not."""
        for_address = self._addresses.get(address)
        if for_address is not None and for_address.take(now) > 0:
            return "too many failed logins from this address; wait"
        for_pair = self._pairs.get((address, charge_box_id))
        if for_pair is not None and for_pair.take(now) > 0:
            return "too many failed logins for this charger from this address; wait"
        return None

    def failed(self, address: str, charge_box_id: str, now: float) -> None:
        """Record a wrong password (opens the budgets on the first failure)."""
        if self._addresses.get(address) is None:
            self._addresses.put(address, self._opened(self.per_address, now))
        if self._pairs.get((address, charge_box_id)) is None:
            self._pairs.put((address, charge_box_id), self._opened(self.per_charger, now))

    @staticmethod
    def _opened(per_minute: int, now: float) -> TokenBucket:
        bucket = TokenBucket(per_minute / 60, per_minute, now)
        bucket.take(now)  # the failure that opened it
        return bucket
