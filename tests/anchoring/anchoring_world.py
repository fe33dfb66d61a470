"""Test fixtures of the anchoring tests: a deployed network and a node's committed chain.

`Net` (anchoring/testkit.py, shared with bench/anchor_figures.py) deploys the contracts with
4 validators (funded, so they can send). `LocalChain` commits real blocks (ChargerEvent payloads, precommit certificates signed by 3 of the 4
validators) into a consensus BlockStore, closes batches with `BatchBuilder` and indexes
them in an `AnchorIndex`, exactly as a node does, then serves proofs with `ProofService`.
"""

from __future__ import annotations

from pathlib import Path

import msgpack

from anchoring.attestations import AnchorBatch
from anchoring.batches import BatchBuilder, BatchPolicy, BuilderState
from anchoring.proofs import AnchorIndex, ProofService, batch_block, block_event_ids
from anchoring.testkit import KEYS, Net, charger_event
from consensus.signing import VALIDATOR_SET_UPDATE_TYPE
from consensus.store import BlockStore
from consensus.types import Block, CommitCertificate, CommittedBlock, Vote, VoteType
from ocpp_adapter.events import ChargerEvent
from primitives.eip712 import (
    ZERO_HASH,
    Domain,
    SigningKey,
    sort_signatures_by_signer,
    to_checksum_hex,
    typed_digest,
)
from primitives.hashing import keccak256, validators_hash

__all__ = ["KEYS", "NEWCOMERS", "LocalChain", "Net", "charger_event", "replace_two_validators", "vouched_event"]

NEWCOMERS = [SigningKey(keccak256(b"epoch-1-newcomer-%d" % i)) for i in range(2)]


def replace_two_validators(net: Net) -> list[SigningKey]:
    """Epoch 1 on chain: KEYS[2] and KEYS[3] replaced by the two NEWCOMERS (2 of 4), signed by
    3 of the epoch-0 set. Returns the new set's keys, ascending."""
    new_keys = sorted([*KEYS[:2], *NEWCOMERS], key=lambda k: k.address)
    new_set = [to_checksum_hex(k.address) for k in new_keys]
    digest = typed_digest(net.deployment.domain("ValidatorSet"), VALIDATOR_SET_UPDATE_TYPE,
                          [1, validators_hash(new_set)])
    net.client(KEYS[0]).update_validators(1, new_set, sort_signatures_by_signer(digest, [k.sign(digest)
                                                                                        for k in KEYS[:3]]))
    return new_keys


def vouched_event(event: ChargerEvent, anchor_domain: Domain, key: SigningKey = KEYS[0]) -> ChargerEvent:
    """`event` vouched for by validator `key` of the network with this Anchor domain."""
    from ocpp_adapter.vouching import ingress_domain, vouch
    return vouch(event, key, ingress_domain(anchor_domain))


class LocalChain:
    """A node's committed chain, batches and proof service, built without the network."""

    def __init__(self, directory: Path, net: Net, policy: BatchPolicy) -> None:
        self.net = net
        self.store = BlockStore(directory / "blocks.sqlite", durable=False)
        self.index = AnchorIndex(directory / "anchor-index.sqlite")
        self.builder = BatchBuilder(policy, BuilderState(0, 1))
        self.service = ProofService(self.store, self.index, chain_id=net.deployment.chain_id,
                                    anchor_address=net.anchor_address)
        self.consensus_domain = net.deployment.domain("ValidatorSet")
        self.batches: list[AnchorBatch] = []
        self.events: list[ChargerEvent] = []

    def commit(self, events: list[ChargerEvent], extra_payloads: tuple[bytes, ...] = (),
               signers: list[SigningKey] | None = None) -> Block:
        """Commit a block naming the chain's latest Ethereum block, certified by `signers`
        (default: 3 of the 4 deployed validators)."""
        last = self.store.last()
        height = last.height + 1 if last else 1
        head = self.net.w3.eth.get_block("latest")
        app_header = msgpack.packb([1, int(head["number"]), bytes(head["hash"])], use_bin_type=True)
        block = Block(height, 1_795_000_000_000 + 1000 * height, KEYS[height % 4].address,
                      last.block.hash if last else ZERO_HASH, ZERO_HASH,
                      tuple(e.to_bytes() for e in events) + extra_payloads, app_header)
        votes = [Vote.sign(k, self.consensus_domain, VoteType.PRECOMMIT, height, 0, block.hash)
                 for k in (signers if signers is not None else KEYS[:3])]
        self.store.save(CommittedBlock(block, CommitCertificate.from_votes(votes)))
        self.index.record_block(height, block_event_ids(block))
        self.events += events
        closed = self.builder.on_block(batch_block(block))
        if closed:
            self.index.record_batch(closed[0])
            self.batches.append(closed[0])
        return block
