"""The operator's first hour, as commands (issue 17): one real `devsen devnet` run.

One devnet (anvil + 4 node processes, started exactly as `make devnet` starts it) serves
every test of this module, in file order:
- its start-up progress lines and `devnet-data/devnet.json`;
- `devsen devnet status`, `devsen status --node`, `devsen wallet ...` (with the named dev
  accounts) and `devsen audit verify`, each in its text form and its `--json` form;
- `devsen devnet node stop 4`: the others keep committing, their logs stay quiet about the
  missing peer, and `devsen devnet node start 4` brings it back at the others' height with the
  same blocks; `devsen devnet node restart 3`;
- Ctrl-C (SIGINT to the devnet's process group, as a terminal sends it): "stopped N
  processes", no traceback, and no pid of the state file still running.
A second, short run is stopped with SIGTERM in the middle of its contract deployment.

Everything runs on 127.0.0.1, every wait is bounded, and the module kills by pid whatever
is still running at the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import pytest
import trio

from devsen.demo_charger import connect_demo_charger, demo_meter_key
from devsen.devnet_state import pid_alive, terminate_pids
from devsen.http_api import http_get_json

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180.0
CLI_TIMEOUT_S = 120.0


class Devnet:
    """A `devsen devnet` process in its own process group, output in files."""

    def __init__(self, root: Path, *args: str) -> None:
        self.root = root
        self.out_path, self.err_path = root.parent / f"{root.name}.out", root.parent / f"{root.name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "devsen.cli", "devnet", "--dir", str(root), *args], cwd=ROOT,
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        self.pids_seen: dict[int, str] = {}

    @property
    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.out:
            if self.process.poll() is not None:
                raise AssertionError(f"devnet exited ({self.process.returncode}):\n{self.out}\n{self.err[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout_s} s:\n{self.out}\n{self.err[-3000:]}")
            time.sleep(0.2)

    def state(self) -> dict[str, Any]:
        state = json.loads((self.root / "devnet.json").read_text())
        self.remember_pids(state)
        return cast(dict[str, Any], state)

    def remember_pids(self, state: dict[str, Any]) -> None:
        if state["chain"].get("anvil_pid"):
            self.pids_seen[state["chain"]["anvil_pid"]] = "anvil"
        for node in state["nodes"]:
            if node.get("pid"):
                self.pids_seen[node["pid"]] = node["config"]

    def kill_everything(self) -> None:
        """Teardown: whatever still runs, by pid."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        terminate_pids(list(self.pids_seen.items()), timeout_s=5)


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "devsen.cli", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=CLI_TIMEOUT_S)
    if check:
        assert result.returncode == 0, f"devsen {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def cli_json(*args: str) -> Any:
    return json.loads(cli(*args, "--json").stdout)


def status_of(url: str) -> dict[str, Any] | None:
    async def get() -> Any:
        try:
            code, body = await http_get_json(url + "/v1/status", timeout=5)
        except (OSError, trio.TooSlowError):
            return None
        return body if code == 200 else None
    return cast("dict[str, Any] | None", trio.run(get))


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Any:
    net = Devnet(tmp_path_factory.mktemp("devnet-cli") / "devnet-data")
    try:
        net.wait_for_output("Running; Ctrl-C stops every process started here.")
        net.state()
        yield net
    finally:
        net.kill_everything()
        for log in sorted(net.root.glob("node-*/node.log")):  # shown by pytest only when a test failed
            print(f"--- {log} (tail) ---\n" + log.read_text(errors="replace")[-2000:])
        print(f"--- devnet stdout ---\n{net.out[-3000:]}\n--- devnet stderr ---\n{net.err[-3000:]}")


def wallet(net: Devnet, role: str, *args: str, as_json: bool = False) -> Any:
    state = net.state()
    base = ["wallet", "--rpc", state["chain"]["rpc"], "--deployment", state["deployment_file"],
            "--key-file", state["accounts"][role]["key_file"]]
    if as_json:
        return cli_json(*base, *args)
    return cli(*base, *args).stdout


# -- start-up and state ------------------------------------------------------------------


