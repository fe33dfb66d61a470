"""deploy/: the compose network, the systemd unit and the chain presets are valid without a
container runtime: the YAML parses, every service's command, entrypoint and config path
exists, the addresses are consistent, the unit has sane keys, and each preset passes the
config loader (whose errors name the key and the fix)."""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from devsen.cli import DELEGATED, build_parser
from devsen.config import ConfigError, config_from_mapping, load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
BOOTSTRAP = DEPLOY / "compose" / "bootstrap.sh"
UNIT = DEPLOY / "systemd" / "devsen-node.service"
PRESETS = sorted((DEPLOY / "presets").glob("*.toml"))


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _devsen_commands() -> set[str]:
    """`devsen` subcommands: the parser's plus the delegated ones."""
    return set(re.findall(r'sub\.add_parser\("([a-z-]+)"', (ROOT / "devsen" / "cli.py").read_text())) | set(DELEGATED)


def test_compose_has_a_chain_4_validators_and_a_full_node_each_in_its_container() -> None:
    services = _compose()["services"]
    nodes = {name: s for name, s in services.items() if s.get("command", [None])[0] == "node"}
    assert sorted(nodes) == ["full-1", "node-1", "node-2", "node-3", "node-4"]
    assert services["chain"]["entrypoint"] == ["anvil"]
    images = {s["image"] for s in services.values()}
    assert images == {"devsen:local"} and services["chain"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / services["chain"]["build"]["context"].replace("../..", ".") / "deploy" / "Dockerfile").is_file() \
        or (COMPOSE.parent / services["chain"]["build"]["context"] / "deploy" / "Dockerfile").is_file()
    # every node waits for the bootstrap and reads the config bootstrap.sh writes for it
    script = BOOTSTRAP.read_text()
    for name, service in nodes.items():
        assert service["depends_on"]["bootstrap"]["condition"] == "service_completed_successfully"
        assert service["command"] == ["node", "--config", f"/net/{name}/node.toml"]
        assert name in script.split("NODES=")[1].split("\n")[0]
        assert {"source": "net"} or "net:/net" in service["volumes"]
    # fixed, distinct addresses inside the declared subnet, and bootstrap.sh uses the same ones
    subnet = _compose()["networks"]["devsen"]["ipam"]["config"][0]["subnet"]
    prefix = subnet.rsplit(".", 1)[0] + "."
    ips = {name: s["networks"]["devsen"]["ipv4_address"] for name, s in services.items()}
    assert len(set(ips.values())) == len(ips) and all(ip.startswith(prefix) for ip in ips.values())
    for name in nodes:
        assert re.search(rf"{name}\) echo {re.escape(ips[name])};", script), name
    assert ips["chain"] in services["bootstrap"]["environment"]["DEVSEN_RPC"]
    # host ports do not collide
    published = [p.split(":")[0] for s in services.values() for p in s.get("ports", [])]
    assert len(published) == len(set(published))


def test_compose_and_bootstrap_only_use_commands_that_exist() -> None:
    services = _compose()["services"]
    commands = _devsen_commands()
    for name, service in services.items():
        if service.get("entrypoint") is None and "command" in service:
            assert service["command"][0] in commands, name
    assert services["bootstrap"]["entrypoint"] == ["sh", "/opt/devsen/deploy/compose/bootstrap.sh"]
    assert subprocess.run(["sh", "-n", str(BOOTSTRAP)], check=False).returncode == 0
    used = set(re.findall(r"^\s*devsen ([a-z-]+)", BOOTSTRAP.read_text(), re.M))
    assert used == {"keys", "chain", "node"} and used <= commands
    # the options bootstrap.sh passes exist (argparse would reject an unknown one)
    from anchoring.chain import deploy

    text = BOOTSTRAP.read_text()
    deploy_source = Path(deploy.__file__).read_text()
    for option in re.findall(r"(--[a-z-]+)", text.split("devsen chain deploy")[1].split("\nBOOT")[0]):
        assert f'"{option}"' in deploy_source, option
    init_source = (ROOT / "devsen" / "node_init.py").read_text()
    for option in re.findall(r"(--[a-z-]+)", text.split("devsen node init")[1].split("done")[0]):
        assert f'"{option}"' in init_source, option
    # the Dockerfile puts anvil and devsen on PATH and the bootstrap script in the image
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "node_modules/.bin" in dockerfile and "pip install" in dockerfile and "COPY . ." in dockerfile


def test_systemd_unit_is_sane() -> None:
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["Type"] == "simple" and service["Restart"] == "on-failure"
    assert service["User"] != "root" and service["NoNewPrivileges"] == "true"
    argv = shlex.split(service["ExecStart"])
    assert argv[0].startswith("/") and argv[0].endswith("/devsen") and argv[1] == "node"
    args = build_parser().parse_args(argv[1:])
    assert args.config.startswith(service["ReadWritePaths"]) and args.log_format == "json"
    assert service["WorkingDirectory"].startswith(service["ReadWritePaths"])
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in unit["Unit"]["After"]
    known = {"Description", "Documentation", "After", "Wants", "Type", "User", "Group", "WorkingDirectory",
             "ExecStart", "EnvironmentFile", "Restart", "RestartSec", "KillSignal", "TimeoutStopSec", "LimitNOFILE",
             "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "ReadWritePaths", "WantedBy"}
    assert {k for s in unit.sections() for k in unit[s]} <= known  # no typo'd key
    assert int(service["RestartSec"]) > 0 and int(service["TimeoutStopSec"]) > 0


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_presets_load_and_say_their_chain(preset: Path) -> None:
    config = load_config(preset, env={})
    assert config.chain.chain_id in (11155111, 11155420)
    assert config.chain.confirmations >= 3 and 0 < config.chain.priority_fee_gwei <= config.chain.max_fee_gwei
    assert config.chain.rpc.endswith(".invalid")  # a placeholder, never a real provider
    assert config.ocpp.security_profile == 2


@pytest.mark.parametrize(("key", "value", "message"), [
    ("chain_id", -1, "config key 'chain.chain_id'"),
    ("max_fee_gwei", 0.0001, "config key 'chain.max_fee_gwei'"),
    ("priority_fee_gwei", 20_000.0, "config key 'chain.priority_fee_gwei'"),
    ("confirmations", 500, "config key 'chain.confirmations'"),
    ("gas_price", 1, "unknown config key 'chain.gas_price'"),
])
def test_a_bad_chain_setting_names_the_key_and_the_fix(key: str, value: object, message: str) -> None:
    data = tomllib.loads(PRESETS[0].read_text())
    data["chain"][key] = value
    with pytest.raises(ConfigError) as info:
        config_from_mapping(data, env={})
    assert message in str(info.value) and "fix:" in str(info.value)


def test_fee_settings_reach_the_transactions() -> None:
    """chain.max_fee_gwei caps maxFeePerGas: a send whose base fee alone is above it fails loudly."""
    from anchoring.chain import ChainError, TransactionSender, connect

    w3 = connect("tester")
    capped = TransactionSender(w3, "0x" + "11" * 32, priority_fee_wei=10**9, max_fee_wei=10**9 - 1,
                               preflight=False)
    with pytest.raises(ChainError, match="chain.max_fee_gwei"):
        capped.send_data(capped.address, b"", gas=21_000)
