"""`devsen node init --dir DIR --network deployment.json`: a new node's directory.

Creates `DIR/keys` (libp2p Ed25519 + validator secp256k1, never overwritten: an existing key
refuses the command), copies the network's deployment file to `DIR/deployment.json`, writes
`DIR/node.toml` with a comment on every key (chain settings from `--preset`, see
deploy/presets/), checks it with the config loader, and prints the on-chain steps the
operator still has to take (fund, stake, be voted in) with the exact commands. It reads
nothing from the chain: it works offline.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

from anchoring.chain.deploy import Deployment
from devsen.config import ConfigError, load_config
from p2p.keys import KeyFileError

PRESETS_DIR = Path(__file__).resolve().parents[1] / "deploy" / "presets"
LOCAL_CHAIN = {"rpc": "http://127.0.0.1:8545", "confirmations": 2, "poll_interval_s": 1.0,
               "priority_fee_gwei": 1.0, "max_fee_gwei": 0.0}
PROG = "devsen node init"


class InitError(ValueError):
    """Why the directory was not created; names the option or file."""


def preset_names() -> list[str]:
    return ["local", *sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))]


def preset_chain(name: str) -> dict[str, Any]:
    """The [chain] settings of preset `name` ("local": a chain on this machine, e.g. anvil)."""
    if name == "local":
        return dict(LOCAL_CHAIN)
    path = PRESETS_DIR / f"{name}.toml"
    if not path.is_file():
        raise InitError(f"--preset: {name!r} is not one of {', '.join(preset_names())}")
    chain = dict(tomllib.loads(path.read_text()).get("chain", {}))
    chain.pop("deployment", None)
    return chain


def _q(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_q(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def render_config(*, name: str, directory: Path, chain: dict[str, Any], chain_id: int, host: str,
                  public_host: str, p2p_port: int, ocpp_port: int, http_port: int, bootstrap: list[str]) -> str:
    """node.toml with a comment on each key."""
    security = 1 if public_host in ("127.0.0.1", "localhost") else 2
    return f"""\
# DEVSEN node configuration written by `devsen node init`. Check it with
#   devsen config check --config {directory / "node.toml"}
# Any key can be overridden by DEVSEN_<SECTION>_<KEY>, e.g. DEVSEN_CHAIN_RPC=https://...

[node]
name = {_q(name)}                    # shown in logs, stamped on the events this node receives
data_dir = {_q(str(directory / "data"))}  # WAL, blocks, ledger snapshots, anchoring queue

[keys]
dir = {_q(str(directory / "keys"))}  # libp2p + validator keys (`devsen node init` made them; back them up)

[p2p]
listen = {_q(f"/ip4/{host}/tcp/{p2p_port}")}  # peers dial /ip4/{public_host}/tcp/{p2p_port}/p2p/<peer id>
bootstrap = {_q(bootstrap)}          # other nodes of the network: /ip4/<host>/tcp/<port>/p2p/12D3KooW...
max_peers = 64                       # connections kept at most

[ocpp]
host = {_q(host)}                    # chargers connect to ws(s)://{public_host}:{ocpp_port}/ocpp/<chargeBoxId>
port = {ocpp_port}
security_profile = {security}                 # 1 HTTP Basic; 2 Basic over TLS (needs tls_cert/tls_key): use 2 in public
tls_cert = ""                        # PEM certificate for profile 2
tls_key = ""                         # PEM key for profile 2
max_connections = 5000
max_frame_bytes = 65536
messages_per_second = 20.0           # per charger connection
call_timeout_s = 30.0

[http]
host = {_q(host)}                    # status, proofs, read API, /metrics
port = {http_port}

