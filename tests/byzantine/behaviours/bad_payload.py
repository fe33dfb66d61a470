"""Propose blocks carrying a payload no honest node can decode."""

from __future__ import annotations

import dataclasses
import os
from typing import Any


def install() -> None:
    from consensus import core

    original = core.ConsensusCore.on_proposal_content

    def on_proposal_content(self: Any, height: int, round: int, content: Any) -> Any:
        junk = b"\xff\xfe undecodable " + os.urandom(16)
        return original(self, height, round, dataclasses.replace(content, payloads=(*content.payloads, junk)))

    core.ConsensusCore.on_proposal_content = on_proposal_content  # type: ignore[method-assign]
