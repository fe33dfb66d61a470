"""Forge charger events: a StartTransaction with an open escrow session's token and a
StopTransaction with meterStop = 2**62, for a charger this node never talked to. The forger
vouches for them with its own validator key (the strongest forgery: the signature is valid,
so only the ledger's physics bound and the attribution stand in its way).

BYZ_CHARGER, BYZ_SESSION_ID (hex), BYZ_CONNECTOR name the victim; BYZ_REPORT is a file where
the message ids and the replies this node's own ledger gave are written (JSON).
"""

from __future__ import annotations

import json
import time
from typing import Any

import trio

from behaviours import after_start, env, log


async def _commit(parts: Any, event: Any) -> Any:
    from devsen.app import decode_event_reply
    from ocpp_adapter.vouching import vouch

    event = vouch(event, parts.app.settings.key, parts.app.vouches.domain)
    try:
        receipt = await parts.service.submit(event.to_bytes(), timeout_s=60)
    except Exception as exc:
        return f"not committed: {exc!r}"
    reply, error_code, _ = decode_event_reply(receipt.result)
    return {"height": receipt.height, "reply": reply, "error_code": error_code}


async def attack(parts: Any) -> None:
    from devsen.ledger import session_token
    from ocpp_adapter.events import ChargerEvent

    await trio.sleep(3)  # links up
    charger, connector = env("CHARGER"), int(env("CONNECTOR", "1"))
    token = session_token(bytes.fromhex(env("SESSION_ID").removeprefix("0x")))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tag = f"forged-{time.time_ns()}"[:30]
    start = ChargerEvent(charger, "1.6", "StartTransaction", tag + "-s",
                         {"connectorId": connector, "idTag": token, "meterStart": 0, "timestamp": stamp},
                         "", int(time.time() * 1000))
    report: dict[str, Any] = {"start_message_id": start.message_id, "start": await _commit(parts, start)}
    reply = report["start"]["reply"] if isinstance(report["start"], dict) else None
    transaction_id = (reply or {}).get("transactionId", 1)
    stop = ChargerEvent(charger, "1.6", "StopTransaction", tag + "-e",
                        {"transactionId": transaction_id, "meterStop": 2**62,
                         "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                        "", int(time.time() * 1000))
    report["stop_message_id"] = stop.message_id
    report["stop"] = await _commit(parts, stop)
    log.warning("forged events: %s", report)
    await trio.Path(env("REPORT")).write_text(json.dumps(report, default=str))


def install() -> None:
    after_start(attack)
