"""Node configuration: a TOML file loaded into typed, validated dataclasses.

`load_config(path)` rejects unknown sections and keys, wrong types and out-of-range values
with a `ConfigError` that names the key and says how to fix it. Any scalar key can be
overridden from the environment as `DEVSEN_<SECTION>_<KEY>` (upper case), e.g.
`DEVSEN_CHAIN_RPC=http://127.0.0.1:8545` or `DEVSEN_OCPP_PORT=9001`; lists take
comma-separated values.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "DEVSEN_"
ROLE_VALIDATOR = "validator"
ROLE_FULL = "full"
ROLES = (ROLE_VALIDATOR, ROLE_FULL)


class ConfigError(ValueError):
    """A configuration problem, phrased for the operator: which key, what is wrong, the fix."""


@dataclass(frozen=True)
class NodeSection:
    """Identity and storage of this node."""

    name: str = "node"
    data_dir: str = "./var/node"
    # "validator": proposes, votes and signs (its key must be in the on-chain ValidatorSet);
    # "full": follows the chain by block sync, verifies every commit certificate, serves reads,
    # never signs a consensus message, needs no validator key, opens no OCPP port...
    role: str = "validator"
    # ...unless `accept_chargers` (role "full" only): it then opens the OCPP port, vouches for its
    # chargers' events with the key in keys/validator_secp256k1.key (registered on chain as an
    # operator: ValidatorSet.registerOperator, `devsen stake register-operator`) and relays them to
    # the validators. Validators always accept chargers.
    accept_chargers: bool = False

    def validate(self) -> None:
        _require(self.role in ROLES, "node.role", f"{self.role!r} is not a node role (one of {', '.join(ROLES)})",
                 'role = "validator" (a registered validator) or role = "full" (a non-validator node)')
        _require(not self.accept_chargers or self.role == ROLE_FULL, "node.accept_chargers",
                 "is for full nodes (a validator always accepts chargers)",
                 'remove accept_chargers, or role = "full"')
        _require(bool(self.name.strip()), "node.name", "must not be empty", 'name = "node-1"')
        _require(bool(self.data_dir.strip()), "node.data_dir", "must not be empty", 'data_dir = "./var/node-1"')


@dataclass(frozen=True)
class KeysSection:
    """Where the node's keys live (`devsen keys init` creates them)."""

    dir: str = ""  # empty: <data_dir>/keys

    def validate(self) -> None:
        return None


@dataclass(frozen=True)
class P2PSection:
    """libp2p: where to listen and whom to dial first."""

    listen: str = "/ip4/127.0.0.1/tcp/4001"
    bootstrap: list[str] = field(default_factory=list)
    max_peers: int = 64
    # A node with an empty block store joins by state sync from its bootstrap peers
    # (devsen/state_sync.py) instead of replaying every block from genesis.
    state_sync: bool = False

    def validate(self) -> None:
        _require(self.listen.startswith("/ip4/") or self.listen.startswith("/ip6/"),
                 "p2p.listen", f"{self.listen!r} is not an IP multiaddr",
                 'listen = "/ip4/127.0.0.1/tcp/4001"')
        for entry in self.bootstrap:
            _require("/p2p/" in entry, "p2p.bootstrap", f"{entry!r} lacks a /p2p/<peer id> part",
                     'bootstrap = ["/ip4/127.0.0.1/tcp/4002/p2p/12D3Koo..."]')
        _require(1 <= self.max_peers <= 1024, "p2p.max_peers", f"{self.max_peers} is out of 1..1024",
                 "max_peers = 64")
        _require(not self.state_sync or bool(self.bootstrap), "p2p.state_sync",
                 "state sync needs peers to fetch the snapshot from, and p2p.bootstrap is empty",
                 'bootstrap = ["/ip4/127.0.0.1/tcp/4002/p2p/12D3Koo..."], or state_sync = false')