def test_start_up_prints_progress_with_elapsed_seconds(devnet: Devnet) -> None:
    out = devnet.out
    steps = re.findall(r"^\[\s*(\d+\.\d)s\] (.+)$", out, re.MULTILINE)
    texts = [text for _, text in steps]
    assert texts[0].startswith("starting the chain")
    for expected in ("deploying the contracts", "funding the dev accounts #8 (manager) and #9 (driver)",
                     "starting 4 node processes", "4/4 nodes serving their HTTP API", "devnet up; state in"):
        assert any(expected in text for text in texts), (expected, texts)
    seconds = [float(s) for s, _ in steps]
    assert seconds == sorted(seconds)
    assert "devsen devnet status --dir" in out


def test_state_file_names_chain_nodes_pids_logs_and_unused_dev_accounts(devnet: Devnet) -> None:
    from eth_account import Account

    state = devnet.state()
    assert state["chain"]["rpc"].startswith("http://127.0.0.1:") and state["chain"]["chain_id"] == 31337
    assert pid_alive(state["chain"]["anvil_pid"], "anvil")
    assert Path(state["deployment_file"]).is_file() and state["deployment"]["anchor"].startswith("0x")
    assert [n["index"] for n in state["nodes"]] == [1, 2, 3, 4]
    for node in state["nodes"]:
        assert node["ocpp_url"].startswith("ws://127.0.0.1:") and node["ocpp_url"].endswith("/ocpp")
        assert node["ocpp_url_template"] == node["ocpp_url"] + "/{chargeBoxId}"
        assert node["http_url"].startswith("http://127.0.0.1:")
        assert pid_alive(node["pid"], node["config"])
        assert Path(node["log"]).is_file() and Path(node["config"]).is_file()
    demo_indices = set(state["demo"]["accounts"].values())
    for role in ("manager", "driver"):
        account = state["accounts"][role]
        assert account["index"] not in demo_indices
        key = Path(account["key_file"]).read_text().strip()
        assert Account.from_key(key).address == account["address"]


def test_a_second_devnet_in_the_same_directory_is_refused(devnet: Devnet) -> None:
    result = cli("devnet", "--dir", str(devnet.root), "--nodes", "1", check=False)
    assert result.returncode == 1 and "a devnet is already running from" in result.stderr
    assert f"(pid {devnet.process.pid})" in result.stderr
    assert (devnet.root / "devnet.json").is_file() and all(pid_alive(n["pid"], n["config"])
                                                           for n in devnet.state()["nodes"])


def test_devnet_status_text_and_json(devnet: Devnet) -> None:
    text = cli("devnet", "status", "--dir", str(devnet.root)).stdout
    assert "running (pid" in text and "chain id 31337" in text
    assert len(re.findall(r"^\d\s+serving\s+\d+\s+\d+\s+3\s+http://127\.0\.0\.1:\d+\s+ws://127\.0\.0\.1:\d+/ocpp$",
                          text, re.MULTILINE)) == 4, text
    assert re.search(r"manager\s+#8\s+0x[0-9a-fA-F]{40}\s+key file ", text)
    assert re.search(r"driver\s+#9\s+0x[0-9a-fA-F]{40}\s+key file ", text)
    live = cli_json("devnet", "status", "--dir", str(devnet.root))
    assert live["supervisor"]["running"] and live["chain"]["running"] and isinstance(live["chain"]["head"], int)
    assert all(n["running"] and n["serving"] and isinstance(n["height"], int) for n in live["nodes"])
    assert all(n["peers_connected"] == 3 for n in live["nodes"])


