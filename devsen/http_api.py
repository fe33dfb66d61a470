"""The node's small HTTP/1.1 JSON API (status, blocks, event proofs), on trio + h11.

Routes are plain functions `(params) -> (status, json-able body)`, so they are tested
without sockets. The server bounds request size, header time and concurrent connections,
and one failing handler answers 500 without harming other requests.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

log = logging.getLogger("devsen.http")

MAX_REQUEST_BYTES = 16 * 1024
MAX_CONNECTIONS = 256
REQUEST_TIMEOUT_S = 10.0

Handler = Callable[[dict[str, str]], Awaitable[tuple[int, Any]]]


class HttpError(Exception):
    """Raised by a handler to answer with a specific status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Router:
    """GET routes with `{name}` placeholders, matched in registration order."""

    routes: list[tuple[re.Pattern[str], Handler]] = field(default_factory=list)

    def get(self, template: str, handler: Handler) -> None:
        """Register `handler` for GET `template` (e.g. "/v1/blocks/{height}")."""
        pattern = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$"
        self.routes.append((re.compile(pattern), handler))

    async def dispatch(self, method: str, path: str) -> tuple[int, Any]:
        """Route one request; unknown paths 404, other methods 405, handler errors 500."""
        path = path.split("?", 1)[0]
        for pattern, handler in self.routes:
            match = pattern.match(path)
            if match:
                if method != "GET":
                    return 405, {"error": f"method {method} not allowed; use GET"}
                try:
                    return await handler(match.groupdict())
                except HttpError as exc:
                    return exc.status, {"error": exc.message}
                except Exception:
                    log.exception("HTTP handler for %s failed", path)
                    return 500, {"error": "internal error; see the node's log"}
        return 404, {"error": f"no route for {path}"}


async def _serve_connection(stream: trio.SocketStream, router: Router) -> None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    try:
        with trio.fail_after(REQUEST_TIMEOUT_S):
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(MAX_REQUEST_BYTES)
                    connection.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(event, h11.Request):
                    method = event.method.decode("ascii", "replace")
                    target = event.target.decode("ascii", "replace")
                    status, body = await router.dispatch(method, target)
                    payload = json.dumps(body, separators=(",", ":")).encode()
                    headers = [("content-type", "application/json"), ("content-length", str(len(payload))),
                               ("connection", "close")]
                    await stream.send_all(connection.send(h11.Response(status_code=status, headers=headers)))
                    await stream.send_all(connection.send(h11.Data(data=payload)))
                    await stream.send_all(connection.send(h11.EndOfMessage()))
                    return
                return
    except h11.RemoteProtocolError as exc:
        await _send_bad_request(stream, connection, exc)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
        return
    finally:
        await stream.aclose()


async def _send_bad_request(stream: trio.SocketStream, connection: h11.Connection,
                            error: h11.RemoteProtocolError) -> None:
    """Answer a malformed or oversize request with its status (400/431) when still possible."""
    payload = json.dumps({"error": f"bad request: {error}"}).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(payload))),
               ("connection", "close")]
    try:
        response = h11.Response(status_code=error.error_status_hint, headers=headers)
        await stream.send_all(connection.send(response) + connection.send(h11.Data(data=payload))
                              + connection.send(h11.EndOfMessage()))
    except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return


async def serve_http(router: Router, host: str, port: int, *,
                     task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `router` on host:port until cancelled; reports the bound port via task_status."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)
    bound_port = listeners[0].socket.getsockname()[1]
    log.info("HTTP API on http://%s:%d", host, bound_port)
    task_status.started(bound_port)

    async def handle(stream: trio.SocketStream) -> None:
        async with limiter:
            try:
                await _serve_connection(stream, router)
            except Exception:  # one broken connection never stops the API
                log.exception("HTTP connection failed")

    await trio.serve_listeners(handle, listeners)


async def http_get_json(url: str, timeout: float = 10.0) -> tuple[int, Any]:
    """GET a JSON document over plain HTTP (used by `devsen audit` and tests)."""
    match = re.fullmatch(r"http://([^/:]+)(?::(\d+))?(/.*)?", url)
    if not match:
        raise ValueError(f"{url!r} is not an http:// URL")
    host, port, path = match.group(1), int(match.group(2) or 80), match.group(3) or "/"
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            await stream.send_all(request)
            chunks = []
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else None
