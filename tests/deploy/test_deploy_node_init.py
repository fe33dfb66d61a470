"""`devsen node init`: keys, a commented config the loader accepts, the deployment copied, and
the on-chain steps printed; it never overwrites keys, and a preset of another chain is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from web3 import Web3

from anchoring.chain import Deployment
from devsen.cli import main
from devsen.config import load_config
from p2p.keys import init_keys, load_keys


def _deployment(tmp_path: Path, chain_id: int = 31337) -> Path:
    addresses = [Web3.to_checksum_address(bytes([i]) * 20) for i in range(1, 8)]
    deployment = Deployment(chain_id, 5, *addresses)
    path = tmp_path / f"deployment-{chain_id}.json"
    deployment.save(path)
    return path


def test_init_writes_keys_config_and_prints_the_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    network = _deployment(tmp_path)
    node_dir = tmp_path / "operator-a"
    assert main(["node", "init", "--dir", str(node_dir), "--network", str(network), "--p2p-port", "4101"]) == 0
    out = capsys.readouterr().out
    keys = load_keys(node_dir / "keys")
    address = Web3.to_checksum_address(keys.validator.address)
    assert address in out and keys.peer_id.to_base58() in out
    for step in ("Fund", "devsen stake register", "devsen stake sign-update", "devsen stake submit-update",
                 "devsen node --config", "devsen stake unbond", "devsen stake withdraw"):
        assert step in out, step
    config = load_config(node_dir / "node.toml", env={})
    assert config.chain.chain_id == 31337 and config.p2p.listen.endswith("/tcp/4101")
    assert Path(config.chain.deployment).read_text() == network.read_text()
    assert config.keys_dir == node_dir.resolve() / "keys"
    text = (node_dir / "node.toml").read_text()
    commented = [line for line in text.splitlines() if "=" in line and not line.startswith("#")]
    assert sum("#" in line for line in commented) >= len(commented) // 2  # most keys say what they are


def test_init_refuses_to_overwrite_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    network = _deployment(tmp_path)
    node_dir = tmp_path / "operator-b"
    assert main(["node", "init", "--dir", str(node_dir), "--network", str(network)]) == 0
    before = {p.name: p.read_bytes() for p in (node_dir / "keys").iterdir()}
    capsys.readouterr()
    assert main(["node", "init", "--dir", str(node_dir), "--network", str(network)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (node_dir / "keys").iterdir()} == before
    # keys made before the network existed (a genesis validator) are used only when asked
    genesis = tmp_path / "genesis"
    made = init_keys(genesis / "keys")
    assert main(["node", "init", "--dir", str(genesis), "--network", str(network)]) == 1
    assert main(["node", "init", "--dir", str(genesis), "--network", str(network), "--use-existing-keys",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["validator_address"] == Web3.to_checksum_address(made.validator.address)
    assert main(["node", "init", "--dir", str(tmp_path / "empty"), "--network", str(network),
                 "--use-existing-keys"]) == 1
    assert "does not hold both key files" in capsys.readouterr().err


def test_presets_and_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sepolia = _deployment(tmp_path, 11155111)
    node_dir = tmp_path / "sepolia-node"
    assert main(["node", "init", "--dir", str(node_dir), "--network", str(sepolia), "--preset", "sepolia",
                 "--rpc", "https://my-provider.invalid/v3/key"]) == 0
    config = load_config(node_dir / "node.toml", env={})
    assert (config.chain.chain_id, config.chain.confirmations, config.chain.max_fee_gwei) == (11155111, 3, 50.0)
    assert config.chain.rpc == "https://my-provider.invalid/v3/key"
    capsys.readouterr()
    local = _deployment(tmp_path)
    assert main(["node", "init", "--dir", str(tmp_path / "x"), "--network", str(local), "--preset", "sepolia"]) == 1
    assert "--preset sepolia is chain 11155111" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing written
    assert main(["node", "init", "--dir", str(tmp_path / "y"), "--network", str(local), "--preset", "mainnet"]) == 1
    assert "--preset: 'mainnet' is not one of local" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["node", "init", "--dir", str(tmp_path / "z"), "--network", str(bad)]) == 1
    assert "--network" in capsys.readouterr().err
