"""Remote start of prepaid sessions: the Escrow's `SessionRequested` becomes an OCPP remote start.

A driver opens an escrow session on chain for (chargeBoxId, connector, idTag hash, deposit).
The node the charger is connected to sends it a remote start whose idTag is the session's
token (`devsen.ledger.session_token`: the chain holds only the RFID tag's hash, OCPP needs a
plaintext idTag); the ledger accepts that token at that charger and connector and binds the
transaction to that escrow session (devsen/ledger/LEDGER.md, "Remote start"). The charger's
StartTransaction carries the token back, and like every idTag it reaches the ledger only as
its hash (`session_token_hash`).

    EventFollower (confirmed blocks, cursor in data_dir) --SessionRequested--> bounded queue
        --> workers: still open on chain? charger connected here? --> RemoteStartTransaction
            (1.6) / RequestStartTransaction (2.0.1), bounded timeout, answer logged

Chargers connected to another node are skipped (that node starts them). While no charger is
connected to this node the follower does not poll the chain (once a minute only, to keep its
cursor near the head); the first connection resumes it within a poll interval, and the
requests of the blocks in between are handled then (a session requested moments before its
charger connected is started too). Delivery is at most once per session per process run (a
bounded memory of sessions already handled); a replay after a restart or reorg re-sends only
for sessions still open on chain and opened less than `MAX_SESSION_AGE_S` ago (a new node
reading old history starts nothing stale), and a charger already charging that session is
refused a second binding by the ledger. Every failure is logged; none stops the node.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from anchoring.chain import (
    ChainClient,
    ChainEvent,
    Deployment,
    EventFollower,
    ReorgDetected,
    follow_events,
)
from anchoring.chain.client import SessionStatus
from devsen.ledger import session_token
from ocpp_adapter.errors import ChargerCallFailed
from ocpp_adapter.server import ChargerConnections

log = logging.getLogger("devsen.remote_start")

CURSOR_FILE = "remote_start_cursor.json"
QUEUE_SIZE = 256  # remote starts waiting for a worker; the follower waits when it is full
WORKERS = 4  # remote starts in flight at once (one slow charger does not hold up the others)
CALL_TIMEOUT_S = 30.0  # for the charger's answer (and the chain read before it)
REMEMBERED_SESSIONS = 4_096  # sessions already handled, for dropping replays
RETRY_AFTER_ERROR_S = 5.0
REORG_REWIND_BLOCKS = 64  # re-read this far below a block that changed under the follower
LEDGER_MARGIN_BLOCKS = 1  # follow one block deeper than the ledger reads, so the token is valid there
IDLE_CATCH_UP_S = 60.0  # with no charger connected, the follower reads the chain this rarely
MAX_SESSION_AGE_S = 900  # a driver waits at the charger: older requests (replays, a new node) are not started


@dataclass(frozen=True, slots=True)
class RemoteStart:
    """One escrow session to start: where, and the session token idTag to start it with."""

    session_id: bytes
    charge_box_id: str
    connector_id: int

    @property
    def token(self) -> str:
        return session_token(self.session_id)


def remote_starts(events: Iterable[ChainEvent]) -> list[RemoteStart]:
    """The Escrow `SessionRequested` events among `events`, in order, as remote starts."""
    return [
        RemoteStart(bytes(e.args["sessionId"]), str(e.args["chargeBoxId"]), int(e.args["connectorId"]))
        for e in events
        if e.contract == "Escrow" and e.name == "SessionRequested"
    ]


def remote_start_call(version: str, start: RemoteStart) -> tuple[str, dict[str, Any]]:
    """(action, payload) of the remote start in the charger's OCPP version ("1.6" or "2.0.1")."""
    if version == "1.6":
        return "RemoteStartTransaction", {"connectorId": start.connector_id, "idTag": start.token}
    if version == "2.0.1":
        remote_start_id = int.from_bytes(start.session_id[:4], "big") & 0x7FFF_FFFF
        return "RequestStartTransaction", {
            "idToken": {"idToken": start.token, "type": "Central"},
            "evseId": start.connector_id,
            "remoteStartId": remote_start_id,
        }
    raise ValueError(f"unsupported OCPP version {version!r}")


class HandledSessions:
    """A bounded memory of session ids already handled (oldest forgotten first)."""

    def __init__(self, capacity: int = REMEMBERED_SESSIONS) -> None:
        assert capacity >= 1
        self.capacity = capacity
        self._ids: OrderedDict[bytes, None] = OrderedDict()

    def first_time(self, session_id: bytes) -> bool:
        """Record `session_id`; whether it was not remembered yet."""
        if session_id in self._ids:
            return False
        self._ids[session_id] = None
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True


