"""OCPP-J RPC framing and one connection's session state, sans I/O.

`OcppSession.receive(text)` turns one WebSocket text message into exactly one outcome:
an accepted CALL for the CSMS to handle, a ready CALLERROR frame to send back, the
answer to our own outstanding CALL, or nothing (ignored, per the error table in
errors.py). `begin_call` / `receive` / `abandon_call` drive the single outstanding
CSMS-to-charger call that OCPP-J allows. No sockets, no clocks, no tasks.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ocpp_adapter import errors, schemas

CALL, CALLRESULT, CALLERROR = 2, 3, 4
MAX_MESSAGE_ID_CHARS = 36
MAX_ERROR_DESCRIPTION_CHARS = 255
MAX_NESTING = 32  # deeper JSON has no business in OCPP and risks recursion limits

SUBPROTOCOL_VERSIONS = {"ocpp1.6": "1.6", "ocpp2.0.1": "2.0.1"}

# The charger-to-CSMS calls a CSMS answers (issue 3); every other known action gets NotSupported.
CHARGER_INITIATED: dict[str, frozenset[str]] = {
    "1.6": frozenset(
        {
            "BootNotification", "Heartbeat", "StatusNotification", "Authorize",
            "StartTransaction", "MeterValues", "StopTransaction", "DataTransfer",
            "FirmwareStatusNotification", "DiagnosticsStatusNotification",
        }
    ),
    "2.0.1": frozenset(
        {
            "BootNotification", "Heartbeat", "StatusNotification", "Authorize",
            "TransactionEvent", "MeterValues", "NotifyReport", "NotifyEvent",
            "FirmwareStatusNotification", "SecurityEventNotification",
        }
    ),
}


class _Unreadable(ValueError):
    """JSON text the parser refuses (duplicate keys, NaN, overflow, nesting)."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Unreadable("duplicate key in JSON object")
    return out


def _reject_constant(text: str) -> Any:
    raise _Unreadable(f"{text} is not JSON")


def _uncanonical_reason(value: Any, depth_limit: int) -> str | None:
    """Why `value` cannot be stored canonically (too deep, integer outside msgpack's
    [-2**63, 2**64) range, a lone surrogate that UTF-8 cannot encode), or None. One
    iterative walk, no recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if type(item) is dict:
            item = [*item.keys(), *item.values()]
        if type(item) is str:
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "string is not valid Unicode (a lone surrogate escape)"
        elif type(item) is list:
            if depth > depth_limit:
                return f"JSON nested deeper than {depth_limit}"
            stack.extend((child, depth + 1) for child in item)
        elif type(item) is int and not -(2**63) <= item < 2**64:
            return "integer outside the 64-bit range"
        elif type(item) is float and math.isinf(item):
            return "number overflows a double"
    return None


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)


def loads_strict(text: str) -> Any:
    """Parse JSON as the adapter stores it: floats stay floats, but nothing without a
    canonical form gets through (NaN, infinities, duplicate keys, deep nesting, huge ints)."""
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise _Unreadable("JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise _Unreadable(f"not JSON: {exc.msg} at {exc.pos}") from None
    except ValueError:  # int() refuses literals beyond sys.get_int_max_str_digits (4,300 digits)
        raise _Unreadable("integer literal too long") from None
    reason = _uncanonical_reason(value, MAX_NESTING)
    if reason is not None:
        raise _Unreadable(reason)
    return value


def dumps(value: Any) -> str:
    """Compact JSON for the wire."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def call_frame(message_id: str, action: str, payload: dict[str, Any]) -> str:
    return dumps([CALL, message_id, action, payload])


def result_frame(message_id: str, payload: dict[str, Any]) -> str:
    return dumps([CALLRESULT, message_id, payload])


CALLERRORS_SENT: Counter[str] = Counter()  # by error code, process-wide (for the node's /metrics)
_MAX_ERROR_CODES = 64  # a bound on the counter's keys; codes beyond it count as "other"


def error_frame(
    message_id: str, code: str, description: str, details: dict[str, Any] | None = None
) -> str:
    CALLERRORS_SENT[code if code in CALLERRORS_SENT or len(CALLERRORS_SENT) < _MAX_ERROR_CODES else "other"] += 1
    return dumps([CALLERROR, message_id, code, description[:MAX_ERROR_DESCRIPTION_CHARS], details or {}])


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """A schema-valid CALL from the charger, for the CSMS to answer."""

    message_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SendReply:
    """Answer the charger with this ready frame (a CALLERROR); nothing else to do."""

    frame: str
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """Nothing to send (per the error table); `reason` is for the log."""

    reason: str


@dataclass(frozen=True, slots=True)
class CallAnswered:
    """The charger answered our outstanding CALL: payload, or `error` (a ChargerCallFailed)."""

    message_id: str
    payload: dict[str, Any] | None
    error: errors.ChargerCallFailed | None = None


Outcome = IncomingCall | SendReply | Ignored | CallAnswered


@dataclass(slots=True)
class _PendingCall:
    message_id: str
    action: str


