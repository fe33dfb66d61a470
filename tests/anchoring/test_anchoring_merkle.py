"""Merkle trees per anchoring/MERKLE.md: shared vectors, edge sizes, second-preimage attempts."""

from __future__ import annotations

import importlib.util
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anchoring.merkle import (
    ZERO_ROOT,
    MerkleError,
    MerkleProof,
    MerkleTree,
    leaf_hash,
    merkle_root,
    node_hash,
    root_from_proof,
    verify_inclusion,
)
from ocpp_adapter.events import ChargerEvent
from primitives.hashing import keccak256

VECTORS = Path(__file__).parents[1] / "vectors" / "merkle_v1.json"


def reference_root(leaves: list[bytes]) -> bytes:
    """Recursive restatement of the spec: split at the largest power of two below n.

    With "promote the odd last node" the left subtree of n leaves is always the first
    2**k leaves (2**k < n <= 2**(k+1)), which gives this independent definition.
    """
    if len(leaves) == 1:
        return leaves[0]
    split = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(reference_root(leaves[:split]), reference_root(leaves[split:]))


def ids(n: int, seed: int = 0) -> list[bytes]:
    return [keccak256(f"{seed}:{i}".encode()) for i in range(n)]


def test_vectors_match_implementation_from_event_bytes() -> None:
    document = json.loads(VECTORS.read_text())
    assert [c["leaf_count"] for c in document["cases"]] == [0, 1, 2, 3, 5, 8, 13]
    for case in document["cases"]:
        root = bytes.fromhex(case["root"][2:])
        event_ids = []
        for entry in case["leaves"]:
            data = bytes.fromhex(entry["event_bytes"][2:])
            event_id = ChargerEvent.from_bytes(data).event_id
            assert event_id == keccak256(data) == bytes.fromhex(entry["event_id"][2:])
            assert leaf_hash(event_id).hex() == entry["leaf"][2:]
            proof = MerkleProof(tuple(bytes.fromhex(s[2:]) for s in entry["proof"]), entry["directions"])
            assert verify_inclusion(event_id, proof, root)
            event_ids.append(event_id)
        assert merkle_root(event_ids) == root
        if event_ids:
            assert reference_root([leaf_hash(e) for e in event_ids]) == root
        else:
            assert root == ZERO_ROOT


def test_vector_file_is_generated_from_current_code() -> None:
    spec = importlib.util.spec_from_file_location("make_merkle_vectors", VECTORS.with_name("make_merkle_vectors.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert json.loads(VECTORS.read_text()) == module.build_vectors()


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 31, 100])
def test_every_proof_verifies_and_root_matches_reference(n: int) -> None:
    event_ids = ids(n)
    tree = MerkleTree(event_ids)
    assert tree.root == reference_root([leaf_hash(e) for e in event_ids])
    for i, event_id in enumerate(event_ids):
        proof = tree.proof(i)
        assert tree.index_of(event_id) == i
        assert len(proof.siblings) <= (n - 1).bit_length()
        assert verify_inclusion(event_id, proof, tree.root)
        assert not verify_inclusion(ids(1, seed=99)[0], proof, tree.root)


def test_one_leaf_root_is_the_leaf_and_proof_is_empty() -> None:
    (event_id,) = ids(1)
    tree = MerkleTree([event_id])
    assert tree.root == leaf_hash(event_id)
    assert tree.proof(0) == MerkleProof((), 0)
    assert verify_inclusion(event_id, tree.proof(0), tree.root)
    assert not verify_inclusion(event_id, tree.proof(0), event_id)  # the id itself is not the root


def test_two_and_three_leaves_exact_shape() -> None:
    a, b, c = ids(3)
    assert merkle_root([a, b]) == node_hash(leaf_hash(a), leaf_hash(b))
    three = MerkleTree([a, b, c])
    assert three.root == node_hash(node_hash(leaf_hash(a), leaf_hash(b)), leaf_hash(c))
    assert three.proof(2) == MerkleProof((node_hash(leaf_hash(a), leaf_hash(b)),), 1)
    assert three.proof(1) == MerkleProof((leaf_hash(a), leaf_hash(c)), 0b01)
    assert three.proof(0) == MerkleProof((leaf_hash(b), leaf_hash(c)), 0b00)


