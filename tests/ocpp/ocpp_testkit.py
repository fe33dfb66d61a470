"""Shared helpers for the OCPP endpoint tests: a running server and a raw frame client."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from ocpp_adapter.auth import ChargerCredentials, InMemoryChargerRegistry
from ocpp_adapter.config import OcppServerConfig
from ocpp_adapter.ingest import Ingest
from ocpp_adapter.memory_ingest import MemoryIngest
from ocpp_adapter.server import ChargerConnections, serve_ocpp

PASSWORD = "correct horse battery"
# scrypt costs ~60 ms: hash once per test session, share between chargers
_CREDS = ChargerCredentials.from_password(PASSWORD)
CHARGERS = [f"CP{i:03d}" for i in range(40)]


def make_registry() -> InMemoryChargerRegistry:
    registry = InMemoryChargerRegistry({cid: _CREDS for cid in CHARGERS})
    registry.add("BANNED", dataclasses.replace(_CREDS, admitted=False))
    return registry


def basic_auth(user: str, password: str) -> list[tuple[bytes, bytes]]:
    token = base64.b64encode(f"{user}:{password}".encode())
    return [(b"Authorization", b"Basic " + token)]


@dataclass
class Harness:
    port: int
    config: OcppServerConfig
    ingest: Any
    registry: InMemoryChargerRegistry
    connections: ChargerConnections

    def url(self, charge_box_id: str) -> str:
        return f"{self.config.scheme}://127.0.0.1:{self.port}/ocpp/{charge_box_id}"


@asynccontextmanager
async def running_server(ingest: Ingest | None = None, **overrides: Any) -> AsyncIterator[Harness]:
    settings: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "node_name": "test-node", "ping_interval": None}
    settings.update(overrides)
    config = OcppServerConfig(**settings)
    ingest = ingest if ingest is not None else MemoryIngest(id_tags=["TAG-OK"], heartbeat_interval=60)
    registry = make_registry()
    connections = ChargerConnections()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve_ocpp(
            config, ingest, registry, connections=connections, task_status=task_status))
        yield Harness(port, config, ingest, registry, connections)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def charger(
    harness: Harness, charge_box_id: str = "CP000", subprotocol: str = "ocpp1.6", password: str = PASSWORD
) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket_url(
        harness.url(charge_box_id), subprotocols=[subprotocol],
        extra_headers=basic_auth(charge_box_id, password), connect_timeout=5,
    ) as ws:
        yield ws


async def exchange(ws: WebSocketConnection, frame: Any, timeout: float = 5.0) -> Any:
    """Send a frame (JSON-encoded unless already text/bytes) and return the parsed answer."""
    await ws.send_message(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())


async def no_answer(ws: WebSocketConnection, frame: Any, wait: float = 0.3) -> bool:
    """Send a frame and check that nothing comes back within `wait` seconds."""
    await ws.send_message(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))
    with trio.move_on_after(wait):
        await ws.get_message()
        return False
    return True


HEARTBEAT = [2, "hb", "Heartbeat", {}]


REPO = __file__.rsplit("/tests/", 1)[0]
JS_DIR = f"{REPO}/tests/ocpp/js"


class JsonLines:
    """Read newline-delimited JSON objects from a subprocess's stdout."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def next(self, timeout: float = 20.0) -> dict[str, Any] | None:
        """The next object, or None at end of stream."""
        with trio.fail_after(timeout):
            while b"\n" not in self._buffer:
                chunk = await self._stream.receive_some(65536)
                if not chunk:
                    return None
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)  # type: ignore[no-any-return]
