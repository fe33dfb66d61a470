"""A peer that is down is a few log lines, not ~90 ERRORs a minute (issue 17).

Unit tests drive the Reachability tracker with a fake clock; the host test dials a real
peer id on a 127.0.0.1 port where nothing listens, then starts that peer, then stops it.
"""

from __future__ import annotations

import io
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
import trio

from devsen.logs import setup_logging
from p2p.host import HostConfig, open_host
from p2p.keys import init_keys
from p2p.reachability import Reachability


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _tracker(caplog: pytest.LogCaptureFixture, **kwargs: Any) -> tuple[Reachability, Clock]:
    caplog.set_level(logging.DEBUG, logger="p2p.reachability")
    clock = Clock()
    return Reachability(clock=clock, **kwargs), clock


def _lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "p2p.reachability" and r.levelno == level]


def test_a_lost_peer_is_one_warning_then_a_summary_per_interval_then_one_info(caplog: pytest.LogCaptureFixture) -> None:
    reach, clock = _tracker(caplog, summary_interval_s=60, grace_s=10)
    reach.connected("peerB")
    reach.lost("peerB")
    for _ in range(90):  # a minute and a half of failed dials
        clock.now += 1
        reach.dial_failed("peerB", "OpenConnectionError: refused")
        reach.lost("peerB")  # the keeper sees it not connected on every pass
        reach.tick()
    warnings = _lines(caplog, logging.WARNING)
    assert len([w for w in warnings if "lost the connection to peer peerB" in w]) == 1
    summaries = [w for w in warnings if w.startswith("still unreachable: peerB")]
    assert summaries == ["still unreachable: peerB (for 60 s, 60 failed dials)"]
    assert len(warnings) == 2
    assert reach.unreachable() == ["peerB"]
    clock.now += 5
    reach.connected("peerB")
    reach.connected("peerB")
    infos = _lines(caplog, logging.INFO)
    assert infos == ["peer peerB is reachable again after 95 s (90 failed dials)"]
    assert reach.unreachable() == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_peer_never_reached_is_announced_once_after_the_grace_time(caplog: pytest.LogCaptureFixture) -> None:
    reach, clock = _tracker(caplog, summary_interval_s=60, grace_s=10)
    for _ in range(9):
        reach.dial_failed("peerC", "refused")
        clock.now += 1
    assert _lines(caplog, logging.WARNING) == []  # start-up order: not worth a line yet
    for _ in range(5):
        clock.now += 1
        reach.dial_failed("peerC", "refused")
    assert len(_lines(caplog, logging.WARNING)) == 1
    assert "peer peerC is unreachable" in _lines(caplog, logging.WARNING)[0]


def test_a_peer_that_connects_before_the_grace_time_leaves_no_line(caplog: pytest.LogCaptureFixture) -> None:
    reach, clock = _tracker(caplog, grace_s=10)
    reach.dial_failed("peerD", "refused")
    clock.now += 2
    reach.connected("peerD")
    assert _lines(caplog, logging.WARNING) == [] and _lines(caplog, logging.INFO) == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_real_peer_down_then_up_then_down_logs_few_lines_and_no_libp2p_errors(tmp_path: Path) -> None:
    stream = io.StringIO()
    handler = setup_logging("INFO", "text", stream=stream)
    keys_a, keys_b = init_keys(tmp_path / "a"), init_keys(tmp_path / "b")
    port_b = _free_port()
    addr_b = f"/ip4/127.0.0.1/tcp/{port_b}/p2p/{keys_b.peer_id.to_base58()}"
    peer_b = keys_b.peer_id.to_base58()

    async def scenario() -> dict[str, str]:
        marks: dict[str, str] = {}
        config_a = HostConfig(bootstrap=[addr_b], redial_min_s=0.25, redial_max_s=1.0, dial_timeout_s=1.0)
        async with open_host(keys_a, config_a) as host_a:
            host_a.keeper.reachability = Reachability(summary_interval_s=2.0, grace_s=1.0)
            await trio.sleep(5.0)  # B is down: ~5 dials at this short backoff
            marks["down"] = stream.getvalue()
            async with open_host(keys_b, HostConfig(listen=f"/ip4/127.0.0.1/tcp/{port_b}")):
                with trio.fail_after(15):
                    while not host_a.keeper.is_connected(keys_b.peer_id):
                        await trio.sleep(0.1)
                await trio.sleep(0.5)
                marks["up"] = stream.getvalue()
            with trio.fail_after(15):
                while "lost the connection" not in stream.getvalue():
                    await trio.sleep(0.1)
            assert host_a.keeper.dial_failures >= 3
        return marks

    try:
        marks = trio.run(scenario)
    finally:
        setup_logging("INFO", "text", stream=io.StringIO())
        handler.close()
    down, up, everything = marks["down"], marks["up"][len(marks["down"]):], stream.getvalue()
    assert "Failed to open TCP stream" not in everything  # py-libp2p's per-attempt ERROR, ~4 per dial before
    assert " ERROR " not in everything
    assert down.count(f"peer {peer_b} is unreachable") == 1
    assert down.count(f"still unreachable: {peer_b}") >= 1
    assert len([line for line in down.splitlines() if peer_b in line]) <= 4  # 5 s of a down peer
    assert up.count(f"peer {peer_b} is reachable again") == 1
    assert everything.count(f"lost the connection to peer {peer_b}") == 1


def test_the_first_summary_comes_a_whole_interval_after_the_peer_goes(caplog: pytest.LogCaptureFixture) -> None:
    reach, clock = _tracker(caplog, summary_interval_s=60, grace_s=10)
    reach.connected("peerE")
    for _ in range(200):  # up for 200 s: the ticks find nobody down
        clock.now += 1
        reach.tick()
    reach.lost("peerE")
    for _ in range(59):
        clock.now += 1
        reach.tick()
    assert not [w for w in _lines(caplog, logging.WARNING) if w.startswith("still unreachable")]
    clock.now += 1
    reach.tick()
    assert [w for w in _lines(caplog, logging.WARNING) if w.startswith("still unreachable")] == [
        "still unreachable: peerE (for 60 s, 0 failed dials)"]
