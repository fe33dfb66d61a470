"""After a chain outage shared by every node, the first submitter in turn sends, not all of them.

Turn timers count only time a node could reach the chain: a node whose rounds fail restarts
them, so when the RPC returns, the takeover order starts over instead of every validator
sending the same batch at once (all but one would revert and waste gas).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from test_anchoring_submitter import VALIDATORS, FakeChain, batch, first_submitter, make, quorum

from anchoring.submitter import ChainUnavailable


class FlakySendChain(FakeChain):
    """Reads answer; sends fail while `sends_fail` (the outage began between a read and a send)."""

    sends_fail = True

    def sender(self, submitter):  # type: ignore[no-untyped-def]
        inner = super().sender(submitter)
        chain = self

        class Sender(type(inner)):  # type: ignore[misc]
            async def submit_batch(self, subject, signatures):  # type: ignore[no-untyped-def]
                if chain.sends_fail:
                    raise ChainUnavailable("connection reset")
                return await super().submit_batch(subject, signatures)

        return Sender(self, submitter.me)


@pytest.mark.parametrize("trio_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_after_a_shared_outage_only_the_first_in_turn_sends(trio_clock: Any) -> None:
    chain = FlakySendChain()
    nodes = [make(chain, v) for v in VALIDATORS]
    first = first_submitter(batch(0))
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await node.add(quorum(batch(0)))
            nursery.start_soon(node.run)
        await trio.sleep(1)  # the first in turn tried to send: it failed
        chain.down = True  # then nothing answers, for longer than every turn timeout together
        await trio.sleep(150)
        chain.down = chain.sends_fail = False
        started = trio.current_time()
        while len(chain.sent) < 1:
            await trio.sleep(1)
            chain.mine()
        await trio.sleep(120)  # long enough for every other validator's turn to come, had it counted
        nursery.cancel_scope.cancel()
    assert chain.sent == [(first, batch(0))]
    assert trio.current_time() - started < 150
    assert sum(n.status()["sends"] for n in nodes if n.me != first) == 0
