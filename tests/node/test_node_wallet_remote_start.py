"""`devsen wallet open-session --wait-start NODE`: the driver sees what became of the remote start
(GET /v1/sessions/{id} "remote_start", served here by a loopback HTTP server)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from devsen.ledger.remote_starts import remote_start_status
from devsen.wallet import format_remote_start, wait_remote_start

SESSION = b"\x0a" * 32


@pytest.fixture
def node() -> Iterator[tuple[str, list[Any]]]:
    answers: list[Any] = []  # (status, document) served in turn, the last one repeated

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            status, doc = answers.pop(0) if len(answers) > 1 else answers[0]
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", answers
    finally:
        server.shutdown()
        server.server_close()


def remote(status: str, body: dict[str, Any] | None = None, height: int | None = None) -> dict[str, Any]:
    return {"session": {"remote_start": {"status": status, "outcome_height": height,
                                         **remote_start_status(status, body)}}}


def test_waits_through_404_and_waiting_and_prints_the_rejection(node: tuple[str, list[Any]]) -> None:
    url, answers = node
    answers += [(404, {"error": "no escrow session"}), (200, remote("pending")),
                (200, remote("result", {"status": "Rejected"}, 42))]
    got = wait_remote_start(url, SESSION, 30)
    assert got["state"] == "rejected"
    assert format_remote_start(got) == ("remote start REJECTED by the charger: the charger answered Rejected "
                                        "(committed at height 42)")


def test_an_offline_charger_leaves_it_waiting_and_a_broken_node_is_a_clear_error(node: tuple[str, list[Any]]) -> None:
    url, answers = node
    answers.append((200, remote("pending")))
    got = wait_remote_start(url, SESSION, 0)
    assert got["state"] == "waiting" and "when the charger connects" in format_remote_start(got)
    answers[0] = (500, {"error": "boom"})
    with pytest.raises(ValueError, match="--wait-start: .* answered 500"):
        wait_remote_start(url, SESSION, 0)
    with pytest.raises(ValueError, match="--wait-start: cannot read"):
        wait_remote_start("http://127.0.0.1:9", SESSION, 0)
