"""The node's HTTP/1.1 JSON API: FastAPI (Starlette) served by Hypercorn's trio worker.

One place declares routes: a `Router`. Typed read routes are FastAPI `APIRouter`s added with
`router.include(...)` (devsen/api_routes.py); the older `(params) -> (status, body)` handlers
(anchoring/proofs.py `http_routes`, devsen/node.py) keep working through `router.get(...)` /
`router.post(...)`. `router.app()` builds the ASGI app, whose OpenAPI document is served at
`/openapi.json`. `router.dispatch(...)` runs one request in process (tests, no sockets).

Errors are always `{"error": "..."}`: bad parameters 400 naming the parameter (FastAPI's 422
is mapped to 400), unknown paths 404, wrong methods 405, a failing handler 500 without harm to
other requests. Hypercorn bounds request heads (16 KiB), idle keep-alive and read time.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger("devsen.http")

MAX_REQUEST_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5.0
API_VERSION = "1"

Handler = Callable[[dict[str, str]], Awaitable[tuple[int, Any]]]
BodyHandler = Callable[[dict[str, str], Any], Awaitable[tuple[int, Any]]]


class HttpError(Exception):
    """Raised by a handler to answer with a specific status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class JsonResponse(Response):
    """Compact JSON (no spaces), as the h11 API answered; key order as the handler built it."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()


class CanonicalJsonResponse(JsonResponse):
    """Compact JSON with sorted keys: two nodes holding the same state answer byte-identically."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":"), sort_keys=True).encode()


