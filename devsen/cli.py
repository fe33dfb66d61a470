"""The `devsen` command: run a node or a local devnet, manage keys, deploy contracts, act as
a wallet, audit events against the chain, show a node's status.

Subcommands import their implementation lazily, so `devsen --help` is instant. A
subcommand whose implementation is absent says so and exits 2; nothing pretends to work.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any

from devsen import __version__
from devsen.config import ConfigError, config_to_toml, load_config

EXIT_NOT_BUILT = 2

# subcommand -> (module, function taking argv and returning an exit code, one-line help)
DELEGATED: dict[str, tuple[str, str, str]] = {
    "devnet": ("devsen.devnet", "devnet_main",
               "start a local multi-node network on a local chain (anvil) and keep it running; "
               "`devsen devnet status`, `devsen devnet node stop|start|restart N`"),
    "chain": ("anchoring.chain.deploy", "deploy_main",
              "chain tools: `devsen chain deploy --rpc URL --validators ... --out deployment.json`"),
    "wallet": ("devsen.wallet", "wallet_main",
               "act on chain as a device owner or driver: register a device or idTag, deposit, request a session"),
    "charger": ("devsen.charger_cli", "charger_main",
                "operate a charger as its device manager through the network: `devsen charger config get CP-42`, "
                "`devsen charger reset CP-42 --hard`, `devsen charger unlock CP-42 1`, ..."),
    "audit": ("devsen.session_audit", "audit_main",
              "verify a charger event against the chain: `devsen audit verify EVENT_ID --node URL --rpc URL`; "
              "a settlement from the meter's signatures: `devsen audit session SESSION_ID ...`"),
    "ocpi": ("devsen.ocpi.cli", "ocpi_main",
             "OCPI roaming partners: `devsen ocpi token create --config FILE` (a registration token), "
             "`devsen ocpi parties --config FILE`"),
    "ocpp-serve": ("ocpp_adapter.standalone", "run_standalone",
                   "run the OCPP endpoint alone with an in-memory ingest (for charger bring-up)"),
    "stake": ("devsen.stake_cli", "stake_main",
              "a validator's on-chain steps: `devsen stake show|register|sign-update|submit-update|unbond|withdraw`"),
    "evidence": ("devsen.slashing", "evidence_main",
                 "double-sign evidence: `devsen evidence check|submit --votes FILE --network deployment.json "
                 "--rpc URL`"),
    "simulate": ("devsen.simulate", "simulate_main",
                 "OCPP load generator: N chargers (1.6/2.0.1) in full sessions against CSMS URLs, open or closed "
                 "loop: `devsen simulate --url ws://HOST:PORT --chargers 100 --rate 500 --closed --json`"),
    "sim": ("consensus.sim", "main",
            "run the deterministic consensus simulator: `devsen sim --seeds 1000`"),
}


def _load(module_name: str, function_name: str) -> Callable[..., Any] | None:
    """The function `module_name.function_name`, or None if that module is not built."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            return None
        raise
    function = getattr(module, function_name, None)
    return function if callable(function) else None


def _run_delegated(name: str, argv: list[str]) -> int:
    module_name, function_name, _ = DELEGATED[name]
    function = _load(module_name, function_name)
    if function is None:
        print(f"devsen {name}: not built yet ({module_name}.{function_name} is missing)", file=sys.stderr)
        return EXIT_NOT_BUILT
    if inspect.iscoroutinefunction(function):
        import trio

        return int(trio.run(function, argv) or 0)
    return int(function(argv) or 0)


def _cmd_node(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"devsen node: {exc}", file=sys.stderr)
        return 2
    run = _load("devsen.node", "run_node")
    if run is None:
        print("devsen node: not built yet (devsen.node.run_node is missing)", file=sys.stderr)
        return EXIT_NOT_BUILT
    return int(run(config, log_format=args.log_format, log_level=args.log_level) or 0)


def _cmd_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"devsen config check: {exc}", file=sys.stderr)
        return 2
    print(config_to_toml(config), end="")
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    function_name = "init_keys" if args.keys_command == "init" else "load_keys"
    function = _load("p2p.keys", function_name)
    if function is None:
        print(f"devsen keys: not built yet (p2p.keys.{function_name} is missing)", file=sys.stderr)
        return EXIT_NOT_BUILT
    try:
        node_keys = function(args.dir)
    except (FileExistsError, FileNotFoundError) as exc:
        print(f"devsen keys {args.keys_command}: {exc}", file=sys.stderr)
        return 1
    print(f"validator address: 0x{node_keys.validator.address.hex()}")
    print(f"libp2p peer id:    {node_keys.peer_id}")
    return 0


