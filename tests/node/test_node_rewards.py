"""NodeApplication and uptime rewards: a closed reward epoch is signed (payload 0xA5) and its
quorum formed on the attestation path, like anchors and settlements."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_node_app import ANCHOR, ESCROW, KEYS, VALIDATORS, Shell, StaticChain, block, event

from anchoring.attestations import (
    REWARD_ATTESTATION_TAG,
    AttestationError,
    attest,
    decode_attestation,
)
from anchoring.batches import BatchPolicy, Quorum
from anchoring.proofs import AnchorIndex
from anchoring.rewards import RewardSubject
from devsen.app import AppSettings, NodeApplication
from devsen.ledger import Ledger, LedgerParams
from devsen.ledger.uptime import OwnerReward, RewardDistribution
from primitives.eip712 import Domain

REWARDS = Domain(31337, b"\x0b" * 20)
PARAMS = LedgerParams(reward_epoch_ms=10_000, offline_after_ms=5_000, reward_pool_per_epoch=1_000)


def make(tmp_path, key=KEYS[0], rewards: Domain | None = REWARDS):  # type: ignore[no-untyped-def]
    settings = AppSettings(key, VALIDATORS, ANCHOR, ESCROW, BatchPolicy(every_blocks=1000, every_ms=10**9), 2,
                           rewards_domain=rewards)
    app = NodeApplication(settings, StaticChain(), Ledger(PARAMS), AnchorIndex(tmp_path / f"a{key.address.hex()}.db"))
    return app, Shell(app)


def run_epoch(shell: Shell) -> None:
    """CP-1 boots, both connectors Available, heartbeats; block 10 (t = 10 s) closes the epoch."""
    status = [event(f"s{c}", "StatusNotification", {"connectorId": c, "errorCode": "NoError", "status": "Available"})
              for c in (1, 2)]
    shell.finalize(block(shell.app, 1, (event("boot"), *status)))
    for height in range(2, 11):
        shell.finalize(block(shell.app, height, (event(f"hb{height}", "Heartbeat", {}),)))


def test_closed_epoch_is_signed_and_reaches_a_quorum(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app, shell = make(tmp_path)
    run_epoch(shell)
    rewards = [p for p in shell.own if p[0] == REWARD_ATTESTATION_TAG]
    assert len(rewards) == 1
    mine = decode_attestation(rewards[0])
    assert isinstance(mine.subject, RewardSubject) and mine.subject.epoch == 1_700_000_000_000 // 10_000
    assert mine.subject.payouts == ((b"\x11" * 20, 1_000),)  # the only owner takes the whole pool
    mine.verify(REWARDS)
    others = tuple(attest(mine.subject, k, REWARDS).encode() for k in KEYS[1:3])
    shell.finalize(block(app, 11, (rewards[0], *others)))
    quorums = [q for q in shell.quorums if isinstance(q, Quorum) and isinstance(q.subject, RewardSubject)]
    assert len(quorums) == 1 and len(quorums[0].signatures) == 3


def test_without_a_rewards_contract_nothing_is_signed_and_attestations_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app, shell = make(tmp_path, rewards=None)
    run_epoch(shell)
    assert not [p for p in shell.own if p[0] == REWARD_ATTESTATION_TAG]
    assert app.ledger.reward_distributions()  # the ledger still accounts (same state on every node)
    subject = RewardSubject(1, ((b"\x11" * 20, 1_000),))
    check = app.check_tx(attest(subject, KEYS[1], REWARDS).encode())
    assert not check.ok


def test_an_attestation_for_other_payouts_does_not_count(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app, shell = make(tmp_path)
    run_epoch(shell)
    epoch = 1_700_000_000_000 // 10_000
    greedy = RewardSubject(epoch, ((b"\x66" * 20, 1_000),))  # a Byzantine validator pays itself
    before = app.counters["attestations_ignored"]
    shell.finalize(block(app, 11, tuple(attest(greedy, k, REWARDS).encode() for k in KEYS[1:4])))
    assert app.counters["attestations_ignored"] == before + 3
    assert not [q for q in shell.quorums if isinstance(q, Quorum) and isinstance(q.subject, RewardSubject)]


def test_reward_subjects_survive_the_app_snapshot_encoding() -> None:
    from devsen.beside_ledger import subject_fields as _subject_fields
    from devsen.beside_ledger import subject_from_fields as _subject_from_fields

    subject = RewardSubject(9, ((b"\x01" * 20, 5), (b"\x02" * 20, 2**255)))
    assert _subject_from_fields(_subject_fields(subject)) == subject


def test_an_epoch_of_450_owners_is_signed_as_3_parts_and_a_foreign_split_does_not_count(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app, _shell = make(tmp_path)
    owners = ["0x" + (i * 31).to_bytes(20, "big").hex() for i in range(1, 451)]
    dist = RewardDistribution(77, 10_000, 450_000, 450, tuple(OwnerReward(o, 1_000, 1) for o in owners), ())
    app._expect_rewards(dist)
    subjects = [s for s in app.book.open_subjects() if isinstance(s, RewardSubject)]
    assert [(s.part, s.parts, len(s.payouts)) for s in subjects] == [(0, 3, 200), (1, 3, 200), (2, 3, 50)]
    signed = [decode_attestation(p) for p in app._outbound if p[0] == REWARD_ATTESTATION_TAG]
    assert [a.subject for a in signed] == subjects  # each part signed by this validator
    # hostile: part 1 re-cut as "part 1 of 2" (a Byzantine split) is not the node's part 1
    foreign = replace(subjects[1], parts=2)
    with pytest.raises(AttestationError, match="different terms"):
        app.book.check(attest(foreign, KEYS[1], REWARDS))
    app.book.check(attest(subjects[1], KEYS[1], REWARDS))  # the node's own part 1 counts


def test_reward_parts_survive_the_wire_and_snapshot_encodings() -> None:
    from devsen.beside_ledger import subject_fields as _subject_fields
    from devsen.beside_ledger import subject_from_fields as _subject_from_fields

    subject = RewardSubject(9, ((b"\x01" * 20, 5),), 2, 3)
    assert _subject_from_fields(_subject_fields(subject)) == subject
    assert decode_attestation(attest(subject, KEYS[0], REWARDS).encode()).subject == subject
    old_form = [2, 9, [[b"\x01" * 20, (5).to_bytes(32, "big")]]]  # a snapshot from before parts: one part
    assert _subject_from_fields(old_form) == RewardSubject(9, ((b"\x01" * 20, 5),))
