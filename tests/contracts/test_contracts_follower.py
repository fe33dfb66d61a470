"""Event follower: confirmation depth, a persisted cursor that resumes after a restart, and
reorg detection; the anvil runner; the deploy command."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from conftest import World, fund
from eth_account import Account
from web3 import Web3

from anchoring.chain import (
    ChainClient,
    ChainEvent,
    Deployment,
    EventFollower,
    ReorgDetected,
    connect,
    deploy_main,
    follow_events,
)
from anchoring.chain.anvil import AnvilError, start_anvil

SALT = b"\x03" * 16
AUTH = b"\x04" * 32


def _mine(w3: Web3, blocks: int) -> None:
    provider = w3.provider
    if hasattr(provider, "ethereum_tester"):
        provider.ethereum_tester.mine_blocks(blocks)
    else:
        for _ in range(blocks):
            provider.make_request("evm_mine", [])  # type: ignore[arg-type]


def _drain(follower: EventFollower) -> list[ChainEvent]:
    events: list[ChainEvent] = []
    while (batch := follower.poll()) is not None:
        events.extend(batch.events)
        follower.acknowledge(batch)
    return events


def test_follow_with_confirmations_and_resume(world: World, tmp_path: Path) -> None:
    cursor = tmp_path / "cursor.json"
    follower = EventFollower(world.w3, world.deployment, cursor, confirmations=2, max_blocks_per_poll=3)
    _mine(world.w3, 2)
    history = _drain(follower)
    names = {e.name for e in history}
    assert {"ValidatorSetUpdated", "RolesChanged"} <= names
    world.manager.create_device("FOLLOW-1", location="here", connector_count=1, price_per_kwh=5,
                                per_minute_fee=0, auth_salt=SALT, auth_hash=AUTH)
    assert all(e.name != "DeviceCreated" for e in _drain(follower)), "not yet confirmed"
    _mine(world.w3, 2)
    fresh = _drain(follower)
    created = [e for e in fresh if e.name == "DeviceCreated"]
    assert len(created) == 1 and created[0].args["chargeBoxId"] == "FOLLOW-1"
    assert created[0].contract == "DeviceFactory"
    # a restarted follower resumes after the last acknowledged block: nothing is replayed
    restarted = EventFollower(world.w3, world.deployment, cursor, confirmations=2)
    assert restarted.cursor == follower.cursor
    world.manager.update_device("setLocation", "FOLLOW-1", "there")
    _mine(world.w3, 2)
    again = _drain(restarted)
    assert [e.name for e in again] == ["DeviceLocationChanged"]


def test_crowded_ranges_are_halved_not_dropped(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    everything = _drain(EventFollower(world.w3, world.deployment, tmp_path / "a.json", confirmations=0))
    monkeypatch.setattr("anchoring.chain.follower.MAX_EVENTS_PER_POLL", 5)
    halved = _drain(EventFollower(world.w3, world.deployment, tmp_path / "b.json", confirmations=0))
    assert halved[: len(everything)] == everything and len(everything) > 10


async def test_trio_shell_hands_events_over(world: World, tmp_path: Path) -> None:
    follower = EventFollower(world.w3, world.deployment, tmp_path / "c.json", confirmations=0)
    seen: list[ChainEvent] = []

    async def handle(events: tuple[ChainEvent, ...]) -> None:
        seen.extend(events)

    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: follow_events(follower, handle, poll_interval_s=0.01))
            while not any(e.name == "BatchAnchored" or e.name == "RolesChanged" for e in seen):
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert any(e.name == "RolesChanged" for e in seen)
    assert (tmp_path / "c.json").is_file()


def test_reorg_below_depth_is_reported(world: World, tmp_path: Path) -> None:
    w3 = world.w3
    provider = w3.provider
    tester = getattr(provider, "ethereum_tester", None)
    snapshot = tester.take_snapshot() if tester else provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    follower = EventFollower(w3, world.deployment, tmp_path / "r.json", confirmations=1)
    world.manager.create_device("REORG-1", location="", connector_count=1, price_per_kwh=5,
                                per_minute_fee=0, auth_salt=SALT, auth_hash=AUTH)
    _mine(w3, 1)
    assert any(e.name == "DeviceCreated" for e in _drain(follower))
    if tester:
        tester.revert_to_snapshot(snapshot)
    else:
        provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]
    fund(w3, Account.create().address, 1)  # a different block at the same height
    _mine(w3, 2)
    with pytest.raises(ReorgDetected) as info:
        follower.poll()
    assert info.value.block_number == follower.cursor.last_block
    fork_point = follower.cursor.last_block - 2
    follower.rewind(fork_point)
    assert all(e.name != "DeviceCreated" for e in _drain(follower)), "the reorged-away event is gone"
    with pytest.raises(ValueError):
        follower.rewind(follower.cursor.next_block + 1)


def test_anvil_runner_parses_port_and_keys_and_stops(tmp_path: Path) -> None:
    anvil = start_anvil(tmp_path / "a.log", chain_id=4242)
    try:
        assert len(anvil.dev_keys) == 10
        w3 = connect(anvil.url)
        assert w3.eth.chain_id == 4242
        assert Account.from_key(anvil.dev_keys[0]).address == w3.eth.accounts[0]
    finally:
        anvil.stop()
    assert anvil.process.poll() is not None
    with pytest.raises(AnvilError):
        start_anvil(tmp_path / "b.log", anvil_bin=tmp_path / "missing")


def test_deploy_main_writes_deployment_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    anvil = start_anvil(tmp_path / "d.log")
    try:
        key_file = tmp_path / "key"
        key_file.write_text(anvil.dev_keys[1])
        os.chmod(key_file, 0o600)
        out = tmp_path / "deployment.json"
        validators = ",".join(Account.create().address for _ in range(4))
        driver = Account.create().address
        code = deploy_main(["deploy", "--rpc", anvil.url, "--validators", validators, "--out", str(out),
                            "--key-file", str(key_file), "--faucet", "--fund", driver,
                            "--fund-tokens", str(5 * 10**6)])
        assert code == 0
        deployment = Deployment.load(out)
        assert deployment.chain_id == 31337
        w3 = connect(anvil.url)
        assert all(len(w3.eth.get_code(Web3.to_checksum_address(a))) > 0 for a in deployment.addresses().values())
        client = ChainClient(w3, deployment)
        assert client.token_balance(driver, "latest") == 5 * 10**6
        assert w3.eth.get_balance(driver) == 10**18
        assert len(client.validator_set(deployment.deploy_block).validators) == 4
        monkeypatch.delenv("DEVSEN_DEPLOYER_KEY", raising=False)
        assert deploy_main(["--rpc", anvil.url, "--validators", validators, "--out", str(out)]) == 1
        assert deploy_main(["--rpc", anvil.url, "--validators", "0xnope", "--out", str(out),
                            "--key-file", str(key_file)]) == 1
        assert deploy_main(["--rpc", anvil.url, "--validators", validators, "--out", str(out),
                            "--key-file", str(key_file), "--fund", driver]) == 1  # tokens need --faucet
        bad = tmp_path / "bad.json"
        bad.write_text('{"format": "devsen-deployment/1", "chain_id": 1}')
        with pytest.raises(ValueError):
            Deployment.load(bad)
    finally:
        anvil.stop()


class _CountingFollower:
    """A follower stand-in for follow_events: counts polls, never finds a new block."""

    def __init__(self) -> None:
        self.polls = 0

    def poll(self) -> None:
        self.polls += 1
        return None


async def test_paused_follow_does_not_ask_the_chain_until_resumed() -> None:
    follower = _CountingFollower()
    paused = [True]

    async def handle(events: object) -> None:
        raise AssertionError("no events")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: follow_events(follower, handle, poll_interval_s=0.01,  # type: ignore[arg-type]
                                                 paused=lambda: paused[0], max_pause_s=60.0))
        await trio.sleep(0.3)
        assert follower.polls == 0, "a paused follower polled the chain"
        paused[0] = False
        with trio.fail_after(10):  # only catches a hang
            while follower.polls < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_paused_follow_still_polls_once_per_max_pause() -> None:
    follower = _CountingFollower()

    async def handle(events: object) -> None:
        raise AssertionError("no events")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: follow_events(follower, handle, poll_interval_s=0.01,  # type: ignore[arg-type]
                                                 paused=lambda: True, max_pause_s=0.1))
        started = trio.current_time()
        with trio.fail_after(10):  # only catches a hang
            while follower.polls < 2:
                await trio.sleep(0.005)
        nursery.cancel_scope.cancel()
    assert trio.current_time() - started >= 0.2, "each poll waited out max_pause_s"
