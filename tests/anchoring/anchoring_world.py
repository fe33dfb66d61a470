"""Test fixtures of the anchoring tests: a deployed network and a node's committed chain.

`Net` deploys the contracts with 4 validators (funded, so they can send). `LocalChain`
commits real blocks (ChargerEvent payloads, precommit certificates signed by 3 of the 4
validators) into a consensus BlockStore, closes batches with `BatchBuilder` and indexes
them in an `AnchorIndex`, exactly as a node does, then serves proofs with `ProofService`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgpack
from eth_account import Account
from web3 import Web3

from anchoring.attestations import AnchorBatch, attest
from anchoring.batches import AttestationBook, BatchBuilder, BatchPolicy, BuilderState, Quorum
from anchoring.chain import ChainClient, Deployment, TransactionSender, ValidatorSpec, deploy_all
from anchoring.proofs import AnchorIndex, ProofService, batch_block, block_event_ids
from consensus.store import BlockStore
from consensus.types import Block, CommitCertificate, CommittedBlock, Vote, VoteType
from ocpp_adapter.events import ChargerEvent
from primitives.eip712 import ZERO_HASH, Domain, SigningKey, to_checksum_hex

KEYS = sorted((SigningKey(hashlib.sha256(b"anchoring-validator-%d" % i).digest()) for i in range(4)),
              key=lambda k: k.address)


class Net:
    """A deployment with 4 validators that can also pay for their own transactions."""

    def __init__(self, w3: Web3) -> None:
        self.w3 = w3
        deployer = Account.create()
        for address in [deployer.address] + [to_checksum_hex(k.address) for k in KEYS]:
            tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": address, "value": 10**19,
                                          "gas": 21_000})
            w3.eth.wait_for_transaction_receipt(tx)
        self.deployment: Deployment = deploy_all(
            TransactionSender(w3, deployer.key),
            [ValidatorSpec(to_checksum_hex(k.address)) for k in KEYS], faucet=True)
        self.anchor_domain = self.deployment.domain("Anchor")
        self.anchor_address = self.anchor_domain.verifying_contract

    def client(self, key: SigningKey) -> ChainClient:
        sender = TransactionSender(self.w3, key.secret, receipt_timeout_s=2.0)
        return ChainClient(self.w3, self.deployment, sender)

    def quorum(self, batch: AnchorBatch, height: int = 0) -> Quorum:
        book = AttestationBook([k.address for k in KEYS], self.anchor_domain, self.deployment.domain("Escrow"))
        book.expect(batch)
        for key in KEYS:
            done = book.on_committed(attest(batch, key, self.anchor_domain), height)
            if done:
                return done
        raise AssertionError("no quorum")

    def anchor(self, batch: AnchorBatch) -> None:
        """Store `batch` on chain directly (the submitter's job, tested elsewhere)."""
        self.client(KEYS[0]).submit_anchor_batch(batch.batch_id, batch.root, batch.first_height,
                                                 batch.last_height, batch.event_count,
                                                 list(self.quorum(batch).signatures))

    def open_escrow_session(self, deposit: int) -> bytes:
        """A device, a driver with an idTag and tokens, and an open escrow session: its id."""
        manager, driver = Account.create(), Account.create()
        for account in (manager, driver):
            tx = self.w3.eth.send_transaction({"from": self.w3.eth.accounts[0], "to": account.address,
                                               "value": 10**19, "gas": 21_000})
            self.w3.eth.wait_for_transaction_receipt(tx)
        owner = ChainClient(self.w3, self.deployment, TransactionSender(self.w3, manager.key))
        owner.register_roles(2)
        owner.create_device("CP-ESCROW", location="test bay", connector_count=1, price_per_kwh=1000,
                            per_minute_fee=0, auth_salt=b"\x01" * 16, auth_hash=b"\x02" * 32)
        user = ChainClient(self.w3, self.deployment, TransactionSender(self.w3, driver.key))
        user.register_roles(1)
        user.register_id_tag("TAG-ESCROW")
        user.faucet_mint(driver.address, deposit)
        user.approve(self.deployment.escrow, deposit)
        session_id, _ = user.open_session("CP-ESCROW", 1, "TAG-ESCROW", deposit)
        return session_id

    def mine(self, count: int) -> None:
        provider = self.w3.provider
        if hasattr(provider, "ethereum_tester"):
            provider.ethereum_tester.mine_blocks(count)
        else:
            for _ in range(count):
                provider.make_request("evm_mine", [])  # type: ignore[arg-type]


def charger_event(i: int, action: str = "MeterValues") -> ChargerEvent:
    return ChargerEvent(f"CP-{i % 7:03d}", "1.6", action, f"msg-{i}",
                        {"connectorId": 1, "meterValue": [{"timestamp": "2026-11-22T02:00:00Z",
                                                           "sampledValue": [{"value": str(i)}]}]},
                        "", 1_795_000_000_000 + i, bytes([i % 256]) * 16)


def vouched_event(event: ChargerEvent, anchor_domain: Domain, key: SigningKey = KEYS[0]) -> ChargerEvent:
    """`event` vouched for by validator `key` of the network with this Anchor domain."""
    from devsen.vouching import ingress_domain, vouch
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
