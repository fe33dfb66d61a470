"""Byzantine ingress against a signed-meter device (issue 12 part 1): node 4 runs the
`forge_events` behaviour (a StartTransaction with the demo session's token and a
StopTransaction with meterStop = 2**62, vouched with its own key) against DEMO-CP-1, whose
meter key is on chain with requireSignedMeter. Nothing the forger writes is signed by the
meter, so the honest nodes settle 0 Wh and 0 tokens (before signed meters: up to the physics
bound), keep committing and agree.

    .venv/bin/pytest -m byzantine tests/byzantine/test_byzantine_signed_meter.py -s
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import byz_network
import pytest
import trio
from byz_network import ByzNetwork, assert_honest_progress

from anchoring.chain import ChainClient
from anchoring.chain.client import SessionStatus
from devsen.devnet import DEMO_CHARGER

pytestmark = [pytest.mark.byzantine, pytest.mark.slow]
net = byz_network.net  # the suite's network fixture: one network for this module


SIGNED_METER = True  # the `net` fixture (byz_network.py) registers the demo meter key


def test_forged_energy_on_a_signed_meter_device_settles_nothing(net: ByzNetwork, tmp_path: Path) -> None:
    report_path = tmp_path / "forged.json"
    session_id = net.seeded["session_id"]
    net.swap("forge_events", {"BYZ_CHARGER": DEMO_CHARGER, "BYZ_CONNECTOR": "1",
                              "BYZ_SESSION_ID": session_id.hex(), "BYZ_REPORT": str(report_path)})
    observation = trio.run(net.observe, "forge_events_signed_meter", 15.0, None)
    deadline = time.monotonic() + 90
    while not report_path.exists() and time.monotonic() < deadline:
        time.sleep(1)
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    print("forger's own view:", report)
    assert_honest_progress(observation)
    assert report.get("stop", {}).get("height"), f"the self-vouched forgery was not committed: {report}"
    client: ChainClient = net.seeded["driver_client"]
    session = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        session = client.session(session_id, "latest")
        if session is not None and session.status == SessionStatus.SETTLED:
            break
        time.sleep(2)
    print("escrow session after the forgery:", session)
    assert session is not None and session.status == SessionStatus.SETTLED
    assert session.energy_wh == 0 and session.settled_amount == 0
