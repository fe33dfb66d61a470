"""Propose blocks whose app header is not an Ethereum read (undecodable bytes)."""

from __future__ import annotations

from typing import Any


def install() -> None:
    from consensus.abci import Prepared
    from devsen.app import NodeApplication

    honest = NodeApplication.prepare_proposal

    def prepare_proposal(self: Any, height: int, payloads: tuple[bytes, ...], facts: Any) -> Prepared:
        prepared = honest(self, height, payloads, facts)
        return Prepared(b"\x07not-an-app-header", prepared.payloads)

    NodeApplication.prepare_proposal = prepare_proposal  # type: ignore[method-assign]
