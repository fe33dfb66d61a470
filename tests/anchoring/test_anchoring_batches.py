"""Attestation payloads, deterministic batch closing and quorum collection."""

from __future__ import annotations

from typing import Any, cast

import msgpack
import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

from anchoring.attestations import (
    ANCHOR_ATTESTATION_TAG,
    SETTLEMENT_ATTESTATION_TAG,
    AnchorBatch,
    Attestation,
    AttestationError,
    Settlement,
    SettlementBatch,
    attest,
    decode_attestation,
    payload_kind,
)
from anchoring.batches import (
    AttestationBook,
    BatchBuilder,
    BatchPolicy,
    BuilderState,
    CommittedBlock,
    batch_event_ids,
    settlement_batches,
    settlement_window_closes,
    submitter_order,
)
from anchoring.merkle import ZERO_ROOT, merkle_root
from primitives.eip712 import Domain, SigningKey, to_checksum_hex
from primitives.hashing import keccak256

ANCHOR = Domain(31337, bytes.fromhex("aa" * 20))
ESCROW = Domain(31337, bytes.fromhex("ee" * 20))
KEYS = [SigningKey(keccak256(bytes([i]))) for i in range(4)]
VALIDATORS = [k.address for k in KEYS]
BATCH = AnchorBatch(7, keccak256(b"root"), 141, 160, 1234)
ENTRIES = (Settlement(keccak256(b"session"), 15_000, 3 * 10**18), Settlement(keccak256(b"session 2"), 1, 0))
SETTLEMENT = SettlementBatch.of(7 * 64, ENTRIES)


def eid(i: int) -> bytes:
    return keccak256(i.to_bytes(8, "big"))


def test_anchor_digest_matches_eth_account() -> None:
    fields = [{"name": n, "type": t} for t, n in
              [("uint64", "batchId"), ("bytes32", "root"), ("uint64", "firstHeight"),
               ("uint64", "lastHeight"), ("uint64", "eventCount")]]
    domain_fields = [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                     {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}]
    message = {
        "types": {"EIP712Domain": domain_fields, "AnchorBatch": fields},
        "primaryType": "AnchorBatch",
        "domain": {"name": "DEVSEN", "version": "1", "chainId": 31337,
                   "verifyingContract": to_checksum_hex(ANCHOR.verifying_contract)},
        "message": {"batchId": 7, "root": BATCH.root, "firstHeight": 141, "lastHeight": 160,
                    "eventCount": 1234},
    }
    signed = Account.sign_message(encode_typed_data(full_message=message), KEYS[0].secret)
    assert signed.message_hash == BATCH.digest(ANCHOR)
    assert attest(BATCH, KEYS[0], ANCHOR).signature == signed.signature


@pytest.mark.parametrize("subject", [BATCH, SETTLEMENT, AnchorBatch(0, ZERO_ROOT, 1, 1, 0),
                                     SettlementBatch.of((1 << 64) - 1, [Settlement(b"\x01" * 32, 0, (1 << 256) - 1)])])
def test_attestation_roundtrip_and_signature(subject: Any) -> None:
    domain = ANCHOR if isinstance(subject, AnchorBatch) else ESCROW
    attestation = attest(subject, KEYS[1], domain)
    payload = attestation.encode()
    assert payload_kind(payload) in (ANCHOR_ATTESTATION_TAG, SETTLEMENT_ATTESTATION_TAG)
    assert len(payload) < 200
    decoded = decode_attestation(payload)
    assert decoded == attestation
    decoded.verify(domain)
    with pytest.raises(AttestationError, match="recovers to"):
        decoded.verify(ESCROW if domain is ANCHOR else ANCHOR)  # another contract's domain


