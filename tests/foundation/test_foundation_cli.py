"""The `devsen` command: help, config checking, honest 'not built' answers, logging formats."""

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from devsen.cli import DELEGATED, build_parser, main
from devsen.logs import setup_logging

ROOT = Path(__file__).resolve().parents[2]


def test_console_script_help_lists_every_planned_subcommand() -> None:
    result = subprocess.run([sys.executable, "-m", "devsen.cli", "--help"], capture_output=True,
                            text=True, timeout=60, check=True)
    for name in ("node", "devnet", "wallet", "audit", "keys", "chain", "ocpp-serve", "config"):
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
