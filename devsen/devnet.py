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

It runs until Ctrl-C (or `--duration`), then stops every process it started, by pid.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from anchoring.audit import audit_main
from anchoring.chain import (
    ChainClient,
    Deployment,
    TransactionSender,
    ValidatorSpec,
    connect,
    deploy_all,
)
from anchoring.chain.anvil import AnvilProcess, start_anvil
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
from devsen.http_api import http_get_json
from devsen.ledger.chain import MAX_POWER_W
from devsen.logs import setup_logging
from devsen.session_audit import audit_main as session_audit_main
from devsen.wallet import (
    ROLE_DEVICE_MANAGER,
    ROLE_DRIVER,
    create_device,
    open_prepaid_session,
    set_meter_key,
)
from p2p.keys import NodeKeys, init_keys

log = logging.getLogger("devsen.devnet")

DEMO_CHARGER = "DEMO-CP-1"
DEMO_PASSWORD = "demo-charger-password-1"  # devnet only; printed so a real charger can use it
DEMO_ID_TAG = "DEMO-TAG-1"
DEMO_DEPOSIT = 10 * 10**6  # ChargeToken base units
DEMO_PRICE_PER_KWH = 300_000
CHAIN_ID = 31337
STARTUP_TIMEOUT_S = 90.0
ANCHOR_TIMEOUT_S = 120.0


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
                   signed_meter: bool = False) -> tuple[Deployment, dict[str, Any]]:
    """Deploy the contracts with the nodes as validators; fund them; seed the demo actors.

    `signed_meter` (on for `devsen devnet`): the demo charger's meter key (`demo_meter_key`)
    is registered on chain with requireSignedMeter, so it settles on OCMF-signed readings only."""
    w3 = connect(anvil.url)
    deployer = TransactionSender(w3, anvil.dev_keys[0])
    specs = [ValidatorSpec(w3.to_checksum_address(n.keys.validator.address), n.keys.peer_id.to_bytes(), n.ocpp_url)
             for n in nodes]
    deployment = deploy_all(deployer, specs, faucet=True)
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
    session_id = open_prepaid_session(driver, DEMO_CHARGER, 1, DEMO_ID_TAG, DEMO_DEPOSIT)
    assert manager.sender is not None
    return deployment, {"manager": manager.sender.address, "driver": driver.sender.address,
                        "session_id": session_id, "driver_client": driver, "signed_meter": signed_meter}


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


async def wait_until_serving(nodes: list[DevnetNode]) -> None:
    """Wait until every node answers /v1/status; a node process exiting early is an error."""
    with trio.fail_after(STARTUP_TIMEOUT_S):
        for node in nodes:
            while True:
                assert node.process is not None
                if node.process.poll() is not None:
                    raise RuntimeError(f"node {node.index} exited ({node.process.returncode}); see {node.log_path}")
                try:
                    status, _ = await http_get_json(node.http_url + "/v1/status", timeout=2)
                    if status == 200:
                        break
                except (OSError, trio.TooSlowError, ValueError):
                    pass
                await trio.sleep(0.25)


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
        print(f"[demo] {step:<9} -> {reply}")
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
        print(f"[demo] escrow session settled on chain: {session.energy_wh} Wh, paid {session.settled_amount} "
              f"to the device manager, refunded {session.deposit - session.settled_amount} to the driver")
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


async def _serve(nodes: list[DevnetNode], anvil: AnvilProcess, deployment_path: Path, seeded: dict[str, Any],
                 demo: bool, duration_s: float | None) -> bool:
    """Run the devnet until `duration_s` passes or SIGTERM/Ctrl-C arrives; True if the demo passed."""
    outcome = [True]
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_sigterm() -> None:
                async for _ in signals:
                    print("SIGTERM: stopping the devnet")
                    nursery.cancel_scope.cancel()

            async def run() -> None:
                outcome[0] = await _run_devnet(nodes, anvil, deployment_path, seeded, demo, duration_s)
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_sigterm)
            nursery.start_soon(run)
    return outcome[0]


async def _run_devnet(nodes: list[DevnetNode], anvil: AnvilProcess, deployment_path: Path,
                      seeded: dict[str, Any], demo: bool, duration_s: float | None) -> bool:
    await wait_until_serving(nodes)
    print(f"\nDEVSEN devnet is up: chain {anvil.url} (chain id {CHAIN_ID}), deployment {deployment_path}")
    for node in nodes:
        print(f"  node {node.index}: OCPP {node.ocpp_url}/{{chargeBoxId}}  HTTP {node.http_url}  "
              f"validator 0x{node.keys.validator.address.hex()}  log {node.log_path}")
    print(f"  demo charger: id {DEMO_CHARGER}, Basic-auth password {DEMO_PASSWORD!r}; idTag {DEMO_ID_TAG} "
          f"has an open prepaid session on connector 1")
    ok = True
    if demo:
        ok = await run_demo(nodes, anvil, deployment_path, seeded)
        print(f"[demo] {'PASSED' if ok else 'FAILED'}")
    if duration_s is None:
        print("Running; Ctrl-C stops every process started here.")
        await trio.sleep_forever()
    else:
        await trio.sleep(duration_s)
    return ok


def devnet_main(argv: list[str]) -> int:
    """Entry point of `devsen devnet`."""
    parser = argparse.ArgumentParser(prog="devsen devnet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=4, help="validator nodes (>= 1; 4 tolerates one fault)")
    parser.add_argument("--dir", type=Path, default=Path("devnet-data"), help="data directory (recreated)")
    parser.add_argument("--demo", action="store_true", help="run a charging session, audit and settlement")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    args = parser.parse_args(argv)
    if not 1 <= args.nodes <= 16:
        parser.error("--nodes must be in 1..16")
    setup_logging("INFO", "text")

    def stop_on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # during set-up: the cleanup below stops what was started

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    if args.dir.exists():
        shutil.rmtree(args.dir)
    args.dir.mkdir(parents=True)
    deployment_path = args.dir / "deployment.json"
    anvil = start_anvil(args.dir / "anvil.log", chain_id=CHAIN_ID, block_time_s=1)
    nodes: list[DevnetNode] = []
    try:
        nodes = prepare_nodes(args.dir, args.nodes, deployment_path, anvil.url)
        _, seeded = deploy_network(anvil, nodes, deployment_path, signed_meter=True)
        for node in nodes:
            start_node_process(node)
        ok = trio.run(_serve, nodes, anvil, deployment_path, seeded, args.demo, args.duration)
        return 0 if ok else 1
    except KeyboardInterrupt:
        return 0
    finally:
        for node in nodes:
            stop_process(node.process)
        anvil.stop()