@dataclass(slots=True)
class OcppSession:
    """Protocol state of one charger connection (one OCPP version)."""

    version: str
    handled_actions: frozenset[str] = frozenset()
    pending: _PendingCall | None = None
    _id_prefix: str = field(default_factory=lambda: os.urandom(4).hex())
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        assert self.version in CHARGER_INITIATED, self.version
        if not self.handled_actions:
            self.handled_actions = CHARGER_INITIATED[self.version]
        assert self.handled_actions <= schemas.known_actions(self.version)

    def _framing_error(self, message_id: str, reason: str) -> SendReply:
        code = errors.framing_code(self.version)
        return SendReply(error_frame(message_id, code, reason), code, reason)

    def _error(self, message_id: str, code: str, reason: str) -> SendReply:
        return SendReply(error_frame(message_id, code, reason), code, reason)

    def receive(self, message: str | bytes) -> Outcome:
        """Classify one received WebSocket message; never raises on bad input."""
        if isinstance(message, bytes):
            return self._framing_error("-1", "OCPP-J uses text frames, got a binary frame")
        try:
            frame = loads_strict(message)
        except _Unreadable as exc:
            return self._framing_error("-1", str(exc))
        if not isinstance(frame, list) or not frame:
            return self._framing_error("-1", "frame is not a non-empty JSON array")
        message_id = frame[1] if len(frame) > 1 else None
        if (
            not isinstance(message_id, str)
            or not 0 < len(message_id) <= MAX_MESSAGE_ID_CHARS
        ):
            return self._framing_error("-1", "message id is not a string of 1..36 characters")
        type_id = frame[0]
        if type(type_id) is int and type_id == CALL:
            return self._receive_call(frame, message_id)
        if type(type_id) is int and type_id in (CALLRESULT, CALLERROR):
            return self._receive_answer(frame, message_id)
        if self.version == "1.6":
            return Ignored(f"unknown message type {str(type_id)[:20]}")
        return self._error(
            message_id, errors.MESSAGE_TYPE_NOT_SUPPORTED, f"message type {str(type_id)[:20]} is not supported"
        )

    def _receive_call(self, frame: list[Any], message_id: str) -> Outcome:
        if len(frame) != 4:
            return self._framing_error(message_id, f"a CALL has 4 elements, got {len(frame)}")
        action, payload = frame[2], frame[3]
        if not isinstance(action, str) or not action:
            return self._framing_error(message_id, "action is not a non-empty string")
        if action not in schemas.known_actions(self.version):
            return self._error(message_id, errors.NOT_IMPLEMENTED, f"{action[:50]} is not an OCPP {self.version} action")
        if action not in self.handled_actions:
            return self._error(message_id, errors.NOT_SUPPORTED, f"{action} is not handled by this CSMS")
        if not isinstance(payload, dict):
            return self._error(message_id, errors.payload_format_code(self.version), "payload is not a JSON object")
        try:
            schemas.validate(self.version, action, payload)
        except schemas.PayloadInvalid as exc:
            return self._error(message_id, exc.code, exc.description)
        return IncomingCall(message_id, action, payload)

    def _receive_answer(self, frame: list[Any], message_id: str) -> Outcome:
        pending = self.pending
        if pending is None or pending.message_id != message_id:
            return Ignored(f"unsolicited answer to message id {message_id!r}")
        if frame[0] == CALLRESULT:
            if len(frame) != 3 or not isinstance(frame[2], dict):
                return Ignored("malformed CALLRESULT (kept waiting for a valid answer)")
            self.pending = None
            try:
                schemas.validate(self.version, pending.action, frame[2], response=True)
            except schemas.PayloadInvalid as exc:
                return CallAnswered(message_id, None, errors.ChargerReplyInvalid(exc.code, exc.description, frame[2]))
            return CallAnswered(message_id, frame[2])
        if len(frame) != 5 or not isinstance(frame[2], str) or not isinstance(frame[3], str):
            return Ignored("malformed CALLERROR (kept waiting for a valid answer)")
        self.pending = None
        details = frame[4] if isinstance(frame[4], dict) else {}
        return CallAnswered(message_id, None, errors.ChargerCallError(frame[2], frame[3], details))

    def begin_call(self, action: str, payload: dict[str, Any]) -> tuple[str, str]:
        """Start our one outstanding CALL; returns (message id, frame to send).

        Raises ValueError if the action/payload is invalid for this version.
        """
        assert self.pending is None, "one outstanding CALL per direction"
        if action not in schemas.known_actions(self.version):
            raise ValueError(f"{action!r} is not an OCPP {self.version} action")
        if action in CHARGER_INITIATED[self.version] and action != "DataTransfer":
            raise ValueError(f"{action} is sent by chargers, not to them")
        try:
            schemas.validate(self.version, action, payload)
        except schemas.PayloadInvalid as exc:
            raise ValueError(f"{action} payload invalid ({exc.code}): {exc.description}") from None
        message_id = f"{self._id_prefix}-{next(self._counter)}"
        frame = call_frame(message_id, action, payload)
        self.pending = _PendingCall(message_id, action)
        return message_id, frame

    def abandon_call(self, message_id: str) -> None:
        """Forget our outstanding CALL (timeout, cancellation); a late answer is then ignored."""
        if self.pending is not None and self.pending.message_id == message_id:
            self.pending = None

    def result(self, call: IncomingCall, reply: dict[str, Any]) -> SendReply | str:
        """The CALLRESULT frame for `call`, or an InternalError reply if `reply` breaks the
        response schema (the CSMS side is at fault; never send the charger invalid data)."""
        try:
            schemas.validate(self.version, call.action, reply, response=True)
        except schemas.PayloadInvalid as exc:
            return self._error(
                call.message_id, errors.INTERNAL_ERROR, f"CSMS produced an invalid reply: {exc.description}"
            )
        return result_frame(call.message_id, reply)
