"""The Tendermint rules one by one (line numbers of Algorithm 1), and hostile inputs."""

from typing import Any

import msgpack
import pytest
from consensus_testkit import (
    DOMAIN,
    KEYS,
    OUTSIDER,
    VALIDATORS,
    block,
    core_for,
    outputs_of,
    proposal,
    proposer_key,
    vote,
)

from consensus.core import (
    MAX_ROUNDS_AHEAD,
    Broadcast,
    Commit,
    ConsensusCore,
    Dropped,
    Persist,
    ProposalContent,
    ReportEvidence,
    RequestCatchUp,
    RequestProposal,
    ScheduleTimeout,
    SendTo,
    Step,
    Timeout,
    TimeoutKind,
    ValidateBlock,
)
from consensus.types import (
    CommitCertificate,
    CommittedBlock,
    EvidenceKind,
    Proposal,
    ValidatorSet,
    Vote,
    VoteType,
    verify_certificate,
)
from primitives.eip712 import ZERO_HASH

PV, PC = VoteType.PREVOTE, VoteType.PRECOMMIT
ME = 0  # KEYS[0] is not the proposer of (1, 0)
OTHERS = [k for i, k in enumerate(KEYS) if i != ME]


def started(index: int = ME) -> tuple[ConsensusCore, list[Any]]:
    core = core_for(index)
    return core, core.start()


def own_votes(outputs: Any, vote_type: Any=None) -> list[Vote]:
    return [o.message for o in outputs_of(outputs, Broadcast)
            if isinstance(o.message, Vote) and (vote_type is None or o.message.vote_type == vote_type)]


def feed(core: Any, *messages: Any, sender: Any="peer") -> list[Any]:
    out = []
    for message in messages:
        out += core.on_message(message.to_bytes(), sender)
    return out


def prevote_valid_proposal(core: Any, b: Any=None, round: Any=0) -> tuple[Any, list[Any]]:
    b = b or block()
    out = feed(core, proposal(b, round))
    out += core.on_validation_result(b.hash, True)
    return b, out


def test_start_arms_propose_timeout_for_non_proposer() -> None:  # L10, L21
    assert VALIDATORS.proposer(1, 0) != KEYS[ME].address
    core, out = started()
    assert Timeout(1, 0, TimeoutKind.PROPOSE) in [o.timeout for o in outputs_of(out, ScheduleTimeout)]
    assert not outputs_of(out, RequestProposal)
    assert (core.height, core.round, core.step) == (1, 0, Step.PROPOSE)


def test_proposer_gets_value_signs_persists_then_broadcasts() -> None:  # L14-L19
    index = KEYS.index(proposer_key(1, 0))
    core, out = started(index)
    request = outputs_of(out, RequestProposal)[0]
    assert (request.height, request.round, request.prev_block_hash) == (1, 0, ZERO_HASH)
    out = core.on_proposal_content(1, 0, ProposalContent((b"a", b"b"), b"hdr", 7, ZERO_HASH))
    sent = outputs_of(out, Broadcast)
    prop = sent[0].message
    assert isinstance(prop, Proposal) and prop.pol_round == -1 and prop.verify(DOMAIN)
    assert prop.block.payloads == (b"a", b"b") and prop.block.proposer == KEYS[index].address
    persist = outputs_of(out, Persist)[0]
    assert persist.own and persist.message == prop and out.index(persist) < out.index(sent[0])
    # its own proposal is valid to it: it prevotes for it at once (L22-L24)
    assert own_votes(out, PV)[0].block_hash == prop.block_hash


def test_content_for_a_finished_round_is_refused() -> None:
    index = KEYS.index(proposer_key(1, 0))
    core, _ = started(index)
    core.on_timeout(Timeout(1, 0, TimeoutKind.PROPOSE))
    out = core.on_proposal_content(1, 0, ProposalContent((), b"", 7, ZERO_HASH))
    assert outputs_of(out, Dropped) and not [m for m in own_votes(out) if not m.is_nil]


def test_valid_proposal_is_prevoted_after_the_verdict() -> None:  # L22-L24, L27
    core, _ = started()
    b = block()
    out = feed(core, proposal(b))
    assert outputs_of(out, ValidateBlock)[0].block == b
    assert not own_votes(out)
    out = core.on_validation_result(b.hash, True)
    assert [v.block_hash for v in own_votes(out, PV)] == [b.hash]
    assert core.step == Step.PREVOTE


def test_invalid_proposal_gets_a_nil_prevote() -> None:  # L26
    core, _ = started()
    b = block()
    feed(core, proposal(b))
    out = core.on_validation_result(b.hash, False)
    assert [v.block_hash for v in own_votes(out, PV)] == [ZERO_HASH]


