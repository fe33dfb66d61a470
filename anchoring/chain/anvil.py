"""Run a local anvil chain for tests and the devnet: start, read its port and dev keys, stop by pid.

anvil blocks when its stdout is an undrained pipe (it logs every RPC call), so its output
goes to a file, which is also where the listening port and the dev private keys are read.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
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

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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
            return AnvilProcess(process, int(match.group(1)), log_path, keys)
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