[chain]
rpc = {_q(chain.get("rpc", LOCAL_CHAIN["rpc"]))}  # the Ethereum / L2 JSON-RPC endpoint
deployment = {_q(str(directory / "deployment.json"))}  # the network's contracts (copied here)
chain_id = {chain_id}                # the node refuses an RPC or deployment of another chain
confirmations = {chain.get("confirmations", 2)}                    # reads agree on a block this deep
poll_interval_s = {chain.get("poll_interval_s", 1.0)}
priority_fee_gwei = {chain.get("priority_fee_gwei", 1.0)}         # tip per gas of the node's transactions
max_fee_gwei = {chain.get("max_fee_gwei", 0.0)}              # cap per gas (0: none)

[consensus]
timeout_propose_ms = 1000
timeout_vote_ms = 500
timeout_delta_ms = 250

[anchoring]
every_blocks = 20                    # anchor a batch this often (blocks) ...
every_seconds = 30                   # ... or this often (seconds), whichever first
submit_timeout_s = 30.0

[logging]
level = "INFO"
format = "text"                      # or "json" (one object per line, for collectors)
"""


def init_node(directory: Path, network: Path, *, name: str, preset: str, rpc: str | None, host: str,
              public_host: str, p2p_port: int, ocpp_port: int, http_port: int,
              bootstrap: list[str], use_existing_keys: bool = False) -> dict[str, Any]:
    """Create the node directory; InitError (nothing written) or the summary of what was made.
    `use_existing_keys`: a genesis validator made its keys before the network was deployed
    (`devsen keys init`); they are read, never rewritten."""
    from p2p.keys import LIBP2P_KEY_FILE, VALIDATOR_KEY_FILE, init_keys, load_keys

    try:
        deployment = Deployment.load(network)
    except (OSError, ValueError) as exc:
        raise InitError(f"--network: {network}: {exc}") from exc
    keys_dir, config_path = directory / "keys", directory / "node.toml"
    key_files = (keys_dir / LIBP2P_KEY_FILE, keys_dir / VALIDATOR_KEY_FILE)
    if use_existing_keys and not all(p.is_file() for p in key_files):
        raise InitError(f"--use-existing-keys: {keys_dir} does not hold both key files; fix: `devsen keys init "
                        f"--dir {keys_dir}` first, or drop the option to create them")
    existing = [p for p in (*([] if use_existing_keys else key_files), config_path) if p.exists()]
    if existing:
        raise InitError(f"--dir: {', '.join(map(str, existing))} already exist(s); refusing to overwrite keys or "
                        "config (use another --dir, or `devsen keys show --dir` for the existing keys)")
    chain = preset_chain(preset)
    if rpc:
        chain["rpc"] = rpc
    preset_id = int(chain.pop("chain_id", 0) or 0)
    if preset_id and preset_id != deployment.chain_id:
        raise InitError(f"--preset {preset} is chain {preset_id}, the deployment file is for chain "
                        f"{deployment.chain_id}; fix: the preset of the deployment's chain")
    directory.mkdir(parents=True, exist_ok=True)
    keys = load_keys(keys_dir) if use_existing_keys else init_keys(keys_dir)
    shutil.copyfile(network, directory / "deployment.json")
    text = render_config(name=name, directory=directory.resolve(), chain=chain, chain_id=deployment.chain_id,
                         host=host, public_host=public_host, p2p_port=p2p_port, ocpp_port=ocpp_port,
                         http_port=http_port, bootstrap=bootstrap)
    tmp = config_path.with_name("node.toml.tmp")
    tmp.write_text(text)
    try:
        load_config(tmp, env={})
    except ConfigError as exc:
        tmp.unlink()
        raise InitError(f"the written config does not load: {exc}") from exc
    tmp.replace(config_path)
    from primitives.eip712 import to_checksum_hex

    return {
        "directory": str(directory), "config": str(config_path), "keys": str(keys_dir),
        "validator_address": to_checksum_hex(keys.validator.address),
        "peer_id": keys.peer_id.to_base58(), "chain_id": deployment.chain_id,
        "validator_set": deployment.validator_set, "charge_token": deployment.charge_token,
        "rpc": chain.get("rpc", LOCAL_CHAIN["rpc"]),
        "multiaddr": f"/ip4/{public_host}/tcp/{p2p_port}/p2p/{keys.peer_id.to_base58()}",
        "ocpp_endpoint": f"ws://{public_host}:{ocpp_port}/ocpp",
    }


def next_steps(summary: dict[str, Any]) -> str:
    """The on-chain steps still to take, as commands."""
    common = f"--keys {summary['keys']} --network {summary['directory']}/deployment.json --rpc {summary['rpc']}"
    return f"""\
