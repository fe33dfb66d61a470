"""The start-up read of the registered operators (devsen/node.py `read_operators`) never blocks
start-up: while the chain RPC fails the node serves without them, retrying with capped backoff in
the background, one log line when the read starts failing and one when it succeeds."""

from __future__ import annotations

import logging
import time
from functools import partial
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio

from devsen.node import read_operators

OPERATOR = b"\x0b" * 20


def test_the_operators_read_retries_in_the_background_with_one_line_per_state_change(
        caplog: pytest.LogCaptureFixture) -> None:
    app = SimpleNamespace(operators=frozenset(), operators_named_at=None)
    attempts: list[float] = []

    def read() -> tuple[bytes, ...]:
        attempts.append(time.monotonic())  # in the worker thread
        if len(attempts) <= 8:
            raise ConnectionError("connection refused")
        return (OPERATOR,)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(read_operators, first_delay_s=0.01, max_delay_s=0.04), cast(Any, app),
                               read, OPERATOR)
            await trio.sleep(0.005)
            assert app.operators == frozenset()  # the caller went on at once: start-up is not held
        assert app.operators == frozenset({OPERATOR})

    with caplog.at_level(logging.INFO, logger="devsen.node"):
        trio.run(main)
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert gaps[0] >= 0.01 and gaps[1] >= 0.02 and gaps[2] >= 0.04  # doubling ...
    assert max(gaps) < 0.04 + 0.5  # ... capped at max_delay_s (plus scheduling slack)
    lines = [r.getMessage() for r in caplog.records if r.name == "devsen.node"]
    assert len([m for m in lines if "could not read the registered operators" in m]) == 1
    assert len([m for m in lines if "read the registered operators after all: 1 registered" in m]) == 1
    assert not any("is not registered on chain" in m for m in lines)  # its own key is registered


@pytest.mark.parametrize("named", [frozenset({b"\x0c" * 20}), frozenset()], ids=["some", "none"])
def test_a_block_applied_first_wins_and_an_unregistered_operator_is_warned(
        caplog: pytest.LogCaptureFixture, named: frozenset[bytes]) -> None:
    # the first block applied named its own set meanwhile, at Ethereum block 7; an empty set too
    app = SimpleNamespace(operators=named, operators_named_at=7)
    with caplog.at_level(logging.INFO, logger="devsen.node"):
        trio.run(read_operators, cast(Any, app), lambda: (b"\x0d" * 20,), OPERATOR)
    assert app.operators == named  # the later head read does not replace the agreed set
    assert [r.getMessage() for r in caplog.records].count(
        "operator 0x" + OPERATOR.hex() + " is not registered on chain (ValidatorSet.operators()): its chargers' "
        "events are refused until it is; fix: `devsen stake register-operator` with this key") == 1
