"""`devsen simulate` against real WebSocket servers: the project's OCPP endpoint (in-memory
ingest) for a sane run, and a hostile CSMS that refuses, drops and ignores CALLs, which the
generator must report as it happened (CALLERRORs by code, timeouts, lost connections)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from ocpp_testkit import CHARGERS, PASSWORD, running_server
from trio_websocket import WebSocketRequest, serve_websocket

from devsen.cli import main as devsen_main
from devsen.simulate import ChargerSpec, Phase, charger_specs, simulate, sweep_plan


def check_sane(result: dict[str, Any], phases: int) -> None:
    assert result["connected"] == result["chargers"]
    assert result["protocol_errors"] == 0 and result["errors_total"] == 0
    assert len(result["phases"]) == phases
    for row in result["phases"]:
        lat = row["latency_ms"]
        assert row["answered"] > 0 and row["answered_per_s"] > 0
        assert lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]


FAST: dict[str, Any] = {"messages_per_second": 10_000.0}  # the endpoint's per-charger limit (20/s) would refuse a closed loop


async def test_simulate_full_sessions_both_versions() -> None:
    async with running_server(**FAST) as harness:
        url = f"ws://127.0.0.1:{harness.port}/ocpp"
        specs = charger_specs([url], [(cid, PASSWORD) for cid in CHARGERS[:6]], "mixed")
        result = await simulate(specs, [Phase(30.0, 2.0), Phase(None, 2.0)], id_tag="TAG-OK", call_timeout_s=5)
    check_sane(result, 2)
    assert result["versions"] == {"1.6": 3, "2.0.1": 3}
    open_loop = result["phases"][0]
    assert 40 <= open_loop["intended"] <= 80  # 30/s for 2 s
    # every charger ran boot, status, authorize, start, status, then stop and status
    assert result["setup"]["answered"] == 6 * 5 and result["teardown"]["answered"] == 6 * 2
    assert result["reply_statuses"]["Authorize Accepted"] == 6


async def test_simulate_sweep_offers_beyond_the_closed_loop_maximum() -> None:
    async with running_server(**FAST) as harness:
        specs = charger_specs([f"ws://127.0.0.1:{harness.port}/ocpp"], [(c, PASSWORD) for c in CHARGERS[:4]], "1.6")
        result = await simulate(specs, sweep_plan(1.5, [0.5, 2.0]), id_tag="TAG-OK", call_timeout_s=5)
    closed, half, double = result["phases"]
    assert closed["mode"] == "closed"
    assert half["offered_per_s"] == pytest.approx(closed["answered_per_s"] * 0.5, rel=0.01)
    assert double["offered_per_s"] == pytest.approx(closed["answered_per_s"] * 2.0, rel=0.01)
    # past saturation the queueing shows: latency is measured from the intended send time
    assert double["latency_ms"]["p50"] > half["latency_ms"]["p50"]


# ---------------------------------------------------------------- a hostile CSMS

async def hostile_csms(request: WebSocketRequest) -> None:
    """Boot and status fine; then of every 4 meter values: one answered, one CALLERROR,
    one never answered, one answered with a wrong message id; charger 0's connection is
    closed after its 6th meter value."""
    ws = await request.accept(subprotocol="ocpp1.6")
    charger = request.path.rsplit("/", 1)[-1]
    meters = 0
    while True:
        try:
            frame = json.loads(await ws.get_message())
        except Exception:
            return
        _, message_id, action, _payload = frame
        if action != "MeterValues":
            await ws.send_message(json.dumps([3, message_id, {"status": "Accepted", "currentTime": "x", "interval": 60,
                                                              "idTagInfo": {"status": "Accepted"},
                                                              "transactionId": 1}]))
            continue
        meters += 1
        if charger.endswith("0") and meters == 6:
            await ws.aclose()
            return
        kind = meters % 4
        if kind == 1:
            await ws.send_message(json.dumps([3, message_id, {}]))
        elif kind == 2:
            await ws.send_message(json.dumps([4, message_id, "InternalError", "hostile", {}]))
        elif kind == 3:
            await ws.send_message(json.dumps([3, "not-" + message_id, {}]))  # a reply to nothing: ignored
        # kind 0: no answer at all


async def test_simulate_reports_callerrors_timeouts_and_lost_connections_honestly() -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, hostile_csms, "127.0.0.1", 0, None)
        port = server.port
        specs = [ChargerSpec(f"HOSTILE-{i}", "pw", f"ws://127.0.0.1:{port}/ocpp", "1.6") for i in range(3)]
        result = await simulate(specs, [Phase(None, 3.0)], call_timeout_s=0.3)
        nursery.cancel_scope.cancel()
    row = result["phases"][0]
    assert row["callerrors"].get("InternalError", 0) > 0
    assert row["timeouts"] > 0
    assert row["connection_lost"] == 1
    assert result["protocol_errors"] == sum(row["callerrors"].values()) + sum(
        result["setup"]["callerrors"].values()) + sum(result["teardown"]["callerrors"].values())
    # nothing hidden: every CALL sent is either answered, refused or timed out (one lost with its connection)
    assert row["sent"] - row["answered"] - sum(row["callerrors"].values()) - row["timeouts"] in (0, 1)
    # answered are the good replies only
    assert row["answered"] <= row["sent"] // 2 + 3
    assert result["errors_total"] >= row["timeouts"] + row["connection_lost"] + sum(row["callerrors"].values())
    assert {s["kind"] for s in row["error_samples"]} >= {"CALLERROR", "timeout", "connection lost"}


async def test_simulate_counts_the_endpoints_rate_limit_refusals() -> None:
    """The endpoint's own per-charger limit (20 messages/s) refuses part of a closed loop with
    GenericError: the generator counts every refusal, as protocol errors, never as answers."""
    async with running_server() as harness:
        specs = charger_specs([f"ws://127.0.0.1:{harness.port}/ocpp"], [(c, PASSWORD) for c in CHARGERS[:2]], "1.6")
        result = await simulate(specs, [Phase(None, 2.0)], id_tag="TAG-OK", call_timeout_s=5)
    row = result["phases"][0]
    assert row["callerrors"].get("GenericError", 0) > 0
    assert row["answered"] + row["callerrors"]["GenericError"] == row["sent"]
    assert result["protocol_errors"] >= row["callerrors"]["GenericError"] and result["errors_total"] > 0
    assert "rate limit" in row["error_samples"][0]["detail"]


def test_simulate_cli_bad_input_names_the_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    assert devsen_main(["simulate", "--url", "http://x", "--chargers", "2", "--closed"]) == 2
    assert "--url" in capsys.readouterr().err
    assert devsen_main(["simulate", "--url", "ws://127.0.0.1:1", "--chargers", "2"]) == 2
    assert "--rate" in capsys.readouterr().err
    assert devsen_main(["simulate", "--url", "ws://127.0.0.1:1", "--chargers", "2", "--rate", "-5"]) == 2
    assert "--rate" in capsys.readouterr().err
    assert devsen_main(["simulate", "--url", "ws://127.0.0.1:1", "--chargers", "2", "--closed",
                        "--id-format", "CP-{j}"]) == 2
    assert "--id-format" in capsys.readouterr().err


async def test_simulate_cli_writes_json(tmp_path: Path) -> None:
    async with running_server(**FAST) as harness:
        out = tmp_path / "result.json"
        argv = ["simulate", "--url", f"ws://127.0.0.1:{harness.port}/ocpp", "--chargers", "3", "--id-format",
                "CP{i:03d}", "--password-format", PASSWORD, "--id-tag", "TAG-OK", "--rate", "20", "--duration", "1.5",
                "--out", str(out), "--quiet"]
        code = await trio.to_thread.run_sync(devsen_main, argv)
    assert code == 0
    check_sane(json.loads(out.read_text()), 1)