node directory {summary['directory']} is ready:
  validator address  {summary['validator_address']}
  libp2p peer id     {summary['peer_id']}
  peers dial         {summary['multiaddr']}
  config             {summary['config']}   (check: devsen config check --config {summary['config']})

On-chain steps still to take (chain {summary['chain_id']}, ValidatorSet {summary['validator_set']}):
  1. Fund {summary['validator_address']} with ETH for gas: it sends anchors, settlements and
     double-sign evidence.
  2. Hold the minimum stake in ChargeToken ({summary['charge_token']}) on that address, then bond it
     and announce the candidacy (see the minimum with `devsen stake show {common}`):
       devsen stake register {common} \\
         --peer-id {summary['peer_id']} --endpoint {summary['ocpp_endpoint']}
  3. Ask the current validators to vote you in: each of a quorum (floor(2n/3)+1) runs
       devsen stake sign-update --keys THEIR_KEYS --network deployment.json --rpc RPC --add {summary['validator_address']}
     and sends you its JSON line (one file each); anyone submits them:
       devsen stake submit-update {common} --epoch E --validators A,B,... --signatures f1.json,f2.json,...
  4. Start the node: devsen node --config {summary['config']}
     It votes from the epoch boundary: the first block that names the Ethereum block holding the change.
  To leave later: a quorum signs `sign-update --remove {summary['validator_address']}`; once it landed,
  `devsen stake unbond {common}`, and after the unbonding period `devsen stake withdraw {common}`.
  Or run a full node that accepts chargers instead (no vote needed): set role = "full" and
  accept_chargers = true in [node], fund the address with the minimum operator stake
  (ValidatorSet minOperatorStake, shown by `devsen stake show`), and register it as an operator:
       devsen stake register-operator {common} \\
         --peer-id {summary['peer_id']} --endpoint {summary['ocpp_endpoint']}
"""


def node_init_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, type=Path, help="the node directory to create")
    parser.add_argument("--network", required=True, type=Path, help="the network's deployment.json")
    parser.add_argument("--name", default="", help="node name (default: the directory's name)")
    parser.add_argument("--preset", default="local", help=f"chain settings: {', '.join(preset_names())}")
    parser.add_argument("--rpc", default=None, help="JSON-RPC URL (default: the preset's)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    parser.add_argument("--public-host", default="", help="address peers and chargers reach (default: --host)")
    parser.add_argument("--p2p-port", type=int, default=4001)
    parser.add_argument("--ocpp-port", type=int, default=9000)
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--bootstrap", action="append", default=[], help="a peer multiaddr (repeatable)")
    parser.add_argument("--use-existing-keys", action="store_true",
                        help="read DIR/keys made earlier with `devsen keys init` (a genesis validator); never rewritten")
    parser.add_argument("--json", action="store_true", help="the summary as JSON")
    args = parser.parse_args(argv)
    try:
        summary = init_node(args.dir, args.network, name=args.name or args.dir.resolve().name, preset=args.preset,
                            rpc=args.rpc, host=args.host, public_host=args.public_host or args.host,
                            p2p_port=args.p2p_port, ocpp_port=args.ocpp_port, http_port=args.http_port,
                            bootstrap=args.bootstrap, use_existing_keys=args.use_existing_keys)
    except (InitError, OSError, KeyFileError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2) if args.json else next_steps(summary), end="" if not args.json else "\n")
    return 0
