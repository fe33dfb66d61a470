"""Micro-benchmark of the profile's top area on a node (bench/results/compare_profile.md):
decoding block payloads. A node decodes each event payload in check_tx (when it arrives),
prepare_proposal, process_proposal and finalize_block; `devsen.app.split_payloads` now keeps a
bounded memo of decoded events, so the later passes reuse the first decode.

Measures split_payloads over one block of --events MeterValues events (as a charger sends
them, signed), --passes times (4: the passes above), cold (every payload new) and as the node
sees it; prints and writes bench/results/decode_once.json.

    .venv/bin/python bench/decode_once.py [--events 50] [--passes 4] [--rounds 200]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from devsen import app
from ocpp_adapter.events import ChargerEvent

RESULTS = Path(__file__).resolve().parent / "results"


def block(events: int, salt: int) -> tuple[bytes, ...]:
    out = []
    for i in range(events):
        payload = {"connectorId": 1, "transactionId": 7, "meterValue": [{"timestamp": "2026-12-02T04:00:00Z",
                   "sampledValue": [{"value": str(1000 + i), "measurand": "Energy.Active.Import.Register",
                                     "unit": "Wh"}]}]}
        event = ChargerEvent(f"BENCH-CP-{i:04d}", "1.6", "MeterValues", f"{salt}-{i}", payload, "",
                             1_700_000_000_000 + i)
        out.append(event.with_vouch(b"\x11" * 20, b"\x22" * 65).to_bytes())  # split_payloads checks no signature
    return tuple(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--label", default="after")
    args = parser.parse_args()
    blocks = [block(args.events, r) for r in range(args.rounds)]
    started = time.process_time()
    for payloads in blocks:
        for _ in range(args.passes):
            app.split_payloads(payloads)
    cpu = time.process_time() - started
    per_block_ms = 1000 * cpu / args.rounds
    result = {"label": args.label, "events_per_block": args.events, "passes": args.passes, "rounds": args.rounds,
              "cpu_ms_per_block": round(per_block_ms, 2),
              "cpu_us_per_event": round(1000 * per_block_ms / args.events, 1),
              "load_1m": round(os.getloadavg()[0], 1)}
    print(json.dumps(result))
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "decode_once.jsonl", "a") as out:
        out.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
