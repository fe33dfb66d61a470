"""Node config: valid files load, every kind of bad input names the key and the fix."""

from pathlib import Path
from typing import Any

import pytest

from devsen.config import ConfigError, config_from_mapping, config_to_toml, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "node.example.toml"


def test_example_config_loads_with_documented_defaults() -> None:
    config = load_config(EXAMPLE, env={})
    assert config.node.name == "node-1"
    assert config.ocpp.port == 9000 and config.ocpp.security_profile == 1
    assert config.chain.rpc == "http://127.0.0.1:8545"
    assert config.keys_dir == Path("./var/node-1") / "keys"


def test_empty_config_gives_defaults_and_round_trips_through_toml(tmp_path: Path) -> None:
    config = config_from_mapping({}, env={})
    path = tmp_path / "node.toml"
    path.write_text(config_to_toml(config))
    assert load_config(path, env={}) == config


@pytest.mark.parametrize(
    ("data", "must_mention"),
    [
        ({"ocpp": {"prot": 9000}}, "ocpp.prot"),
        ({"ocpp": {"port": "9000"}}, "ocpp.port"),
        ({"ocpp": {"port": 70000}}, "ocpp.port"),
        ({"ocpp": {"port": True}}, "ocpp.port"),
        ({"ocpp": {"security_profile": 3}}, "ocpp.security_profile"),
        ({"ocpp": {"security_profile": 2}}, "ocpp.tls_cert"),
        ({"chain": {"rpc": "ftp://x"}}, "chain.rpc"),
        ({"chain": {"confirmations": -1}}, "chain.confirmations"),
        ({"p2p": {"bootstrap": "/ip4/1.2.3.4/tcp/1"}}, "p2p.bootstrap"),
        ({"p2p": {"bootstrap": ["/ip4/127.0.0.1/tcp/4002"]}}, "p2p.bootstrap"),
        ({"p2p": {"listen": "127.0.0.1:4001"}}, "p2p.listen"),
        ({"p2p": {"state_sync": True}}, "p2p.state_sync"),  # no bootstrap peers to sync from
        ({"p2p": {"state_sync": "yes"}}, "p2p.state_sync"),
        ({"logging": {"format": "xml"}}, "logging.format"),
        ({"consensus": {"max_block_payloads": 0}}, "consensus.max_block_payloads"),
        ({"consensus": {"timeout_per_payload_ms": -1}}, "consensus.timeout_per_payload_ms"),
        ({"consensus": {"timeout_size_cap_ms": 10**9}}, "consensus.timeout_size_cap_ms"),
        ({"consensus": {"block_interval_ms": 501}}, "consensus.block_interval_ms"),  # above timeout_propose_ms / 2
        ({"consensus": {"block_interval_ms": -1}}, "consensus.block_interval_ms"),
        ({"consensus": {"mempool_max_payloads": 10}}, "consensus.mempool_max_payloads"),
        ({"anchoring": {"every_blocks": 0}}, "anchoring.every_blocks"),
        ({"nodes": {}}, "[nodes]"),
        ({"node": "x"}, "node"),
        ({"node": {"accept_chargers": True}}, "node.accept_chargers"),  # a validator always accepts chargers
        ({"node": {"role": "full", "accept_chargers": "yes"}}, "node.accept_chargers"),
    ],
)
def test_bad_values_name_the_key_and_a_fix(data: dict[str, Any], must_mention: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(data, env={})
    message = str(info.value)
    assert must_mention in message
    assert "fix" in message or "must be a [section]" in message


def test_environment_overrides_selected_keys() -> None:
    env = {"DEVSEN_OCPP_PORT": "9100", "DEVSEN_CHAIN_RPC": "embedded",
           "DEVSEN_P2P_BOOTSTRAP": "/ip4/127.0.0.1/tcp/1/p2p/A, /ip4/127.0.0.1/tcp/2/p2p/B",
           "DEVSEN_OCPP_MESSAGES_PER_SECOND": "5.5"}
    config = config_from_mapping({"ocpp": {"port": 9000}}, env=env)
    assert config.ocpp.port == 9100
    assert config.chain.rpc == "embedded"
    assert config.p2p.bootstrap == ["/ip4/127.0.0.1/tcp/1/p2p/A", "/ip4/127.0.0.1/tcp/2/p2p/B"]
    assert config.ocpp.messages_per_second == 5.5


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="DEVSEN_OCPP_PORT"):
        config_from_mapping({}, env={"DEVSEN_OCPP_PORT": "ninety"})


def test_missing_file_and_broken_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml", env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[ocpp\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken, env={})


def test_node_role_defaults_to_validator_and_accepts_full() -> None:
    assert config_from_mapping({}, env={}).node.role == "validator"
    assert config_from_mapping({"node": {"role": "full"}}, env={}).node.role == "full"
    assert config_from_mapping({}, env={"DEVSEN_NODE_ROLE": "full"}).node.role == "full"


@pytest.mark.parametrize("role", ["Full", "observer", "", "validator "])
def test_a_bad_node_role_names_the_key_and_the_fix(role: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"node": {"role": role}}, env={})
    message = str(info.value)
    assert "node.role" in message and 'role = "full"' in message and 'role = "validator"' in message


def test_a_bad_node_role_from_the_environment_is_refused_too() -> None:
    with pytest.raises(ConfigError, match="node.role"):
        config_from_mapping({}, env={"DEVSEN_NODE_ROLE": "archive"})


def test_a_non_string_node_role_is_refused() -> None:
    with pytest.raises(ConfigError, match="node.role"):
        config_from_mapping({"node": {"role": 1}}, env={})
