"""The pinned non-Python toolchain works on this machine: solc-js compiles, anvil answers."""

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NODE_BIN = ROOT / "node_modules" / ".bin"

SOURCE = """// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;
contract Counter { uint256 public count; function bump() external { count += 1; } }
"""

COMPILE_JS = """
const solc = require('solc');
const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
process.stdout.write(solc.compile(JSON.stringify(input)));
"""


def test_solc_js_compiles_a_contract_for_cancun() -> None:
    assert json.loads((ROOT / "package.json").read_text())["dependencies"]["solc"] == "0.8.37"
    standard_input = {
        "language": "Solidity",
        "sources": {"Counter.sol": {"content": SOURCE}},
        "settings": {"evmVersion": "cancun", "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}}},
    }
    result = subprocess.run(["node", "-e", COMPILE_JS], input=json.dumps(standard_input), cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=True)
    output = json.loads(result.stdout)
    assert not [e for e in output.get("errors", []) if e["severity"] == "error"]
    counter = output["contracts"]["Counter.sol"]["Counter"]
    assert {item["name"] for item in counter["abi"] if item["type"] == "function"} == {"count", "bump"}
    assert re.fullmatch(r"[0-9a-f]{100,}", counter["evm"]["bytecode"]["object"])


def test_anvil_starts_on_loopback_and_answers_chain_id(tmp_path: Path) -> None:
    log_path = tmp_path / "anvil.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(NODE_BIN / "anvil"), "--host", "127.0.0.1", "--port", "0", "--hardfork", "cancun",
             "--chain-id", "31337"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            match = re.search(r"Listening on 127\.0\.0\.1:(\d+)", log_path.read_text())
            port = int(match.group(1)) if match else None
            time.sleep(0.05)
        assert port, f"anvil did not start: {log_path.read_text()[-500:]}"
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}",
            data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["result"] == hex(31337)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
