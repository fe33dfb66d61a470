"""Node-local OCPI credentials: registration tokens (CREDENTIALS_TOKEN_A) and registered parties.

This is operator data, not consensus state: each node keeps its own roaming partners in
`<node.data_dir>/ocpi.sqlite` (SQLite, WAL, file mode 0600), so `devsen ocpi token create`
can add a token while the node runs. Tokens are stored as SHA-256 hashes only; a party's own
credentials (its CREDENTIALS_TOKEN_B and versions URL, needed only to call the party back)
are kept as it sent them. Bounded: at most `max_parties` parties and MAX_OPEN_TOKENS unused
registration tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_OPEN_TOKENS = 1_000
STORE_FILE = "ocpi.sqlite"
REGISTRATION = "registration"
PARTY = "party"


class StoreFull(Exception):
    """A bound of the store is reached."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a presented token may do: `kind` REGISTRATION (versions and credentials POST only) or
    PARTY (every module) for the party `party` ("CC*PID")."""

    kind: str
    party: str | None
    token_hash: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token (43 URL-safe characters, 256 bits)."""
    return secrets.token_urlsafe(32)


class CredentialsStore:
    """Registration tokens and registered parties of one node."""

    def __init__(self, path: Path, max_parties: int = 1_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.touch(mode=0o600)
        os.chmod(path, 0o600)
        self.path = path
        self.max_parties = max_parties
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS tokens (hash TEXT PRIMARY KEY, kind TEXT NOT NULL, "
                         "party TEXT, used INTEGER NOT NULL DEFAULT 0, created_s INTEGER NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS parties (party TEXT PRIMARY KEY, credentials TEXT NOT NULL, "
                         "created_s INTEGER NOT NULL, updated_s INTEGER NOT NULL)")

    def close(self) -> None:
        self._db.close()

    # ---------------------------------------------------------------- registration tokens

    def add_registration_token(self, token: str) -> bool:
        """Accept `token` as a CREDENTIALS_TOKEN_A (once). False if it was known (a used one stays used)."""
        if self.open_token_count() >= MAX_OPEN_TOKENS:
            raise StoreFull(f"{MAX_OPEN_TOKENS} unused registration tokens exist; revoke some first")
        cursor = self._db.execute("INSERT OR IGNORE INTO tokens (hash, kind, party, used, created_s) "
                                  "VALUES (?, ?, NULL, 0, ?)", (token_hash(token), REGISTRATION, int(time.time())))
        return cursor.rowcount == 1

    def create_registration_token(self) -> str:
        token = new_token()
        self.add_registration_token(token)
        return token

    def open_token_count(self) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM tokens WHERE kind = ? AND used = 0", (REGISTRATION,)).fetchone()
        return int(row[0])

    def revoke_registration_tokens(self) -> int:
        """Mark every unused registration token used; returns how many."""
        return self._db.execute("UPDATE tokens SET used = 1 WHERE kind = ? AND used = 0", (REGISTRATION,)).rowcount

    # ---------------------------------------------------------------- look-up

    def grant(self, token: str) -> Grant | None:
        """What `token` may do, or None for an unknown, used or revoked token."""
        digest = token_hash(token)
        row = self._db.execute("SELECT kind, party FROM tokens WHERE hash = ? AND used = 0", (digest,)).fetchone()
        return None if row is None else Grant(str(row[0]), row[1], digest)

    # ---------------------------------------------------------------- parties

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def register(self, grant: Grant, party: str, credentials: dict[str, Any]) -> str:
        """Register `party` with the registration token of `grant`; returns its CREDENTIALS_TOKEN_C.
        Raises StoreFull past `max_parties`, KeyError if the party is already registered."""
        now = int(time.time())
        token = new_token()
        with self._transaction():
            if self._db.execute("SELECT 1 FROM parties WHERE party = ?", (party,)).fetchone():
                raise KeyError(party)
            count = int(self._db.execute("SELECT COUNT(*) FROM parties").fetchone()[0])
            if count >= self.max_parties:
                raise StoreFull(f"{self.max_parties} parties are registered (ocpi.max_parties)")
            used = self._db.execute("UPDATE tokens SET used = 1 WHERE hash = ? AND kind = ? AND used = 0",
                                    (grant.token_hash, REGISTRATION)).rowcount
            if used != 1:
                raise KeyError("registration token already used")
            self._db.execute("INSERT INTO parties VALUES (?, ?, ?, ?)", (party, json.dumps(credentials), now, now))
            self._db.execute("INSERT INTO tokens VALUES (?, ?, ?, 0, ?)", (token_hash(token), PARTY, party, now))
        return token

    def update(self, party: str, credentials: dict[str, Any]) -> str:
        """New credentials for a registered party: a new CREDENTIALS_TOKEN_C, the old one invalid."""
        now = int(time.time())
        token = new_token()
        with self._transaction():
            self._db.execute("UPDATE parties SET credentials = ?, updated_s = ? WHERE party = ?",
                             (json.dumps(credentials), now, party))
            self._db.execute("DELETE FROM tokens WHERE kind = ? AND party = ?", (PARTY, party))
            self._db.execute("INSERT INTO tokens VALUES (?, ?, ?, 0, ?)", (token_hash(token), PARTY, party, now))
        return token

    def unregister(self, party: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM tokens WHERE kind = ? AND party = ?", (PARTY, party))
            self._db.execute("DELETE FROM parties WHERE party = ?", (party,))

    def party(self, party: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT credentials FROM parties WHERE party = ?", (party,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def parties(self) -> list[dict[str, Any]]:
        """Registered parties (without their tokens), by party."""
        out = []
        for party, credentials, created, updated in self._db.execute(
                "SELECT party, credentials, created_s, updated_s FROM parties ORDER BY party"):
            data = json.loads(credentials)
            out.append({"party": party, "url": data.get("url"), "roles": [
                {k: r.get(k) for k in ("role", "country_code", "party_id")} for r in data.get("roles", [])],
                "created_s": created, "updated_s": updated})
        return out
