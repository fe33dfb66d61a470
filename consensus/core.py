"""The Tendermint state machine, sans-I/O.

Implements Algorithm 1 of "The latest gossip on BFT consensus" (Buchman, Kwon, Milosevic,
2018, arXiv:1807.04938v3); comments `L22` etc. cite its line numbers. The core never
reads a clock, touches a socket or draws a random number: every input is a method call,
every effect is an `Output` in the returned list, and the caller must carry the outputs
out *in order* (a `Persist` of an own message must be durable before the `Broadcast`
that follows it; `consensus.replica.Replica` does this).

Inputs                                   Outputs
  start() / restore(wal_messages)          Persist(message, own)     write to the WAL
  on_message(bytes | message, sender)      Broadcast(message)        to every validator
  on_timeout(Timeout)                      SendTo(peer, message)     to one peer
  on_proposal_content(h, r, content)       ScheduleTimeout(timeout, duration_ms)
  on_validation_result(block_hash, ok)     RequestProposal(...)      getValue() of L18
  on_committed_block(committed, sender)    ValidateBlock(block)      valid(v) of L23/29/36/50
  set_validators(from_height, set)         Commit(block, certificate)
  remember_committed(committed)            RequestCatchUp(peer, from_height)
                                           ReportEvidence(evidence), Dropped(peer, reason)

At most one height is decided per input: the shell applies each Commit (and announces
validator set changes for height + 2) before its next input. See CONSENSUS.md.

Deviations from the paper, all liveness-only: the proposer also arms timeoutPropose (it
is a no-op once it has proposed); a RETRANSMIT timer re-broadcasts the node's own
messages of the current height (the paper assumes gossip eventually delivers everything);
messages for a later height trigger catch-up with certified blocks; rounds more than
`MAX_ROUNDS_AHEAD` ahead are dropped (retransmission re-delivers them when relevant).
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from consensus.types import (
    MAX_APP_HEADER_BYTES,
    MAX_BLOCK_PAYLOAD_BYTES,
    MAX_PAYLOADS_PER_BLOCK,
    Block,
    BlockRequest,
    CertificateError,
    CommitCertificate,
    CommittedBlock,
    Evidence,
    EvidenceKind,
    Message,
    Proposal,
    ValidatorSet,
    Vote,
    VoteType,
    WireError,
    decode_message,
    verify_certificate,
)
from primitives.eip712 import ZERO_HASH, Domain, SigningKey

Peer = str | bytes  # whatever names a peer in the shell (peer id or validator address)

MAX_ROUNDS_AHEAD = 64  # votes/proposals further ahead of our round are dropped
MAX_ROUNDS_BEHIND = 128  # older rounds are forgotten (except the lock's and valid value's)
MAX_FUTURE_MESSAGES = 1024  # buffered messages for height + 1, shared out per signer
MIN_FUTURE_PER_SIGNER = 16
MAX_RECENT_COMMITS = 16  # committed blocks kept to help peers one height behind
MAX_RULE_ITERATIONS = 10_000  # the rule loop reaches a fixed point far sooner
MAX_VALIDATOR_SCHEDULE = 1024  # epoch entries kept


class Step(enum.IntEnum):
    """step_p of the paper (L4)."""

    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2


class TimeoutKind(enum.IntEnum):
    """Which timer fired: the paper's three, plus the retransmission timer."""

    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2
    RETRANSMIT = 3


@dataclass(frozen=True, slots=True)
class Timeout:
    """A timer identity: the shell hands it back to `on_timeout` when it fires."""

    height: int
    round: int
    kind: TimeoutKind


@dataclass(frozen=True, slots=True)
class TimeoutConfig:
    """Timer durations in ms; the paper's timeouts grow linearly with the round.

    They also grow with the block (issue 16): every node validates a block (valid(v), the
    application's checks of each payload) before it prevotes, and the proposer builds it first,
    so a block of many payloads needs longer than an empty one. `size_grace(n)` =
    `per_payload_ms` for each payload beyond `free_payloads`, at most `size_cap_ms`; a block of
    at most `free_payloads` keeps the plain timeouts. Liveness only: how long a node waits never
    changes what it may sign.
    """

    propose_ms: int = 3000
    propose_delta_ms: int = 500
    prevote_ms: int = 1000
    prevote_delta_ms: int = 500
    precommit_ms: int = 1000
    precommit_delta_ms: int = 500
    retransmit_ms: int = 2000
    max_ms: int = 120_000
    per_payload_ms: int = 2
    free_payloads: int = 64
    size_cap_ms: int = 10_000

    def duration(self, kind: TimeoutKind, round: int, payloads: int = 0) -> int:
        """Duration of `kind` in `round` for a block of `payloads` (bounded by max_ms)."""
        base, delta = {
            TimeoutKind.PROPOSE: (self.propose_ms, self.propose_delta_ms),
            TimeoutKind.PREVOTE: (self.prevote_ms, self.prevote_delta_ms),
            TimeoutKind.PRECOMMIT: (self.precommit_ms, self.precommit_delta_ms),
            TimeoutKind.RETRANSMIT: (self.retransmit_ms, 0),
        }[kind]
        grace = 0 if kind == TimeoutKind.RETRANSMIT else self.size_grace(payloads)
        return min(self.max_ms, base + delta * round + grace)

    def size_grace(self, payloads: int) -> int:
        """Extra ms a block of `payloads` gets: 0 up to free_payloads, then linear, capped."""
        return max(0, min(self.size_cap_ms, self.per_payload_ms * (payloads - self.free_payloads)))


