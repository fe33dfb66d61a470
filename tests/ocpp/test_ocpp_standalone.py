"""`run_standalone` (the future `devsen ocpp-serve`): a real process serving real chargers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio
from ocpp_testkit import REPO, basic_auth, exchange
from trio_websocket import open_websocket_url

from ocpp_adapter.standalone import run_standalone


async def test_refuses_to_start_without_any_admissible_charger() -> None:
    assert await run_standalone(["--port", "0"]) == 2
    assert await run_standalone(["--port", "0", "--security-profile", "2"]) == 2


async def test_standalone_process_serves_a_charger(tmp_path: Path) -> None:
    chargers = tmp_path / "chargers.toml"
    chargers.write_text('CPX1 = "sesame"\n')
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "ocpp_adapter.standalone", "--port", "0", "--chargers", str(chargers),
         "--id-tags", "TAG-OK", "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = b""
        with trio.fail_after(20):
            while b"\n" not in line:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, "standalone exited early"
                line += chunk
        url = line.decode().split()[-1].replace("{chargeBoxId}", "CPX1")
        assert url.startswith("ws://127.0.0.1:")
        async with open_websocket_url(url, subprotocols=["ocpp2.0.1"], extra_headers=basic_auth("CPX1", "sesame")) as ws:
            ok = await exchange(ws, [2, "a", "Authorize", {"idToken": {"idToken": "TAG-OK", "type": "Central"}}])
            bad = await exchange(ws, [2, "b", "Authorize", {"idToken": {"idToken": "NOPE", "type": "Central"}}])
        assert ok == [3, "a", {"idTokenInfo": {"status": "Accepted"}}]
        assert bad == [3, "b", {"idTokenInfo": {"status": "Invalid"}}]
    finally:
        proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
