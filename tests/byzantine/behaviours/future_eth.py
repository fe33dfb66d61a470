"""Name an Ethereum block that does not exist (head + 1000, a random hash)."""

from __future__ import annotations

import os
from typing import Any


def install() -> None:
    from devsen.app import NodeApplication

    def propose_facts(self: Any, height: int) -> tuple[int, bytes]:
        return self.chain.head(max_age_s=0) + 1000, os.urandom(32)

    NodeApplication.propose_facts = propose_facts  # type: ignore[method-assign]
