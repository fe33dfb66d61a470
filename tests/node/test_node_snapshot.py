"""State sync between two real NodeApplications: list, load, offer (against a trusted app
hash), apply chunk by chunk; a hostile peer's chunks, a wrong app hash and bad indices fail."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import msgpack
import pytest
from test_node_app import ANCHOR, KEYS, Shell, event, make_app

import devsen.app as app_module
from anchoring.attestations import attest, decode_attestation
from consensus.abci import Snapshot
from consensus.types import Block
from devsen.app import encode_app_header
from primitives.eip712 import ZERO_HASH
from primitives.hashing import keccak256


@pytest.fixture
def small_snapshots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "SNAPSHOT_EVERY_BLOCKS", 2)
    monkeypatch.setattr(app_module, "SNAPSHOT_CHUNK_BYTES", 256)  # several chunks per snapshot
    monkeypatch.setattr(app_module, "SNAPSHOTS_KEPT", 2)


class Chain:
    """Blocks made once, finalized by any number of applications."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []

    def make(self, payloads: tuple[bytes, ...]) -> Block:
        height = len(self.blocks) + 1
        prev = self.blocks[-1].hash if self.blocks else ZERO_HASH
        b = Block(height, 1_700_000_000_000 + height * 1000, KEYS[0].address, prev, ZERO_HASH, payloads,
                  encode_app_header(5, (5).to_bytes(32, "big")))
        self.blocks.append(b)
        return b


def serving_app(tmp_path: Path) -> tuple[Any, Any, Any, Any]:
    """Node a: six heights with events, a batch waiting for signatures, snapshots every 2."""
    (tmp_path / "a").mkdir()
    a, shell = make_app(tmp_path / "a")
    a.snapshot_path = tmp_path / "a" / "app_snapshot.msgpack"
    chain = Chain()
    hashes = {}
    hashes[1] = shell.finalize(chain.make((event("m1"), event("m2", "Heartbeat", {}))))
    hashes[2] = shell.finalize(chain.make(()))  # closes batch 0; a signs it
    other = attest(decode_attestation(shell.own[0]).subject, KEYS[1], ANCHOR).encode()
    hashes[3] = shell.finalize(chain.make((other,)))
    for h in range(4, 8):
        hashes[h] = shell.finalize(chain.make((event(f"m{h}", "Heartbeat", {}),)))
    return a, shell, chain, hashes


def fresh_app(tmp_path: Path, name: Any="b") -> tuple[Any, Any]:
    (tmp_path / name).mkdir()
    return make_app(tmp_path / name, key=KEYS[1])


def test_snapshot_moves_the_state_to_a_fresh_node(tmp_path: Path, small_snapshots: Any) -> None:
    a, shell_a, chain, hashes = serving_app(tmp_path)
    listed = a.list_snapshots()
    assert [s.height for s in listed] == [6, 4]  # newest first, only SNAPSHOTS_KEPT kept on disk
    assert len(list(a.snapshot_dir.glob("*.snap"))) == 2
    snapshot = listed[0]
    assert snapshot.chunks > 2 and snapshot.app_hash == hashes[6]
    chunks = [a.load_snapshot_chunk(6, snapshot.format, i) for i in range(snapshot.chunks)]
    assert all(c is not None and len(c) <= 256 for c in chunks)

    b, shell_b = fresh_app(tmp_path)
    empty_hash = b.app_state_hash()
    assert b.offer_snapshot(snapshot, hashes[6])  # the caller read hashes[6] from block 7's header
    for i, chunk in enumerate(chunks[:-1]):
        assert b.apply_snapshot_chunk(i, chunk) is None
        assert b.app_state_hash() == empty_hash  # nothing taken before the last chunk
    assert b.apply_snapshot_chunk(len(chunks) - 1, chunks[-1]) is True
    assert b.app_state_hash() == hashes[6] and not b.restoring
    # As a validator, b signs the batches still open at the snapshot that it had not signed.
    resigned = [decode_attestation(p) for p in b.take_restored_outbound()]
    assert resigned and all(att.signer == KEYS[1].address for att in resigned)
    assert {att.subject for att in resigned} <= set(b.book.open_subjects())
    # Both continue from height 7 on and agree.
    assert shell_b.finalize(chain.blocks[6]) == hashes[7]
    nxt = chain.make((event("m8", "Heartbeat", {}),))
    assert shell_b.finalize(nxt) == shell_a.finalize(nxt)
    assert b.batcher.state == a.batcher.state
    assert b.book.export_state() == a.book.export_state()