def test_block_not_extending_the_chain_is_invalid_without_asking_the_app() -> None:
    core, _ = started()
    b = block(prev=b"\x01" * 32)
    out = feed(core, proposal(b))
    assert not outputs_of(out, ValidateBlock)
    assert [v.block_hash for v in own_votes(out, PV)] == [ZERO_HASH]


def test_prevote_quorum_of_anything_arms_the_prevote_timeout() -> None:  # L34
    core, _ = started()
    prevote_valid_proposal(core)
    out = feed(core, vote(OTHERS[0], PV, 1, 0, ZERO_HASH), vote(OTHERS[1], PV, 1, 0, b"\x07" * 32))
    assert Timeout(1, 0, TimeoutKind.PREVOTE) in [o.timeout for o in outputs_of(out, ScheduleTimeout)]
    out = core.on_timeout(Timeout(1, 0, TimeoutKind.PREVOTE))  # L61-L64
    assert [v.block_hash for v in own_votes(out, PC)] == [ZERO_HASH]
    assert core.step == Step.PRECOMMIT


def test_polka_locks_and_precommits() -> None:  # L36-L43
    core, _ = started()
    b, _ = prevote_valid_proposal(core)
    out = feed(core, *(vote(k, PV, 1, 0, b.hash) for k in OTHERS[:2]))
    assert [v.block_hash for v in own_votes(out, PC)] == [b.hash]
    assert (core.locked_hash, core.locked_round) == (b.hash, 0)
    assert (core.valid_block, core.valid_round) == (b, 0)


def test_nil_polka_precommits_nil() -> None:  # L44-L46
    core, _ = started()
    prevote_valid_proposal(core)
    out = feed(core, *(vote(k, PV, 1, 0, ZERO_HASH) for k in OTHERS))
    assert [v.block_hash for v in own_votes(out, PC)] == [ZERO_HASH]


def test_precommit_quorum_arms_timeout_and_its_expiry_starts_next_round() -> None:  # L47, L65-L67
    core, _ = started()
    out = feed(core, *(vote(k, PC, 1, 0, ZERO_HASH) for k in OTHERS[:2]),
               vote(OTHERS[2], PC, 1, 0, b"\x05" * 32))
    assert Timeout(1, 0, TimeoutKind.PRECOMMIT) in [o.timeout for o in outputs_of(out, ScheduleTimeout)]
    core.on_timeout(Timeout(1, 0, TimeoutKind.PRECOMMIT))
    assert (core.round, core.step) == (1, Step.PROPOSE)


def test_timeouts_grow_with_the_round_and_stale_ones_are_ignored() -> None:  # L57-L60
    core, _ = started()
    assert core.timeouts.duration(TimeoutKind.PROPOSE, 3) > core.timeouts.duration(TimeoutKind.PROPOSE, 0)
    assert core.on_timeout(Timeout(1, 5, TimeoutKind.PROPOSE)) == []
    assert core.on_timeout(Timeout(2, 0, TimeoutKind.PROPOSE)) == []
    out = core.on_timeout(Timeout(1, 0, TimeoutKind.PROPOSE))
    assert [v.block_hash for v in own_votes(out, PV)] == [ZERO_HASH] and core.step == Step.PREVOTE


def test_decision_with_certificate() -> None:  # L49-L54
    core, _ = started()
    b, _ = prevote_valid_proposal(core)
    out = feed(core, *(vote(k, PC, 1, 0, b.hash) for k in OTHERS))
    commit = outputs_of(out, Commit)[0]
    assert commit.block == b
    assert verify_certificate(commit.certificate, VALIDATORS, DOMAIN, b.hash)
    assert (core.height, core.round, core.prev_block_hash) == (2, 0, b.hash)
    assert core.locked_round == -1 and core.valid_block is None  # L53


def test_decision_for_an_earlier_round() -> None:  # L49 holds for any round r
    core, _ = started()
    b, _ = prevote_valid_proposal(core)
    core.on_timeout(Timeout(1, 0, TimeoutKind.PREVOTE))
    feed(core, *(vote(k, PC, 1, 3, ZERO_HASH) for k in OTHERS[:2]))  # f+1 in round 3: L55
    assert core.round == 3
    out = feed(core, *(vote(k, PC, 1, 0, b.hash) for k in OTHERS))
    assert outputs_of(out, Commit)[0].certificate.round == 0


