"""Propose blocks beyond the protocol limits: 5,000 payloads, 5 MiB (the limits are 4,096 and
4 MiB). The Block is built without its constructor's checks, as a hostile encoder would."""

from __future__ import annotations

import os
from typing import Any

PAYLOADS = 5000
PAYLOAD_BYTES = 1024


def install() -> None:
    from consensus import core
    from consensus.types import Block, Proposal

    def _propose(self: Any, block: Any, pol_round: int, out: list[Any]) -> None:
        big = object.__new__(Block)
        for field in ("height", "timestamp_ms", "proposer", "prev_block_hash", "app_state_hash", "app_header"):
            object.__setattr__(big, field, getattr(block, field))
        filler = tuple(os.urandom(PAYLOAD_BYTES) for _ in range(PAYLOADS))
        object.__setattr__(big, "payloads", block.payloads + filler)
        try:
            proposal = Proposal.sign(self.key, self.domain, self.round, pol_round, big)
            data = proposal.to_bytes()
        except Exception:  # the encoder refused: send bytes of that size instead
            data = os.urandom(PAYLOADS * PAYLOAD_BYTES)
        out.append(core.Broadcast(_Raw(data)))  # type: ignore[arg-type]
        # never the honest proposal: this proposer only ever offers the oversized one

    core.ConsensusCore._propose = _propose  # type: ignore[method-assign]


class _Raw:
    """Stands in for a message: Broadcast asks for its bytes, and the shell for its signer (to
    announce its own signed messages); an empty signer is never this node's."""

    proposer = b""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def to_bytes(self) -> bytes:
        return self.data