def test_node_status_text_and_json(devnet: Devnet) -> None:
    node = devnet.state()["nodes"][0]
    text = cli("status", "--node", node["http_url"]).stdout
    assert re.search(r"^height\s+\d+", text, re.MULTILINE)
    assert re.search(r"^peers\s+3 connected$", text, re.MULTILINE), text
    assert re.search(r"^validators\s+4 of 4 seen", text, re.MULTILINE), text
    assert re.search(r"^chargers\s+\d+ connected", text, re.MULTILINE)
    assert re.search(r"^pending\s+anchors \d+, settlements \d+", text, re.MULTILINE)
    assert re.search(r"^chain\s+head \d+, agreed block \d+, lag \d+ blocks", text, re.MULTILINE), text
    doc = cli_json("status", "--node", node["http_url"])
    for key in ("committed_height", "app_state_hash", "consensus", "submitter"):  # the fields scripts had
        assert key in doc
    assert isinstance(doc["height"], int)
    assert doc["peers"]["connected"] == 3 and doc["peers"]["unreachable"] == []
    assert len(doc["validators_seen"]) == 4 and doc["validator"] in doc["validators_seen"]
    assert doc["chain"]["lag_blocks"] == doc["chain"]["head"] - doc["chain"]["agreed_block"] >= 0
    assert set(doc["pending"]) >= {"anchors", "settlements", "own_attestations"}
    unreachable = cli("status", "--node", "http://127.0.0.1:9", check=False)
    assert unreachable.returncode == 1 and "did not answer" in unreachable.stderr


# -- wallet and audit ----------------------------------------------------------------------


def _no_reprs(text: str) -> None:
    assert "b'" not in text and "<SessionStatus" not in text and "EscrowSession(" not in text, text


def test_wallet_commands_print_hex_units_iso_times_and_json(devnet: Devnet) -> None:
    out = wallet(devnet, "manager", "roles", "--manager")
    assert re.search(r"registered as device manager; tx 0x[0-9a-f]{64} in block \d+", out), out
    doc = wallet(devnet, "manager", "create-device", "CP-CLI-1", "--password", "cli-test-password",
                 "--connectors", "1", as_json=True)
    assert doc["charge_box_id"] == "CP-CLI-1" and re.fullmatch(r"0x[0-9a-f]{64}", doc["tx_hash"])
    assert wallet(devnet, "driver", "roles", "--driver", as_json=True)["roles"] == ["driver"]
    out = wallet(devnet, "driver", "register-idtag", "CLI-TAG-1")
    assert "idTag CLI-TAG-1 registered" in out and "expires never" in out
    out = wallet(devnet, "driver", "balance")
    assert re.search(r"\d[\d,]*\.\d{6} ETH \(\d+ wei\)", out) and "100.000000 DCT (100000000 units)" in out
    assert wallet(devnet, "driver", "balance", as_json=True)["token_units"] == 100_000_000
    out = wallet(devnet, "driver", "open-session", "CP-CLI-1", "--connector", "1", "--id-tag", "CLI-TAG-1",
                 "--deposit", "2500000")
    match = re.search(r"session (0x[0-9a-f]{64}) opened at CP-CLI-1 connector 1 with deposit "
                      r"2\.500000 DCT \(2500000 units\)", out)
    assert match, out
    session_id = match.group(1)
    assert f"remote start with idTag S{session_id[2:21]}" in out
    out = wallet(devnet, "driver", "session", session_id)
    _no_reprs(out)
    assert re.search(r"^status\s+OPEN$", out, re.MULTILINE) and "CP-CLI-1 connector 1" in out
    assert re.search(r"^opened\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", out, re.MULTILINE), out
    doc = wallet(devnet, "driver", "session", session_id, as_json=True)
    assert doc["session_id"] == session_id and doc["status"] == "OPEN" and doc["deposit_units"] == 2_500_000
    assert doc["opened_at"].endswith("Z") and doc["charge_box_id"] == "CP-CLI-1"
    bad = cli("wallet", "--rpc", devnet.state()["chain"]["rpc"], "--deployment", devnet.state()["deployment_file"],
              "--key-file", devnet.state()["accounts"]["driver"]["key_file"], "session", "0x12", check=False)
    assert bad.returncode == 1 and "not a session id" in bad.stderr


async def _charge_and_find_event(ocpp_url: str, http_url: str, charger: str, password: str, id_tag: str) -> str:
    # the devnet registers the demo charger's meter key with requireSignedMeter: it signs (OCMF)
    async with connect_demo_charger(ocpp_url, charger, password, demo_meter_key()) as device:
        await device.charge_session(id_tag, connector=1, meter_start_wh=1_000, meter_stop_wh=4_000)
        stop_message_id = device.sent[-1][0]
    code, found = await http_get_json(f"{http_url}/v1/chargers/{charger}/messages/{stop_message_id}")
    assert code == 200, found
    return str(found["event_id"])


