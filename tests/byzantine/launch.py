"""Run a real `devsen node` with exactly one behaviour altered by a test-only plugin.

    python tests/byzantine/launch.py --behaviour NAME -- node --config node.toml

The plugin `behaviours/NAME.py` monkeypatches one method of the product (its `install()`),
then this calls `devsen.cli.main`, the entry point of `devsen node`. Nothing in the product
knows about Byzantine behaviours: no flag, no hook. `--behaviour honest` changes nothing.
Plugin parameters come from `BYZ_*` environment variables set by the test.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("usage: launch.py --behaviour NAME -- <devsen args>", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="launch.py")
    parser.add_argument("--behaviour", required=True)
    args = parser.parse_args(argv[:split])
    plugin = importlib.import_module(f"behaviours.{args.behaviour}")
    plugin.install()
    from devsen.cli import main as devsen_main

    return devsen_main(argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
