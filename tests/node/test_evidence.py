"""Evidence against validators (devsen/evidence.py): signed events the network capped or
refused for the signer's own vouch are kept, bounded and durable, for slashing (issue 15)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_node_app import ANCHOR, KEYS
from test_vouching import OUTSIDER, forgeries, unsigned

from consensus.abci import TxResult
from devsen import evidence as ev
from devsen.app import event_tx_result
from devsen.evidence import EvidenceRecorder, EvidenceStore, admission_evidence, block_evidence
from devsen.ledger import EventResult
from ocpp_adapter.events import ChargerEvent
from ocpp_adapter.vouching import ingress_domain, vouch, vouch_digest, vouch_problem

DOMAIN = ingress_domain(ANCHOR)
VALIDATORS = tuple(k.address for k in KEYS)


def lie(message_id: str, signer: int, named: int) -> bytes:
    """An event validator `signer` signs while naming validator `named` as its ingress."""
    event = unsigned(message_id).with_vouch(KEYS[named].address, b"")
    return event.with_vouch(KEYS[named].address, KEYS[signer].sign(vouch_digest(event, DOMAIN))).to_bytes()


def capped_result(event_id: bytes) -> TxResult:
    """The TxResult the application gives an event the ledger capped (its real format)."""
    return event_tx_result(EventResult(event_id, b"k", {}, anomalies=("energy_capped",)))


def test_a_capped_event_in_a_block_is_evidence_against_its_voucher() -> None:
    forged = vouch(unsigned("forged", meter_stop=2**62), KEYS[3], DOMAIN)
    honest = vouch(unsigned("honest"), KEYS[0], DOMAIN)
    payloads = [honest.to_bytes(), forged.to_bytes(), b"\x02attestation-ish"]
    results = [event_tx_result(EventResult(honest.event_id, b"h", {})), capped_result(forged.event_id), TxResult()]
    (record,) = block_evidence(7, payloads, results, lambda event, kind: f"{kind} of {event.message_id}")
    assert record.validator == KEYS[3].address and record.reason == "energy_capped" and record.height == 7
    assert record.event == forged.to_bytes() and record.detail == "energy_capped of forged"
    assert record.source == "block" and record.to_json()["validator"] == "0x" + KEYS[3].address.hex()


def test_block_evidence_is_total_on_hostile_input() -> None:
    assert block_evidence(1, [b"\x01garbage"], [capped_result(b"x")]) == []
    assert block_evidence(1, [b""], [capped_result(b"x")]) == []
    assert block_evidence(1, [vouch(unsigned(), KEYS[0], DOMAIN).to_bytes()], []) == []  # misaligned
    hostile_info = TxResult(info=(("anomalies", 5),))
    assert block_evidence(1, [vouch(unsigned(), KEYS[0], DOMAIN).to_bytes()], [hostile_info]) == []


def test_a_vouch_naming_another_validator_is_evidence_against_the_signer() -> None:
    record = admission_evidence(lie("m", 0, 1), DOMAIN, VALIDATORS, 42)
    assert record is not None and record.validator == KEYS[0].address
    assert record.reason == "misattributed" and record.height == 42 and record.source == "admission"
    assert "0x" + KEYS[1].address.hex() in record.detail


def test_unattributable_forgeries_are_no_evidence() -> None:
    """Unsigned, outsider-signed and tampered events prove nothing against a validator."""
    # (a signature copied onto an event naming someone else recovers to nobody in particular)
    for name in ("unsigned", "non-validator", "signed by A naming B", "tampered payload", "other network", "malformed signature"):
        assert admission_evidence(forgeries()[name].to_bytes(), DOMAIN, VALIDATORS, 1) is None, name
    outsider_naming_a = vouch(unsigned(), OUTSIDER, DOMAIN).with_vouch(KEYS[0].address, b"")
    assert admission_evidence(outsider_naming_a.to_bytes(), DOMAIN, VALIDATORS, 1) is None
    assert admission_evidence(b"\xff junk", DOMAIN, VALIDATORS, 1) is None


def _record(validator: int, n: int) -> ev.EvidenceRecord:
    return ev.EvidenceRecord(KEYS[validator].address, n.to_bytes(32, "big"), "energy_capped", n, "", b"e", "block")


def test_store_is_durable_and_idempotent(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path / "evidence.sqlite")
    assert store.add([_record(3, 1), _record(3, 2)]) == 2
    assert store.add([_record(3, 1)]) == 0  # a replayed block adds nothing
    store.close()
    again = EvidenceStore(tmp_path / "evidence.sqlite")
    assert [r.height for r in again.of(KEYS[3].address)] == [1, 2]
    assert again.counts() == {KEYS[3].address: 2}


def test_one_validators_flood_fills_only_its_own_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ev, "MAX_RECORDS_PER_VALIDATOR", 5)
    monkeypatch.setattr(ev, "MAX_RECORDS", 8)
    store = EvidenceStore(tmp_path / "evidence.sqlite")
    store.add([_record(0, 1000)])
    store.add([_record(3, n) for n in range(50)])  # the Byzantine validator floods
    assert store.counts() == {KEYS[0].address: 1, KEYS[3].address: 5}
    assert store.add([_record(1, 2000), _record(1, 2001)]) == 2  # another validator's evidence still fits
    assert store.add([_record(2, 3000), _record(2, 3001)]) == 0  # the total bound
    assert store.dropped == 45 + 2
    assert [r.height for r in store.of(KEYS[3].address)] == [0, 1, 2, 3, 4]  # the first kept, never evicted


def test_recorder_spends_bounded_work_on_refused_events(tmp_path: Path) -> None:
    now = [0.0]
    recorder = EvidenceRecorder(EvidenceStore(tmp_path / "e.sqlite"), DOMAIN, lambda: VALIDATORS, lambda: 9,
                                clock=lambda: now[0])
    lies = [lie(f"m{i}", 2, 1) for i in range(4)]
    reason = vouch_problem(ChargerEvent.from_bytes(lies[0]), DOMAIN, VALIDATORS)  # admission's real wording
    assert reason is not None
    recorder.on_refused(b"\xff", reason)
    recorder.on_refused(unsigned().to_bytes(), "the event is not vouched for")  # no recovery at all
    for event in lies[:2]:
        recorder.on_refused(event, reason)
    assert [r.height for r in recorder.store.of(KEYS[2].address)] == [9, 9]
    for _ in range(ev.ADMISSION_CHECKS_PER_S - 2):
        recorder.on_refused(lies[0], reason)
    recorder.on_refused(lies[2], reason)  # over this second's budget: not even recovered
    assert recorder.admission_skipped == 1 and len(recorder.store.of(KEYS[2].address)) == 2
    now[0] = 1.5
    recorder.on_refused(lies[3], reason)
    assert len(recorder.store.of(KEYS[2].address)) == 3
