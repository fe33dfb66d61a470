"""The node's consensus application: the typed ABCI of consensus/abci.py over the ledger.

`NodeApplication` is driven by the consensus shell, per height:
- `check_tx`: mempool admission (a canonical ChargerEvent, or a validator's signed attestation).
- `propose_facts` (I/O) + `prepare_proposal`: the Ethereum block (number, hash) at which the
  block's chain reads are made, `confirmations` below our head and never behind the previous
  block's, and the admissible payloads.
- `fetch_facts` (I/O, off the event loop): every chain read of the block, by block hash, into
  an immutable `ChainFacts` (devsen/chain_facts.py); a named Ethereum block unknown here or
  less than `confirmations` deep by our own head makes the proposal invalid (reorg safety).
- `process_proposal`, `finalize_block`: pure over (block, facts). A valid block carries at most
  `vouched_share(n)` events vouched for by one of the n validators, at most
  `new_charger_share(n)` of them from chargers the ledger does not know (`VoucherBudget`);
  `prepare_proposal` composes blocks within those shares. Finalizing applies the
  events to the ledger and returns one `FinalizeResult`: a TxResult per payload (an event's
  OCPP reply in `data`, see `event_tx_result`), the ledger state hash, the validator-set
  update, this validator's own attestations to submit (batches it closed, settlements) and
  notices for the node (quorums, `OwnAttestationCommitted`, `ValidatorsChanged`).
- `commit`: snapshot to disk every SNAPSHOT_EVERY_BLOCKS; `restore` after a restart.

Payload kinds are told apart by the first byte (anchoring/proofs.py, attestations.py,
devsen/ledger/vouchers.py): 0x9A a canonical ChargerEvent, 0xA1/0xA2/0xA5 an attestation (0xA2: a settlement batch, 0xA5: a
reward distribution), 0xB1 a
driver's payment voucher (its signature must recover, else the block is invalid; whether it
counts is the ledger's deterministic decision, a refusal is the payload's TxResult), 0xB2 a device
manager's command to its charger and 0xB3 a validator's report of its outcome
(devsen/ledger/commands.py; the rules are in devsen/command_gate.py: a block carrying an
inadmissible command is invalid).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import msgpack

from anchoring.attestations import (
    ATTESTATION_TAGS,
    AnchorBatch,
    Attestation,
    AttestationError,
    Settlement,
    Subject,
    attest,
    decode_attestation,
)
from anchoring.batches import (
    AttestationBook,
    BatchBuilder,
    BatchPolicy,
    BuilderState,
    Quorum,
    settlement_batches,
    settlement_window_closes,
)
from anchoring.batches import CommittedBlock as BatchBlock
from anchoring.proofs import EVENT_PAYLOAD_FIRST_BYTE, AnchorIndex
from anchoring.rewards import RewardSubject, reward_parts
from consensus.abci import (
    CheckResult,
    FinalizeResult,
    Prepared,
    Snapshot,
    TxResult,
    ValidatorUpdate,
)
from consensus.types import Block, CommitCertificate, CommittedBlock, ValidatorSet
from devsen.beside_ledger import BesideLedger, BesideLedgerDigest, app_state_hash
from devsen.chain_facts import (
    ChainFacts,
    ChainKeys,
    KeyReader,
    chain_keys,
    read_facts,
    requested_from_block,
    with_requested,
)
from devsen.chain_view import ChainReadError, patiently
from devsen.command_gate import MAX_COMMANDS_PER_BLOCK, MAX_OUTCOMES_PER_BLOCK, CommandGate
from devsen.ledger import BlockContext, BlockRejected, EventResult, Ledger
from devsen.ledger.commands import (
    COMMAND_PAYLOAD_TAG,
    OUTCOME_PAYLOAD_TAG,
    AdmittedCommand,
    ChargerCommand,
    CommandError,
    CommandOutcome,
    decode_command,
    decode_outcome,
)
from devsen.ledger.ledger import SnapshotError
from devsen.ledger.uptime import RewardDistribution
from devsen.ledger.vouchers import (
    VOUCHER_PAYLOAD_TAG,
    PaymentVoucher,
    StopOrder,
    VoucherError,
    address_bytes,
    decode_voucher,
)
from ocpp_adapter.bounded import LruMap
from ocpp_adapter.events import ChargerEvent, EventEncodingError
from ocpp_adapter.vouching import VouchCache, ingress_domain
from primitives.eip712 import ZERO_HASH, Domain, SigningKey
from primitives.hashing import keccak256

log = logging.getLogger("devsen.app")

APP_HEADER_VERSION = 1
MAX_APP_HEADER_BYTES = 128
MESSAGE_WINDOW_BLOCKS = 1_000  # the HTTP charger-message look-up covers this many recent heights
# ... and at most this many messages (the oldest heights go first): a window in heights alone
# would hold up to MESSAGE_WINDOW_BLOCKS x MAX_PAYLOADS_PER_BLOCK (4 million) entries in a flood.
# ~0.3 KiB each: at most ~30 MiB. Local to this node (HTTP look-up only), not part of any state.
MESSAGE_LOOKUP_MAX = 100_000
# A proposal whose time is this far ahead of our clock is refused (only the future is bounded:
# a locked value may be re-proposed rounds later with its original, older time).
MAX_FUTURE_DRIFT_MS = 30_000
IDLE_HEARTBEAT_MS = 30_000  # an idle network still makes one block this often (chain-side changes)
SETTLE_WINDOW_BLOCK_GAP_MS = 500  # while settlement orders wait for their window to close, blocks this often
SNAPSHOT_FORMAT = 5  # 3: the open anchor batch's blocks (state sync has no block store) and the
# attestation book's recent and re-opened quorums (re-signed after a validator-set change);
# 4: settlement subjects are settlement batches; 5: [5, height, block hash, ledger hash, ledger,
# beside-ledger state] and the app hash certifies both (devsen/beside_ledger.py)
SNAPSHOT_EVERY_BLOCKS = 100  # a restart replays at most this many blocks (and reads the chain for them)
SNAPSHOTS_KEPT = 3  # snapshots offered for state sync (older ones are deleted)
SNAPSHOT_CHUNK_BYTES = 1 << 20  # state sync moves a snapshot in chunks of at most 1 MiB
MAX_SNAPSHOT_CHUNKS = 4_096  # an offer of a bigger snapshot (> 4 GiB) is refused
CODE_CALLERROR = 1  # TxResult.code of an event the ledger answered with a CALLERROR (`log` = OCPP code)
CODE_ATTESTATION_IGNORED = 2  # late, repeated or for a closed subject
CODE_BLOCK_REFUSED = 3  # the ledger refused the whole committed block (state unchanged)
# Per-voucher block validity (pure over the block and the ledger state before it), as shares
# of two network-wide budgets split evenly over the n validators of the ledger's set, so one
# Byzantine validator's self-vouched flood adds at most 1/n of each to any block, its own
# proposals included, and honest traffic scales with the block. An OCPP charger has one CALL
# in flight, so the event share is also how many of a validator's chargers one block hears.
BLOCK_EVENT_BUDGET = 2000  # events in one block, all vouchers (the default consensus.max_block_payloads)
# Chain reads one block may cost for chargers the ledger holds no record of (first contact, or
# not registered on chain): only those miss every read cache (an honest boot storm; a flood of
# fresh charger ids). One uncached device() read is one eth_call, 3.6 ms alone on this machine
# (bench/results/flood_bounds_tradeoff.json), and fetch_facts reads them concurrently
# (PREFETCH_WORKERS), so 256 of them cost a block well under a second even under load.
NEW_CHARGER_READ_BUDGET = 256
VALIDATED_FACTS_KEPT = 4  # proposals of the current height (rounds) whose facts a commit can reuse
# An Ethereum block hash read fresh from the RPC is trusted this long for the next blocks naming
# it (several consensus blocks a second name the same Ethereum block): one read a second, not a block
HASH_RECHECK_S = 1.0
PREFETCH_WORKERS = 8  # concurrent uncached device reads of one block (fetch_facts)
# Proposer policy (not validity): an honest proposer takes 1/4 of another voucher's new-charger
# share (it cannot tell an honest first contact from a flood of fresh ids); a voucher's own
# proposals take its whole share, so a boot storm at one node still clears in a few blocks.
PROPOSE_OTHERS_NEW_CHARGER_FRACTION = 4


def vouched_share(validators: int) -> int:
    """Events one voucher may have in a block: BLOCK_EVENT_BUDGET / n (at least 1)."""
    return max(1, BLOCK_EVENT_BUDGET // max(1, validators))


def new_charger_share(validators: int) -> int:
    """Events of chargers the ledger does not know one voucher may have in a block:
    NEW_CHARGER_READ_BUDGET / n (at least 1)."""
    return max(1, NEW_CHARGER_READ_BUDGET // max(1, validators))

MAX_VOUCHERS_PER_BLOCK = 256  # payment vouchers in one block (a validity rule; more wait for the next block)
CODE_VOUCHER_REFUSED = 4  # a payment voucher the ledger did not count (`log` says why)
CODE_COMMAND_REFUSED = 5  # a manager command or outcome the ledger did not take (`log` says why)
VOUCHER_SIGNERS_CACHED = 4_096  # payment voucher payload -> recovered signer
DRIVERS_CACHED = 4_096  # escrow session -> driver address, as last read from chain


@dataclass(frozen=True, slots=True)
class StopCharge:
    """Notice: the ledger decided to stop this voucher-mode transaction (its vouchers fell behind);
    the node holding the charger's connection sends it a remote stop (devsen/remote_start.py)."""

    order: StopOrder


