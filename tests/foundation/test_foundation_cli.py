"""The `devsen` command: help, config checking, honest 'not built' answers, logging formats."""

import io
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devsen.cli import DELEGATED, build_parser, main
from devsen.logs import setup_logging

ROOT = Path(__file__).resolve().parents[2]


def test_console_script_help_lists_every_planned_subcommand() -> None:
    result = subprocess.run([sys.executable, "-m", "devsen.cli", "--help"], capture_output=True,
                            text=True, timeout=60, check=True)
    for name in ("node", "devnet", "wallet", "audit", "keys", "chain", "ocpp-serve", "config", "status"):
        assert name in result.stdout


def test_config_check_prints_effective_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "--config", str(ROOT / "deploy" / "node.example.toml")]) == 0
    assert "[ocpp]" in capsys.readouterr().out


def test_bad_config_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "node.toml"
    bad.write_text("[ocpp]\nport = 'x'\n")
    assert main(["node", "--config", str(bad)]) == 2
    assert "ocpp.port" in capsys.readouterr().err


def test_missing_required_argument_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["node"])
    assert info.value.code == 2


def test_every_delegated_subcommand_resolves_or_says_not_built(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, (module_name, function_name, _) in DELEGATED.items():
        monkeypatch.setitem(DELEGATED, name, (module_name + "_absent_for_test", function_name, ""))
        assert main([name]) == 2
        assert "not built yet" in capsys.readouterr().err


def test_json_log_lines_carry_extra_fields_and_libp2p_logger_is_attached() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "json", stream=stream)
    logging.getLogger("devsen.test").info("charger %s booted", "CP1", extra={"charger": "CP1"})
    logging.getLogger("libp2p.pubsub").warning("dropped message")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["msg"] == "charger CP1 booted" and lines[0]["charger"] == "CP1"
    assert lines[1]["logger"] == "libp2p.pubsub" and lines[1]["level"] == "WARNING"
    setup_logging("INFO", "text", stream=io.StringIO())


# -- operator output (issue 17): formatting, `devsen status`, `devsen devnet status|node` -----

STATUS_DOC = {
    "node": "node-1", "validator": "0x" + "ab" * 20, "peer_id": "12D3KooWTest", "committed_height": 57,
    "height": 57, "epoch": 1, "validators": 4, "app_state_hash": "0x" + "cd" * 32, "chargers_connected": 2,
    "consensus": {"round": 0, "mempool": 3}, "app": {}, "own_attestations_pending": 1, "submitter": {},
    "uptime_s": 125.0, "peers": {"connected": 2, "unreachable": ["12D3KooWDown"], "linked_validators": 2},
    "validators_seen": ["0x" + "ab" * 20, "0x" + "01" * 20, "0x" + "02" * 20],
    "validator_set": ["0x" + "ab" * 20, "0x" + "01" * 20, "0x" + "02" * 20, "0x" + "03" * 20],
    "pending": {"anchors": 1, "settlements": 2, "submissions": 3, "own_attestations": 1},
    "chain": {"rpc": "http://127.0.0.1:8545", "head": 420, "agreed_block": 418, "lag_blocks": 2, "confirmations": 2},
}


def test_formatting_helpers_show_units_hex_iso_times_and_enum_names() -> None:
    import enum
    from dataclasses import dataclass

    from devsen.fmt import duration, iso_time, jsonable, token_amount

    assert token_amount(3_600_000) == "3.600000 DCT (3600000 units)"
    assert token_amount(5) == "0.000005 DCT (5 units)"
    assert token_amount(-1_500_000) == "-1.500000 DCT (-1500000 units)"
    assert iso_time(1_764_637_323) == "2025-12-02T01:02:03Z" and iso_time(0) == "never"
    assert duration(12.34) == "12.3s" and duration(302) == "5m 02s" and duration(3725) == "1h 02m"

    class Colour(enum.IntEnum):
        RED = 2

    @dataclass
    class Thing:
        id: bytes
        colour: Colour
        parts: tuple[int, ...]

    assert jsonable(Thing(b"\xd4\x01", Colour.RED, (1, 2))) == {"id": "0xd401", "colour": "RED", "parts": [1, 2]}