def test_f_plus_one_messages_of_a_higher_round_skip_ahead() -> None:  # L55-L56
    core, _ = started()
    feed(core, vote(OTHERS[0], PV, 1, 4, ZERO_HASH))
    assert core.round == 0  # one validator could be faulty
    feed(core, vote(OTHERS[1], PC, 1, 4, ZERO_HASH))
    assert (core.round, core.step) == (4, Step.PROPOSE)


def test_locked_validator_prevotes_nil_for_another_value() -> None:  # L23
    core, _ = started()
    b, _ = prevote_valid_proposal(core)
    feed(core, *(vote(k, PV, 1, 0, b.hash) for k in OTHERS[:2]))  # locks on b in round 0
    feed(core, *(vote(k, PV, 1, 1, ZERO_HASH) for k in OTHERS[:2]))  # to round 1
    other = block(payloads=(b"other",), timestamp=2000)
    out = feed(core, proposal(other, 1))
    out += core.on_validation_result(other.hash, True)
    assert [v.block_hash for v in own_votes(out, PV)] == [ZERO_HASH]


def test_newer_polka_unlocks() -> None:  # L28-L30
    core, _ = started()
    b, _ = prevote_valid_proposal(core)
    feed(core, *(vote(k, PV, 1, 0, b.hash) for k in OTHERS[:2]))  # locked on b, round 0
    other = block(payloads=(b"other",), timestamp=2000)
    feed(core, *(vote(k, PV, 1, 1, other.hash) for k in OTHERS))  # polka for other in round 1
    feed(core, *(vote(k, PC, 1, 2, ZERO_HASH) for k in OTHERS[:2]))  # to round 2
    assert core.round == 2 and core.locked_round == 0
    out = feed(core, proposal(other, 2, pol_round=1))
    out += core.on_validation_result(other.hash, True)
    assert [v.block_hash for v in own_votes(out, PV) if v.round == 2] == [other.hash]


def test_proposal_with_unseen_pol_round_waits() -> None:  # L28 needs the polka
    core, _ = started()
    feed(core, *(vote(k, PC, 1, 1, ZERO_HASH) for k in OTHERS[:2]))
    out = feed(core, proposal(block(), 1, pol_round=0))
    out += core.on_validation_result(block().hash, True)
    assert not own_votes(out, PV) and core.step == Step.PROPOSE


def test_proposer_reproposes_its_valid_value() -> None:  # L15-L16, L19
    index = KEYS.index(proposer_key(1, 1))
    core = core_for(index)
    core.start()
    b = block()
    feed(core, proposal(b, 0))
    core.on_validation_result(b.hash, True)
    others = [k for k in KEYS if k.address != core.address]
    feed(core, *(vote(k, PV, 1, 0, b.hash) for k in others[:2]))
    assert core.valid_round == 0
    out = core.on_timeout(Timeout(1, 0, TimeoutKind.PRECOMMIT))  # L65-L67: StartRound(1)
    props = [o.message for o in outputs_of(out, Broadcast) if isinstance(o.message, Proposal)]
    assert props and props[0].block == b and props[0].pol_round == 0 and props[0].round == 1
    assert not outputs_of(out, RequestProposal)


def test_restored_node_never_signs_a_different_vote_in_a_slot() -> None:
    core, _ = started()
    b, out = prevote_valid_proposal(core)
    signed = own_votes(out, PV)[0]
    again = core_for(ME)
    out = again.restore([signed])
    assert again.step == Step.PREVOTE
    other = block(payloads=(b"x",))
    out += feed(again, proposal(other))
    out += again.on_validation_result(other.hash, True)
    assert {v.block_hash for v in own_votes(out, PV)} == {b.hash}
    assert not [p for p in outputs_of(out, Persist) if p.own and p.message.vote_type == PV]


def test_restored_lock_is_respected() -> None:
    core, _ = started()
    b, _ = prevote_valid_proposal(core)
    out = feed(core, *(vote(k, PV, 1, 0, b.hash) for k in OTHERS[:2]))
    precommit = own_votes(out, PC)[0]
    again = core_for(ME)
    again.restore([proposal(b), precommit])
    assert (again.locked_hash, again.locked_round, again.valid_round) == (b.hash, 0, 0)


# --------------------------------------------------------------------------- hostile inputs


@pytest.mark.parametrize("data", [
    b"", b"\x00", b"\xff" * 10, msgpack.packb([1, 99]), msgpack.packb([2, 2]),
    msgpack.packb({"a": 1}), msgpack.packb([1, 2, 1, 1, 0, b"x", b"y", b"z"]),
    msgpack.packb([1, True, 1]),
])
def test_garbage_is_dropped(data: Any) -> None:
    core, _ = started()
    out = core.on_message(data, "evil")
    assert [o.peer for o in outputs_of(out, Dropped)] == ["evil"]
    assert (core.height, core.round, core.step) == (1, 0, Step.PROPOSE)


