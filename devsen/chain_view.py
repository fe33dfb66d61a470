"""The ledger's view of Ethereum, read from the DEVSEN contracts at one agreed block.

Every committed block names an Ethereum block (number + hash) in its app header; every
node reads the registries and the escrow *at that block number*, so all nodes see the same
facts. `ContractChainView` is the ledger's `ChainView` over the chain client (memoised for
one block); `SessionIndex` knows which escrow sessions exist per chargeBoxId, learned from
`SessionRequested` logs up to the agreed block. `ChainChargerRegistry` answers the OCPP
endpoint's credential look-ups from the on-chain DeviceFactory.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import trio
from web3 import Web3

from anchoring.chain import ChainClient
from anchoring.chain import EscrowSession as ChainEscrowSession
from anchoring.chain.client import SessionStatus
from devsen.ledger import ChainView, DeviceInfo, EscrowSession, IdTagInfo, Tariff
from ocpp_adapter.auth import ChargerCredentials

log = logging.getLogger("devsen.chain")

MAX_INDEXED_SESSIONS = 1_000_000  # a devnet/test bound; beyond it the node refuses to go on
MAX_LOG_RANGE = 2_000  # blocks per eth_getLogs call
BLOCK_HASH_CACHE = 64


class ChainReadError(RuntimeError):
    """The chain could not be read at the agreed block (the node cannot apply the block yet)."""


class SessionIndex:
    """chargeBoxId -> [(block number, session id)] from Escrow `SessionRequested` logs.

    Append-only and ordered by block, so a view at block E sees exactly the sessions
    requested at or before E. `ensure(E)` fetches missing log ranges synchronously.
    """

    def __init__(self, client: ChainClient, start_block: int) -> None:
        self._client = client
        self._event = client.contracts["Escrow"].events.SessionRequested()
        self._by_charger: dict[str, list[tuple[int, bytes]]] = {}
        self._count = 0
        self.indexed_to = start_block - 1
        self._lock = threading.Lock()

    def ensure(self, block_number: int) -> None:
        """Index every SessionRequested log up to `block_number` (inclusive)."""
        with self._lock:
            while self.indexed_to < block_number:
                from_block = self.indexed_to + 1
                to_block = min(block_number, from_block + MAX_LOG_RANGE - 1)
                try:
                    logs = self._event.get_logs(from_block=from_block, to_block=to_block)
                except Exception as exc:
                    raise ChainReadError(f"eth_getLogs {from_block}..{to_block} failed: {exc}") from exc
                for entry in sorted(logs, key=lambda e: (e["blockNumber"], e["logIndex"])):
                    args = entry["args"]
                    self._by_charger.setdefault(args["chargeBoxId"], []).append(
                        (int(entry["blockNumber"]), bytes(args["sessionId"])))
                    self._count += 1
                    if self._count > MAX_INDEXED_SESSIONS:
                        raise ChainReadError(f"more than {MAX_INDEXED_SESSIONS} escrow sessions indexed")
                self.indexed_to = to_block

    def session_ids(self, charge_box_id: str, up_to_block: int) -> list[bytes]:
        """Session ids requested for `charge_box_id` at or before `up_to_block`."""
        self.ensure(up_to_block)
        return [sid for block, sid in self._by_charger.get(charge_box_id, []) if block <= up_to_block]


def _to_ledger_session(charge_box_id: str, session: ChainEscrowSession) -> EscrowSession:
    return EscrowSession(
        session_id=session.session_id,
        driver=session.driver,
        charge_box_id=charge_box_id,
        connector_id=session.connector_id,
        id_tag_hash=session.id_tag_hash,
        deposit=session.deposit,
        opened_at_s=session.opened_at,
    )


class ContractChainView(ChainView):
    """On-chain facts at one Ethereum block, read through the chain client and memoised."""

    def __init__(self, client: ChainClient, index: SessionIndex, block_number: int) -> None:
        self._client = client
        self._index = index
        self.block_number = block_number
        self._memo: dict[tuple[str, Any], Any] = {}

    def _read(self, key: tuple[str, Any], read: Any) -> Any:
        if key not in self._memo:
            try:
                self._memo[key] = read()
            except ChainReadError:
                raise
            except Exception as exc:
                raise ChainReadError(f"reading {key[0]} at block {self.block_number}: {exc}") from exc
        return self._memo[key]

    def device(self, charge_box_id: str) -> DeviceInfo | None:
        record = self._read(("device", charge_box_id),
                            lambda: self._client.device(charge_box_id, self.block_number))
        if record is None:
            return None
        return DeviceInfo(
            device_id=record.device_id,
            manager=record.manager,
            connector_count=record.connector_count,
            tariff=Tariff(record.price_per_kwh, record.per_minute_fee),
            active=record.active,
        )

    def id_tag(self, tag_hash: bytes) -> IdTagInfo | None:
        record = self._read(("id_tag", tag_hash), lambda: self._client.id_tag(tag_hash, self.block_number))
        if record is None:
            return None
        return IdTagInfo(account=record.account, expiry_s=record.expiry, revoked=record.revoked)

    def _session(self, session_id: bytes) -> ChainEscrowSession | None:
        result: ChainEscrowSession | None = self._read(
            ("session", session_id), lambda: self._client.session(session_id, self.block_number))
        return result

    def open_escrow_sessions(self, charge_box_id: str) -> Sequence[EscrowSession]:
        ids = self._read(("session_ids", charge_box_id),
                         lambda: self._index.session_ids(charge_box_id, self.block_number))
        sessions = []
        for session_id in ids:
            session = self._session(session_id)
            if session is not None and session.status == SessionStatus.OPEN:
                sessions.append(_to_ledger_session(charge_box_id, session))
        return sessions

    def escrow_session(self, session_id: bytes) -> EscrowSession | None:
        session = self._session(session_id)
        if session is None or session.status != SessionStatus.OPEN:
            return None
        device = self._read(("device_by_id", session.device_id),
                            lambda: self._client.device_by_id(session.device_id, self.block_number))
        return _to_ledger_session(device.charge_box_id if device else "", session)


class ChainChargerRegistry:
    """OCPP credentials from the DeviceFactory at the latest block (admission needs `active`)."""

    def __init__(self, client: ChainClient) -> None:
        self._client = client

    async def credentials(self, charge_box_id: str) -> ChargerCredentials | None:
        """The charger's salted password hash and whether it is admitted, or None if unknown."""
        record = await trio.to_thread.run_sync(lambda: self._client.device(charge_box_id, "latest"))
        if record is None:
            return None
        return ChargerCredentials(record.auth_salt, record.auth_hash, admitted=record.active)


