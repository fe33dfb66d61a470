"""Sign two different proposals per round and two different votes per (round, type)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any


def install() -> None:
    from consensus import core
    from consensus.types import Proposal, Vote

    original_vote = core.ConsensusCore._vote
    original_propose = core.ConsensusCore._propose

    def _vote(self: Any, vote_type: Any, block_hash: bytes, out: list[Any]) -> None:
        original_vote(self, vote_type, block_hash, out)
        other = os.urandom(32) if block_hash == bytes(32) else bytes(32)
        out.append(core.Broadcast(Vote.sign(self.key, self.domain, vote_type, self.height, self.round, other)))

    def _propose(self: Any, block: Any, pol_round: int, out: list[Any]) -> None:
        original_propose(self, block, pol_round, out)
        twin = dataclasses.replace(block, timestamp_ms=block.timestamp_ms + 1)
        out.append(core.Broadcast(Proposal.sign(self.key, self.domain, self.round, pol_round, twin)))

    core.ConsensusCore._vote = _vote  # type: ignore[method-assign]
    core.ConsensusCore._propose = _propose  # type: ignore[method-assign]
