"""Transaction submission: retries with backoff, an unreachable RPC, on-chain reverts decoded
after the fact, the nonce after failures, and the small registry paths."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from conftest import World, fund
from eth_account import Account
from web3 import Web3

from anchoring.chain import (
    ChainRevert,
    RetryPolicy,
    RpcUnavailable,
    TransactionSender,
    TransactionTimeout,
    connect,
    with_retries,
)
from anchoring.chain.anvil import running_anvil


def test_with_retries_backs_off_exponentially_then_gives_up() -> None:
    delays: list[float] = []
    failures = iter([ConnectionError("down"), TimeoutError("slow")])

    def flaky() -> str:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return "ok"

    policy = RetryPolicy(attempts=4, base_delay_s=0.5, max_delay_s=1.5)
    assert with_retries(flaky, policy, delays.append) == "ok"
    assert delays == [0.5, 1.0]

    def always_down() -> None:
        raise ConnectionError("down")

    delays.clear()
    with pytest.raises(RpcUnavailable):
        with_retries(always_down, policy, delays.append)
    assert delays == [0.5, 1.0, 1.5]


def test_unreachable_rpc_raises_rpc_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    w3 = connect(f"http://127.0.0.1:{port}", timeout_s=0.5)
    sender = TransactionSender(w3, "0x" + "11" * 32, retry=RetryPolicy(attempts=2, base_delay_s=0.01))
    with pytest.raises(RpcUnavailable):
        sender.send_data("0x" + "22" * 20, b"", gas=21_000)


def test_revert_mined_on_chain_is_decoded_and_nonce_stays_in_step(world: World) -> None:
    account = Account.create()
    fund(world.w3, account.address)
    key = world.client_for(account.key.hex())
    assert key.sender is not None
    raw = TransactionSender(world.w3, account.key, preflight=False)
    token = world.deployer.contracts["ChargeToken"]
    with pytest.raises(ChainRevert) as info:
        raw.send(token.functions.transfer(world.deployment.escrow, 10**30), gas=80_000)
    assert info.value.name == "InsufficientBalance" and info.value.tx_hash is not None
    # the failed transaction used its nonce; the next one goes through
    raw.send(token.functions.approve(world.deployment.escrow, 5), gas=80_000)
    # a preflight revert does not consume a nonce
    with pytest.raises(ChainRevert):
        key.transfer(world.deployment.escrow, 10**30)
    key.approve(world.deployment.escrow, 6)
    assert world.w3.eth.get_transaction_count(Web3.to_checksum_address(key.sender.address)) == 3


def test_operator_role_validator_info_and_gas_bounds(world: World) -> None:
    expect = pytest.raises(ChainRevert)
    with expect as info:
        world.driver.send("UserRegistry", "setOperator", world.driver.sender.address, True, gas=80_000)  # type: ignore[union-attr]
    assert info.value.name == "NotAdmin"
    world.deployer.send("UserRegistry", "setOperator", world.relayer.sender.address, True, gas=80_000)  # type: ignore[union-attr]
    assert world.deployer.roles_of(world.relayer.sender.address, "latest") & 4  # type: ignore[union-attr]
    with pytest.raises(ChainRevert) as info:
        world.driver.send("ValidatorSet", "setValidatorInfo", b"peer", "ws://x", gas=120_000)
    assert info.value.name == "NotAValidator"
    with pytest.raises(ChainRevert) as info:
        world.driver.send("UserRegistry", "registerRoles", 4, gas=80_000)
    assert info.value.name == "RolesNotSelfService"
    with pytest.raises(ValueError):
        world.driver.send("UserRegistry", "registerRoles", 1, gas=20_000_000)


def test_receipt_timeout_resyncs_nonce_after_a_dropped_transaction(tmp_path: Path) -> None:
    with running_anvil(tmp_path / "anvil.log", extra_args=["--no-mining"]) as anvil:
        w3 = connect(anvil.url)
        sender = TransactionSender(w3, anvil.dev_keys[0], receipt_timeout_s=0.3)
        target = Web3.to_checksum_address("0x" + "33" * 20)
        with pytest.raises(TransactionTimeout):
            sender.send_data(target, b"", gas=21_000, value=1)
        pending = w3.eth.get_block("pending", full_transactions=True)["transactions"]
        assert len(pending) == 1
        w3.provider.make_request("anvil_dropTransaction", [pending[0]["hash"].to_0x_hex()])  # type: ignore[arg-type, call-overload]
        w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
        receipt = sender.send_data(target, b"", gas=21_000, value=2)  # reuses nonce 0: no gap
        assert w3.eth.get_transaction(receipt.tx_hash)["nonce"] == 0  # type: ignore[arg-type]
        assert w3.eth.get_balance(target) == 2