def checksum(address: bytes) -> str:
    """0x-checksummed hex of a 20-byte address."""
    return Web3.to_checksum_address(address)


class ContractChainAccess:
    """What the node application needs of the chain: head, block hashes, views at a block."""

    def __init__(self, client: ChainClient, index: SessionIndex) -> None:
        self.client = client
        self.index = index
        self._hashes: OrderedDict[int, bytes] = OrderedDict()
        self._validators_cache: tuple[int, tuple[int, tuple[bytes, ...], dict[bytes, bytes]]] | None = None

    def head(self) -> int:
        """The latest block number."""
        try:
            return self.client.block_number()
        except Exception as exc:
            raise ChainReadError(f"eth_blockNumber failed: {exc}") from exc

    def block_hash(self, number: int) -> bytes:
        """The hash of block `number` as the RPC sees it (remembered for a few recent blocks:
        blocks named by consensus are `confirmations` deep, below where reorgs are expected)."""
        cached = self._hashes.get(number)
        if cached is not None:
            return cached
        try:
            block_hash = bytes(self.client.w3.eth.get_block(number)["hash"])
        except Exception as exc:
            raise ChainReadError(f"eth_getBlockByNumber({number}) failed: {exc}") from exc
        self._hashes[number] = block_hash
        while len(self._hashes) > BLOCK_HASH_CACHE:
            self._hashes.popitem(last=False)
        return block_hash

    def view_at(self, number: int) -> ContractChainView:
        """The ledger's ChainView at block `number`."""
        return ContractChainView(self.client, self.index, number)

    def validators_at(self, number: int) -> tuple[int, tuple[bytes, ...], dict[bytes, bytes]]:
        """(epoch, sorted addresses, address -> peer id) of the ValidatorSet at block `number`."""
        cached = self._validators_cache
        if cached is not None and cached[0] == number:
            return cached[1]
        try:
            epoch = int(self.client.read("ValidatorSet", "epoch", block=number))
            if cached is not None and cached[1][0] == epoch:
                result = cached[1]  # same epoch: same set (only a quorum update changes it)
            else:
                state = self.client.validator_set(number)
                bindings = {bytes.fromhex(v.address[2:]): bytes(v.peer_id) for v in state.validators if v.peer_id}
                addresses = tuple(sorted(bytes.fromhex(v.address[2:]) for v in state.validators))
                result = (state.epoch, addresses, bindings)
        except Exception as exc:
            raise ChainReadError(f"reading the ValidatorSet at block {number}: {exc}") from exc
        self._validators_cache = (number, result)
        return result
