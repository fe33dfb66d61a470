"""RPC outage behaviour without a network: bounded requests to a blackholed endpoint, one log
line per outage, patient reads that outlast an outage and wake when it ends, and charger
credentials that neither hang a handshake nor vanish while the chain cannot be read.

The end-to-end test with 4 node processes is tests/e2e/test_e2e_rpc_outage.py.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests
import trio

from anchoring.chain import RetryPolicy, RpcUnavailable, connect, with_retries
from anchoring.chain.client import DeviceRecord
from anchoring.chain.transact import RpcHealth, rpc_health, sleep_until_recovery
from devsen import chain_view
from devsen.chain_view import ChainChargerRegistry, ChainReadError, patiently
from ocpp_adapter.auth import RegistryUnavailable


@pytest.fixture
def blackhole_url() -> Iterator[str]:
    """An endpoint that accepts TCP connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def _outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage() or "is back" in r.getMessage()]


def test_a_blackholed_rpc_fails_each_request_in_bounded_time_and_is_logged_once(
        blackhole_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    w3 = connect(blackhole_url, timeout_s=0.3)
    health = rpc_health(w3)
    assert health is not None and health.up
    for _ in range(3):
        began = time.monotonic()
        with pytest.raises(requests.exceptions.Timeout):
            w3.eth.block_number  # noqa: B018 (the request is the point)
        assert time.monotonic() - began < 2.0
    assert not health.up and health.failures == 3 and health.outages == 1
    w3 = connect(blackhole_url, timeout_s=30.0)  # while it is down, requests probe with a short timeout
    health = rpc_health(w3)
    assert health is not None
    health.failed(ConnectionRefusedError("refused"))
    began = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout):
        w3.eth.block_number  # noqa: B018
    assert time.monotonic() - began < 5.0
    assert health.status()["up"] is False and "Timeout" in health.status()["last_error"]
    assert len(_outage_lines(caplog)) == 2  # one per endpoint's outage, not one per failed request


def test_a_gateway_answering_503_counts_as_an_outage_and_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        w3 = connect(f"http://127.0.0.1:{server.server_address[1]}", timeout_s=2)
        with pytest.raises(RpcUnavailable):
            with_retries(lambda: w3.eth.block_number, RetryPolicy(attempts=3, base_delay_s=0.01))
        health = rpc_health(w3)
        assert health is not None and not health.up and health.failures == 3
        calls = iter(range(100))

        def read() -> int:
            if next(calls) < 3:
                return int(w3.eth.block_number)  # the 503: retried as an outage, never given up on
            return 7

        assert patiently("head", read, limit_s=0.0) == 7
    finally:
        server.shutdown()
        server.server_close()


def test_health_changes_state_once_each_way_and_ignores_requests_sent_before_a_success(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    health = RpcHealth("http://rpc")
    sent_long_ago = time.monotonic()
    health.succeeded()
    health.failed(TimeoutError("stalled connection"), sent_long_ago)  # a dead pooled connection timing out late
    assert health.up
    for _ in range(5):
        health.failed(ConnectionRefusedError("refused"), time.monotonic())
    health.succeeded()
    health.succeeded()
    assert health.up and health.outages == 1
    lines = _outage_lines(caplog)
    assert len(lines) == 2 and "unreachable" in lines[0] and "back after" in lines[1] and "5 failed" in lines[1]


def test_sleep_until_recovery_wakes_when_an_endpoint_answers_again() -> None:
    health = RpcHealth("http://rpc")
    health.failed(ConnectionRefusedError("refused"))
    woke: list[float] = []

    def sleeper() -> None:
        began = time.monotonic()
        sleep_until_recovery(30.0)
        woke.append(time.monotonic() - began)

    thread = threading.Thread(target=sleeper)
    thread.start()
    time.sleep(0.2)
    health.succeeded()
    thread.join(5)
    assert woke and woke[0] < 2.0


@pytest.fixture
def quick_patience(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chain_view, "PATIENT_FIRST_DELAY_S", 0.001)
    monkeypatch.setattr(chain_view, "PATIENT_MAX_DELAY_S", 0.002)


def test_patiently_outlasts_an_unreachable_rpc_beyond_its_limit(quick_patience: None,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    calls = iter(range(1000))

    def read() -> str:
        if next(calls) < 200:
            raise ChainReadError("eth_blockNumber failed") from requests.exceptions.ConnectionError("refused")
        return "facts"

    assert patiently("block facts", read, limit_s=0.0) == "facts"  # an outage never gives up
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # the RpcHealth logs outages


def test_patiently_gives_up_on_a_wrong_answer_after_its_limit_and_logs_once(
        quick_patience: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    tries = []

    def lagging() -> None:
        tries.append(1)
        raise ChainReadError("Ethereum block 9 not on our RPC yet")

    with pytest.raises(ChainReadError, match="still failing"):
        patiently("waiting for Ethereum block 9", lagging, limit_s=0.1)
    assert len(tries) > 5
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


class _Chain:
    """A stand-in chain client: `device` answers, fails, or hangs like a blackholed RPC."""

    def __init__(self, url: str) -> None:
        self.w3 = connect(url, timeout_s=0.2)
        self.mode = "answer"
        self.reads = 0

    def device(self, charge_box_id: str, block: object) -> DeviceRecord | None:
        self.reads += 1
        if self.mode == "hang":
            time.sleep(3.0)
        if self.mode == "fail":
            raise requests.exceptions.ConnectionError("refused")
        if charge_box_id.startswith("UNKNOWN"):
            return None
        return DeviceRecord(b"\x01" * 32, charge_box_id, "0x" + "22" * 20, "", 1, 1, 0, b"\x03" * 16, b"\x04" * 32,
                            b"", True, 1000)


async def test_registry_bounds_a_hanging_read_and_admits_recently_seen_chargers(blackhole_url: str) -> None:
    chain = _Chain(blackhole_url)
    registry = ChainChargerRegistry(chain, lookup_s=0.5)  # type: ignore[arg-type]
    known = await registry.credentials("CP-1")
    assert known is not None and known.admitted
    chain.mode = "hang"  # the RPC accepts and never answers
    for charger, expected in (("CP-1", known), ("CP-NEW", None)):
        began = trio.current_time()
        if expected is None:
            with pytest.raises(RegistryUnavailable):
                await registry.credentials(charger)
        else:
            assert await registry.credentials(charger) == expected
        assert trio.current_time() - began < 1.5  # the handshake is not held by the hanging read
    assert registry.stale_answers == 1


async def test_registry_does_not_read_while_the_rpc_is_known_down_and_forgets_stale_credentials(
        blackhole_url: str) -> None:
    chain = _Chain(blackhole_url)
    registry = ChainChargerRegistry(chain, stale_s=0.3)  # type: ignore[arg-type]
    assert await registry.credentials("CP-1") is not None
    assert await registry.credentials("UNKNOWN-1") is None
    health = rpc_health(chain.w3)
    assert health is not None
    health.failed(ConnectionRefusedError("refused"))
    reads = chain.reads
    assert await registry.credentials("CP-1") is not None  # from memory, no read
    assert chain.reads == reads
    with pytest.raises(RegistryUnavailable):  # an unknown charger is not told "unknown" on stale data
        await registry.credentials("UNKNOWN-1")
    await trio.sleep(0.35)
    with pytest.raises(RegistryUnavailable):  # too old to trust
        await registry.credentials("CP-1")
    health.succeeded()
    chain.mode = "fail"
    with pytest.raises(RegistryUnavailable):
        await registry.credentials("CP-1")
