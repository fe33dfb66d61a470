"""Per-chunk payment vouchers: the driver signs what it agrees to pay, the ledger keeps the latest.

A payment voucher is the driver's EIP-712 signature over
`PaymentVoucher(bytes32 sessionId,uint256 cumulativeAmount)` (consensus.signing.PAYMENT_VOUCHER_TYPE)
under the Escrow contract's domain, so `Escrow.closeWithVoucher` accepts the very same bytes.
It travels as a payload of its own kind (first byte VOUCHER_PAYLOAD_TAG, fixed length).

The ledger's rules (pure, deterministic; `VoucherBook` lives inside the Ledger's state):
- A voucher counts if its escrow session is open on chain at the block's agreed Ethereum
  block, it recovers to that session's driver, its amount is at most the deposit and above
  the latest voucher kept for the session, and the session has no settlement pending.
  Anything else is a deterministic refusal (the reason is the payload's TxResult log).
- For a voucher-mode escrow session (`EscrowSession.voucher_mode`), once the metered cost of
  the running transaction exceeds the latest voucher by more than one chunk (CHUNK_WH at the
  session's tariff), the ledger decides once to stop the charge: a `StopOrder` the node
  holding the charger's connection turns into RemoteStopTransaction / RequestStopTransaction.
- A voucher-mode session settles at min(metered cost, latest voucher).
State is bounded: at most `max_entries` sessions with a voucher, and the oldest few are
dropped each block once their escrow session has closed on chain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from consensus.signing import PAYMENT_VOUCHER_TYPE
from devsen.ledger.chain import MAX_AMOUNT, EscrowSession
from devsen.ledger.state import HashedTable, Session
from primitives.eip712 import Domain, SignatureError, SigningKey, recover_address, typed_digest

VOUCHER_PAYLOAD_TAG = 0xB1  # not an event (0x9A) nor an attestation (0xA1/0xA2)
VOUCHER_PAYLOAD_BYTES = 1 + 32 + 32 + 65
CHUNK_WH = 500  # default chunk: 0.5 kWh worth at the session's tariff
MAX_VOUCHER_ENTRIES = 10_000  # sessions with a voucher kept at once (as many as open sessions)
PRUNE_CHECKS_PER_BLOCK = 16  # oldest voucher entries re-checked against the chain per block


class VoucherError(ValueError):
    """Bytes that are not a well-formed payment voucher payload."""


@dataclass(frozen=True, slots=True)
class PaymentVoucher:
    """The driver's promise to pay `cumulative_amount` in total for escrow session `session_id`."""

    session_id: bytes
    cumulative_amount: int
    signature: bytes

    def encode(self) -> bytes:
        """Tag || sessionId || amount (32-byte big-endian) || signature (65 bytes): canonical."""
        return (bytes([VOUCHER_PAYLOAD_TAG]) + self.session_id + self.cumulative_amount.to_bytes(32, "big")
                + self.signature)

    def digest(self, escrow_domain: Domain) -> bytes:
        """The EIP-712 digest the driver signs (Escrow's domain)."""
        return voucher_digest(escrow_domain, self.session_id, self.cumulative_amount)

    def signer(self, escrow_domain: Domain) -> bytes:
        """The 20-byte address the signature recovers to; VoucherError if it does not recover."""
        try:
            return recover_address(self.digest(escrow_domain), self.signature)
        except SignatureError as exc:
            raise VoucherError(f"voucher signature: {exc}") from exc


def voucher_digest(escrow_domain: Domain, session_id: bytes, cumulative_amount: int) -> bytes:
    """EIP-712 digest of PaymentVoucher(sessionId, cumulativeAmount) under the Escrow domain."""
    return typed_digest(escrow_domain, PAYMENT_VOUCHER_TYPE, [session_id, cumulative_amount])


def sign_voucher(key: SigningKey, escrow_domain: Domain, session_id: bytes, cumulative_amount: int) -> PaymentVoucher:
    """The driver's side: a signed voucher."""
    if len(session_id) != 32 or not 0 <= cumulative_amount <= MAX_AMOUNT:
        raise VoucherError("session_id must be 32 bytes and the amount a uint256")
    digest = voucher_digest(escrow_domain, session_id, cumulative_amount)
    return PaymentVoucher(session_id, cumulative_amount, key.sign(digest))


