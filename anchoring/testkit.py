"""A throw-away DEVSEN deployment for anchoring tests and benchmarks (not used by a node).

`Net` deploys the contracts on a development chain (one whose first account is funded, as
anvil's and eth-tester's are) with the 4 validators `KEYS`, funded so they can send;
`charger_event(i)` is a distinct, unsigned MeterValues event per `i`.
"""

from __future__ import annotations

import hashlib

from eth_account import Account
from web3 import Web3
from web3.types import Wei

from anchoring.attestations import AnchorBatch, attest
from anchoring.batches import AttestationBook, Quorum
from anchoring.chain import ChainClient, Deployment, TransactionSender, ValidatorSpec, deploy_all
from ocpp_adapter.events import ChargerEvent
from primitives.eip712 import SigningKey, to_checksum_hex

KEYS = sorted((SigningKey(hashlib.sha256(b"anchoring-validator-%d" % i).digest()) for i in range(4)),
              key=lambda k: k.address)


class Net:
    """A deployment with 4 validators that can also pay for their own transactions."""

    def __init__(self, w3: Web3) -> None:
        self.w3 = w3
        deployer = Account.create()
        for address in [deployer.address] + [to_checksum_hex(k.address) for k in KEYS]:
            tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": address, "value": Wei(10**19),
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

    def open_escrow_session(self, deposit: int, name: str = "ESCROW") -> bytes:
        """A device CP-`name`, a driver with idTag TAG-`name` and tokens, and an open escrow
        session: its id (one session per `name`)."""
        manager, driver = Account.create(), Account.create()
        for account in (manager, driver):
            tx = self.w3.eth.send_transaction({"from": self.w3.eth.accounts[0], "to": account.address,
                                               "value": Wei(10**19), "gas": 21_000})
            self.w3.eth.wait_for_transaction_receipt(tx)
        owner = ChainClient(self.w3, self.deployment, TransactionSender(self.w3, manager.key))
        owner.register_roles(2)
        owner.create_device(f"CP-{name}", location="test bay", connector_count=1, price_per_kwh=1000,
                            per_minute_fee=0, auth_salt=b"\x01" * 16, auth_hash=b"\x02" * 32)
        user = ChainClient(self.w3, self.deployment, TransactionSender(self.w3, driver.key))
        user.register_roles(1)
        user.register_id_tag(f"TAG-{name}")
        user.faucet_mint(driver.address, deposit)
        user.approve(self.deployment.escrow, deposit)
        session_id, _ = user.open_session(f"CP-{name}", 1, f"TAG-{name}", deposit)
        return session_id

    def mine(self, count: int) -> None:
        provider = self.w3.provider
        if hasattr(provider, "ethereum_tester"):
            provider.ethereum_tester.mine_blocks(count)
        else:
            for _ in range(count):
                provider.make_request("evm_mine", [])  # type: ignore[arg-type]


def charger_event(i: int, action: str = "MeterValues") -> ChargerEvent:
    """A distinct unsigned 1.6 MeterValues event for each `i` (7 chargers in turn)."""
    return ChargerEvent(f"CP-{i % 7:03d}", "1.6", action, f"msg-{i}",
                        {"connectorId": 1, "meterValue": [{"timestamp": "2026-11-22T02:00:00Z",
                                                           "sampledValue": [{"value": str(i)}]}]},
                        "", 1_795_000_000_000 + i, bytes([i % 256]) * 16)
