"""The typed DEVSEN chain client: reads at an agreed block number, writes through a sender.

Every read takes `block` (a block number; "latest" only for tools), so all nodes read the
same state for one consensus height. Writes go through `TransactionSender` with explicit
gas from `GAS`, and return the receipt (and the new id where there is one).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from web3 import Web3
from web3.contract import Contract
from web3.logs import DISCARD
from web3.types import BlockIdentifier, FilterParams

from anchoring.chain.deploy import Deployment
from anchoring.chain.errors import ChainError, ChainRevert, revert_from_exception
from anchoring.chain.transact import (
    MAX_GAS_PER_TX,
    Receipt,
    RetryPolicy,
    TransactionSender,
    with_retries,
)
from contracts import load_artifact
from primitives.hashing import id_tag_hash, keccak256

T = TypeVar("T")
BlockId = BlockIdentifier  # a block number for consensus reads; "latest" for tools
MAX_DEVICES_PER_LISTING = 10_000
DEFAULT_MAX_POWER_W = 350_000  # DeviceFactory.DEFAULT_MAX_POWER_W: a sane default for call sites that do not say
_READ_RETRY = RetryPolicy()

# Explicit gas limits (anvil measurements in bench/results/gas.md, with headroom).
GAS = {
    "registerRoles": 80_000,
    "registerIdTag": 120_000,
    "revokeIdTag": 60_000,
    "createDevice": 700_000,
    "deviceUpdate": 250_000,
    "createSite": 120_000,
    "siteUpdate": 80_000,
    "approve": 80_000,
    "faucetMint": 100_000,
    "transfer": 80_000,
    "openSession": 300_000,
    "settleBatchBase": 80_000,
    "settleBatchPerEntry": 60_000,  # ~cold worst case: every entry pays another fresh manager and driver
    "closeWithVoucher": 150_000,
    "refund": 120_000,
    "reserve": 400_000,  # ~265k measured; may first close the connector's expired reservation (two transfers)
    "endReservation": 120_000,
    "anchorBase": 150_000,
    "perSignature": 12_000,
    "updateValidatorsBase": 200_000,
    "perValidator": 60_000,
    "validatorInfo": 200_000,
    "bond": 120_000,
    "registerCandidate": 130_000,
    "registerOperator": 250_000,
    "leaveOperators": 60_000,
    "pruneOperator": 60_000,
    "removeOperatorBase": 90_000,
    "beginUnbonding": 110_000,
    "withdraw": 80_000,
    "voteEvidence": 180_000,
}


class SessionStatus(enum.IntEnum):
    OPEN = 1
    SETTLED = 2
    REFUNDED = 3


@dataclass(frozen=True, slots=True)
class ValidatorInfo:
    address: str
    peer_id: bytes
    endpoint: str


@dataclass(frozen=True, slots=True)
class ValidatorSetState:
    epoch: int
    validators: tuple[ValidatorInfo, ...]
    quorum: int

    def addresses(self) -> tuple[str, ...]:
        return tuple(v.address for v in self.validators)


@dataclass(frozen=True, slots=True)
class EpochRecord:
    """One epoch of the ValidatorSet's history: its set and the Ethereum block it took effect at."""

    epoch: int
    start_block: int
    validators: tuple[str, ...]  # ascending


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    device_id: bytes
    charge_box_id: str
    manager: str
    location: str
    connector_count: int
    price_per_kwh: int
    per_minute_fee: int
    auth_salt: bytes
    auth_hash: bytes
    charger_public_key: bytes
    active: bool
    max_power_w: int = 0  # per connector / EVSE, watts (DeviceFactory.maxPowerW)
    require_signed_meter: bool = False  # settle only on OCMF readings signed with charger_public_key
    site_id: int = 0  # DeviceFactory.siteOf: the load-management site it is in (0: none)


@dataclass(frozen=True, slots=True)
class SiteRecord:
    """A DeviceFactory site (issue 13): chargers sharing `max_power_w`, at least `min_session_w` each."""

    site_id: int
    manager: str
    max_power_w: int
    min_session_w: int