@dataclass(frozen=True)
class OcppSection:
    """The OCPP-J endpoint chargers connect to: ws(s)://host:port/ocpp/{chargeBoxId}."""

    host: str = "127.0.0.1"
    port: int = 9000
    security_profile: int = 1
    tls_cert: str = ""
    tls_key: str = ""
    max_connections: int = 5000
    max_frame_bytes: int = 65536
    messages_per_second: float = 20.0
    call_timeout_s: float = 30.0

    def validate(self) -> None:
        _check_port("ocpp.port", self.port)
        _require(self.security_profile in (0, 1, 2), "ocpp.security_profile",
                 f"{self.security_profile} is not 0, 1 or 2",
                 "security_profile = 1 (HTTP Basic auth) or 2 (Basic auth over TLS)")
        if self.security_profile == 2:
            _require(bool(self.tls_cert and self.tls_key), "ocpp.tls_cert",
                     "security profile 2 needs both tls_cert and tls_key",
                     'tls_cert = "/etc/devsen/cert.pem" and tls_key = "/etc/devsen/key.pem"')
        _require(1 <= self.max_connections <= 100_000, "ocpp.max_connections",
                 f"{self.max_connections} is out of 1..100000", "max_connections = 5000")
        _require(1024 <= self.max_frame_bytes <= 16 * 1024 * 1024, "ocpp.max_frame_bytes",
                 f"{self.max_frame_bytes} is out of 1024..16777216", "max_frame_bytes = 65536")
        _require(0 < self.messages_per_second <= 10_000, "ocpp.messages_per_second",
                 f"{self.messages_per_second} is out of (0, 10000]", "messages_per_second = 20")
        _require(0 < self.call_timeout_s <= 600, "ocpp.call_timeout_s",
                 f"{self.call_timeout_s} is out of (0, 600]", "call_timeout_s = 30")


@dataclass(frozen=True)
class HttpSection:
    """The node's HTTP API (status, proofs for auditors)."""

    host: str = "127.0.0.1"
    port: int = 8080

    def validate(self) -> None:
        _check_port("http.port", self.port)


@dataclass(frozen=True)
class ChainSection:
    """The Ethereum chain the network anchors to and reads registries from."""

    rpc: str = "http://127.0.0.1:8545"
    deployment: str = "./deployment.json"
    confirmations: int = 2
    poll_interval_s: float = 1.0
    chain_id: int = 0  # 0: whatever the deployment file says; else the RPC and the deployment must match it
    priority_fee_gwei: float = 1.0  # EIP-1559 tip of every transaction the node sends
    max_fee_gwei: float = 0.0  # cap on maxFeePerGas (0: 2 x base fee + tip, uncapped)

    def validate(self) -> None:
        _require(self.rpc == "embedded" or self.rpc.startswith(("http://", "https://")),
                 "chain.rpc", f"{self.rpc!r} is neither an http(s) URL nor 'embedded'",
                 'rpc = "http://127.0.0.1:8545"')
        _require(0 <= self.confirmations <= 128, "chain.confirmations",
                 f"{self.confirmations} is out of 0..128", "confirmations = 2")
        _require(0.05 <= self.poll_interval_s <= 60, "chain.poll_interval_s",
                 f"{self.poll_interval_s} is out of [0.05, 60]", "poll_interval_s = 1.0")
        _require(0 <= self.chain_id < 1 << 63, "chain.chain_id", f"{self.chain_id} is not a chain id",
                 "chain_id = 11155111 (Sepolia), or 0 to take the deployment file's")
        _require(0 <= self.priority_fee_gwei <= 10_000, "chain.priority_fee_gwei",
                 f"{self.priority_fee_gwei} is out of [0, 10000] gwei", "priority_fee_gwei = 1.0")
        _require(self.max_fee_gwei == 0 or self.priority_fee_gwei <= self.max_fee_gwei <= 100_000,
                 "chain.max_fee_gwei", f"{self.max_fee_gwei} gwei is below the tip "
                 f"({self.priority_fee_gwei} gwei) or above 100000", "max_fee_gwei = 0 (no cap) or at least the tip")

    @property
    def priority_fee_wei(self) -> int:
        return round(self.priority_fee_gwei * 10**9)

    @property
    def max_fee_wei(self) -> int | None:
        """The cap on maxFeePerGas in wei; None when uncapped."""
        return round(self.max_fee_gwei * 10**9) or None


