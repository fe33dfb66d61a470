"""Byzantine behaviours: one module per behaviour, each with `install()` patching one thing.

`after_start(attack)` is the shared seam for behaviours that act (floods, forged events):
it wraps `devsen.node.serve_node` so `attack(parts)` runs next to the real node once it serves.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

log = logging.getLogger("byzantine")


def after_start(attack: Callable[[Any], Awaitable[None]]) -> None:
    """Run `attack(parts)` beside the node once it serves (errors are logged, never fatal)."""
    import devsen.node as node

    original = node.serve_node

    async def serve_node(parts: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            started = await nursery.start(original, parts)
            task_status.started(started)

            async def guarded() -> None:
                try:
                    await attack(parts)
                except Exception:
                    log.exception("byzantine attack task failed")

            nursery.start_soon(guarded)

    node.serve_node = serve_node


def env(name: str, default: str = "") -> str:
    return os.environ.get(f"BYZ_{name}", default)