def test_hostile_chunk_is_refused_and_another_peers_chunk_completes(tmp_path: Path, small_snapshots: Any) -> None:
    a, _, _, hashes = serving_app(tmp_path)
    snapshot = a.list_snapshots()[0]
    chunks = [a.load_snapshot_chunk(6, snapshot.format, i) for i in range(snapshot.chunks)]
    b, _ = fresh_app(tmp_path)
    assert b.offer_snapshot(snapshot, hashes[6])
    tampered = bytes([chunks[1][0] ^ 1]) + chunks[1][1:]
    assert b.apply_snapshot_chunk(1, tampered) is False
    assert b.apply_snapshot_chunk(1, chunks[1] + b"x") is False  # appended byte
    assert b.apply_snapshot_chunk(1, b"\x00" * 257) is False  # oversized
    assert b.restoring  # the restore goes on: the chunk is fetched from another peer
    for i, chunk in enumerate(chunks):
        assert b.apply_snapshot_chunk(i, chunk) is (True if i == len(chunks) - 1 else None)
    assert b.app_state_hash() == hashes[6]


def test_offer_is_refused_unless_it_claims_the_trusted_app_hash(tmp_path: Path, small_snapshots: Any) -> None:
    a, _, _, hashes = serving_app(tmp_path)
    snapshot = a.list_snapshots()[0]
    b, _ = fresh_app(tmp_path)
    assert not b.offer_snapshot(snapshot, hashes[5])  # another height's app hash
    assert not b.offer_snapshot(snapshot, b"\x01" * 32)
    assert not b.offer_snapshot(dataclasses.replace(snapshot, format=1), hashes[6])
    assert not b.offer_snapshot(dataclasses.replace(snapshot, chunks=snapshot.chunks + 1), hashes[6])
    assert not b.offer_snapshot(dataclasses.replace(snapshot, hash=keccak256(b"x")), hashes[6])
    assert not b.offer_snapshot(dataclasses.replace(snapshot, metadata=b"\xc1garbage"), hashes[6])
    block_hash, chunk_hashes = msgpack.unpackb(snapshot.metadata)
    huge = [keccak256(b"%d" % i) for i in range(app_module.MAX_SNAPSHOT_CHUNKS + 1)]
    assert not b.offer_snapshot(Snapshot(6, snapshot.format, len(huge), keccak256(b"".join(huge)), hashes[6],
                                         msgpack.packb([block_hash, huge])), hashes[6])
    assert not b.restoring


def test_snapshot_whose_state_is_not_the_certified_one_is_refused_and_old_state_kept(tmp_path: Path, small_snapshots: Any) -> None:
    """A peer relabels height 4's snapshot as height 6's with block 7's certified app hash:
    every chunk matches its (peer-made) metadata, the restored ledger does not."""
    a, _, chain, hashes = serving_app(tmp_path)
    old = a.list_snapshots()[1]
    assert old.height == 4
    chunks = [a.load_snapshot_chunk(4, old.format, i) for i in range(old.chunks)]
    forged = dataclasses.replace(old, height=6, app_hash=hashes[6])
    b, shell_b = fresh_app(tmp_path)
    shell_b.finalize(chain.blocks[0])  # b has some state of its own
    before = b.app_state_hash()
    assert b.offer_snapshot(forged, hashes[6])
    results = [b.apply_snapshot_chunk(i, c) for i, c in enumerate(chunks)]
    assert results[-1] is False and not b.restoring
    assert b.app_state_hash() == before and b._last_block[0] == 1
    # Same with height 4's own label but block 7's hash: refused too.
    assert b.offer_snapshot(dataclasses.replace(old, app_hash=hashes[6]), hashes[6])
    assert [b.apply_snapshot_chunk(i, c) for i, c in enumerate(chunks)][-1] is False
    assert b.app_state_hash() == before


