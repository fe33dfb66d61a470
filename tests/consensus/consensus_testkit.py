"""Shared fixtures for consensus tests: keys, a validator set, signed message factories."""

from __future__ import annotations

from typing import Any

from consensus.core import ConsensusCore, Output, TimeoutConfig
from consensus.types import Block, Proposal, ValidatorSet, Vote, VoteType
from primitives.eip712 import ZERO_HASH, Domain, SigningKey
from primitives.hashing import keccak256

DOMAIN = Domain(31337, bytes.fromhex("ab" * 20))
KEYS = sorted((SigningKey(keccak256(b"test-validator-%d" % i)) for i in range(4)),
              key=lambda k: k.address)
VALIDATORS = ValidatorSet.equal([k.address for k in KEYS])
OUTSIDER = SigningKey(keccak256(b"not-a-validator"))
TIMEOUTS = TimeoutConfig()


def key_of(address: bytes) -> SigningKey:
    return next(k for k in KEYS if k.address == address)


def proposer_key(height: int, round: int, validators: ValidatorSet = VALIDATORS) -> SigningKey:
    return key_of(validators.proposer(height, round))


def block(height: int = 1, payloads: tuple[bytes, ...] = (b"p1",), proposer: bytes | None = None,
          prev: bytes = ZERO_HASH, timestamp: int = 1000) -> Block:
    return Block(height, timestamp, proposer or KEYS[0].address, prev, ZERO_HASH, payloads, b"hdr")


def proposal(b: Block, round: int = 0, pol_round: int = -1, key: SigningKey | None = None) -> Proposal:
    return Proposal.sign(key or proposer_key(b.height, round), DOMAIN, round, pol_round, b)


def vote(key: SigningKey, vote_type: VoteType, height: int, round: int, block_hash: bytes) -> Vote:
    return Vote.sign(key, DOMAIN, vote_type, height, round, block_hash)


def outputs_of(outputs: list[Output], kind: type) -> list[Any]:
    return [o for o in outputs if isinstance(o, kind)]


def core_for(index: int, validators: ValidatorSet = VALIDATORS, **kwargs: Any) -> ConsensusCore:
    return ConsensusCore(KEYS[index], DOMAIN, validators, timeouts=TIMEOUTS, **kwargs)
