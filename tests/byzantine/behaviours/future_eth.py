"""Name an Ethereum block that does not exist (head + 1000, a random hash)."""

from __future__ import annotations

import os
from typing import Any


def install() -> None:
    from devsen.app import NodeApplication, encode_app_header

    def propose_app_header(self: Any, height: int) -> bytes:
        return encode_app_header(self.chain.head(max_age_s=0) + 1000, os.urandom(32))

    NodeApplication.propose_app_header = propose_app_header  # type: ignore[method-assign]
