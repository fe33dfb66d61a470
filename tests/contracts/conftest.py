"""Shared fixtures of the contract tests: one chain per module (py-evm in process, or anvil),
a deployment with 4 validators, and funded actor keys."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3
from web3.types import Wei

from anchoring.chain import (
    ChainClient,
    Deployment,
    StakingParams,
    TransactionSender,
    ValidatorSpec,
    connect,
    deploy_all,
)
from anchoring.chain.anvil import running_anvil
from primitives.eip712 import SigningKey, sort_signatures_by_signer

ETH = 10**18
TOKEN = 10**6
REFUND_TIMEOUT_S = 3600


def validator_keys(count: int, seed: str = "validator") -> list[SigningKey]:
    """Deterministic validator keys, sorted by address."""
    keys = [SigningKey(hashlib.sha256(f"{seed}-{i}".encode()).digest()) for i in range(count)]
    return sorted(keys, key=lambda k: k.address)


def quorum_signatures(keys: list[SigningKey], digest: bytes) -> list[bytes]:
    return sort_signatures_by_signer(digest, [k.sign(digest) for k in keys])


def advance_time(w3: Web3, seconds: int) -> None:
    """Move the chain clock forward and mine a block, on either chain."""
    provider = w3.provider
    if hasattr(provider, "ethereum_tester"):
        tester = provider.ethereum_tester
        latest = int(w3.eth.get_block("latest")["timestamp"])
        pending = int(tester.get_block_by_number("pending")["timestamp"])
        tester.time_travel(max(pending, latest + seconds))
        tester.mine_blocks(1)
    else:
        provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
        provider.make_request("evm_mine", [])  # type: ignore[arg-type]


def fund(w3: Web3, address: str, wei: int = 10 * ETH) -> None:
    tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": address, "value": Wei(wei), "gas": 21_000})
    w3.eth.wait_for_transaction_receipt(tx)


@dataclass
class World:
    """A deployed network: validators, and client handles for each actor."""

    w3: Web3
    deployment: Deployment
    validators: list[SigningKey]
    deployer: ChainClient
    manager: ChainClient
    driver: ChainClient
    relayer: ChainClient
    outsider_key: SigningKey

    def client_for(self, key: str) -> ChainClient:
        return ChainClient(self.w3, self.deployment, TransactionSender(self.w3, key))

    def new_actor(self) -> ChainClient:
        account = Account.create()
        fund(self.w3, account.address)
        return self.client_for(account.key.hex())


def build_world(w3: Web3, validator_count: int = 4, staking: StakingParams | None = None) -> World:
    actors = [Account.create() for _ in range(4)]
    for account in actors:
        fund(w3, account.address)
    keys = validator_keys(validator_count)
    deployer_sender = TransactionSender(w3, actors[0].key)
    deployment = deploy_all(
        deployer_sender,
        [ValidatorSpec(Web3.to_checksum_address(k.address), b"peer-%d" % i, "ws://127.0.0.1/ocpp")
         for i, k in enumerate(keys)],
        refund_timeout_s=REFUND_TIMEOUT_S,
        faucet=True,
        staking=staking,
    )
    clients = [ChainClient(w3, deployment, TransactionSender(w3, a.key)) for a in actors]
    deployer, manager, driver, relayer = clients
    world = World(w3, deployment, keys, deployer, manager, driver, relayer, outsider_key=SigningKey(b"\x07" * 32))
    world.manager.register_roles(2)
    world.driver.register_roles(1)
    return world


def write_gas_figures(path: Path, gas: dict[str, int], **about: Any) -> bool:
    """Record `gas` (operation -> gas used on anvil) in the bench/results file `path`, keeping the
    file's other figures. Rewritten only when a figure is new or moved by more than 1 % (they vary
    by a few gas with the random addresses). True when the file was written."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    figures = dict(old.get("gas", {}))
    if all(k in figures and abs(figures[k] - v) <= v // 100 for k, v in gas.items()):
        return False
    figures.update(gas)
    path.write_text(json.dumps({**old, **about, "unit": "gas", "gas": dict(sorted(figures.items()))},
                               indent=2, sort_keys=True) + "\n")
    return True


@pytest.fixture(scope="module")
def anvil_w3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web3]:
    log = Path(tmp_path_factory.mktemp("anvil")) / "anvil.log"
    with running_anvil(log) as anvil:
        yield connect(anvil.url)


@pytest.fixture(scope="module", params=["tester", "anvil"])
def chain(request: pytest.FixtureRequest) -> Web3:
    """The core suite runs on both chains."""
    if request.param == "anvil":
        w3: Web3 = request.getfixturevalue("anvil_w3")
        return w3
    return connect("tester")


@pytest.fixture(scope="module")
def world(chain: Web3) -> World:
    return build_world(chain)
