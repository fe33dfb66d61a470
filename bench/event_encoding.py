"""Micro-benchmark: the cost of one ChargerEvent's encodings (build, body hash, dedup key, event
id; and decode from bytes, as every node does for every gossiped or proposed event), for the
working tree against the `ocpp_adapter/events.py` of another commit (`--against`), in one
process, alternating, min of `--rounds`. The two must produce the same bytes (asserted).

    .venv/bin/python bench/event_encoding.py --against 22ffa52
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from ocpp_adapter import events as current  # noqa: E402

PAYLOAD: dict[str, Any] = {"connectorId": 1, "transactionId": 42, "meterValue": [{
    "timestamp": "2026-12-03T16:00:00.000Z", "sampledValue": [
        {"value": "12345", "measurand": "Energy.Active.Import.Register", "unit": "Wh", "context": "Sample.Periodic"},
        {"value": "7200", "measurand": "Power.Active.Import", "unit": "W"},
        {"value": "230.1", "measurand": "Voltage", "unit": "V", "phase": "L1"}]}]}


def module_at(commit: str) -> ModuleType:
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:ocpp_adapter/events.py"], check=True,
                            capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory(prefix="devsen-events-") as directory:
        path = Path(directory) / "events_before.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("events_before", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["events_before"] = module
        spec.loader.exec_module(module)  # the code is loaded: the file may go
    return module


def per_event_us(module: ModuleType, n: int) -> tuple[float, float, bytes]:
    """(build + hashes, decode + hashes) in CPU µs per event, and the encoding."""
    event_type = module.ChargerEvent
    args = ("CP-0001", "1.6", "MeterValues")
    tail = ("0x" + "ab" * 20, 1764777600000, b"\x01" * 16, b"\x02" * 65)
    data = event_type(*args, "m-1", PAYLOAD, *tail).to_bytes()
    start = time.process_time()
    for i in range(n):
        event = event_type(*args, f"m-{i}", PAYLOAD, *tail)
        _ = event.to_bytes(), event.body_hash, event.dedup_key, event.event_id
    built = time.process_time()
    for _ in range(n):
        event = event_type.from_bytes(data)
        _ = event.body_hash, event.dedup_key, event.event_id
    decoded = time.process_time()
    return 1e6 * (built - start) / n, 1e6 * (decoded - built) / n, data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="the commit whose events.py is 'before'")
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "event_encoding.json")
    args = parser.parse_args()
    before = module_at(args.against)
    best = {"before": [float("inf")] * 2, "after": [float("inf")] * 2}
    for round_ in range(args.rounds):
        for name, module in (("before", before), ("after", current)):
            build, decode, data = per_event_us(module, args.events)
            best[name] = [min(best[name][0], build), min(best[name][1], decode)]
            if name == "before":
                reference = data
            else:
                assert data == reference, "the encodings differ"
        print(f"round {round_ + 1}/{args.rounds}: before {best['before'][0]:.1f} / {best['before'][1]:.1f} µs, "
              f"after {best['after'][0]:.1f} / {best['after'][1]:.1f} µs (build / decode, min so far)", flush=True)
    result = {
        "what": "CPU µs per MeterValues event (3 sampled values, 418 bytes): build + body hash + dedup key + event "
                "id, and decode from bytes + the same hashes; min of rounds; identical bytes asserted",
        "before_commit": args.against, "events": args.events, "rounds": args.rounds,
        "before_us": {"build": round(best["before"][0], 1), "decode": round(best["before"][1], 1)},
        "after_us": {"build": round(best["after"][0], 1), "decode": round(best["after"][1], 1)},
        "load_1m": os.getloadavg()[0], "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
