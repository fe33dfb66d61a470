"""The node's HTTP routes for payment vouchers (issue 12):

    GET  /v1/sessions/{session_id}/payment   committed energy, cost and latest voucher of an escrow session
    POST /v1/sessions/{session_id}/vouchers  {"cumulative_amount": "N", "signature": "0x…65 bytes"}

A posted voucher is checked here first, at the block the ledger last agreed on: it must
recover to the escrow session's driver (read from chain), be at most the deposit and above
the latest voucher; a bad one gets 400 naming the problem and never enters the mempool.
A good one is ordered through consensus and answered once committed (200 with the height),
or 400 if the block's ledger refused it after all (e.g. a newer voucher got there first).
"""

from __future__ import annotations

import json
import time
from typing import Any

import trio

from devsen.app import NodeApplication
from devsen.consensus_service import (
    AlreadyCommitted,
    CommitReceipt,
    CommitTimeout,
    ConsensusOverloaded,
    ConsensusService,
)
from devsen.http_api import HttpError
from devsen.ledger import EscrowSession
from devsen.ledger.ledger import energy_bound
from devsen.ledger.vouchers import (
    PaymentVoucher,
    VoucherError,
    chunk_amount,
    metered_cost,
    voucher_from_document,
)

CHAIN_READ_TIMEOUT_S = 10.0
COMMIT_TIMEOUT_S = 30.0
SUBMIT_LATENCIES_KEPT = 256


MAX_VOUCHER_BODY_BYTES = 4_096  # a voucher's JSON is about 200 bytes

async def commit_payload(service: ConsensusService, payload: bytes, what: str) -> CommitReceipt | None:
    """Order `payload` through consensus for an HTTP handler: its receipt once committed, None
    if it was committed before (a client's retry); HttpError 503 (retry) or 400 (refused)."""
    try:
        return await service.submit(payload, timeout_s=COMMIT_TIMEOUT_S)
    except ConsensusOverloaded as exc:
        raise HttpError(503, f"the node is overloaded ({exc}); retry") from exc
    except CommitTimeout as exc:
        raise HttpError(503, f"not committed yet ({exc}); retry the same {what}") from exc
    except AlreadyCommitted:
        return None
    except ValueError as exc:
        raise HttpError(400, f"{what} refused: {exc}") from exc


def _session_id(text: str) -> bytes:
    digits = text.lower().removeprefix("0x")
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise HttpError(400, "session id must be 0x + 64 hex digits")
    return bytes.fromhex(digits)


def parse_voucher(session_id: bytes, body: str) -> PaymentVoucher:
    """The voucher of a POST body; HttpError 400 naming what is wrong."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise HttpError(400, f"the body is not JSON: {exc}") from exc
    try:
        return voucher_from_document(session_id, document)
    except VoucherError as exc:
        raise HttpError(400, str(exc)) from exc


class VoucherRoutes:
    """GET/POST handlers over the application and the consensus service."""

    def __init__(self, app: NodeApplication, service: ConsensusService) -> None:
        self.app = app
        self.service = service
        self.submit_latencies_ms: list[float] = []

    async def _escrow(self, session_id: bytes) -> EscrowSession | None:
        """The escrow session at the Ethereum block the ledger last agreed on (off the event loop)."""
        number = self.app.last_eth_block

        def read() -> EscrowSession | None:
            view = self.app.chain.view_at(number, self.app.chain.block_hash(number))
            session: EscrowSession | None = view.escrow_session(session_id)
            return session

        try:
            with trio.fail_after(CHAIN_READ_TIMEOUT_S):
                return await trio.to_thread.run_sync(read, abandon_on_cancel=True)  # type: ignore[call-arg]
        except Exception as exc:
            raise HttpError(503, f"cannot read the escrow session from chain now ({exc}); retry") from exc

    async def session(self, params: dict[str, str]) -> tuple[int, Any]:
        session_id = _session_id(params["session_id"])
        ledger = self.app.ledger
        latest = ledger.vouchers.latest(session_id)
        body: dict[str, Any] = {
            "session_id": "0x" + session_id.hex(), "height": ledger.height, "running": False,
            "latest_voucher": str(latest.cumulative_amount) if latest is not None else "0",
            # the driver's signature over it: what the manager needs for Escrow.closeWithVoucher
            "latest_voucher_signature": "0x" + latest.signature.hex() if latest is not None and latest.signature
            else None,
            "stopped": bool(latest and latest.stopped), "settlement": None,
        }
        for order in ledger.pending_settlements():
            if order.session_id == session_id:
                body["settlement"] = {"energy_wh": order.energy_wh, "amount": str(order.amount)}
        for session in ledger.open_sessions():
            if session.escrow_session_id != session_id:
                continue
            now_ms = ledger.counters()["block_ms"]
            energy = 0
            if session.meter_last_wh is not None and session.meter_start_wh is not None:
                energy = max(0, session.meter_last_wh - session.meter_start_wh)
            energy = min(energy, energy_bound(session.max_power_w, session.escrow_opened_at_s * 1000, now_ms))
            body.update(running=True, charger_id=session.charger_id, transaction_id=session.tx_ref,
                        energy_wh=energy, cost=str(metered_cost(session, energy, now_ms)),
                        price_per_kwh=str(session.price_per_kwh), deposit=str(session.deposit),
                        chunk_amount=str(chunk_amount(session.price_per_kwh, ledger.vouchers.chunk_wh)))
        return 200, body

    async def submit(self, params: dict[str, str]) -> tuple[int, Any]:
        started = time.perf_counter()
        session_id = _session_id(params["session_id"])
        voucher = parse_voucher(session_id, params.get("body", ""))
        try:
            signer = self.app.voucher_signer(voucher)
        except VoucherError as exc:
            raise HttpError(400, str(exc)) from exc
        escrow = await self._escrow(session_id)
        if escrow is not None:
            self.app.note_escrow_driver(session_id, escrow.driver)
        problem = self.app.ledger.vouchers.refusal(
            voucher, signer, escrow, any(o.session_id == session_id for o in self.app.ledger.pending_settlements()))
        if problem is None:
            problem = self.app.voucher_problem(voucher)
        if problem is not None:
            raise HttpError(400, f"voucher refused: {problem}")
        receipt = await commit_payload(self.service, voucher.encode(), "voucher")
        if receipt is None:
            return 200, {"cumulative_amount": str(voucher.cumulative_amount), "height": None, "duplicate": True}
        if receipt.result.code != 0:
            raise HttpError(400, f"voucher refused in block {receipt.height}: {receipt.result.log}")
        self.submit_latencies_ms = (self.submit_latencies_ms + [(time.perf_counter() - started) * 1000])[
            -SUBMIT_LATENCIES_KEPT:]
        return 200, {"cumulative_amount": str(voucher.cumulative_amount), "height": receipt.height}
