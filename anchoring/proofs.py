"""The proof service: everything an auditor needs to check one event against the chain.

`AnchorIndex` (SQLite) remembers, as the node commits blocks and closes batches, which
block carries each event and which batch covers each height. `ProofService` answers
`GET /v1/events/{event_id}/proof`, `GET /v1/blocks/{height}` and
`GET /v1/batches/{batch_id}` with the JSON documented in anchoring/AUDIT.md: the event
bytes, the leaf, the Merkle proof, the batch, and the block with its commit certificate.

Which payloads carry events: a payload that starts with 0x9A (a msgpack array of 10, the
canonical ChargerEvent encoding) is one event; attestation payloads (0xA1/0xA2) and
anything else carry none. `events_in_payload` (the default, for the node's own committed
blocks) relies on consensus having validated every such payload before commit;
`canonical_events_in_payload` also checks the encoding (for blocks from elsewhere: the
auditor's `audit replay`). On committed blocks both give the same events.
"""

from __future__ import annotations

import inspect
import sqlite3
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import trio

from anchoring.attestations import AnchorBatch
from anchoring.batches import BuilderState, batch_event_ids
from anchoring.batches import CommittedBlock as BatchBlock
from anchoring.merkle import MerkleTree, leaf_hash
from consensus.types import Block, CommitCertificate, CommittedBlock
from ocpp_adapter.events import ChargerEvent, EventEncodingError
from primitives.hashing import keccak256

PROOF_FORMAT = "devsen-event-proof/1"
EVENT_PAYLOAD_FIRST_BYTE = 0x9A  # msgpack fixarray of 10: the canonical (version-2) ChargerEvent encoding
TREE_CACHE_SIZE = 2  # batch trees kept in memory (a 1e5-event tree is ~20 MB of Python objects)

EventExtractor = Callable[[bytes], list[bytes]]


class ProofNotFound(LookupError):
    """No committed event with that id (or no block at that height, no batch with that id)."""


class ProofNotReady(LookupError):
    """The event is committed but its batch has not closed yet: retry later."""


def events_in_payload(payload: bytes) -> list[bytes]:
    """The event bytes a committed block payload carries (default extractor; no decoding)."""
    return [payload] if payload and payload[0] == EVENT_PAYLOAD_FIRST_BYTE else []


def canonical_events_in_payload(payload: bytes) -> list[bytes]:
    """Like `events_in_payload`, but only canonical ChargerEvent encodings count (untrusted blocks)."""
    if not events_in_payload(payload):
        return []
    try:
        ChargerEvent.from_bytes(payload)
    except EventEncodingError:
        return []
    return [payload]


def block_event_ids(block: Block, extract: EventExtractor = events_in_payload) -> list[bytes]:
    """Event ids of a block in order (block payload order, then order inside a payload)."""
    return [keccak256(data) for payload in block.payloads for data in extract(payload)]


def batch_block(block: Block, extract: EventExtractor = events_in_payload) -> BatchBlock:
    """What `BatchBuilder.on_block` needs of a committed block."""
    return BatchBlock(block.height, block.timestamp_ms, tuple(block_event_ids(block, extract)))


def hex0x(data: bytes) -> str:
    return "0x" + data.hex()


def unhex(text: object, length: int | None = None) -> bytes:
    """Bytes of a "0x..." string; ValueError if malformed or of the wrong length."""
    if not isinstance(text, str) or not text.startswith("0x"):
        raise ValueError(f"expected a 0x-hex string, got {text!r:.80}")
    data = bytes.fromhex(text[2:])
    if length is not None and len(data) != length:
        raise ValueError(f"expected {length} bytes, got {len(data)}")
    return data


def batch_to_json(batch: AnchorBatch) -> dict[str, Any]:
    return {"batch_id": batch.batch_id, "root": hex0x(batch.root), "first_height": batch.first_height,
            "last_height": batch.last_height, "event_count": batch.event_count}


def batch_from_json(data: dict[str, Any]) -> AnchorBatch:
    return AnchorBatch(int(data["batch_id"]), unhex(data["root"], 32), int(data["first_height"]),
                       int(data["last_height"]), int(data["event_count"]))


