"""A TCP proxy between the nodes and anvil that can make the chain RPC fail on command.

It runs its own trio loop in a daemon thread, so a test's blocking calls never stall it.
Modes (switch from any thread):

- `heal()`: forward bytes both ways (a fresh upstream connection per client connection);
- `blackhole()`: accept connections and read what is sent, but never answer; connections
  open when the blackhole starts go silent *for good* (as after a NAT or load balancer lost
  their state), so a client without a request timeout hangs forever;
- `refuse()`: reset every open connection and every new one at once (RST, a clean refusal).

Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field

import trio

FORWARD, BLACKHOLE, REFUSE = "forward", "blackhole", "refuse"
CHUNK = 65536


@dataclass(eq=False)
class _Conn:
    client: trio.SocketStream
    forwarding: trio.CancelScope = field(default_factory=trio.CancelScope)
    holding: trio.CancelScope = field(default_factory=trio.CancelScope)
    dead: bool = False  # blackholed: never forwards again
    refused: bool = False  # to be reset


def _reset(stream: trio.SocketStream) -> None:
    """Make the close send RST instead of FIN."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


class RpcProxy:
    """127.0.0.1:`port` -> `upstream_host`:`upstream_port`, with a failure mode (module docstring)."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = FORWARD
        self.port = 0
        self.accepted = 0
        self.blackholed = 0  # connections that went (or were born) silent
        self.reset = 0
        self._conns: set[_Conn] = set()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: trio.run(self._main), name="rpc-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RpcProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the RPC proxy did not start")
        return self

    def stop(self) -> None:
        if self._token is not None and self._thread.is_alive():
            self._token.run_sync_soon(lambda: self._stop.set() if self._stop is not None else None)
            self._thread.join(10)

    def heal(self) -> None:
        self._switch(FORWARD)

    def blackhole(self) -> None:
        self._switch(BLACKHOLE)

    def refuse(self) -> None:
        self._switch(REFUSE)

    def _switch(self, mode: str) -> None:
        assert self._token is not None, "start() the proxy first"
        done = threading.Event()

        def apply() -> None:
            self.mode = mode
            for conn in list(self._conns):
                if mode == BLACKHOLE and not conn.dead:
                    conn.dead = True
                    self.blackholed += 1
                    conn.forwarding.cancel()  # the handler keeps the socket, silent from now on
                elif mode == REFUSE:
                    conn.refused = True
                    conn.forwarding.cancel()
                    conn.holding.cancel()
            done.set()

        self._token.run_sync_soon(apply)
        if not done.wait(5):
            raise RuntimeError("the RPC proxy did not switch mode")

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._handle, listeners)
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    async def _handle(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        conn = _Conn(client)
        self._conns.add(conn)
        try:
            if self.mode == FORWARD:
                with conn.forwarding:
                    if await self._forward(conn):
                        return  # a side closed normally
            conn.refused = conn.refused or self.mode == REFUSE
            if not conn.refused:
                if not conn.dead:  # born in the blackhole
                    conn.dead = True
                    self.blackholed += 1
                with conn.holding:
                    await self._swallow(client)
            if conn.refused:
                self.reset += 1
                _reset(client)
        finally:
            self._conns.discard(conn)
            await trio.aclose_forcefully(client)

    async def _forward(self, conn: _Conn) -> bool:
        """Pump bytes both ways; True when a side closed, False when upstream cannot be reached."""
        try:
            upstream = await trio.open_tcp_stream(*self.upstream)
        except OSError:
            conn.refused = True
            return False
        async with upstream, trio.open_nursery() as nursery:

            async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                try:
                    while data := await source.receive_some(CHUNK):
                        await sink.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump, conn.client, upstream)
            nursery.start_soon(pump, upstream, conn.client)
        return True

    async def _swallow(self, client: trio.SocketStream) -> None:
        """Read and drop whatever the client sends until it closes; answer nothing."""
        try:
            while await client.receive_some(CHUNK):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
