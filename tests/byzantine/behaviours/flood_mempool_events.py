"""Flood with valid-looking ChargerEvents self-vouched by this (Byzantine) validator.

Two fronts, both with a fresh, unregistered charger id per event (so no honest read cache
helps: every event costs each honest validator a chain read):
- gossip: canonical events signed with this validator's own key, published as fast as the
  events topic takes them, to every honest mempool;
- its own proposals: each carries as many fresh self-vouched events as a valid block may
  (devsen.app's per-voucher shares), on top of what its mempool offers.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import trio
import trio.lowlevel

from behaviours import after_start

_SEQ = itertools.count()


def _flood_event(parts_app: Any, tag: str) -> bytes:
    from ocpp_adapter.events import ChargerEvent
    from ocpp_adapter.vouching import vouch

    n = next(_SEQ)
    event = ChargerEvent(f"FLOOD-{tag}{n}", "1.6", "Heartbeat", f"flood-{n}", {}, "", int(time.time() * 1000))
    return vouch(event, parts_app.settings.key, parts_app.vouches.domain).to_bytes()


async def attack(parts: Any) -> None:
    service = parts.service
    while service._net is None:
        await trio.sleep(0.1)
    while True:
        try:
            await service._net.publish_event(_flood_event(parts.app, "G"))
        except Exception:  # GossipOverloaded
            await trio.sleep(0.01)
        await trio.lowlevel.checkpoint()


def install() -> None:
    from anchoring.proofs import EVENT_PAYLOAD_FIRST_BYTE
    from devsen import app as app_module
    from ocpp_adapter.events import ChargerEvent

    original = app_module.NodeApplication.prepare_proposal

    def prepare_proposal(self: Any, height: int, payloads: tuple[bytes, ...], facts: Any) -> Any:
        prepared = original(self, height, payloads, facts)
        mine = "0x" + self.settings.key.address.hex()
        own = sum(1 for p in prepared.payloads if p[0] == EVENT_PAYLOAD_FIRST_BYTE
                  and ChargerEvent.from_bytes(p).ingress_node == mine)
        # As many fresh (unknown-charger) events as a valid block may carry: the attack at its
        # strongest that honest validators still have to accept.
        room = app_module.new_charger_share(len(self.validators)) - own
        stuffed = tuple(_flood_event(self, "P") for _ in range(max(0, room)))
        return type(prepared)(prepared.app_header, prepared.payloads + stuffed)

    app_module.NodeApplication.prepare_proposal = prepare_proposal  # type: ignore[method-assign]
    after_start(attack)
