"""A full node that is not registered as an operator, and relays its chargers' events anyway:
its own admission (`NodeApplication.check_tx`) says yes to everything, so `ConsensusService.relay`
hands the self-vouched events to the validators, whose admission (the operator registry at their
chain view) must refuse them."""

from __future__ import annotations

from typing import Any


def install() -> None:
    from consensus.abci import CheckResult
    from devsen.app import NodeApplication

    def check_tx(self: Any, payload: bytes) -> CheckResult:
        return CheckResult(True, source="unregistered")

    NodeApplication.check_tx = check_tx  # type: ignore[method-assign]