def test_decode_rejects_malformed_payloads() -> None:
    good = attest(BATCH, KEYS[0], ANCHOR)
    payload = good.encode()
    fields = msgpack.unpackb(payload[1:])
    def repack(values: Any, tag: Any=ANCHOR_ATTESTATION_TAG) -> bytes:
        return bytes([tag]) + cast(bytes, msgpack.packb(values, use_bin_type=True))
    bad = {
        "empty": b"",
        "unknown tag": b"\x01" + payload[1:],
        "truncated": payload[:-3],
        "trailing byte": payload + b"\x00",
        "wrong version": repack([2, *fields[1:]]),
        "short array": repack(fields[:-1]),
        "bool as int": repack([1, True, *fields[2:]]),
        "negative height": repack([1, 7, fields[2], -1, *fields[4:]]),
        "short root": repack([1, 7, b"\x01" * 31, *fields[3:]]),
        "inverted range": repack([1, 7, fields[2], 170, 160, *fields[5:]]),
        "zero root with events": repack([1, 7, ZERO_ROOT, *fields[3:]]),
        "string signer": repack([*fields[:6], "0x" + "11" * 20, fields[7]]),
        "settlement body under anchor tag": attest(SETTLEMENT, KEYS[0], ESCROW).encode().replace(
            bytes([SETTLEMENT_ATTESTATION_TAG]), bytes([ANCHOR_ATTESTATION_TAG]), 1),
        "oversized": bytes([ANCHOR_ATTESTATION_TAG]) + b"\x00" * 300,
        "non-canonical int": payload.replace(b"\x07", b"\xcd\x00\x07", 1),
    }
    for name, data in bad.items():
        with pytest.raises(AttestationError):
            decode_attestation(data)
            pytest.fail(name)
    assert payload_kind(b"\x00event") is None and payload_kind(b"") is None


def blocks(spec: list[tuple[int, int]], start: int = 1, base_ms: int = 1_000_000) -> list[CommittedBlock]:
    """(seconds since base, number of events) per block -> committed blocks with unique ids."""
    out, counter = [], 0
    for offset, (seconds, count) in enumerate(spec):
        ids = tuple(eid(counter + i) for i in range(count))
        counter += count
        out.append(CommittedBlock(start + offset, base_ms + 1000 * seconds, ids))
    return out


def run(builder: BatchBuilder, chain: list[CommittedBlock]) -> list[AnchorBatch]:
    return [closed[0] for b in chain if (closed := builder.on_block(b))]


def test_batches_close_every_k_blocks_contiguously() -> None:
    chain = blocks([(i, 2) for i in range(10)])
    closed = run(BatchBuilder(BatchPolicy(every_blocks=4, every_ms=10**9), BuilderState(0, 1)), chain)
    assert [(b.batch_id, b.first_height, b.last_height, b.event_count) for b in closed] == [
        (0, 1, 4, 8), (1, 5, 8, 8)]
    assert closed[0].root == merkle_root(batch_event_ids(chain[:4]))
    assert closed[1].root == merkle_root(batch_event_ids(chain[4:8]))


def test_batches_close_on_block_time_and_event_cap() -> None:
    chain = blocks([(0, 1), (10, 1), (29, 1), (30, 1), (31, 1), (90, 1)])
    closed = run(BatchBuilder(BatchPolicy(every_blocks=100, every_ms=30_000), BuilderState(0, 1)), chain)
    # batch 0 opens at block 1's time; batch 1 counts from the time batch 0 closed (t=30)
    assert [(b.first_height, b.last_height) for b in closed] == [(1, 4), (5, 6)]
    capped = run(BatchBuilder(BatchPolicy(every_blocks=100, every_ms=10**9, max_events=5), BuilderState(3, 1)),
                 blocks([(0, 3), (1, 3), (2, 1), (3, 4)]))
    assert [(b.batch_id, b.event_count, b.first_height, b.last_height) for b in capped] == [
        (3, 6, 1, 2), (4, 5, 3, 4)]


def test_empty_batches_stay_open_unless_policy_says_close() -> None:
    chain = blocks([(0, 0), (1, 0), (2, 0), (3, 0), (4, 1), (5, 0)])
    closed = run(BatchBuilder(BatchPolicy(every_blocks=2, every_ms=10**9), BuilderState(0, 1)), chain)
    assert [(b.first_height, b.last_height, b.event_count) for b in closed] == [(1, 5, 1)]
    eager = run(BatchBuilder(BatchPolicy(every_blocks=2, every_ms=10**9, close_empty=True),
                             BuilderState(0, 1)), chain)
    assert [(b.first_height, b.last_height, b.root == ZERO_ROOT) for b in eager] == [
        (1, 2, True), (3, 4, True), (5, 6, False)]


def test_duplicate_event_ids_count_once_and_builder_resumes() -> None:
    dup = eid(0)
    chain = [CommittedBlock(1, 0, (dup, eid(1))), CommittedBlock(2, 5, (dup, eid(2))),
             CommittedBlock(3, 6, (eid(3),)), CommittedBlock(4, 7, (eid(4),))]
    policy = BatchPolicy(every_blocks=2, every_ms=10**9)
    builder = BatchBuilder(policy, BuilderState(0, 1))
    first = builder.on_block(chain[0]), builder.on_block(chain[1])
    assert first[0] is None and first[1] is not None
    assert first[1][0].event_count == 3 and first[1][1] == (dup, eid(1), eid(2))
    builder.on_block(chain[2])
    resumed = BatchBuilder(policy, builder.state)  # restart in the middle of batch 1
    assert resumed.state == BuilderState(1, 3, 5)
    assert run(resumed, chain[2:]) == run(builder, chain[3:])
    with pytest.raises(ValueError, match="expected block"):
        resumed.on_block(chain[0])


