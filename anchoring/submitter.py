"""Submission of quorum-signed anchor batches, settlement batches and reward distributions
to the chain (trio shell).

Every node runs a `Submitter` and hands it every `Quorum` its `AttestationBook` reaches.
For each one the submitter reads the chain and then:
- already stored on chain at `confirmations` blocks below the head: done (idempotent: it
  does not matter who sent it);
- stored at the head but not yet that deep: wait; if a reorg removes it, it becomes
  submittable again and is re-sent;
- submittable (for a batch: the contract's `nextBatchId` is this batch's id; for a
  settlement batch: one of its escrow sessions is open at the head; the whole signed list is
  sent in one `settleBatch`, whose entries already closed, e.g. by `closeWithVoucher`, the
  contract skips): send it when it is this node's turn. The
  validator at (id mod n) of the sorted validator set goes first; the k-th next one
  takes over `k * turn_timeout_s` after the subject became submittable, so a dead or
  stuck submitter delays a batch by one timeout, never forever;
- RPC failures (connection refused, timeouts) back off exponentially and retry.

After a validator-set change the contracts refuse a quorum of the old set. The application
re-collects such subjects from the new set (AttestationBook.rebased); the newer quorum
replaces the pending job's, and a quorum that is not one of the current set is not sent.

Pending work lives in SQLite (`JobStore`), written before it is acted on, and is resumed
after a restart. The chain is reached through the small `SubmissionChain` protocol.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import trio

from anchoring.attestations import AnchorBatch, Settlement, SettlementBatch, Subject
from anchoring.batches import Quorum, submitter_order
from anchoring.rewards import RewardSubject
from consensus.signing import quorum_size

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger("devsen.anchoring.submitter")

ANCHOR = "anchor"
SETTLEMENT = "settlement"
REWARD = "reward"
SESSION_NONE, SESSION_OPEN, SESSION_SETTLED, SESSION_REFUNDED = 0, 1, 2, 3
MAX_PENDING_JOBS = 10_000
MAX_DONE_JOBS_KEPT = 10_000  # more than the attestation book's recent quorums: a re-sent one is known
MAX_SETTLEMENT_CHECKS_PER_ROUND = 64  # jobs checked per round; the least recently checked go first
MAX_SESSION_READS_PER_ROUND = 512  # escrow session reads per round over all settlement batches

T = TypeVar("T")


class ChainUnavailable(Exception):
    """The chain RPC could not be reached or did not answer (transient: retried)."""


class SubmissionRejected(Exception):
    """The chain refused a transaction (it reverted, or the node refused it)."""


@dataclass(frozen=True, slots=True)
class SessionState:
    """What the Escrow contract holds for a session: status, settled energy and amount, and
    whether it was opened in voucher mode (its manager may close it with the driver's voucher)."""

    status: int
    energy_wh: int = 0
    amount: int = 0
    voucher_mode: bool = False


class SubmissionChain(Protocol):
    """What the submitter needs from a chain client. `block=None` reads at the head."""

    async def head_number(self) -> int: ...

    async def next_batch_id(self, block: int | None = None) -> int: ...

    async def anchored_batch(self, batch_id: int, block: int | None = None) -> AnchorBatch | None: ...

    async def submit_batch(self, batch: AnchorBatch, signatures: Sequence[bytes]) -> bytes: ...

    async def session_state(self, session_id: bytes, block: int | None = None) -> SessionState: ...

    async def submit_settlement(self, batch: SettlementBatch, signatures: Sequence[bytes]) -> bytes: ...


@runtime_checkable
class RewardChain(Protocol):
    """What the submitter needs for reward distributions (a chain without them leaves them pending)."""

    async def reward_paid(self, epoch: int, part: int, block: int | None = None) -> bool: ...

    async def submit_rewards(self, subject: RewardSubject, signatures: Sequence[bytes]) -> bytes: ...


RETRYABLE = (ChainUnavailable, OSError, TimeoutError, trio.TooSlowError)


def subject_to_json(subject: Subject) -> dict[str, Any]:
    """JSON form of a subject (hex bytes; amounts as decimal strings)."""
    if isinstance(subject, RewardSubject):
        return {"epoch": subject.epoch, "part": subject.part, "parts": subject.parts,
                "payouts": [["0x" + o.hex(), str(a)] for o, a in subject.payouts]}
    if isinstance(subject, AnchorBatch):
        return {"batch_id": subject.batch_id, "root": "0x" + subject.root.hex(),
                "first_height": subject.first_height, "last_height": subject.last_height,
                "event_count": subject.event_count}
    return {"batch_id": subject.batch_id, "count": subject.count,
            "settlements_hash": "0x" + subject.settlements_hash.hex(),
            "entries": [["0x" + e.session_id.hex(), e.energy_wh, str(e.amount)] for e in subject.entries]}


def subject_from_json(kind: str, data: dict[str, Any]) -> Subject:
    """Inverse of `subject_to_json`."""
    if kind == REWARD:
        return RewardSubject(int(data["epoch"]), tuple((bytes.fromhex(o[2:]), int(a)) for o, a in data["payouts"]),
                             int(data.get("part", 0)), int(data.get("parts", 1)))
    if kind == ANCHOR:
        return AnchorBatch(int(data["batch_id"]), bytes.fromhex(data["root"][2:]), int(data["first_height"]),
                           int(data["last_height"]), int(data["event_count"]))
    entries = [Settlement(bytes.fromhex(sid[2:]), int(energy), int(amount)) for sid, energy, amount in data["entries"]]
    batch = SettlementBatch.of(int(data["batch_id"]), entries)
    if batch.settlements_hash.hex() != data["settlements_hash"][2:]:
        raise ValueError(f"settlement batch {batch.batch_id}: stored entries do not match its hash")
    return batch


def reward_key(subject: RewardSubject) -> str:
    """A reward part's job key: "epoch" for a single-part epoch, "epoch/part" otherwise."""
    return str(subject.epoch) if subject.parts == 1 else f"{subject.epoch}/{subject.part}"


@dataclass(slots=True)
class Job:
    """One quorum to bring on chain, with its local (not persisted) timers."""

    quorum: Quorum
    added_at: float  # wall clock, seconds
    ready_since: float | None = None  # trio clock: when it last became submittable
    last_sent: float | None = None  # trio clock: when this node last sent it
    last_checked: float = float("-inf")  # trio clock: when its chain state was last read
    sends: int = 0
    closed: dict[bytes, str] = field(default_factory=dict)  # settlement batch: session -> how it closed

    @property
    def kind(self) -> str:
        if isinstance(self.quorum.subject, RewardSubject):
            return REWARD
        return ANCHOR if isinstance(self.quorum.subject, AnchorBatch) else SETTLEMENT

    @property
    def key(self) -> str:
        subject = self.quorum.subject
        if isinstance(subject, RewardSubject):
            return reward_key(subject)
        return str(subject.batch_id)


class JobStore:
    """SQLite table of jobs: pending ones survive restarts; the last done ones are kept for status."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (kind TEXT NOT NULL, key TEXT NOT NULL, subject TEXT NOT NULL,"
            " signers TEXT NOT NULL, signatures TEXT NOT NULL, height INTEGER NOT NULL,"
            " added_at REAL NOT NULL, outcome TEXT, done_at REAL, PRIMARY KEY (kind, key))")

    def close(self) -> None:
        self._db.close()

    def put(self, job: Job) -> bool:
        """Insert a pending job; False if the same (kind, key) is already known."""
        q = job.quorum
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
            (job.kind, job.key, json.dumps(subject_to_json(q.subject)),
             json.dumps([s.hex() for s in q.signers]), json.dumps([s.hex() for s in q.signatures]),
             q.height, job.added_at))
        return cursor.rowcount == 1

    def replace_quorum(self, job: Job, quorum: Quorum) -> None:
        """Give a pending job a newer quorum for the same subject (re-collected after an epoch change)."""
        self._db.execute(
            "UPDATE jobs SET signers = ?, signatures = ?, height = ? WHERE kind = ? AND key = ? AND outcome IS NULL",
            (json.dumps([s.hex() for s in quorum.signers]), json.dumps([s.hex() for s in quorum.signatures]),
             quorum.height, job.kind, job.key))

    def outcome(self, kind: str, key: str) -> str | None:
        """How the job for (kind, key) ended; None if it is pending or unknown."""
        row = self._db.execute("SELECT outcome FROM jobs WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return None if row is None else row[0]

    def pending(self) -> list[Job]:
        """All jobs not done yet."""
        rows = self._db.execute(
            "SELECT kind, subject, signers, signatures, height, added_at FROM jobs WHERE outcome IS NULL"
        ).fetchall()
        jobs = []
        for kind, subject, signers, signatures, height, added_at in rows:
            quorum = Quorum(subject_from_json(kind, json.loads(subject)),
                            tuple(bytes.fromhex(s) for s in json.loads(signers)),
                            tuple(bytes.fromhex(s) for s in json.loads(signatures)), height)
            jobs.append(Job(quorum, added_at))
        return jobs

    def finish(self, job: Job, outcome: str, done_at: float) -> None:
        """Record how a job ended and drop done jobs beyond the newest MAX_DONE_JOBS_KEPT."""
        self._db.execute("UPDATE jobs SET outcome = ?, done_at = ? WHERE kind = ? AND key = ?",
                         (outcome, done_at, job.kind, job.key))
        self._db.execute(
            "DELETE FROM jobs WHERE outcome IS NOT NULL AND rowid NOT IN (SELECT rowid FROM jobs"
            " WHERE outcome IS NOT NULL ORDER BY done_at DESC LIMIT ?)", (MAX_DONE_JOBS_KEPT,))

    def done(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest finished jobs: kind, subject, outcome, seconds from quorum to done."""
        rows = self._db.execute(
            "SELECT kind, subject, outcome, added_at, done_at FROM jobs WHERE outcome IS NOT NULL"
            " ORDER BY done_at DESC LIMIT ?", (limit,)).fetchall()
        return [{"kind": k, "subject": _summary(json.loads(s)), "outcome": o, "seconds": round(d - a, 3)}
                for k, s, o, a, d in rows]


@dataclass(frozen=True, slots=True)
class SubmitterConfig:
    """Timing of submission. `turn_timeout_s` is how long each validator in turn gets."""

    confirmations: int = 2
    turn_timeout_s: float = 30.0
    poll_interval_s: float = 1.0
    rpc_timeout_s: float = 10.0
    send_timeout_s: float = 90.0  # a send waits for its receipt: longer than the sender's own timeout
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0  # also how late submissions may resume after an outage

    def __post_init__(self) -> None:
        assert self.confirmations >= 0 and self.turn_timeout_s > 0 and self.poll_interval_s > 0
        assert 0 < self.backoff_initial_s <= self.backoff_max_s
        assert 0 < self.rpc_timeout_s <= self.send_timeout_s


@dataclass(slots=True)
class _Counters:
    rounds: int = 0
    rpc_failures: int = 0
    sends: int = 0
    rejected_sends: int = 0
    replaced: int = 0
    stale_quorum_waits: int = 0
    done: dict[str, int] = field(default_factory=dict)


class Submitter:
    """Brings every quorum on chain exactly once, whoever sends it; see the module docstring."""

    def __init__(self, chain: SubmissionChain, store: JobStore, me: bytes, validators: Sequence[bytes],
                 config: SubmitterConfig | None = None) -> None:
        self.chain = chain
        self.store = store
        self.me = me
        self.validators = sorted(validators)
        self.config = config or SubmitterConfig()
        self._jobs: dict[tuple[str, str], Job] = {(j.kind, j.key): j for j in store.pending()}
        self._wake = trio.Event()
        self._counters = _Counters()
        self._confirmed_next: tuple[int, int] | None = None  # (confirmed block, next_batch_id at it)

    async def add(self, quorum: Quorum) -> None:
        """Persist a quorum and have it submitted; adding a known one again changes nothing, and
        a newer quorum for a pending subject (re-collected from a new validator set) replaces
        the job's. A subject already done is never submitted again."""
        job = Job(quorum, time.time())
        known = self._jobs.get((job.kind, job.key))
        if known is not None:
            if quorum.subject == known.quorum.subject and quorum.height > known.quorum.height \
                    and quorum.signatures != known.quorum.signatures:
                self.store.replace_quorum(known, quorum)
                known.quorum = quorum
                known.last_sent = None  # the old quorum's transaction cannot land any more
                self._counters.replaced += 1
                log.info("%s %s: quorum re-collected at height %d", job.kind, job.key, quorum.height)
                self._wake.set()
            return
        if len(self._jobs) >= MAX_PENDING_JOBS:
            raise OverflowError(f"{MAX_PENDING_JOBS} submissions already pending; the chain is not keeping up")
        if self.store.put(job):  # a few ms of SQLite, a few times per batch: not worth a thread
            self._jobs[(job.kind, job.key)] = job
            self._wake.set()

    def pending(self) -> list[Job]:
        """Jobs not yet anchored/settled at the confirmation depth."""
        return list(self._jobs.values())

    def known_done(self, subject: Subject) -> bool:
        """True if this node saw `subject` anchored or settled (or otherwise finished) on chain."""
        if isinstance(subject, RewardSubject):
            return self.store.outcome(REWARD, reward_key(subject)) is not None
        if isinstance(subject, AnchorBatch):
            return self.store.outcome(ANCHOR, str(subject.batch_id)) is not None
        return self.store.outcome(SETTLEMENT, str(subject.batch_id)) is not None

    def status(self) -> dict[str, Any]:
        """JSON-ready summary for the node's HTTP API and logs (the first 100 pending jobs)."""
        c = self._counters
        shown = list(self._jobs.values())[:100]
        return {
            "pending_count": len(self._jobs),
            "pending": [{"kind": j.kind, "subject": _summary(subject_to_json(j.quorum.subject)), "sends": j.sends}
                        for j in shown],
            "rounds": c.rounds, "rpc_failures": c.rpc_failures, "sends": c.sends,
            "rejected_sends": c.rejected_sends, "replaced_quorums": c.replaced,
            "stale_quorum_waits": c.stale_quorum_waits, "done": dict(c.done),
        }

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll and submit until cancelled; RPC failures back off exponentially."""
        task_status.started()
        backoff = self.config.backoff_initial_s
        failing_since: float | None = None  # logged once when rounds start failing, once when they pass
        while True:
            try:
                await self.run_round()
                backoff = self.config.backoff_initial_s
                # Nothing pending: sleep until `add` wakes us (no timer ticking while idle).
                delay = self.config.poll_interval_s if self._jobs else math.inf
                if failing_since is not None:
                    log.info("chain reachable again: submissions resume after %.1f s",
                             time.monotonic() - failing_since)
                    failing_since = None
            except (*RETRYABLE, SubmissionRejected) as exc:  # a read that reverts: retried, logged
                self._counters.rpc_failures += 1
                delay = backoff * random.uniform(0.75, 1.25)
                if failing_since is None or isinstance(exc, SubmissionRejected):
                    log.warning("chain RPC failed (%s: %s); retrying with backoff", type(exc).__name__, exc)
                failing_since = time.monotonic() if failing_since is None else failing_since
                backoff = min(backoff * 2, self.config.backoff_max_s)
                if not isinstance(exc, SubmissionRejected):
                    # Turns count only time this node could reach the chain: after an outage shared
                    # by every node, the first in order sends, not all of them at once.
                    for job in self._jobs.values():
                        job.ready_since = None
            with trio.move_on_after(delay):
                await self._wake.wait()
            self._wake = trio.Event()

    async def run_round(self) -> None:
        """One pass over all pending jobs against the current chain head."""
        self._counters.rounds += 1
        if not self._jobs:
            return
        head = await self._call(self.chain.head_number)
        confirmed = head - self.config.confirmations
        anchors = sorted((j for j in self._jobs.values() if j.kind == ANCHOR),
                         key=lambda j: j.quorum.subject.batch_id)  # type: ignore[union-attr]
        if anchors:
            next_id = await self._call(self.chain.next_batch_id, None)
            confirmed_next = await self._confirmed_next_batch_id(confirmed)
            for job in anchors:
                await self._advance_anchor(job, next_id, confirmed_next, confirmed)
        settlements = sorted((j for j in self._jobs.values() if j.kind == SETTLEMENT),
                             key=lambda j: j.last_checked)[:MAX_SETTLEMENT_CHECKS_PER_ROUND]
        reads = MAX_SESSION_READS_PER_ROUND
        for job in settlements:
            if reads <= 0:
                break
            job.last_checked = trio.current_time()
            reads -= await self._advance_settlement(job, confirmed, reads)
        chain = self.chain
        if isinstance(chain, RewardChain):
            for job in [j for j in self._jobs.values() if j.kind == REWARD][:MAX_SETTLEMENT_CHECKS_PER_ROUND]:
                await self._advance_reward(chain, job, confirmed)

    async def _confirmed_next_batch_id(self, confirmed: int) -> int:
        """next_batch_id at the confirmed block, read once per block number (rounds come more
        often than blocks; a block `confirmations` deep is past the reorgs the network expects)."""
        if confirmed < 0:
            return 0
        if self._confirmed_next is None or self._confirmed_next[0] != confirmed:
            self._confirmed_next = (confirmed, await self._call(self.chain.next_batch_id, confirmed))
        return self._confirmed_next[1]

    async def _advance_reward(self, chain: RewardChain, job: Job, confirmed: int) -> None:
        subject = job.quorum.subject
        assert isinstance(subject, RewardSubject)
        if confirmed >= 0 and await self._call(chain.reward_paid, subject.epoch, subject.part, confirmed):
            await self._finish(job, "paid")
        elif await self._call(chain.reward_paid, subject.epoch, subject.part, None):
            job.ready_since = None  # paid at the head, not yet deep enough
        else:
            await self._maybe_send(job, chain.submit_rewards)

    async def _advance_anchor(self, job: Job, next_id: int, confirmed_next: int, confirmed: int) -> None:
        batch = job.quorum.subject
        assert isinstance(batch, AnchorBatch)
        if batch.batch_id < confirmed_next:
            stored = await self._call(self.chain.anchored_batch, batch.batch_id, confirmed)
            if stored == batch:
                await self._finish(job, "anchored")
            else:
                log.error("batch %d on chain is %s, not this node's %s", batch.batch_id, stored, batch)
                await self._finish(job, "conflict")
        elif batch.batch_id < next_id:
            job.ready_since = None  # landed, waiting for depth; a reorg restarts the turn timers
        elif batch.batch_id > next_id:
            job.ready_since = None  # batch next_id must land first
        else:
            await self._maybe_send(job, self.chain.submit_batch)

    async def _advance_settlement(self, job: Job, confirmed: int, budget: int) -> int:
        """Check a settlement batch's sessions (at most `budget` reads; returns the reads made).
        Done when every entry is closed at the confirmation depth; sent while one is open."""
        batch = job.quorum.subject
        assert isinstance(batch, SettlementBatch)
        reads, open_at_head = 0, False
        for entry in batch.entries:
            if entry.session_id in job.closed:
                continue
            if reads >= budget:
                return reads
            if confirmed >= 0:
                reads += 1
                outcome = _closed_outcome(entry, await self._call(self.chain.session_state, entry.session_id,
                                                                  confirmed))
                if outcome is not None:
                    job.closed[entry.session_id] = outcome
                    continue
            reads += 1
            if (await self._call(self.chain.session_state, entry.session_id, None)).status == SESSION_OPEN:
                open_at_head = True
                break  # the whole signed list goes in one transaction; the rest is read after it
        if len(job.closed) == batch.count:
            counts: dict[str, int] = {}
            for outcome in job.closed.values():
                counts[outcome] = counts.get(outcome, 0) + 1
            await self._finish(job, " ".join(f"{k}={v}" for k, v in sorted(counts.items())), counts)
        elif open_at_head:
            await self._maybe_send(job, self.chain.submit_settlement)
        else:
            job.ready_since = None  # closed at the head but not yet deep enough, or not visible yet
        return reads

    async def _maybe_send(self, job: Job, send: Callable[[Any, Sequence[bytes]], Awaitable[bytes]]) -> None:
        now = trio.current_time()
        if job.ready_since is None:
            job.ready_since = now
        if self.me not in self.validators:
            return  # an observer node tracks but never sends
        signers = job.quorum.signers
        if not set(signers) <= set(self.validators) or len(signers) < quorum_size(len(self.validators)):
            self._counters.stale_quorum_waits += 1  # the contract would refuse it: wait for the new set's
            return
        order = submitter_order(self.validators, job.quorum.subject)
        rank = order.index(self.me)
        turn = self.config.turn_timeout_s
        if now < job.ready_since + rank * turn:
            return
        if job.last_sent is not None and now - job.last_sent < turn:
            return  # our transaction may still land
        if rank:
            log.info("taking over %s %s as submitter #%d", job.kind, job.key, rank)
        job.last_sent = now
        job.sends += 1
        self._counters.sends += 1
        try:
            with trio.fail_after(self.config.send_timeout_s):
                tx = await send(job.quorum.subject, job.quorum.signatures)
        except SubmissionRejected as exc:
            self._counters.rejected_sends += 1
            log.warning("%s %s was refused by the chain: %s", job.kind, job.key, exc)
            return
        log.info("sent %s %s in tx 0x%s", job.kind, job.key, tx.hex())

    async def _finish(self, job: Job, outcome: str, counts: dict[str, int] | None = None) -> None:
        """`counts`: per-entry outcomes of a settlement batch (counted instead of `outcome`)."""
        self.store.finish(job, outcome, time.time())
        del self._jobs[(job.kind, job.key)]
        for name, count in (counts or {outcome: 1}).items():
            self._counters.done[name] = self._counters.done.get(name, 0) + count
        log.info("%s %s done: %s after %.1fs", job.kind, job.key, outcome, time.time() - job.added_at)

    async def _call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        with trio.fail_after(self.config.rpc_timeout_s):
            return await function(*args)


def _closed_outcome(entry: Settlement, state: SessionState) -> str | None:
    """How an escrow session that is no longer open ended, for one settlement entry; None if open
    (or not visible). A voucher-mode session the manager closed with the driver's voucher
    (Escrow.closeWithVoucher) makes the network's entry a no-op, not a conflict."""
    if state.status == SESSION_REFUNDED:
        log.warning("session %s was refunded to its driver before it could be settled", entry.session_id.hex())
        return "refunded"
    if state.status != SESSION_SETTLED:
        return None
    if (state.energy_wh, state.amount) == (entry.energy_wh, entry.amount):
        return "settled"
    if state.voucher_mode:
        log.info("session %s was closed with the driver's voucher (%d paid); settlement not needed",
                 entry.session_id.hex(), state.amount)
        return "voucher_closed"
    log.error("session %s settled on chain as %s, not %s", entry.session_id.hex(), state, entry)
    return "conflict"


def _summary(subject: dict[str, Any]) -> dict[str, Any]:
    """A subject's JSON for status output: a settlement batch's entries (up to 256) left out."""
    return {k: v for k, v in subject.items() if k != "entries"}