@dataclass(frozen=True, slots=True)
class CommandsAdmitted:
    """Notice: manager commands admitted by this block; the node holding each charger's
    connection delivers them (devsen/charger_commands.py)."""

    commands: tuple[AdmittedCommand, ...]


@dataclass(frozen=True, slots=True)
class OwnAttestationCommitted:
    """Notice: one of this validator's attestations is in a committed block (stop resubmitting)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class ValidatorsChanged:
    """Notice: the validator set changed at this block (peer directory, submitter)."""

    validators: tuple[bytes, ...]
    bindings: dict[bytes, bytes]


class _PatientReader:
    """A KeyReader whose every read waits out RPC blips (worker thread only)."""

    def __init__(self, reader: KeyReader) -> None:
        self._reader = reader

    def device(self, charge_box_id: str) -> Any:
        return patiently(f"device {charge_box_id}", lambda: self._reader.device(charge_box_id))

    def id_tag(self, tag_hash: bytes) -> Any:
        return patiently("idTag", lambda: self._reader.id_tag(tag_hash))

    def open_escrow_sessions(self, charge_box_id: str) -> Any:
        return patiently(f"escrow sessions of {charge_box_id}",
                               lambda: self._reader.open_escrow_sessions(charge_box_id))

    def escrow_session(self, session_id: bytes) -> Any:
        return patiently("escrow session", lambda: self._reader.escrow_session(session_id))

    def reservations(self, charge_box_id: str) -> Any:
        return patiently(f"reservations of {charge_box_id}", lambda: self._reader.reservations(charge_box_id))


def patiently_reader(reader: KeyReader) -> KeyReader:
    """`reader` with RPC retries (devsen.chain_view.patiently) around every read."""
    return _PatientReader(reader)


class AppHeaderError(ValueError):
    """The app header is not [1, eth block number, eth block hash]."""


def encode_app_header(eth_block_number: int, eth_block_hash: bytes) -> bytes:
    """Canonical app header bytes."""
    assert eth_block_number >= 0 and len(eth_block_hash) == 32
    header: bytes = msgpack.packb([APP_HEADER_VERSION, eth_block_number, eth_block_hash], use_bin_type=True)
    return header


def decode_app_header(data: bytes) -> tuple[int, bytes]:
    """(eth block number, eth block hash) from app header bytes; strict."""
    if len(data) > MAX_APP_HEADER_BYTES:
        raise AppHeaderError("app header too long")
    try:
        fields = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise AppHeaderError(f"app header is not msgpack: {exc}") from exc
    if (not isinstance(fields, list) or len(fields) != 3 or fields[0] != APP_HEADER_VERSION
            or not isinstance(fields[1], int) or isinstance(fields[1], bool) or fields[1] < 0
            or not isinstance(fields[2], bytes) or len(fields[2]) != 32):
        raise AppHeaderError("app header must be [1, eth block number, 32-byte eth block hash]")
    if encode_app_header(fields[1], fields[2]) != data:
        raise AppHeaderError("app header is not canonical")
    return fields[1], fields[2]


class ChainAccess(Protocol):
    """The chain reads the application makes (devsen.chain_view.ContractChainAccess); all I/O,
    called only from `propose_facts` / `fetch_facts` (off the event loop)."""

    def head(self, max_age_s: float = ...) -> int: ...

    def block_hash(self, number: int, fresh: bool = False) -> bytes: ...

    def view_at(self, number: int, block_hash: bytes) -> KeyReader:
        """Reads at the block with this hash (EIP-1898), `number` its height."""
        ...

    def validators_at(self, number: int, block_hash: bytes) -> tuple[int, tuple[bytes, ...], dict[bytes, bytes]]:
        """(epoch, sorted validator addresses, address -> peer id) of the ValidatorSet at a block."""
        ...

    # Optional (getattr): `operators_at(number, block_hash) -> tuple[bytes, ...]`, the registered
    # operators (ValidatorSet.operators()) at a block; without it no operator is registered.


@dataclass
class Payloads:
    """A block's payloads split by kind."""

    events: list[ChargerEvent] = field(default_factory=list)
    attestations: list[Attestation] = field(default_factory=list)
    vouchers: list[PaymentVoucher] = field(default_factory=list)
    commands: list[ChargerCommand] = field(default_factory=list)
    outcomes: list[CommandOutcome] = field(default_factory=list)


# A node decodes each event payload in check_tx (on arrival, and again on every mempool recheck),
# prepare_proposal, process_proposal and finalize_block: decoded once, kept here. ChargerEvent is
# a frozen value decoded deterministically from its bytes, so a memo cannot change any result.
# Bounded: at most DECODED_EVENTS entries, of payloads of at most DECODED_MAX_BYTES each.
DECODED_EVENTS = 4096
DECODED_MAX_BYTES = 4096
_decoded: LruMap[bytes, ChargerEvent] = LruMap(DECODED_EVENTS)
_decoded_lock = threading.Lock()  # check_tx may run in worker threads


def decode_event(payload: bytes) -> ChargerEvent:
    """ChargerEvent.from_bytes, memoized (EventEncodingError as it raises: failures are not kept)."""
    with _decoded_lock:
        event = _decoded.get(payload)
    if event is None:
        event = ChargerEvent.from_bytes(payload)
        if len(payload) <= DECODED_MAX_BYTES:
            with _decoded_lock:
                _decoded.put(payload, event)
    return event


def split_payloads(payloads: tuple[bytes, ...]) -> Payloads:
    """Decode every payload; raise ValueError naming the first malformed one."""
    out = Payloads()
    for index, payload in enumerate(payloads):
        if not payload:
            raise ValueError(f"payload {index} is empty")
        if payload[0] == EVENT_PAYLOAD_FIRST_BYTE:
            try:
                out.events.append(decode_event(payload))
            except EventEncodingError as exc:
                raise ValueError(f"payload {index}: {exc}") from exc
        elif payload[0] in ATTESTATION_TAGS:
            try:
                out.attestations.append(decode_attestation(payload))
            except AttestationError as exc:
                raise ValueError(f"payload {index}: {exc}") from exc
        elif payload[0] == VOUCHER_PAYLOAD_TAG:
            try:
                out.vouchers.append(decode_voucher(payload))
            except VoucherError as exc:
                raise ValueError(f"payload {index}: {exc}") from exc
        elif payload[0] in (COMMAND_PAYLOAD_TAG, OUTCOME_PAYLOAD_TAG):
            try:
                if payload[0] == COMMAND_PAYLOAD_TAG:
                    out.commands.append(decode_command(payload))
                else:
                    out.outcomes.append(decode_outcome(payload))
            except CommandError as exc:
                raise ValueError(f"payload {index}: {exc}") from exc
        else:
            raise ValueError(f"payload {index} has unknown kind 0x{payload[0]:02x}")
    return out


@dataclass(frozen=True)
class AppSettings:
    """Fixed parameters of the application on every node of one network."""

    key: SigningKey
    validators: tuple[bytes, ...]
    anchor_domain: Domain
    escrow_domain: Domain
    batch_policy: BatchPolicy
    confirmations: int
    epoch: int = 0
    rewards_domain: Domain | None = None  # the Rewards contract's; None: no reward distributions signed
    # settlement orders of `settle_every_blocks` consecutive heights are signed as one window of
    # settlement batches (anchoring/batches.py); the same on every node of a network
    settle_every_blocks: int = 4
    commands_domain: Domain | None = None  # the DeviceFactory's (manager commands); None: the Escrow's