def test_same_blocks_same_batches_on_every_node() -> None:
    chain = blocks([(i * 7 % 13, i % 4) for i in range(60)])
    chain = [CommittedBlock(b.height, 1_000_000 + 1000 * b.height * 3, b.event_ids) for b in chain]
    policy = BatchPolicy(every_blocks=8, every_ms=20_000)
    assert run(BatchBuilder(policy, BuilderState(0, 1)), chain) == run(BatchBuilder(policy, BuilderState(0, 1)), chain)


def test_attestation_book_reaches_quorum_once_with_sorted_signers() -> None:
    book = AttestationBook(VALIDATORS, ANCHOR, ESCROW)
    assert book.quorum == 3
    book.expect(BATCH)
    book.expect(SETTLEMENT)
    assert book.on_committed(attest(BATCH, KEYS[2], ANCHOR), 200) is None
    assert book.on_committed(attest(BATCH, KEYS[2], ANCHOR), 200) is None  # repeat signer
    assert book.on_committed(attest(BATCH, KEYS[0], ANCHOR), 201) is None
    quorum = book.on_committed(attest(BATCH, KEYS[3], ANCHOR), 202)
    assert quorum is not None and quorum.subject == BATCH and quorum.height == 202
    assert list(quorum.signers) == sorted([VALIDATORS[0], VALIDATORS[2], VALIDATORS[3]])
    for signer, signature in zip(quorum.signers, quorum.signatures, strict=True):
        Attestation(BATCH, signer, signature).verify(ANCHOR)
    assert book.on_committed(attest(BATCH, KEYS[1], ANCHOR), 203) is None  # late fourth: ignored
    with pytest.raises(AttestationError, match="no open subject"):
        book.check(attest(BATCH, KEYS[1], ANCHOR))  # and not admitted to a mempool any more
    assert book.pending_count() == 1


def test_attestation_book_rejects_what_does_not_count() -> None:
    book = AttestationBook(VALIDATORS, ANCHOR, ESCROW)
    book.expect(SETTLEMENT)
    outsider = SigningKey(keccak256(b"outsider"))
    other_terms = SettlementBatch.of(SETTLEMENT.batch_id, [ENTRIES[0], Settlement(ENTRIES[1].session_id, 1, 1)])
    forged = Attestation(SETTLEMENT, VALIDATORS[0], attest(SETTLEMENT, KEYS[1], ESCROW).signature)
    cases = {
        "outsider": attest(SETTLEMENT, outsider, ESCROW),
        "other terms": attest(other_terms, KEYS[0], ESCROW),
        "wrong domain": attest(SETTLEMENT, KEYS[0], ANCHOR),
        "signer mismatch": forged,
        "unknown batch": attest(BATCH, KEYS[0], ANCHOR),
    }
    for name, attestation in cases.items():
        with pytest.raises(AttestationError):
            book.on_committed(attestation, 10)
            pytest.fail(name)
    with pytest.raises(ValueError):
        book.expect(other_terms)
    with pytest.raises(ValueError):
        AttestationBook([VALIDATORS[0], VALIDATORS[0]], ANCHOR, ESCROW)


def test_submitter_order_rotates_by_batch_id() -> None:
    ordered = sorted(VALIDATORS)
    assert submitter_order(VALIDATORS, AnchorBatch(0, ZERO_ROOT, 1, 1, 0))[0] == ordered[0]
    assert submitter_order(VALIDATORS, AnchorBatch(5, ZERO_ROOT, 1, 1, 0)) == ordered[1:] + ordered[:1]
    order = submitter_order(cast(Any, reversed(VALIDATORS)), SETTLEMENT)  # input order does not matter
    assert sorted(order) == ordered and order == submitter_order(VALIDATORS, SETTLEMENT)


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.binary(max_size=300),
    st.builds(lambda tag, body: bytes([tag]) + body,
              st.sampled_from([ANCHOR_ATTESTATION_TAG, SETTLEMENT_ATTESTATION_TAG]), st.binary(max_size=250)),
    st.builds(lambda tag, fields: bytes([tag]) + msgpack.packb(fields, use_bin_type=True),
              st.sampled_from([ANCHOR_ATTESTATION_TAG, SETTLEMENT_ATTESTATION_TAG]),
              st.lists(st.one_of(st.integers(-2**63, 2**64 - 1), st.binary(max_size=70), st.text(max_size=5),
                                 st.booleans(), st.none()), max_size=9)),
))
def test_decoder_only_ever_raises_attestation_error(data: Any) -> None:
    try:
        attestation = decode_attestation(data)
    except AttestationError:
        return
    assert attestation.encode() == data  # whatever decodes is canonical


