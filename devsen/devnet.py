"""`devsen devnet`: a local DEVSEN network: anvil, the contracts, N validator node processes.

    devsen devnet [--nodes 4] [--dir ./devnet-data] [--demo] [--duration SECONDS]

1. starts anvil on 127.0.0.1 (one block per second, so confirmations advance),
2. creates each node's keys and deploys the contracts with those validators (address,
   libp2p peer id, OCPP endpoint) in the on-chain ValidatorSet,
3. seeds a demo device (charger `DEMO-CP-1`), a driver with tokens, an idTag and an open
   prepaid escrow session,
4. writes one TOML config per node and starts `devsen node` processes (logs in the data
   directory), waits until all of them serve their HTTP API,
5. with `--demo`: a simulated OCPP 1.6 charger runs a full session at node 2, the network
   commits, anchors and settles it; the StopTransaction event is then audited against the
   chain through node 3 (`devsen audit verify`), and the escrow payout is shown.

Start-up prints a progress line per step with the seconds elapsed. Once the contracts are
deployed, `DIR/devnet.json` holds everything needed next (chain URL, deployment, each node's
OCPP/HTTP URLs, pids and logs, and two named dev accounts, a manager and a driver, whose
keys are in `DIR/accounts/`); `devsen devnet status` shows it and `devsen devnet node
stop|start|restart N` controls one node (devsen/devnet_state.py).

It runs until Ctrl-C, SIGTERM (or `--duration`), then stops every process it started, by
pid, including nodes restarted since, and prints "stopped N processes".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from anchoring.audit import audit_main
from anchoring.chain import (
    ChainClient,
    Deployment,
    StakingParams,
    TransactionSender,
    ValidatorSpec,
    connect,
    deploy_all,
)
from anchoring.chain.anvil import AnvilError, AnvilProcess, start_anvil
from anchoring.chain.client import SessionStatus
from anchoring.chain.deploy import fund_devnet_accounts
from devsen.config import (
    AnchoringSection,
    ChainSection,
    ConsensusSection,
    HttpSection,
    KeysSection,
    NodeConfig,
    NodeSection,
    OcppSection,
    P2PSection,
    config_to_toml,
)
from devsen.demo_charger import connect_demo_charger, demo_meter_key, meter_public_key_der
from devsen.devnet_state import (
    ANVIL_MNEMONIC,
    DEV_ACCOUNTS,
    STATE_VERSION,
    DevnetStateError,
    load_state,
    pid_alive,
    reap_child,
    state_main,
    state_path,
    terminate_pids,
    update_state,
    write_state,
)
from devsen.fmt import iso_time, token_amount
from devsen.http_api import http_get_json
from devsen.ledger.chain import MAX_POWER_W
from devsen.logs import setup_logging
from devsen.session_audit import audit_main as session_audit_main
from devsen.wallet import (
    NETWORK_CONFIRMATIONS,
    ROLE_DEVICE_MANAGER,
    ROLE_DRIVER,
    create_device,
    open_prepaid_session,
    set_meter_key,
    wait_for_confirmations,
)
from p2p.keys import NodeKeys, init_keys

log = logging.getLogger("devsen.devnet")

DEMO_CHARGER = "DEMO-CP-1"
DEMO_PASSWORD = "demo-charger-password-1"  # devnet only; printed so a real charger can use it
DEMO_ID_TAG = "DEMO-TAG-1"
DEMO_DEPOSIT = 10 * 10**6  # ChargeToken base units
DEMO_REWARD_BUDGET = 10 * 10**6  # uptime rewards per epoch, ChargeToken base units
DEMO_PRICE_PER_KWH = 300_000
CHAIN_ID = 31337
STARTUP_TIMEOUT_S = 90.0
ANCHOR_TIMEOUT_S = 120.0
DEV_DRIVER_TOKENS = 100 * 10**6  # minted to the named dev driver account
DEVNET_STAKE = 1_000 * 10**6  # ValidatorSet.minStake and minOperatorStake on a devnet; bonded for each bootstrap validator
DEVNET_UNBONDING_S = 300  # seconds from beginUnbonding to withdraw on a devnet
DEFAULT_DIR = Path("devnet-data").absolute()


@dataclass
class DevnetNode:
    """One node of the devnet: its config, keys and process."""

    index: int
    config: NodeConfig
    keys: NodeKeys
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.config.http.port}"

    @property
    def ocpp_url(self) -> str:
        return f"ws://127.0.0.1:{self.config.ocpp.port}/ocpp"


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (bound, read, released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def prepare_nodes(root: Path, count: int, deployment_path: Path, rpc: str) -> list[DevnetNode]:
    """Keys, ports and configs for `count` nodes under `root` (configs written later)."""
    ports = free_ports(3 * count)
    keys = [init_keys(root / f"node-{i + 1}" / "keys") for i in range(count)]
    p2p_addrs = [f"/ip4/127.0.0.1/tcp/{ports[3 * i]}/p2p/{keys[i].peer_id.to_base58()}" for i in range(count)]
    nodes = []
    for i in range(count):
        data_dir = root / f"node-{i + 1}"
        bootstrap = [p2p_addrs[0]] if i else [p2p_addrs[1 % count]] if count > 1 else []
        config = NodeConfig(
            node=NodeSection(name=f"node-{i + 1}", data_dir=str(data_dir)),
            keys=KeysSection(dir=str(data_dir / "keys")),
            p2p=P2PSection(listen=f"/ip4/127.0.0.1/tcp/{ports[3 * i]}", bootstrap=bootstrap),
            ocpp=OcppSection(port=ports[3 * i + 1]),
            http=HttpSection(port=ports[3 * i + 2]),
            chain=ChainSection(rpc=rpc, deployment=str(deployment_path), confirmations=2, poll_interval_s=1.0),
            consensus=ConsensusSection(timeout_propose_ms=1000, timeout_vote_ms=500),
            anchoring=AnchoringSection(every_blocks=5, every_seconds=5, submit_timeout_s=10.0),
        )
        nodes.append(DevnetNode(i + 1, config, keys[i], data_dir / "node.toml", data_dir / "node.log"))
    return nodes


def deploy_network(anvil: AnvilProcess, nodes: list[DevnetNode], deployment_path: Path,
                   signed_meter: bool = False, *, reward_epoch_s: int = 3600) -> tuple[Deployment, dict[str, Any]]:
    """Deploy the contracts with the nodes as validators; fund them; seed the demo actors.

    `signed_meter` (on for `devsen devnet`): the demo charger's meter key (`demo_meter_key`)
    is registered on chain with requireSignedMeter, so it settles on OCMF-signed readings only.
    Uptime rewards: DEMO_REWARD_BUDGET per `reward_epoch_s` (the pool starts empty; fund it
    with Rewards.fund)."""
    with anvil.mining_each_transaction():
        deployment, seeded = _deploy_and_seed(anvil, nodes, deployment_path, signed_meter, reward_epoch_s)
    # the demo session is usable once the nodes see it, `confirmations` blocks deep: at the block
    # time, or mined at once on a chain that mines only on transactions
    driver = seeded["driver_client"]
    session_block = driver.block_number()
    if anvil.block_time_s is None:
        for _ in range(NETWORK_CONFIRMATIONS):
            anvil.rpc("evm_mine", [])
    wait_for_confirmations(driver, session_block)
    return deployment, seeded


def _deploy_and_seed(anvil: AnvilProcess, nodes: list[DevnetNode], deployment_path: Path,
                     signed_meter: bool, reward_epoch_s: int) -> tuple[Deployment, dict[str, Any]]:
    w3 = connect(anvil.url)
    deployer = TransactionSender(w3, anvil.dev_keys[0])
    specs = [ValidatorSpec(w3.to_checksum_address(n.keys.validator.address), n.keys.peer_id.to_bytes(), n.ocpp_url)
             for n in nodes]
    deployment = deploy_all(deployer, specs, faucet=True, reward_epoch_budget=DEMO_REWARD_BUDGET,
                            reward_epoch_s=reward_epoch_s, token_supply=DEVNET_STAKE * len(specs),
                            staking=StakingParams(min_stake=DEVNET_STAKE, unbonding_s=DEVNET_UNBONDING_S,
                                                  min_operator_stake=DEVNET_STAKE),
                            genesis_stake=DEVNET_STAKE)
    deployment.save(deployment_path)
    validator_accounts = [spec.address for spec in specs]
    fund_devnet_accounts(deployer, deployment, validator_accounts, eth_wei=10**19, tokens=0)
    manager_key, driver_key = anvil.dev_keys[1], anvil.dev_keys[2]
    manager = ChainClient(w3, deployment, TransactionSender(w3, manager_key))
    driver = ChainClient(w3, deployment, TransactionSender(w3, driver_key))
    manager.register_roles(ROLE_DEVICE_MANAGER)
    # The demo charger delivers kWh within seconds: give it the largest power the ledger allows
    # (4 MW), or physics (max power x time since the escrow opened) would cap its energy.
    create_device(manager, DEMO_CHARGER, DEMO_PASSWORD, connectors=2, price_per_kwh=DEMO_PRICE_PER_KWH,
                  location="devnet", max_power_w=MAX_POWER_W)
    if signed_meter:  # its meter signs readings (OCMF) with the devnet's test key
        set_meter_key(manager, DEMO_CHARGER, meter_public_key_der(demo_meter_key()), True)
    driver.register_roles(ROLE_DRIVER)
    driver.register_id_tag(DEMO_ID_TAG)
    assert driver.sender is not None
    fund_devnet_accounts(deployer, deployment, [driver.sender.address], eth_wei=0, tokens=100 * 10**6)
    session_id = open_prepaid_session(driver, DEMO_CHARGER, 1, DEMO_ID_TAG, DEMO_DEPOSIT, confirmations=0)
    assert manager.sender is not None
    return deployment, {"manager": manager.sender.address, "driver": driver.sender.address,
                        "session_id": session_id, "driver_client": driver, "signed_meter": signed_meter}


def register_devnet_candidate(w3: Any, deployment: Deployment, secret: bytes, peer_id: bytes, endpoint: str) -> None:
    """A devnet validator candidate: faucet DEVNET_STAKE to it and bond it with registerCandidate
    (the account needs ETH for gas). The validators' quorum can then add it to the set."""
    client = ChainClient(w3, deployment, TransactionSender(w3, secret))
    assert client.sender is not None
    client.faucet_mint(client.sender.address, DEVNET_STAKE)
    client.approve(deployment.validator_set, DEVNET_STAKE)
    client.register_candidate(DEVNET_STAKE, peer_id, endpoint)