def test_odd_node_is_promoted_not_duplicated() -> None:
    a, b, c = ids(3)
    # duplicating the last node (CVE-2012-2459 style) would make [a,b,c] and [a,b,c,c] collide
    assert merkle_root([a, b, c]) != node_hash(node_hash(leaf_hash(a), leaf_hash(b)),
                                              node_hash(leaf_hash(c), leaf_hash(c)))
    with pytest.raises(MerkleError, match="twice"):
        MerkleTree([a, b, c, c])


def test_second_preimage_inner_node_as_leaf_is_rejected() -> None:
    event_ids = ids(8)
    tree = MerkleTree(event_ids)
    leaves = [leaf_hash(e) for e in event_ids]
    inner = node_hash(leaves[0], leaves[1])
    # the upper part of leaf 0's proof, which proves `inner` as a node, does not prove it as an event
    upper = tree.proof(0)
    forged = MerkleProof(upper.siblings[1:], upper.directions >> 1)
    assert root_from_proof(event_ids[0], upper) == tree.root
    assert not verify_inclusion(inner, forged, tree.root)
    # the 64-byte preimage of an inner node is not an event id at all
    with pytest.raises(MerkleError):
        leaf_hash(leaves[0] + leaves[1])
    # a leaf hash posing as an event id is hashed again, so it does not verify either
    assert not verify_inclusion(leaves[0], tree.proof(0), tree.root)


def test_tampered_proofs_fail() -> None:
    event_ids = ids(13)
    tree = MerkleTree(event_ids)
    proof = tree.proof(6)
    flipped = MerkleProof(proof.siblings, proof.directions ^ 1)
    assert not verify_inclusion(event_ids[6], flipped, tree.root)
    broken = MerkleProof((b"\x00" * 32,) + proof.siblings[1:], proof.directions)
    assert not verify_inclusion(event_ids[6], broken, tree.root)
    other_tree = MerkleTree(ids(13, seed=1))
    assert not verify_inclusion(event_ids[6], proof, other_tree.root)
    assert not verify_inclusion(event_ids[6], tree.proof(7), tree.root)


def test_zero_root_and_malformed_input() -> None:
    assert MerkleTree([]).root == ZERO_ROOT
    assert not verify_inclusion(ids(1)[0], MerkleProof((), 0), ZERO_ROOT)
    with pytest.raises(MerkleError):
        MerkleProof((b"\x00" * 32,), 2)  # directions beyond the proof length
    with pytest.raises(MerkleError):
        MerkleProof((b"\x00" * 31,), 0)
    with pytest.raises(MerkleError):
        MerkleProof((b"\x00" * 32,) * 65, 0)
    with pytest.raises(MerkleError):
        MerkleTree([b"short"])
    with pytest.raises(MerkleError):
        MerkleTree(ids(2)).proof(2)
    assert not verify_inclusion(ids(1)[0], MerkleProof((), 0), b"\x01" * 31)


def test_hundred_thousand_leaves_build_and_proofs() -> None:
    event_ids = ids(100_000)
    started = time.perf_counter()
    tree = MerkleTree(event_ids)
    build_seconds = time.perf_counter() - started
    assert build_seconds < 5.0, build_seconds
    rng = random.Random(7)
    for index in [0, 1, 65_535, 65_536, 99_998, 99_999, *rng.sample(range(100_000), 20)]:
        proof = tree.proof(index)
        assert len(proof.siblings) <= 17  # ceil(log2(1e5)); fewer where a level promoted the node
        assert verify_inclusion(event_ids[index], proof, tree.root)
    assert len(tree.proof(0).siblings) == 17 and len(tree.proof(99_999).siblings) == 10
    assert tree.root == reference_root([leaf_hash(e) for e in event_ids])


@settings(max_examples=150, deadline=None)
@given(size=st.integers(1, 300), seed=st.integers(0, 2**32), data=st.data())
def test_every_proof_matches_the_reference_root(size: Any, seed: Any, data: Any) -> None:
    ids = [keccak256(b"%d:%d" % (seed, i)) for i in range(size)]
    tree = MerkleTree(ids)
    assert tree.root == reference_root([leaf_hash(e) for e in ids])
    index = data.draw(st.integers(0, size - 1))
    proof = tree.proof(index)
    assert root_from_proof(ids[index], proof) == tree.root
    other = data.draw(st.integers(0, size - 1))
    assert verify_inclusion(ids[other], proof, tree.root) == (other == index)
