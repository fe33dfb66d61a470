"""Block store (SQLite) of committed blocks with their certificates, and catch-up helpers.

`BlockStore.save` writes a block and its certificate in one fsynced transaction and only
ever extends the chain (height = last + 1, prev hash = last hash). Validator set changes
are stored too, so a restarted node knows which set governs each height.

`verify_committed(...)` checks one fetched block against the chain and its validator set;
`CatchUp` is a bounded reorder buffer that hands fetched blocks out in height order.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgpack

from consensus.types import (
    MAX_BLOCKS_PER_REQUEST,
    CertificateError,
    CommittedBlock,
    ValidatorSet,
    WireError,
    decode_message,
    verify_certificate,
)
from primitives.eip712 import ZERO_HASH, Domain


class StoreError(Exception):
    """The store refused a write that would break the chain, or holds damaged data."""


class BlockStore:
    """Committed blocks by height, in one SQLite file; `durable=False` skips fsync."""

    def __init__(self, path: str | Path, durable: bool = True) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, uri=self.path.startswith("file:"))
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS blocks (height INTEGER PRIMARY KEY, hash BLOB NOT NULL,"
            " data BLOB NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS validator_sets (from_height INTEGER PRIMARY KEY,"
            " epoch INTEGER NOT NULL, data BLOB NOT NULL)"
        )

    def last_height(self) -> int:
        """Height of the last committed block, 0 when empty."""
        row = self._db.execute("SELECT MAX(height) FROM blocks").fetchone()
        return int(row[0] or 0)

    def first_height(self) -> int:
        """Height of the first stored block (1, or a state-synced node's base), 0 when empty."""
        row = self._db.execute("SELECT MIN(height) FROM blocks").fetchone()
        return int(row[0] or 0)

    def save_base(self, committed: CommittedBlock) -> None:
        """Start an EMPTY store at `committed` (a state-synced node: the block its snapshot is
        of, tied by hash to a verified certificate by the caller); `save` extends it from there."""
        if self.last_height():
            raise StoreError("a base block goes only into an empty store")
        self._db.execute("INSERT INTO blocks (height, hash, data) VALUES (?, ?, ?)",
                         (committed.height, committed.block.hash, committed.to_bytes()))

    def get(self, height: int) -> CommittedBlock | None:
        """The committed block at `height`, or None."""
        row = self._db.execute("SELECT data FROM blocks WHERE height = ?", (height,)).fetchone()
        if row is None:
            return None
        try:
            message = decode_message(bytes(row[0]))
        except WireError as exc:
            raise StoreError(f"stored block {height} does not decode: {exc}") from exc
        if not isinstance(message, CommittedBlock) or message.height != height:
            raise StoreError(f"stored record {height} is not the committed block of that height")
        return message

    def last(self) -> CommittedBlock | None:
        """The last committed block, or None for an empty store."""
        height = self.last_height()
        return self.get(height) if height else None

    def save(self, committed: CommittedBlock,
             change: tuple[int, ValidatorSet, dict[bytes, bytes]] | None = None) -> None:
        """Append the next committed block and the validator-set change it makes (one fsynced
        transaction: a crash never leaves the block stored without its set change)."""
        last = self.last()
        expected_height = last.height + 1 if last else 1
        expected_prev = last.block.hash if last else ZERO_HASH
        if committed.height != expected_height:
            raise StoreError(f"block {committed.height} does not follow stored height {expected_height - 1}")
        if committed.block.prev_block_hash != expected_prev:
            raise StoreError(f"block {committed.height} does not extend the stored chain")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("INSERT INTO blocks (height, hash, data) VALUES (?, ?, ?)",
                             (committed.height, committed.block.hash, committed.to_bytes()))
            if change is not None:
                self._save_change(*change)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def records(self, from_height: int, to_height: int) -> list[bytes]:
        """Wire bytes of committed blocks from_height..to_height (inclusive), bounded."""
        to_height = min(to_height, from_height + MAX_BLOCKS_PER_REQUEST - 1)
        rows = self._db.execute(
            "SELECT data FROM blocks WHERE height BETWEEN ? AND ? ORDER BY height",
            (from_height, to_height),
        ).fetchall()
        return [bytes(r[0]) for r in rows]

    def save_validator_set(self, from_height: int, validators: ValidatorSet,
                           bindings: dict[bytes, bytes] | None = None) -> None:
        """Remember that `validators` govern heights from `from_height` on."""
        self._save_change(from_height, validators, bindings or {})

    def _save_change(self, from_height: int, validators: ValidatorSet, bindings: dict[bytes, bytes]) -> None:
        data = msgpack.packb([list(validators.addresses), list(validators.powers),
                              sorted(bindings.items())], use_bin_type=True)
        self._db.execute(
            "INSERT OR REPLACE INTO validator_sets (from_height, epoch, data) VALUES (?, ?, ?)",
            (from_height, validators.epoch, data),
        )

    def validator_sets(self) -> list[tuple[int, ValidatorSet]]:
        """Stored set changes, by height."""
        return [(h, v) for h, v, _ in self.validator_changes()]

    def validator_changes(self) -> list[tuple[int, ValidatorSet, dict[bytes, bytes]]]:
        """Stored set changes with their peer bindings, by height."""
        out = []
        rows = self._db.execute(
            "SELECT from_height, epoch, data FROM validator_sets ORDER BY from_height").fetchall()
        for from_height, epoch, data in rows:
            fields = msgpack.unpackb(bytes(data), raw=False)
            bindings = {bytes(a): bytes(p) for a, p in fields[2]} if len(fields) > 2 else {}
            out.append((int(from_height), ValidatorSet(tuple(fields[0]), tuple(fields[1]), int(epoch)),
                        bindings))
        return out

    def close(self) -> None:
        self._db.close()


def verify_committed(
    committed: CommittedBlock, height: int, prev_block_hash: bytes, validators: ValidatorSet,
    domain: Domain,
) -> None:
    """Check a fetched block is the certified block at `height` on top of `prev_block_hash`.

    Raises CertificateError (bad certificate) or WireError (does not link).
    """
    if committed.height != height:
        raise WireError(f"expected height {height}, got {committed.height}")
    if committed.block.prev_block_hash != prev_block_hash:
        raise WireError(f"block {height} does not extend the local chain")
    verify_certificate(committed.certificate, validators, domain, committed.block.hash)


class CatchUp:
    """A bounded buffer of fetched blocks ahead of the local chain, handed out in order.

    Blocks are fully verified when taken (`take_next`), against the chain as it is then,
    because a validator set change in block h decides who certifies block h + 1.
    """

    def __init__(self, domain: Domain, max_buffered: int = 2 * MAX_BLOCKS_PER_REQUEST) -> None:
        assert max_buffered > 0
        self.domain = domain
        self.max_buffered = max_buffered
        self._ahead: dict[int, CommittedBlock] = {}
        self.rejected = 0

    def __len__(self) -> int:
        return len(self._ahead)

    def offer(self, committed: CommittedBlock, next_height: int) -> bool:
        """Keep `committed` if it is ahead and within the window; False if not kept."""
        if not next_height <= committed.height < next_height + self.max_buffered:
            return False
        for height in [h for h in self._ahead if h < next_height]:
            del self._ahead[height]
        self._ahead.setdefault(committed.height, committed)
        return True

    def take_next(
        self, next_height: int, prev_block_hash: bytes, validators: ValidatorSet
    ) -> CommittedBlock | None:
        """The verified block for `next_height`, if buffered; a bad one is discarded."""
        committed = self._ahead.pop(next_height, None)
        if committed is None:
            return None
        try:
            verify_committed(committed, next_height, prev_block_hash, validators, self.domain)
        except (CertificateError, WireError):
            self.rejected += 1
            return None
        return committed
