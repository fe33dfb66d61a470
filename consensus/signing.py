"""The EIP-712 struct types DEVSEN signs, and the quorum rule (consensus/SIGNING.md).

Keccak-256 is in primitives.hashing; domains, digests, signing keys and signer recovery are
in primitives.eip712.
"""

from __future__ import annotations

VOTE_TYPE = "Vote(uint8 voteType,uint64 height,uint32 round,bytes32 blockHash)"
PROPOSAL_TYPE = "Proposal(uint64 height,uint32 round,int32 polRound,bytes32 blockHash)"
ANCHOR_BATCH_TYPE = (
    "AnchorBatch(uint64 batchId,bytes32 root,uint64 firstHeight,uint64 lastHeight,uint64 eventCount)"
)
SETTLEMENT_TYPE = "Settlement(bytes32 sessionId,uint64 energyWh,uint256 amount)"
SETTLEMENT_BATCH_TYPE = "SettlementBatch(bytes32 settlementsHash)"  # keccak256 of the Settlement struct hashes
PAYMENT_VOUCHER_TYPE = "PaymentVoucher(bytes32 sessionId,uint256 cumulativeAmount)"  # signed by the driver
# A device manager's command to its charger (devsen/ledger/commands.py); payloadHash is the
# keccak-256 of the exact JSON text of the OCPP CALL payload.
CHARGER_COMMAND_TYPE = ("ChargerCommand(string chargeBoxId,string ocppVersion,string action,bytes32 payloadHash,"
                        "uint64 nonce,uint64 expiresAtMs)")
# A validator's report of what the charger answered to a command (bodyHash: keccak-256 of its JSON text).
COMMAND_OUTCOME_TYPE = "CommandOutcome(bytes32 commandId,string kind,bytes32 bodyHash)"
VALIDATOR_SET_UPDATE_TYPE = "ValidatorSetUpdate(uint64 epoch,bytes32 validatorsHash)"
# The current set (epoch) removes and bars a network operator (ValidatorSet.removeOperator).
OPERATOR_REMOVAL_TYPE = "OperatorRemoval(uint64 epoch,address operator)"
PAYMENT_VOUCHER_TYPE = "PaymentVoucher(bytes32 sessionId,uint256 cumulativeAmount)"


def quorum_size(validator_count: int) -> int:
    """Signatures needed from n validators: floor(2n/3) + 1."""
    if validator_count <= 0:
        raise ValueError("validator_count must be positive")
    return (2 * validator_count) // 3 + 1
