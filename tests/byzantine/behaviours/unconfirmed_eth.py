"""Name the Ethereum head itself (0 confirmations) as the block's read height."""

from __future__ import annotations

from typing import Any


def install() -> None:
    from devsen.app import NodeApplication, encode_app_header

    def propose_app_header(self: Any, height: int) -> bytes:
        number = max(self.last_eth_block, self.chain.head(max_age_s=0))
        return encode_app_header(number, self.chain.block_hash(number, fresh=True))

    NodeApplication.propose_app_header = propose_app_header  # type: ignore[method-assign]
