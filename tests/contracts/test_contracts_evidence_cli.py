"""`devsen evidence check|submit`: a vote-pair file in, a slash on chain out; and the node's
automatic DoubleSignReporter fed by consensus Evidence. Hostile files fail with the field named,
before any gas is spent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from conftest import TOKEN, World, build_world, fund
from web3 import Web3

from anchoring.chain import StakingParams
from consensus.types import Evidence, EvidenceKind, Vote, VoteType
from devsen.cli import main
from devsen.slashing import DoubleSignReporter, VotePair, parse_pair, submit_pair, turn_delay_s
from primitives.eip712 import Domain, SigningKey

STAKE = 100 * TOKEN


@pytest.fixture
def staked(chain: Web3) -> World:
    world = build_world(chain, staking=StakingParams(min_stake=STAKE))
    for key in world.validators:
        client = world.client_for(key.secret.hex())
        fund(world.w3, client.sender.address)  # type: ignore[union-attr]
        client.faucet_mint(client.sender.address, STAKE)  # type: ignore[union-attr]
        client.approve(world.deployment.validator_set, STAKE)
        client.bond(STAKE)
    return world


def _pair(world: World, key: SigningKey, at: int = 7, **kwargs: int) -> VotePair:
    """Two votes of `key` at height `at`; `kwargs` moves the second one's slot."""
    domain = world.deployment.domain("ValidatorSet")
    a = Vote.sign(key, domain, VoteType.PREVOTE, at, 0, b"\x01" * 32)
    b = Vote.sign(key, domain, VoteType(kwargs.get("vote_type", 1)), kwargs.get("height", at),
                  kwargs.get("round", 0), b"\x02" * 32)
    return VotePair(a, b)


def _files(world: World, tmp_path: Path, pair: VotePair) -> tuple[Path, Path]:
    votes = tmp_path / "votes.json"
    votes.write_text(json.dumps(pair.to_json(world.deployment.domain("ValidatorSet"))))
    network = tmp_path / "deployment.json"
    world.deployment.save(network)
    return votes, network


def _reporter_key(world: World, tmp_path: Path) -> tuple[Path, str]:
    key = SigningKey(b"\x42" * 32)
    address = Web3.to_checksum_address(key.address)
    fund(world.w3, address)
    path = tmp_path / "reporter.key"
    path.write_text(key.secret.hex())
    return path, address


def test_cli_submits_and_slashes_once(staked: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    offender = staked.validators[0]
    votes, network = _files(staked, tmp_path, _pair(staked, offender))
    key_file, reporter = _reporter_key(staked, tmp_path)
    rpc = getattr(staked.w3.provider, "endpoint_uri", None)
    if rpc is None:
        pytest.skip("the CLI needs a JSON-RPC URL (the anvil run)")
    assert main(["evidence", "check", "--votes", str(votes), "--network", str(network)]) == 0
    assert "double-sign proven" in capsys.readouterr().out
    argv = ["evidence", "submit", "--votes", str(votes), "--network", str(network), "--rpc", str(rpc),
            "--key-file", str(key_file), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["slashed_base_units"] == STAKE // 2 and out["gas_used"] > 0
    assert staked.relayer.token_balance(reporter, "latest") == STAKE // 2 // 10
    assert main(argv) == 1  # replayed: refused at preflight, no gas spent
    assert "EvidenceAlreadySubmitted" in capsys.readouterr().err


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.update(format="x"), "format"),
    (lambda d: d["votes"][1].update(block_hash="0x" + "03" * 32), "votes[1].signature does not recover"),
    (lambda d: d["votes"][1].update(signature="0x" + "11" * 65), "votes[1].signature"),
    (lambda d: d["votes"][0].update(signature="0x1234"), "votes[0].signature: 2 bytes"),
    (lambda d: d.update(height=0), "height"),
    (lambda d: d.update(chain_id=d["chain_id"] + 1), "chain_id/validator_set"),
    (lambda d: d.update(votes=[d["votes"][0]] * 2), "not conflicting"),
])
def test_cli_refuses_bad_files(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               edit: object, message: str) -> None:
    votes, network = _files(world, tmp_path, _pair(world, world.validators[1]))
    data = json.loads(votes.read_text())
    edit(data)  # type: ignore[operator]
    votes.write_text(json.dumps(data))
    assert main(["evidence", "check", "--votes", str(votes), "--network", str(network)]) == 2
    assert message in capsys.readouterr().err


