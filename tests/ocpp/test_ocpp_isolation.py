"""Isolation: a flooding, oversize-sending, stalled or vanishing charger does not delay
or break a well-behaved one."""

from __future__ import annotations

import json
import time
from typing import Any, cast

import trio
from ocpp_testkit import HEARTBEAT, PASSWORD, basic_auth, charger, exchange, running_server
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from ocpp_adapter.ingest import IngestResult
from ocpp_adapter.memory_ingest import MemoryIngest


async def well_behaved_latencies(harness: Any, rounds: int = 30) -> list[float]:
    """Round-trip times of a normal charger's heartbeats (one at a time, as OCPP-J requires)."""
    latencies = []
    async with charger(harness, "CP030") as ws:
        for n in range(rounds):
            started = time.perf_counter()
            reply = await exchange(ws, [2, f"hb{n}", "Heartbeat", {}])
            latencies.append(time.perf_counter() - started)
            assert reply[:2] == [3, f"hb{n}"]
            await trio.sleep(0.01)
    return latencies


async def test_flooder_is_rate_limited_and_others_are_not_delayed() -> None:
    async with running_server(messages_per_second=50, burst_messages=20, send_timeout=1.0) as harness:
        flood_replies: list[Any] = []
        sent = [0]
        close_codes: list[int] = []

        async def flooder() -> None:
            async with charger(harness, "CP031") as ws:
                async def read() -> None:
                    try:
                        while True:
                            flood_replies.append(json.loads(await ws.get_message()))
                    except ConnectionClosed as exc:
                        close_codes.append(cast(Any, exc.reason).code)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read)
                    with trio.move_on_after(1.5):
                        try:
                            for n in range(100_000):
                                await ws.send_message(json.dumps([2, f"f{n}", "Heartbeat", {}]))
                                sent[0] += 1
                        except ConnectionClosed:
                            pass
                    await trio.sleep(0.2)
                    nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flooder)
            await trio.sleep(0.1)
            latencies = await well_behaved_latencies(harness)
        assert max(latencies) < 0.5, latencies
        codes = {r[2] for r in flood_replies if r[0] == 4}
        assert "GenericError" in codes  # rate limit / too many outstanding calls, clearly refused
        assert close_codes == [1008]  # and, persisting, disconnected as a flooder
        # the server read the flooder no faster than about 2x its rate (plus the burst)
        assert len(flood_replies) < 2 * 50 * 1.5 + 20 + 10, (len(flood_replies), sent)


async def test_oversize_frame_closes_only_that_connection() -> None:
    async with running_server(max_frame_bytes=4096) as harness:
        async with charger(harness, "CP032") as big, charger(harness, "CP033") as normal:
            await big.send_message(json.dumps([2, "big", "DataTransfer", {"vendorId": "v", "data": "x" * 10_000}]))
            try:
                with trio.fail_after(5):
                    await big.get_message()
                raise AssertionError("oversize frame was answered")
            except ConnectionClosed as exc:
                assert cast(Any, exc.reason).code == 1009
            assert (await exchange(normal, HEARTBEAT))[0] == 3
        assert (await well_behaved_latencies(harness, rounds=3))


class SlowForOne:
    """Ingest that never answers charger CP034, and answers everyone else at once."""

    def __init__(self) -> None:
        self.inner = MemoryIngest()
        self.events = self.inner.events
        self.stuck = 0

    async def submit(self, event: Any) -> IngestResult:
        if event.charger_id == "CP034":
            self.stuck += 1
            await trio.sleep_forever()
        return await self.inner.submit(event)


async def test_stalled_or_vanishing_charger_does_not_block_others() -> None:
    ingest = SlowForOne()
    async with running_server(ingest=ingest, ingest_timeout=0.5) as harness:
        # CP034 sends a call the ingest never decides, then disconnects mid-call
        async with charger(harness, "CP034") as ws:
            await ws.send_message(json.dumps([2, "stuck", "Heartbeat", {}]))
            await trio.sleep(0.05)
        latencies = await well_behaved_latencies(harness, rounds=10)
        assert max(latencies) < 0.5
        # the retry shares the stuck submission and gets a clear error when it times out;
        # the next retry submits afresh
        async with charger(harness, "CP034") as ws:
            answer = await exchange(ws, [2, "stuck", "Heartbeat", {}], timeout=5)
            assert answer[:3] == [4, "stuck", "InternalError"]
            assert ingest.stuck == 1
            answer = await exchange(ws, [2, "stuck", "Heartbeat", {}], timeout=5)
            assert answer[:3] == [4, "stuck", "InternalError"]
            assert ingest.stuck == 2


async def test_silent_tcp_client_times_out_of_the_handshake() -> None:
    async with running_server(handshake_timeout=0.3) as harness:
        stream = await trio.open_tcp_stream("127.0.0.1", harness.port)
        try:
            latencies = await well_behaved_latencies(harness, rounds=3)
            assert max(latencies) < 0.5
            with trio.fail_after(3):
                assert await stream.receive_some(1024) == b""  # the server hung up on us
        finally:
            await stream.aclose()


async def test_connection_limit_refuses_with_503() -> None:
    async with running_server(max_connections=2) as harness:
        async with charger(harness, "CP035"), charger(harness, "CP036"):
            try:
                async with open_websocket_url(harness.url("CP037"), subprotocols=["ocpp1.6"],
                                              extra_headers=basic_auth("CP037", PASSWORD)):
                    raise AssertionError("third connection accepted")
            except ConnectionRejected as exc:
                assert exc.status_code == 503
        assert (await well_behaved_latencies(harness, rounds=2))