def test_chunk_indices_are_bounds_checked(tmp_path: Path, small_snapshots: Any) -> None:
    a, _, _, hashes = serving_app(tmp_path)
    snapshot = a.list_snapshots()[0]
    for index in (-1, snapshot.chunks, app_module.MAX_SNAPSHOT_CHUNKS, 2**70):
        assert a.load_snapshot_chunk(6, snapshot.format, index) is None
    assert a.load_snapshot_chunk(5, snapshot.format, 0) is None  # no snapshot at height 5
    assert a.load_snapshot_chunk(6, 99, 0) is None
    assert a.load_snapshot_chunk(-6, snapshot.format, 0) is None
    b, _ = fresh_app(tmp_path)
    assert b.apply_snapshot_chunk(0, a.load_snapshot_chunk(6, snapshot.format, 0)) is False  # nothing offered
    assert b.offer_snapshot(snapshot, hashes[6])
    for index in (-1, snapshot.chunks, 2**70):
        assert b.apply_snapshot_chunk(index, b"") is False
    assert b.restoring


def test_garbage_that_matches_its_own_metadata_is_refused(tmp_path: Path, small_snapshots: Any) -> None:
    """A hostile server can make metadata for any bytes: they must decode and hash right."""
    b, _ = fresh_app(tmp_path)
    before = b.app_state_hash()
    for blob in (b"\x93garbage", msgpack.packb([2, 6, b"x"]), msgpack.packb(list(range(12)))):
        hashes = [keccak256(blob)]
        snapshot = Snapshot(6, app_module.SNAPSHOT_FORMAT, 1, keccak256(hashes[0]), b"\x07" * 32,
                            msgpack.packb([b"\x00" * 32, hashes]))
        assert b.offer_snapshot(snapshot, b"\x07" * 32)
        assert b.apply_snapshot_chunk(0, blob) is False
    assert b.app_state_hash() == before


def stored_blocks(chain: Chain, certified: dict[int, bytes]) -> dict[int, Any]:
    """The chain's blocks as a block store holds them, block h+1 certifying `certified[h]`."""
    return {b.height: type("C", (), {"block": dataclasses.replace(b, app_state_hash=certified[b.height - 1])
                                     if b.height - 1 in certified else b})() for b in chain.blocks}


def test_local_restore_reads_the_new_format(tmp_path: Path, small_snapshots: Any) -> None:
    a, _, chain, hashes = serving_app(tmp_path)
    stored = stored_blocks(chain, {6: hashes[6]})
    b, shell_b = fresh_app(tmp_path)
    b.snapshot_path = a.snapshot_path
    assert b.restore(7, stored.get) == (6, hashes[6])
    assert shell_b.finalize(chain.blocks[6]) == hashes[7]
    assert isinstance(shell_b, Shell)


def test_local_restore_is_refused_when_the_next_header_disowns_it(tmp_path: Path, small_snapshots: Any) -> None:
    """A snapshot file altered on disk (or any state the chain did not certify) is not restored."""
    a, _, chain, hashes = serving_app(tmp_path)
    b, _ = fresh_app(tmp_path)
    b.snapshot_path = a.snapshot_path
    before = b.app_state_hash()
    assert b.restore(7, stored_blocks(chain, {6: b"\x5a" * 32}).get) is None
    assert b.app_state_hash() == before and b._last_block[0] == 0  # nothing taken
    assert b.restore(6, stored_blocks(chain, {}).get) == (6, hashes[6])  # no next block yet: its own file


def doctored_offer(a: Any, change: Any) -> tuple[Snapshot, list[bytes]]:
    """The snapshot at height 6 of `a` with its beside-ledger part changed by `change(fields)`,
    re-chunked with honest chunk hashes (what a hostile server can always make)."""
    version, height, block_hash, ledger_hash, ledger_bytes, beside = msgpack.unpackb(
        (a.snapshot_dir / "000000000006.snap").read_bytes())
    fields = msgpack.unpackb(beside)
    change(fields)
    data = msgpack.packb([version, height, block_hash, ledger_hash, ledger_bytes, msgpack.packb(fields)])
    chunks = app_module._chunks(data)
    hashes = [keccak256(c) for c in chunks]
    snapshot = Snapshot(6, version, len(chunks), keccak256(b"".join(hashes)), a.list_snapshots()[0].app_hash,
                        msgpack.packb([block_hash, hashes]))
    return snapshot, chunks