def test_pair_from_another_slot_is_no_evidence(world: World) -> None:
    key = world.validators[2]
    domain = world.deployment.domain("ValidatorSet")
    for kwargs in ({"height": 8}, {"round": 1}, {"vote_type": 2}):
        pair = _pair(world, key, **kwargs)
        with pytest.raises(ValueError, match="different slots"):
            pair.check(domain)
    text = json.dumps(_pair(world, key).to_json(domain))
    parsed, chain_id, _ = parse_pair(text)
    assert chain_id == world.deployment.chain_id and parsed.offence[2] == 7


def test_validators_take_turns_to_submit() -> None:
    keys = [SigningKey(bytes([i]) * 32) for i in range(1, 5)]
    validators = [k.address for k in keys]
    domain = Domain(1, b"\x01" * 20)
    delays = []
    for height in (10, 11):
        pair = VotePair(Vote.sign(keys[0], domain, VoteType.PREVOTE, height, 0, b"\x01" * 32),
                        Vote.sign(keys[0], domain, VoteType.PREVOTE, height, 0, b"\x02" * 32))
        delays.append(sorted(turn_delay_s(a, validators, pair, 1.0) for a in validators))
        assert turn_delay_s(b"\x09" * 20, validators, pair) == 0.0  # not a validator: no turn to wait for
    assert delays == [[0.0, 1.0, 2.0, 3.0]] * 2  # one node per turn
    first = VotePair(Vote.sign(keys[0], domain, VoteType.PREVOTE, 10, 0, b"\x01" * 32),
                     Vote.sign(keys[0], domain, VoteType.PREVOTE, 10, 0, b"\x02" * 32))
    second = VotePair(Vote.sign(keys[0], domain, VoteType.PREVOTE, 11, 0, b"\x01" * 32),
                      Vote.sign(keys[0], domain, VoteType.PREVOTE, 11, 0, b"\x02" * 32))
    who_first = [a for a in validators if turn_delay_s(a, validators, first) == 0.0]
    who_second = [a for a in validators if turn_delay_s(a, validators, second) == 0.0]
    assert who_first != who_second  # rotated by height


def test_reporter_submits_each_offence_once(staked: World, tmp_path: Path) -> None:
    """The automatic path: consensus Evidence -> file -> one submission; repeats and proposal
    or forged evidence are not submitted."""
    offender = staked.validators[3]
    client = staked.new_actor()
    calls: list[VotePair] = []

    def submit(pair: VotePair):  # type: ignore[no-untyped-def]
        calls.append(pair)
        return submit_pair(client, pair)

    reporter = DoubleSignReporter(tmp_path / "double_sign", staked.deployment.domain("ValidatorSet"), submit)
    pair = _pair(staked, offender)
    evidence = Evidence(EvidenceKind.DUPLICATE_VOTE, offender.address, 7, 0, pair.first.to_bytes(),
                        pair.second.to_bytes())
    reporter.on_evidence(evidence)
    reporter.on_evidence(evidence)  # reported again by the core: one offence
    forged = Vote(pair.second.vote_type, 7, 0, b"\x03" * 32, offender.address, pair.second.signature)
    reporter.on_evidence(Evidence(EvidenceKind.DUPLICATE_VOTE, offender.address, 7, 0, pair.first.to_bytes(),
                                  forged.to_bytes()))
    assert reporter.counts["reported"] == 1 and reporter.counts["invalid"] == 0  # same offence key: deduped
    other = _pair(staked, offender, at=9)
    other_b = Vote(other.second.vote_type, 9, 0, b"\x04" * 32, offender.address, other.second.signature)
    reporter.on_evidence(Evidence(EvidenceKind.DUPLICATE_VOTE, offender.address, 9, 0, other.first.to_bytes(),
                                  other_b.to_bytes()))
    assert reporter.counts["invalid"] == 1
    assert len(list((tmp_path / "double_sign").glob("*.json"))) == 1

    async def drive() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reporter.run)
            with trio.fail_after(30):
                while reporter.counts["submitted"] + reporter.counts["failed"] == 0:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    trio.run(drive)
    assert reporter.counts["submitted"] == 1 and len(calls) == 1
    assert staked.relayer.stake(offender.address, "latest").stake == STAKE // 2
    written = json.loads(reporter.path_of(pair).read_text())
    assert parse_pair(json.dumps(written))[0] == pair
