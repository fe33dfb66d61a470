"""Solidity sources (`src/`), the pinned solc-js build, and committed artifacts (`artifacts/`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONTRACTS_DIR = Path(__file__).resolve().parent
ARTIFACTS_DIR = CONTRACTS_DIR / "artifacts"


def load_artifact(name: str) -> dict[str, Any]:
    """Return the committed artifact `{"abi": [...], "bytecode": "0x..."}` of contract `name`."""
    path = ARTIFACTS_DIR / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no artifact for contract {name!r} at {path}; run `make contracts`")
    data: dict[str, Any] = json.loads(path.read_text())
    return data
