"""Run every DEVSEN benchmark once, one after another, and list the result files.

Each script prints its figures and writes them to bench/results/. Measured side by side on
the same machine in one run; machines are shared and noisy, so compare ratios, not absolutes.

    .venv/bin/python bench/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = [
    ("gas_report.py", [], []),
    ("anchor_figures.py", [], []),
    ("ocpp_ingest.py", ["--chargers", "1000", "--duration", "10"], ["--chargers", "200", "--duration", "5"]),
    ("p2p_throughput.py", [], ["--quick"]),
    ("node_throughput.py", [], ["--chargers", "1", "10", "--duration", "5"]),
    ("compare.py", [], ["--quick"]),  # DEVSEN against the centralized baseline (issue 16)
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs where a script supports it")
    args = parser.parse_args()
    failed = []
    for script, full, quick in RUNS:
        path = HERE / script
        if not path.is_file():
            print(f"== {script}: not present, skipped")
            continue
        started = time.monotonic()
        print(f"== {script}", flush=True)
        code = subprocess.call([sys.executable, str(path), *(quick if args.quick else full)])
        print(f"== {script}: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
        if code:
            failed.append(script)
    print("results:", ", ".join(sorted(p.name for p in (HERE / "results").iterdir())))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
