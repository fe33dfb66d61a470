"""A pytest plugin (`-p tests.node.facts_guard`): every Ledger.apply_block of the run is also
made over ChainFacts prefetched for `chain_keys(events, ledger)` alone, and must read nothing
outside them and give exactly the outcome of the full chain view."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from devsen.chain_facts import ChainFacts, FactsView, chain_keys, read_facts
from devsen.ledger import BlockContext, BlockRejected, Ledger
from devsen.ledger.commands import ChargerCommand, CommandOutcome
from devsen.ledger.ledger import BlockOutcome
from devsen.ledger.vouchers import PaymentVoucher
from ocpp_adapter.events import ChargerEvent

CHECKED = {"blocks": 0}


def pytest_configure(config: Any) -> None:
    original = Ledger.apply_block

    def guarded(self: Ledger, ctx: BlockContext, chain: Any, events: Sequence[ChargerEvent],
                vouchers: Sequence[tuple[PaymentVoucher, bytes]] = (),
                commands: Sequence[tuple[ChargerCommand, bytes, bytes]] = (),
                outcomes: Sequence[tuple[CommandOutcome, bytes]] = ()) -> BlockOutcome:
        keys = chain_keys(events, self, (v.session_id for v, _ in vouchers), (c.charger_id for c, _, _ in commands),
                          ctx.timestamp_ms)
        pairs = getattr(chain, "validator_endpoints", lambda: ())()  # what validators_at + endpoints read
        endpoints = {p[0]: p[1] for p in pairs if isinstance(p, tuple) and len(p) == 2
                     and isinstance(p[0], bytes) and len(p[0]) == 20}
        facts = ChainFacts(ctx.eth_block_number, ctx.eth_block_hash, b"", keys, validators=tuple(sorted(endpoints)),
                           endpoints=endpoints, **read_facts(chain, keys))
        twin = copy.deepcopy(self)
        view = FactsView(facts)
        try:
            expected = original(twin, ctx, chain, events, vouchers, commands, outcomes)
        except BlockRejected:
            return original(self, ctx, view, events, vouchers, commands, outcomes)
        got = original(self, ctx, view, events, vouchers, commands, outcomes)
        assert not view.outside, f"the ledger read outside the prefetched chain keys: {view.outside}"
        assert got == expected and self.state_hash() == twin.state_hash()
        CHECKED["blocks"] += 1
        return got

    Ledger.apply_block = guarded  # type: ignore[method-assign]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(f"facts_guard: {CHECKED['blocks']} blocks applied over prefetched facts")
