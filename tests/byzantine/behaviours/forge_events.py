"""Forge charger events for a charger this node never talked to: a StartTransaction with an
open escrow session's token and a StopTransaction with meterStop = 2**62.

Three forgeries are gossiped straight to the peers (past this node's own admission check):
unsigned, signed by an outsider key, and signed by this validator while naming another
validator as the ingress. Then the strongest one: start and stop vouched for with this
validator's own key, submitted like an honest event (the signature is valid, so only the
ledger's physics bound and the attribution stand in its way).

BYZ_CHARGER, BYZ_SESSION_ID (hex), BYZ_CONNECTOR name the victim; BYZ_REPORT is a file where
the message and event ids and the replies this node's own ledger gave are written (JSON).
"""

from __future__ import annotations

import json
import os
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
        return {"event_id": event.event_id.hex(), "error": f"not committed: {exc!r}"}
    reply, error_code, _ = decode_event_reply(receipt.result)
    return {"event_id": event.event_id.hex(), "height": receipt.height, "reply": reply, "error_code": error_code}


def _pair(charger: str, connector: int, token: str, tag: str, transaction_id: int) -> tuple[Any, Any]:
    from ocpp_adapter.events import ChargerEvent

    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    now = int(time.time() * 1000)
    start = ChargerEvent(charger, "1.6", "StartTransaction", tag + "-s",
                         {"connectorId": connector, "idTag": token, "meterStart": 0, "timestamp": stamp}, "", now)
    stop = ChargerEvent(charger, "1.6", "StopTransaction", tag + "-e",
                        {"transactionId": transaction_id, "meterStop": 2**62, "timestamp": stamp}, "", now)
    return start, stop


async def _gossip_unattributable(parts: Any, charger: str, connector: int, token: str, stem: str) -> dict[str, Any]:
    """The forgeries honest admission must refuse; returns their message ids by kind."""
    from ocpp_adapter.vouching import vouch, vouch_digest
    from primitives.eip712 import SigningKey

    key, domain = parts.app.settings.key, parts.app.vouches.domain
    other = next(a for a in parts.app.validators if a != key.address)
    outsider = SigningKey(os.urandom(32))
    forged: dict[str, list[Any]] = {}
    for kind in ("unsigned", "outsider", "misattributed"):
        events = []
        for event in _pair(charger, connector, token, f"{stem}-{kind[0]}", 1):
            if kind == "outsider":
                event = vouch(event, outsider, domain)
            elif kind == "misattributed":  # our own key, naming another validator as the ingress
                named = event.with_vouch(other, b"")
                event = named.with_vouch(other, key.sign(vouch_digest(named, domain)))
            events.append(event)
        forged[kind] = events
    while parts.service._net is None:
        await trio.sleep(0.1)
    for _ in range(3):  # gossip may drop one copy; honest nodes dedupe by content
        for events in forged.values():
            for event in events:
                try:
                    await parts.service._net.publish_event(event.to_bytes())
                except Exception as exc:  # GossipOverloaded: try again next round
                    log.warning("gossip of a forgery failed: %r", exc)
        await trio.sleep(1)
    return {kind: {"message_ids": [e.message_id for e in events], "event_ids": [e.event_id.hex() for e in events]}
            for kind, events in forged.items()}


async def attack(parts: Any) -> None:
    from devsen.ledger import session_token

    await trio.sleep(3)  # links up
    charger, connector = env("CHARGER"), int(env("CONNECTOR", "1"))
    token = session_token(bytes.fromhex(env("SESSION_ID").removeprefix("0x")))
    stem = f"forged-{time.time_ns()}"[:24]
    report: dict[str, Any] = {"forger": "0x" + parts.app.settings.key.address.hex()}
    report["refusable"] = await _gossip_unattributable(parts, charger, connector, token, stem)
    start, _ = _pair(charger, connector, token, stem + "-v", 1)
    report["start_message_id"] = start.message_id
    report["start"] = await _commit(parts, start)
    reply = report["start"].get("reply") or {}
    _, stop = _pair(charger, connector, token, stem + "-v", int(reply.get("transactionId", 1)))
    report["stop_message_id"] = stop.message_id
    report["stop"] = await _commit(parts, stop)
    log.warning("forged events: %s", report)
    await trio.Path(env("REPORT")).write_text(json.dumps(report, default=str))


def install() -> None:
    after_start(attack)
