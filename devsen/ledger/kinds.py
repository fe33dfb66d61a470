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
METER_BACKWARDS = "meter_backwards"
BAD_METER = "bad_meter"
BAD_TIMESTAMP = "bad_timestamp"
ESCROW_CLOSED = "escrow_closed"
MALFORMED = "malformed"
BAD_CHAIN_DATA = "bad_chain_data"
ENERGY_CAPPED = "energy_capped"
REFUND_DEADLINE = "refund_deadline"
# A transaction bound to an escrow session is closed (and settled) this long before the
# escrow's refund deadline (or a quarter of the escrow's refund timeout if that is shorter), so
# the settlement reaches the chain before the driver can refund.
REFUND_MARGIN_MS = 2 * 3_600_000