def header_to_json(block: Block) -> dict[str, Any]:
    """The block header fields that, with the payload hashes, give the block hash."""
    return {"height": block.height, "timestamp_ms": block.timestamp_ms, "proposer": hex0x(block.proposer),
            "prev_block_hash": hex0x(block.prev_block_hash), "app_state_hash": hex0x(block.app_state_hash),
            "app_header": hex0x(block.app_header), "hash": hex0x(block.hash)}


def certificate_to_json(certificate: CommitCertificate) -> dict[str, Any]:
    return {"height": certificate.height, "round": certificate.round,
            "block_hash": hex0x(certificate.block_hash), "signatures": [hex0x(s) for s in certificate.signatures]}


def certificate_from_json(data: dict[str, Any]) -> CommitCertificate:
    return CommitCertificate(int(data["height"]), int(data["round"]), unhex(data["block_hash"], 32),
                             tuple(unhex(s, 65) for s in data["signatures"]))


class AnchorIndex:
    """Event id -> height and the closed batches, in SQLite; fed by the node as it commits."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS events (event_id BLOB PRIMARY KEY, height INTEGER NOT NULL)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS batches (batch_id INTEGER PRIMARY KEY, root BLOB NOT NULL,"
            " first_height INTEGER NOT NULL, last_height INTEGER NOT NULL UNIQUE, event_count INTEGER NOT NULL,"
            " quorum_height INTEGER)")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(batches)")}
        if "quorum_height" not in columns:  # an index written before quorums were recorded
            self._db.execute("ALTER TABLE batches ADD COLUMN quorum_height INTEGER")
        self._db.execute("CREATE INDEX IF NOT EXISTS batches_without_quorum ON batches (batch_id)"
                         " WHERE quorum_height IS NULL")

    def close(self) -> None:
        self._db.close()

    def record_block(self, height: int, event_ids: Sequence[bytes]) -> None:
        """Index a committed block's events (the first block carrying an id wins)."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?)", [(e, height) for e in event_ids])

    def record_batch(self, batch: AnchorBatch) -> None:
        """Remember a closed batch; batches must be recorded in id order with contiguous heights."""
        last = self.last_batch()
        if last is not None:
            if batch == self.batch(batch.batch_id):
                return
            assert batch.batch_id == last.batch_id + 1, "batches are recorded in order"
            assert batch.first_height == last.last_height + 1, "batch heights are contiguous"
        self._db.execute("INSERT INTO batches VALUES (?, ?, ?, ?, ?, NULL)", (
            batch.batch_id, batch.root, batch.first_height, batch.last_height, batch.event_count))

    def record_quorum(self, batch_id: int, height: int) -> None:
        """Remember that batch `batch_id` reached its signature quorum at `height`."""
        self._db.execute("UPDATE batches SET quorum_height = ? WHERE batch_id = ? AND quorum_height IS NULL",
                         (height, batch_id))

    def oldest_batch_without_quorum(self) -> AnchorBatch | None:
        return self._one("SELECT * FROM batches WHERE quorum_height IS NULL ORDER BY batch_id LIMIT 1")

    def resume_state(self, block_time_ms: Callable[[int], int], first_height: int = 1) -> BuilderState:
        """Where batching restarts after a crash: at the oldest batch still short of a quorum
        (so its attestations are counted again), else after the last batch. Only correct if
        the node calls `record_quorum` for every anchor quorum (else it replays from batch 0).

        Replay the committed blocks from `next_height` into a fresh BatchBuilder and
        AttestationBook (the index ignores what it already has; do not re-submit the own
        attestations produced while replaying, only those for subjects still open at the
        end). `block_time_ms(h)` is the timestamp of committed block h.
        """
        open_batch = self.oldest_batch_without_quorum()
        if open_batch is not None:
            batch_id, height = open_batch.batch_id, open_batch.first_height
        else:
            last = self.last_batch()
            batch_id, height = (last.batch_id + 1, last.last_height + 1) if last else (0, first_height)
        return BuilderState(batch_id, height, block_time_ms(height - 1) if height > first_height else None)

    def height_of(self, event_id: bytes) -> int | None:
        row = self._db.execute("SELECT height FROM events WHERE event_id = ?", (event_id,)).fetchone()
        return None if row is None else int(row[0])

    def batch(self, batch_id: int) -> AnchorBatch | None:
        return self._one("SELECT * FROM batches WHERE batch_id = ?", batch_id)

    def batch_covering(self, height: int) -> AnchorBatch | None:
        """The closed batch whose height range holds `height`, or None (not closed yet)."""
        batch = self._one("SELECT * FROM batches WHERE last_height >= ? ORDER BY last_height LIMIT 1", height)
        return batch if batch is not None and batch.first_height <= height else None  # uses the unique index

    def last_batch(self) -> AnchorBatch | None:
        return self._one("SELECT * FROM batches ORDER BY batch_id DESC LIMIT 1")

    def _one(self, query: str, *params: int) -> AnchorBatch | None:
        row = self._db.execute(query, params).fetchone()
        return None if row is None else AnchorBatch(row[0], bytes(row[1]), row[2], row[3], row[4])


