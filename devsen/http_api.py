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
MAX_BODY_BYTES = 4 * 1024  # POST bodies (a payment voucher is ~200 bytes of JSON)
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
    """GET (and a few POST) routes with `{name}` placeholders, matched in registration order.
    A POST handler finds the request body (JSON text, at most MAX_BODY_BYTES) in params["body"]."""

    routes: list[tuple[re.Pattern[str], Handler]] = field(default_factory=list)
    post_routes: list[tuple[re.Pattern[str], Handler]] = field(default_factory=list)

    @staticmethod
    def _pattern(template: str) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")

    def get(self, template: str, handler: Handler) -> None:
        """Register `handler` for GET `template` (e.g. "/v1/blocks/{height}")."""
        self.routes.append((self._pattern(template), handler))

    def post(self, template: str, handler: Handler) -> None:
        """Register `handler` for POST `template`; it gets the body as params["body"]."""
        self.post_routes.append((self._pattern(template), handler))

    async def dispatch(self, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
        """Route one request; unknown paths 404, other methods 405, handler errors 500."""
        path = path.split("?", 1)[0]
        mine, other = (self.post_routes, self.routes) if method == "POST" else (self.routes, self.post_routes)
        for pattern, handler in mine if method in ("GET", "POST") else ():
            match = pattern.match(path)
            if match:
                params = match.groupdict()
                if method == "POST":
                    params["body"] = body.decode("utf-8", "replace")
                try:
                    return await handler(params)
                except HttpError as exc:
                    return exc.status, {"error": exc.message}
                except Exception:
                    log.exception("HTTP handler for %s failed", path)
                    return 500, {"error": "internal error; see the node's log"}
        for pattern, _ in other + (mine if method not in ("GET", "POST") else []):
            if pattern.match(path):
                allowed = "POST" if any(p.match(path) for p, _ in self.post_routes) else "GET"
                return 405, {"error": f"method {method} not allowed; use {allowed}"}
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
                    request_body = await _read_body(stream, connection) if method == "POST" else b""
                    if request_body is None:
                        status, body = 413, {"error": f"request body over {MAX_BODY_BYTES} bytes"}
                    else:
                        status, body = await router.dispatch(method, target, request_body)
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


async def _read_body(stream: trio.SocketStream, connection: h11.Connection) -> bytes | None:
    """The request body, or None once it is over MAX_BODY_BYTES."""
    chunks: list[bytes] = []
    size = 0
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(MAX_REQUEST_BYTES)
            if not data:
                return b"".join(chunks)
            connection.receive_data(data)
            continue
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_BODY_BYTES:
                return None
            chunks.append(bytes(event.data))
            continue
        return b"".join(chunks)  # EndOfMessage (or the peer gave up)


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
    return await _http_json("GET", url, None, timeout)


async def http_post_json(url: str, body: str, timeout: float = 30.0) -> tuple[int, Any]:
    """POST a JSON text and read the JSON answer (`devsen wallet stream`, tests)."""
    return await _http_json("POST", url, body.encode(), timeout)


async def _http_json(method: str, url: str, body: bytes | None, timeout: float) -> tuple[int, Any]:
    match = re.fullmatch(r"http://([^/:]+)(?::(\d+))?(/.*)?", url)
    if not match:
        raise ValueError(f"{url!r} is not an http:// URL")
    host, port, path = match.group(1), int(match.group(2) or 80), match.group(3) or "/"
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            extra = "" if body is None else \
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            request = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode()
            await stream.send_all(request + (body or b""))
            chunks = []
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else None
