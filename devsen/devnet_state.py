"""The devnet's state file (`devnet-data/devnet.json`) and the commands that read it.

    devsen devnet status [--dir DIR] [--json]
    devsen devnet node stop|start|restart N [--dir DIR] [--json]

`devsen devnet` writes the state file once the chain is deployed and again whenever a
process starts or stops: the chain URL and anvil's pid, the deployment, each node's OCPP,
HTTP and p2p addresses, pid, config, data directory and log, and the named dev accounts
(keys from anvil's well-known mnemonic) that the demo never uses. These commands read it,
so nothing has to be copied from the start-up output.

Processes are addressed by pid only, and a pid counts as ours only while its command line
still names what we started (a reused pid is never signalled). Writes are atomic (temp file
+ rename) under an exclusive lock, so the running devnet and these commands can both update
the file.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from devsen.fmt import duration, iso_time

STATE_FILE = "devnet.json"
STATE_VERSION = 1
NODE_START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 3.0
ANVIL_MNEMONIC = "test test test test test test test test test test test junk"
# anvil funds accounts 0..9 of its mnemonic. The demo signs with 0 (deployer), 1 (manager)
# and 2 (driver); tests and benches use 0 and 1. These two are left for people.
DEV_ACCOUNTS = {"manager": 8, "driver": 9}


class DevnetStateError(RuntimeError):
    """No devnet state where it was looked for, or it names no such node."""


def state_path(root: Path) -> Path:
    return root / STATE_FILE


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".devnet.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_state(root: Path, state: dict[str, Any]) -> None:
    """Replace the state file atomically."""
    with _locked(root):
        _write_unlocked(root, state)


def _write_unlocked(root: Path, state: dict[str, Any]) -> None:
    tmp = root / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, state_path(root))


def load_state(root: Path) -> dict[str, Any]:
    """The state file's content; DevnetStateError naming the fix if there is none."""
    path = state_path(root)
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise DevnetStateError(f"no devnet state at {path}; start one with `make devnet` "
                               "(or `devsen devnet --dir DIR`, then pass the same --dir)") from None
    except json.JSONDecodeError as exc:
        raise DevnetStateError(f"{path} is not valid JSON ({exc}); restart the devnet") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise DevnetStateError(f"{path} has an unknown format; restart the devnet with this version")
    return state