@dataclass(frozen=True, slots=True)
class IdTagRecord:
    id_tag_hash: bytes
    account: str
    expiry: int  # unix seconds, 0 = never
    revoked: bool


class ReservationRecord(NamedTuple):
    """An Escrow reservation as the contract stores it (issue 13)."""

    reservation_id: int
    connector_id: int
    driver: str
    created_at: int
    expires_at: int
    device_id: bytes
    id_tag_hash: bytes
    per_minute_fee: int
    fee: int


@dataclass(frozen=True, slots=True)
class EscrowSession:
    session_id: bytes
    driver: str
    device_id: bytes
    connector_id: int
    id_tag_hash: bytes
    deposit: int
    settled_amount: int
    energy_wh: int
    opened_at: int
    status: SessionStatus
    voucher_mode: bool = False
    price_per_kwh: int = 0  # the device tariff copied when the session was opened
    per_minute_fee: int = 0


@dataclass(frozen=True, slots=True)
class AnchoredBatch:
    batch_id: int
    root: bytes
    first_height: int
    last_height: int
    event_count: int


@dataclass(frozen=True, slots=True)
class StakeState:
    """One account's bonded stake (token base units) and unbonding end (0: not unbonding)."""

    account: str
    stake: int
    withdrawable_at: int
    was_validator: bool


@dataclass(frozen=True, slots=True)
class StakingTerms:
    """The ValidatorSet's staking parameters (contracts/STAKING.md)."""

    token: str
    min_stake: int
    unbonding_s: int
    slash_bps: int
    reporter_share_bps: int
    min_operator_stake: int


def device_id_of(charge_box_id: str) -> bytes:
    """keccak256 of the chargeBoxId: the DeviceFactory key."""
    return keccak256(charge_box_id.encode("utf-8"))


