"""The one durable validator: ConsensusCore + WAL + block store + catch-up + application, sans-I/O.

Every shell runs this class: the node's trio service (`devsen.consensus_service`), the
simulator (`consensus.sim`) and the crash-at-every-step tests. A shell feeds inputs
(`handle_*`) and carries out the network outputs it gets back; storage never leaves here:

  Persist        -> WAL (own messages fsynced) before any later output is returned
  ValidateBlock  -> returned; the shell fetches the chain facts (I/O, off its event loop)
                    and calls `validate(block, facts)` (app state hash + process_proposal)
  RequestProposal-> returned; the shell gets payloads and `propose_facts` and calls `propose`
  Commit         -> returned; the shell fetches facts and MUST call `finalize(commit, facts)`
                    before any other input: finalize_block, then the block and the validator
                    set change it makes are stored in ONE transaction, the core learns the new
                    set, the WAL of that height is pruned, then `Application.commit(height)`.

A crash anywhere leaves either the old height (the block is decided again from the WAL)
or the block and its set change together; never the block on the old set.

Validator-set changes of any size: the old set decides until the switch height, so peer
bindings (validator address -> peer id) of every set in force from the current height on
are kept (`bindings_in_force`); the shell installs them in its p2p directory.

No empty blocks (CometBFT's create_empty_blocks=false): a new height's timers and proposal
request are held until `wake()` (the shell has payloads, or the application's
`FinalizeResult.block_needed_by_ms` passed) or until another validator's proposal or vote
of that height arrives (someone else started it). The first height after (re)start always
runs, and so does a height reached through a certified (catch-up) block: a node that fell
behind while the others are idle still finds out.

Opening a Replica on an existing data directory: `app.restore` loads a snapshot, the shell
replays `replay_heights()` through `replay(height, facts)`, then `start()` resumes at the
next undecided height from the WAL, so a restarted node re-sends its old votes and never
signs conflicting ones.

State sync: a serving replica hands out its application's snapshots (`snapshots`,
`snapshot_chunk`); a joining node offers one to its application with the app hash of a
verified commit (`Application.offer_snapshot` / `apply_snapshot_chunk`), saves the snapshot
and block S as its store's base (`BlockStore.save_base`, with the validator sets of S+1 and
S+2) and opens a Replica there: `app.restore` finds the snapshot of the store's base block,
nothing is replayed, and consensus goes on at S+1 (devsen/state_sync.py `sync_before_start`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from consensus.abci import Application, FinalizeResult, Snapshot, ValidatorUpdate
from consensus.core import (
    MAX_RECENT_COMMITS,
    Commit,
    ConsensusCore,
    Dropped,
    Output,
    Peer,
    Persist,
    ProposalContent,
    RequestProposal,
    ScheduleTimeout,
    SendTo,
    Timeout,
    TimeoutConfig,
    ValidatorSchedule,
)
from consensus.store import BlockStore, CatchUp
from consensus.types import (
    MAX_BLOCK_PAYLOAD_BYTES,
    MAX_PAYLOADS_PER_BLOCK,
    Block,
    BlockRequest,
    CommittedBlock,
    Message,
    Proposal,
    ValidatorSet,
    Vote,
    WireError,
    decode_message,
)
from consensus.wal import WriteAheadLog
from primitives.eip712 import ZERO_HASH, Domain, SigningKey

# `core_class` exists for the simulator's seeded faulty cores (it must catch them); the node
# always runs ConsensusCore.
# Called before each output is carried out (phase "before") and after a commit is stored
# (phase "stored"); raising there models a crash at that exact point (tests, simulator).
FaultHook = Callable[[Output, str], None]

WAL_FILE = "wal.sqlite"
BLOCKS_FILE = "blocks.sqlite"


class FinalizeFirst(RuntimeError):
    """An input arrived while a returned Commit was not finalized yet (a shell bug)."""


class Replica:
    """One validator's durable consensus state machine (see the module docstring)."""

    def __init__(
        self,
        key: SigningKey,
        domain: Domain,
        genesis: ValidatorSet,
        data_dir: str | Path,
        app: Application,
        genesis_bindings: dict[bytes, bytes] | None = None,
        timeouts: TimeoutConfig | None = None,
        durable: bool = True,
        max_payloads: int = MAX_PAYLOADS_PER_BLOCK,
        max_payload_bytes: int = MAX_BLOCK_PAYLOAD_BYTES,
        fault_hook: FaultHook | None = None,
        wal_path: str | None = None,
        store_path: str | None = None,
        create_empty_blocks: bool = False,
        core_class: type[ConsensusCore] = ConsensusCore,
    ) -> None:
        if wal_path is None or store_path is None:
            Path(data_dir).mkdir(parents=True, exist_ok=True)
        self.app = app
        self.store = BlockStore(store_path or Path(data_dir) / BLOCKS_FILE, durable)
        self.wal = WriteAheadLog(wal_path or Path(data_dir) / WAL_FILE, durable)
        schedule = ValidatorSchedule(genesis)
        self._bindings: list[tuple[int, dict[bytes, bytes]]] = [(1, dict(genesis_bindings or {}))]
        for from_height, validators, bindings in self.store.validator_changes():
            schedule.add(from_height, validators)
            self._bindings.append((from_height, bindings))
        last = self.store.last()
        self.core = core_class(
            key, domain, schedule,
            height=last.height + 1 if last else 1,
            prev_block_hash=last.block.hash if last else ZERO_HASH,
            prev_timestamp_ms=last.block.timestamp_ms if last else 0,
            timeouts=timeouts, max_payloads=max_payloads, max_payload_bytes=max_payload_bytes,
        )
        for height in range(max(1, self.store.first_height(), self.core.height - MAX_RECENT_COMMITS), self.core.height):
            recent = self.store.get(height)
            assert recent is not None, f"block store has a gap at height {height}"
            self.core.remember_committed(recent)
        self.catch_up = CatchUp(domain)
        self.fault_hook = fault_hook
        self.create_empty_blocks = create_empty_blocks
        self.wal.prune_below(self.core.height)
        self.app_hash = ZERO_HASH
        self.block_needed_by_ms: int | None = None
        self._pending: Commit | None = None
        self._active = True
        self._held: list[Output] = []
        self._catching_up = False
        self._applied = 0
        self.last_refused: tuple[bytes, ...] = ()
        restored = app.restore(last.height, self.store.get) if last is not None else None
        if restored is not None:
            self._applied, self.app_hash = restored

    # ------------------------------------------------------------------ state

    @property
    def height(self) -> int:
        """The height being decided (last committed + 1)."""
        return self.core.height

    @property
    def pending_commit(self) -> Commit | None:
        """A Commit returned to the shell and not finalized yet."""
        return self._pending

    @property
    def idle(self) -> bool:
        """True while the current height waits for a reason to start (see `wake`)."""
        return not self._active

    def latest_height(self) -> int:
        """Last committed height (for the p2p sync server)."""
        return self.store.last_height()

    def block_records(self, from_height: int, to_height: int) -> list[bytes]:
        """Committed blocks as wire bytes (the p2p sync server's BlockSource)."""
        return self.store.records(from_height, to_height)

    def snapshots(self) -> tuple[Snapshot, ...]:
        """The application's kept snapshots (the serving side of state sync, like `block_records`)."""
        return self.app.list_snapshots()

    def snapshot_chunk(self, height: int, format: int, index: int) -> bytes | None:
        """One chunk of a kept snapshot, or None (no such snapshot, format or index)."""
        return self.app.load_snapshot_chunk(height, format, index)

    def bindings_in_force(self) -> dict[bytes, bytes]:
        """Peer bindings of every validator set deciding the current height or a later one."""
        current = max(h for h, _ in self._bindings if h <= self.core.height)
        merged: dict[bytes, bytes] = {}
        for from_height, bindings in self._bindings:
            if from_height >= current:
                merged.update(bindings)
        return merged

    # ------------------------------------------------------------------ recovery

    def replay_heights(self) -> range:
        """Stored heights the application has not applied yet (replay them before `start`)."""
        first = self.store.first_height()
        assert first <= 1 or self._applied >= first, \
            f"the block store starts at height {first} (state sync) but the application has no snapshot of it"
        return range(self._applied + 1, self.store.last_height() + 1)

    def replay(self, height: int, facts: Any) -> FinalizeResult:
        """Re-apply stored block `height` (after a restart); its set change is already stored."""
        assert height == self._applied + 1, "replay stored blocks in order"
        committed = self.store.get(height)
        assert committed is not None, f"block store misses height {height}"
        result = self.app.finalize_block(committed.block, committed.certificate, facts)
        self._finished(height, result)
        return result

    def start(self) -> list[Output]:
        """Begin, or resume from the WAL after a restart (call after the replay)."""
        assert self._applied == self.store.last_height(), "replay the stored blocks first"
        messages = self.wal.messages(self.core.height)
        # A (re)started node runs its first height: if it is behind, its votes make peers send
        # it the blocks it missed (an idle network sends nothing by itself).
        self._active = True
        return self._carry(self.core.restore(messages) if messages else self.core.start())

    # ------------------------------------------------------------------ inputs

    def handle_message(self, message: bytes | Message, sender: Peer | None = None) -> list[Output]:
        """A consensus message from `sender` (bytes as received, or decoded)."""
        self._check_no_pending()
        if isinstance(message, bytes | bytearray | memoryview):
            try:
                message = decode_message(bytes(message))
            except WireError as exc:
                return [Dropped(sender, f"malformed: {exc}")]
        if isinstance(message, BlockRequest):
            return self._serve(message, sender)
        if isinstance(message, CommittedBlock):
            return self.handle_committed_block(message, sender)
        woken: list[Output] = []
        if isinstance(message, Proposal | Vote) and message.height == self.core.height and not self._active:
            signer = message.validator if isinstance(message, Vote) else message.proposer
            if signer in self.core.validators and message.verify(self.core.domain):  # a validator started it
                woken = self.wake()
        return woken + self._carry(self.core.on_message(message, sender))

    def handle_committed_block(self, committed: CommittedBlock, sender: Peer | None = None) -> list[Output]:
        """A certified block fetched by catch-up; blocks ahead wait in a bounded buffer."""
        self._check_no_pending()
        if committed.height > self.core.height:
            self.catch_up.offer(committed, self.core.height)
            return []
        self._catching_up = True
        try:
            outputs = self.core.on_committed_block(committed, sender)
            if committed.height == self.core.height:  # not taken (e.g. this input decided already)
                self.catch_up.offer(committed, self.core.height)
            return self._carry(outputs)
        finally:
            self._catching_up = False

    def handle_timeout(self, timeout: Timeout) -> list[Output]:
        self._check_no_pending()
        return self._carry(self.core.on_timeout(timeout))

    def wake(self) -> list[Output]:
        """Start the held height now (payloads wait, or the application needs a block)."""
        if self._active or self._pending is not None:
            return []
        self._active = True
        held, self._held = self._held, []
        return held

    def propose(self, request: RequestProposal, payloads: tuple[bytes, ...], facts: Any,
                now_ms: int) -> list[Output]:
        """Answer RequestProposal: `prepare_proposal` picks the payloads, the core signs the block."""
        self.last_refused = ()
        if (request.height, request.round) != (self.core.height, self.core.round) or self._pending:
            return [Dropped(None, "proposal request of a round that is over")]
        try:
            prepared = self.app.prepare_proposal(request.height, payloads, facts)
        except Exception as exc:  # skip our turn: the round moves on without us
            return [Dropped(None, f"prepare_proposal failed: {exc}")]
        kept = set(prepared.payloads)
        self.last_refused = tuple(p for p in payloads if p not in kept)
        chosen = prepared.payloads[:request.max_payloads]
        while chosen and sum(map(len, chosen)) > request.max_payload_bytes:
            chosen = chosen[:-1]
        content = ProposalContent(tuple(chosen), prepared.app_header,
                                  max(now_ms, request.prev_timestamp_ms + 1), self.app_hash)
        try:
            outputs = self.core.on_proposal_content(request.height, request.round, content)
        except ValueError as exc:  # e.g. an oversized app header
            return [Dropped(None, f"proposal refused: {exc}")]
        return self._carry(outputs)

    def validate(self, block: Block, facts: Any) -> list[Output]:
        """Answer ValidateBlock: our app state hash, then the application's process_proposal."""
        if block.height < self.core.height:
            return []  # decided meanwhile (e.g. the same input committed it)
        self._check_no_pending()
        verdict = block.app_state_hash == self.app_hash
        if verdict:
            try:
                verdict = bool(self.app.process_proposal(block, facts))
            except Exception:  # a failing check refuses the block; it never stops the node
                verdict = False
        return self._carry(self.core.on_validation_result(block.hash, verdict))

    def refuse(self, block: Block) -> list[Output]:
        """Answer ValidateBlock with "invalid" (e.g. the block's chain facts cannot be had)."""
        if block.height < self.core.height:
            return []
        self._check_no_pending()
        return self._carry(self.core.on_validation_result(block.hash, False))

    def finalize(self, commit: Commit, facts: Any) -> tuple[FinalizeResult, list[Output]]:
        """Apply the returned Commit and store it with its validator-set change, atomically."""
        if self._pending is None or commit.block.hash != self._pending.block.hash:
            raise FinalizeFirst("finalize the Commit this replica returned, once")
        block, certificate = commit.block, commit.certificate
        result = self.app.finalize_block(block, certificate, facts)
        update = result.validator_update
        if update is not None and update.from_height <= block.height + 1:
            update = None  # too late to take effect deterministically: the application's bug
        self.store.save(CommittedBlock(block, certificate), _change(update))
        if self.fault_hook:
            self.fault_hook(commit, "stored")
        outputs: list[Output] = []
        if update is not None:
            self._bindings.append((update.from_height, dict(update.bindings)))
            outputs += self.core.set_validators(update.from_height, update.validators)
        self.wal.prune_below(block.height + 1)
        self._pending = None
        self._finished(block.height, result)
        return result, self._carry(outputs)

    def close(self) -> None:
        self.wal.close()
        self.store.close()

    # ------------------------------------------------------------------ internals

    def _finished(self, height: int, result: FinalizeResult) -> None:
        self.app_hash = result.app_hash
        self.block_needed_by_ms = result.block_needed_by_ms
        self._applied = height
        self.app.commit(height)

    def _check_no_pending(self) -> None:
        if self._pending is not None:
            raise FinalizeFirst(f"block {self._pending.block.height} is decided: call finalize first")

    def _serve(self, request: BlockRequest, sender: Peer | None) -> list[Output]:
        if sender is None:
            return [Dropped(None, "block request without a sender")]
        out: list[Output] = []
        for height in range(request.from_height, request.from_height + request.count):
            committed = self.store.get(height)
            if committed is None:
                break
            out.append(SendTo(sender, committed))
        return out

    def _carry(self, outputs: list[Output]) -> list[Output]:
        """Do the storage outputs in order; return the rest, in order.

        When the input decided nothing, the next buffered catch-up block is fed to the
        core: one Commit per call, so the application applies each block (and announces
        validator set changes) before the next one is decided.
        """
        result = self._store_outputs(outputs)
        if self._pending is not None:
            return result
        ready = self.catch_up.take_next(self.core.height, self.core.prev_block_hash,
                                        self.core.validators)
        if ready is not None:
            self._catching_up = True
            try:
                result += self._store_outputs(self.core.on_committed_block(ready))
            finally:
                self._catching_up = False
        return result

    def _store_outputs(self, outputs: list[Output]) -> list[Output]:
        result: list[Output] = []
        for output in outputs:
            if self.fault_hook:
                self.fault_hook(output, "before")
            if isinstance(output, Persist):
                self.wal.append(output.message, output.own)
                continue
            if isinstance(output, Commit):
                self._pending = output
                # A node catching up keeps running: its votes make peers send what it still misses.
                self._active = self.create_empty_blocks or self._catching_up
                self._held = []  # timers of the decided height
            elif not self._active and isinstance(output, ScheduleTimeout | RequestProposal):
                height = output.timeout.height if isinstance(output, ScheduleTimeout) else output.height
                if height == self.core.height:
                    self._held.append(output)
                    continue
            result.append(output)
        return result


def _change(update: ValidatorUpdate | None) -> tuple[int, ValidatorSet, dict[bytes, bytes]] | None:
    return None if update is None else (update.from_height, update.validators, dict(update.bindings))
