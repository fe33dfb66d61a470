"""Anomaly kinds and the limits that both the ledger's driver and its handlers check."""

MAX_TRANSACTION_ID = 2**31 - 1  # 1.6 chargers hold transactionId in a signed 32-bit integer

# Anomaly kinds.
UNREGISTERED_DEVICE = "unregistered_device"
CONNECTOR_OUT_OF_RANGE = "connector_out_of_range"
CONNECTOR_BUSY = "connector_busy"
STALE_SESSION = "stale_session"
CAPACITY = "capacity"
UNKNOWN_TRANSACTION = "unknown_transaction"
CLOSED_TRANSACTION = "closed_transaction"
DUPLICATE_TRANSACTION_ID = "duplicate_transaction_id"
NEGATIVE_ENERGY = "negative_energy"
NO_ENERGY_READING = "no_energy_reading"  # a paid transaction ended without a meter reading (0 Wh)
METER_BACKWARDS = "meter_backwards"
BAD_METER = "bad_meter"
BAD_TIMESTAMP = "bad_timestamp"
ESCROW_CLOSED = "escrow_closed"
MALFORMED = "malformed"
BAD_CHAIN_DATA = "bad_chain_data"
ENERGY_CAPPED = "energy_capped"
# A session an operator's (non-validator) event touched settles 0 unless signed readings or the
# driver's vouchers back it (LEDGER.md "Events vouched by an operator").
OPERATOR_UNBACKED = "operator_unbacked"
# Charger-signed meter values (OCMF, devsen/ledger/signed.py): the reading is ignored.
BAD_SIGNED_METER = "bad_signed_meter"  # not an OCMF document, unsupported algorithm, no key on chain
BAD_SIGNATURE = "bad_signature"  # does not verify with the device's on-chain meter key
METER_SERIAL_MISMATCH = "meter_serial_mismatch"  # another meter than the session's first signed reading
PAGINATION_NOT_INCREASING = "pagination_not_increasing"  # replayed or reordered document
READING_NOT_BOUND = "reading_not_bound"  # not of this transaction (time, identification, order)
UNSIGNED_READING = "unsigned_reading"  # a device that requires signed values settled without one
SIGNED_BUDGET = "signed_budget"  # more signed documents than an event or block may carry
REFUND_DEADLINE = "refund_deadline"
# A transaction bound to an escrow session is closed (and settled) this long before the
# escrow's refund deadline (or a quarter of the escrow's refund timeout if that is shorter), so
# the settlement reaches the chain before the driver can refund.
REFUND_MARGIN_MS = 2 * 3_600_000
