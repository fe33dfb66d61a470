"""EIP-712 digests and signatures agree with eth_account, the reference implementation."""

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from consensus.signing import VOTE_TYPE, quorum_size
from primitives.eip712 import (
    Domain,
    SignatureError,
    SigningKey,
    recover_address,
    sort_signatures_by_signer,
    to_checksum_hex,
    typed_digest,
)

DOMAIN_FIELDS = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
VOTE_FIELDS = [
    {"name": "voteType", "type": "uint8"},
    {"name": "height", "type": "uint64"},
    {"name": "round", "type": "uint32"},
    {"name": "blockHash", "type": "bytes32"},
]


def test_vote_digest_and_signature_match_eth_account() -> None:
    key = SigningKey(bytes.fromhex("11" * 32))
    contract = bytes.fromhex("ab" * 20)
    digest = typed_digest(Domain(31337, contract), VOTE_TYPE, [2, 5, 1, b"\x22" * 32])
    message = {
        "types": {"EIP712Domain": DOMAIN_FIELDS, "Vote": VOTE_FIELDS},
        "primaryType": "Vote",
        "domain": {"name": "DEVSEN", "version": "1", "chainId": 31337,
                   "verifyingContract": to_checksum_hex(contract)},
        "message": {"voteType": 2, "height": 5, "round": 1, "blockHash": b"\x22" * 32},
    }
    signed = Account.sign_message(encode_typed_data(full_message=message), key.secret)
    assert signed.message_hash == digest
    assert signed.signature == key.sign(digest)
    assert recover_address(digest, key.sign(digest)) == key.address
    assert Account.from_key(key.secret).address == to_checksum_hex(key.address)


def test_domain_separates_chains_and_contracts() -> None:
    values = [2, 5, 1, b"\x22" * 32]
    a = typed_digest(Domain(1, b"\x01" * 20), VOTE_TYPE, values)
    assert a != typed_digest(Domain(2, b"\x01" * 20), VOTE_TYPE, values)
    assert a != typed_digest(Domain(1, b"\x02" * 20), VOTE_TYPE, values)


@pytest.mark.parametrize("bad", [b"", b"\x00" * 64, b"\x00" * 66])
def test_malformed_signatures_are_rejected(bad: bytes) -> None:
    with pytest.raises(SignatureError):
        recover_address(b"\x01" * 32, bad)


def test_high_s_and_bad_v_are_rejected() -> None:
    key = SigningKey(bytes.fromhex("22" * 32))
    digest = b"\x05" * 32
    sig = key.sign(digest)
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    high_s = sig[:32] + (n - int.from_bytes(sig[32:64], "big")).to_bytes(32, "big") + bytes([55 - sig[64]])
    with pytest.raises(SignatureError):
        recover_address(digest, high_s)
    with pytest.raises(SignatureError):
        recover_address(digest, sig[:64] + b"\x01")


def test_out_of_range_values_and_keys_are_rejected() -> None:
    with pytest.raises(ValueError):
        typed_digest(Domain(1, b"\x01" * 20), VOTE_TYPE, [256, 1, 1, b"\x00" * 32])
    with pytest.raises(SignatureError):
        SigningKey(b"\x00" * 32)


def test_quorum_and_signer_ordering() -> None:
    assert [quorum_size(n) for n in (1, 3, 4, 6, 7, 10)] == [1, 3, 3, 5, 5, 7]
    keys = [SigningKey(bytes([i]) * 32) for i in range(1, 6)]
    digest = b"\x07" * 32
    sigs = [k.sign(digest) for k in keys] + [keys[0].sign(digest)]
    ordered = sort_signatures_by_signer(digest, sigs)
    signers = [recover_address(digest, s) for s in ordered]
    assert signers == sorted({k.address for k in keys})
