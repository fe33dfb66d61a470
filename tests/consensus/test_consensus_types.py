"""Wire codec, block hash (checked against eth_abi), validator sets, certificates."""

from typing import Any

import msgpack
import pytest
from consensus_testkit import DOMAIN, KEYS, OUTSIDER, VALIDATORS, block, proposal, vote
from eth_abi.abi import encode as abi_encode_reference
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.signing import quorum_size
from consensus.types import (
    MAX_APP_HEADER_BYTES,
    MAX_BLOCK_PAYLOAD_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_PAYLOADS_PER_BLOCK,
    Block,
    BlockRequest,
    CertificateError,
    CommitCertificate,
    CommittedBlock,
    Evidence,
    EvidenceKind,
    ValidatorSet,
    VoteType,
    WireError,
    decode_message,
    verify_certificate,
)
from primitives.eip712 import ZERO_HASH
from primitives.hashing import keccak256


def test_block_hash_matches_the_signing_spec() -> None:
    b = Block(7, 1_700_000_000_000, KEYS[1].address, b"\x11" * 32, b"\x22" * 32,
              (b"event-a", b"event-bb"), b"app header")
    payloads_hash = keccak256(keccak256(b"event-a") + keccak256(b"event-bb"))
    expected = keccak256(abi_encode_reference(
        ["uint64", "uint64", "address", "bytes32", "bytes32", "bytes32", "bytes32"],
        [7, 1_700_000_000_000, KEYS[1].address, b"\x11" * 32, b"\x22" * 32, payloads_hash,
         keccak256(b"app header")]))
    assert b.hash == expected
    empty = Block(1, 1, KEYS[0].address, ZERO_HASH, ZERO_HASH, (), b"")
    assert empty.payloads_hash == keccak256(b"")


def test_validators_hash_matches_abi_encoded_address_array() -> None:
    expected = keccak256(abi_encode_reference(["address[]"], [list(VALIDATORS.addresses)]))
    assert VALIDATORS.validators_hash == expected


@pytest.mark.parametrize("message", [
    vote(KEYS[0], VoteType.PREVOTE, 3, 2, b"\x01" * 32),
    vote(KEYS[1], VoteType.PRECOMMIT, 1, 0, ZERO_HASH),
    proposal(block(), 0),
    proposal(block(2, payloads=(), timestamp=5), 3, pol_round=1, key=KEYS[2]),
    BlockRequest(10, 64),
])
def test_wire_round_trip(message: Any) -> None:
    data = message.to_bytes()
    assert decode_message(data) == message
    assert decode_message(data).to_bytes() == data


def test_committed_block_and_evidence_round_trip() -> None:
    b = block()
    votes = [vote(k, VoteType.PRECOMMIT, 1, 0, b.hash) for k in KEYS[:3]]
    committed = CommittedBlock(b, CommitCertificate.from_votes(votes))
    assert decode_message(committed.to_bytes()) == committed
    a, c = vote(KEYS[0], VoteType.PREVOTE, 1, 0, ZERO_HASH), vote(KEYS[0], VoteType.PREVOTE, 1, 0, b.hash)
    evidence = Evidence(EvidenceKind.DUPLICATE_VOTE, KEYS[0].address, 1, 0, a.to_bytes(), c.to_bytes())
    assert decode_message(evidence.to_bytes()) == evidence and evidence.verify(DOMAIN)
    same_hash = Evidence(EvidenceKind.DUPLICATE_VOTE, KEYS[0].address, 1, 0, a.to_bytes(),
                         vote(KEYS[0], VoteType.PRECOMMIT, 1, 0, b.hash).to_bytes())
    assert not same_hash.verify(DOMAIN)  # different vote types do not conflict


def valid_vote_fields() -> list[Any]:
    v = vote(KEYS[0], VoteType.PREVOTE, 1, 0, ZERO_HASH)
    return [1, 2, 1, 1, 0, ZERO_HASH, v.validator, v.signature]


@pytest.mark.parametrize("mutate", [
    lambda f: f[:-1],  # missing field
    lambda f: f + [1],  # extra field
    lambda f: [2] + f[1:],  # wrong version
    lambda f: f[:1] + [77] + f[2:],  # unknown tag
    lambda f: f[:2] + [3] + f[3:],  # vote type 3
    lambda f: f[:3] + [0] + f[4:],  # height 0
    lambda f: f[:3] + [True] + f[4:],  # bool is not an int
    lambda f: f[:4] + [-1] + f[5:],  # negative round
    lambda f: f[:5] + [b"\x00" * 31] + f[6:],  # short hash
    lambda f: f[:6] + ["0x" + "00" * 20] + f[7:],  # address as text
    lambda f: f[:7] + [b"\x00" * 64],  # short signature
])
def test_strict_decoding_rejects_malformed_votes(mutate: Any) -> None:
    data = msgpack.packb(mutate(valid_vote_fields()), use_bin_type=True)
    with pytest.raises(WireError):
        decode_message(data)


