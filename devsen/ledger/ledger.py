"""The deterministic charging ledger: committed blocks of charger events in, replies and settlements out.

`Ledger.apply_block(ctx, chain, events)` is the whole state transition. It is pure: no I/O,
no clocks, no randomness, no floats in state; the block context and the on-chain snapshot
are its only inputs besides the events. Every node that applies the same blocks against the
same chain snapshots holds byte-identical state and the same `state_hash()`.
This module is the driver (block mechanics, devices, sessions, authorization, snapshots);
the per-action handlers are in handlers.py, the anomaly kinds and shared limits in kinds.py.

Policies (see also LEDGER.md):
- No charging without prepayment: a transaction is accepted only when the driver's idTag is
  valid on chain and an open escrow session exists for this chargeBoxId, connector (1.6) or
  EVSE (2.0.1) and idTag hash (events carry idTags only as hashes). Otherwise 1.6
  StartTransaction answers idTagInfo Blocked and 2.0.1 answers idTokenInfo NoCredit
  (Invalid/Expired/Blocked when the idTag itself is bad).
  The session token of an open escrow session (`session_token`, sent in remote starts)
  counts as a valid idTag for that session's charger and connector and binds that session.
- Amount = energy_wh * price_per_kwh // 1000 + whole_minutes * per_minute_fee, both rounded
  down (in the driver's favour), capped at the deposit. Minutes run from the later of the
  charger's start time and the escrow opening to the earlier of the charger's stop time and
  the stop block's timestamp.
- Energy is bounded by physics: at most the device's on-chain `max_power_w` times the
  session's trusted window (escrow opening to the stop block), see `energy_bound`; beyond it
  the energy is capped and an `energy_capped` anomaly names the vouching node.
- Chain data outside the ledger's bounds (a ChainView is only as good as the chain) is a
  deterministic refusal: the device counts as unregistered, the escrow session as absent,
  and a `bad_chain_data` anomaly is recorded.
- Input that is schema-valid but cannot be honoured gets a well-defined reply and an
  `Anomaly` record; malformed input (which only a faulty proposer can put in a block) gets a
  CALLERROR code; neither raises.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import msgpack

from devsen.ledger.chain import (
    MAX_CONNECTORS,
    BlockContext,
    ChainReservation,
    ChainView,
    DeviceInfo,
    EscrowSession,
    IdTagInfo,
    device_problem,
    escrow_problem,
    id_tag_problem,
    reservation_problem,
    session_token_hash,
)
from devsen.ledger.commands import (
    LEDGER_ACTIONS,
    AdmittedCommand,
    ChargerCommand,
    CommandBook,
    CommandOutcome,
)
from devsen.ledger.handlers import HANDLERS
from devsen.ledger.kinds import (
    BAD_CHAIN_DATA,
    BAD_TIMESTAMP,
    CLOSED_TRANSACTION,
    CONNECTOR_BUSY,
    ENERGY_CAPPED,
    ESCROW_CLOSED,
    MALFORMED,
    MAX_TRANSACTION_ID,
    METER_BACKWARDS,
    NEGATIVE_ENERGY,
    NO_ENERGY_READING,
    OPERATOR_UNBACKED,
    REFUND_DEADLINE,
    REFUND_MARGIN_MS,
    STALE_SESSION,
    UNKNOWN_TRANSACTION,
    UNREGISTERED_DEVICE,
    UNSIGNED_READING,
)
from devsen.ledger.parse import MAX_METER_WH, MalformedPayload, parse_timestamp_ms
from devsen.ledger.provisioning import PRIORITY_KEY_201, PROVISION_TTL_MS, ProvisioningBook
from devsen.ledger.provisioning import plan as provisioning_plan
from devsen.ledger.remote_starts import (
    MAX_REMOTE_STARTS_PER_CHARGER,
    MAX_REQUESTED_CHARGERS,
    remote_start_call,
    remote_start_command_id,
    remote_start_expiry_ms,
)
from devsen.ledger.reservations import (
    ReservationBook,
    cancel_command_id,
    reservation_command_id,
    reserve_now_payload,
)
from devsen.ledger.signed import settlement_terms
from devsen.ledger.sites import (
    PROFILE_TTL_MS,
    SiteBook,
    SiteSchedule,
    SiteShare,
    divide,
    profile_command_id,
    set_charging_profile_payload,
)
from devsen.ledger.state import (
    Anomaly,
    ClosedTransaction,
    ConnectorStatus,
    DeviceRecord,
    HashedTable,
    PendingSettlement,
    Session,
    SettlementOrder,
    StoredReply,
    from_state_bytes,
    has_float,
    raw_state,
    state_bytes,
)
from devsen.ledger.uptime import RewardDistribution, UptimeBook, UptimeRecord, restore_distribution
from devsen.ledger.vouchers import PaymentVoucher, StopOrder, VoucherBook, address_bytes
from ocpp_adapter.events import ChargerEvent
from primitives.hashing import keccak256

MAX_ENDPOINT_PAIRS = 512  # validator endpoints a ChainView may name per block (the ValidatorSet holds <= 128)
SNAPSHOT_VERSION = 8  # 4: signed meter values, payment vouchers, uptime and reward tables; 5: the
# pagination floor of evicted device records (paginations_forgotten_ms, DeviceRecord.paginations_ms);
# 6: commands (commands.py: command records, nonce windows, charger configurations);
# 7: consumed reservations (reservations.py), an 11th table when in use; 8: DeviceRecord.ocpp_version
# (the version of the charger's last event: remote starts for a charger without an event in the block);
# sites (sites.py) add a 12th table when in use, without a new version: a snapshot without sites
# reads as before; so do provisioning profiles and validator endpoints (provisioning.py), a 13th

MAX_PAYLOAD_DEPTH = 32  # OCPP payloads nest a handful of levels; deeper is malformed
CANCEL_RESERVATION_TTL_MS = 2 * 3_600_000  # a CancelReservation waits for its charger as long as a reservation lasts
MAX_OPEN_ESCROWS_READ = 4_096  # open escrow sessions of one charger considered per look-up


class SnapshotError(ValueError):
    """Bytes that are not a ledger snapshot of this version."""


class BlockRejected(ValueError):
    """The block cannot be applied at all (wrong height, time going backwards, too many events)."""


@dataclass(frozen=True, slots=True)
class LedgerParams:
    """Ledger parameters; part of the state (and its hash), fixed at genesis."""

    heartbeat_interval_s: int = 300
    boot_retry_interval_s: int = 60
    max_devices: int = 10_000
    max_open_sessions: int = 10_000
    max_pending_settlements: int = 10_000
    max_closed_transactions: int = 20_000
    reply_window_heights: int = 600  # replies kept for this many heights (~10 min at 1 block/s)
    max_anomalies: int = 1_000
    max_block_events: int = 10_000
    settlement_checks_per_block: int = 64
    stale_session_ms: int = 24 * 3_600_000
    data_transfer_vendor_ids: tuple[str, ...] = ()
    reward_epoch_ms: int = 3_600_000  # a reward epoch is one hour of block time (uptime.py)
    offline_after_ms: int = 900_000  # a device silent this long counts offline (3 heartbeats)
    reward_pool_per_epoch: int = 0  # token base units per epoch: the Rewards contract's epochBudget
    max_reward_epochs: int = 168  # closed distributions kept (a week of hours)

    def __post_init__(self) -> None:
        bounds = (
            self.max_devices,
            self.max_open_sessions,
            self.max_pending_settlements,
            self.max_closed_transactions,
            self.reply_window_heights,
            self.max_anomalies,
            self.max_block_events,
            self.settlement_checks_per_block,
            self.stale_session_ms,
            self.reward_epoch_ms,
            self.offline_after_ms,
            self.max_reward_epochs,
        )
        if self.reward_pool_per_epoch < 0:
            raise ValueError("reward_pool_per_epoch must be >= 0")
        if min(bounds) < 1 or self.heartbeat_interval_s < 1 or self.boot_retry_interval_s < 1:
            raise ValueError("every bound and interval must be >= 1")


@dataclass(frozen=True, slots=True)
class EventResult:
    """The ledger's answer to one event of a block.

    `reply` is the CALLRESULT payload (camelCase, schema-valid for the action and version);
    when it is None, `error_code` is the OCPP CALLERROR code to send instead.
    """

    event_id: bytes
    dedup_key: bytes
    reply: dict[str, Any] | None
    error_code: str | None = None
    duplicate: bool = False
    anomalies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BlockOutcome:
    """Everything one block produced: a result per event, settlements, and the new state hash."""

    height: int
    results: tuple[EventResult, ...]
    settlements: tuple[SettlementOrder, ...]
    state_hash: bytes
    voucher_refusals: tuple[str | None, ...] = ()  # per voucher of the block: None if it counted
    stops: tuple[StopOrder, ...] = ()  # voucher-mode transactions the ledger decided to stop
    rewards: tuple[RewardDistribution, ...] = ()  # the reward epoch this block closed, if any
    command_refusals: tuple[str | None, ...] = ()  # per command of the block: None if admitted
    outcome_refusals: tuple[str | None, ...] = ()  # per command outcome of the block: None if recorded
    admitted: tuple[AdmittedCommand, ...] = ()  # commands admitted by this block (to deliver)


@dataclass(slots=True)
class _Counters:
    """Scalar state."""

    height: int = 0
    block_ms: int = 0
    eth_block_number: int = 0
    seq: int = 0
    next_transaction_id: int = 1
    events_applied: int = 0
    duplicates: int = 0
    anomalies_total: int = 0
    settled_count: int = 0
    settled_amount: int = 0
    settled_deposits: int = 0
    # the latest block time at which an evicted device record's OCMF pagination floors last
    # changed: a signed reading no later than this (plus the clock skew) of a meter whose floor
    # is not remembered may be a replay, and is refused (devsen/ledger/signed.py)
    paginations_forgotten_ms: int = 0


def energy_bound(max_power_w: int, begin_ms: int, end_ms: int) -> int:
    """The most energy (Wh, rounded down) a connector can deliver in [begin_ms, end_ms].

    Today the window is the one the ledger trusts without the charger: from the escrow
    session's opening (Ethereum time) to the stop block's time. Charger-signed meter values
    will tighten it by passing a narrower window (or replacing the bound by signed readings).
    """
    return max(0, end_ms - begin_ms) * max_power_w // 3_600_000


def _depth_within(value: Any, limit: int) -> bool:
    """Whether JSON `value` nests at most `limit` containers deep (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, tuple)))
    return True