def _open_follower(client: ChainClient, deployment: Deployment, cursor_path: Path, confirmations: int) -> EventFollower:
    """The follower with its cursor; an unreadable cursor file is set aside and reading starts over.

    It reads `LEDGER_MARGIN_BLOCKS` deeper than the ledger's Ethereum read block (head -
    confirmations), so by the time the charger starts, a block proposed by a node whose RPC
    lags a little still sees the escrow session and accepts its token."""
    confirmations += LEDGER_MARGIN_BLOCKS
    try:
        return EventFollower(client.w3, deployment, cursor_path, confirmations=confirmations)
    except (ValueError, KeyError, TypeError) as exc:
        damaged = cursor_path.with_name(cursor_path.name + ".damaged")
        log.error("remote start cursor %s unreadable (%s); moved to %s, following from the deployment block",
                  cursor_path, exc, damaged)
        cursor_path.replace(damaged)
        return EventFollower(client.w3, deployment, cursor_path, confirmations=confirmations)


async def _rewind(follower: EventFollower, next_block: int) -> None:
    """Rewind the follower's cursor; if the chain cannot be read now, the next poll tries again."""
    try:
        await trio.to_thread.run_sync(follower.rewind, next_block)
    except Exception as exc:
        log.warning("remote start follower could not rewind (%s); retrying in %.0f s", exc, RETRY_AFTER_ERROR_S)
        await trio.sleep(RETRY_AFTER_ERROR_S)


async def _start_one(client: ChainClient, connections: ChargerConnections, start: RemoteStart,
                     timeout_s: float) -> None:
    """Send one remote start if the session is still open and the charger still connected here."""
    session = await trio.to_thread.run_sync(client.session, start.session_id, "latest")
    if session is None or session.status != SessionStatus.OPEN:
        log.info("escrow session 0x%s is no longer open: no remote start", start.session_id.hex())
        return
    age_s = time.time() - session.opened_at
    if age_s > MAX_SESSION_AGE_S:
        log.info("escrow session 0x%s was opened %.0f s ago (over %d s): no remote start", start.session_id.hex(),
                 age_s, MAX_SESSION_AGE_S)
        return
    version = connections.version(start.charge_box_id)
    if version is None:
        log.info("charger %s disconnected before the remote start of 0x%s", start.charge_box_id,
                 start.session_id.hex())
        return
    action, payload = remote_start_call(version, start)
    answer = await connections.call(start.charge_box_id, action, payload, timeout=timeout_s)
    log.info("remote start of escrow session 0x%s at %s connector %d (idTag %s): charger answered %s",
             start.session_id.hex(), start.charge_box_id, start.connector_id, start.token,
             answer.get("status"))


async def remote_start_worker(client: ChainClient, connections: ChargerConnections,
                              queue: trio.MemoryReceiveChannel[RemoteStart], timeout_s: float) -> None:
    """Send the remote starts from `queue` one by one until it closes; failures are logged, not raised."""
    async for start in queue:
        try:
            with trio.fail_after(timeout_s + 5):
                await _start_one(client, connections, start, timeout_s)
        except (ChargerCallFailed, ValueError, trio.TooSlowError) as exc:
            log.warning("remote start of escrow session 0x%s at %s failed: %s: %s", start.session_id.hex(),
                        start.charge_box_id, type(exc).__name__, exc)
        except Exception:  # chain read trouble and the like: this session is given up, the node goes on
            log.exception("remote start of escrow session 0x%s failed", start.session_id.hex())


async def run_remote_starts(
    client: ChainClient,
    deployment: Deployment,
    connections: ChargerConnections,
    data_dir: Path,
    confirmations: int,
    poll_interval_s: float,
    call_timeout_s: float = CALL_TIMEOUT_S,
) -> None:
    """Follow Escrow `SessionRequested` events (`confirmations` deep, cursor in `data_dir`) and
    remote-start each session whose charger is connected to this node. Runs until cancelled."""
    follower = _open_follower(client, deployment, Path(data_dir) / CURSOR_FILE, confirmations)
    handled = HandledSessions()
    send, receive = trio.open_memory_channel[RemoteStart](QUEUE_SIZE)

    async def handle(events: tuple[ChainEvent, ...]) -> None:
        for start in remote_starts(events):
            if connections.version(start.charge_box_id) is None:
                log.debug("escrow session 0x%s: charger %s is not connected here", start.session_id.hex(),
                          start.charge_box_id)
                continue
            if handled.first_time(start.session_id):
                await send.send(start)

    async with trio.open_nursery() as nursery:
        for _ in range(WORKERS):
            nursery.start_soon(remote_start_worker, client, connections, receive, call_timeout_s)
        while True:
            try:
                # No charger connected here: nothing to start, so the chain is not polled (the
                # range is read on the first connection; MAX_SESSION_AGE_S bounds what it starts).
                await follow_events(follower, handle, poll_interval_s=poll_interval_s,
                                    paused=lambda: len(connections) == 0, max_pause_s=IDLE_CATCH_UP_S)
            except ReorgDetected as exc:
                rewind_to = max(0, exc.block_number - REORG_REWIND_BLOCKS)
                log.warning("remote start follower: %s; re-reading from block %d", exc, rewind_to)
                await _rewind(follower, rewind_to)
            except Exception as exc:  # RPC down and the like: keep the cursor, try again later
                log.warning("remote start follower stopped (%s: %s); retrying in %.0f s", type(exc).__name__, exc,
                            RETRY_AFTER_ERROR_S)
                await trio.sleep(RETRY_AFTER_ERROR_S)