def test_non_validator_vote_is_dropped() -> None:
    core, _ = started()
    out = feed(core, vote(OUTSIDER, PV, 1, 0, ZERO_HASH), vote(OUTSIDER, PC, 1, 9, ZERO_HASH))
    assert len(outputs_of(out, Dropped)) == 2 and core.round == 0


def test_bad_signature_is_dropped() -> None:
    core, _ = started()
    good = vote(OTHERS[0], PV, 1, 0, ZERO_HASH)
    forged = Vote(good.vote_type, 1, 0, ZERO_HASH, OTHERS[1].address, good.signature)
    out = feed(core, forged)
    assert "signature" in outputs_of(out, Dropped)[0].reason


def test_proposal_from_the_wrong_proposer_is_dropped() -> None:
    core, _ = started()
    wrong = next(k for k in KEYS if k.address != VALIDATORS.proposer(1, 0))
    out = feed(core, proposal(block(), 0, key=wrong))
    assert outputs_of(out, Dropped) and not outputs_of(out, ValidateBlock)


def test_oversize_block_is_rejected_on_the_wire() -> None:
    core, _ = started()
    b = [1, 1000, KEYS[1].address, ZERO_HASH, ZERO_HASH, [b"p"] * 5000, b""]
    data = msgpack.packb([1, 1, 1, 0, -1, b, KEYS[1].address, b"\x00" * 65], use_bin_type=True)
    assert outputs_of(core.on_message(data, "evil"), Dropped)


def test_rounds_far_ahead_are_dropped() -> None:
    core, _ = started()
    out = feed(core, vote(OTHERS[0], PV, 1, MAX_ROUNDS_AHEAD + 1, ZERO_HASH))
    assert "ahead" in outputs_of(out, Dropped)[0].reason


def test_double_vote_is_reported_as_verifiable_evidence() -> None:
    core, _ = started()
    first = vote(OTHERS[0], PV, 1, 0, ZERO_HASH)
    second = vote(OTHERS[0], PV, 1, 0, b"\x09" * 32)
    out = feed(core, first, second, second)
    reports = outputs_of(out, ReportEvidence)
    assert len(reports) == 1
    evidence = reports[0].evidence
    assert evidence.kind == EvidenceKind.DUPLICATE_VOTE and evidence.verify(DOMAIN)
    assert evidence.validator == OTHERS[0].address


def test_equivocating_proposer_is_reported() -> None:
    core, _ = started()
    out = feed(core, proposal(block()), proposal(block(payloads=(b"twin",))))
    evidence = outputs_of(out, ReportEvidence)[0].evidence
    assert evidence.kind == EvidenceKind.DUPLICATE_PROPOSAL and evidence.verify(DOMAIN)


def decide_height_one(core: Any) -> tuple[Any, Any]:
    b, _ = prevote_valid_proposal(core)
    out = feed(core, *(vote(k, PC, 1, 0, b.hash) for k in OTHERS))
    return b, outputs_of(out, Commit)[0]


def test_old_height_messages_get_the_certified_block() -> None:
    core, _ = started()
    b, commit = decide_height_one(core)
    out = feed(core, vote(OTHERS[0], PV, 1, 2, ZERO_HASH), sender="late")
    sent = outputs_of(out, SendTo)
    assert sent[0].peer == "late" and sent[0].message == CommittedBlock(b, commit.certificate)


def test_next_height_messages_wait_and_are_replayed_after_the_decision() -> None:
    core, _ = started()
    b1 = block()
    b2 = block(2, prev=b1.hash, timestamp=2000, proposer=KEYS[2].address)
    early = proposal(b2, 0)
    out = feed(core, early)
    assert not outputs_of(out, ValidateBlock)
    decide_height_one(core)
    out = core.on_timeout(Timeout(2, 0, TimeoutKind.RETRANSMIT))  # the next input replays
    assert [o.block for o in outputs_of(out, ValidateBlock)] == [b2]


def test_catch_up_after_f_plus_one_ahead() -> None:
    core, _ = started()
    out = feed(core, vote(OTHERS[0], PV, 3, 0, ZERO_HASH), sender="a")
    assert not outputs_of(out, RequestCatchUp)
    out = feed(core, vote(OTHERS[1], PV, 3, 0, ZERO_HASH), sender="b")
    assert outputs_of(out, RequestCatchUp) == [RequestCatchUp("b", 1)]