def _path_parameters(template: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{(\w+)\}", template)]


class Router:
    """Every route the node serves. `get`/`post` take plain handlers; `include` takes typed ones."""

    def __init__(self) -> None:
        self.api = APIRouter()
        self.declared: set[tuple[str, str]] = set()  # (method, path template) of every route
        self._app: FastAPI | None = None

    def get(self, template: str, handler: Handler, summary: str | None = None) -> None:
        """Register `handler(params) -> (status, body)` for GET `template` (e.g. "/v1/blocks/{height}")."""

        async def endpoint(request: Request) -> Response:
            return await _run(handler(dict(request.path_params)), request.url.path)

        self._add(template, endpoint, "GET", summary or (handler.__doc__ or handler.__name__).strip())

    def post(self, template: str, handler: BodyHandler, summary: str | None = None,
             max_body_bytes: int = MAX_BODY_BYTES) -> None:
        """Register `handler(params, json_body) -> (status, body)` for POST `template` (body at
        most `max_body_bytes`, 64 KiB by default; more is 413)."""
        assert 0 < max_body_bytes <= MAX_BODY_BYTES

        async def endpoint(request: Request) -> Response:
            raw = await request.body()
            if len(raw) > max_body_bytes:
                return JsonResponse({"error": f"body over {max_body_bytes} bytes"}, status_code=413)
            try:
                body = json.loads(raw) if raw else None
            except ValueError as exc:
                return JsonResponse({"error": f"body is not JSON: {exc}"}, status_code=400)
            return await _run(handler(dict(request.path_params), body), request.url.path)

        self._add(template, endpoint, "POST", summary or (handler.__doc__ or handler.__name__).strip())

    def include(self, api: APIRouter) -> None:
        """Add typed FastAPI routes (their parameters and answers appear in the OpenAPI document)."""
        self.api.include_router(api)
        for route in api.routes:
            if isinstance(route, APIRoute) and route.include_in_schema:
                self.declared.update((method, route.path) for method in route.methods or ())
        self._app = None

    def _add(self, template: str, endpoint: Callable[[Request], Awaitable[Response]], method: str,
             summary: str) -> None:
        self.api.add_api_route(template, endpoint, methods=[method], summary=summary.splitlines()[0],
                               openapi_extra={"parameters": _path_parameters(template)} if "{" in template else None,
                               response_class=JsonResponse)
        self.declared.add((method, template))
        self._app = None

    def app(self) -> FastAPI:
        """The ASGI application (built once per set of routes)."""
        if self._app is None:
            self._app = build_app(self.api)
        return self._app

    async def dispatch(self, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
        """Run one request in process; returns (status, decoded JSON or text)."""
        status, raw = await asgi_request(self.app(), method, path, body)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode("utf-8", "replace")


async def _run(answer: Awaitable[tuple[int, Any]], path: str) -> Response:
    try:
        status, body = await answer
    except HttpError as exc:
        return JsonResponse({"error": exc.message}, status_code=exc.status)
    except Exception:
        log.exception("HTTP handler for %s failed", path)
        return JsonResponse({"error": "internal error; see the node's log"}, status_code=500)
    return JsonResponse(body, status_code=status)


def _parameter_name(error: dict[str, Any]) -> str:
    loc = [str(part) for part in error.get("loc", ()) if part not in ("query", "path", "body", "header")]
    return ".".join(loc) or "request"


def build_app(api: APIRouter) -> FastAPI:
    """The FastAPI app around `api`, with the node's error shapes."""
    app = FastAPI(title="DEVSEN node API", version=API_VERSION, docs_url=None, redoc_url=None,
                  default_response_class=JsonResponse)
    app.include_router(api)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {}
        name = _parameter_name(first)
        message = str(first.get("msg", "invalid"))[:200]
        return JsonResponse({"error": f"bad parameter '{name}': {message}", "parameter": name}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404 and exc.detail == "Not Found":
            message = f"no route for {request.url.path[:200]}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed"
        else:
            message = str(exc.detail)
        return JsonResponse({"error": message}, status_code=exc.status_code)

    @app.exception_handler(HttpError)
    async def handler_error(request: Request, exc: HttpError) -> Response:
        return JsonResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> Response:
        log.error("HTTP handler for %s failed: %r", request.url.path, exc)
        return JsonResponse({"error": "internal error; see the node's log"}, status_code=500)

    return app


async def asgi_request(app: Any, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP request through an ASGI app without a socket: (status, body bytes)."""
    path, _, query = target.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
             "root_path": "", "headers": [(b"host", b"in-process"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 0), "server": ("in-process", 80)}
    sent = False
    status = 500
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))

    try:
        await app(scope, receive, send)
    except Exception:  # Starlette re-raises after its 500 answer has been sent
        if not chunks:
            raise
    return status, b"".join(chunks)


MAX_IN_FLIGHT = 256


class InFlightLimit:
    """ASGI wrapper: at most `limit` requests in progress; more get 503 at once (never queued)."""

    def __init__(self, app: Any, limit: int = MAX_IN_FLIGHT) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await JsonResponse({"error": f"over {self.limit} requests in progress; retry later"},
                               status_code=503)(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def hypercorn_config(host: str, port: int) -> Any:
    """Hypercorn settings: HTTP/1.1 only, bounded heads, idle and read times; no access log."""
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.h11_max_incomplete_size = MAX_REQUEST_BYTES
    config.keep_alive_timeout = KEEP_ALIVE_S
    config.read_timeout = int(REQUEST_TIMEOUT_S)
    config.graceful_timeout = 1.0
    config.accesslog = None
    config.errorlog = logging.getLogger("devsen.http.server")
    config.include_server_header = False
    config.alpn_protocols = ["http/1.1"]
    config.backlog = 512
    return config


async def serve_http(router: Router | Any, host: str, port: int, *,
                     task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `router` (or an ASGI app) on host:port until cancelled; reports the bound port."""
    from hypercorn.trio import serve

    app: Any = InFlightLimit(router.app() if isinstance(router, Router) else router)
    config = hypercorn_config(host, port)

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(lambda task_status: serve(app, config, task_status=task_status))
        bound_port = int(str(binds[0]).rsplit(":", 1)[1])
        log.info("HTTP API on http://%s:%d", host, bound_port)
        task_status.started(bound_port)


async def http_get_json(url: str, timeout: float = 10.0) -> tuple[int, Any]:
    """GET a JSON document over plain HTTP (used by `devsen audit` and tests)."""
    status, body = await http_get(url, timeout)
    return status, json.loads(body) if body else None


async def http_post_json(url: str, body: str, timeout: float = 30.0) -> tuple[int, Any]:
    """POST a JSON text and read the JSON answer (`devsen wallet stream`, tests)."""
    status, raw = await http_get(url, timeout, method="POST", body=body.encode("utf-8"))
    return status, json.loads(raw) if raw else None


async def http_get(url: str, timeout: float = 10.0, *, method: str = "GET", body: bytes = b"") -> tuple[int, bytes]:
    """GET (or `method` with `body`) over plain HTTP/1.1: (status, body bytes), chunked bodies decoded."""
    match = re.fullmatch(r"http://([^/:]+)(?::(\d+))?(/.*)?", url)
    if not match:
        raise ValueError(f"{url!r} is not an http:// URL")
    host, port, path = match.group(1), int(match.group(2) or 80), match.group(3) or "/"
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            length = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n" if method != "GET" else ""
            request = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{length}Connection: close\r\n\r\n".encode()
            await stream.send_all(request + body)
            raw = b""
            while chunk := await stream.receive_some(65536):
                raw += chunk
                if _complete(raw):  # do not wait for the server's close
                    break
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return status, body


def _complete(raw: bytes) -> bool:
    head, sep, body = raw.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    return bool(sep) and match is not None and len(body) >= int(match.group(1))


def _dechunk(data: bytes) -> bytes:
    out = []
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(rest[:size])
        data = rest[size + 2:]
    return b"".join(out)
