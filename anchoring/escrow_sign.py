"""EIP-712 digests of the Escrow's batch settlement and the driver's payment voucher.

Both are signed under the Escrow contract's domain (the one `Settlement` uses):
- `SettlementBatch(bytes32 settlementsHash)`, settlementsHash = keccak256 of the concatenated
  `Settlement(bytes32 sessionId,uint64 energyWh,uint256 amount)` struct hashes in list order
  (EIP-712's encoding of a `Settlement[]`); a validator quorum signs it for `settleBatch`.
- `PaymentVoucher(bytes32 sessionId,uint256 cumulativeAmount)`; the driver signs it, the
  device manager may close a voucher-mode session with it (`closeWithVoucher`).
"""

from __future__ import annotations

from collections.abc import Sequence

from anchoring.attestations import Settlement, SettlementBatch
from consensus.signing import PAYMENT_VOUCHER_TYPE
from primitives.eip712 import Domain, SigningKey, typed_digest


def settlement_batch_digest(domain: Domain, entries: Sequence[tuple[bytes, int, int]]) -> bytes:
    """The digest validators sign for `Escrow.settleBatch(entries)` (1..256 entries); the
    validators' subject is `anchoring.attestations.SettlementBatch`."""
    return SettlementBatch.of(0, [Settlement(*entry) for entry in entries]).digest(domain)


def payment_voucher_digest(domain: Domain, session_id: bytes, cumulative_amount: int) -> bytes:
    """The digest a driver signs: pay up to `cumulative_amount` from escrow session `session_id`."""
    if len(session_id) != 32 or not 0 <= cumulative_amount < 2**256:
        raise ValueError("session_id must be 32 bytes and cumulative_amount a uint256")
    return typed_digest(domain, PAYMENT_VOUCHER_TYPE, [session_id, cumulative_amount])


def sign_payment_voucher(key: SigningKey, domain: Domain, session_id: bytes, cumulative_amount: int) -> bytes:
    """The driver's 65-byte signature over a PaymentVoucher under the Escrow's domain."""
    return key.sign(payment_voucher_digest(domain, session_id, cumulative_amount))
