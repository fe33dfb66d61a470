"""The typed DEVSEN chain client over web3.py (py-evm in process, or any JSON-RPC node).

- `deploy`: `deploy_all`, `Deployment` (JSON file), `deploy_main` (`devsen chain deploy`)
- `client`: `ChainClient` typed reads at a block number and writes
- `transact`: `connect`, `TransactionSender` (explicit gas, local nonce, retries, receipts)
- `errors`: `ChainRevert` and `decode_revert_data` (custom errors by selector, both chains)
- `follower`: `EventFollower` (confirmations, persisted cursor, reorg detection), `follow_events`
- `anvil`: `start_anvil` / `running_anvil` for tests and the devnet
"""

from anchoring.chain.client import (
    AnchoredBatch,
    ChainClient,
    DeviceRecord,
    EscrowSession,
    IdTagRecord,
    SessionStatus,
    ValidatorInfo,
    ValidatorSetState,
    device_id_of,
)
from anchoring.chain.deploy import Deployment, StakingParams, ValidatorSpec, deploy_all, deploy_main
from anchoring.chain.errors import (
    ChainError,
    ChainRevert,
    RpcUnavailable,
    TransactionTimeout,
    decode_revert_data,
    revert_from_exception,
)
from anchoring.chain.follower import (
    ChainEvent,
    EventBatch,
    EventFollower,
    FollowCursor,
    ReorgDetected,
    follow_events,
)
from anchoring.chain.transact import Receipt, RetryPolicy, TransactionSender, connect, with_retries

__all__ = [
    "AnchoredBatch",
    "ChainClient",
    "ChainError",
    "ChainEvent",
    "ChainRevert",
    "Deployment",
    "DeviceRecord",
    "EscrowSession",
    "EventBatch",
    "EventFollower",
    "FollowCursor",
    "IdTagRecord",
    "Receipt",
    "ReorgDetected",
    "RetryPolicy",
    "RpcUnavailable",
    "SessionStatus",
    "TransactionSender",
    "TransactionTimeout",
    "ValidatorInfo",
    "ValidatorSetState",
    "ValidatorSpec",
    "connect",
    "decode_revert_data",
    "StakingParams",
    "deploy_all",
    "deploy_main",
    "device_id_of",
    "follow_events",
    "revert_from_exception",
    "with_retries",
]