def update_state(root: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read, change and write the state file under the lock; returns the new state."""
    with _locked(root):
        state = load_state(root)
        change(state)
        _write_unlocked(root, state)
        return state


# -- processes -------------------------------------------------------------------------


def pid_alive(pid: int | None, must_contain: str = "") -> bool:
    """Whether `pid` runs (not a zombie) and its command line contains `must_contain`."""
    if not pid or pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[:1] in (["Z"], ["X"]):
        return False
    return must_contain in cmdline


def node_command(config_path: str) -> list[str]:
    """The command line of a devnet node process."""
    return [sys.executable, "-m", "devsen.cli", "node", "--config", config_path]


def spawn_node(config_path: str, log_path: str) -> int:
    """Start a node process in its own session (so Ctrl-C at a terminal reaches only the
    devnet, which stops it); output appended to its log; returns its pid."""
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(node_command(config_path), stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    return process.pid


def terminate_pids(pids: list[tuple[int, str]], timeout_s: float = STOP_TIMEOUT_S,
                   reap: Callable[[int], None] | None = None) -> int:
    """SIGTERM each live (pid, must_contain) (its process group where it leads one), wait up to
    `timeout_s` for all, then SIGKILL the rest. Returns how many were running."""
    live = [(pid, tag) for pid, tag in pids if pid_alive(pid, tag)]
    for pid, _ in live:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if reap is not None:
            for pid, _ in live:
                reap(pid)
        if not any(pid_alive(pid, tag) for pid, tag in live):
            return len(live)
        time.sleep(0.05)
    for pid, tag in live:
        if pid_alive(pid, tag):
            _signal(pid, signal.SIGKILL)
    kill_deadline = time.monotonic() + timeout_s
    while time.monotonic() < kill_deadline and any(pid_alive(pid, tag) for pid, tag in live):
        if reap is not None:
            for pid, _ in live:
                reap(pid)
        time.sleep(0.05)
    return len(live)


def _signal(pid: int, signum: int) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


def reap_child(pid: int) -> None:
    """Collect `pid` if it is our exited child (no zombie left); ignore anything else."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


# -- probes ----------------------------------------------------------------------------


def chain_head(rpc: str, timeout_s: float = PROBE_TIMEOUT_S) -> int | None:
    """eth_blockNumber at `rpc`, or None if it does not answer."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}).encode()
    request = urllib.request.Request(rpc, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (http URL we wrote)
            return int(json.loads(response.read())["result"], 16)
    except (OSError, ValueError, KeyError, TypeError):
        return None


async def _node_status(url: str) -> dict[str, Any] | None:
    from devsen.http_api import http_get_json

    try:
        status, body = await http_get_json(url + "/v1/status", timeout=PROBE_TIMEOUT_S)
    except (OSError, ValueError, IndexError, trio.TooSlowError, trio.BrokenResourceError):
        return None  # not up yet, or went away mid-answer
    return body if status == 200 and isinstance(body, dict) else None


async def _probe_nodes(urls: list[str]) -> list[dict[str, Any] | None]:
    results: list[dict[str, Any] | None] = [None] * len(urls)

    async def one(i: int) -> None:
        results[i] = await _node_status(urls[i])

    async with trio.open_nursery() as nursery:
        for i in range(len(urls)):
            nursery.start_soon(one, i)
    return results


async def wait_serving(url: str, pid: int, tag: str, timeout_s: float = NODE_START_TIMEOUT_S) -> dict[str, Any]:
    """Wait until the node at `url` answers /v1/status; RuntimeError if its process exits."""
    with trio.fail_after(timeout_s):
        while True:
            if not pid_alive(pid, tag):
                raise RuntimeError("the node process exited")
            body = await _node_status(url)
            if body is not None:
                return body
            await trio.sleep(0.25)


# -- status ----------------------------------------------------------------------------


def live_status(state: dict[str, Any]) -> dict[str, Any]:
    """The state file plus what is true now: which pids run, each node's height and peers,
    the chain head."""
    out: dict[str, Any] = json.loads(json.dumps(state))
    supervisor = out.get("supervisor", {})
    supervisor["running"] = pid_alive(supervisor.get("pid"), "devnet")
    chain = out["chain"]
    chain["running"] = pid_alive(chain.get("anvil_pid"), "anvil")
    chain["head"] = chain_head(chain["rpc"]) if chain["running"] else None
    nodes = out["nodes"]
    probes = trio.run(_probe_nodes, [n["http_url"] for n in nodes])
    for node, probe in zip(nodes, probes, strict=True):
        node["running"] = pid_alive(node.get("pid"), node["config"])
        node["serving"] = probe is not None
        node["height"] = probe.get("committed_height") if probe else None
        peers = probe.get("peers") if probe else None
        node["peers_connected"] = peers.get("connected") if isinstance(peers, dict) else None
        node["chargers_connected"] = probe.get("chargers_connected") if probe else None
    return out


def format_status(status: dict[str, Any]) -> str:
    """`devsen devnet status` for people: one screen."""
    supervisor = status.get("supervisor", {})
    lines = []
    up = ""
    if supervisor.get("running") and supervisor.get("started_at_unix"):
        up = f", up {duration(time.time() - supervisor['started_at_unix'])}"
    state = "running" if supervisor.get("running") else "not running"
    lines.append(f"DEVSEN devnet in {status['dir']}: {state} (pid {supervisor.get('pid')}{up}; "
                 f"started {supervisor.get('started_at', '?')})")
    chain = status["chain"]
    head = chain.get("head")
    lines.append(f"chain       {chain['rpc']}  chain id {chain['chain_id']}  head {head if head is not None else '-'}  "
                 f"anvil pid {chain.get('anvil_pid')} ({'running' if chain.get('running') else 'stopped'})")
    lines.append(f"deployment  {status['deployment_file']}")
    contracts = status.get("deployment", {})
    names = [k for k in ("validator_set", "user_registry", "device_factory", "charge_token", "escrow", "anchor",
                         "rewards")
             if k in contracts]
    for name in names:
        lines.append(f"  {name:<15} {contracts[name]}")
    lines.append("")
    lines.append(f"{'node':<5} {'state':<9} {'pid':>7} {'height':>7} {'peers':>5}  {'HTTP API':<24} "
                 f"OCPP (firmware base URL; it appends /{{chargeBoxId}})")
    for node in status["nodes"]:
        running = node.get("running")
        state_text = "serving" if node.get("serving") else "running" if running else "stopped"
        height = node.get("height")
        peers = node.get("peers_connected")
        lines.append(f"{node['index']:<5} {state_text:<9} {node.get('pid') or '-':>7} "
                     f"{height if height is not None else '-':>7} {peers if peers is not None else '-':>5}  "
                     f"{node['http_url']:<24} {node['ocpp_url']}")
    lines.append("")
    lines.append(f"dev accounts (anvil mnemonic \"{ANVIL_MNEMONIC}\"; the demo does not use these):")
    for role, account in status.get("accounts", {}).items():
        lines.append(f"  {role:<8} #{account['index']}  {account['address']}  key file {account['key_file']}")
    demo = status.get("demo")
    if demo:
        lines.append(f"demo charger {demo['charger']} (password {demo['password']!r}), idTag {demo['id_tag']}")
    lines.append(f"logs        {chain['log']}, {status['dir']}/node-N/node.log")
    lines.append("control     devsen devnet node stop|start|restart N" +
                 (f" --dir {status['dir']}" if Path(status["dir"]) != Path("devnet-data").absolute() else ""))
    return "\n".join(lines)


def _started_at(unix_s: float) -> str:
    return iso_time(round(unix_s))


# -- node control ----------------------------------------------------------------------


def _node(state: dict[str, Any], index: int) -> dict[str, Any]:
    for node in state["nodes"]:
        if node["index"] == index:
            found: dict[str, Any] = node
            return found
    raise DevnetStateError(f"no node {index}: this devnet has nodes 1..{len(state['nodes'])}")


def stop_node(root: Path, index: int) -> dict[str, Any]:
    """Stop node `index` by its pid; returns a JSON-ready result."""
    node = _node(load_state(root), index)
    pid = node.get("pid")
    was_running = terminate_pids([(pid, node["config"])]) if pid else 0

    def change(state: dict[str, Any]) -> None:
        entry = _node(state, index)
        entry["pid"] = None
        entry["stopped_at"] = _started_at(time.time())

    update_state(root, change)
    return {"node": index, "action": "stop", "pid": pid, "was_running": bool(was_running)}


def start_node(root: Path, index: int, wait: bool = True) -> dict[str, Any]:
    """Start node `index` with its config and data (it restores its WAL, blocks and snapshot
    and fetches the blocks it missed from its peers); waits until it serves its HTTP API."""
    state = load_state(root)
    node = _node(state, index)
    if pid_alive(node.get("pid"), node["config"]):
        raise DevnetStateError(f"node {index} is already running (pid {node['pid']}); "
                               f"use `devsen devnet node restart {index}`")
    if not pid_alive(state["chain"].get("anvil_pid"), "anvil"):
        raise DevnetStateError("the devnet's chain (anvil) is not running; start the devnet again with `make devnet`")
    pid = spawn_node(node["config"], node["log"])

    def change(new_state: dict[str, Any]) -> None:
        entry = _node(new_state, index)
        entry["pid"] = pid
        entry["started_at"] = _started_at(time.time())
        entry.pop("stopped_at", None)

    update_state(root, change)
    result: dict[str, Any] = {"node": index, "action": "start", "pid": pid, "http_url": node["http_url"],
                              "ocpp_url": node["ocpp_url"], "log": node["log"]}
    if wait:
        began = time.monotonic()
        try:
            body = trio.run(wait_serving, node["http_url"], pid, node["config"])
        except (RuntimeError, trio.TooSlowError) as exc:
            raise DevnetStateError(f"node {index} did not come up ({exc or 'timed out'}); see {node['log']}") from None
        result["serving_after_s"] = round(time.monotonic() - began, 1)
        result["height"] = body.get("committed_height")
    return result


def _print_result(result: dict[str, Any]) -> None:
    index, pid = result["node"], result["pid"]
    if result["action"] == "stop":
        print(f"node {index}: stopped (pid {pid})" if result["was_running"] else f"node {index}: was not running")
        return
    line = f"node {index}: started (pid {pid}), log {result['log']}"
    if "serving_after_s" in result:
        line += (f"\nnode {index}: serving {result['http_url']} after {result['serving_after_s']}s at height "
                 f"{result['height']}; it catches up on the blocks it missed from its peers")
    print(line)


def state_main(argv: list[str]) -> int:
    """`devsen devnet status` and `devsen devnet node ...`; returns an exit code."""
    parser = argparse.ArgumentParser(prog="devsen devnet", description="inspect and control a running devnet")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="what runs where: chain, nodes, pids, URLs, logs, dev accounts")
    node = sub.add_parser("node", help="stop, start or restart one node by its number")
    node.add_argument("action", choices=("stop", "start", "restart"))
    node.add_argument("index", type=int, metavar="N")
    node.add_argument("--no-wait", action="store_true", help="do not wait until a started node serves")
    for command in (status, node):
        command.add_argument("--dir", type=Path, default=Path("devnet-data"), help="the devnet's data directory")
        command.add_argument("--json", action="store_true", help="one JSON document for scripts")
    args = parser.parse_args(argv)
    try:
        if args.command == "status":
            live = live_status(load_state(args.dir))
            print(json.dumps(live, indent=2) if args.json else format_status(live))
            return 0
        results = []
        if args.action in ("stop", "restart"):
            results.append(stop_node(args.dir, args.index))
        if args.action in ("start", "restart"):
            results.append(start_node(args.dir, args.index, wait=not args.no_wait))
        for result in results:
            if not args.json:
                _print_result(result)
        if args.json:
            print(json.dumps(results[0] if len(results) == 1 else {"node": args.index, "steps": results}, indent=2))
        return 0
    except DevnetStateError as exc:
        print(f"devsen devnet {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while waiting: what was started keeps running, and says so
        print(f"devsen devnet {args.command}: interrupted; `devsen devnet status --dir {args.dir}` shows what runs",
              file=sys.stderr)
        return 130
