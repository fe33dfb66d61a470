"""`SubmissionChain` over the real chain client (anchoring/chain), for the trio submitter.

The chain client is synchronous (web3 over HTTP, or the in-process py-evm chain); every
call runs in a worker thread, one at a time per `OnChain` (a capacity limiter of one), so
the in-process chain is never entered from two threads. Transport failures become
`ChainUnavailable` (retried by the submitter), reverts become `SubmissionRejected`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TypeVar

import requests
import trio
from web3.exceptions import BadFunctionCallOutput, Web3RPCError

from anchoring.attestations import AnchorBatch, SettlementBatch
from anchoring.chain.client import ChainClient
from anchoring.chain.errors import ChainRevert, RpcUnavailable, TransactionTimeout
from anchoring.rewards import RewardSubject, distribute
from anchoring.submitter import ChainUnavailable, SessionState, SubmissionRejected

T = TypeVar("T")
# Transport failures, and JSON-RPC errors that are not reverts (e.g. a node still syncing)
_TRANSPORT = (RpcUnavailable, TransactionTimeout, requests.exceptions.RequestException, ConnectionError,
              Web3RPCError)


class OnChain:
    """The Anchor and Escrow contracts of one deployment, as the submitter sees them."""

    def __init__(self, client: ChainClient) -> None:
        self.client = client
        self.limiter = trio.CapacityLimiter(1)

    async def run_sync(self, function: Callable[..., T], *args: object) -> T:
        """Run one blocking chain-client call in the worker thread, mapping its errors."""
        try:
            return await trio.to_thread.run_sync(functools.partial(function, *args), limiter=self.limiter,
                                                 abandon_on_cancel=True)  # type: ignore[call-arg]
        except ChainRevert as exc:
            raise SubmissionRejected(str(exc)) from exc
        except _TRANSPORT as exc:
            raise ChainUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def head_number(self) -> int:
        return await self.run_sync(self.client.block_number)

    async def next_batch_id(self, block: int | None = None) -> int:
        try:
            return await self.run_sync(self.client.next_batch_id, "latest" if block is None else block)
        except BadFunctionCallOutput:
            if block is None:
                raise
            return 0  # read below the Anchor contract's deployment: nothing anchored yet

    async def anchored_batch(self, batch_id: int, block: int | None = None) -> AnchorBatch | None:
        stored = await self.run_sync(self.client.anchored_batch, batch_id, "latest" if block is None else block)
        if stored is None:
            return None
        return AnchorBatch(stored.batch_id, stored.root, stored.first_height, stored.last_height, stored.event_count)

    async def submit_batch(self, batch: AnchorBatch, signatures: Sequence[bytes]) -> bytes:
        receipt = await self.run_sync(self.client.submit_anchor_batch, batch.batch_id, batch.root,
                                      batch.first_height, batch.last_height, batch.event_count, list(signatures))
        return receipt.tx_hash

    async def session_state(self, session_id: bytes, block: int | None = None) -> SessionState:
        try:
            session = await self.run_sync(self.client.session, session_id, "latest" if block is None else block)
        except BadFunctionCallOutput:
            if block is None:
                raise
            return SessionState(0)  # read below the Escrow contract's deployment
        if session is None:
            return SessionState(0)
        return SessionState(int(session.status), session.energy_wh, session.settled_amount, session.voucher_mode)

    async def submit_settlement(self, batch: SettlementBatch, signatures: Sequence[bytes]) -> bytes:
        entries = [(e.session_id, e.energy_wh, e.amount) for e in batch.entries]
        receipt = await self.run_sync(self.client.settle_batch, entries, list(signatures))
        return receipt.tx_hash

    async def reward_paid(self, epoch: int, part: int, block: int | None = None) -> bool:
        """Whether the Rewards contract paid part `part` of `epoch` (False for a deployment without it)."""
        if not self.client.deployment.rewards:
            return False
        try:
            read = functools.partial(self.client.read, block="latest" if block is None else block)
            return bool(await self.run_sync(read, "Rewards", "partPaid", epoch, part))
        except BadFunctionCallOutput:
            if block is None:
                raise
            return False  # read below the Rewards contract's deployment

    async def submit_rewards(self, subject: RewardSubject, signatures: Sequence[bytes]) -> bytes:
        if not self.client.deployment.rewards:
            raise SubmissionRejected("this deployment has no Rewards contract")
        receipt = await self.run_sync(distribute, self.client, subject, list(signatures))
        return receipt.tx_hash
