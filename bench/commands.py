"""Cost of manager commands (issue 13) on the pure core, and their end-to-end latency.

Pure core (no network, no chain): for each of a few representative commands, --count fresh
signed commands (every one new, so no signer cache helps) go through what a node does with a
command payload, timed step by step:
  decode   decode_command (the payload bytes -> ChargerCommand)
  recover  the EIP-712 digest and the signer's recovery (CommandGate.identify, uncached)
  schema   command_problem (fields, JSON, the OCPP request schema of the action)
  admit    CommandBook.admit: the ledger's apply of one command (it re-runs the refusal
           checks, schema included, then nonce window, record, pending index)
and for each outcome (the charger's CALLRESULT, signed by a validator):
  decode + recover (decode_outcome, the validator's recovery) and record
  (CommandBook.record_outcome; GetConfiguration's result also becomes configuration state).
Admission = decode + recover + admit (admit includes the schema check).

End to end: tests/e2e/test_e2e_command_round_trips.py writes bench/results/commands_e2e.json
(4 real nodes, the `ocpp` package's ChargePoint as charger: submit to another node ->
outcome committed, seen at the submitting node); its figures are read and reported here.

Writes bench/results/commands.json and commands.md.
    .venv/bin/python bench/commands.py [--count 2000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from devsen.command_gate import CommandGate
from devsen.ledger.commands import (
    CommandBook,
    command_problem,
    decode_command,
    decode_outcome,
    sign_command,
    sign_outcome,
)
from primitives.eip712 import Domain, SigningKey

RESULTS = Path(__file__).resolve().parent / "results"
MANAGER = SigningKey(b"\x41" * 32)
VALIDATOR = SigningKey(b"\x43" * 32)
DOMAIN = Domain(31337, b"\xdf" * 20)
ANCHOR = Domain(31337, b"\xa0" * 20)
BLOCK_MS = 1_800_000_000_000
CHARGERS = 500  # commands spread over chargers (at most 32 pending per charger)

CASES: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
    "Reset 1.6": ("1.6", "Reset", {"type": "Soft"}, {"status": "Accepted"}),
    "GetConfiguration 1.6": ("1.6", "GetConfiguration", {}, {"configurationKey": [
        {"key": f"Key{i}", "value": str(i), "readonly": False} for i in range(20)]}),
    "SetChargingProfile 1.6": ("1.6", "SetChargingProfile", {"connectorId": 1, "csChargingProfiles": {
        "chargingProfileId": 7, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute", "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [
            {"startPeriod": 900 * i, "limit": 16.5} for i in range(24)]}}}, {"status": "Accepted"}),
    "SetVariables 2.0.1": ("2.0.1", "SetVariables", {"setVariableData": [
        {"attributeValue": "60", "component": {"name": "SampledDataCtrlr"}, "variable": {"name": "TxUpdatedInterval"}},
        {"attributeValue": "300", "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}]},
        {"setVariableResult": [
            {"attributeStatus": "Accepted", "component": {"name": "SampledDataCtrlr"},
             "variable": {"name": "TxUpdatedInterval"}},
            {"attributeStatus": "Accepted", "component": {"name": "OCPPCommCtrlr"},
             "variable": {"name": "HeartbeatInterval"}}]}),
}


def bench_case(version: str, action: str, payload: dict[str, Any], result: dict[str, Any], count: int
               ) -> dict[str, float]:
    """Median µs per step for `count` fresh commands of one kind, and their outcomes."""
    seq = iter(range(1, 10**9))
    book = CommandBook(lambda: next(seq))
    gate = CommandGate(DOMAIN, ANCHOR)
    commands = [sign_command(MANAGER, DOMAIN, f"BENCH-CP-{i % CHARGERS:04d}", version, action, payload,
                             i // CHARGERS + 1, BLOCK_MS + 600_000).encode() for i in range(count)]
    steps: dict[str, list[float]] = {k: [] for k in ("decode", "recover", "schema", "admit", "admission",
                                                     "outcome_decode_recover", "outcome_record", "outcome")}
    ids = []
    clock = time.perf_counter_ns

    def note(step: str, began: int) -> int:
        now = clock()
        steps[step].append((now - began) / 1_000)
        return now

    for data in commands:
        t0 = clock()
        command = decode_command(data)
        t1 = note("decode", t0)
        command_id, signer = gate.identify(command)
        t2 = note("recover", t1)
        refused = book.admit(command, command_id, signer, MANAGER.address, BLOCK_MS, 2)
        note("admit", t2)
        note("admission", t0)
        assert refused is None, refused
        t3 = clock()
        command_problem(command)
        note("schema", t3)
        ids.append(command_id)
    outcomes = [sign_outcome(VALIDATOR, ANCHOR, i, "result", result).encode() for i in ids]
    for data in outcomes:
        t0 = clock()
        outcome = decode_outcome(data)
        reporter = outcome.signer(ANCHOR)
        t1 = note("outcome_decode_recover", t0)
        refused = book.record_outcome(outcome, reporter, 3)
        note("outcome_record", t1)
        note("outcome", t0)
        assert refused is None, refused
    return {f"{k}_us": round(statistics.median(v), 1) for k, v in steps.items()}


def e2e_figures() -> dict[str, Any] | None:
    path = RESULTS / "commands_e2e.json"
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    figures = {}
    for version, doc in raw.items():
        samples = doc["sequential_round_trip_s"]
        figures[version] = {"commands": doc["commands"], "all_commands_wall_s": doc["all_commands_wall_s"],
                            "round_trip_median_ms": round(1000 * statistics.median(samples)),
                            "round_trip_max_ms": round(1000 * max(samples)), "samples": len(samples)}
    return figures


def markdown(core: dict[str, dict[str, float]], e2e: dict[str, Any] | None, count: int) -> str:
    lines = ["# Manager commands: cost on the pure core and end-to-end latency", "",
             f"Pure core, median of {count} fresh commands per kind (µs per command; admission = decode + "
             "signature recovery + ledger admit, the admit re-running the schema check):", "",
             "| command | decode | recover | schema | admit | **admission** | outcome decode+recover "
             "| outcome record | **outcome apply** |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, f in core.items():
        lines.append(f"| {name} | {f['decode_us']} | {f['recover_us']} | {f['schema_us']} | {f['admit_us']} | "
                     f"**{f['admission_us']}** | {f['outcome_decode_recover_us']} | {f['outcome_record_us']} | "
                     f"**{f['outcome_us']}** |")
    lines.append("")
    if e2e is None:
        lines.append("End to end: no bench/results/commands_e2e.json (run tests/e2e/test_e2e_command_round_trips.py).")
    else:
        lines += ["End to end (tests/e2e/test_e2e_command_round_trips.py: 4 node processes on one machine, the "
                  "charger at node 1, commands submitted to nodes 0/2/3; submit -> outcome committed at the "
                  "submitting node, one command at a time):", "",
                  "| OCPP | commands round tripped | wall time, connect + all | round trip median | max | samples |",
                  "|---|---:|---:|---:|---:|---:|"]
        for version, f in e2e.items():
            lines.append(f"| {version} | {f['commands']} | {f['all_commands_wall_s']} s | "
                         f"{f['round_trip_median_ms']} ms | {f['round_trip_max_ms']} ms | {f['samples']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2_000, help="fresh commands per kind (default 2000)")
    args = parser.parse_args()
    if not 1 <= args.count <= 10_000:
        parser.error("--count must be 1..10000 (the ledger keeps at most 10000 commands)")
    core = {}
    for name, (version, action, payload, result) in CASES.items():
        core[name] = bench_case(version, action, payload, result, args.count)
        f = core[name]
        print(f"{name:24s} admission {f['admission_us']:8.1f} µs (decode {f['decode_us']} µs, recover "
              f"{f['recover_us']} µs, admit {f['admit_us']} µs incl. schema {f['schema_us']} µs); "
              f"outcome apply {f['outcome_us']:7.1f} µs")
    e2e = e2e_figures()
    for version, f in (e2e or {}).items():
        print(f"e2e OCPP {version}: {f['commands']} commands in {f['all_commands_wall_s']} s; round trip median "
              f"{f['round_trip_median_ms']} ms, max {f['round_trip_max_ms']} ms ({f['samples']} one at a time)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    document = {"unit": "µs per command (median)", "count": args.count, "core": core, "e2e": e2e}
    (RESULTS / "commands.json").write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    (RESULTS / "commands.md").write_text(markdown(core, e2e, args.count))
    print(f"wrote {RESULTS / 'commands.json'} and commands.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