def test_audit_verify_and_settled_session_text_and_json(devnet: Devnet) -> None:
    state = devnet.state()
    demo, entry, auditor = state["demo"], state["nodes"][1], state["nodes"][2]
    event_id = trio.run(_charge_and_find_event, entry["ocpp_url"], entry["http_url"], demo["charger"],
                        demo["password"], demo["id_tag"])
    audit = ["audit", "verify", event_id, "--node", auditor["http_url"], "--rpc", state["chain"]["rpc"],
             "--deployment", state["deployment_file"]]
    deadline = time.monotonic() + 150
    while True:  # the event's batch is anchored a few blocks later
        result = cli(*audit, "--json", check=False)
        doc = json.loads(result.stdout)
        if doc["verdict"] == "VALID" or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert doc["verdict"] == "VALID" and result.returncode == 0, doc
    assert doc["event_id"] == event_id and all(check["ok"] for check in doc["checks"])
    text = cli(*audit).stdout
    assert "VERDICT: VALID." in text and f"event {event_id}" in text and "PASS" in text
    deadline = time.monotonic() + 150
    while True:
        session = wallet(devnet, "driver", "session", demo["session_id"], as_json=True)
        if session["status"] == "SETTLED" or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert session["status"] == "SETTLED" and session["energy_wh"] == 3_000, session
    out = wallet(devnet, "driver", "session", demo["session_id"])
    _no_reprs(out)
    assert "energy    3000 Wh" in out and re.search(r"paid\s+0\.900000 DCT \(900000 units\)", out), out


# -- one node down, then back ----------------------------------------------------------------


async def _heartbeats(ocpp_url: str, charger: str, password: str, count: int) -> None:
    async with connect_demo_charger(ocpp_url, charger, password) as device:
        for _ in range(count):
            with trio.fail_after(20):
                await device.call("Heartbeat", {})


def _height(url: str) -> int:
    status = status_of(url)
    return int(status["committed_height"]) if status else -1


def _block_hash(url: str, height: int) -> str | None:
    async def get() -> Any:
        code, body = await http_get_json(f"{url}/v1/heights/{height}", timeout=5)
        return body["block_hash"] if code == 200 else None
    return cast("str | None", trio.run(get))


