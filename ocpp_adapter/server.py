"""The OCPP-J WebSocket server on trio: handshake, auth, one guarded task group per charger.

`serve_ocpp` listens on `ws(s)://HOST:PORT{path_prefix}{chargeBoxId}`. Per connection a
receive loop classifies frames with the sans-I/O `OcppSession`, a worker answers the
charger's CALLs in order through `Ingest`, and `ChargerConnections.call` sends
CSMS-to-charger calls. Nothing a charger sends can raise out of its own task group.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    wrap_server_stream,
)

from ocpp_adapter import errors
from ocpp_adapter.auth import (
    ChargerRegistry,
    LoginBudgets,
    RegistryUnavailable,
    VerifiedCredentialsCache,
    parse_basic_auth,
)
from ocpp_adapter.bounded import TokenBucket
from ocpp_adapter.config import OcppServerConfig
from ocpp_adapter.events import CONNECTION_ID_BYTES, ChargerEvent, EventEncodingError
from ocpp_adapter.idempotency import ReplyCache, SubmissionFailed
from ocpp_adapter.ingest import Ingest, IngestOverloaded, IngestRejected
from ocpp_adapter.protocol import (
    SUBPROTOCOL_VERSIONS,
    CallAnswered,
    Ignored,
    IncomingCall,
    OcppSession,
    SendReply,
    error_frame,
)
from ocpp_adapter.schemas import precompile
from primitives.credentials import verify_charger_password

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger("ocpp_adapter.server")

# Exactly DeviceFactory._checkChargeBoxId (OCPP identifierString: a-z A-Z 0-9 * - _ = : + | @ .),
# at most MAX_CHARGE_BOX_ID_BYTES = 48; `|` arrives percent-encoded (%7C) in the URL path.
CHARGE_BOX_ID = re.compile(r"[A-Za-z0-9*\-_=:+|@.]{1,48}")
CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_POLICY, CLOSE_INTERNAL = 1000, 1002, 1008, 1011


def charge_box_id_from_path(path: str, prefix: str) -> str | None:
    """The charge box id in `{prefix}{id}` (percent-decoded; query and one trailing '/'
    ignored), or None if the path is not of that form."""
    path = path.split("?", 1)[0]
    if not path.startswith(prefix):
        return None
    raw = path[len(prefix):]
    if raw.endswith("/"):
        raw = raw[:-1]
    if "/" in raw:
        return None
    try:
        charge_box_id = urllib.parse.unquote(raw, errors="strict") if "%" in raw else raw
    except UnicodeDecodeError:
        return None
    return charge_box_id if CHARGE_BOX_ID.fullmatch(charge_box_id) else None


def choose_subprotocol(offered: tuple[str, ...], supported: tuple[str, ...]) -> str | None:
    """The charger's first offered subprotocol that we support (its preference wins)."""
    for name in offered:
        if name.strip() in supported:
            return name.strip()
    return None


@dataclass(slots=True)
class _Answer:
    message_id: str
    done: trio.Event = field(default_factory=trio.Event)
    outcome: CallAnswered | None = None
    lost: errors.ChargerCallFailed | None = None


class _Connection:
    """One accepted charger WebSocket: its session, queues and outstanding call."""

    def __init__(self, charge_box_id: str, version: str, ws: WebSocketConnection, config: OcppServerConfig) -> None:
        self.charge_box_id = charge_box_id
        self.version = version
        self.connection_id = secrets.token_bytes(CONNECTION_ID_BYTES)  # names this authenticated connection
        self.ws = ws
        self.config = config
        self.session = OcppSession(version)
        self.call_lock = trio.Lock()
        self.call_waiters = 0
        self.answer: _Answer | None = None
        self.closed_reason: str | None = None
        self.close_code = CLOSE_NORMAL
        self.scope = trio.CancelScope()
        self.stats = {"received": 0, "calls": 0, "errors_sent": 0, "rate_limited": 0}
        self.pinging = False  # a keepalive ping is out

    async def send(self, frame: str) -> None:
        """Send within `send_timeout`; a charger that does not read gets disconnected.
        A closed connection ends this connection's tasks (never raises ConnectionClosed)."""
        with trio.move_on_after(self.config.send_timeout) as scope:
            try:
                await self.ws.send_message(frame)
            except ConnectionClosed as exc:
                self.close(f"closed while sending ({exc.reason})")
        if scope.cancelled_caught:
            self.close(f"send blocked for {self.config.send_timeout}s")

    def close(self, reason: str) -> None:
        """End this connection's tasks; pending CSMS calls fail with ChargerDisconnected."""
        if self.closed_reason is None:
            self.closed_reason = reason
            log.info("charger %s: closing connection: %s", self.charge_box_id, reason)
        if self.answer is not None and not self.answer.done.is_set():
            self.answer.lost = errors.ChargerDisconnected(f"{self.charge_box_id}: {reason}")
            self.answer.done.set()
        self.scope.cancel()