def _completed_book(signers_of: dict[Any, list[SigningKey]]) -> AttestationBook:
    book = AttestationBook(VALIDATORS, ANCHOR, ESCROW)
    for subject, keys in signers_of.items():
        book.expect(subject)
        domain = ANCHOR if isinstance(subject, AnchorBatch) else ESCROW
        results = [book.on_committed(attest(subject, k, domain), 10) for k in keys]
        assert (results[-1] is not None) == (len(keys) >= book.quorum)
    return book


def test_an_epoch_change_reopens_quorums_the_new_set_must_re_sign() -> None:
    """Replace 2 of 4: a quorum with a removed signer can never land (the contracts check the
    set in force), so it is re-opened with the signatures of those who stay; the new set
    completes it, and the removed validators' attestations no longer count."""
    from anchoring.batches import RECOLLECT_WINDOW_BLOCKS
    newcomers = [SigningKey(keccak256(b"newcomer-%d" % i)) for i in range(2)]
    other = AnchorBatch(8, keccak256(b"root8"), 161, 170, 3)
    book = _completed_book({BATCH: KEYS[:3], SETTLEMENT: KEYS[1:], other: KEYS[2:3]})
    new_set = [*VALIDATORS[:2], *(k.address for k in newcomers)]
    rebased, quorums = book.rebased(new_set, 20)
    assert quorums == []
    assert {rebased.reopened(s) for s in (BATCH, SETTLEMENT)} == {True} and not rebased.reopened(other)
    assert rebased.signers_of(BATCH) == set(VALIDATORS[:2]) and rebased.signers_of(SETTLEMENT) == {VALIDATORS[1]}
    assert rebased.signers_of(other) == set()  # open, its only signer left
    with pytest.raises(AttestationError, match="not a validator"):
        rebased.on_committed(attest(BATCH, KEYS[3], ANCHOR), 21)
    quorum = rebased.on_committed(attest(BATCH, newcomers[1], ANCHOR), 21)
    assert quorum is not None and set(quorum.signers) <= set(new_set) and quorum.height == 21
    assert not rebased.reopened(BATCH) and rebased.on_committed(attest(BATCH, newcomers[0], ANCHOR), 22) is None
    # A re-opened subject nobody re-signs (it had landed) goes back to completed when its wait ends.
    rebased.expire(20 + RECOLLECT_WINDOW_BLOCKS - 1)
    assert rebased.reopened(SETTLEMENT)
    rebased.expire(20 + RECOLLECT_WINDOW_BLOCKS)
    assert not rebased.reopened(SETTLEMENT) and SETTLEMENT not in rebased.open_subjects()
    assert rebased.on_committed(attest(SETTLEMENT, newcomers[0], ESCROW), 1100) is None  # quietly ignored
    assert {q.subject for q in rebased.completed_quorums()} == {BATCH, SETTLEMENT}


def test_an_epoch_change_keeps_quorums_still_valid_and_reopens_too_small_ones() -> None:
    # remove a validator outside the quorum: the quorum (3 of the 3 left) still lands
    book = _completed_book({BATCH: KEYS[:3]})
    kept, quorums = book.rebased(VALIDATORS[:3], 30)
    assert quorums == [] and not kept.reopened(BATCH) and kept.open_subjects() == []
    # add a fifth validator: 3 signatures are short of the new quorum of 4
    fifth = SigningKey(keccak256(b"fifth"))
    grown, quorums = book.rebased([*VALIDATORS, fifth.address], 30)
    assert quorums == [] and grown.reopened(BATCH) and grown.quorum == 4
    quorum = grown.on_committed(attest(BATCH, fifth, ANCHOR), 31)
    assert quorum is not None and len(quorum.signers) == 4
    # shrink to the two signers of an open batch: their carried signatures complete it at once
    book = _completed_book({BATCH: KEYS[:2]})
    shrunk, quorums = book.rebased(VALIDATORS[:2], 30)
    assert [(q.subject, set(q.signers), q.height) for q in quorums] == [(BATCH, set(VALIDATORS[:2]), 30)]
    assert shrunk.open_subjects() == []


