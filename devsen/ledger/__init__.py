"""The deterministic charging ledger that consensus drives: blocks of charger events in,
OCPP replies, settlement orders and a state hash out. Pure: no I/O, clocks or randomness."""

from devsen.ledger.chain import (
    BlockContext,
    ChainReservation,
    ChainView,
    DeviceInfo,
    EscrowSession,
    IdTagInfo,
    StaticChainView,
    Tariff,
    is_session_token,
    session_token,
    session_token_hash,
)
from devsen.ledger.ledger import (
    BlockOutcome,
    BlockRejected,
    EventResult,
    Ledger,
    LedgerParams,
    SnapshotError,
    energy_bound,
)
from devsen.ledger.state import Anomaly, DeviceRecord, Session, SettlementOrder
from primitives.hashing import id_tag_hash

__all__ = [
    "Anomaly",
    "BlockContext",
    "BlockOutcome",
    "BlockRejected",
    "ChainReservation",
    "ChainView",
    "DeviceInfo",
    "DeviceRecord",
    "EscrowSession",
    "EventResult",
    "IdTagInfo",
    "Ledger",
    "LedgerParams",
    "Session",
    "SettlementOrder",
    "SnapshotError",
    "StaticChainView",
    "Tariff",
    "energy_bound",
    "id_tag_hash",
    "is_session_token",
    "session_token",
    "session_token_hash",
]