class _CheckedChain:
    """A ChainView whose answers are checked against the ledger's bounds.

    Out-of-bound data is reported (`report`, an anomaly) and treated as absent, so no value
    a ChainView returns can make the ledger raise. One is made per block.
    """

    __slots__ = ("_chain", "report", "_tokens", "_reservations", "_requested")

    def __init__(self, chain: ChainView) -> None:
        self._chain = chain
        self.report: Callable[[str], None] = lambda detail: None
        self._tokens: dict[str, dict[bytes, list[EscrowSession]]] = {}
        self._reservations: dict[str, list[ChainReservation]] = {}
        self._requested: tuple[str, ...] | None = None

    def requested_chargers(self) -> tuple[str, ...]:
        """The chargers with escrow sessions requested since the previous block's Ethereum block
        (sorted, at most MAX_REQUESTED_CHARGERS; a ChainView without the method names none)."""
        if self._requested is None:
            read = getattr(self._chain, "requested_chargers", None)
            names = read() if read is not None else ()
            self._requested = tuple(sorted({n for n in names if isinstance(n, str) and 0 < len(n) <= 48}))[
                :MAX_REQUESTED_CHARGERS]
        return self._requested

    def validator_endpoints(self) -> list[tuple[bytes, Any]]:
        """(validator address, on-chain OCPP endpoint) of the ValidatorSet at the block's Ethereum
        block (a ChainView without the method names none); shapes other than pairs are dropped,
        the values are checked by provisioning.endpoint_records."""
        read = getattr(self._chain, "validator_endpoints", None)
        found = list(itertools.islice(read(), MAX_ENDPOINT_PAIRS)) if read is not None else []
        return [(item[0], item[1]) for item in found if isinstance(item, tuple) and len(item) == 2]

    def reservations(self, charge_box_id: str) -> list[ChainReservation]:
        """The charger's open reservations (checked; at most MAX_CONNECTORS), read once per block."""
        found = self._reservations.get(charge_box_id)
        if found is None:
            found = []
            for reservation in list(self._chain.reservations(charge_box_id))[:MAX_CONNECTORS]:
                problem = reservation_problem(reservation)
                if problem is not None:
                    self.report(f"reservation: {problem}")
                elif reservation.charge_box_id == charge_box_id:
                    found.append(reservation)
            self._reservations[charge_box_id] = found
        return found

    def token_sessions(self, charge_box_id: str, tag_hash: bytes) -> list[EscrowSession]:
        """The open escrow sessions of this charger whose session token hashes to `tag_hash`.

        Events carry idTags only as hashes, so a token is recognised by its hash: the token
        hashes of a charger's open sessions are indexed once per block (a ChainView does not
        change while a block applies), bounded by the block's chargers times
        MAX_OPEN_ESCROWS_READ; `session_token_hash` memoises them across blocks.
        """
        index = self._tokens.get(charge_box_id)
        if index is None:
            index = {}
            for session in self.open_escrow_sessions(charge_box_id):
                index.setdefault(session_token_hash(session.session_id), []).append(session)
            self._tokens[charge_box_id] = index
        return index.get(tag_hash, [])

    def device(self, charge_box_id: str) -> DeviceInfo | None:
        device = self._chain.device(charge_box_id)
        if device is None:
            return None
        problem = device_problem(device)
        if problem is not None:
            self.report(f"device {charge_box_id[:48]}: {problem}")
            return None
        return device

    def id_tag(self, tag_hash: bytes) -> IdTagInfo | None:
        info = self._chain.id_tag(tag_hash)
        if info is None:
            return None
        problem = id_tag_problem(info)
        if problem is not None:
            self.report(f"idTag {tag_hash.hex()[:16]}: {problem}")
            return None
        return info

    def open_escrow_sessions(self, charge_box_id: str) -> list[EscrowSession]:
        found: list[EscrowSession] = []
        for session in list(self._chain.open_escrow_sessions(charge_box_id))[:MAX_OPEN_ESCROWS_READ]:
            problem = escrow_problem(session)
            if problem is not None:
                self.report(f"escrow session: {problem}")
            elif session.charge_box_id == charge_box_id:
                found.append(session)
        return found

    def escrow_session(self, session_id: bytes) -> EscrowSession | None:
        session = self._chain.escrow_session(session_id)
        if session is None:
            return None
        problem = escrow_problem(session)
        if problem is not None:
            self.report(f"escrow session {session_id.hex()[:16]}: {problem}")
            return None
        return session


@dataclass(slots=True)
class _Step:
    """Per-event working context."""

    chain: _CheckedChain
    event: ChargerEvent
    settlements: list[SettlementOrder]
    anomalies: list[str] = field(default_factory=list)