class BlockSource(Protocol):
    """Committed blocks by height (consensus.store.BlockStore is one)."""

    def get(self, height: int) -> CommittedBlock | None: ...


class ProofService:
    """Builds the JSON documents of anchoring/AUDIT.md from the block store and the index."""

    def __init__(self, blocks: BlockSource, index: AnchorIndex, *, chain_id: int, anchor_address: bytes,
                 extract: EventExtractor = events_in_payload) -> None:
        assert len(anchor_address) == 20
        self.blocks = blocks
        self.index = index
        self.chain_id = chain_id
        self.anchor_address = anchor_address
        self.extract = extract
        self._trees: OrderedDict[int, MerkleTree] = OrderedDict()
        self._build_lock = trio.Lock()

    def _committed(self, height: int) -> CommittedBlock:
        committed = self.blocks.get(height)
        if committed is None:
            raise ProofNotFound(f"no committed block at height {height}")
        return committed

    def tree(self, batch: AnchorBatch) -> MerkleTree:
        """The batch's Merkle tree, rebuilt from its blocks (and cached, bounded)."""
        tree = self._trees.get(batch.batch_id)
        if tree is None:
            blocks = [self._batch_block(h) for h in range(batch.first_height, batch.last_height + 1)]
            tree = self._cache(batch, MerkleTree(batch_event_ids(blocks)))
        self._trees.move_to_end(batch.batch_id)
        return tree

    async def warm_tree(self, batch: AnchorBatch) -> None:
        """Build and cache the batch's tree without stalling the event loop: one checkpoint per
        block read, the hashing in a worker thread, one build at a time."""
        async with self._build_lock:
            if batch.batch_id in self._trees:
                return
            blocks = []
            for height in range(batch.first_height, batch.last_height + 1):
                blocks.append(self._batch_block(height))
                await trio.lowlevel.checkpoint()
            tree = await trio.to_thread.run_sync(MerkleTree, batch_event_ids(blocks))
            self._cache(batch, tree)

    async def event_proof_async(self, event_id: bytes) -> dict[str, Any]:
        """`event_proof` for a trio server: a cold batch tree is built by `warm_tree` first."""
        height = self.index.height_of(event_id) if len(event_id) == 32 else None
        batch = self.index.batch_covering(height) if height is not None else None
        if batch is not None:
            await self.warm_tree(batch)
        return self.event_proof(event_id)

    def _batch_block(self, height: int) -> BatchBlock:
        return batch_block(self._committed(height).block, self.extract)

    def _cache(self, batch: AnchorBatch, tree: MerkleTree) -> MerkleTree:
        if tree.root != batch.root:
            raise AssertionError(f"batch {batch.batch_id} rebuilt from the block store has another root")
        self._trees[batch.batch_id] = tree
        while len(self._trees) > TREE_CACHE_SIZE:
            self._trees.popitem(last=False)
        return tree

    def event_proof(self, event_id: bytes) -> dict[str, Any]:
        """The proof document of one event (format devsen-event-proof/1)."""
        if len(event_id) != 32:
            raise ValueError("an event id is 32 bytes")
        height = self.index.height_of(event_id)
        if height is None:
            raise ProofNotFound(f"no committed event 0x{event_id.hex()}")
        batch = self.index.batch_covering(height)
        if batch is None:
            raise ProofNotReady(f"event 0x{event_id.hex()} is committed at height {height}; its batch is still open")
        committed = self._committed(height)
        payload_index, event_bytes = self._locate(committed.block, event_id)
        tree = self.tree(batch)
        leaf_index = tree.index_of(event_id)
        assert leaf_index is not None, "an indexed event is in its batch's tree"
        proof = tree.proof(leaf_index)
        return {
            "format": PROOF_FORMAT,
            "event_id": hex0x(event_id),
            "event_bytes": hex0x(event_bytes),
            "leaf": hex0x(leaf_hash(event_id)),
            "leaf_index": leaf_index,
            "proof": [hex0x(s) for s in proof.siblings],
            "directions": proof.directions,
            "batch": batch_to_json(batch),
            "anchor": {"chain_id": self.chain_id, "contract": hex0x(self.anchor_address)},
            "block": {**header_to_json(committed.block),
                      "payload_hashes": [hex0x(keccak256(p)) for p in committed.block.payloads],
                      "payload_index": payload_index,
                      "payload": hex0x(committed.block.payloads[payload_index])},
            "certificate": certificate_to_json(committed.certificate),
        }

    def _locate(self, block: Block, event_id: bytes) -> tuple[int, bytes]:
        for index, payload in enumerate(block.payloads):
            for data in self.extract(payload):
                if keccak256(data) == event_id:
                    return index, data
        raise AssertionError(f"event 0x{event_id.hex()} is indexed at height {block.height} but not in it")

    def block_document(self, height: int) -> dict[str, Any]:
        """A committed block with all payloads, its certificate and the batch covering it."""
        committed = self._committed(height)
        batch = self.index.batch_covering(height)
        return {
            "block": {**header_to_json(committed.block),
                      "payloads": [hex0x(p) for p in committed.block.payloads]},
            "certificate": certificate_to_json(committed.certificate),
            "batch_id": None if batch is None else batch.batch_id,
        }

    def batch_document(self, batch_id: int) -> dict[str, Any]:
        """A closed batch as this node computed it."""
        batch = self.index.batch(batch_id)
        if batch is None:
            raise ProofNotFound(f"no closed batch {batch_id}")
        return {"batch": batch_to_json(batch),
                "anchor": {"chain_id": self.chain_id, "contract": hex0x(self.anchor_address)}}


