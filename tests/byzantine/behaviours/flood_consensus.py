"""Flood the consensus links: random bytes and well-signed votes for far-future heights."""

from __future__ import annotations

import itertools
import os
from typing import Any

import trio

from behaviours import after_start


async def attack(parts: Any) -> None:
    from consensus.types import Vote, VoteType

    service = parts.service
    while service._net is None:
        await trio.sleep(0.1)
    key, domain = service.core.key, service.core.domain
    for n in itertools.count():
        net = service._net
        net.broadcast_consensus(os.urandom(64 + n % 4000))
        vote = Vote.sign(key, domain, VoteType.PREVOTE, service.core.height + 5 + n % 1000, n % 50, os.urandom(32))
        net.broadcast_consensus(vote.to_bytes())
        if n % 20 == 0:
            await trio.sleep(0.001)


def install() -> None:
    after_start(attack)