class NodeApplication:
    """The ABCI application of a node (consensus/abci.py): ledger, batches, attestations."""

    def __init__(self, settings: AppSettings, chain: ChainAccess, ledger: Ledger, anchor_index: AnchorIndex) -> None:
        self.settings = settings
        self.chain = chain
        self.ledger = ledger
        self.anchor_index = anchor_index
        self.batcher = BatchBuilder(settings.batch_policy, BuilderState(next_batch_id=0, next_height=1))
        self.book = AttestationBook(settings.validators, settings.anchor_domain, settings.escrow_domain,
                                    settings.rewards_domain)
        self.vouches = VouchCache(ingress_domain(settings.anchor_domain))
        self.validators: tuple[bytes, ...] = tuple(sorted(settings.validators))
        # Registered operators (full nodes vouching for charger events) as of the last applied block's
        # agreed Ethereum block: mempool admission only; a block's validity reads its own facts.
        self.operators: frozenset[bytes] = frozenset()
        self.operators_named_at: int | None = None  # the Ethereum block whose read named `operators`
        self._proposal_operators: tuple[int, bytes, frozenset[bytes]] | None = None  # (eth block, hash, operators)
        self.epoch = settings.epoch
        self.snapshot_path: Path | None = None
        # (charger, message id) -> (height, event id, dedup key) for the HTTP look-up, kept
        # for the last MESSAGE_WINDOW_BLOCKS heights, at most MESSAGE_LOOKUP_MAX entries.
        self.by_message: dict[tuple[str, str], tuple[int, bytes, bytes]] = {}
        self._messages_by_height: deque[tuple[int, tuple[tuple[str, str], ...]]] = deque()
        self.last_eth_block = 0
        self._last_block: tuple[int, bytes] = (0, b"")
        # Blocks of the open anchor batch a snapshot must carry: (height, time, event ids) of its
        # first block and of those with events (a state-synced node has no block store).
        self._open_blocks: list[tuple[int, int, tuple[bytes, ...]]] = []
        self._restoring: _Restoring | None = None  # a state-sync restore in progress
        self._outbound: list[bytes] = []  # own attestations signed while finalizing
        self._restored: list[bytes] = []  # ... and while restoring (take_restored_outbound)
        self._restored_quorums: list[Quorum] = []  # the book's recent quorums after a restore
        # Whether this node should sign a subject re-opened at an epoch change: the node sets it
        # to "its submitter has not seen the subject land" (local, affects only what we sign;
        # counting stays deterministic). Default: sign every re-opened subject.
        self.resign_filter: Callable[[Subject], bool] = lambda subject: True
        self._settlements_waiting = False  # the open settlement window holds orders (needs blocks soon)
        self.outside_reads = 0
        self.commands = CommandGate(settings.commands_domain or settings.escrow_domain, settings.anchor_domain)
        self._voucher_signers: OrderedDict[bytes, bytes] = OrderedDict()
        self.drivers: OrderedDict[bytes, bytes] = OrderedDict()  # filled from chain reads (check_tx)
        # The facts of the last few validated proposals, keyed by (height, header, payloads digest,
        # last applied block): the decided block's fetch_facts(committed=True) reuses them (the same
        # keys read at the same block hash) instead of reading the chain again (bench/perf_wins.py).
        self._validated_facts: OrderedDict[tuple[int, bytes, bytes, tuple[int, bytes], int | None],
                                           ChainFacts] = OrderedDict()
        self._hash_checked: tuple[int, bytes, float] | None = None  # (number, hash, monotonic read time)
        self._beside_digest = BesideLedgerDigest()
        self.counters: dict[str, int] = {"blocks": 0, "events": 0, "attestations_counted": 0,
                                         "attestations_ignored": 0, "batches_closed": 0, "quorums": 0}

    # ---------------------------------------------------------------- admission

    def check_tx(self, payload: bytes) -> CheckResult:
        """Mempool admission: a canonical ChargerEvent, or a validator's well-signed attestation."""
        try:
            parts = split_payloads((payload,))
        except ValueError as exc:
            return CheckResult(False, str(exc))
        for attestation in parts.attestations:
            problem = self._attestation_problem(attestation)
            if problem is not None:
                return CheckResult(False, problem)
            return CheckResult(True, source="0x" + attestation.signer.hex())
        for voucher in parts.vouchers:
            problem = self.voucher_problem(voucher)
            if problem is not None:
                return CheckResult(False, problem)
            return CheckResult(True, source="voucher:" + voucher.session_id.hex()[:16])  # mempool share per session
        for command in parts.commands:
            problem = self.commands.command_check(command, self.ledger)
            return CheckResult(problem is None, problem or "", source="command:" + command.charger_id)
        for outcome in parts.outcomes:  # pooled under its reporter's share (a validator's, an operator's)
            problem = self.commands.outcome_check(outcome, self.validators, self.operators, self.ledger)
            signer = self.commands.outcome_signer(outcome)
            return CheckResult(problem is None, problem or "",
                               source="0x" + signer.hex() if isinstance(signer, bytes) else "outcome")
        for event in parts.events:
            problem = self.vouches.problem(event, self.validators, self.operators)
            if problem is not None:
                return CheckResult(False, problem)
        return CheckResult(True, source=parts.events[0].ingress_node if parts.events else "")

    def recover_signatures(self, payloads: Sequence[bytes]) -> None:
        """I/O-free but slow, for a worker thread: recover the ingress signer of each event
        payload into the vouch cache, so `check_tx` on the event loop finds it (coincurve releases
        the GIL: recovery runs on the other core). Malformed payloads are left to `check_tx`."""
        for payload in payloads:
            if payload and payload[0] == EVENT_PAYLOAD_FIRST_BYTE:
                try:
                    event = decode_event(payload)
                except EventEncodingError:
                    continue
                self.vouches.signer(event)

    def voucher_signer(self, voucher: PaymentVoucher) -> bytes:
        """The address a voucher's signature recovers to (cached, bounded); VoucherError if none."""
        payload = voucher.encode()
        signer = self._voucher_signers.get(payload)
        if signer is None:
            signer = voucher.signer(self.settings.escrow_domain)
            self._voucher_signers[payload] = signer
            while len(self._voucher_signers) > VOUCHER_SIGNERS_CACHED:
                self._voucher_signers.popitem(last=False)
        return signer

    def note_escrow_driver(self, session_id: bytes, driver: str) -> None:
        """Remember a session's driver as read from chain (for check_tx); bounded."""
        address = address_bytes(driver)
        if address is not None:
            self.drivers[session_id] = address
            self.drivers.move_to_end(session_id)
            while len(self.drivers) > DRIVERS_CACHED:
                self.drivers.popitem(last=False)

    def voucher_problem(self, voucher: PaymentVoucher) -> str | None:
        """Mempool admission of a voucher: a signature that recovers, to the session's driver if
        this node has read it, above the latest voucher the ledger kept. The block's ledger
        decision, at the agreed Ethereum block, is the final word."""
        try:
            signer = self.voucher_signer(voucher)
        except VoucherError as exc:
            return str(exc)
        driver = self.drivers.get(voucher.session_id)
        if driver is not None and signer != driver:
            return f"voucher signed by 0x{signer.hex()}, not by the session's driver 0x{driver.hex()}"
        latest = self.ledger.vouchers.latest(voucher.session_id)
        if latest is not None and voucher.cumulative_amount <= latest.cumulative_amount:
            return (f"cumulative amount {voucher.cumulative_amount} is not above the latest voucher "
                    f"{latest.cumulative_amount}")
        return None

    # ---------------------------------------------------------------- proposing

    def chain_wants_block(self) -> bool:
        """I/O (a worker thread, polled by the shell while the network is idle): True if a
        driver opened an escrow session in a confirmed Ethereum block after the last block's,
        so its remote start is issued now rather than at the next idle heartbeat."""
        number = self.chain.head() - self.settings.confirmations
        if number <= self.last_eth_block:
            return False
        index = getattr(self.chain, "index", None)  # the SessionRequested log index (devsen/chain_view.py)
        return index is not None and bool(index.requested_between(requested_from_block(self.ledger, number), number))

    def propose_facts(self, height: int) -> tuple[int, bytes]:
        """I/O: the Ethereum block to name, head - confirmations by a recent head (at most
        HEAD_MAX_AGE_S old: blocks come every second or slower), monotonic."""
        head = self.chain.head()
        number = max(self.last_eth_block, head - self.settings.confirmations, 0)
        eth_hash = self.chain.block_hash(number)
        if self.commands.unknown:  # managers of mempool commands, so this proposal may carry them
            self.commands.read_unknown_managers(self.chain.view_at(number, eth_hash))
        operators_at = getattr(self.chain, "operators_at", None)
        if operators_at is not None:  # who may vouch in this proposal; and admission from now on
            operators = frozenset(operators_at(number, eth_hash))
            self._proposal_operators, self.operators = (number, eth_hash, operators), operators
            self.operators_named_at = number
        return number, eth_hash

    def prepare_proposal(self, height: int, payloads: tuple[bytes, ...], facts: Any) -> Prepared:
        """Our proposal: the header naming `facts`' Ethereum block and the admissible payloads."""
        number, eth_hash = facts
        kept: list[bytes] = []
        vouchers = commands = outcomes = 0
        nonces: set[tuple[str, int]] = set()
        now_ms = int(time.time() * 1000)
        share = new_charger_share(len(self.validators))
        budget = VoucherBudget(self._known_charger, len(self.validators), mine="0x" + self.settings.key.address.hex(),
                               new_for_others=max(1, share // PROPOSE_OTHERS_NEW_CHARGER_FRACTION))
        # the operators registered at this proposal's Ethereum block (propose_facts read them): an
        # event of one deregistered since the last block would make the block invalid everywhere
        named = self._proposal_operators
        operators = named[2] if named is not None and named[:2] == (number, eth_hash) else self.operators
        for payload in payloads:
            if not self.check_tx(payload).ok:  # e.g. a removed validator's
                continue
            if payload[0] == EVENT_PAYLOAD_FIRST_BYTE:
                event = decode_event(payload)
                if event.ingress_address not in self.validators and event.ingress_address not in operators:
                    continue  # no longer a registered operator at this block (check_tx now refuses it too)
                if budget.take(event) is not None:
                    continue  # over its voucher's share of this block: waits in the mempool for the next
            if payload[0] == VOUCHER_PAYLOAD_TAG:
                if vouchers >= MAX_VOUCHERS_PER_BLOCK:
                    continue
                vouchers += 1
            if payload[0] == COMMAND_PAYLOAD_TAG:
                command = decode_command(payload)
                if commands >= MAX_COMMANDS_PER_BLOCK or (command.charger_id, command.nonce) in nonces \
                        or not self.commands.proposable(command, now_ms):
                    continue  # waits: its manager is read by a later propose_facts
                commands += 1
                nonces.add((command.charger_id, command.nonce))
            if payload[0] == OUTCOME_PAYLOAD_TAG:
                if outcomes >= MAX_OUTCOMES_PER_BLOCK:
                    continue
                outcomes += 1
            kept.append(payload)
        return Prepared(encode_app_header(number, eth_hash), tuple(kept))

    def _voucher_budget(self) -> VoucherBudget:
        """The per-voucher shares of the next block (over the ledger's validator set)."""
        return VoucherBudget(self._known_charger, len(self.validators))

    def _known_charger(self, charger_id: str) -> bool:
        """True if the ledger (state before the next block) holds a record of this charger."""
        return self.ledger.device(charger_id) is not None

    # ---------------------------------------------------------------- chain facts (I/O)

    def fetch_facts(self, height: int, app_header: bytes, payloads: tuple[bytes, ...] = (),
                    *, committed: bool = False, block_ms: int | None = None) -> ChainFacts:
        """I/O, off the event loop: every chain read of the block (header + payloads) at its
        Ethereum block, by hash. Call it after `finalize_block(height - 1)`: the keys depend on
        the ledger state before the block, and on `block_ms`, the block's own timestamp (None:
        read as if the block could have any time, e.g. whether it closes the reward epoch).

        A proposal (committed=False) naming a block unknown here, with another hash, or less
        than `confirmations` deep by our own head gets facts with a `problem` (refused) at once.
        For a committed block (committed=True: catch-up, replay) it waits, retrying, until our
        RPC has that block (ChainReadError after the chain view's outage limit).
        """
        digest = _payloads_digest(payloads)
        reuse_key = (height, app_header, digest, self._last_block, block_ms)
        if committed:
            validated = self._validated_facts.get(reuse_key)
            if validated is not None:  # read at this block's hash over the same state: no chain I/O
                self.counters["facts_reused"] = self.counters.get("facts_reused", 0) + 1
                return validated
        try:
            number, eth_hash = decode_app_header(app_header)
            parts = split_payloads(payloads)
            events = parts.events
        except ValueError as exc:
            return ChainFacts(0, ZERO_HASH, digest, ChainKeys(), complete=False, problem=str(exc))
        head = 0
        if not committed:  # a block over a voucher's share is refused before any chain read
            budget = self._voucher_budget()
            for event in events:
                problem = budget.take(event)
                if problem is not None:
                    return ChainFacts(number, eth_hash, digest, ChainKeys(), complete=False, problem=problem)
        if committed:
            self._await_chain_block(number, eth_hash)
        else:
            head, on_chain = self._chain_has(number, eth_hash)  # one head serves both checks
            if not on_chain:
                return ChainFacts(number, eth_hash, digest, ChainKeys(), complete=False,
                                  problem=f"Ethereum block {number} 0x{eth_hash.hex()} is not on this node's chain")
        keys = chain_keys(events, self.ledger, (v.session_id for v in parts.vouchers),
                          (c.charger_id for c in parts.commands), block_ms)
        view = self.chain.view_at(number, eth_hash)
        requested = getattr(view, "requested_since", None)
        if requested is not None:  # new escrow sessions: their chargers' remote starts (remote_starts.py)
            first = requested_from_block(self.ledger, number)
            keys = with_requested(keys, patiently("session requests", lambda: requested(first)))
        prefetch = getattr(view, "prefetch_devices", None)
        if prefetch is not None:  # uncached device reads of the block at once, not one after another
            prefetch(keys.chargers, PREFETCH_WORKERS)
        reads = read_facts(patiently_reader(view), keys)
        epoch, validators, bindings = patiently(f"ValidatorSet at {number}",
                                                lambda: self.chain.validators_at(number, eth_hash))
        operators_at = getattr(self.chain, "operators_at", None)
        operators = frozenset(patiently(f"operators at {number}", lambda: operators_at(number, eth_hash))
                              if operators_at is not None else ())
        endpoints_at = getattr(self.chain, "validator_endpoints_at", None)  # provisioning's network profiles
        endpoints = {} if endpoints_at is None else patiently(f"validator endpoints at {number}",
                                                              lambda: endpoints_at(number, eth_hash))
        facts_problem = None
        if not committed and head - number < self.settings.confirmations:
            facts_problem = (f"Ethereum block {number} is {head - number} deep by this node's head {head}, "
                             f"fewer than {self.settings.confirmations} confirmations")
        facts = ChainFacts(number, eth_hash, digest, keys, epoch=epoch, validators=validators,
                           bindings=MappingProxyType(dict(bindings)), operators=operators,
                           endpoints=MappingProxyType(dict(endpoints)), problem=facts_problem, **reads)
        if parts.commands:
            self.commands.note_view(facts.view(), (c.charger_id for c in parts.commands))
        if not committed and facts_problem is None:  # its RPC had the block, deep enough: reusable at commit
            self._validated_facts[reuse_key] = facts
            while len(self._validated_facts) > VALIDATED_FACTS_KEPT:
                self._validated_facts.popitem(last=False)
        return facts

    def _await_chain_block(self, number: int, eth_hash: bytes) -> None:
        """Block (worker thread) until our RPC has the committed block's Ethereum block, with
        that hash: a lagging RPC or one on another fork would make this node diverge."""
        def check() -> None:
            if not self._chain_has(number, eth_hash, wanted_depth=0)[1]:
                raise ChainReadError(f"Ethereum block {number} with hash 0x{eth_hash.hex()} not on our RPC yet")

        patiently(f"waiting for Ethereum block {number}", check)

    def _chain_has(self, number: int, eth_hash: bytes, wanted_depth: int | None = None) -> tuple[int, bool]:
        """(our head, whether our RPC has block `number` with hash `eth_hash`). I/O, but at most
        one eth_blockNumber per HEAD_MAX_AGE_S and one block-hash read per HASH_RECHECK_S while
        blocks keep naming the same Ethereum block: the head is read fresh only when the recent
        one would leave `number` less than `wanted_depth` (default: confirmations) deep, and the
        hash only when it was not read fresh, with this value, within HASH_RECHECK_S."""
        depth = self.settings.confirmations if wanted_depth is None else wanted_depth
        head = self.chain.head()
        if head - number < depth:
            head = self.chain.head(max_age_s=0)
        if number > head:
            return head, False
        now = time.monotonic()
        checked = self._hash_checked
        if checked is not None and checked[:2] == (number, eth_hash) and now - checked[2] <= HASH_RECHECK_S:
            return head, True
        fresh = self.chain.block_hash(number, fresh=True)
        self._hash_checked = (number, fresh, now)
        return head, fresh == eth_hash

    # ---------------------------------------------------------------- validating (pure)

    def process_proposal(self, block: Block, facts: Any) -> bool:
        """Validity of a proposed block over (block, facts) alone (module docstring)."""
        problem = self._block_problem(block, facts, proposing=True)
        if problem is not None:
            log.warning("block %d rejected: %s", block.height, problem)
            self.counters["proposals_rejected"] = self.counters.get("proposals_rejected", 0) + 1
            return False
        return True

    def _block_problem(self, block: Block, facts: Any, *, proposing: bool) -> str | None:
        try:
            number, eth_hash = decode_app_header(block.app_header)
            parts = split_payloads(block.payloads)
        except ValueError as exc:
            return str(exc)
        if not isinstance(facts, ChainFacts) or facts.payloads_digest != _payloads_digest(block.payloads) \
                or (facts.complete and (facts.eth_number, facts.eth_hash) != (number, eth_hash)):
            return "the chain facts were fetched for another block (a shell bug)"
        if proposing and facts.problem is not None:
            return facts.problem
        if not facts.complete:
            return "no chain facts for this block"
        if proposing and block.timestamp_ms > time.time() * 1000 + MAX_FUTURE_DRIFT_MS:
            return f"its time is more than {MAX_FUTURE_DRIFT_MS // 1000} s ahead of this node's clock"
        if number < self.last_eth_block:
            return f"Ethereum read block {number} is behind {self.last_eth_block}"
        budget = self._voucher_budget()
        for event in parts.events:  # cheap counts before any signature is recovered
            problem = budget.take(event)
            if problem is not None:
                return problem
        for attestation in parts.attestations:
            problem = self._attestation_problem(attestation)
            if problem is not None:
                return problem
        for event in parts.events:  # a validator's vouch, or a registered operator's at the block's Ethereum block
            problem = self.vouches.problem(event, self.validators, facts.operators)
            if problem is not None:
                return f"event 0x{event.event_id.hex()}: {problem}"
        if len(parts.vouchers) > MAX_VOUCHERS_PER_BLOCK:
            return f"{len(parts.vouchers)} payment vouchers in one block, at most {MAX_VOUCHERS_PER_BLOCK}"
        for voucher in parts.vouchers:
            try:
                self.voucher_signer(voucher)
            except VoucherError as exc:
                return f"payment voucher for session 0x{voucher.session_id.hex()}: {exc}"
        if parts.commands or parts.outcomes:
            problem = self.commands.block_problem(parts.commands, parts.outcomes, facts.view(), block.timestamp_ms,
                                                  self.ledger, self.validators, facts.operators)
            if problem is not None:
                return problem
        context = BlockContext(block.height, block.timestamp_ms, number, eth_hash)
        problem = self.ledger.check_block(context, parts.events)
        return None if problem is None else f"refused by the ledger: {problem}"

    def _attestation_problem(self, attestation: Attestation) -> str | None:
        """Why an attestation can never count now (non-validator signer, bad signature), or None."""
        if attestation.signer not in self.validators:
            return f"attestation from non-validator 0x{attestation.signer.hex()}"
        domain = self._domain_of(attestation.subject)
        if domain is None:
            return "this network has no Rewards contract"
        try:
            attestation.verify(domain)
        except AttestationError as exc:
            return str(exc)
        return None

    # ---------------------------------------------------------------- applying (pure, total)

    def finalize_block(self, block: Block, certificate: CommitCertificate, facts: Any) -> FinalizeResult:
        """Apply a committed block over its facts; everything it produced in one value.

        Total: a block the ledger refuses (impossible after validation, but a committed block
        is never re-judged) leaves the state unchanged and refuses each payload. Facts for
        another block are a shell bug and raise AssertionError (fetch them with committed=True).
        """
        assert isinstance(facts, ChainFacts) and facts.complete \
            and facts.payloads_digest == _payloads_digest(block.payloads), \
            f"finalize_block({block.height}): facts are missing or for another block; fix the shell to call " \
            "fetch_facts(height, app_header, payloads, committed=True) first"
        self._outbound = []
        try:
            number, eth_hash = decode_app_header(block.app_header)
            parts = split_payloads(block.payloads)
            # the vouchers that are validators: what the others (operators) vouch for moves no
            # money beyond signed readings and vouchers (devsen/ledger/LEDGER.md)
            context = BlockContext(block.height, block.timestamp_ms, number, eth_hash,
                                   validators=frozenset("0x" + v.hex() for v in self.validators))
        except ValueError as exc:
            return self._refused_block(block, f"malformed committed block: {exc}")
        view = facts.view()
        vouchers: list[tuple[PaymentVoucher, bytes]] = []
        for voucher in parts.vouchers:
            try:
                vouchers.append((voucher, self.voucher_signer(voucher)))
            except VoucherError as exc:
                return self._refused_block(block, f"committed block {block.height} has a bad voucher: {exc}")
        try:
            commands, command_outcomes = self.commands.ledger_inputs(parts.commands, parts.outcomes)
        except CommandError as exc:
            return self._refused_block(block, f"committed block {block.height} has a bad command: {exc}")
        try:
            outcome = self.ledger.apply_block(context, view, parts.events, vouchers, commands, command_outcomes)
        except BlockRejected as exc:
            return self._refused_block(block, f"the ledger refused committed block {block.height}: {exc}")
        if view.outside:
            self.outside_reads += len(view.outside)
            log.error("block %d read chain keys outside its facts (answered as absent): %s", block.height,
                      view.outside[:4])
        self.last_eth_block = number
        self.operators, self.operators_named_at = facts.operators, number
        self._last_block = (block.height, block.hash)
        self._remember_messages(block.height, parts.events)
        results = {r.event_id: r for r in outcome.results}
        event_ids = tuple(event.event_id for event in parts.events)
        self.anchor_index.record_block(block.height, event_ids)
        notices: list[Any] = []
        closed = self.batcher.on_block(BatchBlock(block.height, block.timestamp_ms, event_ids))
        self._track_open_block(block.height, block.timestamp_ms, event_ids, closed is not None)
        if closed is not None:
            batch, _ = closed
            self.anchor_index.record_batch(batch)
            self.counters["batches_closed"] += 1
            self._expect_and_sign(batch)
        self._settlements_waiting |= bool(outcome.settlements)
        if settlement_window_closes(block.height, self.settings.settle_every_blocks):
            self._close_settlement_window(block.height)
        for distribution in outcome.rewards:
            self._expect_rewards(distribution)
        attestation_results: dict[bytes, TxResult] = {}
        for attestation in parts.attestations:
            encoded = attestation.encode()
            if attestation.signer == self.settings.key.address:
                notices.append(OwnAttestationCommitted(encoded))
            try:
                quorum = self.book.on_committed(attestation, block.height)
            except AttestationError as exc:
                self.counters["attestations_ignored"] += 1  # late, repeated or for a closed subject
                attestation_results[encoded] = TxResult(CODE_ATTESTATION_IGNORED, log=str(exc))
                continue
            self.counters["attestations_counted"] += 1
            attestation_results[encoded] = TxResult()
            if quorum is not None:
                self.counters["quorums"] += 1
                if isinstance(quorum.subject, AnchorBatch):
                    self.anchor_index.record_quorum(quorum.subject.batch_id, block.height)
                notices.append(quorum)
        self.book.expire(block.height)
        update = self._follow_validator_set(block.height, facts, notices)
        self.counters["blocks"] += 1
        self.counters["events"] += len(parts.events)
        for stop in outcome.stops:
            self.counters["voucher_stops"] = self.counters.get("voucher_stops", 0) + 1
            notices.append(StopCharge(stop))
        if outcome.admitted:
            notices.append(CommandsAdmitted(outcome.admitted))
        tx_results = []
        voucher_refusals = iter(outcome.voucher_refusals)
        command_refusals = iter(outcome.command_refusals)
        outcome_refusals = iter(outcome.outcome_refusals)
        for payload in block.payloads:
            if payload[0] == EVENT_PAYLOAD_FIRST_BYTE:
                tx_results.append(event_tx_result(results[decode_event(payload).event_id]))
            elif payload[0] == VOUCHER_PAYLOAD_TAG:
                refusal = next(voucher_refusals, "not applied")
                tx_results.append(TxResult() if refusal is None else TxResult(CODE_VOUCHER_REFUSED, log=refusal))
            elif payload[0] in (COMMAND_PAYLOAD_TAG, OUTCOME_PAYLOAD_TAG):
                refusals = command_refusals if payload[0] == COMMAND_PAYLOAD_TAG else outcome_refusals
                refusal = next(refusals, "not applied")
                tx_results.append(TxResult() if refusal is None else TxResult(CODE_COMMAND_REFUSED, log=refusal))
            else:
                tx_results.append(attestation_results.get(payload, TxResult(CODE_ATTESTATION_IGNORED)))
        outbound, self._outbound = tuple(self._outbound), []
        return FinalizeResult(tuple(tx_results), self.app_state_hash(outcome.state_hash), update, outbound, tuple(notices),
                              block_needed_by_ms=self._block_needed_by_ms(block.timestamp_ms))

    def _block_needed_by_ms(self, block_time_ms: int) -> int:
        """When this application needs the next block on an idle network: the open anchor
        batch's deadline, else a heartbeat block (so chain-side changes such as an epoch switch
        are noticed within IDLE_HEARTBEAT_MS; a remote-start request wakes the shell sooner,
        `chain_wants_block`)."""
        heartbeat = block_time_ms + IDLE_HEARTBEAT_MS
        if self._settlements_waiting:
            heartbeat = block_time_ms + SETTLE_WINDOW_BLOCK_GAP_MS
        due = self.batcher.close_due_ms()
        return heartbeat if due is None else min(due, heartbeat)

    def _refused_block(self, block: Block, why: str) -> FinalizeResult:
        log.error("%s; the state is unchanged", why)
        self.counters["blocks_refused"] = self.counters.get("blocks_refused", 0) + 1
        self._last_block = (block.height, block.hash)
        refusal = TxResult(CODE_BLOCK_REFUSED, log=why)
        return FinalizeResult(tuple(refusal for _ in block.payloads), self.app_state_hash())

    def app_state_hash(self, ledger_hash: bytes | None = None) -> bytes:
        """The app hash of the current state: the ledger (`ledger_hash` if the caller has it) and
        the state beside it (devsen/beside_ledger.py)."""
        return app_state_hash(ledger_hash or self.ledger.state_hash(), self._beside_digest.of(self._beside_ledger()))

    def _beside_ledger(self) -> BesideLedger:
        pending, completed, reopened = self.book.export_state()
        return BesideLedger(self.last_eth_block, self.epoch, self.validators, self.batcher.state, pending,
                            completed, reopened, tuple(self._open_blocks))

    def _remember_messages(self, height: int, events: list[ChargerEvent]) -> None:
        keys = []
        for event in events:
            key = (event.charger_id, event.message_id)
            if key not in self.by_message:
                self.by_message[key] = (height, event.event_id, event.dedup_key)
                keys.append(key)
        self._messages_by_height.append((height, tuple(keys)))
        while self._messages_by_height and (self._messages_by_height[0][0] <= height - MESSAGE_WINDOW_BLOCKS
                                            or len(self.by_message) > MESSAGE_LOOKUP_MAX):
            _, old = self._messages_by_height.popleft()
            for key in old:
                self.by_message.pop(key, None)

    def _follow_validator_set(self, height: int, facts: ChainFacts, notices: list[Any]) -> ValidatorUpdate | None:
        """An epoch change on chain at the block's Ethereum read block takes effect here.

        Deterministic: every node read the ValidatorSet at the same agreed Ethereum block (in
        the facts). Consensus switches sets two heights later (the ValidatorUpdate);
        attestations switch now: open subjects carry over, and so do completed ones whose
        quorum the contracts would now refuse (AttestationBook.rebased). A member of the new
        set signs every carried subject it has not signed yet (re-opened ones unless its
        submitter saw them land), so they are re-collected and resubmitted.
        """
        epoch, addresses = facts.epoch, facts.validators
        if epoch <= self.epoch or not addresses:
            if epoch < self.epoch:
                log.error("the ValidatorSet epoch went back from %d to %d at height %d; ignored",
                          self.epoch, epoch, height)
            return None
        log.info("validator set epoch %d -> %d at height %d: %d validators", self.epoch, epoch, height,
                 len(addresses))
        self.epoch, self.validators = epoch, addresses
        bindings = dict(facts.bindings)
        self.book, quorums = self.book.rebased(addresses, height)
        for quorum in quorums:
            self.counters["quorums"] += 1
            notices.append(quorum)
        self._sign_missing()
        notices.append(ValidatorsChanged(addresses, bindings))
        return ValidatorUpdate(height + 2, ValidatorSet.equal(list(addresses), epoch), bindings)

    def _close_settlement_window(self, height: int) -> None:
        """Sign the settlement batches of the window ending at `height`: the ledger's pending
        orders made in it, in the ledger's order (the same on every node)."""
        self._settlements_waiting = False
        orders = self.ledger.settlements_ordered_between(height - self.settings.settle_every_blocks + 1, height)
        try:
            batches = settlement_batches(height, [Settlement(o.session_id, o.energy_wh, o.amount) for o in orders])
        except ValueError as exc:  # every node alike; never halt the chain
            self.counters["subjects_refused"] = self.counters.get("subjects_refused", 0) + 1
            log.error("cannot sign the settlements of heights up to %d: %s", height, exc)
            return
        for batch in batches:
            self._expect_and_sign(batch)

    def _domain_of(self, subject: Subject) -> Domain | None:
        if isinstance(subject, RewardSubject):
            return self.settings.rewards_domain
        return self.settings.anchor_domain if isinstance(subject, AnchorBatch) else self.settings.escrow_domain

    def _expect_rewards(self, distribution: RewardDistribution) -> None:
        """Collect a quorum for each part of a closed reward epoch's payouts (reward_parts: at most
        MAX_PAYOUTS owners per part; none without a Rewards contract)."""
        if self.settings.rewards_domain is None or not distribution.payouts():
            return
        try:
            subjects = reward_parts(distribution.epoch, distribution.payouts())
        except ValueError as exc:  # more parts than the contract pays: every node alike
            self.counters["subjects_refused"] = self.counters.get("subjects_refused", 0) + 1
            log.error("cannot sign the rewards of epoch %d: %s", distribution.epoch, exc)
            return
        for subject in subjects:
            self._expect_and_sign(subject)

    def _expect_and_sign(self, subject: Subject) -> None:
        try:
            self.book.expect(subject)
        except (OverflowError, ValueError) as exc:  # every node fails alike; never halt the chain
            self.counters["subjects_refused"] = self.counters.get("subjects_refused", 0) + 1
            log.error("cannot collect attestations for %s: %s", subject, exc)
            return
        if self.settings.key.address in self.validators:
            self._sign(subject)

    def _sign_missing(self) -> None:
        """Sign every open subject our attestation is not counted for (a member only)."""
        me = self.settings.key.address
        if me not in self.validators:
            return
        for subject in self.book.open_subjects():
            if me in self.book.signers_of(subject):
                continue
            if self.book.reopened(subject):
                self.counters["reopened_subjects"] = self.counters.get("reopened_subjects", 0) + 1
                if not self.resign_filter(subject):
                    continue
                self.counters["resigned_subjects"] = self.counters.get("resigned_subjects", 0) + 1
            self._sign(subject)

    def _sign(self, subject: Subject) -> None:
        domain = self._domain_of(subject)
        assert domain is not None, "reward subjects are expected only with a Rewards domain"
        self._outbound.append(attest(subject, self.settings.key, domain).encode())

    # ---------------------------------------------------------------- commit (disk)

    def commit(self, height: int) -> None:
        """Persist after `height` is finalized and saved: a snapshot every SNAPSHOT_EVERY_BLOCKS."""
        if self.snapshot_path is not None and height > 0 and height % SNAPSHOT_EVERY_BLOCKS == 0 \
                and self._last_block[0] == height:
            self.write_snapshot(height, self._last_block[1])

    def take_restored_outbound(self) -> tuple[bytes, ...]:
        """Own attestations `restore` signed again (the node submits them)."""
        outbound, self._restored = tuple(self._restored), []
        return outbound

    def take_restored_quorums(self) -> tuple[Quorum, ...]:
        """The recent quorums of the restored snapshot: the node hands them to its submitter
        again (it ignores known ones), so a quorum queued but not persisted before a stop is
        not lost."""
        quorums, self._restored_quorums = tuple(self._restored_quorums), []
        return quorums

    # ---------------------------------------------------------------- snapshots (local restore)

    def _track_open_block(self, height: int, time_ms: int, event_ids: tuple[bytes, ...], closed: bool) -> None:
        if closed:
            self._open_blocks = []
        elif not self._open_blocks or event_ids:
            self._open_blocks.append((height, time_ms, event_ids))

    @property
    def snapshot_dir(self) -> Path | None:
        """Where the last SNAPSHOTS_KEPT snapshots are kept for state sync (next to `snapshot_path`)."""
        return None if self.snapshot_path is None else self.snapshot_path.with_name(self.snapshot_path.name + ".d")

    def _snapshot_bytes(self, height: int, block_hash: bytes) -> bytes:
        data: bytes = msgpack.packb([SNAPSHOT_FORMAT, height, block_hash, self.ledger.state_hash(),
                                     self.ledger.to_bytes(), self._beside_ledger().encode()], use_bin_type=True)
        return data

    def write_snapshot(self, height: int, block_hash: bytes) -> None:
        """Persist the application state after `height` (atomically: temp file + rename), and
        keep it, chunked for state sync, among the last SNAPSHOTS_KEPT (`list_snapshots`)."""
        assert self.snapshot_path is not None
        data = self._snapshot_bytes(height, block_hash)
        temporary = self.snapshot_path.with_name(self.snapshot_path.name + ".tmp")
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.snapshot_path)
        self.counters["snapshots"] = self.counters.get("snapshots", 0) + 1
        self._keep_snapshot(height, block_hash, data)

    def _keep_snapshot(self, height: int, block_hash: bytes, data: bytes) -> None:
        """The retained copy is a hard link to the file just written (no second write), plus a
        small sidecar with the chunk hashes; the oldest beyond SNAPSHOTS_KEPT are deleted."""
        directory = self.snapshot_dir
        assert directory is not None and self.snapshot_path is not None
        directory.mkdir(exist_ok=True)
        name = f"{height:012d}"
        blob = directory / f"{name}.snap"
        blob.unlink(missing_ok=True)
        try:
            os.link(self.snapshot_path, blob)
        except OSError:  # a file system without hard links: copy
            blob.write_bytes(data)
        hashes = [keccak256(chunk) for chunk in _chunks(data)]
        sidecar = msgpack.packb([SNAPSHOT_FORMAT, height, block_hash, self.app_state_hash(), hashes],
                                use_bin_type=True)
        temporary = directory / f"{name}.meta.tmp"
        temporary.write_bytes(sidecar)
        os.replace(temporary, directory / f"{name}.meta")  # the sidecar last: it makes the snapshot listed
        for old in sorted(directory.glob("*.meta"))[:-SNAPSHOTS_KEPT]:
            old.unlink(missing_ok=True)
            old.with_suffix(".snap").unlink(missing_ok=True)

    def restore(self, last_height: int, get_block: Any) -> tuple[int, bytes] | None:
        """Load the latest snapshot at or below `last_height` that matches the block store.

        Returns (snapshot height, app hash) — the caller replays later blocks — or None (no
        usable snapshot: replay from genesis). `get_block(h)` reads the block store; where the
        store holds the next block, the restored state must hash to the app hash its header
        certifies (a snapshot file altered on disk is refused, the state unchanged).
        """
        if self.snapshot_path is None or not self.snapshot_path.is_file():
            return None
        try:
            state = _SnapshotState.decode(self.snapshot_path.read_bytes())
            if not 0 < state.height <= last_height:
                raise ValueError(f"snapshot at height {state.height} does not fit the store")
            committed: CommittedBlock | None = get_block(state.height)
            if committed is None or committed.block.hash != state.block_hash:
                raise ValueError(f"snapshot block {state.height} is not the stored block")
            after: CommittedBlock | None = get_block(state.height + 1) if state.height < last_height else None
            app_hash = self._install(state, None if after is None else after.block.app_state_hash)
        except (SnapshotError, ValueError, TypeError, OSError) as exc:
            log.warning("ignoring the application snapshot (%s); replaying from genesis", exc)
            return None
        log.info("application restored from the snapshot at height %d", state.height)
        return state.height, app_hash

    def _install(self, state: _SnapshotState, certified: bytes | None) -> bytes:
        """Take a decoded snapshot's state (the open batch is rebuilt from its blocks) and return
        its app hash. Raises ValueError, changing nothing, if the ledger does not hash as recorded,
        the batch or attestation state does not rebuild, or the app hash is not `certified`."""
        if state.ledger.state_hash() != state.state_hash:
            raise ValueError("its ledger does not hash as the snapshot records")
        beside = state.beside
        book = AttestationBook(beside.validators, self.settings.anchor_domain, self.settings.escrow_domain,
                               self.settings.rewards_domain)
        book.import_state(beside.pending, beside.completed, beside.reopened)
        batcher = BatchBuilder(self.settings.batch_policy, beside.batcher)
        open_blocks: list[tuple[int, int, tuple[bytes, ...]]] = []
        recorded = {h: (t, ids) for h, t, ids in beside.open_blocks}
        time_ms = beside.open_blocks[0][1] if beside.open_blocks else 0
        if not -1 <= state.height - beside.batcher.next_height < 10 * MAX_SNAPSHOT_CHUNKS:
            raise ValueError("a snapshot's open batch is implausibly long")
        for h in range(beside.batcher.next_height, state.height + 1):
            time_ms, ids = recorded.get(h, (time_ms, ()))  # a block without events: the time of the one before
            if batcher.on_block(BatchBlock(h, time_ms, ids)) is not None:
                raise ValueError("a snapshot's open batch closes while it is rebuilt")
            if not open_blocks or ids:
                open_blocks.append((h, time_ms, ids))
        pending, completed, reopened = book.export_state()
        app_hash = app_state_hash(state.state_hash, self._beside_digest.digest(
            beside.last_eth_block, beside.epoch, beside.validators, batcher.state, pending, completed, reopened,
            open_blocks))
        if certified is not None and app_hash != certified:
            raise ValueError(f"the snapshot's state hashes to app hash 0x{app_hash.hex()}, the next block "
                             f"certifies 0x{certified.hex()}")
        self.ledger, self.last_eth_block, self.epoch = state.ledger, beside.last_eth_block, beside.epoch
        self._last_block = (state.height, state.block_hash)
        self.validators, self.book, self.batcher = beside.validators, book, batcher
        self._open_blocks = open_blocks
        every = self.settings.settle_every_blocks
        self._settlements_waiting = bool(self.ledger.settlements_ordered_between(
            state.height - state.height % every + 1, state.height))
        self._sign_missing()  # our attestations may not have been committed before the stop
        self._restored_quorums = self.book.completed_quorums()
        self._restored.extend(self._outbound)
        self._outbound = []
        return app_hash

    # ---------------------------------------------------------------- state sync (ABCI snapshots)

    def list_snapshots(self) -> tuple[Snapshot, ...]:
        """The kept snapshots, newest first (a serving node offers them for state sync)."""
        directory = self.snapshot_dir
        if directory is None or not directory.is_dir():
            return ()
        found = []
        for sidecar in sorted(directory.glob("*.meta"), reverse=True):
            try:
                version, height, block_hash, state_hash, hashes = msgpack.unpackb(sidecar.read_bytes())
            except (ValueError, TypeError, OSError, msgpack.UnpackException) as exc:
                log.warning("ignoring snapshot sidecar %s (%s)", sidecar.name, exc)
                continue
            found.append(Snapshot(height, version, len(hashes), keccak256(b"".join(hashes)), state_hash,
                                  msgpack.packb([block_hash, hashes], use_bin_type=True)))
        return tuple(found)

    def load_snapshot_chunk(self, height: int, format: int, index: int) -> bytes | None:
        """Chunk `index` of the kept snapshot at `height`, or None (no such snapshot or chunk)."""
        directory = self.snapshot_dir
        if directory is None or format != SNAPSHOT_FORMAT or not 0 <= index < MAX_SNAPSHOT_CHUNKS \
                or not 0 < height < 10**12:
            return None
        try:
            with open(directory / f"{height:012d}.snap", "rb") as file:
                file.seek(index * SNAPSHOT_CHUNK_BYTES)
                chunk = file.read(SNAPSHOT_CHUNK_BYTES)
        except OSError:
            return None
        return chunk or None

    def offer_snapshot(self, snapshot: Snapshot, app_hash: bytes) -> bool:
        """A joining node is offered `snapshot`; `app_hash` is the TRUSTED app hash certified in
        the header of block `snapshot.height + 1` (read from a verified commit by the caller).

        Accepted only if it claims exactly that app hash, has our format, a bounded number of
        chunks and metadata listing chunk hashes that hash to `snapshot.hash`; the restored
        ledger is checked against `app_hash` after the last chunk. An accepted offer replaces
        any restore in progress. Never raises."""
        self._restoring = None
        try:
            block_hash, hashes = msgpack.unpackb(snapshot.metadata)
            hashes = [bytes(h) for h in hashes]
        except (ValueError, TypeError, msgpack.UnpackException):
            return False
        if (snapshot.format != SNAPSHOT_FORMAT or not 0 < snapshot.height < 10**12
                or not 0 < snapshot.chunks <= MAX_SNAPSHOT_CHUNKS or len(hashes) != snapshot.chunks
                or any(len(h) != 32 for h in hashes) or keccak256(b"".join(hashes)) != snapshot.hash
                or len(app_hash) != 32 or snapshot.app_hash != app_hash
                or not isinstance(block_hash, bytes) or len(block_hash) != 32):
            return False
        self._restoring = _Restoring(snapshot, app_hash, tuple(hashes), [None] * snapshot.chunks)
        return True

    def apply_snapshot_chunk(self, index: int, chunk: bytes) -> bool | None:
        """One chunk of the accepted offer: None while chunks are missing, True once the
        snapshot is complete and its ledger hashes to the trusted app hash (the state is then
        replaced), False when refused. A chunk whose hash is not the offered one (a hostile
        peer's), out of range or oversized, is refused and the restore goes on (`restoring`
        stays True: fetch that chunk from another peer); a complete snapshot that does not
        decode or does not hash to the trusted app hash ends the restore, old state kept."""
        restoring = self._restoring
        if restoring is None or not 0 <= index < len(restoring.chunks) or len(chunk) > SNAPSHOT_CHUNK_BYTES \
                or keccak256(chunk) != restoring.hashes[index]:
            return False
        restoring.chunks[index] = chunk
        if any(c is None for c in restoring.chunks):
            return None
        self._restoring = None
        snapshot = restoring.snapshot
        try:
            state = _SnapshotState.decode(b"".join(c for c in restoring.chunks if c is not None))
            if state.height != snapshot.height:
                raise ValueError(f"it holds height {state.height}, not the offered {snapshot.height}")
            self._install(state, restoring.app_hash)
        except Exception as exc:  # hostile bytes: a refusal, never an escape (apply is total)
            log.warning("state sync: the snapshot at height %d is refused (%s); the state is unchanged",
                        snapshot.height, exc)
            return False
        log.info("application state synced to the snapshot at height %d", state.height)
        return True

    @property
    def restoring(self) -> bool:
        """A state-sync restore was offered and still misses chunks."""
        return self._restoring is not None

    def message(self, charger_id: str, message_id: str) -> tuple[int, bytes, bytes] | None:
        """(height, event id, dedup key) of the first committed event carrying this charger
        message, within the last MESSAGE_WINDOW_BLOCKS heights (and the last MESSAGE_LOOKUP_MAX messages)."""
        return self.by_message.get((charger_id, message_id))


class VoucherBudget:
    """One block's per-voucher bounds (pure, deterministic over the block and the ledger state
    before it): at most `vouched_share(n)` events vouched for by one of n validators, of which
    at most `new_charger_share(n)` from chargers the ledger does not know."""

    def __init__(self, known_charger: Callable[[str], bool], validators: int, mine: str = "",
                 new_for_others: int | None = None) -> None:
        """A proposer composing a block passes `mine` and a smaller `new_for_others` share."""
        self._known = known_charger
        self.events_limit = vouched_share(validators)
        self.new_limit = new_charger_share(validators)
        self._mine = mine
        self._new_for_others = self.new_limit if new_for_others is None else min(new_for_others, self.new_limit)
        self._events: dict[str, int] = {}
        self._new: dict[str, int] = {}

    def take(self, event: ChargerEvent) -> str | None:
        """Count `event` in its voucher's budget; None if it fits, else why not (nothing counted)."""
        voucher = event.ingress_node
        events = self._events.get(voucher, 0)
        if events >= self.events_limit:
            return f"more than {self.events_limit} events vouched for by {voucher or 'nobody'} in one block"
        if not self._known(event.charger_id):
            new = self._new.get(voucher, 0)
            limit = self.new_limit if not self._mine or voucher == self._mine else self._new_for_others
            if new >= limit:
                return (f"more than {limit} events of chargers the ledger does "
                        f"not know vouched for by {voucher or 'nobody'} in one block")
            self._new[voucher] = new + 1
        self._events[voucher] = events + 1
        return None


def _chunks(data: bytes) -> list[bytes]:
    """A snapshot's bytes cut into state-sync chunks of SNAPSHOT_CHUNK_BYTES (the last shorter)."""
    return [data[i:i + SNAPSHOT_CHUNK_BYTES] for i in range(0, max(1, len(data)), SNAPSHOT_CHUNK_BYTES)]


@dataclass(slots=True)
class _Restoring:
    """A state-sync restore in progress: the accepted offer, the trusted app hash, the chunks."""

    snapshot: Snapshot
    app_hash: bytes
    hashes: tuple[bytes, ...]
    chunks: list[bytes | None]


@dataclass(frozen=True, slots=True)
class _SnapshotState:
    """A decoded snapshot (format SNAPSHOT_FORMAT): everything `_install` takes."""

    height: int
    block_hash: bytes
    state_hash: bytes  # the ledger's
    ledger: Ledger
    beside: BesideLedger

    @classmethod
    def decode(cls, data: bytes) -> _SnapshotState:
        """Raises ValueError (or SnapshotError from the ledger) for anything malformed."""
        try:
            version, height, block_hash, state_hash, ledger_bytes, beside_bytes = msgpack.unpackb(data, raw=False)
        except Exception as exc:  # wrong shapes of every kind: one refusal
            raise ValueError(f"snapshot malformed: {exc!r}") from exc
        if version != SNAPSHOT_FORMAT:
            raise ValueError(f"snapshot format {version}, this node reads {SNAPSHOT_FORMAT}")
        if type(height) is not int or not 0 < height < 2**63:
            raise ValueError("snapshot height out of bounds")
        if not all(isinstance(b, bytes) and len(b) == 32 for b in (block_hash, state_hash)) \
                or not isinstance(ledger_bytes, bytes) or not isinstance(beside_bytes, bytes):
            raise ValueError("snapshot hashes or parts malformed")
        return cls(height, block_hash, state_hash, Ledger.from_bytes(ledger_bytes), BesideLedger.decode(beside_bytes))


def _payloads_digest(payloads: tuple[bytes, ...]) -> bytes:
    return keccak256(b"".join(keccak256(p) for p in payloads))


def event_tx_result(result: EventResult) -> TxResult:
    """The TxResult of one event: `data` = msgpack {"reply", "error_code", "duplicate"}, `code`
    0 for a CALLRESULT, CODE_CALLERROR with the OCPP error code in `log`; anomalies in `info`."""
    data = msgpack.packb({"reply": result.reply, "error_code": result.error_code, "duplicate": result.duplicate},
                         use_bin_type=True)
    return TxResult(0 if result.reply is not None else CODE_CALLERROR, data, result.error_code or "",
                    (("anomalies", result.anomalies),) if result.anomalies else ())


def decode_event_reply(result: TxResult) -> tuple[dict[str, Any] | None, str | None, bool]:
    """(reply, OCPP error code, duplicate) from an event's TxResult (event_tx_result)."""
    fields = msgpack.unpackb(result.data, raw=False) if result.data else {}
    return fields.get("reply"), fields.get("error_code") or result.log or None, bool(fields.get("duplicate"))