class ChargerConnections:
    """The live charger connections of this node, for CSMS-to-charger calls."""

    def __init__(self) -> None:
        self._live: dict[str, _Connection] = {}

    def connected(self) -> list[str]:
        """Ids of the chargers connected now."""
        return sorted(self._live)

    def version(self, charge_box_id: str) -> str | None:
        """OCPP version ("1.6" / "2.0.1") the charger speaks, or None if not connected."""
        conn = self._live.get(charge_box_id)
        return conn.version if conn else None

    def connection_id(self, charge_box_id: str) -> bytes | None:
        """The id of the charger's live connection (a new one after every reconnect), or None."""
        conn = self._live.get(charge_box_id)
        return conn.connection_id if conn else None

    def __len__(self) -> int:
        return len(self._live)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per connected charger: OCPP version and message counters (for status pages)."""
        return {cid: {"version": conn.version, **conn.stats} for cid, conn in sorted(self._live.items())}

    def _register(self, conn: _Connection) -> None:
        old = self._live.get(conn.charge_box_id)
        self._live[conn.charge_box_id] = conn
        if old is not None:
            old.close("replaced by a new connection with the same charge box id")

    def _unregister(self, conn: _Connection) -> None:
        if self._live.get(conn.charge_box_id) is conn:
            del self._live[conn.charge_box_id]

    async def call(
        self, charge_box_id: str, action: str, payload: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        """Send a CALL to the charger and return its CALLRESULT payload.

        Raises ValueError (action/payload invalid for the charger's version),
        ChargerNotConnected, ChargerBusy, ChargerCallTimeout, ChargerDisconnected,
        ChargerCallError (the charger's CALLERROR) or ChargerReplyInvalid.
        """
        conn = self._live.get(charge_box_id)
        if conn is None:
            raise errors.ChargerNotConnected(f"charger {charge_box_id!r} is not connected to this node")
        if conn.call_waiters >= conn.config.max_call_waiters:
            raise errors.ChargerBusy(f"{conn.call_waiters} calls already queued for {charge_box_id!r}")
        limit = conn.config.call_timeout if timeout is None else timeout
        conn.call_waiters += 1
        try:
            with trio.move_on_after(limit):
                async with conn.call_lock:
                    return await self._call_locked(conn, action, payload)
            raise errors.ChargerCallTimeout(f"{charge_box_id!r} did not answer {action} within {limit}s")
        finally:
            conn.call_waiters -= 1

    async def _call_locked(self, conn: _Connection, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        if conn.closed_reason is not None:
            raise errors.ChargerDisconnected(f"{conn.charge_box_id}: {conn.closed_reason}")
        message_id, frame = conn.session.begin_call(action, payload)
        answer = _Answer(message_id)
        conn.answer = answer
        try:
            await conn.send(frame)
            await answer.done.wait()
        finally:
            conn.session.abandon_call(message_id)
            conn.answer = None
        if answer.lost is not None:
            raise answer.lost
        assert answer.outcome is not None
        if answer.outcome.error is not None:
            raise answer.outcome.error
        assert answer.outcome.payload is not None
        return answer.outcome.payload


class OcppServer:
    """The shared state of one listening endpoint (see `serve_ocpp`)."""

    def __init__(
        self, config: OcppServerConfig, ingest: Ingest, registry: ChargerRegistry, connections: ChargerConnections
    ) -> None:
        self.config = config
        self.ingest = ingest
        self.registry = registry
        self.connections = connections
        self.replies = ReplyCache(
            config.reply_cache_entries, config.max_in_flight_submissions, config.reply_cache_seconds
        )
        self.submissions: trio.Nursery | None = None  # owns ingest submissions (outlive connections)
        self.verified = VerifiedCredentialsCache(config.verified_auth_cache_entries)
        # how many more wrong passwords we hash (scrypt is costly), per (address, charger) and per address
        self.login_budgets = LoginBudgets(
            config.failed_logins_per_minute, config.failed_logins_per_address_per_minute,
            config.verified_auth_cache_entries,
        )
        # address -> (lock, holders + waiters); an entry lives only while a handshake uses it
        self._address_checks: dict[str, tuple[trio.Lock, int]] = {}
        self.password_checks = trio.CapacityLimiter(config.concurrent_password_checks)
        self.streams = trio.CapacityLimiter(config.max_connections + config.max_pending_handshakes)
        self.accepted = 0
        for subprotocol in config.subprotocols:
            precompile(SUBPROTOCOL_VERSIONS[subprotocol], OcppSession(SUBPROTOCOL_VERSIONS[subprotocol]).handled_actions)

    # -- handshake ------------------------------------------------------------------------

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Entry point per TCP connection; never raises (except Cancelled)."""
        try:
            self.streams.acquire_nowait()
        except trio.WouldBlock:
            log.warning("refusing connection: %d streams open", self.streams.borrowed_tokens)
            await trio.aclose_forcefully(stream)
            return
        try:
            async with trio.open_nursery() as nursery:
                request = None
                with trio.move_on_after(self.config.handshake_timeout):
                    request = await wrap_server_stream(
                        nursery, stream, self.config.receive_queue, self.config.max_frame_bytes
                    )
                if request is not None:
                    await self._handle_request(request)
                nursery.cancel_scope.cancel()
        except ConnectionClosed as exc:
            log.debug("connection closed during the handshake: %s", exc.reason)
        except Exception:
            log.exception("connection handler failed (contained)")
        finally:
            self.streams.release()
            await trio.aclose_forcefully(stream)

    async def _reject(self, request: WebSocketRequest, status: int, why: str, charge_box_id: str | None) -> None:
        log.warning("rejecting %s from %s: %d %s", charge_box_id or request.path[:80], request.remote, status, why)
        headers = [(b"WWW-Authenticate", b'Basic realm="OCPP", charset="UTF-8"')] if status == 401 else []
        # the log says why; the charger only learns the status (no probing which ids exist)
        body = {401: "unauthorized", 403: "forbidden"}.get(status, why)
        with trio.move_on_after(self.config.send_timeout):
            await request.reject(status, extra_headers=headers, body=body.encode())

    @asynccontextmanager
    async def _one_check_per_address(self, address: str) -> AsyncIterator[None]:
        lock, users = self._address_checks.get(address, (None, 0))
        if lock is None:
            lock = trio.Lock()
        self._address_checks[address] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._address_checks[address]
            if users == 1:
                del self._address_checks[address]
            else:
                self._address_checks[address] = (lock, users - 1)

    async def _authenticate(self, request: WebSocketRequest, charge_box_id: str) -> tuple[int, str] | None:
        """None if the charger may connect, else (HTTP status, reason)."""
        if self.config.security_profile == 0:
            return None
        header = next((v for k, v in request.headers if k.lower() == b"authorization"), None)
        if header is None:
            return 401, "HTTP Basic authentication required"
        parsed = parse_basic_auth(header)
        if parsed is None:
            return 401, "malformed Authorization header"
        username, password = parsed
        if username != charge_box_id:
            return 401, "username must equal the charge box id"
        creds = None
        with trio.move_on_after(self.config.registry_timeout):
            try:
                creds = await self.registry.credentials(charge_box_id)
            except RegistryUnavailable as exc:  # expected during an outage: the refusal is logged
                return 503, f"charger registry unavailable ({str(exc)[:80]}); retry later"
            except Exception:
                log.exception("charger registry lookup failed for %s", charge_box_id)
                return 503, "charger registry unavailable"
            if creds is None:
                return 401, "unknown charger"
        if creds is None:
            return 503, "charger registry timed out"
        if not creds.admitted:
            return 403, "charger is not admitted"
        if self.verified.known_good(charge_box_id, password, creds):
            return None
        # Budgets per (address, charger) and per address across charger ids; one password check
        # per address at a time, so one address holds at most one of the scrypt workers.
        address = str(getattr(request.remote, "address", request.remote))
        async with self._one_check_per_address(address):
            refused = self.login_budgets.admit(address, charge_box_id, trio.current_time())
            if refused is not None:
                return 429, refused
            ok = await trio.to_thread.run_sync(
                verify_charger_password, password, creds.auth_salt, creds.auth_hash, limiter=self.password_checks
            )
            if not ok:
                self.login_budgets.failed(address, charge_box_id, trio.current_time())
                return 401, "wrong password"
        self.verified.remember(charge_box_id, password, creds)
        return None

    async def _handle_request(self, request: WebSocketRequest) -> None:
        charge_box_id = charge_box_id_from_path(request.path, self.config.path_prefix)
        if charge_box_id is None:
            await self._reject(request, 404, f"path must be {self.config.path_prefix}{{chargeBoxId}}", None)
            return
        refusal: tuple[int, str] | None = (503, "authentication timed out (server busy); retry later")
        with trio.move_on_after(self.config.handshake_timeout):  # password checks queue: bound the wait
            refusal = await self._authenticate(request, charge_box_id)
        if refusal is not None:
            await self._reject(request, refusal[0], refusal[1], charge_box_id)
            return
        if self.accepted >= self.config.max_connections:
            await self._reject(request, 503, "connection limit reached", charge_box_id)
            return
        self.accepted += 1  # reserved now: concurrent handshakes cannot overshoot the limit
        try:
            subprotocol = choose_subprotocol(request.proposed_subprotocols, self.config.subprotocols)
            ws = await request.accept(subprotocol=subprotocol)
            if subprotocol is None:
                log.warning("charger %s offered no supported subprotocol %s", charge_box_id,
                            request.proposed_subprotocols)
                await self._close(ws, CLOSE_PROTOCOL_ERROR, "no supported OCPP subprotocol")
                return
            conn = _Connection(charge_box_id, SUBPROTOCOL_VERSIONS[subprotocol], ws, self.config)
            self.connections._register(conn)
            log.info("charger %s connected (%s) from %s", charge_box_id, subprotocol, request.remote)
            try:
                with conn.scope:
                    await self._run_connection(conn)
            finally:
                self.connections._unregister(conn)
                conn.close(conn.closed_reason or "connection ended")
            await self._close(ws, conn.close_code, (conn.closed_reason or "")[:100])
        finally:
            self.accepted -= 1

    async def _close(self, ws: WebSocketConnection, code: int, reason: str) -> None:
        with trio.move_on_after(self.config.close_timeout):
            await ws.aclose(code, reason)

    # -- per connection -------------------------------------------------------------------

    async def _run_connection(self, conn: _Connection) -> None:
        calls_in, calls_out = trio.open_memory_channel[IncomingCall](self.config.call_queue)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._answer_calls, conn, calls_out)
                await self._receive_loop(conn, calls_in, nursery)
                nursery.cancel_scope.cancel()
        except Exception:
            log.exception("charger %s: connection task failed (contained)", conn.charge_box_id)
            conn.closed_reason = "internal error"
            conn.close_code = CLOSE_INTERNAL

    async def _receive_loop(self, conn: _Connection, calls: trio.MemorySendChannel[IncomingCall],
                            nursery: trio.Nursery) -> None:
        now = trio.current_time()
        bucket = TokenBucket(self.config.messages_per_second, self.config.burst_messages, now)
        # refusals a charger may collect before it is disconnected as a flooder
        strikes = TokenBucket(self.config.messages_per_second / 10, self.config.burst_messages, now)
        idle_s = self.config.ping_interval if self.config.ping_interval is not None else math.inf
        while True:
            try:
                with trio.move_on_after(idle_s) as idle:
                    message = await conn.ws.get_message()
            except ConnectionClosed as exc:
                conn.closed_reason = f"closed by charger ({exc.reason})"
                return
            if idle.cancelled_caught:  # silent for ping_interval: is the charger still there?
                if not conn.pinging:
                    conn.pinging = True
                    nursery.start_soon(self._ping, conn)
                continue
            conn.stats["received"] += 1
            wait = bucket.take(trio.current_time())
            outcome = conn.session.receive(message)
            if isinstance(outcome, CallAnswered):
                if conn.answer is not None and conn.answer.message_id == outcome.message_id:
                    conn.answer.outcome = outcome
                    conn.answer.done.set()
            elif isinstance(outcome, SendReply):
                conn.stats["errors_sent"] += 1
                log.info("charger %s: %s: %s", conn.charge_box_id, outcome.code, outcome.reason)
                await conn.send(outcome.frame)
            elif isinstance(outcome, Ignored):
                log.info("charger %s: ignored frame: %s", conn.charge_box_id, outcome.reason)
            elif wait > 0:
                conn.stats["rate_limited"] += 1
                if strikes.take(trio.current_time()) > 0:
                    conn.close_code = CLOSE_POLICY
                    conn.close("rate limit exceeded persistently")
                    return
                await conn.send(
                    error_frame(
                        outcome.message_id, errors.GENERIC_ERROR,
                        f"rate limit of {self.config.messages_per_second:g} messages/s exceeded; retry later",
                    )
                )
            else:
                try:
                    calls.send_nowait(outcome)
                except trio.WouldBlock:
                    await conn.send(
                        error_frame(
                            outcome.message_id, errors.GENERIC_ERROR,
                            "too many outstanding calls; OCPP-J allows one at a time",
                        )
                    )
            if wait > 0:
                await trio.sleep(wait)

    async def _answer_calls(self, conn: _Connection, calls: trio.MemoryReceiveChannel[IncomingCall]) -> None:
        async for call in calls:
            conn.stats["calls"] += 1
            frame = await self._answer(conn, call)
            await conn.send(frame)

    async def _answer(self, conn: _Connection, call: IncomingCall) -> str:
        """The frame answering `call`: the ingest's reply, or the CALLERROR for its failure."""
        version = conn.version

        def fail(code: str, description: str) -> str:
            log.info("charger %s: %s %s -> %s: %s", conn.charge_box_id, call.action, call.message_id, code, description)
            return error_frame(call.message_id, code, description)

        try:
            event = ChargerEvent(
                charger_id=conn.charge_box_id, ocpp_version=version, action=call.action,
                message_id=call.message_id, payload=call.payload, ingress_node="",
                received_at_ms=time.time_ns() // 1_000_000, connection_id=conn.connection_id,
            )  # unsigned: the ingest (the node that owns the validator key) vouches for it
            event.to_bytes()
        except EventEncodingError as exc:
            return fail(errors.payload_format_code(version), f"payload has no canonical encoding: {exc}")
        assert self.submissions is not None, "serve_ocpp sets the submissions nursery"
        try:
            result = await self.replies.submit_once(
                event, self.ingest.submit, self.submissions, self.config.ingest_timeout
            )
        except IngestOverloaded as exc:
            return fail(errors.INTERNAL_ERROR, f"node overloaded, retry later: {exc}")
        except IngestRejected as exc:
            return fail(exc.code or errors.GENERIC_ERROR, f"rejected: {exc}")
        except SubmissionFailed as exc:
            return fail(errors.INTERNAL_ERROR, f"no decision, retry later: {exc}")
        try:
            reply = conn.session.result(call, result.reply)
        except (TypeError, ValueError) as exc:  # not JSON-encodable (e.g. Decimal, NaN)
            log.error("ingest reply to %s is not JSON: %s", call.action, exc)
            return fail(errors.INTERNAL_ERROR, "CSMS produced an unencodable reply")
        if isinstance(reply, SendReply):
            log.error("ingest reply to %s breaks the schema: %s", call.action, reply.reason)
            return reply.frame
        return reply

    async def _ping(self, conn: _Connection) -> None:
        """One keepalive ping of a connection idle for `ping_interval`; no pong within
        `send_timeout` closes it. A task only while the ping is out (no keepalive task per
        connection: an idle one costs memory at 10,000 connections, bench/conn_memory.py)."""
        with trio.move_on_after(self.config.send_timeout) as scope:
            try:
                await conn.ws.ping()
            except ConnectionClosed:
                return
        conn.pinging = False
        if scope.cancelled_caught:
            conn.close("no pong to our ping")


def _ssl_context(config: OcppServerConfig) -> ssl.SSLContext | None:
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    assert config.tls_key is not None
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


async def serve_ocpp(
    config: OcppServerConfig,
    ingest: Ingest,
    registry: ChargerRegistry,
    *,
    connections: ChargerConnections | None = None,
    task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve OCPP-J until cancelled. `task_status.started(port)` reports the bound port
    (so port 0 works). Pass `connections` to make CSMS-to-charger calls."""
    if config.security_profile == 0:
        log.warning("OCPP security profile 0: chargers are NOT authenticated (local development only)")
    server = OcppServer(config, ingest, registry, connections if connections is not None else ChargerConnections())
    context = _ssl_context(config)
    listeners: list[Any]
    if context is None:
        listeners = list(await trio.open_tcp_listeners(config.port, host=config.host))
    else:
        listeners = list(
            await trio.open_ssl_over_tcp_listeners(config.port, context, host=config.host, https_compatible=True)
        )
    tcp_listener: Any = getattr(listeners[0], "transport_listener", listeners[0])
    port = tcp_listener.socket.getsockname()[1]
    log.info("OCPP endpoint on %s://%s:%d%s{chargeBoxId}", config.scheme, config.host, port, config.path_prefix)
    async with trio.open_nursery() as nursery:
        server.submissions = nursery
        await nursery.start(trio.serve_listeners, server.handle_stream, listeners)
        task_status.started(port)
