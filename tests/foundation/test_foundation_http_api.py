"""The node's HTTP API server: routing, errors, limits, and a real socket round trip."""

from typing import Any

import trio

from devsen.http_api import (
    HttpError,
    InFlightLimit,
    Router,
    asgi_request,
    http_get_json,
    serve_http,
)


def make_router() -> Router:
    router = Router()

    async def block(params: dict[str, str]) -> tuple[int, Any]:
        if not params["height"].isdigit():
            raise HttpError(400, "height must be a non-negative integer")
        return 200, {"height": int(params["height"])}

    async def broken(params: dict[str, str]) -> tuple[int, Any]:
        raise RuntimeError("bug")

    router.get("/v1/blocks/{height}", block)
    router.get("/v1/broken", broken)
    return router


async def test_routes_errors_and_socket_round_trip() -> None:
    router = make_router()
    assert await router.dispatch("GET", "/v1/blocks/7?x=1") == (200, {"height": 7})
    assert (await router.dispatch("GET", "/v1/blocks/x"))[0] == 400
    assert (await router.dispatch("POST", "/v1/blocks/7"))[0] == 405
    assert (await router.dispatch("GET", "/nope"))[0] == 404
    assert (await router.dispatch("GET", "/v1/broken"))[0] == 500
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, router, "127.0.0.1", 0)
        assert await http_get_json(f"http://127.0.0.1:{port}/v1/blocks/12") == (200, {"height": 12})
        status, body = await http_get_json(f"http://127.0.0.1:{port}/v1/broken")
        assert status == 500 and "internal" in body["error"]
        # Garbage and oversize requests do not stop the server.
        for junk in (b"NOT HTTP\r\n\r\n", b"GET /" + b"a" * 40000 + b" HTTP/1.1\r\n\r\n"):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            reply = b""
            try:
                await stream.send_all(junk)
                with trio.fail_after(5):
                    while chunk := await stream.receive_some(4096):
                        reply += chunk
            except trio.BrokenResourceError:
                pass  # the server may close while an oversize request is still being sent
            await stream.aclose()
            assert reply == b"" or reply.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431"))
        assert (await http_get_json(f"http://127.0.0.1:{port}/v1/blocks/1"))[0] == 200
        nursery.cancel_scope.cancel()


async def test_requests_beyond_the_in_flight_limit_get_503_at_once() -> None:
    router = Router()
    release = trio.Event()

    async def slow(params: dict[str, str]) -> tuple[int, Any]:
        await release.wait()
        return 200, {"ok": True}

    router.get("/v1/slow", slow)
    limited = InFlightLimit(router.app(), limit=2)
    results: list[int] = []

    async def one() -> None:
        results.append((await asgi_request(limited, "GET", "/v1/slow"))[0])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one)
        nursery.start_soon(one)
        await trio.sleep(0.2)
        with trio.fail_after(1):
            status, body = await asgi_request(limited, "GET", "/v1/slow")
        assert status == 503 and b"retry later" in body
        release.set()
    assert results == [200, 200] and limited.in_flight == 0
