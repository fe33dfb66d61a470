"""Gossip valid-looking ChargerEvents (canonical encoding, unknown chargers) to every mempool."""

from __future__ import annotations

import itertools
import time
from typing import Any

import trio
import trio.lowlevel

from behaviours import after_start


async def attack(parts: Any) -> None:
    from ocpp_adapter.events import ChargerEvent
    from ocpp_adapter.vouching import vouch

    service = parts.service
    while service._net is None:
        await trio.sleep(0.1)
    for n in itertools.count():
        event = vouch(ChargerEvent(f"FLOOD-{n % 997}", "1.6", "Heartbeat", f"flood-{n}", {}, "",
                                   int(time.time() * 1000)), parts.app.settings.key, parts.app.vouches.domain)
        try:
            await service._net.publish_event(event.to_bytes())
        except Exception:  # GossipOverloaded
            await trio.sleep(0.01)
        await trio.lowlevel.checkpoint()


def install() -> None:
    after_start(attack)
