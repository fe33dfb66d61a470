"""Run a local anvil chain for tests and the devnet: start, read its port and dev keys, stop by pid.

anvil blocks when its stdout is an undrained pipe (it logs every RPC call), so its output
goes to a file, which is also where the listening port and the dev private keys are read.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ANVIL_BIN = REPO_ROOT / "node_modules" / ".bin" / "anvil"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
MAX_LOG_SCAN_BYTES = 64 * 1024

_LISTENING = re.compile(r"Listening on 127\.0\.0\.1:(\d+)")
_PRIVATE_KEY = re.compile(r"^\(\d+\) (0x[0-9a-fA-F]{64})\s*$", re.MULTILINE)


class AnvilError(RuntimeError):
    """anvil did not start, or exited early."""


@dataclass
class AnvilProcess:
    """A running anvil: its pid, port, JSON-RPC URL and funded dev keys (hex)."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    dev_keys: list[str] = field(default_factory=list)
    block_time_s: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rpc(self, method: str, params: list[object]) -> object:
        """One JSON-RPC call to this anvil (its own `anvil_*` / `evm_*` methods); raises AnvilError."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            reply = json.loads(answer.read())
        if "error" in reply:
            raise AnvilError(f"anvil {method}: {reply['error']}")
        return reply.get("result")

    @contextmanager
    def mining_each_transaction(self) -> Iterator[None]:
        """Mine a block per transaction meanwhile (a deployment of dozens of transactions takes
        about a second instead of one block time each), then go back to `block_time_s`."""
        if self.block_time_s is None:
            yield
            return
        self.rpc("evm_setAutomine", [True])
        try:
            yield
        finally:
            self.rpc("evm_setIntervalMining", [self.block_time_s])

    def stop(self) -> None:
        """Terminate this anvil (by its pid), killing it if it does not exit in time."""
        if self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_S)


def start_anvil(
    log_path: Path,
    *,
    chain_id: int | None = None,
    block_time_s: int | None = None,
    extra_args: Sequence[str] = (),
    anvil_bin: Path = ANVIL_BIN,
    timeout_s: float = START_TIMEOUT_S,
) -> AnvilProcess:
    """Start `anvil --host 127.0.0.1 --port 0 --hardfork cancun`, output to `log_path`;
    return once it listens. Raises AnvilError (after stopping it) if it does not."""
    if not anvil_bin.exists():
        raise AnvilError(f"anvil not found at {anvil_bin}; run `make setup`")
    args = [str(anvil_bin), "--host", "127.0.0.1", "--port", "0", "--hardfork", "cancun"]
    if chain_id is not None:
        args += ["--chain-id", str(chain_id)]
    if block_time_s is not None:
        args += ["--block-time", str(block_time_s)]
    args += list(extra_args)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log_path.read_bytes()[:MAX_LOG_SCAN_BYTES].decode(errors="replace")
        match = _LISTENING.search(text)
        if match:
            keys = _PRIVATE_KEY.findall(text)
            return AnvilProcess(process, int(match.group(1)), log_path, keys, block_time_s)
        if process.poll() is not None:
            raise AnvilError(f"anvil exited with {process.returncode}: {text[-1000:]}")
        time.sleep(0.02)
    anvil = AnvilProcess(process, 0, log_path)
    anvil.stop()
    raise AnvilError(f"anvil did not listen within {timeout_s} s (log: {log_path})")


@contextmanager
def running_anvil(log_path: Path, **kwargs: object) -> Iterator[AnvilProcess]:
    """`start_anvil` as a context manager that always stops what it started."""
    anvil = start_anvil(log_path, **kwargs)  # type: ignore[arg-type]
    try:
        yield anvil
    finally:
        anvil.stop()
