"""Delivery of committed ledger decisions to chargers: the node holding the connection sends the CALL.

One home for "the ledger decided, the connected node calls the charger": `call_charger` makes
one CSMS-to-charger CALL and classifies what came back (devsen/remote_stop.py uses it too), and
`CommandDelivery` delivers the manager commands the ledger admitted (devsen/ledger/commands.py).

Delivery of manager commands:
- Every node watches the ledger's pending commands of the chargers connected to it (woken by
  each block that admits commands, by a charger connecting, and every POLL_S). A pending,
  unexpired command is sent at most once per connection (the connection id, new after every
  reconnect, is part of what the node remembers), in admission order, one at a time per charger.
- The charger's CALLRESULT ("result"), CALLERROR ("error"), no answer within the call timeout
  ("timeout"), or a command the node cannot deliver ("refused": the charger connected with
  another OCPP version, or the adapter refuses the payload) becomes a `CommandOutcome` signed
  by this node and submitted until committed; the ledger records the first outcome of a
  command, so every node reports the same one (`GET /v1/commands/{id}`).
- A full node accepting chargers (a registered operator) delivers the same way, signs outcomes
  with its operator key and relays them to a validator; it sends a charger nothing before the
  ledger has applied an event of that connection vouched by it (`reports_for`), since the
  validators take an operator's outcome only for a charger whose last event it vouched.
- A connection lost before the charger answered records nothing: the command stays pending and
  is sent again when the charger connects, at whichever node, until it expires. An expired
  command is never sent (the node checks its clock, the ledger marks it "expired").
- Side effects: a command the charger answered is never sent again by this node, even before
  its outcome is committed. So a Reset the charger accepted is not re-sent after the reconnect
  the reset itself causes (chargers answer Reset before they reset: OCPP 1.6 §5.13, 2.0.1
  B11/B12). A charger that drops the connection before answering may get the command again on
  its next connection: OCPP gives no way to tell "reset before answering" from "never got it".
  Commands that are not idempotent (Reset, UnlockConnector, RemoteStop) should be given short
  expiries. If the charger reconnects at another node within the moment between its answer
  and the outcome's commit (about one block), that node may send it once more; the outcome
  is still recorded once.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from devsen.ledger.commands import CommandRecord, json_text, sign_outcome
from ocpp_adapter.errors import (
    ChargerCallError,
    ChargerCallFailed,
    ChargerCallTimeout,
    ChargerReplyInvalid,
)
from ocpp_adapter.server import ChargerConnections
from primitives.eip712 import Domain, SigningKey

log = logging.getLogger("devsen.charger_commands")

CALL_TIMEOUT_S = 30.0
POLL_S = 1.0  # how often connected chargers' pending commands are looked at without a wake-up
REMEMBERED_SENDS = 16_384  # (command, connection) pairs sent, and commands answered, kept
MAX_BODY_JSON_BYTES = 30_000  # a CALLRESULT bigger than an outcome may carry is reported as an error


@dataclass(frozen=True, slots=True)
class CallAnswer:
    """What one CALL to a charger came to: kind "result" | "error" | "timeout" | "refused" | "lost"
    ("lost": disconnected, not connected, busy — nothing is known of the charger's side)."""

    kind: str
    body: dict[str, Any]

    def summary(self) -> str:
        if self.kind == "result":
            return str(self.body.get("status", "answered"))
        return f"{self.kind} {self.body.get('code') or self.body.get('reason') or ''}".strip()


async def call_charger(connections: ChargerConnections, charger_id: str, action: str, payload: dict[str, Any],
                       timeout_s: float = CALL_TIMEOUT_S) -> CallAnswer:
    """One CALL to a charger connected to this node, never raising for the charger's side."""
    try:
        with trio.fail_after(timeout_s + 5):
            return CallAnswer("result", await connections.call(charger_id, action, payload, timeout=timeout_s))
    except ChargerCallError as exc:
        return CallAnswer("error", {"code": exc.code, "description": exc.description[:255]})
    except ChargerReplyInvalid as exc:
        return CallAnswer("error", {"code": exc.code, "description": f"reply breaks the schema: {exc}"[:255]})
    except (ChargerCallTimeout, trio.TooSlowError):
        return CallAnswer("timeout", {})
    except ValueError as exc:
        return CallAnswer("refused", {"reason": str(exc)[:255]})
    except ChargerCallFailed as exc:  # not connected, disconnected, busy
        return CallAnswer("lost", {"reason": f"{type(exc).__name__}: {exc}"[:255]})


class _Bounded:
    """A bounded set (oldest forgotten first)."""

    def __init__(self, capacity: int = REMEMBERED_SENDS) -> None:
        self._items: OrderedDict[Any, None] = OrderedDict()
        self.capacity = capacity

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def add(self, item: Any) -> None:
        self._items[item] = None
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def discard(self, item: Any) -> None:
        self._items.pop(item, None)


class CommandDelivery:
    """Sends the ledger's pending commands to the chargers connected here; submits their outcomes."""

    def __init__(self, connections: ChargerConnections, pending_for: Callable[[str], Any],
                 pending_chargers: Callable[[], Any], submit_outcome: Callable[[bytes], None],
                 key: SigningKey, outcome_domain: Domain, call_timeout_s: float = CALL_TIMEOUT_S, *,
                 reports_for: Callable[[str], bool] | None = None) -> None:
        self.connections = connections
        self._pending_for = pending_for
        self._pending_chargers = pending_chargers
        self._submit = submit_outcome
        self.key = key
        self.domain = outcome_domain
        self.call_timeout_s = call_timeout_s
        # None: this node may report outcomes for any charger (a validator); else for which ones (an
        # operator full node: those whose last applied event it vouched; the others wait for that)
        self._reports_for = reports_for
        self.sent = _Bounded()  # (command id, connection id)
        self.answered = _Bounded()  # command ids whose outcome this node submitted
        self._busy: set[str] = set()  # chargers with a command in flight
        self._wake = trio.Event()
        self.counters = {"sent": 0, "outcomes": 0, "lost": 0}

    def wake(self, *_: Any) -> None:
        """A block admitted commands, or a charger connected: look now."""
        self._wake.set()

    def due(self, now_ms: int) -> list[tuple[str, bytes, bytes, CommandRecord]]:
        """(charger, connection id, command id, record) of the commands to send now; one per idle charger."""
        due = []
        for charger_id in self._pending_chargers():
            connection = self.connections.connection_id(charger_id)
            if connection is None or charger_id in self._busy \
                    or (self._reports_for is not None and not self._reports_for(charger_id)):
                continue
            for command_id, record in self._pending_for(charger_id):
                if command_id in self.answered or (command_id, connection) in self.sent \
                        or record.expires_at_ms <= now_ms:
                    continue
                due.append((charger_id, connection, command_id, record))
                break
        return due

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                for charger_id, connection, command_id, record in self.due(int(time.time() * 1000)):
                    self._busy.add(charger_id)
                    self.sent.add((command_id, connection))
                    nursery.start_soon(self._deliver, charger_id, connection, command_id, record)
                with trio.move_on_after(POLL_S):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def _deliver(self, charger_id: str, connection: bytes, command_id: bytes, record: CommandRecord) -> None:
        try:
            version = self.connections.version(charger_id)
            if version is None:
                answer = CallAnswer("lost", {"reason": "disconnected"})
            elif version != record.ocpp_version:
                answer = CallAnswer("refused", {"reason": f"the charger speaks OCPP {version}, the command is "
                                                          f"for {record.ocpp_version}"})
            else:
                self.counters["sent"] += 1
                answer = await call_charger(self.connections, charger_id, record.action,
                                            json.loads(record.payload_json), self.call_timeout_s)
            if answer.kind == "result" and len(json_text(answer.body)) > MAX_BODY_JSON_BYTES:
                answer = CallAnswer("error", {"code": "GenericError",
                                              "description": f"the reply is over {MAX_BODY_JSON_BYTES} bytes"})
            log.info("command 0x%s: %s %s at %s: %s", command_id.hex(), record.action, record.ocpp_version,
                     charger_id, answer.summary())
            if answer.kind == "lost":
                self.counters["lost"] += 1  # sent again on the charger's next connection
                if self.connections.connection_id(charger_id) == connection:
                    self.sent.discard((command_id, connection))  # busy, not gone: try again on this one
                return
            self.answered.add(command_id)
            self.counters["outcomes"] += 1
            self._submit(sign_outcome(self.key, self.domain, command_id, answer.kind, answer.body).encode())
        except Exception:  # one command's trouble never stops delivery
            log.exception("command 0x%s to %s failed", command_id.hex(), charger_id)
        finally:
            self._busy.discard(charger_id)
            self._wake.set()
