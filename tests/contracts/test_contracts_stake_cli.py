"""`devsen stake` on anvil: a candidate registers with stake, a quorum signs and submits the set
change with `sign-update` / `submit-update`, the validator is later voted out, unbonds, and an
early withdrawal is refused. A signature over another set is refused before any transaction."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

import pytest
from conftest import TOKEN, World, build_world, fund
from web3 import Web3

from anchoring.chain import StakingParams
from consensus.types import Vote, VoteType
from devsen.cli import main
from p2p.keys import LIBP2P_KEY_FILE, VALIDATOR_KEY_FILE, _write_secret, init_keys
from primitives.eip712 import SigningKey

STAKE = 10 * TOKEN
OPERATOR_STAKE = 20 * TOKEN  # the operator minimum, not the validator one


@pytest.fixture
def staked(anvil_w3: Web3) -> World:
    world = build_world(anvil_w3, staking=StakingParams(min_stake=STAKE, unbonding_s=3600,
                                                        min_operator_stake=OPERATOR_STAKE))
    for key in world.validators:
        client = world.client_for(key.secret.hex())
        fund(world.w3, client.sender.address)  # type: ignore[union-attr]
        client.faucet_mint(client.sender.address, STAKE)  # type: ignore[union-attr]
        client.approve(world.deployment.validator_set, STAKE)
        client.bond(STAKE)
    return world


def _key_dir(root: Path, key: SigningKey) -> Path:
    root.mkdir(parents=True, mode=0o700)
    _write_secret(root / LIBP2P_KEY_FILE, secrets.token_bytes(32))
    _write_secret(root / VALIDATOR_KEY_FILE, key.secret)
    return root


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_join_and_leave_with_the_stake_cli(staked: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    network = tmp_path / "deployment.json"
    staked.deployment.save(network)
    rpc = str(staked.w3.provider.endpoint_uri)  # type: ignore[attr-defined]
    common = ["--network", str(network), "--rpc", rpc]
    candidate_dir = tmp_path / "candidate" / "keys"
    candidate = init_keys(candidate_dir)
    address = Web3.to_checksum_address(candidate.validator.address)
    fund(staked.w3, address)
    staked.relayer.faucet_mint(address, STAKE)
    code, out, err = _run(["stake", "register", "--keys", str(candidate_dir), *common, "--peer-id",
                           candidate.peer_id.to_base58(), "--endpoint", "ws://10.0.0.5:9000/ocpp", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["stake_base_units"] == STAKE
    validator_dirs = [_key_dir(tmp_path / f"v{i}" / "keys", k) for i, k in enumerate(staked.validators)]

    def quorum(flag: str, signers: list[Path], epoch: int) -> list[str]:
        files = []
        for i, directory in enumerate(signers):
            code, out, err = _run(["stake", "sign-update", "--keys", str(directory), *common, flag, address], capsys)
            assert code == 0, err
            line = json.loads(out)
            assert line["epoch"] == epoch
            path = tmp_path / f"sig-{epoch}-{i}.json"
            path.write_text(out)
            files.append(str(path))
        return files

    files = quorum("--add", validator_dirs[:3], 1)
    new_set = json.loads(Path(files[0]).read_text())["validators"]
    # a signature over another set is refused before any transaction
    other = json.loads(Path(files[2]).read_text())
    other["validators"] = new_set[:-1]
    forged = tmp_path / "other.json"
    forged.write_text(json.dumps(other))
    code, _, err = _run(["stake", "submit-update", "--keys", str(validator_dirs[0]), *common, "--epoch", "1",
                         "--validators", ",".join(new_set), "--signatures", ",".join([*files[:2], str(forged)])], capsys)
    assert code == 2 and "--signatures" in err and "another update" in err
    code, out, err = _run(["stake", "submit-update", "--keys", str(validator_dirs[0]), *common, "--epoch", "1",
                           "--validators", ",".join(new_set), "--signatures", ",".join(files)], capsys)
    assert code == 0, err
    assert address in staked.relayer.validator_set("latest").addresses()
    code, _, err = _run(["stake", "unbond", "--keys", str(candidate_dir), *common], capsys)
    assert code == 1 and "StillAValidator" in err  # a validator leaves by a set change first
    files = quorum("--remove", validator_dirs, 2)  # 4 of the 5 now
    code, out, err = _run(["stake", "submit-update", "--keys", str(validator_dirs[0]), *common, "--epoch", "2",
                           "--validators", ",".join(json.loads(Path(files[0]).read_text())["validators"]),
                           "--signatures", ",".join(files)], capsys)
    assert code == 0, err
    code, out, err = _run(["stake", "unbond", "--keys", str(candidate_dir), *common, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["withdrawable_at"] > 0
    code, _, err = _run(["stake", "withdraw", "--keys", str(candidate_dir), *common], capsys)
    assert code == 1 and "UnbondingNotOver" in err
    code, out, _ = _run(["stake", "show", "--keys", str(candidate_dir), *common], capsys)
    assert code == 0 and "stake_base_units" in out and str(STAKE) in out


def test_a_full_node_registers_as_an_operator_with_the_stake_cli(staked: World, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    network = tmp_path / "deployment.json"
    staked.deployment.save(network)
    common = ["--network", str(network), "--rpc", str(staked.w3.provider.endpoint_uri)]  # type: ignore[attr-defined]
    keys_dir = tmp_path / "full" / "keys"
    keys = init_keys(keys_dir)
    address = Web3.to_checksum_address(keys.validator.address)
    fund(staked.w3, address)
    staked.relayer.faucet_mint(address, OPERATOR_STAKE)
    register = ["stake", "register-operator", "--keys", str(keys_dir), *common, "--json"]
    code, _, err = _run(register, capsys)
    assert code == 2 and "--peer-id" in err  # named, before any transaction
    code, out, err = _run([*register, "--peer-id", keys.peer_id.to_base58(), "--endpoint", "ws://10.0.0.7:9000/ocpp"],
                          capsys)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["operator"] and not shown["in_current_set"] and shown["stake_base_units"] == OPERATOR_STAKE
    assert shown["min_operator_stake_base_units"] == OPERATOR_STAKE
    assert staked.relayer.operators("latest") == (keys.validator.address,)
    code, _, err = _run([*register, "--peer-id", keys.peer_id.to_base58(), "--endpoint", "ws://10.0.0.7:9000/ocpp"],
                        capsys)
    assert code == 1 and "AlreadyAnOperator" in err  # hostile: a second registration
    # nobody prunes an operator that holds the minimum
    operator = ["--operator", address]
    code, _, err = _run(["stake", "prune-operator", "--keys", str(keys_dir), *common, *operator], capsys)
    assert code == 1 and "OperatorStakeSufficient" in err
    # a quorum removes it: the operator's own and an outsider's signature are refused on chain,
    # a line for another operator before any transaction
    validator_dirs = [_key_dir(tmp_path / f"v{i}" / "keys", k) for i, k in enumerate(staked.validators)]
    outsider_dir = _key_dir(tmp_path / "outsider" / "keys", SigningKey(b"\x42" * 32))

    def sign(directory: Path, name: str, target: list[str] = operator) -> str:
        code, out, err = _run(["stake", "sign-remove-operator", "--keys", str(directory), *common, *target], capsys)
        assert code == 0, err
        path = tmp_path / f"{name}.json"
        path.write_text(out)
        return str(path)

    good = [sign(d, f"rm-{i}") for i, d in enumerate(validator_dirs[:3])]
    forged = [*good[:2], sign(keys_dir, "rm-self")]
    submit = ["stake", "submit-remove-operator", "--keys", str(validator_dirs[0]), *common, *operator]
    code, _, err = _run([*submit, "--signatures", ",".join(forged)], capsys)
    assert code == 1 and "SignerNotValidator" in err
    code, _, err = _run([*submit, "--signatures", ",".join([*good[:2], sign(outsider_dir, "rm-outsider")])], capsys)
    assert code == 1 and "SignerNotValidator" in err
    other = sign(validator_dirs[3], "rm-other", ["--operator", staked.relayer.sender.address])  # type: ignore[union-attr]
    code, _, err = _run([*submit, "--signatures", ",".join([*good[:2], other])], capsys)
    assert code == 2 and "signed another removal" in err
    code, _, err = _run([*submit, "--signatures", ",".join(good[:2])], capsys)
    assert code == 1 and "TooFewSignatures" in err
    assert staked.relayer.operators("latest") == (keys.validator.address,)
    code, out, err = _run([*submit, "--signatures", ",".join(good), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["removed"] == address and staked.relayer.operators("latest") == ()
    code, _, err = _run([*register, "--peer-id", keys.peer_id.to_base58(), "--endpoint", "ws://10.0.0.7:9000/ocpp"],
                        capsys)
    assert code == 1 and "OperatorBanned" in err


def test_a_full_registry_names_the_slot_to_reclaim_and_the_newcomer_takes_it(
        staked: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """All MAX_OPERATORS = 256 slots filled with the full minimum each (what griefing costs now:
    256 x minOperatorStake). A 257th registration is OperatorsFull; once one operator (a validator
    that also operates) is slashed below the minimum, `register-operator` names it and the fix,
    anyone's `prune-operator` frees the slot, and the newcomer takes it."""
    network = tmp_path / "deployment.json"
    staked.deployment.save(network)
    common = ["--network", str(network), "--rpc", str(staked.w3.provider.endpoint_uri)]  # type: ignore[attr-defined]
    offender = staked.validators[3]  # bonded STAKE (< OPERATOR_STAKE) by the fixture
    squatters = [SigningKey(hashlib.sha256(b"squatter-%d" % i).digest()) for i in range(255)]
    for key in [offender, *squatters]:
        address = Web3.to_checksum_address(key.address)
        if key is not offender:  # gas money without a transaction (anvil): the registrations are the test
            staked.w3.provider.make_request("anvil_setBalance", [address, hex(10**18)])  # type: ignore[arg-type]
        staked.relayer.faucet_mint(address, OPERATOR_STAKE)
        client = staked.client_for(key.secret.hex())
        client.approve(staked.deployment.validator_set, OPERATOR_STAKE)
        client.register_operator(OPERATOR_STAKE, b"", "")
    assert len(staked.relayer.operators("latest")) == 256
    gas = staked.w3.eth.estimate_gas({"to": staked.deployment.validator_set,
                                      "data": Web3.keccak(text="operators()")[:4]})
    with capsys.disabled():
        print(f"operators() with 256 registered: {gas} gas (eth_call)")
    keys_dir = tmp_path / "newcomer" / "keys"
    keys = init_keys(keys_dir)
    address = Web3.to_checksum_address(keys.validator.address)
    fund(staked.w3, address)
    staked.relayer.faucet_mint(address, OPERATOR_STAKE)
    register = ["stake", "register-operator", "--keys", str(keys_dir), *common, "--peer-id",
                keys.peer_id.to_base58(), "--endpoint", "ws://10.0.0.9:9000/ocpp"]
    code, _, err = _run(register, capsys)
    assert code == 2 and "OperatorsFull" in err and "every registered operator holds the minimum stake" in err
    domain = staked.deployment.domain("ValidatorSet")
    a = Vote.sign(offender, domain, VoteType.PRECOMMIT, 7, 0, b"\xaa" * 32)
    b = Vote.sign(offender, domain, VoteType.PRECOMMIT, 7, 0, b"\xbb" * 32)
    staked.relayer.submit_vote_evidence(int(a.vote_type), 7, 0, a.block_hash, a.signature, b.block_hash, b.signature)
    assert len(staked.relayer.operators("latest")) == 255  # it no longer counts at once
    code, _, err = _run(register, capsys)
    stale = Web3.to_checksum_address(offender.address)
    assert code == 2 and f"prune-operator --operator {stale}" in err
    code, out, err = _run(["stake", "prune-operator", "--keys", str(keys_dir), *common, "--operator", stale,
                           "--json"], capsys)
    assert code == 0, err
    code, out, err = _run([*register, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["operator"]
    assert len(staked.relayer.operators("latest")) == 256 and keys.validator.address in staked.relayer.operators("latest")
