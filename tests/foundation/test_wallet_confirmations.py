"""A prepaid session is handed back only once the nodes can see it.

The nodes read the chain `confirmations` blocks below their head; a StartTransaction sent
right after the open-session receipt was applied at an older Ethereum block, found no escrow
and was answered Blocked (tests/e2e/test_e2e_signed_meter.py, second session).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from devsen import wallet

SESSION = b"\x42" * 32
OPENED_AT_BLOCK = 100


class ChainWithBlocks:
    """A chain whose head moves one block per head read (as anvil with a block time does)."""

    def __init__(self, head: int) -> None:
        self.head = head
        self.deployment = SimpleNamespace(escrow="0x" + "ee" * 20)
        self.heads_read: list[int] = []

    def approve(self, spender: str, amount: int) -> None:
        pass

    def open_session(self, *args: Any, voucher_mode: bool = False) -> tuple[bytes, Any]:
        return SESSION, SimpleNamespace(block_number=OPENED_AT_BLOCK)

    def block_number(self) -> int:
        self.heads_read.append(self.head)
        self.head += 1
        return self.heads_read[-1]


def test_open_prepaid_session_returns_once_the_session_is_confirmations_deep(monkeypatch: Any) -> None:
    monkeypatch.setattr(wallet, "CONFIRM_POLL_S", 0.0)
    chain = ChainWithBlocks(head=OPENED_AT_BLOCK)
    assert wallet.open_prepaid_session(chain, "CP-1", 1, "TAG", 10, confirmations=2) == SESSION  # type: ignore[arg-type]
    assert chain.heads_read[-1] == OPENED_AT_BLOCK + 2  # the depth the nodes' chain facts are read at
    assert wallet.NETWORK_CONFIRMATIONS == 2


def test_a_chain_that_does_not_advance_is_waited_for_a_bounded_time(monkeypatch: Any) -> None:
    monkeypatch.setattr(wallet, "CONFIRM_POLL_S", 0.0)
    chain = ChainWithBlocks(head=OPENED_AT_BLOCK)
    chain.block_number = lambda: OPENED_AT_BLOCK  # type: ignore[method-assign]
    assert not wallet.wait_for_confirmations(chain, OPENED_AT_BLOCK, 2, timeout_s=0.05)  # type: ignore[arg-type]