def block_from_document(data: dict[str, Any]) -> Block:
    """Rebuild a Block from `block_document()["block"]` (with full payloads)."""
    return Block(int(data["height"]), int(data["timestamp_ms"]), unhex(data["proposer"], 20),
                 unhex(data["prev_block_hash"], 32), unhex(data["app_state_hash"], 32),
                 tuple(unhex(p) for p in data["payloads"]), unhex(data["app_header"]))


RouteHandler = Callable[[dict[str, str]], Awaitable[tuple[int, Any]]]


def http_routes(service: ProofService) -> dict[str, RouteHandler]:
    """GET route templates -> handlers `(params) -> (status, json body)` for the node's HTTP API.

    404: unknown event, block or batch; 409: the event's batch has not closed yet (retry);
    400: malformed id. A batch tree not in the cache is built without stalling the event loop.
    """

    async def event_proof(params: dict[str, str]) -> tuple[int, Any]:
        try:
            event_id = unhex(params["event_id"], 32)
        except ValueError as exc:
            return 400, {"error": f"bad event id: {exc}"}
        return await _answer(lambda: service.event_proof_async(event_id))

    async def block(params: dict[str, str]) -> tuple[int, Any]:
        if not params["height"].isdigit():
            return 400, {"error": "height must be a decimal integer"}
        return await _answer(lambda: service.block_document(int(params["height"])))

    async def batch(params: dict[str, str]) -> tuple[int, Any]:
        if not params["batch_id"].isdigit():
            return 400, {"error": "batch id must be a decimal integer"}
        return await _answer(lambda: service.batch_document(int(params["batch_id"])))

    return {"/v1/events/{event_id}/proof": event_proof, "/v1/blocks/{height}": block,
            "/v1/batches/{batch_id}": batch}


async def _answer(build: Callable[[], Any]) -> tuple[int, Any]:
    """200 with the document `build()` returns (awaited if need be); 409 / 404 for not ready / unknown."""
    try:
        document = build()
        if inspect.isawaitable(document):
            document = await document
        return 200, document
    except ProofNotReady as exc:
        return 409, {"error": str(exc)}
    except ProofNotFound as exc:
        return 404, {"error": str(exc)}