def test_certified_block_is_committed_and_forged_one_refused() -> None:
    source, _ = started(1)
    b, commit = decide_height_one_for(source)
    core, _ = started()
    forged = CommitCertificate(1, 0, b.hash, tuple(sorted(
        [OUTSIDER.sign(commit.certificate.digest(DOMAIN))] + list(commit.certificate.signatures[:2]))))
    out = core.on_committed_block(CommittedBlock(b, forged), "evil")
    assert outputs_of(out, Dropped) and core.height == 1
    out = core.on_committed_block(CommittedBlock(b, commit.certificate), "good")
    assert outputs_of(out, Commit)[0].block == b and core.height == 2


def decide_height_one_for(core: Any) -> tuple[Any, Any]:
    if not core.started:
        core.start()
    others = [k for k in KEYS if k.address != core.address]
    b = block()
    feed(core, proposal(b))
    core.on_validation_result(b.hash, True)
    out = feed(core, *(vote(k, PC, 1, 0, b.hash) for k in others))
    return b, outputs_of(out, Commit)[0]


def test_one_decision_per_input() -> None:
    core, _ = started()
    b1 = block()
    b2 = block(2, prev=b1.hash, timestamp=2000, proposer=KEYS[2].address)
    feed(core, proposal(b2, 0), *(vote(k, PC, 2, 0, b2.hash) for k in OTHERS))  # buffered
    _, commit = decide_height_one_for(core_for(2))
    out = core.on_committed_block(CommittedBlock(b1, commit.certificate))
    assert [c.block.height for c in outputs_of(out, Commit)] == [1]
    out = core.on_timeout(Timeout(2, 0, TimeoutKind.RETRANSMIT))
    out += core.on_validation_result(b2.hash, True)
    assert [c.block.height for c in outputs_of(out, Commit)] == [2]


def test_validator_set_change_takes_effect_at_its_height() -> None:
    core, _ = started()
    weighted = ValidatorSet(VALIDATORS.addresses, (3, 1, 1, 1), 1)
    with pytest.raises(ValueError):
        core.set_validators(1, weighted)
    core.set_validators(3, weighted)
    assert core.schedule.set_for(2) == VALIDATORS and core.schedule.set_for(3) == weighted
    assert weighted.quorum_power == 5 and weighted.skip_power == 3
    assert core.set_validators(3, weighted) == []  # idempotent (re-applied after restart)


def test_non_validator_node_follows_without_signing() -> None:
    others_only = ValidatorSet.equal([k.address for k in OTHERS])
    core = core_for(ME, validators=others_only)
    core.start()
    out = core.on_timeout(Timeout(1, 0, TimeoutKind.PROPOSE))
    assert core.step == Step.PREVOTE and not own_votes(out)


def test_a_long_height_forgets_old_rounds_but_keeps_its_lock() -> None:
    from consensus.core import MAX_ROUNDS_BEHIND

    core, _ = started()
    b, _ = prevote_valid_proposal(core)
    feed(core, *(vote(k, PV, 1, 0, b.hash) for k in OTHERS[:2]))  # locked in round 0
    for r in range(1, MAX_ROUNDS_BEHIND + 10):
        feed(core, vote(OTHERS[2], PV, 1, r, ZERO_HASH))
        core.on_timeout(Timeout(1, r - 1, TimeoutKind.PRECOMMIT))
    assert core.round == MAX_ROUNDS_BEHIND + 9
    rounds = {r for r, _ in core._state.votes}
    assert 0 in rounds and 1 not in rounds and len(rounds) <= MAX_ROUNDS_BEHIND + 2
    assert core.locked_round == 0


def test_one_validators_flood_of_future_messages_leaves_room_for_the_others() -> None:
    from consensus.core import MAX_FUTURE_MESSAGES, MIN_FUTURE_PER_SIGNER

    core = core_for(0)
    core.start()
    flooder = KEYS[1]
    for r in range(MAX_FUTURE_MESSAGES + 10):  # distinct, validly signed, height + 1
        core.on_message(vote(flooder, VoteType.PREVOTE, 2, r, ZERO_HASH).to_bytes(), "1")
    share = max(MIN_FUTURE_PER_SIGNER, MAX_FUTURE_MESSAGES // 4)
    assert len(core._future) == share  # the flooder filled only its own share
    honest = vote(KEYS[2], VoteType.PREVOTE, 2, 0, ZERO_HASH)
    out = core.on_message(honest.to_bytes(), "2")
    assert not [o for o in out if isinstance(o, Dropped)]
    assert len(core._future) == share + 1
