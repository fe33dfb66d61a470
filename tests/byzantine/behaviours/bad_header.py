"""Propose blocks whose app header is not an Ethereum read (undecodable bytes)."""

from __future__ import annotations

from typing import Any


def install() -> None:
    from devsen.app import NodeApplication

    def propose_app_header(self: Any, height: int) -> bytes:
        return b"\x07not-an-app-header"

    NodeApplication.propose_app_header = propose_app_header  # type: ignore[method-assign]