def test_reopened_subjects_survive_export_and_import_and_do_not_take_open_slots() -> None:
    from anchoring import batches
    book = _completed_book({BATCH: KEYS[:3]})
    rebased, _ = book.rebased(VALIDATORS[:2] + [SigningKey(keccak256(b"n")).address], 40)
    copy = AttestationBook(VALIDATORS[:2] + [SigningKey(keccak256(b"n")).address], ANCHOR, ESCROW)
    copy.import_state(*rebased.export_state())
    assert copy.export_state() == rebased.export_state() and copy.reopened(BATCH)
    copy.expire(40 + batches.RECOLLECT_WINDOW_BLOCKS)
    assert not copy.reopened(BATCH) and [q.subject for q in copy.completed_quorums()] == [BATCH]
    original = batches.MAX_OPEN_SUBJECTS
    try:
        batches.MAX_OPEN_SUBJECTS = 1
        rebased.expect(AnchorBatch(9, keccak256(b"r9"), 171, 180, 1))  # the re-opened batch 7 is not counted
        with pytest.raises(OverflowError):
            rebased.expect(AnchorBatch(10, keccak256(b"r10"), 181, 190, 1))
    finally:
        batches.MAX_OPEN_SUBJECTS = original


def test_settlement_batch_identity_is_its_terms_and_entries_stay_local() -> None:
    wire = decode_attestation(attest(SETTLEMENT, KEYS[0], ESCROW).encode())
    assert isinstance(wire.subject, SettlementBatch) and wire.subject.entries == ()  # not on the wire
    assert wire.subject == SETTLEMENT  # (batch id, count, settlements hash)
    with pytest.raises(AttestationError, match="do not match"):
        SettlementBatch(SETTLEMENT.batch_id, 2, SETTLEMENT.settlements_hash, (ENTRIES[1], ENTRIES[0]))
    with pytest.raises(AttestationError, match="1..256"):
        SettlementBatch.of(0, [])
    with pytest.raises(AttestationError, match="1..256"):
        SettlementBatch.of(0, [ENTRIES[1]] * 257)


def test_byzantine_validators_signing_another_settlement_batch_get_no_quorum() -> None:
    book = AttestationBook(VALIDATORS, ANCHOR, ESCROW)
    book.expect(SETTLEMENT)
    # two Byzantine validators sign the same batch id with the second entry paying more
    inflated = SettlementBatch.of(SETTLEMENT.batch_id, [ENTRIES[0], Settlement(ENTRIES[1].session_id, 1, 10**18)])
    for key in KEYS[2:]:
        with pytest.raises(AttestationError, match="different terms"):
            book.on_committed(decode_attestation(attest(inflated, key, ESCROW).encode()), 5)
    assert book.on_committed(decode_attestation(attest(SETTLEMENT, KEYS[0], ESCROW).encode()), 6) is None
    assert book.on_committed(decode_attestation(attest(SETTLEMENT, KEYS[1], ESCROW).encode()), 6) is None
    assert book.signers_of(SETTLEMENT) == {VALIDATORS[0], VALIDATORS[1]}  # 2 of 4: no quorum of 3
    # the third honest signature completes it; the quorum carries this node's own entries
    quorum = book.on_committed(decode_attestation(attest(SETTLEMENT, KEYS[3], ESCROW).encode()), 7)
    assert quorum is not None and isinstance(quorum.subject, SettlementBatch)
    assert quorum.subject.entries == ENTRIES and VALIDATORS[2] not in quorum.signers


def test_settlement_windows_cut_the_same_batches_from_the_same_orders() -> None:
    orders = [Settlement(keccak256(i.to_bytes(4, "big")), i, i * 7) for i in range(600)]
    assert [settlement_window_closes(h, 4) for h in range(0, 9)] == [False, False, False, False, True,
                                                                      False, False, False, True]
    batches = settlement_batches(40, orders)
    assert [b.count for b in batches] == [256, 256, 88]
    assert [b.batch_id for b in batches] == [40 * 64, 40 * 64 + 1, 40 * 64 + 2]
    assert [e for b in batches for e in b.entries] == orders
    assert settlement_batches(40, list(orders)) == batches and settlement_batches(41, orders) != batches
    assert settlement_batches(8, []) == []
    with pytest.raises(ValueError, match="at most"):
        settlement_batches(8, orders[:1] * (64 * 256 + 1))
