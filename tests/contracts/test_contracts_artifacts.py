"""The committed artifacts are exactly what the pinned solc-js produces from the sources."""

from __future__ import annotations

import shutil

import pytest

from contracts import load_artifact
from contracts.build import DEPLOYABLE, changed_artifacts, compile_artifacts


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_recompiled_artifacts_match_committed_bytes() -> None:
    files = compile_artifacts()
    assert sorted(files) == sorted(f"{name}.json" for name in DEPLOYABLE)
    assert changed_artifacts(files) == [], "run `make contracts` and commit the artifacts"


def test_artifacts_load_with_abi_and_bytecode() -> None:
    for name in DEPLOYABLE:
        artifact = load_artifact(name)
        assert artifact["bytecode"].startswith("0x") and len(artifact["bytecode"]) > 1000
        assert any(item["type"] == "constructor" for item in artifact["abi"])
        assert artifact["evmVersion"] == "cancun"
