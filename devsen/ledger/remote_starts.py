"""Remote starts from the chain (issue 13): the ledger decides them, the connected node sends them.

A driver opens an escrow session on chain for (chargeBoxId, connector, idTag hash, deposit);
that is a request to start charging. The ledger admits a remote start for it as a
ledger-originated command (signer empty, like the ReserveNow of reservations.py), with id
`remote_start_command_id(session id)`, so it is delivered like every command
(devsen/charger_commands.py): by the node holding the charger's connection, at most once per
connection, again on the charger's next connection at whichever node until it expires, and
its outcome (the charger's Accepted/Rejected CALLRESULT, a CALLERROR, a timeout) is committed
once and is the same at every node. `remote_start_status` is the driver's view of it
(GET /v1/sessions/{id}, "remote_start").

When: a block issues the remote starts of a charger's open escrow sessions that are not yet
bound to a transaction, have no settlement pending, name a connector of the device and were
opened less than REMOTE_START_WINDOW_MS before block time (a driver waits at the charger; a
request older than that, or past its refund deadline, is expired). The block looks at the
chargers that have an event in it (a charger that connects sends BootNotification) and at the
chargers whose `SessionRequested` logs fall in the Ethereum blocks since the previous block's
(`ChainView.requested_chargers`; the chain facts list them), so a connected idle charger is
started at once and an offline one when it connects. The OCPP version is that of the
charger's event in the block, else the one of its last event (DeviceRecord.ocpp_version); a
charger never seen gets its remote starts when it first connects.

The idTag is the session token (`session_token`: the chain holds only the RFID tag's hash);
the ledger accepts that token at that charger and connector and binds the transaction to
that escrow session (LEDGER.md, "Remote start").
"""

from __future__ import annotations

from typing import Any

from devsen.ledger.chain import EscrowSession, session_token
from primitives.hashing import keccak256

REMOTE_START_WINDOW_MS = 900_000  # a request is started within 15 minutes of its opening, or not at all
MAX_REMOTE_STARTS_PER_CHARGER = 8  # remote starts one charger gets issued in one block (the newest requests)
MAX_REQUESTED_CHARGERS = 256  # chargers with new requests a block looks at (facts read their open sessions)
REMOTE_START_ACTIONS = {"1.6": "RemoteStartTransaction", "2.0.1": "RequestStartTransaction"}


def remote_start_command_id(session_id: bytes) -> bytes:
    """The id of the remote start command the ledger issues for escrow session `session_id`."""
    return keccak256(b"devsen:RemoteStart:" + session_id)


def remote_start_call(version: str, session_id: bytes, connector_id: int) -> tuple[str, dict[str, Any]]:
    """(action, payload) of the remote start of `session_id` in OCPP `version` ("1.6" or "2.0.1")."""
    token = session_token(session_id)
    if version == "1.6":
        return "RemoteStartTransaction", {"connectorId": connector_id, "idTag": token}
    if version == "2.0.1":
        remote_start_id = int.from_bytes(session_id[:4], "big") & 0x7FFF_FFFF
        return "RequestStartTransaction", {"idToken": {"idToken": token, "type": "Central"}, "evseId": connector_id,
                                           "remoteStartId": remote_start_id}
    raise ValueError(f"unsupported OCPP version {version!r}")


def remote_start_expiry_ms(session: EscrowSession) -> int:
    """When the request of `session` expires: REMOTE_START_WINDOW_MS after its opening, or its
    refund deadline if that is sooner."""
    expiry = session.opened_at_s * 1000 + REMOTE_START_WINDOW_MS
    if session.refund_at_s is not None:
        expiry = min(expiry, session.refund_at_s * 1000)
    return expiry


def remote_start_status(status: str, body: dict[str, Any] | None) -> dict[str, Any]:
    """The driver's view of a remote start command of status `status` (commands.py: "pending",
    "expired", "result", "error", "timeout", "refused") and outcome `body`: {"state", "detail"}.
    States: "waiting" (not answered yet: the charger is offline or busy), "accepted",
    "rejected" (the charger answered Rejected), "failed" (CALLERROR, timeout, not deliverable)
    and "expired" (never answered before the request expired)."""
    body = body or {}
    if status == "pending":
        return {"state": "waiting", "detail": "sent when the charger is connected, until the request expires"}
    if status == "expired":
        return {"state": "expired", "detail": "the charger did not answer before the request expired"}
    if status == "result":
        answer = str(body.get("status", ""))[:32]
        return {"state": "accepted" if answer == "Accepted" else "rejected",
                "detail": f"the charger answered {answer or 'without a status'}"}
    if status == "error":
        return {"state": "failed", "detail": f"the charger answered CALLERROR {str(body.get('code', ''))[:40]}: "
                                             f"{str(body.get('description', ''))[:120]}".rstrip(": ")}
    if status == "timeout":
        return {"state": "failed", "detail": "the charger did not answer in time"}
    return {"state": "failed", "detail": f"not deliverable: {str(body.get('reason', status))[:160]}"}
