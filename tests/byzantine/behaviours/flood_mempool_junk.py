"""Gossip undecodable payloads to every mempool as fast as gossip takes them."""

from __future__ import annotations

import os
from typing import Any

import trio
import trio.lowlevel

from behaviours import after_start


async def attack(parts: Any) -> None:
    service = parts.service
    while service._net is None:
        await trio.sleep(0.1)
    while True:
        try:
            await service._net.publish_event(b"\xff" + os.urandom(200))
        except Exception:  # GossipOverloaded: peers are saturated; keep pushing
            await trio.sleep(0.01)
        await trio.lowlevel.checkpoint()


def install() -> None:
    after_start(attack)
