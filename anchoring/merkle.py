"""Merkle trees and inclusion proofs over event ids, exactly as anchoring/MERKLE.md (v1).

Pure functions, no I/O. `leaf = H(0x00 || event_id)`, `node = H(0x01 || left || right)`,
an odd last node is promoted unchanged, the root of one leaf is that leaf, the root of no
leaves is 32 zero bytes (and nothing verifies against it). `H` is keccak-256.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from primitives.hashing import keccak256

LEAF_TAG = b"\x00"
NODE_TAG = b"\x01"
HASH_BYTES = 32
ZERO_ROOT = b"\x00" * HASH_BYTES
MAX_PROOF_LENGTH = 64
MAX_LEAVES = 1 << 22  # a batch never holds more events than this (about 4.2 million)


class MerkleError(ValueError):
    """Malformed input to a tree or a proof (wrong lengths, duplicate ids, out of range)."""


def leaf_hash(event_id: bytes) -> bytes:
    """`H(0x00 || event_id)`: the leaf of one event."""
    if len(event_id) != HASH_BYTES:
        raise MerkleError(f"an event id is {HASH_BYTES} bytes, got {len(event_id)}")
    return keccak256(LEAF_TAG + event_id)


def node_hash(left: bytes, right: bytes) -> bytes:
    """`H(0x01 || left || right)`: an inner node."""
    return keccak256(NODE_TAG + left + right)


def _next_level(level: Sequence[bytes]) -> list[bytes]:
    paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        paired.append(level[-1])  # promoted unchanged, never paired with itself
    return paired


@dataclass(frozen=True, slots=True)
class MerkleProof:
    """Siblings from the leaf level upward and the direction bits (bit k set: sibling k is left)."""

    siblings: tuple[bytes, ...]
    directions: int

    def __post_init__(self) -> None:
        if len(self.siblings) > MAX_PROOF_LENGTH:
            raise MerkleError(f"a proof has at most {MAX_PROOF_LENGTH} siblings")
        if any(len(s) != HASH_BYTES for s in self.siblings):
            raise MerkleError(f"every sibling is {HASH_BYTES} bytes")
        if not 0 <= self.directions < 1 << len(self.siblings):
            raise MerkleError("directions must be in [0, 2**len(siblings))")

    @property
    def size_bytes(self) -> int:
        """Bytes an on-chain verifier receives: 32 per sibling plus the 32-byte directions word."""
        return HASH_BYTES * (len(self.siblings) + 1)


class MerkleTree:
    """All levels of the tree over `event_ids` (in batch order); answers root and proofs."""

    __slots__ = ("_levels", "_index")

    def __init__(self, event_ids: Sequence[bytes]) -> None:
        if len(event_ids) > MAX_LEAVES:
            raise MerkleError(f"a tree holds at most {MAX_LEAVES} leaves, got {len(event_ids)}")
        self._index: dict[bytes, int] = {}
        for position, event_id in enumerate(event_ids):
            if self._index.setdefault(event_id, position) != position:
                raise MerkleError(f"event id {event_id.hex()} appears twice")
        levels = [[leaf_hash(e) for e in event_ids]]
        while len(levels[-1]) > 1:
            levels.append(_next_level(levels[-1]))
        self._levels = levels

    def __len__(self) -> int:
        return len(self._levels[0])

    @property
    def root(self) -> bytes:
        """The root (ZERO_ROOT for no leaves)."""
        return self._levels[-1][0] if self._levels[0] else ZERO_ROOT

    def index_of(self, event_id: bytes) -> int | None:
        """Position of `event_id` among the leaves, or None."""
        return self._index.get(event_id)

    def proof(self, index: int) -> MerkleProof:
        """The inclusion proof of leaf `index`."""
        if not 0 <= index < len(self):
            raise MerkleError(f"leaf index {index} out of range for {len(self)} leaves")
        siblings: list[bytes] = []
        directions = 0
        position = index
        for level in self._levels[:-1]:
            sibling = position ^ 1
            if sibling < len(level):
                if sibling < position:
                    directions |= 1 << len(siblings)
                siblings.append(level[sibling])
            position //= 2
        return MerkleProof(tuple(siblings), directions)


def merkle_root(event_ids: Sequence[bytes]) -> bytes:
    """The root over `event_ids`, in order."""
    return MerkleTree(event_ids).root


def root_from_proof(event_id: bytes, proof: MerkleProof) -> bytes:
    """The root that `proof` leads to from `event_id` (the verifier always hashes the leaf itself)."""
    running = leaf_hash(event_id)
    for k, sibling in enumerate(proof.siblings):
        if proof.directions >> k & 1:
            running = node_hash(sibling, running)
        else:
            running = node_hash(running, sibling)
    return running


def verify_inclusion(event_id: bytes, proof: MerkleProof, root: bytes) -> bool:
    """True iff `proof` shows `event_id` under `root`; never true for the zero root."""
    if len(root) != HASH_BYTES or root == ZERO_ROOT:
        return False
    return root_from_proof(event_id, proof) == root