def test_node_status_for_people_names_every_concern() -> None:
    from devsen.cli import format_node_status

    text = format_node_status(STATUS_DOC)
    assert "height      57  (epoch 1" in text
    assert "peers       2 connected; unreachable: 12D3KooWDown" in text
    assert "validators  3 of 4 seen" in text
    assert "chargers    2 connected" in text
    assert "pending     anchors 1, settlements 2" in text
    assert "chain       head 420, agreed block 418, lag 2 blocks (reads wait 2 confirmations)" in text
    assert "up 2m 05s" in text
    # A node of an older version (fewer fields) still prints, with dashes.
    assert "peers       - connected" in format_node_status({"node": "old", "committed_height": 3})


def _serve_status(document: dict[str, Any]) -> tuple[int, Callable[[], None]]:
    """A real HTTP server on 127.0.0.1 answering /v1/status with `document`; (port, stop)."""
    import threading

    import trio

    from devsen.http_api import Router, serve_http

    router = Router()

    async def status(_: Any) -> tuple[int, dict[str, Any]]:
        return 200, document

    router.get("/v1/status", status)
    ready, ports, stop = threading.Event(), list[int](), list[Any]()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ports.append(await nursery.start(serve_http, router, "127.0.0.1", 0))
            stop.append((trio.lowlevel.current_trio_token(), nursery.cancel_scope.cancel))
            ready.set()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert ready.wait(10)

    def close() -> None:
        token, cancel = stop[0]
        token.run_sync_soon(cancel)
        thread.join(10)

    return ports[0], close