def test_node_stopped_and_started_rejoins_and_catches_up_with_quiet_logs(devnet: Devnet) -> None:
    state = devnet.state()
    demo, nodes = state["demo"], state["nodes"]
    old_pid = nodes[3]["pid"]
    log_1 = Path(nodes[0]["log"])
    log_offset = log_1.stat().st_size
    out = cli("devnet", "node", "stop", "4", "--dir", str(devnet.root)).stdout
    assert out.strip() == f"node 4: stopped (pid {old_pid})"
    assert not pid_alive(old_pid, nodes[3]["config"])
    assert devnet.state()["nodes"][3]["pid"] is None
    status = cli_json("devnet", "status", "--dir", str(devnet.root))
    assert [n["serving"] for n in status["nodes"]] == [True, True, True, False]
    height_down = max(_height(n["http_url"]) for n in nodes[:3])
    down_since = time.monotonic()
    trio.run(_heartbeats, nodes[0]["ocpp_url"], demo["charger"], demo["password"], 6)  # 3 of 4 still commit
    height_target = min(_height(n["http_url"]) for n in nodes[:3])
    assert height_target > height_down
    time.sleep(max(0.0, 20 - (time.monotonic() - down_since)))  # at least 20 s down
    down_s = time.monotonic() - down_since
    with open(log_1, "rb") as log:
        log.seek(log_offset)
        while_down = log.read().decode(errors="replace")
    assert "Failed to open TCP stream" not in while_down  # ~45 a minute per node before (issue 17)
    assert len(re.findall(r" ERROR ", while_down)) == 0, while_down[-3000:]
    peer_4 = nodes[3]["peer_id"]
    about_4 = [line for line in while_down.splitlines() if peer_4 in line]
    assert len([line for line in about_4 if "lost the connection" in line and " WARNING " in line]) == 1
    assert len(about_4) <= 4, about_4
    print(f"node 1's log while node 4 was down for {down_s:.0f} s: {len(while_down.splitlines())} lines, "
          f"{len(about_4)} naming node 4: {about_4}")

    doc = cli_json("devnet", "node", "start", "4", "--dir", str(devnet.root))
    assert doc["action"] == "start" and doc["pid"] != old_pid and pid_alive(doc["pid"], nodes[3]["config"])
    assert isinstance(doc["serving_after_s"], float)
    devnet.state()
    deadline = time.monotonic() + 60
    while _height(nodes[3]["http_url"]) < height_target and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _height(nodes[3]["http_url"]) >= height_target
    assert _block_hash(nodes[3]["http_url"], height_target) == _block_hash(nodes[0]["http_url"], height_target)
    back = log_1.read_text(errors="replace")[log_offset:]
    deadline = time.monotonic() + 30
    while f"peer {peer_4} is reachable again" not in back and time.monotonic() < deadline:
        time.sleep(0.5)
        back = log_1.read_text(errors="replace")[log_offset:]
    assert back.count(f"peer {peer_4} is reachable again") == 1
    # The network goes on with node 4 in it.
    trio.run(_heartbeats, nodes[3]["ocpp_url"], demo["charger"], demo["password"], 2)
    assert _height(nodes[3]["http_url"]) > height_target

    old_pid_3 = devnet.state()["nodes"][2]["pid"]
    out = cli("devnet", "node", "restart", "3", "--dir", str(devnet.root)).stdout
    assert f"node 3: stopped (pid {old_pid_3})" in out
    assert re.search(r"node 3: serving http://127\.0\.0\.1:\d+ after [\d.]+s at height \d+", out), out
    assert "already running" in cli("devnet", "node", "start", "3", "--dir", str(devnet.root), check=False).stderr
    assert "no node 9" in cli("devnet", "node", "stop", "9", "--dir", str(devnet.root), check=False).stderr
    devnet.state()


# -- stopping ---------------------------------------------------------------------------------


def test_ctrl_c_stops_every_process_cleanly(devnet: Devnet) -> None:
    state = devnet.state()
    pids = dict(devnet.pids_seen)  # includes the nodes stopped and restarted above
    running = [pid for pid, tag in pids.items() if pid_alive(pid, tag)]
    assert len(running) == 5  # anvil and 4 nodes, two of them restarted by the CLI
    os.killpg(devnet.process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    devnet.process.wait(timeout=60)
    assert devnet.process.returncode == 0
    assert "SIGINT: stopping the devnet" in devnet.out
    assert re.search(r"^stopped [45] processes$", devnet.out, re.MULTILINE), devnet.out[-500:]
    assert "Traceback" not in devnet.err and "KeyboardInterrupt" not in devnet.err, devnet.err[-3000:]
    assert [pid for pid, tag in pids.items() if pid_alive(pid, tag)] == []
    after = json.loads((devnet.root / "devnet.json").read_text())
    assert after["supervisor"].get("stopped_at") and all(n["pid"] is None for n in after["nodes"])
    assert state["supervisor"]["pid"] == devnet.process.pid
    status = cli("devnet", "status", "--dir", str(devnet.root)).stdout
    assert "not running" in status


def test_sigterm_during_deployment_stops_cleanly(tmp_path: Path) -> None:
    net = Devnet(tmp_path / "devnet-data", "--nodes", "1")
    try:
        net.wait_for_output("deploying the contracts", timeout_s=60)
        anvil_pid = int(re.search(r"\(pid (\d+)\)", net.out).group(1))  # type: ignore[union-attr]
        net.pids_seen[anvil_pid] = "anvil"
        time.sleep(1.0)  # inside the deployment's transactions
        net.process.send_signal(signal.SIGTERM)
        net.process.wait(timeout=60)
        assert net.process.returncode == 0
        assert "SIGTERM: stopping the devnet" in net.out
        assert re.search(r"^stopped 1 process$", net.out, re.MULTILINE), net.out
        assert "Traceback" not in net.err, net.err[-3000:]
        assert not pid_alive(anvil_pid, "anvil")
    finally:
        net.kill_everything()