@dataclass(frozen=True)
class ConsensusSection:
    """Timeouts and limits of the BFT protocol."""

    timeout_propose_ms: int = 1000
    timeout_vote_ms: int = 500
    timeout_delta_ms: int = 250
    # Blocks beyond 64 payloads get this much more per payload on each timeout, at most
    # timeout_size_cap_ms (consensus/CONSENSUS.md "Timeouts and block size", issue 16).
    timeout_per_payload_ms: int = 2
    timeout_size_cap_ms: int = 10_000
    # A proposer waits at least this long after the last commit before it proposes (CometBFT's
    # timeout_commit): larger blocks under load, less CPU per event, this much more latency.
    block_interval_ms: int = 10
    max_block_payloads: int = 2000
    max_block_bytes: int = 4 * 1024 * 1024
    mempool_max_payloads: int = 20000

    def validate(self) -> None:
        for key in ("timeout_propose_ms", "timeout_vote_ms", "timeout_delta_ms"):
            value = getattr(self, key)
            _require(10 <= value <= 600_000, f"consensus.{key}", f"{value} is out of 10..600000 ms",
                     f"{key} = 1000")
        _require(0 <= self.timeout_per_payload_ms <= 100, "consensus.timeout_per_payload_ms",
                 f"{self.timeout_per_payload_ms} is out of 0..100 ms", "timeout_per_payload_ms = 2")
        _require(0 <= self.timeout_size_cap_ms <= 600_000, "consensus.timeout_size_cap_ms",
                 f"{self.timeout_size_cap_ms} is out of 0..600000 ms", "timeout_size_cap_ms = 10000")
        _require(0 <= self.block_interval_ms <= self.timeout_propose_ms // 2, "consensus.block_interval_ms",
                 f"{self.block_interval_ms} is out of 0..timeout_propose_ms / 2 ({self.timeout_propose_ms // 2}) ms: "
                 "a longer wait would let the propose timeout fire before the proposal", "block_interval_ms = 10")
        _require(1 <= self.max_block_payloads <= 100_000, "consensus.max_block_payloads",
                 f"{self.max_block_payloads} is out of 1..100000", "max_block_payloads = 2000")
        _require(1024 <= self.max_block_bytes <= 64 * 1024 * 1024, "consensus.max_block_bytes",
                 f"{self.max_block_bytes} is out of 1 KiB..64 MiB", "max_block_bytes = 4194304")
        _require(self.mempool_max_payloads >= self.max_block_payloads, "consensus.mempool_max_payloads",
                 "must be at least consensus.max_block_payloads",
                 f"mempool_max_payloads = {10 * self.max_block_payloads}")


@dataclass(frozen=True)
class AnchoringSection:
    """When batches of committed events are anchored on chain."""

    every_blocks: int = 20
    every_seconds: int = 30
    submit_timeout_s: float = 30.0
    # settlement orders of this many consecutive blocks go in one quorum-signed settleBatch;
    # must be the same on every node of a network (else no batch reaches a quorum)
    settle_every_blocks: int = 4

    def validate(self) -> None:
        _require(1 <= self.every_blocks <= 100_000, "anchoring.every_blocks",
                 f"{self.every_blocks} is out of 1..100000", "every_blocks = 20")
        _require(1 <= self.every_seconds <= 86_400, "anchoring.every_seconds",
                 f"{self.every_seconds} is out of 1..86400", "every_seconds = 30")
        _require(1 <= self.submit_timeout_s <= 3600, "anchoring.submit_timeout_s",
                 f"{self.submit_timeout_s} is out of 1..3600", "submit_timeout_s = 30")
        _require(1 <= self.settle_every_blocks <= 1_000, "anchoring.settle_every_blocks",
                 f"{self.settle_every_blocks} is out of 1..1000", "settle_every_blocks = 4")