class Ledger:
    """Devices, connectors, sessions, transaction ids, settlements owed, and the reply history."""

    def __init__(self, params: LedgerParams | None = None) -> None:
        self.params = params or LedgerParams()
        self._c = _Counters()
        self._devices: HashedTable[str, DeviceRecord] = HashedTable("devices")
        self._sessions: HashedTable[tuple[str, str], Session] = HashedTable("sessions")
        self._closed: HashedTable[tuple[str, str], ClosedTransaction] = HashedTable("closed")
        self._pending: HashedTable[bytes, PendingSettlement] = HashedTable("pending")
        self._replies: HashedTable[bytes, StoredReply] = HashedTable("replies")
        self._anomalies: HashedTable[int, Anomaly] = HashedTable("anomalies")
        p = self.params
        self._uptime = UptimeBook(
            p.reward_epoch_ms, p.offline_after_ms, p.reward_pool_per_epoch, p.max_devices, p.max_reward_epochs
        )
        # Indexes derived from `_sessions` (not hashed; rebuilt on restore).
        self._by_connector: dict[tuple[str, int], str] = {}
        self._by_escrow: dict[bytes, tuple[str, str]] = {}
        self._signed_in_block = 0  # OCMF documents checked in the current block (reset per block)
        self._validators: frozenset[str] | None = None  # the block's validator ingress names (BlockContext)
        self._operator_voucher = ""  # the current event's ingress if it is not a validator's, else ""
        self.vouchers = VoucherBook(self._next_seq)  # latest payment voucher per escrow session (vouchers.py)
        self.commands = CommandBook(self._next_seq)  # manager commands, nonces, configurations (commands.py)
        self.reservations = ReservationBook()  # reservations consumed by a start (reservations.py)
        self.sites = SiteBook()  # site membership and power schedules (sites.py)
        # Managers' provisioning profiles and the validators' OCPP endpoints (provisioning.py)
        self.provisioning = ProvisioningBook(self._next_seq)
        self.commands.ledger_action_refusal = self.provisioning.refusal
        # charger -> the operator (non-validator ingress, 0x-hex) that vouched its last applied event;
        # no entry when a validator vouched it. Only that operator may report its command outcomes.
        self._operator_ingress: HashedTable[str, str] = HashedTable("operator_ingress")

    # ----------------------------------------------------------------- public API

    @property
    def height(self) -> int:
        """Height of the last applied block (0 before the first)."""
        return self._c.height

    def check_block(self, ctx: BlockContext, events: Sequence[ChargerEvent]) -> str | None:
        """Why this block cannot be applied next, or None if it can. Changes nothing."""
        if ctx.height != self._c.height + 1:
            return f"height {ctx.height} does not follow {self._c.height}"
        if ctx.timestamp_ms < self._c.block_ms:
            return "block timestamp goes backwards"
        if ctx.eth_block_number < self._c.eth_block_number:
            return "Ethereum read block goes backwards"
        if len(events) > self.params.max_block_events:
            return f"{len(events)} events, limit {self.params.max_block_events}"
        return None

    def apply_block(self, ctx: BlockContext, chain: ChainView, events: Sequence[ChargerEvent],
                    vouchers: Sequence[tuple[PaymentVoucher, bytes]] = (),
                    commands: Sequence[tuple[ChargerCommand, bytes, bytes]] = (),
                    outcomes: Sequence[tuple[CommandOutcome, bytes]] = ()) -> BlockOutcome:
        """Apply one committed block; raises BlockRejected only for a block that `check_block` refuses.

        `vouchers` are the block's payment vouchers with the address each recovers to (the
        application checked the signatures); they apply before the events. `commands` are the
        block's manager commands as (command, id, signer), `outcomes` the command outcomes
        with the validator that signed each (commands.py); they apply after the vouchers."""
        problem = self.check_block(ctx, events)
        if problem is not None:
            raise BlockRejected(problem)
        prev_ms = self._c.block_ms
        self._c.height = ctx.height
        self._c.block_ms = ctx.timestamp_ms
        self._c.eth_block_number = ctx.eth_block_number
        self._forget_old_replies()
        self._signed_in_block = 0
        self._validators = ctx.validators
        self._operator_voucher = ""
        checked = _CheckedChain(chain)
        self.provisioning.note_endpoints(checked.validator_endpoints())
        closed = self._uptime.begin_block(prev_ms, ctx.timestamp_ms, checked)
        self._release_settled(checked)
        self.reservations.prune(ctx.timestamp_ms)
        refusals = tuple(self.vouchers.apply(v, signer, checked.escrow_session(v.session_id),
                                             v.session_id in self._pending, ctx.height) for v, signer in vouchers)
        self.commands.expire(ctx.timestamp_ms, ctx.height)
        command_refusals = tuple(
            self.commands.admit(c, command_id, signer, self.device_manager(checked, c.charger_id), ctx.timestamp_ms,
                                ctx.height) for c, command_id, signer in commands)
        admitted = tuple(AdmittedCommand(command_id, record) for (_, command_id, _), refusal
                         in zip(commands, command_refusals, strict=True)
                         if refusal is None and (record := self.commands.get(command_id)) is not None)
        admitted = self._apply_ledger_actions(admitted)
        outcome_refusals = tuple(self._outcome_refusal(o, reporter) or self.commands.record_outcome(o, reporter, ctx.height)
                                 for o, reporter in outcomes)
        admitted += self._issue_network_priorities(outcomes, outcome_refusals)
        settlements: list[SettlementOrder] = []
        self._close_before_refund(checked, settlements)
        results = tuple(self._apply_event(checked, event, settlements) for event in events)
        admitted += self._issue_reservations(checked, events)
        admitted += self._issue_provisioning(checked, events)
        admitted += self._issue_remote_starts(checked, events)
        admitted += self._issue_site_profiles(checked, events)
        stops = self._voucher_stops(checked, events)
        self.vouchers.prune(lambda sid: checked.escrow_session(sid) is not None)
        self._count_uptime(checked, events, results)
        self._operator_voucher = ""
        self._check_invariants()
        rewards = (closed,) if closed is not None else ()
        return BlockOutcome(ctx.height, results, tuple(settlements), self.state_hash(), refusals, stops, rewards,
                            command_refusals, outcome_refusals, admitted)

    def charger_operator(self, charger_id: str) -> str | None:
        """The operator (0x-hex) that vouched this charger's last applied event, or None when a
        validator did (or the ledger has seen none through an operator)."""
        return self._operator_ingress.get(charger_id)

    def outcome_reporter_problem(self, charger_id: str, reporter: bytes) -> str | None:
        """Why `reporter`, not a validator of the block, may not report a command outcome for
        `charger_id`: only the operator the charger's last applied event came through may. Pure."""
        name = "0x" + reporter.hex()
        if self._operator_ingress.get(charger_id) != name:
            return (f"outcome from 0x{reporter.hex()}, neither a validator nor the operator charger "
                    f"{charger_id} is connected to (the ingress of its last event)")
        return None

    def _outcome_refusal(self, outcome: CommandOutcome, reporter: bytes) -> str | None:
        """An operator's outcome counts only for a charger it is the ingress of (validators: any)."""
        if self._validators is None or "0x" + reporter.hex() in self._validators:
            return None
        record = self.commands.get(outcome.command_id)
        if record is None:
            return None  # record_outcome names the problem
        return self.outcome_reporter_problem(record.charger_id, reporter)

    def _note_ingress(self, chain: _CheckedChain, event: ChargerEvent) -> None:
        """Remember through which operator a registered charger's event came (or forget it: a
        validator's). Bounded by `max_devices` (least recently noted forgotten first)."""
        if self._validators is None or not event.ingress_node:
            return
        if event.ingress_node in self._validators:
            if event.charger_id in self._operator_ingress:
                self._operator_ingress.pop(event.charger_id)
            return
        device = chain.device(event.charger_id)
        if device is None or not device.active:
            return
        self._operator_ingress.put(event.charger_id, event.ingress_node, to_end=True)
        while len(self._operator_ingress) > self.params.max_devices:
            self._operator_ingress.pop(self._operator_ingress.oldest())

    @staticmethod
    def device_manager(chain: ChainView, charger_id: str) -> bytes | None:
        """The 20-byte manager of an active registered device at the chain view's block, or None."""
        device = chain.device(charger_id)
        if device is None or not device.active:
            return None
        return address_bytes(device.manager)

    def _issue_reservations(self, chain: _CheckedChain, events: Sequence[ChargerEvent]) -> tuple[AdmittedCommand, ...]:
        """A ReserveNow command for each active reservation of the block's registered chargers
        not yet issued, and a CancelReservation for each issued one cancelled on chain since, in
        the OCPP version of the charger's last event (reservations.py)."""
        versions = {event.charger_id: event.ocpp_version for event in events}
        issued = []
        for charger_id in sorted(versions):
            device = chain.device(charger_id)
            if device is None or not device.active:
                continue
            version = versions[charger_id]
            open_ids = {r.reservation_id for r in chain.reservations(charger_id)}
            for reservation_id in self.reservations.cancelled(charger_id, open_ids):
                command_id = cancel_command_id(charger_id, reservation_id)
                if self.commands.admit_from_ledger(command_id, charger_id, version, "CancelReservation",
                                                   {"reservationId": reservation_id},
                                                   self._c.block_ms + CANCEL_RESERVATION_TTL_MS, self._c.height):
                    record = self.commands.get(command_id)
                    assert record is not None
                    issued.append(AdmittedCommand(command_id, record))
            for connector in range(1, device.connector_count + 1):
                held = self.reservations.holding(chain.reservations(charger_id), connector, self._c.block_ms)
                if held is None:
                    continue
                command_id = reservation_command_id(held)
                if self.commands.admit_from_ledger(command_id, charger_id, versions[charger_id], "ReserveNow",
                                                   reserve_now_payload(versions[charger_id], held),
                                                   held.expires_at_s * 1000, self._c.height):
                    self.reservations.note_sent(held)
                    record = self.commands.get(command_id)
                    assert record is not None
                    issued.append(AdmittedCommand(command_id, record))
        return tuple(issued)

    def _issue_remote_starts(self, chain: _CheckedChain, events: Sequence[ChargerEvent]) -> tuple[AdmittedCommand, ...]:
        """A remote start command for each open escrow session of the block's chargers and of the
        chargers with new session requests that is waiting for one (remote_starts.py)."""
        versions = {event.charger_id: event.ocpp_version for event in events}
        for charger_id in chain.requested_chargers():
            device_record = self._devices.get(charger_id)
            if charger_id not in versions and device_record is not None and device_record.ocpp_version:
                versions[charger_id] = device_record.ocpp_version
        issued = []
        block_ms = self._c.block_ms
        for charger_id in sorted(versions):
            device = chain.device(charger_id)
            if device is None or not device.active or versions[charger_id] not in ("1.6", "2.0.1"):
                continue
            waiting = sorted((s for s in chain.open_escrow_sessions(charger_id)
                              if remote_start_expiry_ms(s) > block_ms and 1 <= s.connector_id <= device.connector_count
                              and s.session_id not in self._by_escrow and s.session_id not in self._pending),
                             key=lambda s: (-s.opened_at_s, s.session_id))[:MAX_REMOTE_STARTS_PER_CHARGER]
            for session in sorted(waiting, key=lambda s: (s.opened_at_s, s.session_id)):
                command_id = remote_start_command_id(session.session_id)
                if self.commands.get(command_id) is not None:
                    continue
                action, payload = remote_start_call(versions[charger_id], session.session_id, session.connector_id)
                if self.commands.admit_from_ledger(command_id, charger_id, versions[charger_id], action, payload,
                                                   remote_start_expiry_ms(session), self._c.height):
                    record = self.commands.get(command_id)
                    assert record is not None
                    issued.append(AdmittedCommand(command_id, record))
        return tuple(issued)

    def _issue_provisioning(self, chain: _CheckedChain, events: Sequence[ChargerEvent]) -> tuple[AdmittedCommand, ...]:
        """The provisioning commands for each BootNotification of a registered, active charger
        in the block: the settings its last known configuration lacks (provisioning.py)."""
        issued: list[AdmittedCommand] = []
        for event in events:
            if event.action != "BootNotification":
                continue
            device = chain.device(event.charger_id)
            if device is None or not device.active:
                continue
            issued += self._provision(event.charger_id, event.ocpp_version)
        return tuple(issued)

    def _provision(self, charger_id: str, ocpp_version: str, only_key: str | None = None) -> list[AdmittedCommand]:
        """Admit the charger's provisioning plan now (only the setting `only_key` if given)."""
        def finished(command_id: bytes) -> bool:
            record = self.commands.get(command_id)
            return record is not None and record.status != "pending"

        issued = []
        for command_id, setting in provisioning_plan(charger_id, ocpp_version, self.commands.configuration(charger_id),
                                                     self.provisioning.slots_for(charger_id),
                                                     self.provisioning.profile(charger_id), finished):
            if only_key is not None and setting.key != only_key:
                continue
            if self.commands.admit_from_ledger(command_id, charger_id, ocpp_version, setting.action, setting.payload,
                                               self._c.block_ms + PROVISION_TTL_MS, self._c.height,
                                               renew_expired=True):
                record = self.commands.get(command_id)
                assert record is not None
                issued.append(AdmittedCommand(command_id, record))
        return issued

    def _apply_ledger_actions(self, admitted: tuple[AdmittedCommand, ...]) -> tuple[AdmittedCommand, ...]:
        """Carry out the admitted ledger actions (a device's provisioning profile, profiles.py):
        recorded "applied", never delivered; the charger's provisioning is issued at once under the
        new profile when its OCPP version is known, else at its next boot. The other commands, as given."""
        deliver: list[AdmittedCommand] = []
        for command in admitted:
            record = command.record
            if record.action not in LEDGER_ACTIONS:
                deliver.append(command)
                continue
            try:
                payload = json.loads(record.payload_json)
            except ValueError:  # admitted only if valid (commands.command_problem)
                payload = None
            if isinstance(payload, dict):
                self.provisioning.set_profile(record.charger_id, payload, command.command_id, self._c.height)
            self.commands.mark_applied(command.command_id, self._c.height)
            device = self._devices.get(record.charger_id)
            if device is not None and device.ocpp_version in ("1.6", "2.0.1"):
                deliver += self._provision(record.charger_id, device.ocpp_version)
        return tuple(deliver)

    def _issue_network_priorities(self, outcomes: Sequence[tuple[CommandOutcome, bytes]],
                                  refusals: Sequence[str | None]) -> tuple[AdmittedCommand, ...]:
        """NetworkConfigurationPriority for the chargers whose last provisioning SetNetworkProfile
        got its outcome in this block (provisioning.plan: the accepted slots, in order)."""
        chargers: dict[str, str] = {}
        for (outcome, _), refusal in zip(outcomes, refusals, strict=True):
            record = self.commands.get(outcome.command_id)
            if refusal is None and record is not None and not record.signer and record.action == "SetNetworkProfile":
                chargers[record.charger_id] = record.ocpp_version
        issued: list[AdmittedCommand] = []
        for charger_id in sorted(chargers):
            issued += self._provision(charger_id, chargers[charger_id], only_key=PRIORITY_KEY_201)
        return tuple(issued)

    def _issue_site_profiles(self, chain: _CheckedChain,
                             events: Sequence[ChargerEvent]) -> tuple[AdmittedCommand, ...]:
        """Re-divide the power of the sites this block may have changed and issue a
        SetChargingProfile for each share that is new or changed (sites.py)."""
        chain.report = lambda detail: None  # the events already reported bad device data
        affected: set[int] = set()
        powers: dict[int, tuple[int, int]] = {}
        for charger_id in sorted({event.charger_id for event in events}):
            device = chain.device(charger_id)
            site_id = device.site_id if device is not None and device.active else 0
            affected |= self.sites.note_member(charger_id, site_id)
            if device is not None and site_id:
                affected.add(site_id)
                powers[site_id] = (device.site_max_power_w, device.site_min_session_w)
        if not self.sites.in_use():
            return ()
        for schedule in self.sites.schedules.values():
            if any((share.charger_id, share.tx_ref) not in self._sessions for share in schedule.shares):
                affected.add(schedule.site_id)
        issued = []
        for site_id in sorted(affected):
            old = self.sites.schedules.get(site_id)
            max_w, min_w = powers.get(site_id) or ((old.max_power_w, old.min_session_w) if old else (0, 0))
            running = sorted((s for c in self.sites.chargers_of(site_id) for s in self._charger_sessions(c)
                              if s.bound), key=lambda s: s.opened_seq)
            watts = divide(max_w, min_w, [s.max_power_w for s in running])
            shares = tuple(SiteShare(s.charger_id, s.tx_ref, s.connector_id, s.ocpp_version, w)
                           for s, w in zip(running, watts, strict=True))
            for share in self.sites.settle(SiteSchedule(site_id, max_w, min_w, self._c.height, shares)):
                command_id = profile_command_id(share, self._c.height)
                if self.commands.admit_from_ledger(command_id, share.charger_id, share.ocpp_version,
                                                   "SetChargingProfile", set_charging_profile_payload(share),
                                                   self._c.block_ms + PROFILE_TTL_MS, self._c.height):
                    record = self.commands.get(command_id)
                    assert record is not None
                    issued.append(AdmittedCommand(command_id, record))
        return tuple(issued)

    def _charger_sessions(self, charger_id: str) -> list[Session]:
        """The charger's open sessions, by connector."""
        found = []
        for connector in range(MAX_CONNECTORS + 1):
            tx_ref = self._by_connector.get((charger_id, connector))
            session = None if tx_ref is None else self._sessions.get((charger_id, tx_ref))
            if session is not None:
                found.append(session)
        return found

    def _voucher_stops(self, chain: _CheckedChain, events: Sequence[ChargerEvent]) -> tuple[StopOrder, ...]:
        """The voucher-mode transactions of the block's chargers whose vouchers fell behind (vouchers.py)."""
        stops: list[StopOrder] = []
        for charger_id in sorted({event.charger_id for event in events}):
            for session in self._charger_sessions(charger_id):
                if not session.bound:
                    continue
                energy = 0
                if session.meter_last_wh is not None and session.meter_start_wh is not None:
                    energy = max(0, session.meter_last_wh - session.meter_start_wh)
                energy = min(energy, energy_bound(session.max_power_w, session.escrow_opened_at_s * 1000,
                                                  self._c.block_ms))
                stop = self.vouchers.stop_due(session, chain.escrow_session(session.escrow_session_id), energy,
                                              self._c.block_ms, self._c.height)
                if stop is not None:
                    stops.append(stop)
        return tuple(stops)

    def reward_distributions(self) -> tuple[RewardDistribution, ...]:
        """The closed epochs' reward distributions kept (at most `max_reward_epochs`), oldest first."""
        return tuple(self._uptime.distributions.values())

    def uptime_reads(self, block_ms: int | None = None) -> tuple[str, ...]:
        """Chargers whose on-chain device the next block reads because it closes the reward
        epoch (UptimeBook.closing_reads): none if `block_ms`, the next block's time, is still in
        the open epoch; all of them if it may not be (`block_ms` None: any time)."""
        return self._uptime.closing_reads(self._c.block_ms, block_ms)

    def uptime(self, charger_id: str) -> UptimeRecord | None:
        """The device's uptime in the open reward epoch (counted up to its last event)."""
        return self._uptime.records.get(charger_id)

    def _count_uptime(
        self, chain: _CheckedChain, events: Sequence[ChargerEvent], results: Sequence[EventResult]
    ) -> None:
        """Every registered, active device with a new, answered event in this block was online
        at block time (a retry or a refused event shows nothing new: it changes no uptime)."""
        chain.report = lambda detail: None
        seen: set[str] = set()
        for event, result in zip(events, results, strict=True):
            charger_id = event.charger_id
            if result.duplicate or result.error_code is not None or charger_id in seen \
                    or self._operator_of(event):  # presence an operator vouches for earns no rewards
                continue
            seen.add(charger_id)
            record = self._devices.get(charger_id)
            info = chain.device(charger_id) if record is not None else None
            if record is not None and info is not None and info.active:
                self._uptime.seen(record, info, self._c.block_ms, self._next_seq())

    def reply_for(self, dedup_key: bytes) -> tuple[dict[str, Any] | None, str | None] | None:
        """(reply, error_code) given to the charger message with this dedup key, if still remembered."""
        stored = self._replies.get(dedup_key)
        if stored is None:
            return None
        return copy.deepcopy(stored.reply), stored.error_code

    def pending_settlements(self) -> tuple[SettlementOrder, ...]:
        """Settlement orders whose escrow session is still open on chain, oldest first."""
        return tuple(p.order for p in self._pending.values())

    def settlements_ordered_between(self, first_height: int, last_height: int) -> tuple[SettlementOrder, ...]:
        """Pending settlement orders made at heights first..last, by (height, queue position):
        the same list on every node (a scan of at most max_pending_settlements orders)."""
        chosen = sorted((p.height, p.seq, p.order) for p in self._pending.values()
                        if first_height <= p.height <= last_height)
        return tuple(order for _, _, order in chosen)

    def closed_for_escrow(self, session_id: bytes) -> ClosedTransaction | None:
        """How the transaction bound to this escrow session ended, while still remembered (a scan)."""
        for closed in self._closed.values():
            if closed.escrow_session_id == session_id:
                return closed
        return None

    def open_sessions(self) -> tuple[Session, ...]:
        """Open charging sessions, oldest first."""
        return tuple(self._sessions.values())

    def device(self, charger_id: str) -> DeviceRecord | None:
        """What the ledger remembers of this charger, if it is cached."""
        return self._devices.get(charger_id)

    def devices(self) -> tuple[DeviceRecord, ...]:
        """Every cached charger record, in the table's (deterministic) order (for the read API)."""
        return tuple(self._devices.values())

    def closed_transactions(self) -> tuple[tuple[str, str, ClosedTransaction], ...]:
        """(charger id, transaction ref, how it ended) of the remembered closed transactions, oldest first."""
        return tuple((key[0], key[1], closed) for key, closed in self._closed.items())

    def anomalies(self) -> tuple[Anomaly, ...]:
        """The most recent anomalies, oldest first (at most `max_anomalies`)."""
        return tuple(self._anomalies.values())

    def counters(self) -> dict[str, int]:
        """Scalar state: height, transaction counter, totals."""
        return {f.name: getattr(self._c, f.name) for f in fields(self._c)}

    def state_hash(self) -> bytes:
        """keccak-256 over the parameters, the counters and every table's digest."""
        tables = [t.digest() for t in self._tables()]
        extra = self._extra_tables()
        if extra >= 1:  # appended only when in use (this one or a later one)
            tables.append(self.vouchers.digest())
        if extra >= 2:
            tables.extend(t.digest() for t in self.commands.tables())
        if extra >= 3:
            tables.extend((self.reservations.table.digest(), self.reservations.sent.digest()))
        if extra >= 4:
            tables.extend((self.sites.members.digest(), self.sites.schedules.digest()))
        if extra >= 5:
            tables.extend(t.digest() for t in self.provisioning.tables())
        if extra >= 6:
            tables.append(self._operator_ingress.digest())
        return keccak256(state_bytes([SNAPSHOT_VERSION, self.params, self._counter_values(), tables]))

    def table_digests(self) -> dict[str, bytes]:
        """Each table's digest by name: where two nodes' states differ, when their hashes do."""
        return {t.name: t.digest() for t in self._tables()}

    def to_bytes(self) -> bytes:
        """A snapshot of the full state, for restart."""
        tables = [t.to_state() for t in self._tables()]
        extra = self._extra_tables()
        if extra >= 1:
            tables.append(self.vouchers.to_state())
        if extra >= 2:
            tables.append(self.commands.to_state())
        if extra >= 3:
            tables.append(self.reservations.to_state())
        if extra >= 4:
            tables.append(self.sites.to_state())
        if extra >= 5:
            tables.append(self.provisioning.to_state())
        if extra >= 6:
            tables.append(self._operator_ingress.to_state())
        return state_bytes([SNAPSHOT_VERSION, self.params, self._counter_values(), tables])

    @classmethod
    def from_bytes(cls, data: bytes) -> Ledger:
        """Restore a snapshot made by `to_bytes`; digests and indexes are recomputed from entries.

        Raises SnapshotError for bytes that are not such a snapshot.
        """
        try:
            raw = raw_state(data)
            if msgpack.packb(raw, use_bin_type=True) != data or has_float(raw):
                raise SnapshotError("snapshot is not in canonical form")
            ledger = cls._restore(from_state_bytes(data), raw)
        except SnapshotError:
            raise
        except (ValueError, TypeError, IndexError, KeyError, AssertionError) as exc:
            raise SnapshotError(f"not a ledger snapshot: {exc!r}") from exc
        return ledger

    @classmethod
    def _restore(cls, decoded: Any, raw: Any) -> Ledger:
        """The ledger of a decoded snapshot; `raw` is the same snapshot as `raw_state` decodes
        it (canonical, checked by the caller): the two tables that grow with traffic (closed
        transactions, replies) hash their entries from it (HashedTable.restore)."""
        version, params, counters, tables = decoded
        raw_tables = raw[3]
        if version != SNAPSHOT_VERSION:
            raise SnapshotError(f"snapshot version {version}, expected {SNAPSHOT_VERSION}")
        ledger = cls(LedgerParams(*params))
        ledger._c = _Counters(*counters)
        if len(tables) not in (8, 9, 10, 11, 12, 13, 14):
            raise SnapshotError(f"{len(tables)} tables in the snapshot, expected 8 to 14")
        devices, sessions, closed, pending, replies, anomalies, uptime, rewards = tables[:8]
        if len(tables) >= 9:
            ledger.vouchers.restore(tables[8])
        if len(tables) >= 10:
            ledger.commands.restore(tables[9])
        if len(tables) >= 11:
            ledger.reservations.restore(tables[10])
        if len(tables) >= 12:
            ledger.sites.restore(tables[11])
        if len(tables) >= 13:
            ledger.provisioning.restore(tables[12])
        if len(tables) == 14:
            for key, operator in tables[13]:
                if not (isinstance(key, str) and isinstance(operator, str)):
                    raise SnapshotError("operator ingress entries are (charger id, operator)")
                ledger._operator_ingress.put(key, operator)
        for key, v in devices:
            values = list(v)
            values[8] = tuple(ConnectorStatus(*c) for c in v[8])
            ledger._devices.put(key, DeviceRecord(*values))
        for key, v in sessions:
            ledger._open_session(Session(*v), restoring=key)
        for (key, v), (raw_key, raw_v) in zip(closed, raw_tables[2], strict=True):
            ledger._closed.restore(key, ClosedTransaction(*v), raw_key, raw_v)
        for key, v in pending:
            ledger._pending.put(key, PendingSettlement(v[0], v[1], SettlementOrder(*v[2]), v[3]))
        for (key, v), (raw_key, raw_v) in zip(replies, raw_tables[4], strict=True):
            ledger._replies.restore(key, StoredReply(*v), raw_key, raw_v)
        for key, v in anomalies:
            ledger._anomalies.put(key, Anomaly(*v))
        for key, v in uptime:
            ledger._uptime.records.put(key, UptimeRecord(*v))
        for key, v in rewards:
            ledger._uptime.distributions.put(key, restore_distribution(v))
        ledger._check_invariants()
        return ledger

    # ----------------------------------------------------------------- block mechanics

    def _tables(self) -> tuple[HashedTable[Any, Any], ...]:
        return (self._devices, self._sessions, self._closed, self._pending, self._replies, self._anomalies,
                *self._uptime.tables())

    def _extra_tables(self) -> int:
        """How many of the later tables a snapshot carries: 0, 1 (vouchers), 2 (and commands),
        3 (and consumed reservations), 4 (and sites), 5 (and provisioning) or 6 (and the chargers'
        operator ingress); each is present when it or a later one is in use."""
        if len(self._operator_ingress):
            return 6
        if self.provisioning.in_use():
            return 5
        if self.sites.in_use():
            return 4
        if self.reservations.in_use():
            return 3
        if self.commands.in_use():
            return 2
        return 1 if len(self.vouchers.table) else 0

    def _counter_values(self) -> list[int]:
        return [getattr(self._c, f.name) for f in fields(self._c)]

    def _next_seq(self) -> int:
        self._c.seq += 1
        return self._c.seq

    def _forget_old_replies(self) -> None:
        """Drop the replies of heights older than `reply_window_heights` (oldest are first).

        The window is in heights, not entries, so no flood of messages can push a reply out
        early: a retry within the window always gets the stored answer. Memory is bounded by
        `reply_window_heights * max_block_events` entries.
        """
        floor = self._c.height - self.params.reply_window_heights
        while self._replies and self._replies.get(oldest := self._replies.oldest()).height <= floor:  # type: ignore[union-attr]
            self._replies.pop(oldest)

    def _release_settled(self, chain: _CheckedChain) -> None:
        """Forget settlement orders whose escrow session the chain has closed (paid or refunded).

        At most `settlement_checks_per_block` of the oldest orders are checked per block; those
        still open go to the back of the queue, so a stuck order never hides the others.
        """
        for session_id in list(self._pending)[: self.params.settlement_checks_per_block]:
            pending = self._pending.pop(session_id)
            if chain.escrow_session(session_id) is not None:
                self._pending.put(session_id, replace(pending, seq=self._next_seq()))

    def _apply_event(self, chain: _CheckedChain, event: ChargerEvent, settlements: list[SettlementOrder]) -> EventResult:
        refused = self._unencodable(chain, event, settlements)
        if refused is not None:
            return refused
        key = event.dedup_key
        stored = self._replies.get(key)
        if stored is not None:
            self._c.duplicates += 1
            return EventResult(event.event_id, key, copy.deepcopy(stored.reply), stored.error_code, duplicate=True)
        step = _Step(chain, event, settlements)
        self._operator_voucher = self._operator_of(event)
        chain.report = lambda detail: self._anomaly(step, BAD_CHAIN_DATA, detail)
        handler = HANDLERS.get((event.ocpp_version, event.action))
        reply: dict[str, Any] | None = None
        error_code: str | None = None
        if handler is None:
            error_code = "NotSupported"
        else:
            try:
                reply = handler(self, step, event.payload)
                if event.action == "NotifyReport" and self.device_manager(chain, event.charger_id) is not None:  # GetBaseReport's stream
                    self.commands.config_from_report(event.charger_id, event.payload, self._c.height)
            except MalformedPayload as exc:
                error_code = "FormationViolation" if event.ocpp_version == "1.6" else "FormatViolation"
                self._anomaly(step, MALFORMED, str(exc))
        self._c.events_applied += 1
        self._note_ingress(chain, event)
        self._replies.put(key, StoredReply(self._next_seq(), self._c.height, reply, error_code))
        return EventResult(event.event_id, key, copy.deepcopy(reply), error_code, anomalies=tuple(step.anomalies))

    def _operator_of(self, event: ChargerEvent) -> str:
        """`event`'s ingress if it is not one of the block's validators ("unvouched" if it names
        none), else "" (also when the block names no validator set)."""
        if self._validators is None or event.ingress_node in self._validators:
            return ""
        return event.ingress_node or "unvouched"

    def _touched(self, session: Session) -> Session:
        """`session` marked with the current event's operator, if it is one and none is marked yet."""
        if self._operator_voucher and not session.operator:
            return replace(session, operator=self._operator_voucher)
        return session

    def _unencodable(
        self, chain: _CheckedChain, event: ChargerEvent, settlements: list[SettlementOrder]
    ) -> EventResult | None:
        """A refusal for an event that has no canonical encoding (nested deeper than
        MAX_PAYLOAD_DEPTH, integers beyond 64 bits, non-JSON types), else None.

        Such an event cannot travel in a block (its bytes do not exist), but `apply_block` is
        total over every ChargerEvent: it is answered with a format error, remembered nowhere.
        """
        problem = None
        if not _depth_within(event.payload, MAX_PAYLOAD_DEPTH):
            problem = f"payload nested deeper than {MAX_PAYLOAD_DEPTH}"
        else:
            try:
                _ = (event.event_id, event.dedup_key)
            except (ValueError, TypeError, OverflowError) as exc:
                problem = f"no canonical encoding: {type(exc).__name__}"
        if problem is None:
            return None
        step = _Step(chain, event, settlements)
        self._anomaly(step, MALFORMED, problem)
        code = "FormationViolation" if event.ocpp_version == "1.6" else "FormatViolation"
        return EventResult(b"", b"", None, code, anomalies=tuple(step.anomalies))

    def _anomaly(self, step: _Step, kind: str, detail: str) -> None:
        event = step.event
        seq = self._next_seq()
        record = Anomaly(seq, self._c.height, event.charger_id, event.action, event.message_id, kind, detail[:200])
        self._anomalies.put(seq, record)
        while len(self._anomalies) > self.params.max_anomalies:
            self._anomalies.pop(self._anomalies.oldest())
        self._c.anomalies_total += 1
        step.anomalies.append(kind)

    def _check_invariants(self) -> None:
        c = self._c
        assert c.settled_amount <= c.settled_deposits, "settled more than was deposited"
        assert len(self._sessions) <= self.params.max_open_sessions
        assert len(self._devices) <= self.params.max_devices
        assert len(self._pending) <= self.params.max_pending_settlements
        assert len(self._by_connector) == len(self._sessions), "one open session per connector"
        assert len(self._by_escrow) == sum(1 for s in self._sessions.values() if s.bound)
        assert c.next_transaction_id <= MAX_TRANSACTION_ID + 1

    # ----------------------------------------------------------------- devices

    def _registered(self, step: _Step) -> DeviceInfo | None:
        """The on-chain device if it is active (and touch its cached record); else record an anomaly."""
        device = step.chain.device(step.event.charger_id)
        if device is None or not device.active:
            self._anomaly(step, UNREGISTERED_DEVICE, "device is not registered and active on chain")
            return None
        return device

    def _update_device(self, step: _Step, **changes: Any) -> None:
        """Apply `changes` to the charger's record (creating it), move it to the end of the LRU order."""
        charger_id = step.event.charger_id
        record = self._devices.get(charger_id) or DeviceRecord(charger_id, 0)
        record = replace(record, touch_seq=self._next_seq(), ocpp_version=step.event.ocpp_version, **changes)
        self._devices.put(charger_id, record, to_end=True)
        while len(self._devices) > self.params.max_devices:
            evicted = self._devices.pop(self._devices.oldest())
            if evicted.meter_paginations:
                self._c.paginations_forgotten_ms = max(self._c.paginations_forgotten_ms, evicted.paginations_ms)

    def _device_record(self, charger_id: str) -> DeviceRecord:
        return self._devices.get(charger_id) or DeviceRecord(charger_id, 0)

    # ----------------------------------------------------------------- sessions

    def _open_session(self, session: Session, *, restoring: tuple[str, str] | None = None) -> None:
        key = (session.charger_id, session.tx_ref)
        assert restoring is None or restoring == key
        connector = (session.charger_id, session.connector_id)
        assert key not in self._sessions and key not in self._closed, "transaction ids are unique"
        assert connector not in self._by_connector, "one open session per connector"
        if restoring is None:
            session = self._touched(session)
        self._sessions.put(key, session)
        self._by_connector[connector] = session.tx_ref
        if session.bound:
            assert session.escrow_session_id not in self._by_escrow
            self._by_escrow[session.escrow_session_id] = key

    def _bind(self, key: tuple[str, str], escrow: EscrowSession, device: DeviceInfo, tag_hash: bytes, start_ms: int) -> None:
        session = self._sessions.get(key)
        assert session is not None and not session.bound
        assert escrow.session_id not in self._by_escrow and escrow.session_id not in self._pending
        tariff = escrow.tariff if escrow.tariff is not None else device.tariff  # the terms copied at opening
        session = replace(
            session,
            id_tag_hash=tag_hash,
            escrow_session_id=escrow.session_id,
            deposit=escrow.deposit,
            escrow_opened_at_s=escrow.opened_at_s,
            price_per_kwh=tariff.price_per_kwh,
            per_minute_fee=tariff.per_minute_fee,
            escrow_refund_at_s=escrow.refund_at_s or 0,
            max_power_w=device.max_power_w,
            require_signed=device.require_signed_meter,
            charge_start_ms=start_ms,
            meter_start_wh=session.meter_start_wh if session.meter_start_wh is not None else session.meter_last_wh,
        )
        self._sessions.put(key, self._touched(session))
        self._by_escrow[escrow.session_id] = key

    def _find_escrow(self, step: _Step, connector_id: int, tag_hash: bytes) -> EscrowSession | None:
        """The oldest open escrow session for this charger, connector and idTag (hash) not yet in use.

        The idTag matches a session by its hash, or by being the session's token (remote start).
        """
        candidates = sorted(
            (
                s
                for s in step.chain.open_escrow_sessions(step.event.charger_id)
                if s.charge_box_id == step.event.charger_id
                and s.connector_id == connector_id
                and (s.id_tag_hash == tag_hash or session_token_hash(s.session_id) == tag_hash)
                and s.session_id not in self._by_escrow
                and s.session_id not in self._pending
                and not self._near_refund(s.opened_at_s, s.refund_at_s or 0)
            ),
            key=lambda s: (s.opened_at_s, s.session_id),
        )
        return candidates[0] if candidates else None

    def _near_refund(self, opened_at_s: int, refund_at_s: int) -> bool:
        """Whether an escrow refundable at `refund_at_s` (0: no deadline) is within the margin now:
        REFUND_MARGIN_MS, or a quarter of its refund timeout if that is shorter."""
        if refund_at_s == 0:
            return False
        margin = min(REFUND_MARGIN_MS, (refund_at_s - opened_at_s) * 250)
        return self._c.block_ms >= refund_at_s * 1000 - margin

    def _close_before_refund(self, chain: _CheckedChain, settlements: list[SettlementOrder]) -> None:
        """Close every bound transaction whose escrow refund deadline is within the margin.

        It settles on its last reading at this block (a `refund_deadline` anomaly), so the
        settlement is owed before the driver may refund and a refund cannot race a charge.
        The escrow is not re-read here (it may not be among the block's chain facts): if it
        was closed meanwhile, the settlement is a no-op on chain and is released.
        """
        due = sorted(key for key, s in self._sessions.items()  # sorted: independent of table order
                     if s.bound and self._near_refund(s.escrow_opened_at_s, s.escrow_refund_at_s))
        for key in due:
            session = self._sessions.get(key)
            assert session is not None
            event = ChargerEvent(session.charger_id, session.ocpp_version, "EscrowRefundDeadline",
                                 f"refund-deadline-{key[1]}"[:36], {}, "", self._c.block_ms)
            step = _Step(chain, event, settlements)
            self._anomaly(step, REFUND_DEADLINE, f"transaction {key[1]} closed: escrow refundable at "
                                                 f"{session.escrow_refund_at_s} s")
            self._close(step, key, session.meter_last_wh, self._c.block_ms, recheck_escrow=False)

    def _capacity_problem(self) -> str | None:
        if len(self._sessions) >= self.params.max_open_sessions:
            return "open sessions at limit"
        if len(self._pending) >= self.params.max_pending_settlements:
            return "settlement backlog at limit"
        return None

    def _connector_busy(self, step: _Step, connector: int) -> bool:
        """Whether the connector has an open session; one idle for `stale_session_ms` is closed first.

        A stale session is settled on its last reading at its last activity, so a charger that
        lost a transaction (and never sent its stop) does not block its connector forever.
        """
        tx_ref = self._by_connector.get((step.event.charger_id, connector))
        if tx_ref is None:
            return False
        key = (step.event.charger_id, tx_ref)
        session = self._sessions.get(key)
        assert session is not None
        if self._c.block_ms - session.last_block_ms < self.params.stale_session_ms:
            self._anomaly(step, CONNECTOR_BUSY, f"connector {connector} has open transaction {tx_ref}")
            return True
        self._anomaly(step, STALE_SESSION, f"transaction {tx_ref} idle since {session.last_block_ms} closed")
        self._close(step, key, session.meter_last_wh, session.last_block_ms, trusted_end_ms=session.last_block_ms)
        return False

    def _record_meter(self, step: _Step, key: tuple[str, str], wh: int | None) -> None:
        """Note activity on an open session and its latest energy register, if any."""
        session = self._sessions.get(key)
        if session is None:
            return
        session = self._touched(replace(session, last_block_ms=self._c.block_ms))
        if wh is None:
            self._sessions.put(key, session)
            return
        if session.meter_last_wh is not None and wh < session.meter_last_wh:
            self._anomaly(step, METER_BACKWARDS, f"register {wh} Wh below {session.meter_last_wh} Wh")
            self._sessions.put(key, session)
            return
        start = session.meter_start_wh
        if start is None and session.bound:
            start = wh
        self._sessions.put(key, replace(session, meter_last_wh=wh, meter_start_wh=start))

    def _close(
        self, step: _Step, key: tuple[str, str], meter_stop_wh: int | None, stop_ms: int,
        *, trusted_end_ms: int | None = None, recheck_escrow: bool = True,
    ) -> None:
        """Close an open session; a bound one yields a settlement order if its escrow is still open.

        `trusted_end_ms` is the latest time the ledger itself vouches for (the stop block's
        time, or a stale session's last activity): it ends the window of `energy_bound`.
        """
        session = self._sessions.pop(key)
        if trusted_end_ms is None:  # the closing event's own reading counts (not a stale session's)
            session = self._touched(session)
        del self._by_connector[(session.charger_id, session.connector_id)]
        seq = self._next_seq()
        if not session.bound:
            self._remember_closed(key, ClosedTransaction(seq, "unpaid"))
            return
        del self._by_escrow[session.escrow_session_id]
        energy = 0
        start_wh = session.meter_start_wh
        charge_start_ms = session.charge_start_ms
        if session.require_signed:  # only charger-signed readings count (devsen/ledger/signed.py)
            signed_energy, charge_start_ms, stop_ms, missing = settlement_terms(session)
            if missing:
                self._anomaly(step, UNSIGNED_READING, missing)
            energy = signed_energy or 0
        elif meter_stop_wh is None or start_wh is None:  # settled at 0 Wh: never silently (issue 13)
            self._anomaly(step, NO_ENERGY_READING, f"session 0x{session.escrow_session_id.hex()} ended with no energy reading: settled "
                          f"at 0 Wh (start {start_wh}, stop {meter_stop_wh} Wh)")
        elif meter_stop_wh is not None and start_wh is not None:
            if meter_stop_wh < start_wh:
                self._anomaly(step, NEGATIVE_ENERGY, f"stop {meter_stop_wh} Wh below start {start_wh} Wh")
            else:
                energy = meter_stop_wh - start_wh
        window_begin = session.escrow_opened_at_s * 1000
        window_end = self._c.block_ms if trusted_end_ms is None else trusted_end_ms
        bound = energy_bound(session.max_power_w, window_begin, window_end)
        if energy > bound:
            self._anomaly(step, ENERGY_CAPPED, f"vouched by {step.event.ingress_node[:66]}: {energy} Wh capped at "
                          f"{bound} Wh ({session.max_power_w} W x {max(0, window_end - window_begin)} ms)")
            energy = bound
        begin = max(charge_start_ms, window_begin)
        end = min(stop_ms, self._c.block_ms)
        minutes = max(0, end - begin) // 60_000
        escrow = step.chain.escrow_session(session.escrow_session_id)
        if session.operator and not session.require_signed and not (escrow is not None and escrow.voucher_mode):
            if energy or minutes:  # an operator vouched for readings nothing backs: they move no money
                self._anomaly(step, OPERATOR_UNBACKED, f"vouched by operator {session.operator[:66]}: {energy} Wh and "
                              f"{minutes} min backed by no signed reading or voucher, settled at 0")
            energy = minutes = 0
        amount = min(energy * session.price_per_kwh // 1000 + minutes * session.per_minute_fee, session.deposit)
        amount = self.vouchers.settle(escrow, session.escrow_session_id, amount)  # voucher mode: min
        if recheck_escrow and escrow is None:
            self._anomaly(step, ESCROW_CLOSED, "escrow session closed on chain before the stop")
            self._remember_closed(key, ClosedTransaction(seq, "escrow_closed", energy, 0, session.escrow_session_id,
                                                         session.signed_start_event, session.signed_last_event))
            return
        order = SettlementOrder(session.escrow_session_id, energy, amount)
        assert 0 <= amount <= session.deposit and energy <= MAX_METER_WH
        self._pending.put(order.session_id, PendingSettlement(seq, self._c.height, order, session.deposit))
        self._c.settled_count += 1
        self._c.settled_amount += amount
        self._c.settled_deposits += session.deposit
        step.settlements.append(order)
        self._remember_closed(key, ClosedTransaction(seq, "settled", energy, amount, session.escrow_session_id,
                                                     session.signed_start_event, session.signed_last_event))

    def _remember_closed(self, key: tuple[str, str], closed: ClosedTransaction) -> None:
        self._closed.put(key, closed)
        while len(self._closed) > self.params.max_closed_transactions:
            self._closed.pop(self._closed.oldest())

    def _is_open(self, step: _Step, key: tuple[str, str]) -> bool:
        """Whether `key` names an open session of the event's OCPP version (ids of 1.6 and 2.0.1 differ)."""
        session = self._sessions.get(key)
        return session is not None and session.ocpp_version == step.event.ocpp_version

    def _transaction_unknown(self, step: _Step, key: tuple[str, str]) -> None:
        """Record why an event names a transaction that is not open."""
        closed = self._closed.get(key)
        if closed is None:
            self._anomaly(step, UNKNOWN_TRANSACTION, f"transaction {key[1]} is unknown")
        elif closed.outcome != "rejected":
            self._anomaly(step, CLOSED_TRANSACTION, f"transaction {key[1]} is already closed")

    def _event_time_ms(self, step: _Step, text: str | None) -> int:
        """A charger timestamp in ms; the block time when absent or unreadable (recorded)."""
        if text is None:
            return self._c.block_ms
        ms = parse_timestamp_ms(text)
        if ms is None:
            self._anomaly(step, BAD_TIMESTAMP, f"unreadable timestamp {text[:40]!r}")
            return self._c.block_ms
        return ms

    # ----------------------------------------------------------------- authorization

    def _reservation_for_other(self, step: _Step, connector_id: int, tag_hash: bytes) -> ChainReservation | None:
        """The reservation holding this connector of the event's charger, if it is held for an
        idTag other than `tag_hash` (devsen/ledger/reservations.py); None if free or the holder's."""
        held = self.reservations.holding(step.chain.reservations(step.event.charger_id), connector_id,
                                         self._c.block_ms)
        if held is None or self._holds_for(step, held, tag_hash):
            return None
        return held

    def _holds_for(self, step: _Step, held: ChainReservation, tag_hash: bytes) -> bool:
        """Whether `tag_hash` is the reserving idTag, or the token of its driver's escrow session."""
        return held.id_tag_hash == tag_hash or any(
            s.id_tag_hash == held.id_tag_hash for s in step.chain.token_sessions(step.event.charger_id, tag_hash))

    def _held_for(self, step: _Step, device: DeviceInfo, tag_hash: bytes) -> ChainReservation | None:
        """A reservation holding some connector of the charger for this idTag (its hash) or for
        the driver of the escrow session whose token this is (`_holds_for`); None if none."""
        reservations = step.chain.reservations(step.event.charger_id)
        return next((r for c in range(1, device.connector_count + 1)
                     if (r := self.reservations.holding(reservations, c, self._c.block_ms)) is not None
                     and self._holds_for(step, r, tag_hash)), None)

    def _consume_reservation(self, step: _Step, connector_id: int, tag_hash: bytes) -> None:
        """A start by the holder on its reserved connector uses the reservation up."""
        held = self.reservations.holding(step.chain.reservations(step.event.charger_id), connector_id,
                                         self._c.block_ms)
        if held is not None and self._holds_for(step, held, tag_hash):
            self.reservations.consume(held)

    def _all_reserved_for_others(self, step: _Step, device: DeviceInfo, tag_hash: bytes) -> bool:
        """Whether every connector of the charger is held for another idTag (an Authorize names none)."""
        if not step.chain.reservations(step.event.charger_id):
            return False
        return all(self._reservation_for_other(step, c, tag_hash) is not None
                   for c in range(1, device.connector_count + 1))

    def _driver_group(self, step: _Step, tag_hash: bytes) -> bytes | None:
        """The idTag hash naming the driver's group of `tag_hash` at the event's charger, if any.

        A session token of an open escrow session here belongs to the driver whose idTag opened
        it (the oldest such session if two ever shared a token); a card belongs to its own group
        when it opened an escrow session here or holds a reservation here. Elsewhere: None
        (the reply names no group). `reservation_token` of it is what the charger sees.
        """
        charger_id = step.event.charger_id
        sessions = step.chain.token_sessions(charger_id, tag_hash)
        if sessions:
            return min(sessions, key=lambda s: (s.opened_at_s, s.session_id)).id_tag_hash
        if any(s.id_tag_hash == tag_hash for s in step.chain.open_escrow_sessions(charger_id)):
            return tag_hash
        device = step.chain.device(charger_id)
        if device is not None and device.active and self._held_for(step, device, tag_hash) is not None:
            return tag_hash
        return None

    def _tag_status(self, step: _Step, tag_hash: bytes, connector_id: int | None = None) -> tuple[str, int]:
        """(Accepted | Invalid | Expired | Blocked, expiry in s or 0) for an idTag (its hash) at this charger.

        The session token of an open escrow session for this charger (and connector, when
        known) is Accepted without expiry; any other idTag is looked up in the on-chain registry.
        Events carry only hashes, so a token is recognised by `session_token_hash`.
        """
        if any(
            connector_id is None or s.connector_id == connector_id
            for s in step.chain.token_sessions(step.event.charger_id, tag_hash)
        ):
            return "Accepted", 0
        info = step.chain.id_tag(tag_hash)
        if info is None:
            return "Invalid", 0
        if info.revoked:
            return "Blocked", info.expiry_s
        if info.expiry_s and info.expiry_s * 1000 <= self._c.block_ms:
            return "Expired", info.expiry_s
        return "Accepted", info.expiry_s