def test_status_command_text_json_and_a_node_that_does_not_answer(capsys: pytest.CaptureFixture[str]) -> None:
    port, close = _serve_status(STATUS_DOC)
    try:
        assert main(["status", "--node", f"http://127.0.0.1:{port}"]) == 0
        assert "validators  3 of 4 seen" in capsys.readouterr().out
        assert main(["status", "--node", f"http://127.0.0.1:{port}/", "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == STATUS_DOC
    finally:
        close()
    assert main(["status", "--node", f"http://127.0.0.1:{port}", "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert "did not answer" in err and "devsen devnet status" in err


def test_devnet_status_without_a_devnet_names_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devnet", "status", "--dir", str(tmp_path / "none")]) == 1
    assert "make devnet" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "devnet.json").write_text("{not json")
    assert main(["devnet", "node", "stop", "1", "--dir", str(tmp_path / "bad")]) == 1
    assert "not valid JSON" in capsys.readouterr().err


def _stopped_devnet_state(root: Path) -> dict[str, Any]:
    return {
        "version": 1, "dir": str(root),
        "supervisor": {"pid": 0, "started_at": "2026-12-02T00:00:00Z", "started_at_unix": 0},
        "chain": {"rpc": "http://127.0.0.1:9", "chain_id": 31337, "anvil_pid": None, "log": str(root / "anvil.log")},
        "deployment_file": str(root / "deployment.json"), "deployment": {"anchor": "0x" + "11" * 20},
        "nodes": [{"index": 1, "name": "node-1", "ocpp_url": "ws://127.0.0.1:9/ocpp", "http_url": "http://127.0.0.1:9",
                   "pid": None, "config": str(root / "node-1" / "node.toml"), "log": str(root / "node-1" / "node.log")}],
        "accounts": {"manager": {"index": 8, "address": "0x" + "88" * 20, "key_file": str(root / "accounts/manager.key")},
                     "driver": {"index": 9, "address": "0x" + "99" * 20, "key_file": str(root / "accounts/driver.key")}},
        "demo": None,
    }


def test_devnet_status_of_a_stopped_devnet_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from devsen.devnet_state import write_state

    write_state(tmp_path, _stopped_devnet_state(tmp_path))
    assert main(["devnet", "status", "--dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "not running" in text and "anvil pid None (stopped)" in text
    assert "1     stopped" in text and "ws://127.0.0.1:9/ocpp" in text
    assert "manager  #8  0x" + "88" * 20 in text
    assert main(["devnet", "status", "--dir", str(tmp_path), "--json"]) == 0
    live = json.loads(capsys.readouterr().out)
    assert live["nodes"][0]["running"] is False and live["nodes"][0]["serving"] is False
    assert live["supervisor"]["running"] is False
    # Stopping a stopped node is a no-op; starting one without its chain says what to do.
    assert main(["devnet", "node", "stop", "1", "--dir", str(tmp_path)]) == 0
    assert "node 1: was not running" in capsys.readouterr().out
    assert main(["devnet", "node", "start", "1", "--dir", str(tmp_path)]) == 1
    assert "chain (anvil) is not running" in capsys.readouterr().err
    assert main(["devnet", "node", "stop", "7", "--dir", str(tmp_path)]) == 1
    assert "no node 7: this devnet has nodes 1..1" in capsys.readouterr().err


def test_a_reused_pid_is_never_signalled(tmp_path: Path) -> None:
    """The state file names this test's own pid for a node: its command line is not that
    node's, so `devnet node stop` leaves it alone."""
    import os

    from devsen.devnet_state import pid_alive, stop_node, write_state

    state = _stopped_devnet_state(tmp_path)
    state["nodes"][0]["pid"] = os.getpid()
    write_state(tmp_path, state)
    assert not pid_alive(os.getpid(), state["nodes"][0]["config"])
    assert stop_node(tmp_path, 1)["was_running"] is False  # and we are still here


def test_wallet_session_for_people_has_no_reprs() -> None:
    from devsen.wallet import format_session

    doc = {"session_id": "0x" + "d4" * 32, "status": "SETTLED", "driver": "0x" + "99" * 20,
           "device_id": "0x" + "aa" * 32, "charge_box_id": "CP-42", "connector": 1, "id_tag_hash": "0x" + "bb" * 32,
           "session_token": "S" + "d4" * 9 + "d", "deposit_units": 10_000_000, "settled_units": 3_600_000,
           "refunded_units": 6_400_000, "energy_wh": 12_000, "opened_at": "2026-12-02T00:47:45Z",
           "opened_at_unix": 1796172465}
    text = format_session(doc)
    assert "b'" not in text and "SessionStatus" not in text
    assert "status    SETTLED" in text and "charger   CP-42 connector 1" in text
    assert "paid      3.600000 DCT (3600000 units) to the device manager" in text
    assert "refunded  6.400000 DCT (6400000 units) to the driver" in text
    assert "opened    2026-12-02T00:47:45Z" in text


def test_wallet_and_audit_accept_json_before_or_after_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    from anchoring.audit import audit_main

    assert audit_main(["verify", "0x" + "00" * 32, "--node", "http://127.0.0.1:9", "--rpc", "http://127.0.0.1:9",
                       "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "UNAVAILABLE" and doc["command"] == "verify"
    from devsen.wallet import _parser

    assert _parser().parse_args(["--rpc", "x", "--deployment", "d", "balance", "--json"]).json is True
    assert _parser().parse_args(["--rpc", "x", "--deployment", "d", "--json", "balance"]).json is True
    assert _parser().parse_args(["--rpc", "x", "--deployment", "d", "balance"]).json is False


def test_processes_left_by_a_devnet_that_died_are_stopped_by_the_next_one(tmp_path: Path) -> None:
    import subprocess
    import sys

    from devsen.devnet import stop_leftovers
    from devsen.devnet_state import pid_alive, write_state

    state = _stopped_devnet_state(tmp_path)
    config = state["nodes"][0]["config"]
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", config], start_new_session=True)
    try:
        state["nodes"][0]["pid"] = orphan.pid
        write_state(tmp_path, state)
        assert pid_alive(orphan.pid, config)
        assert stop_leftovers(tmp_path) == 1
        assert orphan.wait(timeout=10) is not None and not pid_alive(orphan.pid, config)
        assert stop_leftovers(tmp_path) == 0
    finally:
        if orphan.poll() is None:
            orphan.kill()
