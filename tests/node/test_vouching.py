"""Every event is vouched for by the validator that authenticated the charger (issue 10 item 2).

A Byzantine validator forging a charger event for any charger must fail at mempool admission
(`check_tx`) and a block carrying the forgery must fail `process_proposal`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import pytest
from test_node_app import ANCHOR, KEYS, block, make_app

from ocpp_adapter.events import ChargerEvent, EventEncodingError
from ocpp_adapter.vouching import VouchCache, ingress_domain, vouch, vouch_digest, vouch_problem
from primitives.eip712 import SigningKey, recover_address

DOMAIN = ingress_domain(ANCHOR)
OUTSIDER = SigningKey(b"\x09" * 32)
VALIDATORS = tuple(k.address for k in KEYS)


def unsigned(message_id: str = "m1", meter_stop: int = 1000) -> ChargerEvent:
    return ChargerEvent("CP-1", "1.6", "StopTransaction", message_id,
                        {"transactionId": 1, "meterStop": meter_stop, "timestamp": "2026-01-01T00:00:00Z"},
                        "", 1_700_000_000_000, b"\x07" * 16)


def forgeries() -> dict[str, ChargerEvent]:
    good = vouch(unsigned(), KEYS[0], DOMAIN)
    by_a_naming_b = good.with_vouch(KEYS[1].address, good.signature)
    tampered = ChargerEvent(good.charger_id, good.ocpp_version, good.action, good.message_id,
                            {**good.payload, "meterStop": 2**62}, good.ingress_node, good.received_at_ms,
                            good.connection_id, good.signature)
    other_connection = ChargerEvent(good.charger_id, good.ocpp_version, good.action, good.message_id,
                                    good.payload, good.ingress_node, good.received_at_ms, b"\x08" * 16,
                                    good.signature)
    high_s = good.with_vouch(KEYS[0].address, good.signature[:32] + b"\xff" * 32 + good.signature[64:])
    return {"unsigned": unsigned(), "non-validator": vouch(unsigned(), OUTSIDER, DOMAIN),
            "signed by A naming B": by_a_naming_b, "tampered payload": tampered,
            "other connection": other_connection, "malformed signature": high_s,
            "other network": vouch(unsigned(), KEYS[0], ingress_domain(type(ANCHOR)(1, b"\x0a" * 20)))}


def test_vouched_event_round_trips_and_verifies() -> None:
    event = vouch(unsigned(), KEYS[2], DOMAIN)
    assert event.ingress_node == "0x" + KEYS[2].address.hex()
    assert ChargerEvent.from_bytes(event.to_bytes()) == event
    assert vouch_problem(event, DOMAIN, VALIDATORS) is None
    # a retry at another node (other ingress, time, connection, signature) still dedupes
    retry = vouch(ChargerEvent(event.charger_id, "1.6", event.action, event.message_id, event.payload, "",
                               event.received_at_ms + 5000, b"\x01" * 16), KEYS[3], DOMAIN)
    assert retry.dedup_key == event.dedup_key and retry.event_id != event.event_id


@pytest.mark.parametrize("name", list(forgeries()))
def test_forged_event_refused_by_the_pure_check(name: Any) -> None:
    assert vouch_problem(forgeries()[name], DOMAIN, VALIDATORS) is not None


@pytest.mark.parametrize("name", list(forgeries()))
def test_forged_event_refused_at_admission_and_in_blocks(tmp_path: Path, name: Any) -> None:
    app, *_ = make_app(tmp_path)

    def valid(b: Any) -> bool:
        return app.process_proposal(b, app.fetch_facts(b.height, b.app_header, b.payloads))

    forged = forgeries()[name].to_bytes()
    assert not app.check_tx(forged).ok
    assert not valid(block(app, 1, (forged,)))
    good = vouch(unsigned(), KEYS[1], DOMAIN).to_bytes()
    assert app.check_tx(good).ok
    assert valid(block(app, 1, (good,)))
    assert not valid(block(app, 1, (good, forged)))  # one forgery spoils the block


def test_version_1_event_refused() -> None:
    import msgpack
    v1 = msgpack.packb([1, "CP-1", "1.6", "Heartbeat", "m", {}, "node-1", 5], use_bin_type=True)
    with pytest.raises(EventEncodingError, match="version-2"):
        ChargerEvent.from_bytes(v1)


def test_cache_recovers_once_and_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import ocpp_adapter.vouching as vouching
    calls: list[int] = []
    real = recover_address
    monkeypatch.setattr(vouching, "recover_address", lambda d, s: cast(Any, calls.append(1)) or real(d, s))
    cache = VouchCache(DOMAIN, limit=2)
    events = [vouch(unsigned(f"m{i}"), KEYS[0], DOMAIN) for i in range(3)]
    assert cache.problem(events[0], VALIDATORS) is None and cache.problem(events[0], VALIDATORS) is None
    assert len(calls) == 1
    assert cache.problem(events[0], VALIDATORS[1:]) is not None  # membership is checked on every call
    for e in events:
        cache.problem(e, VALIDATORS)
    assert len(cache._signers) == 2


def test_cost_per_event(capsys: pytest.CaptureFixture[str]) -> None:
    """Measured cost of signing and verifying one vouch (reported, loosely bounded)."""
    events = [unsigned(f"m{i}") for i in range(300)]
    start = time.perf_counter()
    signed = [vouch(e, KEYS[0], DOMAIN) for e in events]
    sign_us = (time.perf_counter() - start) / len(events) * 1e6
    start = time.perf_counter()
    assert all(vouch_problem(e, DOMAIN, VALIDATORS) is None for e in signed)
    verify_us = (time.perf_counter() - start) / len(events) * 1e6
    assert vouch_digest(signed[0], DOMAIN) != vouch_digest(signed[1], DOMAIN)
    with capsys.disabled():
        print(f"\nvouch: sign {sign_us:.0f} us/event, verify {verify_us:.0f} us/event")
    assert sign_us < 20_000 and verify_us < 20_000


def test_own_vouches_are_admitted_without_recovery_and_match_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import ocpp_adapter.vouching as vouching
    calls: list[int] = []
    real = recover_address
    monkeypatch.setattr(vouching, "recover_address", lambda d, s: cast(Any, calls.append(1)) or real(d, s))
    cache = VouchCache(DOMAIN)
    for i in range(20):
        own = cache.remember_own(unsigned(f"own{i}", meter_stop=i), KEYS[0])
        assert own == vouch(unsigned(f"own{i}", meter_stop=i), KEYS[0], DOMAIN)  # the same event vouch() gives
        assert cache.problem(own, VALIDATORS) is None
        assert real(vouch_digest(own, DOMAIN), own.signature) == KEYS[0].address  # what recovery would give
    assert calls == []
    assert cache.problem(own, VALIDATORS[1:]) is not None  # membership is still checked on every call
    # A hostile copy (same body, another signature) has another event id: recovered, and refused.
    forged = own.with_vouch(KEYS[0].address, OUTSIDER.sign(vouch_digest(own.with_vouch(KEYS[0].address, b""), DOMAIN)))
    assert cache.problem(forged, VALIDATORS) is not None and calls == [1]