@dataclass(frozen=True, slots=True)
class ProposalContent:
    """What the application puts in a block this node proposes (answer to RequestProposal)."""

    payloads: tuple[bytes, ...]
    app_header: bytes
    timestamp_ms: int
    app_state_hash: bytes


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class Persist:
    """Append `message` to the WAL; when `own`, it must be fsynced before the next output."""

    message: Proposal | Vote
    own: bool


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send `message` to every validator (gossip)."""

    message: Proposal | Vote

    @property
    def data(self) -> bytes:
        return self.message.to_bytes()


@dataclass(frozen=True, slots=True)
class SendTo:
    """Send `message` to one peer (e.g. a committed block to a peer that is behind)."""

    peer: Peer
    message: Message

    @property
    def data(self) -> bytes:
        return self.message.to_bytes()


@dataclass(frozen=True, slots=True)
class ScheduleTimeout:
    """Call `on_timeout(timeout)` after `duration_ms` (earlier timers stay armed)."""

    timeout: Timeout
    duration_ms: int


@dataclass(frozen=True, slots=True)
class RequestProposal:
    """getValue() (L18): answer with on_proposal_content(height, round, ProposalContent).

    The block must extend `prev_block_hash`, have timestamp_ms > prev_timestamp_ms and
    respect the limits. Answer before the other validators' propose timeout.
    """

    height: int
    round: int
    prev_block_hash: bytes
    prev_timestamp_ms: int
    max_payloads: int
    max_payload_bytes: int


@dataclass(frozen=True, slots=True)
class ValidateBlock:
    """valid(v): answer with on_validation_result(block.hash, verdict); must be deterministic."""

    block: Block


@dataclass(frozen=True, slots=True)
class Commit:
    """Block `block` is decided at its height (L49-51); apply it, then answer later requests."""

    block: Block
    certificate: CommitCertificate


@dataclass(frozen=True, slots=True)
class RequestCatchUp:
    """More than 1/3 of the power is at a later height: fetch certified blocks from `peer`."""

    peer: Peer | None
    from_height: int


@dataclass(frozen=True, slots=True)
class ReportEvidence:
    """A validator signed two conflicting messages."""

    evidence: Evidence


@dataclass(frozen=True, slots=True)
class Dropped:
    """An input was refused (stale, hostile or malformed); `peer` may be penalized."""

    peer: Peer | None
    reason: str


Output = (
    Persist | Broadcast | SendTo | ScheduleTimeout | RequestProposal | ValidateBlock | Commit
    | RequestCatchUp | ReportEvidence | Dropped
)


# --------------------------------------------------------------------------- validator schedule


class ValidatorSchedule:
    """Which ValidatorSet governs each height: epochs start at given heights, in order."""

    def __init__(self, genesis: ValidatorSet, from_height: int = 1) -> None:
        self._entries: list[tuple[int, ValidatorSet]] = [(from_height, genesis)]

    def set_for(self, height: int) -> ValidatorSet:
        """The set that votes on `height`."""
        chosen = self._entries[0][1]
        for start, vset in self._entries:
            if start <= height:
                chosen = vset
            else:
                break
        return chosen

    def add(self, from_height: int, validators: ValidatorSet) -> None:
        """Use `validators` from `from_height` on; epochs and heights must increase."""
        last_height, last = self._entries[-1]
        if from_height <= last_height or validators.epoch <= last.epoch:
            if (from_height, validators) == (last_height, last):
                return
            raise ValueError("validator set changes must move to a later height and epoch")
        self._entries.append((from_height, validators))
        if len(self._entries) > MAX_VALIDATOR_SCHEDULE:
            del self._entries[0]

    @property
    def entries(self) -> list[tuple[int, ValidatorSet]]:
        return list(self._entries)


# --------------------------------------------------------------------------- per-height state


@dataclass
class _RoundVotes:
    """Votes of one (round, type): per validator the votes by block hash, power per hash.

    An equivocating validator counts towards each value it voted for, as in the paper's
    counting of messages (safe: two quorums still share an honest validator), but once
    in `total_power`, which counts distinct senders.
    """

    votes: dict[bytes, dict[bytes, Vote]] = field(default_factory=dict)
    power_by_hash: dict[bytes, int] = field(default_factory=dict)
    total_power: int = 0


@dataclass
class _HeightState:
    """The message log of one height; reset at L53."""

    proposals: dict[int, list[Proposal]] = field(default_factory=dict)  # round -> first, conflicting
    votes: dict[tuple[int, VoteType], _RoundVotes] = field(default_factory=dict)
    senders: dict[int, dict[bytes, int]] = field(default_factory=dict)  # round -> validator -> power
    verdicts: dict[bytes, bool] = field(default_factory=dict)
    validation_requested: set[bytes] = field(default_factory=set)
    fired: set[tuple[int, int]] = field(default_factory=set)  # (rule line, round)
    own_votes: dict[tuple[int, VoteType], Vote] = field(default_factory=dict)
    own_proposals: dict[int, Proposal] = field(default_factory=dict)
    evidence_seen: set[tuple[bytes, int, int]] = field(default_factory=set)
    awaiting_content: int | None = None
    propose_extended: set[int] = field(default_factory=set)  # rounds whose propose timer got the size grace
    ahead_power: dict[bytes, int] = field(default_factory=dict)  # validators seen at later heights
    catch_up_peer: Peer | None = None
    catch_up_requested: bool = False


class ConsensusCore:
    """One validator's Tendermint instance, from `height` on (sans-I/O).

    `height` is the next height to decide; `prev_block_hash` / `prev_timestamp_ms` describe
    the last committed block (ZERO_HASH / 0 at genesis).
    """

    def __init__(
        self,
        key: SigningKey,
        domain: Domain,
        validators: ValidatorSet | ValidatorSchedule,
        height: int = 1,
        prev_block_hash: bytes = ZERO_HASH,
        prev_timestamp_ms: int = 0,
        timeouts: TimeoutConfig | None = None,
        max_payloads: int = MAX_PAYLOADS_PER_BLOCK,
        max_payload_bytes: int = MAX_BLOCK_PAYLOAD_BYTES,
    ) -> None:
        assert height >= 1 and len(prev_block_hash) == 32
        assert 0 < max_payloads <= MAX_PAYLOADS_PER_BLOCK
        assert 0 < max_payload_bytes <= MAX_BLOCK_PAYLOAD_BYTES
        self.key = key
        self.address = key.address
        self.domain = domain
        self.schedule = (
            validators if isinstance(validators, ValidatorSchedule) else ValidatorSchedule(validators)
        )
        self.timeouts = timeouts or TimeoutConfig()
        self.max_payloads = max_payloads
        self.max_payload_bytes = max_payload_bytes
        # L2-L9
        self.height = height
        self.round = 0
        self.step = Step.PROPOSE
        self.locked_hash: bytes | None = None
        self.locked_round = -1
        self.valid_block: Block | None = None
        self.valid_round = -1
        self.prev_block_hash = prev_block_hash
        self.prev_timestamp_ms = prev_timestamp_ms
        self.prev_payloads = 0  # payloads of the last block decided here (0 after a restart)
        self.started = False
        self._state = _HeightState()
        self._future: OrderedDict[tuple[object, ...], Proposal | Vote] = OrderedDict()
        self._future_count: Counter[bytes] = Counter()
        self._recent: OrderedDict[int, CommittedBlock] = OrderedDict()
        self._served: set[tuple[Peer, int]] = set()
        self._decided_in_call = False
        self._replay_pending = False

    # ------------------------------------------------------------------ public inputs

    @property
    def validators(self) -> ValidatorSet:
        """The validator set of the current height."""
        return self.schedule.set_for(self.height)

    def start(self) -> list[Output]:
        """L10: start the current height at round 0."""
        assert not self.started, "start() or restore() once"
        self.started = True
        out: list[Output] = []
        self._start_round(0, out)
        self._run_rules(out)
        return out

    def restore(self, messages: Iterable[Proposal | Vote]) -> list[Output]:
        """Start from WAL messages of the current height (own and received), after a crash.

        Own votes are re-used verbatim, never re-signed differently; the lock is rebuilt
        from the own precommit of the highest round (L36-L39 set both together), and the
        node resumes in the highest round it had signed in.
        """
        assert not self.started, "start() or restore() once"
        self.started = True
        out: list[Output] = []
        replay = [m for m in messages if m.height == self.height]
        own = [m for m in replay if _signer(m) == self.address]
        for message in own:
            if isinstance(message, Vote):
                self._state.own_votes.setdefault((message.round, message.vote_type), message)
            else:
                self._state.own_proposals.setdefault(message.round, message)
        precommits = [v for (r, t), v in self._state.own_votes.items()
                      if t == VoteType.PRECOMMIT and not v.is_nil]
        if precommits:
            last = max(precommits, key=lambda v: v.round)
            self.locked_hash, self.locked_round = last.block_hash, last.round
            for proposal in replay:  # L42-L43 set the valid value together with the lock
                if isinstance(proposal, Proposal) and proposal.block_hash == last.block_hash:
                    self.valid_block, self.valid_round = proposal.block, last.round
        self.round = max([m.round for m in own], default=0)
        self.step = Step.PROPOSE
        if (self.round, VoteType.PREVOTE) in self._state.own_votes:
            self.step = Step.PREVOTE
        if (self.round, VoteType.PRECOMMIT) in self._state.own_votes:
            self.step = Step.PRECOMMIT
        for message in replay:
            self._accept(message, None, out, persist=False, trusted=_signer(message) == self.address)
        self._arm_round(out)
        self._run_rules(out)
        self._retransmit(out)
        return out

    def on_message(self, message: bytes | Message, sender: Peer | None = None) -> list[Output]:
        """A message from a peer (wire bytes or decoded); `sender` names the peer."""
        out = self._begin()
        if isinstance(message, bytes | bytearray | memoryview):
            try:
                message = decode_message(bytes(message))
            except WireError as exc:
                out.append(Dropped(sender, f"malformed: {exc}"))
                return out
        if isinstance(message, CommittedBlock):
            self._take_certified(message, sender, out)
            return out
        if isinstance(message, BlockRequest):
            self._serve_recent(message, sender, out)
            return out
        if isinstance(message, Evidence):
            out.append(Dropped(sender, "evidence is handled by the application"))
            return out
        if not self.started:
            out.append(Dropped(sender, "not started"))
            return out
        self._accept(message, sender, out, persist=True, trusted=False)
        self._run_rules(out)
        return out

    def on_timeout(self, timeout: Timeout) -> list[Output]:
        """A timer from ScheduleTimeout fired (L57-L67; RETRANSMIT re-sends own messages)."""
        out = self._begin()
        if timeout.height != self.height or not self.started:
            return out
        if timeout.kind == TimeoutKind.PROPOSE:
            # L57-L60
            if timeout.round == self.round and self.step == Step.PROPOSE and not self._extend_propose(out):
                self._vote(VoteType.PREVOTE, ZERO_HASH, out)
                self.step = Step.PREVOTE
        elif timeout.kind == TimeoutKind.PREVOTE:
            # L61-L64
            if timeout.round == self.round and self.step == Step.PREVOTE:
                self._vote(VoteType.PRECOMMIT, ZERO_HASH, out)
                self.step = Step.PRECOMMIT
        elif timeout.kind == TimeoutKind.PRECOMMIT:
            # L65-L67
            if timeout.round == self.round:
                self._start_round(self.round + 1, out)
        elif timeout.kind == TimeoutKind.RETRANSMIT:
            if timeout.round == self.round:
                self._served.clear()
                self._retransmit(out)
                self._maybe_catch_up(out, force=True)
                self._schedule(TimeoutKind.RETRANSMIT, out)
        self._run_rules(out)
        return out

    def on_proposal_content(self, height: int, round: int, content: ProposalContent) -> list[Output]:
        """The answer to RequestProposal: build, sign and broadcast the block (L18-L19)."""
        out = self._begin()
        state = self._state
        if (height, round) != (self.height, self.round) or state.awaiting_content != round:
            out.append(Dropped(None, "proposal content for a round that is over"))
            return out
        if self.step != Step.PROPOSE or round in state.own_proposals:
            state.awaiting_content = None
            out.append(Dropped(None, "proposal content arrived after the propose step"))
            return out
        state.awaiting_content = None
        if len(content.payloads) > self.max_payloads or sum(map(len, content.payloads)) > self.max_payload_bytes:
            raise ValueError("proposal content exceeds the requested limits")
        if content.timestamp_ms <= self.prev_timestamp_ms:
            raise ValueError("proposal timestamp must exceed the previous block's")
        if len(content.app_header) > MAX_APP_HEADER_BYTES:
            raise ValueError("app header too large")
        block = Block(self.height, content.timestamp_ms, self.address, self.prev_block_hash,
                      content.app_state_hash, tuple(content.payloads), content.app_header)
        self._propose(block, -1, out)
        self._run_rules(out)
        return out

    def on_validation_result(self, block_hash: bytes, valid: bool) -> list[Output]:
        """The application's verdict valid(v) for a block from ValidateBlock."""
        out = self._begin()
        state = self._state
        if block_hash not in state.validation_requested or block_hash in state.verdicts:
            return out
        state.verdicts[block_hash] = bool(valid)
        self._run_rules(out)
        return out

    def on_committed_block(self, committed: CommittedBlock, sender: Peer | None = None) -> list[Output]:
        """A certified block fetched from a peer (catch-up); only the next height is taken."""
        out = self._begin()
        self._take_certified(committed, sender, out)
        return out

    def remember_committed(self, committed: CommittedBlock) -> None:
        """Keep a stored committed block to hand to peers still deciding its height.

        A restarted node calls this with its last few stored blocks: a peer that missed
        our precommit for the last height can then still finish it.
        """
        assert committed.height < self.height
        self._recent[committed.height] = committed
        while len(self._recent) > MAX_RECENT_COMMITS:
            self._recent.popitem(last=False)

    def set_validators(self, from_height: int, validators: ValidatorSet) -> list[Output]:
        """Validator set change at an epoch boundary, decided by the application.

        Must be called identically on every node (it follows committed state), for a
        height after the current one.
        """
        if (from_height, validators) in self.schedule.entries:
            return []  # already known (e.g. the application re-applies blocks after a restart)
        if from_height <= self.height:
            raise ValueError(f"a set change must start after the current height {self.height}")
        self.schedule.add(from_height, validators)
        return []

    # ------------------------------------------------------------------ message intake

    def _begin(self) -> list[Output]:
        """Every input starts here: replay messages buffered for the height we are now at.

        Replay waits for the input after a decision, so the shell has carried out the
        Commit (applied the block, announced validator set changes) before anything of the
        next height is decided: at most one Commit per input.
        """
        out: list[Output] = []
        self._decided_in_call = False
        if self._replay_pending and self.started:
            self._replay_pending = False
            future, self._future = self._future, OrderedDict()
            self._future_count.clear()
            for message in future.values():
                self._accept(message, None, out, persist=True, trusted=False)
            self._run_rules(out)
        return out

    def _take_certified(self, committed: CommittedBlock, sender: Peer | None, out: list[Output]) -> None:
        if committed.height != self.height:
            if committed.height > self.height:
                out.append(Dropped(sender, "certified block is not for the next height"))
            return
        if self._decided_in_call:
            out.append(Dropped(sender, "a block was decided by this input already; offer it again"))
            return
        reason = self._check_certified(committed)
        if reason:
            out.append(Dropped(sender, reason))
            return
        self._decide(committed.block, committed.certificate, out)
        self._run_rules(out)


    def _accept(self, message: Proposal | Vote, sender: Peer | None, out: list[Output],
                persist: bool, trusted: bool) -> None:
        """Validate and store one proposal or vote of any height."""
        if message.height < self.height:
            self._help_lagging_peer(message.height, sender, out)
            return
        if message.height > self.height:
            self._buffer_future(message, sender, out)
            return
        validators = self.validators
        signer = _signer(message)
        if signer not in validators:
            out.append(Dropped(sender, "signer is not a validator"))
            return
        if message.round > self.round + MAX_ROUNDS_AHEAD:
            out.append(Dropped(sender, "round too far ahead"))
            return
        if isinstance(message, Vote):
            self._accept_vote(message, sender, out, persist, trusted)
        else:
            self._accept_proposal(message, sender, out, persist, trusted)

    def _accept_vote(self, vote: Vote, sender: Peer | None, out: list[Output], persist: bool,
                     trusted: bool) -> None:
        state = self._state
        tally = state.votes.setdefault((vote.round, vote.vote_type), _RoundVotes())
        known = tally.votes.get(vote.validator)
        if known is not None and vote.block_hash in known:
            return
        if not trusted and not vote.verify(self.domain):
            out.append(Dropped(sender, "bad vote signature"))
            return
        power = self.validators.power(vote.validator)
        if known is not None:
            self._report(EvidenceKind.DUPLICATE_VOTE, next(iter(known.values())), vote, out)
            if not self._worth_counting(tally, vote.block_hash):
                return
            known[vote.block_hash] = vote
        else:
            tally.votes[vote.validator] = {vote.block_hash: vote}
            tally.total_power += power
        tally.power_by_hash[vote.block_hash] = tally.power_by_hash.get(vote.block_hash, 0) + power
        state.senders.setdefault(vote.round, {})[vote.validator] = power
        if persist and vote.validator != self.address:
            out.append(Persist(vote, own=False))

    def _worth_counting(self, tally: _RoundVotes, block_hash: bytes) -> bool:
        """Is a conflicting vote for `block_hash` relevant (bounds what an equivocator adds)?

        Yes for nil, for a proposed block of this height, or for a value others voted for.
        """
        if block_hash == ZERO_HASH or tally.power_by_hash.get(block_hash, 0) > 0:
            return True
        return any(p.block_hash == block_hash
                   for proposals in self._state.proposals.values() for p in proposals)

    def _accept_proposal(self, proposal: Proposal, sender: Peer | None, out: list[Output],
                         persist: bool, trusted: bool) -> None:
        state = self._state
        if proposal.proposer != self.validators.proposer(self.height, proposal.round):
            out.append(Dropped(sender, "proposal from a validator that is not the round's proposer"))
            return
        known = state.proposals.get(proposal.round, [])
        if any(p.block_hash == proposal.block_hash and p.pol_round == proposal.pol_round for p in known):
            return
        if not trusted and not proposal.verify(self.domain):
            out.append(Dropped(sender, "bad proposal signature"))
            return
        if known:
            self._report(EvidenceKind.DUPLICATE_PROPOSAL, known[0], proposal, out)
            if len(known) >= 2:
                return  # first and one conflicting are kept: enough for L49 in practice
        state.proposals.setdefault(proposal.round, []).append(proposal)
        state.senders.setdefault(proposal.round, {})[proposal.proposer] = self.validators.power(
            proposal.proposer)
        if persist and proposal.proposer != self.address:
            out.append(Persist(proposal, own=False))
        block = proposal.block
        if block.hash in state.verdicts or block.hash in state.validation_requested:
            return
        reason = self._check_block_links(block)
        if reason:
            state.validation_requested.add(block.hash)
            state.verdicts[block.hash] = False
            out.append(Dropped(sender, f"invalid block: {reason}"))
            return
        state.validation_requested.add(block.hash)
        if trusted and block.proposer == self.address:
            state.verdicts[block.hash] = True  # built by our own application
        else:
            out.append(ValidateBlock(block))

    def _check_block_links(self, block: Block) -> str | None:
        """Consensus-level validity of a block at the current height."""
        if block.height != self.height:
            return "wrong height"
        if block.prev_block_hash != self.prev_block_hash:
            return "does not extend the last committed block"
        if block.timestamp_ms <= self.prev_timestamp_ms:
            return "timestamp not after the previous block"
        if block.proposer not in self.validators:
            return "block proposer is not a validator"
        if len(block.payloads) > self.max_payloads or block.payload_bytes > self.max_payload_bytes:
            return "block exceeds the payload limits"
        return None

    def _check_certified(self, committed: CommittedBlock) -> str | None:
        reason = self._check_block_links(committed.block)
        if reason:
            return f"certified block rejected: {reason}"
        try:
            verify_certificate(committed.certificate, self.validators, self.domain, committed.block.hash)
        except CertificateError as exc:
            return f"bad certificate: {exc}"
        return None

    def _report(self, kind: EvidenceKind, first: Proposal | Vote, second: Proposal | Vote,
                out: list[Output]) -> None:
        key = (_signer(first), first.round, int(kind) * 10 + (
            int(first.vote_type) if isinstance(first, Vote) else 0))
        if key in self._state.evidence_seen:
            return
        self._state.evidence_seen.add(key)
        out.append(ReportEvidence(Evidence(kind, _signer(first), first.height, first.round,
                                           first.to_bytes(), second.to_bytes())))

    def _buffer_future(self, message: Proposal | Vote, sender: Peer | None, out: list[Output]) -> None:
        """Keep messages of height + 1 (bounded); note who is ahead to trigger catch-up."""
        signer = _signer(message)
        validators = self.schedule.set_for(message.height)
        if signer not in validators:
            out.append(Dropped(sender, "signer is not a validator"))
            return
        if not message.verify(self.domain):
            out.append(Dropped(sender, "bad signature"))
            return
        state = self._state
        if signer not in state.ahead_power:
            state.ahead_power[signer] = validators.power(signer)
            if sender is not None:
                state.catch_up_peer = sender
            self._maybe_catch_up(out, force=False)
        if message.height != self.height + 1:
            return
        key: tuple[object, ...] = (
            (signer, message.round, int(message.vote_type), message.block_hash)
            if isinstance(message, Vote) else (signer, message.round, message.block_hash)
        )
        if key in self._future:
            return
        # A share per signer (each a validator with a valid signature): one validator's flood
        # fills only its own share, never another's.
        share = max(MIN_FUTURE_PER_SIGNER, MAX_FUTURE_MESSAGES // max(1, len(validators.addresses)))
        if len(self._future) >= MAX_FUTURE_MESSAGES or self._future_count[signer] >= share:
            out.append(Dropped(sender, "future-height buffer full for this signer"))
            return
        self._future[key] = message
        self._future_count[signer] += 1

    def _maybe_catch_up(self, out: list[Output], force: bool) -> None:
        """RequestCatchUp once f+1 power is seen ahead (at least one honest validator)."""
        state = self._state
        ahead = sum(state.ahead_power.values())
        if ahead < self.validators.skip_power:
            return
        if force or not state.catch_up_requested:
            state.catch_up_requested = True
            out.append(RequestCatchUp(state.catch_up_peer, self.height))

    def _help_lagging_peer(self, height: int, sender: Peer | None, out: list[Output]) -> None:
        """A peer still works on a height we decided: send it the certified block once."""
        committed = self._recent.get(height)
        if committed is None or sender is None or (sender, height) in self._served:
            return
        self._served.add((sender, height))
        out.append(SendTo(sender, committed))

    def _serve_recent(self, request: BlockRequest, sender: Peer | None, out: list[Output]) -> None:
        if sender is None:
            return
        for height in range(request.from_height, request.from_height + request.count):
            committed = self._recent.get(height)
            if committed is None:
                break
            out.append(SendTo(sender, committed))

    # ------------------------------------------------------------------ actions

    def _schedule(self, kind: TimeoutKind, out: list[Output], round: int | None = None) -> None:
        r = self.round if round is None else round
        out.append(ScheduleTimeout(Timeout(self.height, r, kind),
                                   self.timeouts.duration(kind, r, self._expected_payloads(kind, r))))

    def _expected_payloads(self, kind: TimeoutKind, round: int) -> int:
        """The block size a timer of `round` waits for: the round's proposal once it is in (the
        others still validate it), else, for the propose timer, the last decided block (under a
        backlog the proposer builds one as large, and that takes as long)."""
        proposals = self._state.proposals.get(round)
        if proposals:
            return len(proposals[0].block.payloads)
        return self.prev_payloads if kind == TimeoutKind.PROPOSE else 0

    def _extend_propose(self, out: list[Output]) -> bool:
        """The propose timer fired while the round's proposal is still being validated: wait
        once more, the size grace of that block (L57 then fires at the second expiry)."""
        state = self._state
        proposals = state.proposals.get(self.round)
        if not proposals or self.round in state.propose_extended:
            return False
        block = proposals[0].block
        if block.hash in state.verdicts or block.hash not in state.validation_requested:
            return False
        grace = self.timeouts.size_grace(len(block.payloads))
        if grace <= 0:
            return False
        state.propose_extended.add(self.round)
        out.append(ScheduleTimeout(Timeout(self.height, self.round, TimeoutKind.PROPOSE), grace))
        return True

    def _is_validator(self) -> bool:
        return self.address in self.validators

    def _vote(self, vote_type: VoteType, block_hash: bytes, out: list[Output]) -> None:
        """Sign and broadcast a vote for (height, round); never two different ones per slot."""
        if not self._is_validator():
            return
        slot = (self.round, vote_type)
        vote = self._state.own_votes.get(slot)
        if vote is None:
            vote = Vote.sign(self.key, self.domain, vote_type, self.height, self.round, block_hash)
            self._state.own_votes[slot] = vote
            out.append(Persist(vote, own=True))
        out.append(Broadcast(vote))
        self._accept_vote(vote, None, out, persist=False, trusted=True)

    def _propose(self, block: Block, pol_round: int, out: list[Output]) -> None:
        """L19: broadcast ⟨PROPOSAL, h_p, round_p, proposal, validRound_p⟩."""
        proposal = self._state.own_proposals.get(self.round)
        if proposal is None:
            proposal = Proposal.sign(self.key, self.domain, self.round, pol_round, block)
            self._state.own_proposals[self.round] = proposal
            out.append(Persist(proposal, own=True))
        out.append(Broadcast(proposal))
        self._accept_proposal(proposal, None, out, persist=False, trusted=True)

    def _start_round(self, round: int, out: list[Output]) -> None:
        """L11-L21 StartRound(round)."""
        self.round = round  # L12
        self.step = Step.PROPOSE  # L13
        self._forget_old_rounds()
        self._arm_round(out)

    def _forget_old_rounds(self) -> None:
        """Bound the message log of a long height: drop rounds far behind, keep the polkas."""
        horizon = self.round - MAX_ROUNDS_BEHIND
        if horizon <= 0:
            return
        keep = {self.locked_round, self.valid_round}
        state = self._state
        for r, vote_type in [k for k in state.votes if k[0] < horizon and k[0] not in keep]:
            del state.votes[(r, vote_type)]
        for r in [r for r in state.proposals if r < horizon and r not in keep]:
            del state.proposals[r]
        for r in [r for r in state.senders if r < horizon]:
            del state.senders[r]

    def _arm_round(self, out: list[Output]) -> None:
        """Propose if it is our turn (L14-L19) and arm the round's timers (L21)."""
        state = self._state
        if self.step == Step.PROPOSE:
            if self.validators.proposer(self.height, self.round) == self.address:  # L14
                if self.round in state.own_proposals:
                    self._propose(state.own_proposals[self.round].block, -1, out)
                elif self.valid_block is not None:  # L15-L16
                    self._propose(self.valid_block, self.valid_round, out)
                else:  # L18 getValue()
                    state.awaiting_content = self.round
                    out.append(RequestProposal(self.height, self.round, self.prev_block_hash,
                                               self.prev_timestamp_ms, self.max_payloads,
                                               self.max_payload_bytes))
            self._schedule(TimeoutKind.PROPOSE, out)  # L21 (also for the proposer: a no-op)
        self._schedule(TimeoutKind.RETRANSMIT, out)

    def _decide(self, block: Block, certificate: CommitCertificate, out: list[Output]) -> None:
        """L51-L54: decide, move to the next height, reset the height state, StartRound(0)."""
        assert block.height == self.height and certificate.block_hash == block.hash
        assert not self._decided_in_call, "at most one decision per input"
        out.append(Commit(block, certificate))
        self._recent[block.height] = CommittedBlock(block, certificate)
        while len(self._recent) > MAX_RECENT_COMMITS:
            self._recent.popitem(last=False)
        self.height += 1  # L52
        self.prev_block_hash = block.hash
        self.prev_timestamp_ms = block.timestamp_ms
        self.prev_payloads = len(block.payloads)
        self.locked_hash, self.locked_round = None, -1  # L53
        self.valid_block, self.valid_round = None, -1
        self._state = _HeightState()
        self._served.clear()
        self._start_round(0, out)  # L54
        self._decided_in_call = True
        self._replay_pending = True  # buffered messages of the new height: at the next input

    def _retransmit(self, out: list[Output]) -> None:
        """Re-send what others may have lost before GST (the paper assumes reliable gossip).

        Own proposals and votes of the last two rounds, and the prevotes that justify our
        lock and valid value (their polka), so a re-proposal with that POL round (L28) can
        be accepted by nodes that missed those prevotes.
        """
        state = self._state
        for r in (self.round - 1, self.round):
            if r < 0:
                continue
            if r in state.own_proposals:
                out.append(Broadcast(state.own_proposals[r]))
            for vote_type in (VoteType.PREVOTE, VoteType.PRECOMMIT):
                vote = state.own_votes.get((r, vote_type))
                if vote is not None:
                    out.append(Broadcast(vote))
        polkas = {(self.locked_round, self.locked_hash)}
        if self.valid_block is not None:
            polkas.add((self.valid_round, self.valid_block.hash))
        for r, block_hash in sorted(p for p in polkas if p[0] >= 0 and p[1] is not None):
            if r >= self.round - 1:
                continue  # already re-sent above, or ours is in there
            for by_hash in self._tally(r, VoteType.PREVOTE).votes.values():
                if block_hash in by_hash:
                    out.append(Broadcast(by_hash[block_hash]))

    # ------------------------------------------------------------------ the upon-rules

    def _run_rules(self, out: list[Output]) -> None:
        """Fire enabled upon-rules until none is (a fixed point)."""
        for _ in range(MAX_RULE_ITERATIONS):
            if not self._fire_one(out):
                return
        raise AssertionError("upon-rules did not reach a fixed point")

    def _fire_one(self, out: list[Output]) -> bool:
        return (
            self._rule_commit(out)  # L49
            or self._rule_round_skip(out)  # L55
            or self._rule_prevote_on_proposal(out)  # L22 and L28
            or self._rule_lock(out)  # L36
            or self._rule_prevote_nil_quorum(out)  # L44
            or self._rule_prevote_timeout(out)  # L34
            or self._rule_precommit_timeout(out)  # L47
        )

    def _tally(self, round: int, vote_type: VoteType) -> _RoundVotes:
        return self._state.votes.get((round, vote_type)) or _RoundVotes()

    def _valid(self, block_hash: bytes) -> bool | None:
        return self._state.verdicts.get(block_hash)

    def _rule_prevote_on_proposal(self, out: list[Output]) -> bool:
        if self.step != Step.PROPOSE:
            return False
        proposals = self._state.proposals.get(self.round)
        if not proposals:
            return False
        proposal = proposals[0]
        v, vr = proposal.block_hash, proposal.pol_round
        verdict = self._valid(v)
        quorum = self.validators.quorum_power
        if vr == -1:
            # L22-L27
            if verdict is None:
                return False
            acceptable = self.locked_round == -1 or self.locked_hash == v  # L23
        else:
            # L28-L33: needs 2f+1 prevotes for id(v) in round vr < round_p
            if self._tally(vr, VoteType.PREVOTE).power_by_hash.get(v, 0) < quorum or verdict is None:
                return False
            acceptable = self.locked_round <= vr or self.locked_hash == v  # L29
        self._vote(VoteType.PREVOTE, v if verdict and acceptable else ZERO_HASH, out)  # L24/26, L30/32
        self.step = Step.PREVOTE  # L27, L33
        return True

    def _rule_prevote_timeout(self, out: list[Output]) -> bool:
        # L34-L35
        key = (34, self.round)
        if self.step != Step.PREVOTE or key in self._state.fired:
            return False
        if self._tally(self.round, VoteType.PREVOTE).total_power < self.validators.quorum_power:
            return False
        self._state.fired.add(key)
        self._schedule(TimeoutKind.PREVOTE, out)
        return True

    def _rule_lock(self, out: list[Output]) -> bool:
        # L36-L43
        key = (36, self.round)
        if self.step < Step.PREVOTE or key in self._state.fired:
            return False
        tally = self._tally(self.round, VoteType.PREVOTE)
        for proposal in self._state.proposals.get(self.round, []):
            v = proposal.block_hash
            if tally.power_by_hash.get(v, 0) >= self.validators.quorum_power and self._valid(v):
                self._state.fired.add(key)
                if self.step == Step.PREVOTE:  # L37
                    self.locked_hash, self.locked_round = v, self.round  # L38-L39
                    self._vote(VoteType.PRECOMMIT, v, out)  # L40
                    self.step = Step.PRECOMMIT  # L41
                self.valid_block, self.valid_round = proposal.block, self.round  # L42-L43
                return True
        return False

    def _rule_prevote_nil_quorum(self, out: list[Output]) -> bool:
        # L44-L46
        if self.step != Step.PREVOTE:
            return False
        tally = self._tally(self.round, VoteType.PREVOTE)
        if tally.power_by_hash.get(ZERO_HASH, 0) < self.validators.quorum_power:
            return False
        self._vote(VoteType.PRECOMMIT, ZERO_HASH, out)  # L45
        self.step = Step.PRECOMMIT  # L46
        return True

    def _rule_precommit_timeout(self, out: list[Output]) -> bool:
        # L47-L48
        key = (47, self.round)
        if key in self._state.fired:
            return False
        if self._tally(self.round, VoteType.PRECOMMIT).total_power < self.validators.quorum_power:
            return False
        self._state.fired.add(key)
        self._schedule(TimeoutKind.PRECOMMIT, out)
        return True

    def _rule_commit(self, out: list[Output]) -> bool:
        # L49-L54, for any round r (one decision per input; the next input continues)
        if self._decided_in_call:
            return False
        quorum = self.validators.quorum_power
        for (r, vote_type), tally in self._state.votes.items():
            if vote_type != VoteType.PRECOMMIT or tally.total_power < quorum:
                continue
            for v, power in tally.power_by_hash.items():
                if v == ZERO_HASH or power < quorum:
                    continue
                for proposal in self._state.proposals.get(r, []):
                    if proposal.block_hash == v and self._valid(v):  # L50
                        votes = [x[v] for x in tally.votes.values() if v in x]
                        self._decide(proposal.block, CommitCertificate.from_votes(votes), out)
                        return True
        return False

    def _rule_round_skip(self, out: list[Output]) -> bool:
        # L55-L56: f+1 messages of a higher round
        skip = self.validators.skip_power
        rounds = [r for r, senders in self._state.senders.items()
                  if r > self.round and sum(senders.values()) >= skip]
        if not rounds:
            return False
        self._start_round(max(rounds), out)
        return True


def _signer(message: Proposal | Vote) -> bytes:
    return message.validator if isinstance(message, Vote) else message.proposer