def start_node_process(node: DevnetNode) -> None:
    """Start `devsen node` for `node`, output to its log file."""
    node.config_path.write_text(config_to_toml(node.config))
    with open(node.log_path, "ab") as log_file:
        node.process = subprocess.Popen(
            [sys.executable, "-m", "devsen.cli", "node", "--config", str(node.config_path)],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def stop_process(process: subprocess.Popen[bytes] | None, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout_s`; by pid (the process group we started)."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_s)


async def wait_until_serving(nodes: list[DevnetNode], on_progress: Callable[[str], None] | None = None) -> None:
    """Wait until every node answers /v1/status; a node process exiting early is an error.
    `on_progress` hears how many serve each time that number grows."""
    with trio.fail_after(STARTUP_TIMEOUT_S):
        for served, node in enumerate(nodes):
            while True:
                assert node.process is not None
                if node.process.poll() is not None:
                    raise RuntimeError(f"node {node.index} exited ({node.process.returncode}); see {node.log_path}")
                try:
                    status, _ = await http_get_json(node.http_url + "/v1/status", timeout=2)
                    if status == 200:
                        break
                except (OSError, trio.TooSlowError, ValueError, IndexError, trio.BrokenResourceError):
                    pass
                await trio.sleep(0.25)
            if on_progress is not None:
                on_progress(f"{served + 1}/{len(nodes)} nodes serving their HTTP API")


async def run_demo(nodes: list[DevnetNode], anvil: AnvilProcess, deployment_path: Path,
                   seeded: dict[str, Any]) -> bool:
    """A charging session at node 2, audited through node 3, settled from escrow."""
    entry = nodes[1 % len(nodes)]
    auditor_node = nodes[2 % len(nodes)]
    print(f"\n[demo] charger {DEMO_CHARGER} connects to node {entry.index} at {entry.ocpp_url}")
    meter_key = demo_meter_key() if seeded.get("signed_meter") else None
    async with connect_demo_charger(entry.ocpp_url, DEMO_CHARGER, DEMO_PASSWORD, meter_key) as charger:
        result = await charger.charge_session(DEMO_ID_TAG, connector=1, meter_start_wh=1_000, meter_stop_wh=13_000)
        stop_message_id = charger.sent[-1][0]
    for step, reply in result.items():
        print(f"[demo] {step:<9} -> {json.dumps(reply)}")
    status, found = await http_get_json(f"{entry.http_url}/v1/chargers/{DEMO_CHARGER}/messages/{stop_message_id}")
    if status != 200:
        print(f"[demo] could not find the StopTransaction event: {found}")
        return False
    event_id = found["event_id"]
    print(f"[demo] StopTransaction committed at height {found.get('height')} as event {event_id}")
    with trio.move_on_after(ANCHOR_TIMEOUT_S):
        while True:
            status, proof = await http_get_json(f"{auditor_node.http_url}/v1/events/{event_id}/proof")
            client: ChainClient = seeded["driver_client"]
            if status == 200:
                batch_id = proof["batch"]["batch_id"] if "batch" in proof else None
                if batch_id is not None and client.anchored_batch(int(batch_id), "latest") is not None:
                    break
            await trio.sleep(1.0)
    print(f"[demo] auditing {event_id} through node {auditor_node.index} against the chain:")
    verdict = await trio.to_thread.run_sync(lambda: audit_main(
        ["verify", event_id, "--node", auditor_node.http_url, "--rpc", anvil.url,
         "--deployment", str(deployment_path)]))
    session = None
    with trio.move_on_after(ANCHOR_TIMEOUT_S):
        while True:
            session = client.session(seeded["session_id"], "latest")
            if session is not None and session.status == SessionStatus.SETTLED:
                break
            await trio.sleep(1.0)
    if session is not None and session.status == SessionStatus.SETTLED:
        print(f"[demo] escrow session settled on chain: {session.energy_wh} Wh, paid "
              f"{token_amount(session.settled_amount)} to the device manager, refunded "
              f"{token_amount(session.deposit - session.settled_amount)} to the driver")
    else:
        print("[demo] escrow session not settled in time")
    settled = session is not None and session.status == SessionStatus.SETTLED
    if settled and seeded.get("signed_meter"):
        print(f"[demo] auditing the settlement from the meter's signatures through node {auditor_node.index}:")
        session_verdict = await trio.to_thread.run_sync(lambda: session_audit_main(
            ["session", "0x" + seeded["session_id"].hex(), "--node", auditor_node.http_url, "--rpc", anvil.url,
             "--deployment", str(deployment_path)]))
        settled = session_verdict == 0
    return verdict == 0 and settled


def seed_dev_accounts(anvil: AnvilProcess, deployment: Deployment, root: Path) -> dict[str, dict[str, Any]]:
    """The named dev accounts (anvil keys the demo never uses): key files under
    `root/accounts/`, and tokens for the driver so it can open a session at once."""
    from eth_account import Account

    w3 = connect(anvil.url)
    deployer = TransactionSender(w3, anvil.dev_keys[0])
    accounts: dict[str, dict[str, Any]] = {}
    (root / "accounts").mkdir(exist_ok=True)
    for role, index in DEV_ACCOUNTS.items():
        if index >= len(anvil.dev_keys):
            continue
        key = anvil.dev_keys[index]
        key_file = root / "accounts" / f"{role}.key"
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        accounts[role] = {"index": index, "address": Account.from_key(key).address, "private_key": key,
                          "key_file": str(key_file)}
    if "driver" in accounts:
        with anvil.mining_each_transaction():
            fund_devnet_accounts(deployer, deployment, [accounts["driver"]["address"]], eth_wei=0,
                                 tokens=DEV_DRIVER_TOKENS)
        accounts["driver"]["tokens_minted"] = DEV_DRIVER_TOKENS
    return accounts


def devnet_state(root: Path, anvil: AnvilProcess, deployment: Deployment, deployment_path: Path,
                 nodes: list[DevnetNode], accounts: dict[str, dict[str, Any]], seeded: dict[str, Any],
                 started_at: float) -> dict[str, Any]:
    """The content of `devnet.json` (devsen/devnet_state.py reads it)."""
    return {
        "version": STATE_VERSION,
        "dir": str(root),
        "supervisor": {"pid": os.getpid(), "started_at": iso_time(round(started_at)),
                       "started_at_unix": round(started_at, 3)},
        "chain": {"rpc": anvil.url, "chain_id": CHAIN_ID, "anvil_pid": anvil.pid, "log": str(anvil.log_path),
                  "mnemonic": ANVIL_MNEMONIC},
        "deployment_file": str(deployment_path),
        "deployment": json.loads(deployment_path.read_text()),
        "nodes": [{
            "index": node.index, "name": node.config.node.name,
            "validator": "0x" + node.keys.validator.address.hex(), "peer_id": node.keys.peer_id.to_base58(),
            "ocpp_url": node.ocpp_url, "ocpp_url_template": node.ocpp_url + "/{chargeBoxId}",
            "http_url": node.http_url, "p2p": f"{node.config.p2p.listen}/p2p/{node.keys.peer_id.to_base58()}",
            "pid": node.process.pid if node.process is not None else None,
            "config": str(node.config_path), "data_dir": node.config.node.data_dir, "log": str(node.log_path),
        } for node in nodes],
        "accounts": accounts,
        "demo": {"charger": DEMO_CHARGER, "password": DEMO_PASSWORD, "id_tag": DEMO_ID_TAG,
                 "connector": 1, "session_id": "0x" + seeded["session_id"].hex(),
                 "accounts": {"deployer": 0, "manager": 1, "driver": 2}} if seeded else None,
    }


class Progress:
    """Start-up progress lines: `[  12.3s] what is being done`."""

    def __init__(self) -> None:
        self.began = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.began:6.1f}s] {message}", flush=True)


class StopRequested(BaseException):
    """SIGINT or SIGTERM during the synchronous set-up (before trio runs)."""


_stop_signal: list[int] = []
_in_trio = [False]  # inside trio.run, trio's signal receiver takes SIGINT/SIGTERM
_held = [False]  # a process is being started: the request is acted on right after


def _on_stop_signal(signum: int, frame: Any) -> None:
    _stop_signal.append(signum)
    if len(_stop_signal) == 1 and not _in_trio[0] and not _held[0]:
        raise StopRequested(signum)


async def _serve(nodes: list[DevnetNode], anvil: AnvilProcess, deployment_path: Path, seeded: dict[str, Any],
                 demo: bool, duration_s: float | None, progress: Progress) -> bool:
    """Run the devnet until `duration_s` passes or SIGINT/SIGTERM arrives; True if the demo passed."""
    outcome = [True]
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    _stop_signal.append(signum)
                    print(f"\n{signal.Signals(signum).name}: stopping the devnet", flush=True)
                    nursery.cancel_scope.cancel()

            async def reap_children() -> None:
                while True:  # nodes stopped by `devsen devnet node stop` leave no zombie here
                    for node in nodes:
                        if node.process is not None:
                            node.process.poll()
                    await trio.sleep(1.0)

            async def run() -> None:
                outcome[0] = await _run_devnet(nodes, anvil, deployment_path, seeded, demo, duration_s, progress)
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            nursery.start_soon(reap_children)
            if not _stop_signal:
                nursery.start_soon(run)
            else:
                nursery.cancel_scope.cancel()
    return outcome[0]


async def _run_devnet(nodes: list[DevnetNode], anvil: AnvilProcess, deployment_path: Path,
                      seeded: dict[str, Any], demo: bool, duration_s: float | None, progress: Progress) -> bool:
    progress(f"waiting for the {len(nodes)} nodes to serve (each loads its keys and chain view and dials its peers)")
    await wait_until_serving(nodes, on_progress=progress)
    root = deployment_path.parent
    progress(f"devnet up; state in {state_path(root)}")
    print(f"\nDEVSEN devnet is up: chain {anvil.url} (chain id {CHAIN_ID}), deployment {deployment_path}")
    for node in nodes:
        print(f"  node {node.index}: OCPP {node.ocpp_url}/{{chargeBoxId}}  HTTP {node.http_url}  "
              f"validator 0x{node.keys.validator.address.hex()}  log {node.log_path}")
    print(f"  demo charger: id {DEMO_CHARGER}, Basic-auth password {DEMO_PASSWORD!r}; idTag {DEMO_ID_TAG} "
          f"has an open prepaid session on connector 1")
    dir_arg = "" if root == DEFAULT_DIR else f" --dir {root}"
    print(f"  everything above, pids and the dev accounts' keys: devsen devnet status{dir_arg}  ({state_path(root)})")
    ok = True
    if demo:
        ok = await run_demo(nodes, anvil, deployment_path, seeded)
        print(f"[demo] {'PASSED' if ok else 'FAILED'}", flush=True)
    if duration_s is None:
        print("Running; Ctrl-C stops every process started here.", flush=True)
        await trio.sleep_forever()
    else:
        await trio.sleep(duration_s)
    return ok


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Defer a stop request while a child process is started and recorded (no pid is lost).
    Not a signal mask: children would inherit it and ignore SIGTERM."""
    _held[0] = True
    try:
        yield
    finally:
        _held[0] = False
    if _stop_signal:
        raise StopRequested(_stop_signal[0])


def _running_devnet(root: Path) -> int | None:
    """The pid of a devnet still running from `root`, if any."""
    try:
        state = load_state(root)
    except DevnetStateError:
        return None
    pid = state.get("supervisor", {}).get("pid")
    return pid if pid != os.getpid() and pid_alive(pid, "devnet") else None


def stop_leftovers(root: Path) -> int:
    """Stop the processes a devnet that died without cleaning up (kill -9) left running
    from `root`, by the pids of its state file; returns how many."""
    try:
        state = load_state(root)
    except DevnetStateError:
        return 0
    targets = [(entry["pid"], entry["config"]) for entry in state.get("nodes", []) if entry.get("pid")]
    if state.get("chain", {}).get("anvil_pid"):
        targets.append((state["chain"]["anvil_pid"], "anvil"))
    return terminate_pids(targets, reap=reap_child)


def _stop_all(root: Path, nodes: list[DevnetNode], anvil: AnvilProcess | None) -> int:
    """Stop every node (the pids in the state file: a node restarted by `devsen devnet node
    start` is not our child) and anvil; returns how many processes were still running."""
    targets: dict[int, str] = {}
    for node in nodes:
        if node.process is not None:
            targets[node.process.pid] = str(node.config_path)
    try:
        for entry in load_state(root)["nodes"]:
            if entry.get("pid"):
                targets[entry["pid"]] = entry["config"]
    except (DevnetStateError, KeyError, TypeError):
        pass
    stopped = terminate_pids(list(targets.items()), reap=reap_child)
    for node in nodes:
        if node.process is not None:
            node.process.poll()
    if anvil is not None:
        stopped += terminate_pids([(anvil.pid, "anvil")], reap=reap_child)
        anvil.process.poll()
    return stopped


def devnet_main(argv: list[str]) -> int:
    """Entry point of `devsen devnet`."""
    if argv and argv[0] in ("status", "node"):
        return state_main(argv)
    parser = argparse.ArgumentParser(prog="devsen devnet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=4, help="validator nodes (>= 1; 4 tolerates one fault)")
    parser.add_argument("--dir", type=Path, default=Path("devnet-data"), help="data directory (recreated)")
    parser.add_argument("--demo", action="store_true", help="run a charging session, audit and settlement")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    args = parser.parse_args(argv)
    if not 1 <= args.nodes <= 16:
        parser.error("--nodes must be in 1..16")
    args.dir = args.dir.absolute()  # configs and the state file hold absolute paths: any cwd can use them
    running = _running_devnet(args.dir)
    if running is not None:
        print(f"devsen devnet: a devnet is already running from {args.dir} (pid {running}); stop it first "
              f"(Ctrl-C in its terminal, or `kill {running}`), or pass another --dir", file=sys.stderr)
        return 1
    leftovers = stop_leftovers(args.dir)
    if leftovers:
        print(f"stopped {leftovers} process{'es' if leftovers != 1 else ''} left running by an earlier devnet "
              f"in {args.dir}", flush=True)
    setup_logging("INFO", "text")
    _stop_signal.clear()
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal)
    progress = Progress()
    started_at = time.time()
    anvil: AnvilProcess | None = None
    nodes: list[DevnetNode] = []
    ok = True
    try:
        if args.dir.exists():
            shutil.rmtree(args.dir)
        args.dir.mkdir(parents=True)
        deployment_path = args.dir / "deployment.json"
        progress("starting the chain (anvil, one block per second)")
        with _signals_held():  # a stop request waits until anvil's pid is known
            anvil = start_anvil(args.dir / "anvil.log", chain_id=CHAIN_ID, block_time_s=1)
        progress(f"chain at {anvil.url} (pid {anvil.pid}); creating keys for {args.nodes} validators")
        nodes = prepare_nodes(args.dir, args.nodes, deployment_path, anvil.url)
        progress("deploying the contracts with those validators and seeding the demo charger, driver and "
                 "escrow session")
        deployment, seeded = deploy_network(anvil, nodes, deployment_path, signed_meter=True)
        progress(f"funding the dev accounts #{DEV_ACCOUNTS['manager']} (manager) and "
                 f"#{DEV_ACCOUNTS['driver']} (driver)")
        accounts = seed_dev_accounts(anvil, deployment, args.dir)
        progress(f"starting {len(nodes)} node processes")
        with _signals_held():  # every pid is recorded before a stop request is acted on
            for node in nodes:
                start_node_process(node)
            write_state(args.dir, devnet_state(args.dir, anvil, deployment, deployment_path, nodes, accounts,
                                               seeded, started_at))
        _in_trio[0] = True
        try:
            ok = trio.run(_serve, nodes, anvil, deployment_path, seeded, args.demo, args.duration, progress)
        finally:
            _in_trio[0] = False
    except StopRequested as stop:
        print(f"\n{signal.Signals(stop.args[0]).name}: stopping the devnet", flush=True)
    except (RuntimeError, AnvilError, trio.TooSlowError, DevnetStateError) as exc:
        print(f"devsen devnet: start-up failed: {exc or 'timed out'} (logs in {args.dir})", file=sys.stderr)
        ok = False
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        count = _stop_all(args.dir, nodes, anvil)
        with contextlib.suppress(DevnetStateError, OSError):
            update_state(args.dir, _mark_stopped)
        print(f"stopped {count} process{'es' if count != 1 else ''}", flush=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if _stop_signal:
        return 0
    return 0 if ok else 1


def _mark_stopped(state: dict[str, Any]) -> None:
    state["supervisor"]["stopped_at"] = iso_time(round(time.time()))
    for entry in state["nodes"]:
        entry["pid"] = None
    state["chain"]["anvil_pid"] = None
