"""Compile `contracts/src/*.sol` with the pinned solc-js and write `contracts/artifacts/*.json`.

`python -m contracts.build` rewrites the artifacts; `--check` compiles into memory and exits 1
if any committed artifact differs byte for byte (what CI runs). The output is deterministic:
fixed compiler (package.json pins solc 0.8.37), evmVersion cancun (py-evm has no osaka),
`metadata.bytecodeHash: none` so comments do not change the bytecode, sorted JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from contracts import ARTIFACTS_DIR, CONTRACTS_DIR

REPO_ROOT = CONTRACTS_DIR.parent
SOURCE_DIR = CONTRACTS_DIR / "src"
SOLC_VERSION = "0.8.37"
EVM_VERSION = "cancun"
COMPILE_TIMEOUT_S = 120
# The contracts that get an artifact (libraries, interfaces and abstract bases do not).
DEPLOYABLE = ("ValidatorSet", "UserRegistry", "DeviceFactory", "ChargeToken", "Escrow", "Anchor", "Rewards")

_NODE_COMPILE = (
    "const solc = require('solc');"
    "let input = '';"
    "process.stdin.on('data', (c) => { input += c; });"
    "process.stdin.on('end', () => {"
    "  process.stdout.write(JSON.stringify({version: solc.version(), output: JSON.parse(solc.compile(input))}));"
    "});"
)


class CompileError(RuntimeError):
    """solc reported errors, or the compiler is not the pinned one."""


def standard_json_input(source_dir: Path = SOURCE_DIR) -> dict[str, Any]:
    """The solc standard-JSON input for every source under `source_dir` (`contracts/src`)."""
    sources = {
        f"src/{path.name}": {"content": path.read_text()} for path in sorted(source_dir.glob("*.sol"))
    }
    return {
        "language": "Solidity",
        "sources": sources,
        "settings": {
            "evmVersion": EVM_VERSION,
            "optimizer": {"enabled": True, "runs": 200},
            "metadata": {"bytecodeHash": "none"},
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
        },
    }


def compile_artifacts() -> dict[str, bytes]:
    """Compile all sources; return artifact file name -> exact file bytes."""
    compiled = compile_contracts(SOURCE_DIR, DEPLOYABLE)
    return {f"{name}.json": (json.dumps(artifact, indent=1, sort_keys=True) + "\n").encode()
            for name, artifact in compiled.items()}


def compile_contracts(source_dir: Path, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Compile every `*.sol` under `source_dir` with the pinned solc; artifacts of `names`
    (also what tests use for their test-only contracts)."""
    proc = subprocess.run(
        ["node", "-e", _NODE_COMPILE],
        input=json.dumps(standard_json_input(source_dir)).encode(),
        capture_output=True,
        cwd=REPO_ROOT,
        timeout=COMPILE_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise CompileError(f"node/solc failed: {proc.stderr.decode(errors='replace')[-2000:]}")
    result = json.loads(proc.stdout)
    if not str(result["version"]).startswith(SOLC_VERSION + "+"):
        raise CompileError(f"solc {result['version']} is not the pinned {SOLC_VERSION}")
    output = result["output"]
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise CompileError("\n".join(e.get("formattedMessage", e["message"]) for e in errors))
    by_name: dict[str, dict[str, Any]] = {}
    for contracts in output["contracts"].values():
        by_name.update(contracts)
    artifacts: dict[str, dict[str, Any]] = {}
    for name in names:
        compiled = by_name[name]
        artifacts[name] = {
            "contractName": name,
            "compiler": f"solc-js {result['version']}",
            "evmVersion": EVM_VERSION,
            "abi": compiled["abi"],
            "bytecode": "0x" + compiled["evm"]["bytecode"]["object"],
            "deployedBytecode": "0x" + compiled["evm"]["deployedBytecode"]["object"],
        }
    return artifacts


def changed_artifacts(files: dict[str, bytes], directory: Path = ARTIFACTS_DIR) -> list[str]:
    """Names of artifacts whose committed bytes differ from `files` (or are missing)."""
    changed = []
    for name, data in sorted(files.items()):
        path = directory / name
        if not path.is_file() or path.read_bytes() != data:
            changed.append(name)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    files = compile_artifacts()
    if args.check:
        changed = changed_artifacts(files)
        for name in changed:
            print(f"artifact differs from a fresh compile: {name}", file=sys.stderr)
        return 1 if changed else 0
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    for name, data in files.items():
        (ARTIFACTS_DIR / name).write_bytes(data)
    print(f"wrote {len(files)} artifacts to {ARTIFACTS_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