def decode_voucher(payload: bytes) -> PaymentVoucher:
    """Strict decoding of a voucher payload (fixed length, first byte VOUCHER_PAYLOAD_TAG)."""
    if len(payload) != VOUCHER_PAYLOAD_BYTES or payload[0] != VOUCHER_PAYLOAD_TAG:
        raise VoucherError(f"a voucher payload is {VOUCHER_PAYLOAD_BYTES} bytes starting 0x{VOUCHER_PAYLOAD_TAG:02x}")
    return PaymentVoucher(payload[1:33], int.from_bytes(payload[33:65], "big"), payload[65:])


def voucher_document(voucher: PaymentVoucher) -> dict[str, str]:
    """A voucher as JSON-ready text: what POST /v1/sessions/{id}/vouchers takes (plus the
    session id), what `devsen wallet stream --voucher-out` writes and `close-with-voucher` reads."""
    return {"session_id": "0x" + voucher.session_id.hex(), "cumulative_amount": str(voucher.cumulative_amount),
            "signature": "0x" + voucher.signature.hex()}


def voucher_from_document(session_id: bytes, document: object) -> PaymentVoucher:
    """The voucher of a `voucher_document` (its session_id, if given, must be `session_id`);
    VoucherError naming the key that is wrong."""
    if not isinstance(document, dict):
        raise VoucherError('a voucher is {"cumulative_amount": "N", "signature": "0x..."}')
    named = document.get("session_id")
    if named is not None and (not isinstance(named, str) or named.lower().removeprefix("0x") != session_id.hex()):
        raise VoucherError(f"session_id {named!r} is not 0x{session_id.hex()}")
    amount, signature = document.get("cumulative_amount"), document.get("signature")
    if isinstance(amount, str) and amount.isdigit() and len(amount) <= 78:
        amount = int(amount)
    if type(amount) is not int or not 0 <= amount <= MAX_AMOUNT:
        raise VoucherError("cumulative_amount must be a uint256 (a decimal string or an integer)")
    try:
        raw = bytes.fromhex(signature.removeprefix("0x")) if isinstance(signature, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 65:
        raise VoucherError("signature must be 0x + 130 hex digits (65 bytes r || s || v)")
    return PaymentVoucher(session_id, amount, raw)


def address_bytes(text: str) -> bytes | None:
    """A 0x-hex 20-byte address as bytes, or None if it is not one (chain data is hostile)."""
    if not isinstance(text, str):
        return None
    digits = text.lower().removeprefix("0x")
    if len(digits) != 40 or any(c not in "0123456789abcdef" for c in digits):
        return None
    return bytes.fromhex(digits)


def chunk_amount(price_per_kwh: int, chunk_wh: int = CHUNK_WH) -> int:
    """What one chunk of energy costs at a tariff (rounded down, like settlement amounts)."""
    return chunk_wh * price_per_kwh // 1000


def metered_cost(session: Session, energy_wh: int, now_ms: int) -> int:
    """The running cost of a bound session by the rule of settlement (ledger.py), capped at the deposit."""
    begin = max(session.charge_start_ms, session.escrow_opened_at_s * 1000)
    minutes = max(0, now_ms - begin) // 60_000
    return min(energy_wh * session.price_per_kwh // 1000 + minutes * session.per_minute_fee, session.deposit)


@dataclass(frozen=True, slots=True)
class LatestVoucher:
    """The latest counted voucher of one escrow session (and whether its stop was decided)."""

    seq: int
    cumulative_amount: int
    signature: bytes
    height: int
    stopped: bool = False


@dataclass(frozen=True, slots=True)
class StopOrder:
    """The ledger decided to stop this transaction: the driver's vouchers fell behind."""

    session_id: bytes
    charger_id: str
    tx_ref: str
    ocpp_version: str
    connector_id: int
    metered_cost: int
    voucher_amount: int


class VoucherBook:
    """The latest valid voucher per escrow session (part of the ledger's hashed state).

    `next_seq` is the ledger's sequence counter (hashed with its state), so an entry's `seq`,
    which records its place in the table's order, is the same on every node, restarted or not."""

    def __init__(self, next_seq: Callable[[], int], max_entries: int = MAX_VOUCHER_ENTRIES,
                 chunk_wh: int = CHUNK_WH) -> None:
        assert max_entries >= 1 and chunk_wh >= 1
        self.max_entries = max_entries
        self.chunk_wh = chunk_wh
        self.table: HashedTable[bytes, LatestVoucher] = HashedTable("vouchers")
        self._next_seq = next_seq

    def latest(self, session_id: bytes) -> LatestVoucher | None:
        return self.table.get(session_id)

    def refusal(self, voucher: PaymentVoucher, signer: bytes, escrow: EscrowSession | None,
                settling: bool) -> str | None:
        """Why `voucher` (signed by `signer`) cannot count now, or None. Pure; changes nothing."""
        if escrow is None:
            return "the escrow session is not open on chain at the agreed block"
        if settling:
            return "the session is already settled (settlement pending)"
        driver = address_bytes(escrow.driver)
        if driver is None or signer != driver:
            return f"signed by 0x{signer.hex()}, not by the session's driver {escrow.driver}"
        if voucher.cumulative_amount > escrow.deposit:
            return f"cumulative amount {voucher.cumulative_amount} exceeds the deposit {escrow.deposit}"
        latest = self.table.get(voucher.session_id)
        if latest is not None and voucher.cumulative_amount <= latest.cumulative_amount:
            return (f"cumulative amount {voucher.cumulative_amount} is not above the latest voucher "
                    f"{latest.cumulative_amount}")
        if latest is None and len(self.table) >= self.max_entries:
            return f"vouchers are kept for at most {self.max_entries} sessions; retry after some settle"
        return None

    def apply(self, voucher: PaymentVoucher, signer: bytes, escrow: EscrowSession | None, settling: bool,
              height: int) -> str | None:
        """Keep `voucher` if it counts; the refusal reason otherwise (state unchanged)."""
        problem = self.refusal(voucher, signer, escrow, settling)
        if problem is not None:
            return problem
        latest = self.table.get(voucher.session_id)
        stopped = latest.stopped if latest is not None else False
        seq = latest.seq if latest is not None else self._next_seq()  # a session keeps its place
        self.table.put(voucher.session_id,
                       LatestVoucher(seq, voucher.cumulative_amount, voucher.signature, height, stopped))
        return None

    def stop_due(self, session: Session, escrow: EscrowSession | None, energy_wh: int, now_ms: int,
                 height: int) -> StopOrder | None:
        """A StopOrder if this running voucher-mode session must stop now (decided once per session)."""
        if escrow is None or not escrow.voucher_mode or not session.bound:
            return None
        latest = self.table.get(session.escrow_session_id)
        if latest is not None and latest.stopped:
            return None
        signed = latest.cumulative_amount if latest is not None else 0
        cost = metered_cost(session, energy_wh, now_ms)
        if cost - signed <= chunk_amount(session.price_per_kwh, self.chunk_wh):
            return None
        if latest is None and len(self.table) >= self.max_entries:
            return None  # cannot remember the decision; the settlement is still capped by the voucher
        if latest is None:
            latest = LatestVoucher(self._next_seq(), 0, b"", height)
        self.table.put(session.escrow_session_id, replace(latest, stopped=True))
        return StopOrder(session.escrow_session_id, session.charger_id, session.tx_ref, session.ocpp_version,
                         session.connector_id, cost, signed)

    def settle(self, escrow: EscrowSession | None, session_id: bytes, amount: int) -> int:
        """The settled amount: min(metered, latest voucher) for a voucher-mode session; the entry is dropped."""
        latest = self.table.get(session_id)
        if latest is not None:
            self.table.pop(session_id)
        if escrow is None or not escrow.voucher_mode:
            return amount
        return min(amount, latest.cumulative_amount if latest is not None else 0)

    def prune_keys(self, limit: int = PRUNE_CHECKS_PER_BLOCK) -> list[bytes]:
        """The oldest entries re-checked against the chain this block (pure over the state)."""
        return list(self.table)[:limit]

    def prune(self, open_on_chain: Any, limit: int = PRUNE_CHECKS_PER_BLOCK) -> None:
        """Drop the oldest entries whose escrow session has closed on chain; the others move last."""
        for session_id in self.prune_keys(limit):
            entry = self.table.pop(session_id)
            if open_on_chain(session_id):
                self.table.put(session_id, replace(entry, seq=self._next_seq()))

    def digest(self) -> bytes:
        return self.table.digest()

    def to_state(self) -> list[Any]:
        return self.table.to_state()

    def restore(self, entries: Any) -> None:
        for key, v in entries:
            self.table.put(bytes(key), LatestVoucher(*v))
