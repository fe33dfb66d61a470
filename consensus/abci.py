"""The boundary between consensus and the application (ABCI-like, after CometBFT's ABCI 2.0).

Consensus orders opaque payloads; the application gives them meaning. One shell
(`consensus.replica` + the node's trio service, or the simulator) drives exactly this
interface, in this order for every height:

  check_tx(payload)                      admission to the mempool (gossip and local submits)
  fetch_facts(height, app_header)        I/O: chain facts for a block; the shell calls it OFF the
                                         event loop (worker thread); may block and retry
  prepare_proposal(height, payloads,     this node proposes: header + the payloads to include
                   facts)                (drops payloads that became invalid); pure
  process_proposal(block, facts)         validity of a proposed block; pure. A verdict that differs
                                         between honest nodes costs liveness (a round), never
                                         safety: Tendermint only commits what 2f+1 prevoted
  finalize_block(block, certificate,     apply a committed block; pure and TOTAL (an exception
                 facts)                  here halts every node: refuse inside, never raise)
  commit(height)                         persist what finalize produced (snapshots); may do disk I/O

Snapshots (state sync, after CometBFT's): list_snapshots / load_snapshot_chunk on a serving
node; on a joining node offer_snapshot(snapshot, trusted_app_hash), where the trusted app hash
is read from a verified commit's header (block height + 1), then apply_snapshot_chunk for each
chunk: each is checked against the offered chunk hashes (a hostile peer's chunk is refused and
fetched elsewhere), and the restored state must hash to the trusted app hash or is refused.
Fetching chunks from peers is the community-nodes issue's.

`propose_facts()` is the I/O half of proposing (e.g. the chain head to name), also called
off the loop; its result is passed to `prepare_proposal`.

Changes made by the consensus shell (wt-shell): `FinalizeResult.block_needed_by_ms` (the
network makes no empty blocks while idle; the application names when it needs the next one).
`CommitReceipt.result` (consensus_service) carries each payload's `TxResult` to its waiter.

Everything the application wants done after a commit leaves through `FinalizeResult`, never
through callbacks fired in the middle of applying: per-payload results (the waiting charger's
reply travels in its `CommitReceipt`), validator-set updates, payloads this node must submit
(e.g. its own attestations) and opaque notices for the node (e.g. quorums to submit on chain).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from consensus.types import Block, CommitCertificate, ValidatorSet


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Admission verdict for one payload: ok, or the reason it can never be in a valid block."""

    ok: bool
    reason: str = ""
    source: str = ""  # the accountable origin (e.g. the vouching validator) for per-source quotas


@dataclass(frozen=True, slots=True)
class TxResult:
    """The application's outcome for one payload of a committed block.

    `code` 0 = applied; otherwise the application's refusal code (`log` says why). `data` is
    the application's reply bytes for whoever submitted the payload (e.g. an encoded OCPP
    reply), `info` small structured extras (e.g. anomalies)."""

    code: int = 0
    data: bytes = b""
    log: str = ""
    info: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class ValidatorUpdate:
    """A committed block changed the validator set: `validators` decide from `from_height` on.

    `bindings` maps validator address -> libp2p peer id for the new set (the old set's
    bindings stay in force until `from_height`)."""

    from_height: int
    validators: ValidatorSet
    bindings: dict[bytes, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FinalizeResult:
    """Everything applying one committed block produced (CometBFT's ResponseFinalizeBlock)."""

    tx_results: tuple[TxResult, ...]
    app_hash: bytes
    validator_update: ValidatorUpdate | None = None
    outbound_payloads: tuple[bytes, ...] = ()  # this node submits these to consensus (own attestations)
    notices: tuple[Any, ...] = ()  # opaque to consensus: handed to the node after commit (quorums, ...)
    # No empty blocks while idle: the next height starts when payloads wait, or at this wall-clock
    # time (ms) if the application needs a block then (anchoring interval, pending settlement).
    block_needed_by_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """What this node proposes: the app header and the payloads (a subset of those offered)."""

    app_header: bytes
    payloads: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An application snapshot a node offers for state sync (CometBFT's abci.Snapshot).

    Nothing here is trusted by a joining node: it calls `offer_snapshot(snapshot, app_hash)`
    with the app hash it read from a verified commit's header (block `height + 1`), and the
    application checks every chunk against `metadata`'s chunk hashes and the restored state
    against that app hash."""

    height: int
    format: int
    chunks: int
    hash: bytes  # keccak256 over the concatenated chunk hashes
    app_hash: bytes  # the app hash the snapshot claims (block `height + 1`'s header certifies it)
    metadata: bytes = b""  # application-defined; NodeApplication: msgpack [block hash, chunk hashes]


class Application(Protocol):
    """What the consensus shell needs from the deterministic application (module docstring)."""

    def check_tx(self, payload: bytes) -> CheckResult: ...

    def propose_facts(self, height: int) -> Any:
        """I/O (called off the event loop): what this node needs to propose at `height`."""
        ...

    def prepare_proposal(self, height: int, payloads: tuple[bytes, ...], facts: Any) -> Prepared: ...

    def fetch_facts(self, height: int, app_header: bytes, payloads: tuple[bytes, ...] = (),
                    *, committed: bool = False, block_ms: int | None = None) -> Any:
        """I/O (called off the event loop): the chain facts the block with this header and these
        payloads reads (which keys it reads depends on the payloads, on the block's timestamp
        `block_ms` and on the state after the previous height). `committed` = the block is
        decided (commit, catch-up, replay): wait out RPC trouble instead of refusing.

        May block (RPC retries); raises only if the facts can never be had (then the block is
        refused when proposing, and the node cannot commit past it: it stops and says why)."""
        ...

    def process_proposal(self, block: Block, facts: Any) -> bool: ...

    def finalize_block(self, block: Block, certificate: CommitCertificate, facts: Any) -> FinalizeResult: ...

    def commit(self, height: int) -> None: ...

    def restore(self, last_height: int, get_block: Any) -> tuple[int, bytes] | None:
        """After a restart: load the newest usable local snapshot at or below `last_height`;
        (its height, app hash) or None (replay from genesis). `get_block(h)` reads the store."""
        ...

    def list_snapshots(self) -> tuple[Snapshot, ...]: ...

    def load_snapshot_chunk(self, height: int, format: int, index: int) -> bytes | None: ...

    def offer_snapshot(self, snapshot: Snapshot, app_hash: bytes) -> bool: ...

    def apply_snapshot_chunk(self, index: int, chunk: bytes) -> bool | None:
        """True when the snapshot is complete and verified, None while chunks are missing,
        False when the chunk (or the whole snapshot) is refused."""
        ...
