"""THROWAWAY SHIM (the lead drops it when wt-shell's ConsensusService drives consensus/abci.py).

Adapts the typed `NodeApplication` (consensus/abci.py Protocol) to the current
ConsensusService's old hooks (propose_app_header, validate_block, apply_block, check_payload,
validator_update, restore). Unlike the real shell it fetches chain facts ON the event loop,
and it keeps the TxResults of the last SHIM_RESULT_HEIGHTS heights so NodeIngest can find a
receipt's result until `CommitReceipt.result` exists.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from consensus.abci import FinalizeResult, TxResult
from consensus.types import Block, CommitCertificate, ValidatorSet
from devsen.app import NodeApplication

SHIM_RESULT_HEIGHTS = 1_000


class LegacyShellAdapter:
    """The old ConsensusService Application over the new Protocol (module docstring)."""

    def __init__(self, app: NodeApplication, on_finalized: Callable[[Block, FinalizeResult], None]) -> None:
        self.app = app
        self.on_finalized = on_finalized
        self.results: OrderedDict[int, tuple[TxResult, ...]] = OrderedDict()
        self._update: tuple[int, ValidatorSet, dict[bytes, bytes]] | None = None

    def check_payload(self, payload: bytes) -> bool:
        return self.app.check_tx(payload).ok

    def propose_app_header(self, height: int) -> bytes:
        return self.app.prepare_proposal(height, (), self.app.propose_facts(height)).app_header

    def validate_block(self, block: Block) -> bool:
        return self.app.process_proposal(block, self.app.fetch_facts(block.height, block.app_header, block.payloads))

    def apply_block(self, block: Block, certificate: CommitCertificate) -> bytes:
        facts = self.app.fetch_facts(block.height, block.app_header, block.payloads, committed=True)
        result = self.app.finalize_block(block, certificate, facts)
        self.app.commit(block.height)
        self.results[block.height] = result.tx_results
        while len(self.results) > SHIM_RESULT_HEIGHTS:
            self.results.popitem(last=False)
        if result.validator_update is not None:
            u = result.validator_update
            self._update = (block.height, u.validators, u.bindings)
        self.on_finalized(block, result)
        return result.app_hash

    def validator_update(self, height: int) -> tuple[ValidatorSet, dict[bytes, bytes]] | None:
        if self._update is None or self._update[0] != height:
            return None
        _, validators, bindings = self._update
        self._update = None
        return validators, bindings

    def restore(self, last_height: int, get_block: Any) -> tuple[int, bytes] | None:
        return self.app.restore(last_height, get_block)

    def result_of(self, receipt: Any) -> TxResult | None:
        results = self.results.get(receipt.height)
        return results[receipt.index] if results is not None and receipt.index < len(results) else None
