"""Propose blocks carrying a manager command nobody's manager signed: a Reset (Hard) of the
devnet's demo charger, signed by a fresh outsider key under the network's command domain, well
formed and unexpired, so only the rule "signed by the device's manager at the agreed Ethereum
block" (devsen/command_gate.py) stands in its way. BYZ_CHARGER names the victim charger."""

from __future__ import annotations

import os
import time
from typing import Any


def install() -> None:
    from consensus.abci import Prepared
    from devsen.app import NodeApplication
    from devsen.devnet import DEMO_CHARGER
    from devsen.ledger.commands import sign_command
    from primitives.eip712 import SigningKey

    honest = NodeApplication.prepare_proposal
    outsider = SigningKey(os.urandom(32))
    charger = os.environ.get("BYZ_CHARGER", DEMO_CHARGER)

    def prepare_proposal(self: Any, height: int, payloads: tuple[bytes, ...], facts: Any) -> Prepared:
        prepared = honest(self, height, payloads, facts)
        forged = sign_command(outsider, self.commands.command_domain, charger, "1.6", "Reset", {"type": "Hard"},
                              time.time_ns() // 1_000, int(time.time() * 1000) + 600_000)
        return Prepared(prepared.app_header, (*prepared.payloads, forged.encode()))

    NodeApplication.prepare_proposal = prepare_proposal  # type: ignore[method-assign]
