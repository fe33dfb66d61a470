"""OCPP-J error codes and the errors the adapter raises to its callers.

The answer to each kind of bad input, per version (OCPP-J 1.6 section 4, 2.0.1 part 4):

| input                                           | 1.6                          | 2.0.1                         |
|-------------------------------------------------|------------------------------|-------------------------------|
| not JSON / not an array / unreadable message id | FormationViolation, id "-1"  | RpcFrameworkError, id "-1"    |
| array of wrong length, action not a string      | FormationViolation           | RpcFrameworkError             |
| unknown MessageTypeId                           | (ignored, no reply)          | MessageTypeNotSupported       |
| action unknown to the version                   | NotImplemented               | NotImplemented                |
| action known but not handled by a CSMS          | NotSupported                 | NotSupported                  |
| payload not an object, extra property           | FormationViolation           | FormatViolation               |
| required field missing                          | ProtocolError                | OccurrenceConstraintViolation |
| wrong JSON type                                 | TypeConstraintViolation      | TypeConstraintViolation       |
| too few / too many array items                  | OccurenceConstraintViolation | OccurrenceConstraintViolation |
| bad enum, length, range, date-time format       | PropertyConstraintViolation  | PropertyConstraintViolation   |
| value with no canonical form (NaN, 2**64, dup keys, too deep) | FormationViolation | FormatViolation          |
| unsolicited CALLRESULT / CALLERROR              | (no reply)                   | (no reply)                    |
| rate limit hit, too many queued calls           | GenericError                 | GenericError                  |
| ingest overloaded (transient)                   | InternalError                | InternalError                 |
| ingest rejected the event (permanent)           | GenericError                 | GenericError                  |
"""

from __future__ import annotations

from typing import Any

NOT_IMPLEMENTED = "NotImplemented"
NOT_SUPPORTED = "NotSupported"
INTERNAL_ERROR = "InternalError"
PROTOCOL_ERROR = "ProtocolError"
SECURITY_ERROR = "SecurityError"
FORMATION_VIOLATION = "FormationViolation"  # 1.6
FORMAT_VIOLATION = "FormatViolation"  # 2.0.1
PROPERTY_CONSTRAINT = "PropertyConstraintViolation"
OCCURENCE_CONSTRAINT_16 = "OccurenceConstraintViolation"  # sic, as 1.6 spells it
OCCURRENCE_CONSTRAINT_201 = "OccurrenceConstraintViolation"
TYPE_CONSTRAINT = "TypeConstraintViolation"
GENERIC_ERROR = "GenericError"
RPC_FRAMEWORK_ERROR = "RpcFrameworkError"  # 2.0.1
MESSAGE_TYPE_NOT_SUPPORTED = "MessageTypeNotSupported"  # 2.0.1

ERROR_CODES = {
    "1.6": frozenset(
        {
            NOT_IMPLEMENTED, NOT_SUPPORTED, INTERNAL_ERROR, PROTOCOL_ERROR, SECURITY_ERROR,
            FORMATION_VIOLATION, PROPERTY_CONSTRAINT, OCCURENCE_CONSTRAINT_16, TYPE_CONSTRAINT,
            GENERIC_ERROR,
        }
    ),
    "2.0.1": frozenset(
        {
            NOT_IMPLEMENTED, NOT_SUPPORTED, INTERNAL_ERROR, PROTOCOL_ERROR, SECURITY_ERROR,
            FORMAT_VIOLATION, PROPERTY_CONSTRAINT, OCCURRENCE_CONSTRAINT_201, TYPE_CONSTRAINT,
            GENERIC_ERROR, RPC_FRAMEWORK_ERROR, MESSAGE_TYPE_NOT_SUPPORTED,
        }
    ),
}


def framing_code(version: str) -> str:
    """Code for a frame that is not a readable RPC message."""
    return FORMATION_VIOLATION if version == "1.6" else RPC_FRAMEWORK_ERROR


def payload_format_code(version: str) -> str:
    """Code for a payload of the wrong shape (not an object, extra property, no canonical form)."""
    return FORMATION_VIOLATION if version == "1.6" else FORMAT_VIOLATION


class ChargerCallFailed(Exception):
    """Base of everything `ChargerConnections.call` raises about the charger side."""


class ChargerNotConnected(ChargerCallFailed):
    """No charger with that id is connected to this node."""


class ChargerDisconnected(ChargerCallFailed):
    """The charger went away (or was replaced by a newer connection) before it answered."""


class ChargerCallTimeout(ChargerCallFailed):
    """The charger did not answer within the timeout."""


class ChargerBusy(ChargerCallFailed):
    """Too many calls are already waiting for this charger."""


class ChargerCallError(ChargerCallFailed):
    """The charger answered with a CALLERROR."""

    def __init__(self, code: str, description: str, details: dict[str, Any]) -> None:
        super().__init__(f"charger answered {code}: {description}")
        self.code = code
        self.description = description
        self.details = details


class ChargerReplyInvalid(ChargerCallFailed):
    """The charger's CALLRESULT does not satisfy the response schema."""

    def __init__(self, code: str, description: str, payload: Any) -> None:
        super().__init__(f"charger reply breaks the schema ({code}): {description}")
        self.code = code
        self.payload = payload
