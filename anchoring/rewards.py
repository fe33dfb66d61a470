"""The reward distribution as validators sign it and the Rewards contract pays it.

A ledger `RewardDistribution` (devsen/ledger/uptime.py) becomes one or more `RewardSubject`s
(`reward_parts`): its payouts (owner, amount > 0) sorted by owner and cut into consecutive parts
of at most MAX_PAYOUTS, part i of n carrying (epoch, i, n, its payouts). Each part is signed as the
EIP-712 `RewardDistribution(uint64 epoch,uint32 part,uint32 parts,address[] owners,uint256[] amounts)`
under the Rewards contract's domain and paid by its own `distribute` transaction; the contract
pays each part once and all parts together at most the epoch budget. EIP-712 hashes an array as keccak-256 of its elements' 32-byte words, which
is what Rewards.sol computes with `abi.encodePacked` over the calldata arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from anchoring.chain.client import BlockId, ChainClient
from anchoring.chain.transact import Receipt
from primitives.eip712 import Domain, SigningKey
from primitives.hashing import keccak256

REWARD_TYPE = "RewardDistribution(uint64 epoch,uint32 part,uint32 parts,address[] owners,uint256[] amounts)"
REWARD_TYPEHASH = keccak256(REWARD_TYPE.encode())
MAX_PAYOUTS = 200  # Rewards.MAX_PAYOUTS: one transaction pays at most this many owners
MAX_PARTS = 64  # Rewards.MAX_PARTS: one epoch pays at most MAX_PARTS * MAX_PAYOUTS owners
GAS_BASE = 250_000  # measured 206k: a fresh contract's first part writes ~6 zero-to-nonzero slots
GAS_PER_PAYOUT = 60_000  # measured ~53k per payout to a fresh account
GAS_PER_SIGNATURE = 12_000
GAS_FUND = 90_000


class RewardError(ValueError):
    """A distribution the Rewards contract would refuse."""


@dataclass(frozen=True, slots=True)
class RewardSubject:
    """What a quorum signs for part `part` of `parts` of one reward epoch:
    `payouts` = ((owner 20 bytes, amount), ...)."""

    epoch: int
    payouts: tuple[tuple[bytes, int], ...]
    part: int = 0
    parts: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.epoch < 1 << 64:
            raise RewardError("epoch must be a uint64")
        if not (isinstance(self.parts, int) and isinstance(self.part, int) and 1 <= self.parts <= MAX_PARTS
                and 0 <= self.part < self.parts):
            raise RewardError(f"part must be 0..parts-1 and parts 1..{MAX_PARTS}, got part {self.part!r} "
                              f"of {self.parts!r}")
        if len(self.payouts) > MAX_PAYOUTS:
            raise RewardError(f"{len(self.payouts)} payouts, the contract pays at most {MAX_PAYOUTS}")
        previous = b""
        for owner, amount in self.payouts:
            if len(owner) != 20 or owner <= previous:
                raise RewardError("owners must be 20-byte addresses, strictly ascending")
            if not 0 < amount < 1 << 256:
                raise RewardError("amounts must be uint256 > 0")
            previous = owner

    @classmethod
    def from_payouts(cls, epoch: int, payouts: Sequence[tuple[str, int]]) -> RewardSubject:
        """The single part of an epoch with at most MAX_PAYOUTS `payouts` (hex owners)."""
        return cls(epoch, tuple(_sorted_payouts(payouts)))

    @property
    def total(self) -> int:
        return sum(amount for _, amount in self.payouts)

    def struct_hash(self) -> bytes:
        owners = b"".join(b"\x00" * 12 + owner for owner, _ in self.payouts)
        amounts = b"".join(amount.to_bytes(32, "big") for _, amount in self.payouts)
        return keccak256(REWARD_TYPEHASH + self.epoch.to_bytes(32, "big") + self.part.to_bytes(32, "big")
                         + self.parts.to_bytes(32, "big") + keccak256(owners) + keccak256(amounts))

    def digest(self, domain: Domain) -> bytes:
        """The EIP-712 digest validators sign, under the Rewards contract's domain."""
        return keccak256(b"\x19\x01" + domain.separator + self.struct_hash())

    def sign(self, key: SigningKey, domain: Domain) -> bytes:
        return key.sign(self.digest(domain))


def _sorted_payouts(payouts: Sequence[tuple[str, int]]) -> list[tuple[bytes, int]]:
    return sorted((bytes.fromhex(owner.removeprefix("0x")), amount) for owner, amount in payouts)


def reward_parts(epoch: int, payouts: Sequence[tuple[str, int]]) -> tuple[RewardSubject, ...]:
    """The parts of epoch `epoch`'s distribution: `payouts` (hex owners, amount > 0) sorted by owner,
    cut into consecutive parts of MAX_PAYOUTS (the last one shorter). Deterministic: every node with
    the same payouts derives the same parts. None for no payouts; RewardError above MAX_PARTS parts."""
    items = _sorted_payouts(payouts)
    count = -(-len(items) // MAX_PAYOUTS)
    if count > MAX_PARTS:
        raise RewardError(f"{len(items)} payouts need {count} parts, the contract pays at most {MAX_PARTS}")
    return tuple(RewardSubject(epoch, tuple(items[i * MAX_PAYOUTS:(i + 1) * MAX_PAYOUTS]), i, count)
                 for i in range(count))


def owners_and_amounts(subject: RewardSubject) -> tuple[list[str], list[int]]:
    """The calldata arrays (checksum owners, amounts)."""
    from web3 import Web3

    return [Web3.to_checksum_address(o) for o, _ in subject.payouts], [a for _, a in subject.payouts]


def distribute(client: ChainClient, subject: RewardSubject, signatures: Sequence[bytes]) -> Receipt:
    """Send `Rewards.distribute` with signatures ordered by signer (sort_signatures_by_signer)."""
    owners, amounts = owners_and_amounts(subject)
    gas = GAS_BASE + GAS_PER_PAYOUT * len(owners) + GAS_PER_SIGNATURE * len(signatures)
    return client.send("Rewards", "distribute", subject.epoch, subject.part, subject.parts, owners, amounts,
                       list(signatures), gas=gas)


def fund(client: ChainClient, amount: int) -> Receipt:
    """Approve the Rewards contract and add `amount` to its pool."""
    client.approve(client.deployment.rewards, amount)
    return client.send("Rewards", "fund", amount, gas=GAS_FUND)


def paid_to(client: ChainClient, epoch: int, owner: str, block: BlockId = "latest") -> int:
    """What the Rewards contract paid `owner` for `epoch` (0 if nothing)."""
    from web3 import Web3

    return int(client.read("Rewards", "paidTo", epoch, Web3.to_checksum_address(owner), block=block))