def format_node_status(status: dict[str, Any]) -> str:
    """`devsen status` for people: what a node sees, one line per concern."""
    from devsen.fmt import duration

    def get(*path: str, default: Any = "-") -> Any:
        value: Any = status
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return default
            value = value[key]
        return value

    seen = get("validators_seen", default=[])
    validator_set = get("validator_set", default=[])
    unreachable = get("peers", "unreachable", default=[])
    head, agreed, lag = get("chain", "head"), get("chain", "agreed_block"), get("chain", "lag_blocks")
    consensus = get("consensus", default={})
    lines = [
        f"node        {get('node')}  validator {get('validator')}  up {duration(float(get('uptime_s', default=0)))}",
        f"height      {get('committed_height')}  (epoch {get('epoch')}, round {consensus.get('round', '-')}, "
        f"mempool {consensus.get('mempool', '-')}, state {str(get('app_state_hash'))[:18]}...)",
        f"peers       {get('peers', 'connected')} connected"
        + (f"; unreachable: {', '.join(unreachable)}" if unreachable else ""),
        f"validators  {len(seen)} of {len(validator_set) or get('validators')} seen (self + linked): "
        + ", ".join(seen),
        f"chargers    {get('chargers_connected')} connected",
        f"pending     anchors {get('pending', 'anchors')}, settlements {get('pending', 'settlements')} "
        f"(quorums waiting for their transaction); own attestations {get('pending', 'own_attestations')}",
        f"chain       head {head}, agreed block {agreed}, lag {lag} blocks "
        f"(reads wait {get('chain', 'confirmations')} confirmations); RPC {get('chain', 'rpc')}",
        f"peer id     {get('peer_id')}",
    ]
    return "\n".join(lines)


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    import trio

    from devsen.http_api import http_get_json

    url = args.node.rstrip("/")
    try:
        code, body = trio.run(http_get_json, url + "/v1/status", args.timeout)
    except (OSError, ValueError, IndexError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        print(f"devsen status: {url} did not answer ({type(exc).__name__}: {exc}); is the node running? "
              "(`devsen devnet status` lists a devnet's HTTP URLs)", file=sys.stderr)
        return 1
    if code != 200 or not isinstance(body, dict):
        print(f"devsen status: {url}/v1/status answered {code}: {body}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2) if args.json else format_node_status(body))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `devsen` (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="devsen",
        description="DEVSEN: a decentralized charging-station management network (OCPP + BFT + Ethereum).",
    )
    parser.add_argument("--version", action="version", version=f"devsen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    node = sub.add_parser("node", help="run a node: `devsen node --config node.toml`; create one: "
                          "`devsen node init --dir DIR --network deployment.json`")
    node.add_argument("--config", required=True, help="path of the node's TOML config")
    node.add_argument("--log-format", choices=("text", "json"), default=None,
                      help="override logging.format")
    node.add_argument("--log-level", default=None, help="override logging.level")
    node.set_defaults(handler=_cmd_node)

    config = sub.add_parser("config", help="check a node config: `devsen config check --config node.toml`")
    config.add_argument("config_command", choices=("check",))
    config.add_argument("--config", required=True)
    config.set_defaults(handler=_cmd_config)

    keys = sub.add_parser("keys", help="create or show a node's keys (libp2p Ed25519 + validator secp256k1)")
    keys.add_argument("keys_command", choices=("init", "show"))
    keys.add_argument("--dir", required=True, help="key directory (the node's keys.dir)")
    keys.set_defaults(handler=_cmd_keys)

    status = sub.add_parser("status", help="what a running node sees: `devsen status --node http://HOST:HTTP_PORT`")
    status.add_argument("--node", required=True, help="the node's HTTP API URL")
    status.add_argument("--json", action="store_true", help="the node's /v1/status document as is")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    status.set_defaults(handler=_cmd_status)

    for name, (_, _, help_text) in DELEGATED.items():
        delegated = sub.add_parser(name, help=help_text, add_help=False)
        delegated.add_argument("rest", nargs=argparse.REMAINDER)
        delegated.set_defaults(delegated=name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `devsen` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in DELEGATED:
        return _run_delegated(argv[0], argv[1:])
    if argv[:2] == ["node", "init"]:
        from devsen.node_init import node_init_main

        return node_init_main(argv[2:])
    args = parser.parse_args(argv)
    if getattr(args, "delegated", None):
        return _run_delegated(args.delegated, args.rest)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
