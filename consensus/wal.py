"""Write-ahead log of consensus messages (SQLite), so a restarted node never equivocates.

Own proposals and votes are appended with `own=True`: that commit is fsynced (and with it
every earlier record) before the message may leave the node. Received proposals and
votes the node relies on are appended with `own=False`: committed to the log file without
an fsync of their own. On restart, `messages(height)` returns the records of the height
being decided, in append order, for `ConsensusCore.restore`. Records below the last
committed height are pruned after each commit.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from consensus.types import Proposal, Vote, WireError, decode_message

MAX_RECORDS_PER_HEIGHT = 200_000


class WalCorrupt(Exception):
    """A WAL record does not decode: the log was damaged outside this program."""


class WriteAheadLog:
    """An append-only SQLite log; `durable=False` skips fsync (simulator, tests)."""

    def __init__(self, path: str | Path, durable: bool = True) -> None:
        self.path = str(path)
        self.durable = durable
        self._db = sqlite3.connect(self.path, isolation_level=None, uri=self.path.startswith("file:"))
        self._db.execute("PRAGMA journal_mode=WAL")
        self._set_sync(False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS wal (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " height INTEGER NOT NULL, own INTEGER NOT NULL, data BLOB NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS wal_height ON wal (height, seq)")
        self.appended = 0
        self.synced = 0

    def _set_sync(self, full: bool) -> None:
        mode = ("FULL" if full else "NORMAL") if self.durable else "OFF"
        self._db.execute(f"PRAGMA synchronous={mode}")

    def append(self, message: Proposal | Vote, own: bool) -> None:
        """Append one record; for `own`, returns only once it (and all before it) is on disk."""
        if own:
            self._set_sync(True)
        try:
            self._db.execute("INSERT INTO wal (height, own, data) VALUES (?, ?, ?)",
                             (message.height, int(own), message.to_bytes()))
        finally:
            if own:
                self._set_sync(False)
        self.appended += 1
        self.synced += int(own)

    def messages(self, height: int) -> list[Proposal | Vote]:
        """Records of `height` in append order: all own ones, the latest received ones."""
        own = self._db.execute(
            "SELECT seq, data FROM wal WHERE height = ? AND own = 1", (height,)).fetchall()
        received = self._db.execute(
            "SELECT seq, data FROM wal WHERE height = ? AND own = 0 ORDER BY seq DESC LIMIT ?",
            (height, MAX_RECORDS_PER_HEIGHT),
        ).fetchall()  # every own record, and the most recent received ones
        out: list[Proposal | Vote] = []
        for _, data in sorted(own + received):
            try:
                message = decode_message(bytes(data))
            except WireError as exc:
                raise WalCorrupt(f"WAL record at height {height} does not decode: {exc}") from exc
            if not isinstance(message, Proposal | Vote):
                raise WalCorrupt("WAL holds a record that is neither a proposal nor a vote")
            out.append(message)
        return out

    def prune_below(self, height: int) -> None:
        """Forget records of heights below `height` (they are decided and in the block store)."""
        self._db.execute("DELETE FROM wal WHERE height < ?", (height,))

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM wal").fetchone()[0])

    def close(self) -> None:
        self._db.close()