def test_a_doctored_beside_ledger_part_is_refused(tmp_path: Path, small_snapshots: Any) -> None:
    """The ledger is intact; what beside it was altered: the app hash no longer matches."""
    a, _, _, hashes = serving_app(tmp_path)

    def forged_open_event(fields: list[Any]) -> None:  # the open anchor batch holds an event nobody sent
        fields[3][1] = 6
        fields[7] = [[6, 1_700_000_006_000, [b"\x66" * 32]]]

    def counted_signature(fields: list[Any]) -> None:  # a signature counted for an open subject
        fields[4] = [[subject, [*sigs, [KEYS[2].address, b"\x01" * 65]]] for subject, sigs in fields[4]]

    def other_validators(fields: list[Any]) -> None:
        fields[2] = fields[2][:-1]

    def moved_batch(fields: list[Any]) -> None:  # the next anchor batch id
        fields[3][0] += 1

    def later_eth_block(fields: list[Any]) -> None:
        fields[0] += 1

    for change in (forged_open_event, counted_signature, other_validators, moved_batch, later_eth_block):
        (tmp_path / change.__name__).mkdir()
        b, _ = fresh_app(tmp_path / change.__name__)
        before = b.app_state_hash()
        snapshot, chunks = doctored_offer(a, change)
        assert b.offer_snapshot(snapshot, hashes[6]), change.__name__
        results = [b.apply_snapshot_chunk(i, c) for i, c in enumerate(chunks)]
        assert results[-1] is False, change.__name__
        assert b.app_state_hash() == before and b._last_block[0] == 0, change.__name__
    (tmp_path / "honest").mkdir()
    b, _ = fresh_app(tmp_path / "honest")
    snapshot, chunks = doctored_offer(a, lambda fields: None)  # unchanged: taken
    assert b.offer_snapshot(snapshot, hashes[6])
    assert [b.apply_snapshot_chunk(i, c) for i, c in enumerate(chunks)][-1] is True
    assert b.app_state_hash() == hashes[6]


def test_the_app_hash_covers_the_attestation_book(tmp_path: Path) -> None:
    """Two nodes with the same ledger whose books counted different signatures differ in app hash."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, shell_a = make_app(tmp_path / "a")
    b, shell_b = make_app(tmp_path / "b")
    chain = Chain()
    for block in (chain.make((event("m1"),)), chain.make(())):  # block 2 closes batch 0
        assert shell_a.finalize(block) == shell_b.finalize(block)
    ledger_hash = a.ledger.state_hash()
    subject = decode_attestation(shell_a.own[0]).subject
    a.book.on_committed(attest(subject, KEYS[1], ANCHOR), 3)  # only a counts it
    assert a.ledger.state_hash() == b.ledger.state_hash() == ledger_hash
    assert a.app_state_hash() != b.app_state_hash()


def test_remembered_item_digests_equal_a_fresh_computation(tmp_path: Path) -> None:
    """The digest remembers item hashes between blocks; at every height it equals a new digest's."""
    from devsen.beside_ledger import BesideLedgerDigest, app_state_hash

    (tmp_path / "a").mkdir()
    a, shell = make_app(tmp_path / "a")
    chain = Chain()
    for h in range(1, 9):
        payloads: tuple[bytes, ...] = (event(f"m{h}", "Heartbeat", {}),) if h % 3 else ()
        if h == 4 and shell.own:
            payloads = (attest(decode_attestation(shell.own[0]).subject, KEYS[1], ANCHOR).encode(),)
        got = shell.finalize(chain.make(payloads))
        fresh = app_state_hash(a.ledger.state_hash(), BesideLedgerDigest().of(a._beside_ledger()))
        assert got == fresh == a.app_state_hash(), h