class ChainClient:
    """Typed access to one DEVSEN deployment. `sender` is needed only for writes."""

    def __init__(self, w3: Web3, deployment: Deployment, sender: TransactionSender | None = None):
        self.w3 = w3
        self.deployment = deployment
        self.sender = sender
        self.contracts: dict[str, Contract] = {
            name: w3.eth.contract(address=Web3.to_checksum_address(address), abi=load_artifact(name)["abi"])
            for name, address in deployment.addresses().items()
        }

    def check_deployment(self) -> None:
        """Raise ChainError unless the node is on the deployment's chain and every contract
        address holds code (call once at startup: a wrong RPC URL fails loudly here)."""
        chain_id = self.rpc(lambda: self.w3.eth.chain_id)
        if chain_id != self.deployment.chain_id:
            raise ChainError(f"RPC is on chain {chain_id}, the deployment on chain {self.deployment.chain_id}")
        for name, contract in self.contracts.items():
            address = contract.address
            code = self.rpc(lambda: self.w3.eth.get_code(address))  # noqa: B023 (called at once)
            if not code:
                raise ChainError(f"no code for {name} at {address}")

    def rpc(self, operation: Callable[[], T]) -> T:
        """Run one node request with retries (the sender's policy when there is a sender)."""
        if self.sender is not None:
            return self.sender.rpc(operation)
        return with_retries(operation, _READ_RETRY)

    # ---- reads -------------------------------------------------------------------------

    def read(self, contract: str, function: str, *args: Any, block: BlockId) -> Any:
        """Call view `function` of `contract` at `block`; reverts become ChainRevert."""
        call = self.contracts[contract].functions[function](*args)
        try:
            return self.rpc(lambda: call.call(block_identifier=block))
        except ChainRevert:
            raise
        except Exception as exc:
            revert = revert_from_exception(exc)
            if revert is None:
                raise
            raise revert from exc

    def block_number(self) -> int:
        return int(self.rpc(lambda: self.w3.eth.block_number))

    def validator_set(self, block: BlockId) -> ValidatorSetState:
        addresses = self.read("ValidatorSet", "validators", block=block)
        infos = []
        for address in addresses:
            peer_id, endpoint = self.read("ValidatorSet", "validatorInfo", address, block=block)
            infos.append(ValidatorInfo(address, bytes(peer_id), endpoint))
        return ValidatorSetState(
            epoch=self.read("ValidatorSet", "epoch", block=block),
            validators=tuple(infos),
            quorum=self.read("ValidatorSet", "quorum", block=block),
        )

    def logs_count(self, contract: str, from_block: int, to_block: int) -> int:
        """How many events `contract` emitted in blocks [from_block, to_block] (one eth_getLogs:
        a cheap "did anything change" before a read of many calls)."""
        query: FilterParams = {"fromBlock": from_block, "toBlock": to_block,
                               "address": self.contracts[contract].address}
        return len(self.rpc(lambda: self.w3.eth.get_logs(query)))

    def epoch_count(self, block: BlockId) -> int:
        """Epochs the ValidatorSet has recorded at `block` (current epoch + 1)."""
        return int(self.read("ValidatorSet", "epochCount", block=block))

    def epoch_record(self, epoch: int, block: BlockId) -> EpochRecord | None:
        """Epoch `epoch` of the ValidatorSet's history, or None if not (yet) recorded."""
        try:
            start, _ = self.read("ValidatorSet", "epochInfo", epoch, block=block)
            addresses = self.read("ValidatorSet", "epochValidators", epoch, block=block)
        except ChainRevert as exc:
            if exc.name == "UnknownEpoch":
                return None
            raise
        return EpochRecord(epoch, int(start), tuple(addresses))

    def epoch_at_block(self, number: int, block: BlockId) -> int:
        """The epoch in force in the state of Ethereum block `number` (from the history at `block`)."""
        return int(self.read("ValidatorSet", "epochAtBlock", number, block=block))

    def peer_id_holder(self, peer_id: bytes, block: BlockId) -> str | None:
        """The validator bound to `peer_id` on chain, or None."""
        holder = self.read("ValidatorSet", "peerIdHolder", peer_id, block=block)
        return None if int(holder, 16) == 0 else str(holder)

    def stake(self, account: str | bytes, block: BlockId) -> StakeState:
        """`account`'s bonded stake on the ValidatorSet."""
        address = Web3.to_checksum_address(account)
        return StakeState(
            address,
            int(self.read("ValidatorSet", "stakeOf", address, block=block)),
            int(self.read("ValidatorSet", "withdrawableAt", address, block=block)),
            bool(self.read("ValidatorSet", "wasValidator", address, block=block)),
        )

    def operators(self, block: BlockId) -> tuple[bytes, ...]:
        """The registered network operators (full nodes vouching for charger events) with at
        least minOperatorStake bonded, as 20-byte addresses sorted ascending; at most MAX_OPERATORS."""
        return tuple(sorted(bytes.fromhex(str(a)[2:]) for a in self.read("ValidatorSet", "operators", block=block)))

    def registered_operators(self, block: BlockId) -> tuple[bytes, ...]:
        """Every registered operator, those below minOperatorStake too (what pruneOperator frees),
        as 20-byte addresses sorted ascending; at most MAX_OPERATORS."""
        return tuple(sorted(bytes.fromhex(str(a)[2:])
                            for a in self.read("ValidatorSet", "registeredOperators", block=block)))

    def staking_terms(self, block: BlockId) -> StakingTerms:
        return StakingTerms(
            str(self.read("ValidatorSet", "stakeToken", block=block)),
            int(self.read("ValidatorSet", "minStake", block=block)),
            int(self.read("ValidatorSet", "unbondingSeconds", block=block)),
            int(self.read("ValidatorSet", "slashBps", block=block)),
            int(self.read("ValidatorSet", "reporterShareBps", block=block)),
            int(self.read("ValidatorSet", "minOperatorStake", block=block)),
        )

    def offence_slashed(self, signer: str | bytes, vote_type: int, height: int, round: int, block: BlockId) -> bool:
        offence = self.read("ValidatorSet", "offenceId", Web3.to_checksum_address(signer), vote_type, height, round,
                            block=block)
        return bool(self.read("ValidatorSet", "offenceSlashed", offence, block=block))

    def device(self, charge_box_id: str, block: BlockId) -> DeviceRecord | None:
        return self.device_by_id(device_id_of(charge_box_id), block)

    def device_by_id(self, device_id: bytes, block: BlockId) -> DeviceRecord | None:
        try:
            d = self.read("DeviceFactory", "device", device_id, block=block)
        except ChainRevert as exc:
            if exc.name == "UnknownDevice":
                return None
            raise
        (manager, connectors, active, max_power_w, require_signed, salt, price, fee, auth_hash, cbid, location, key) = d
        site_id = int(self.read("DeviceFactory", "siteOf", device_id, block=block))
        return DeviceRecord(
            device_id, cbid, manager, location, connectors, price, fee, bytes(salt), bytes(auth_hash), bytes(key), active,
            max_power_w, require_signed, site_id,
        )

    def site(self, site_id: int, block: BlockId) -> SiteRecord | None:
        """A load-management site of the DeviceFactory, or None if there is none with this id."""
        try:
            manager, max_power_w, min_session_w = self.read("DeviceFactory", "site", site_id, block=block)
        except ChainRevert as exc:
            if exc.name == "UnknownSite":
                return None
            raise
        return SiteRecord(site_id, manager, max_power_w, min_session_w)

    def device_ids(self, block: BlockId) -> list[bytes]:
        count = self.read("DeviceFactory", "deviceCount", block=block)
        if count > MAX_DEVICES_PER_LISTING:
            raise ValueError(f"{count} devices exceed the listing bound {MAX_DEVICES_PER_LISTING}")
        return [bytes(self.read("DeviceFactory", "deviceIdAt", i, block=block)) for i in range(count)]

    def id_tag(self, tag_hash: bytes, block: BlockId) -> IdTagRecord | None:
        account, expiry, revoked = self.read("UserRegistry", "idTag", tag_hash, block=block)
        if int(account, 16) == 0:
            return None
        return IdTagRecord(tag_hash, account, expiry, revoked)

    def roles_of(self, account: str, block: BlockId) -> int:
        return int(self.read("UserRegistry", "rolesOf", account, block=block))

    def session(self, session_id: bytes, block: BlockId) -> EscrowSession | None:
        try:
            s = self.read("Escrow", "session", session_id, block=block)
        except ChainRevert as exc:
            if exc.name == "UnknownSession":
                return None
            raise
        (driver, energy_wh, connector_id, status, voucher_mode, device_id, tag_hash, deposit, settled, opened_at,
         price, fee) = s
        return EscrowSession(
            session_id, driver, bytes(device_id), connector_id, bytes(tag_hash), deposit, settled,
            energy_wh, opened_at, SessionStatus(status), bool(voucher_mode), price, fee,
        )

    def reservations_of(self, charge_box_id: str, block: BlockId) -> list[ReservationRecord]:
        """The open Escrow reservations (expired or not) on the connectors of `charge_box_id`;
        none for an unregistered device."""
        try:
            rows = self.read("Escrow", "reservationsOf", charge_box_id, block=block)
        except ChainRevert as exc:
            if exc.name == "UnknownDevice":
                return []
            raise
        return [ReservationRecord(int(r[0]), int(r[1]), str(r[3]), int(r[4]), int(r[5]), bytes(r[6]), bytes(r[7]),
                                  int(r[8]), int(r[9])) for r in rows]

    def refund_timeout(self, block: BlockId) -> int:
        """Seconds after opening from which a driver may refund an unsettled session."""
        return int(self.read("Escrow", "refundTimeout", block=block))

    def next_session_id(self, driver: str, block: BlockId) -> bytes:
        return bytes(self.read("Escrow", "nextSessionId", driver, block=block))

    def open_deposits(self, block: BlockId) -> int:
        return int(self.read("Escrow", "openDeposits", block=block))

    def token_balance(self, account: str, block: BlockId) -> int:
        return int(self.read("ChargeToken", "balanceOf", account, block=block))

    def anchored_batch(self, batch_id: int, block: BlockId) -> AnchoredBatch | None:
        if batch_id >= self.next_batch_id(block):
            return None
        root, first, last, count = self.read("Anchor", "batch", batch_id, block=block)
        return AnchoredBatch(batch_id, bytes(root), first, last, count)

    def next_batch_id(self, block: BlockId) -> int:
        return int(self.read("Anchor", "nextBatchId", block=block))

    def next_first_height(self, block: BlockId) -> int:
        return int(self.read("Anchor", "nextFirstHeight", block=block))

    def verify_inclusion(
        self, batch_id: int, event_id: bytes, proof: Sequence[bytes], directions: int, block: BlockId
    ) -> bool:
        return bool(self.read("Anchor", "verifyInclusion", batch_id, event_id, list(proof), directions, block=block))

    # ---- writes ------------------------------------------------------------------------

    def send(self, contract: str, function: str, *args: Any, gas: int) -> Receipt:
        """Send `contract.function(*args)` with explicit gas (for calls without a typed helper)."""
        if self.sender is None:
            raise ValueError("this ChainClient has no sender: it is read-only")
        return self.sender.send(self.contracts[contract].functions[function](*args), gas=gas)

    def register_roles(self, roles: int) -> Receipt:
        return self.send("UserRegistry", "registerRoles", roles, gas=GAS["registerRoles"])

    def register_id_tag(self, id_tag: str, expiry: int = 0) -> Receipt:
        return self.send("UserRegistry", "registerIdTag", id_tag_hash(id_tag), expiry, gas=GAS["registerIdTag"])

    def revoke_id_tag(self, id_tag: str) -> Receipt:
        return self.send("UserRegistry", "revokeIdTag", id_tag_hash(id_tag), gas=GAS["revokeIdTag"])

    def create_device(
        self,
        charge_box_id: str,
        *,
        location: str,
        connector_count: int,
        price_per_kwh: int,
        per_minute_fee: int,
        auth_salt: bytes,
        auth_hash: bytes,
        charger_public_key: bytes = b"",
        max_power_w: int = DEFAULT_MAX_POWER_W,
    ) -> Receipt:
        """Register a device; `max_power_w` is one connector's maximum power (DeviceFactory bounds it)."""
        return self.send(
            "DeviceFactory", "createDevice", charge_box_id, location, connector_count, max_power_w, price_per_kwh,
            per_minute_fee, auth_salt, auth_hash, charger_public_key, gas=GAS["createDevice"],
        )

    def update_device(self, function: str, charge_box_id: str, *args: Any) -> Receipt:
        """Manager-only update: function is setLocation, setConnectorCount, setMaxPower, setTariff,
        setAuth, setChargerPublicKey, setRequireSignedMeter, setActive or transferManagement."""
        allowed = ("setLocation", "setConnectorCount", "setMaxPower", "setTariff", "setAuth", "setChargerPublicKey",
                   "setRequireSignedMeter", "setActive", "transferManagement")
        if function not in allowed:
            raise ValueError(f"{function} is not a device update")
        return self.send("DeviceFactory", function, device_id_of(charge_box_id), *args, gas=GAS["deviceUpdate"])

    def create_site(self, max_power_w: int, min_session_w: int) -> Receipt:
        """Open a load-management site managed by the sender (its id: `siteCount` after it)."""
        return self.send("DeviceFactory", "createSite", max_power_w, min_session_w, gas=GAS["createSite"])

    def set_site_power(self, site_id: int, max_power_w: int, min_session_w: int) -> Receipt:
        return self.send("DeviceFactory", "setSitePower", site_id, max_power_w, min_session_w, gas=GAS["siteUpdate"])

    def set_device_site(self, charge_box_id: str, site_id: int) -> Receipt:
        """Put a device in a site (0: out of any); the sender must manage both."""
        return self.send("DeviceFactory", "setDeviceSite", device_id_of(charge_box_id), site_id, gas=GAS["siteUpdate"])

    def approve(self, spender: str, amount: int) -> Receipt:
        return self.send("ChargeToken", "approve", spender, amount, gas=GAS["approve"])

    def faucet_mint(self, to: str, amount: int) -> Receipt:
        return self.send("ChargeToken", "faucetMint", to, amount, gas=GAS["faucetMint"])

    def transfer(self, to: str, amount: int) -> Receipt:
        return self.send("ChargeToken", "transfer", to, amount, gas=GAS["transfer"])

    def open_session(
        self, charge_box_id: str, connector_id: int, id_tag: str, deposit: int, *, voucher_mode: bool = False
    ) -> tuple[bytes, Receipt]:
        """Open an escrow session (approve the Escrow first); returns (session id, receipt).
        `voucher_mode` lets the device manager close it with the driver's PaymentVoucher."""
        receipt = self.send(
            "Escrow", "openVoucherSession" if voucher_mode else "openSession", charge_box_id, connector_id,
            id_tag_hash(id_tag), deposit, gas=GAS["openSession"],
        )
        events = self.contracts["Escrow"].events.SessionRequested().process_receipt(receipt.raw, errors=DISCARD)
        assert len(events) == 1
        return bytes(events[0]["args"]["sessionId"]), receipt

    def settle_batch(
        self, entries: Sequence[tuple[bytes, int, int]], signatures: Sequence[bytes], *, gas: int | None = None
    ) -> Receipt:
        """Settle (sessionId, energyWh, amount) entries under one quorum over their SettlementBatch
        digest (see settlement_batch_digest); closed or invalid entries are skipped on chain."""
        if gas is None:  # a full batch of cold entries reaches the per-transaction bound
            gas = min(GAS["settleBatchBase"] + GAS["perSignature"] * len(signatures)
                      + GAS["settleBatchPerEntry"] * len(entries), MAX_GAS_PER_TX)
        rows = [(bytes(sid), int(energy), int(amount)) for sid, energy, amount in entries]
        return self.send("Escrow", "settleBatch", rows, list(signatures), gas=gas)

    def close_with_voucher(self, session_id: bytes, cumulative_amount: int, driver_signature: bytes) -> Receipt:
        """Manager-only: close a voucher-mode session with the driver's signed PaymentVoucher."""
        return self.send("Escrow", "closeWithVoucher", session_id, cumulative_amount, driver_signature,
                         gas=GAS["closeWithVoucher"])

    def refund(self, session_id: bytes) -> Receipt:
        return self.send("Escrow", "refund", session_id, gas=GAS["refund"])

    def reserve(self, charge_box_id: str, connector_id: int, id_tag: str, expires_at_s: int) -> tuple[int, Receipt]:
        """Reserve a connector for `id_tag` until `expires_at_s` (unix seconds), paying the
        device's per-minute fee per started minute (approve the Escrow first); (reservation id, receipt)."""
        receipt = self.send("Escrow", "reserve", charge_box_id, connector_id, id_tag_hash(id_tag), expires_at_s,
                            gas=GAS["reserve"])
        events = self.contracts["Escrow"].events.ReservationMade().process_receipt(receipt.raw, errors=DISCARD)
        assert len(events) == 1
        return int(events[0]["args"]["reservationId"]), receipt

    def cancel_reservation(self, reservation_id: int) -> Receipt:
        """The driver cancels before expiry: the started minutes' fee to the manager, the rest back."""
        return self.send("Escrow", "cancelReservation", reservation_id, gas=GAS["endReservation"])

    def close_reservation(self, reservation_id: int) -> Receipt:
        """Anyone closes an expired reservation: its whole fee to the device's manager."""
        return self.send("Escrow", "closeReservation", reservation_id, gas=GAS["endReservation"])

    def submit_anchor_batch(
        self,
        batch_id: int,
        root: bytes,
        first_height: int,
        last_height: int,
        event_count: int,
        signatures: Sequence[bytes],
    ) -> Receipt:
        gas = GAS["anchorBase"] + GAS["perSignature"] * len(signatures)
        return self.send(
            "Anchor", "submitBatch", batch_id, root, first_height, last_height, event_count,
            list(signatures), gas=gas,
        )

    def update_validators(self, epoch: int, validators: Sequence[str], signatures: Sequence[bytes]) -> Receipt:
        """Install the validator set `validators` (ascending) at `epoch`, with a quorum of the
        current set's signatures over ValidatorSetUpdate(epoch, validators_hash(validators))."""
        gas = (GAS["updateValidatorsBase"] + GAS["perValidator"] * len(validators)
               + GAS["perSignature"] * len(signatures))
        return self.send("ValidatorSet", "updateValidators", epoch, list(validators), list(signatures), gas=gas)

    def bond(self, amount: int) -> Receipt:
        """Add `amount` base units to the sender's stake (approve the ValidatorSet first)."""
        return self.send("ValidatorSet", "bond", amount, gas=GAS["bond"])

    def register_candidate(self, amount: int, peer_id: bytes, endpoint: str) -> Receipt:
        """Bond `amount` and announce a validator candidacy (stake must reach minStake)."""
        return self.send("ValidatorSet", "registerCandidate", amount, peer_id, endpoint, gas=GAS["registerCandidate"])

    def register_operator(self, amount: int, peer_id: bytes, endpoint: str) -> Receipt:
        """Bond `amount` and register as an operator of the network (stake must reach minOperatorStake)."""
        return self.send("ValidatorSet", "registerOperator", amount, peer_id, endpoint, gas=GAS["registerOperator"])

    def prune_operator(self, account: str | bytes) -> Receipt:
        """Free the slot of an operator whose stake fell below minOperatorStake (anyone may)."""
        return self.send("ValidatorSet", "pruneOperator", Web3.to_checksum_address(account), gas=GAS["pruneOperator"])

    def remove_operator(self, account: str | bytes, signatures: Sequence[bytes]) -> Receipt:
        """Remove and bar operator `account`, with a quorum of the current set's signatures over
        OperatorRemoval(epoch, account), sorted by signer."""
        gas = GAS["removeOperatorBase"] + GAS["perSignature"] * len(signatures)
        return self.send("ValidatorSet", "removeOperator", Web3.to_checksum_address(account), list(signatures),
                         gas=gas)

    def leave_operators(self) -> Receipt:
        """Stop being an operator of the network (the stake stays bonded)."""
        return self.send("ValidatorSet", "leaveOperators", gas=GAS["leaveOperators"])

    def begin_unbonding(self) -> Receipt:
        """Start the unbonding period (the sender must be out of the current set)."""
        return self.send("ValidatorSet", "beginUnbonding", gas=GAS["beginUnbonding"])

    def withdraw_stake(self) -> Receipt:
        """Pay the sender's stake out once the unbonding period is over."""
        return self.send("ValidatorSet", "withdraw", gas=GAS["withdraw"])

    def submit_vote_evidence(
        self, vote_type: int, height: int, round: int,
        block_hash_a: bytes, signature_a: bytes, block_hash_b: bytes, signature_b: bytes,
    ) -> Receipt:
        """Two conflicting votes of one validator: the ValidatorSet verifies and slashes."""
        return self.send("ValidatorSet", "submitVoteEvidence", vote_type, height, round,
                         block_hash_a, signature_a, block_hash_b, signature_b, gas=GAS["voteEvidence"])

    def set_validator_info(self, peer_id: bytes, endpoint: str) -> Receipt:
        """The sender (a validator) publishes its libp2p peer id and OCPP endpoint URL.

        Reverts `PeerIdTaken` if another validator holds that peer id (ids are unique on chain)."""
        return self.send("ValidatorSet", "setValidatorInfo", peer_id, endpoint, gas=GAS["validatorInfo"])
