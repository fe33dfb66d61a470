"""A crash-safe validator: ConsensusCore + write-ahead log + block store, still sans-network.

The trio shell feeds a `Replica` the same inputs as the core (`handle_*`) and carries out
the network/application outputs it returns; storage outputs never leave this class:
`Persist` goes to the WAL (own messages fsynced) before any later output is returned, and
`Commit` is written to the block store (fsynced) before it is returned, after which the
WAL of that height is pruned. Opening a Replica on an existing data directory resumes at
the next undecided height and replays the WAL, so a restarted node re-sends its old votes
and never signs conflicting ones.

The application must apply every `Commit` it is handed, in order; after a restart it
re-applies `store` blocks above its own applied height before answering requests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from consensus.core import (
    MAX_RECENT_COMMITS,
    Commit,
    ConsensusCore,
    Dropped,
    Output,
    Peer,
    Persist,
    ProposalContent,
    SendTo,
    Timeout,
    TimeoutConfig,
    ValidatorSchedule,
)
from consensus.signing import ZERO_HASH, Domain, SigningKey
from consensus.store import BlockStore, CatchUp
from consensus.types import (
    MAX_BLOCK_PAYLOAD_BYTES,
    MAX_PAYLOADS_PER_BLOCK,
    BlockRequest,
    CommittedBlock,
    Message,
    ValidatorSet,
    WireError,
    decode_message,
)
from consensus.wal import WriteAheadLog

# Called before each output is carried out (phase "before") and after a commit is stored
# (phase "stored"); raising there models a crash at that exact point (tests, simulator).
FaultHook = Callable[[Output, str], None]

WAL_FILE = "wal.sqlite"
BLOCKS_FILE = "blocks.sqlite"


class Replica:
    """One validator's durable consensus state machine (see the module docstring)."""

    def __init__(
        self,
        key: SigningKey,
        domain: Domain,
        genesis: ValidatorSet,
        data_dir: str | Path,
        timeouts: TimeoutConfig | None = None,
        durable: bool = True,
        max_payloads: int = MAX_PAYLOADS_PER_BLOCK,
        max_payload_bytes: int = MAX_BLOCK_PAYLOAD_BYTES,
        fault_hook: FaultHook | None = None,
        wal_path: str | None = None,
        store_path: str | None = None,
    ) -> None:
        if wal_path is None or store_path is None:
            Path(data_dir).mkdir(parents=True, exist_ok=True)
        self.store = BlockStore(store_path or Path(data_dir) / BLOCKS_FILE, durable)
        self.wal = WriteAheadLog(wal_path or Path(data_dir) / WAL_FILE, durable)
        schedule = ValidatorSchedule(genesis)
        for from_height, validators in self.store.validator_sets():
            schedule.add(from_height, validators)
        last = self.store.last()
        self.core = ConsensusCore(
            key, domain, schedule,
            height=last.height + 1 if last else 1,
            prev_block_hash=last.block.hash if last else ZERO_HASH,
            prev_timestamp_ms=last.block.timestamp_ms if last else 0,
            timeouts=timeouts, max_payloads=max_payloads, max_payload_bytes=max_payload_bytes,
        )
        for height in range(max(1, self.core.height - MAX_RECENT_COMMITS), self.core.height):
            recent = self.store.get(height)
            assert recent is not None, f"block store has a gap at height {height}"
            self.core.remember_committed(recent)
        self.catch_up = CatchUp(domain)
        self.fault_hook = fault_hook
        self.wal.prune_below(self.core.height)

    @property
    def height(self) -> int:
        """The height being decided (last committed + 1)."""
        return self.core.height

    def latest_height(self) -> int:
        """Last committed height (for the p2p sync server)."""
        return self.store.last_height()

    def block_records(self, from_height: int, to_height: int) -> list[bytes]:
        """Committed blocks as wire bytes (the p2p sync server's BlockSource)."""
        return self.store.records(from_height, to_height)

    def start(self) -> list[Output]:
        """Begin, or resume from the WAL after a restart."""
        messages = self.wal.messages(self.core.height)
        return self._carry(self.core.restore(messages) if messages else self.core.start())

    def handle_message(self, message: bytes | Message, sender: Peer | None = None) -> list[Output]:
        """A consensus message from `sender` (bytes as received, or decoded)."""
        if isinstance(message, bytes | bytearray | memoryview):
            try:
                message = decode_message(bytes(message))
            except WireError as exc:
                return [Dropped(sender, f"malformed: {exc}")]
        if isinstance(message, BlockRequest):
            return self._serve(message, sender)
        if isinstance(message, CommittedBlock):
            return self.handle_committed_block(message, sender)
        return self._carry(self.core.on_message(message, sender))

    def handle_committed_block(self, committed: CommittedBlock, sender: Peer | None = None) -> list[Output]:
        """A certified block fetched by catch-up; blocks ahead wait in a bounded buffer."""
        if committed.height > self.core.height:
            self.catch_up.offer(committed, self.core.height)
            return []
        outputs = self.core.on_committed_block(committed, sender)
        if committed.height == self.core.height:  # not taken (e.g. this input decided already)
            self.catch_up.offer(committed, self.core.height)
        return self._carry(outputs)

    def handle_timeout(self, timeout: Timeout) -> list[Output]:
        return self._carry(self.core.on_timeout(timeout))

    def handle_proposal_content(self, height: int, round: int, content: ProposalContent) -> list[Output]:
        return self._carry(self.core.on_proposal_content(height, round, content))

    def handle_validation_result(self, block_hash: bytes, valid: bool) -> list[Output]:
        return self._carry(self.core.on_validation_result(block_hash, valid))

    def set_validators(self, from_height: int, validators: ValidatorSet) -> list[Output]:
        """Validator set change at an epoch boundary (stored, so it survives restarts)."""
        outputs = self.core.set_validators(from_height, validators)
        self.store.save_validator_set(from_height, validators)
        return self._store_outputs(outputs)

    def close(self) -> None:
        self.wal.close()
        self.store.close()

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

    def poll(self) -> list[Output]:
        """Feed the next buffered catch-up block, if any (call after applying a Commit)."""
        return self._carry([])

    def _carry(self, outputs: list[Output]) -> list[Output]:
        """Do the storage outputs in order; return the rest, in order.

        When the input decided nothing, the next buffered catch-up block is fed to the
        core: one Commit per call, so the application applies each block (and announces
        validator set changes) before the next one is decided.
        """
        result = self._store_outputs(outputs)
        if any(isinstance(o, Commit) for o in result):
            return result
        ready = self.catch_up.take_next(self.core.height, self.core.prev_block_hash,
                                        self.core.validators)
        if ready is not None:
            result += self._store_outputs(self.core.on_committed_block(ready))
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
                self.store.save(CommittedBlock(output.block, output.certificate))
                if self.fault_hook:
                    self.fault_hook(output, "stored")
                self.wal.prune_below(output.block.height + 1)
            result.append(output)
        return result