@dataclass(frozen=True)
class LoggingSection:
    """Log level and format (text for people, json for collectors)."""

    level: str = "INFO"
    format: str = "text"

    def validate(self) -> None:
        _require(self.level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), "logging.level",
                 f"{self.level!r} is not a log level", 'level = "INFO" (DEBUG, INFO, WARNING, ERROR)')
        _require(self.format in ("text", "json"), "logging.format", f"{self.format!r} is unknown",
                 'format = "text" or "json"')


OCPI_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]{16,64}$")


@dataclass(frozen=True)
class OcpiSection:
    """The OCPI 2.2.1 CPO interface (devsen/ocpi/README.md): who we are to roaming partners."""

    enabled: bool = True
    country_code: str = "DE"  # ISO 3166-1 alpha-2 of the CPO party
    party_id: str = "DVS"  # the CPO's 3-character party id (eMI3)
    business_name: str = "DEVSEN"
    country: str = "DEU"  # ISO 3166-1 alpha-3 of the locations (the on-chain location may name its own)
    time_zone: str = "Europe/Berlin"  # IANA zone of the locations
    currency: str = "EUR"  # ISO 4217 code that 1 DCT (6 decimals) is priced in
    public_url: str = ""  # base URL partners reach this node at; empty: from the request's Host
    registration_token: str = ""  # a CREDENTIALS_TOKEN_A accepted once (or `devsen ocpi token create`)
    max_parties: int = 1_000

    def validate(self) -> None:
        _require(bool(re.fullmatch(r"[A-Z]{2}", self.country_code)), "ocpi.country_code",
                 f"{self.country_code!r} is not an ISO 3166-1 alpha-2 code", 'country_code = "DE"')
        _require(bool(re.fullmatch(r"[A-Z0-9]{3}", self.party_id)), "ocpi.party_id",
                 f"{self.party_id!r} is not 3 capital letters or digits", 'party_id = "DVS"')
        _require(0 < len(self.business_name) <= 100, "ocpi.business_name",
                 "must be 1..100 characters", 'business_name = "DEVSEN"')
        _require(bool(re.fullmatch(r"[A-Z]{3}", self.country)), "ocpi.country",
                 f"{self.country!r} is not an ISO 3166-1 alpha-3 code", 'country = "DEU"')
        _require(bool(re.fullmatch(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+){0,2}", self.time_zone))
                 and len(self.time_zone) <= 255, "ocpi.time_zone",
                 f"{self.time_zone!r} is not an IANA time zone name", 'time_zone = "Europe/Berlin"')
        _require(bool(re.fullmatch(r"[A-Z]{3}", self.currency)), "ocpi.currency",
                 f"{self.currency!r} is not an ISO 4217 code", 'currency = "EUR"')
        _require(self.public_url == "" or bool(re.fullmatch(r"https?://[\x21-\x7e]{1,200}", self.public_url)),
                 "ocpi.public_url", f"{self.public_url!r} is not an http(s) URL",
                 'public_url = "https://node.example.org" (or leave it empty)')
        _require(self.registration_token == "" or bool(OCPI_TOKEN_CHARS.fullmatch(self.registration_token)),
                 "ocpi.registration_token", "must be 16..64 printable ASCII characters without spaces",
                 "run `devsen ocpi token create --config FILE` instead, or leave it empty")
        _require(1 <= self.max_parties <= 100_000, "ocpi.max_parties",
                 f"{self.max_parties} is out of 1..100000", "max_parties = 1000")


@dataclass(frozen=True)
class NodeConfig:
    """The whole node configuration, one attribute per TOML section."""

    node: NodeSection = field(default_factory=NodeSection)
    keys: KeysSection = field(default_factory=KeysSection)
    p2p: P2PSection = field(default_factory=P2PSection)
    ocpp: OcppSection = field(default_factory=OcppSection)
    http: HttpSection = field(default_factory=HttpSection)
    chain: ChainSection = field(default_factory=ChainSection)
    consensus: ConsensusSection = field(default_factory=ConsensusSection)
    anchoring: AnchoringSection = field(default_factory=AnchoringSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    ocpi: OcpiSection = field(default_factory=OcpiSection)

    @property
    def keys_dir(self) -> Path:
        """The key directory: `keys.dir`, or `<node.data_dir>/keys`."""
        return Path(self.keys.dir) if self.keys.dir else Path(self.node.data_dir) / "keys"


def _require(ok: bool, key: str, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {problem}; fix: {fix}")


def _check_port(key: str, port: int) -> None:
    _require(0 <= port <= 65535, key, f"{port} is not a TCP port", f"{key.split('.')[-1]} = 9000 (0 picks a free port)")


def _describe(tp: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        tp, "a list of strings"
    )


def _coerce(key: str, tp: Any, value: Any, *, from_env: bool) -> Any:
    """Check (TOML) or parse (environment) one value against the declared field type."""
    origin = typing.get_origin(tp)
    if origin is list:
        if from_env:
            return [item.strip() for item in str(value).split(",") if item.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config key '{key}': expected a list of strings, got {value!r}; "
                              f'fix: {key.split(".")[-1]} = ["..."]')
        return list(value)
    if from_env:
        try:
            if tp is bool:
                lowered = str(value).lower()
                if lowered not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return lowered in ("1", "true", "yes")
            return tp(value)
        except ValueError:
            raise ConfigError(
                f"environment {ENV_PREFIX}{key.replace('.', '_').upper()}={value!r}: "
                f"expected {_describe(tp)}"
            ) from None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"config key '{key}': expected {_describe(tp)}, got {value!r}; "
                          f"fix: write it as {_describe(tp)}")
    return value


def _section_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def config_from_mapping(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> NodeConfig:
    """Build and validate a NodeConfig from parsed TOML data plus environment overrides."""
    env = os.environ if env is None else env
    section_classes = _section_types(NodeConfig)
    for name in data:
        if name not in section_classes:
            raise ConfigError(
                f"unknown config section [{name}]; fix: use one of "
                + ", ".join(f"[{s}]" for s in section_classes)
            )
    sections: dict[str, Any] = {}
    for section_name, section_cls in section_classes.items():
        raw = data.get(section_name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"config key '{section_name}' must be a [section] table")
        field_types = _section_types(section_cls)
        for key in raw:
            if key not in field_types:
                raise ConfigError(
                    f"unknown config key '{section_name}.{key}'; fix: remove it or use one of: "
                    + ", ".join(field_types)
                )
        values = {k: _coerce(f"{section_name}.{k}", field_types[k], v, from_env=False)
                  for k, v in raw.items()}
        for key, tp in field_types.items():
            env_name = f"{ENV_PREFIX}{section_name}_{key}".upper()
            if env_name in env:
                values[key] = _coerce(f"{section_name}.{key}", tp, env[env_name], from_env=True)
        section = section_cls(**values)
        section.validate()
        sections[section_name] = section
    return NodeConfig(**sections)


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> NodeConfig:
    """Read, parse and validate a node TOML file; errors name the file and the key."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; fix: pass --config PATH "
                          "(see deploy/node.example.toml)") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    try:
        return config_from_mapping(data, env)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_to_toml(config: NodeConfig) -> str:
    """Render a config as TOML (used by the devnet to write one file per node)."""
    lines: list[str] = []
    for section in dataclasses.fields(config):
        lines.append(f"[{section.name}]")
        for key, value in dataclasses.asdict(getattr(config, section.name)).items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


__all__ = [
    "AnchoringSection", "ChainSection", "ConfigError", "ConsensusSection", "HttpSection",
    "KeysSection", "LoggingSection", "ROLES", "ROLE_FULL", "ROLE_VALIDATOR", "NodeConfig", "NodeSection", "OcppSection", "P2PSection",
    "config_from_mapping", "config_to_toml", "load_config",
]