def test_non_canonical_encoding_is_rejected() -> None:
    fields = valid_vote_fields()
    canonical = msgpack.packb(fields, use_bin_type=True)
    assert decode_message(canonical)
    # the same values with a wider integer encoding for the height
    wide = canonical.replace(b"\x01\x01\x00", b"\x01\xcd\x00\x01\x00", 1)
    assert wide != canonical
    with pytest.raises(WireError):
        decode_message(wide)


def test_size_bounds() -> None:
    with pytest.raises(WireError):
        block(payloads=(b"x",) * (MAX_PAYLOADS_PER_BLOCK + 1))
    with pytest.raises(WireError):
        block(payloads=(b"x" * (1 << 20),) * 5)  # over MAX_BLOCK_PAYLOAD_BYTES
    assert 4 * (1 << 20) + 1 > MAX_BLOCK_PAYLOAD_BYTES
    with pytest.raises(WireError):
        block(payloads=(b"",))
    with pytest.raises(WireError):
        Block(1, 1, KEYS[0].address, ZERO_HASH, ZERO_HASH, (), b"h" * (MAX_APP_HEADER_BYTES + 1))
    with pytest.raises(WireError):
        decode_message(b"\x00" * (MAX_MESSAGE_BYTES + 1))
    with pytest.raises(WireError):
        BlockRequest(1, 65)


def test_quorum_and_skip_thresholds() -> None:
    for n in range(1, 20):
        vs = ValidatorSet.equal([keccak256(b"%d" % i)[:20] for i in range(n)])
        assert vs.quorum_power == quorum_size(n)
        assert vs.skip_power == n // 3 + 1
    weighted = ValidatorSet(VALIDATORS.addresses, (2, 1, 1, 1), 1)
    assert weighted.quorum_power == 4  # more than 2/3 of 5


def test_weighted_round_robin_proposer() -> None:
    weighted = ValidatorSet(VALIDATORS.addresses, (3, 1, 1, 1), 0)
    picks = [weighted.proposer(h, 0) for h in range(60)]
    assert picks.count(VALIDATORS.addresses[0]) == 30
    assert all(picks.count(a) == 10 for a in VALIDATORS.addresses[1:])
    assert picks[:6].count(VALIDATORS.addresses[0]) == 3  # spread, not in a run
    equal = [VALIDATORS.proposer(h, 0) for h in range(8)]
    assert equal[:4] == equal[4:] and set(equal) == set(VALIDATORS.addresses)
    assert VALIDATORS.proposer(5, 1) == VALIDATORS.proposer(6, 0)


def test_validator_set_rejects_bad_shapes() -> None:
    a, b = VALIDATORS.addresses[:2]
    for bad in [((b, a), (1, 1)), ((a, a), (1, 1)), ((a,), (0,)), ((a, b), (1,)), ((), ())]:
        with pytest.raises(ValueError):
            ValidatorSet(bad[0], bad[1], 0)


def certificate_for(b: Any, keys: Any, round: Any=0) -> CommitCertificate:
    return CommitCertificate.from_votes([vote(k, VoteType.PRECOMMIT, b.height, round, b.hash) for k in keys])


def test_certificate_verification() -> None:
    b = block()
    good = certificate_for(b, KEYS[:3])
    assert len(verify_certificate(good, VALIDATORS, DOMAIN, b.hash)) == 3
    with pytest.raises(CertificateError, match="below quorum"):
        verify_certificate(certificate_for(b, KEYS[:2]), VALIDATORS, DOMAIN)
    with pytest.raises(CertificateError, match="another block"):
        verify_certificate(good, VALIDATORS, DOMAIN, b"\x01" * 32)
    with pytest.raises(CertificateError, match="not a validator"):
        verify_certificate(certificate_for(b, [*KEYS[:2], OUTSIDER]), VALIDATORS, DOMAIN)
    reversed_order = CommitCertificate(1, 0, b.hash, tuple(reversed(good.signatures)))
    with pytest.raises(CertificateError, match="ascending"):
        verify_certificate(reversed_order, VALIDATORS, DOMAIN)
    duplicated = CommitCertificate(1, 0, b.hash, good.signatures[:2] + good.signatures[1:2])
    with pytest.raises(CertificateError):
        verify_certificate(duplicated, VALIDATORS, DOMAIN)
    other_domain = type(DOMAIN)(1, DOMAIN.verifying_contract)
    with pytest.raises(CertificateError):
        verify_certificate(good, VALIDATORS, other_domain)
    with pytest.raises(WireError):
        CommittedBlock(block(payloads=(b"other",)), good)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_wire_error(data: Any) -> None:
    try:
        decode_message(data)
    except WireError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_valid_messages_decode_to_themselves_or_fail_cleanly(data: Any) -> None:
    original = proposal(block(), 0).to_bytes()
    index = data.draw(st.integers(0, len(original) - 1))
    value = data.draw(st.integers(0, 255))
    mutated = original[:index] + bytes([value]) + original[index + 1:]
    try:
        message = decode_message(mutated)
    except WireError:
        return
    assert message.to_bytes() == mutated  # whatever decodes is canonical
