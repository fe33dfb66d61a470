"""idTags travel only as hashes: the canonical event form, its refusal of plaintext, the ledger on hashes.

A ChargerEvent hashes every idTag field when built (ocpp_adapter/events.py); bytes carrying a
plaintext (or a malformed hashed) idTag do not decode, so no block with one is valid; the
ledger reads only the hashed form and answers exactly as it did on plaintext.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from ledger_world import (
    ACCEPTED_16,
    ACCEPTED_201,
    CHARGER,
    CHARGER_201,
    ESCROW_1,
    T0_MS,
    World,
    ev,
    start16,
    stop16,
    tx_event,
)

from devsen.app import split_payloads
from devsen.ledger import id_tag_hash, session_token, session_token_hash
from devsen.ledger.parse import MalformedPayload, get_tag_hash
from ocpp_adapter.events import (
    ChargerEvent,
    EventEncodingError,
    hash_id_tags,
    hashed_id_tag,
    tag_hash_of,
)

TAG = "04A2B3C4D5E6F7"
HASHED = "keccak256:" + id_tag_hash(TAG).hex()
TOKEN = {"idToken": TAG, "type": "ISO14443", "additionalInfo": [{"additionalIdToken": "EXTRA-1", "type": "x"}]}
EVENTS: list[tuple[str, str, dict[str, Any]]] = [
    ("1.6", "Authorize", {"idTag": TAG}),
    ("1.6", "StartTransaction", {"connectorId": 1, "idTag": TAG, "meterStart": 0, "timestamp": "2026-01-01T00:00:00Z"}),
    ("1.6", "StopTransaction", {"transactionId": 1, "idTag": TAG, "meterStop": 5, "timestamp": "2026-01-01T00:00:00Z"}),
    ("2.0.1", "Authorize", {"idToken": TOKEN, "certificate": "-----BEGIN CERTIFICATE----- " + TAG}),
    ("2.0.1", "TransactionEvent", {"eventType": "Started", "timestamp": "2026-01-01T00:00:00Z", "seqNo": 0,
                                   "triggerReason": "Authorized", "transactionInfo": {"transactionId": "t"},
                                   "idToken": TOKEN}),
]


def build(version: str, action: str, payload: dict[str, Any]) -> ChargerEvent:
    return ChargerEvent("CP-1", version, action, "m1", payload, "0x" + "a1" * 20, T0_MS)


def with_payload(event: ChargerEvent, payload: Any) -> bytes:
    """`event`'s canonical bytes with another payload, packed by hand (what a Byzantine proposer can send)."""
    fields = msgpack.unpackb(event.to_bytes(), raw=False)
    fields[5] = payload
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


@pytest.mark.parametrize(("version", "action", "payload"), EVENTS)
def test_every_id_tag_field_is_hashed_and_round_trips(version: str, action: str, payload: dict[str, Any]) -> None:
    event = build(version, action, payload)
    data = event.to_bytes()
    for secret in (TAG, "EXTRA-1"):
        assert secret.encode() not in data and secret.encode().hex().encode() not in data.hex().encode()
    assert HASHED.encode() in data
    assert ChargerEvent.from_bytes(data) == event
    assert payload["idTag" if version == "1.6" else "idToken"] in (TAG, TOKEN)  # the caller's dict is untouched
    assert build(version, action, event.payload) == event  # hashing is idempotent
    assert event.dedup_key == build(version, action, payload).dedup_key  # a retry dedups as before


def test_hashed_form_is_the_registry_key() -> None:
    assert hashed_id_tag(TAG) == HASHED and tag_hash_of(HASHED) == id_tag_hash(TAG)
    for bad in (TAG, HASHED[:-1], HASHED + "0", HASHED.upper(), "KECCAK256:" + HASHED[10:], "sha256:" + HASHED[10:],
                HASHED[:-1] + "g", " " + HASHED, 5, None, b"x"):
        assert tag_hash_of(bad) is None
    assert get_tag_hash({"idTag": HASHED}, "idTag") == id_tag_hash(TAG)
    assert get_tag_hash({}, "idTag", required=False) is None
    for wrong in (TAG, HASHED[:-2], 7, {"x": 1}):
        with pytest.raises(MalformedPayload, match="hashed idTag"):
            get_tag_hash({"idTag": wrong}, "idTag")


@pytest.mark.parametrize(("version", "action", "payload"), EVENTS)
def test_bytes_with_a_plaintext_or_malformed_hash_are_refused(version: str, action: str,
                                                              payload: dict[str, Any]) -> None:
    event = build(version, action, payload)
    bad_values = [TAG, HASHED[:-1], HASHED + "a", HASHED.upper(), "keccak256:" + "z" * 64, "keccak256:"]
    for bad in bad_values:
        if version == "1.6":
            forged: dict[str, Any] = {**event.payload, "idTag": bad}
        else:
            forged = {**event.payload, "idToken": {**event.payload["idToken"], "idToken": bad}}
        data = with_payload(event, forged)
        errors = set()
        for _ in range(2):  # deterministic: the same refusal every time
            with pytest.raises(EventEncodingError, match="plaintext idTag") as info:
                ChargerEvent.from_bytes(data)
            errors.add(str(info.value))
        assert len(errors) == 1
        with pytest.raises(ValueError, match="payload 0: .*plaintext idTag"):
            split_payloads((data,))  # the block-validity path: a block carrying it is invalid
    if version == "2.0.1":  # additionalIdToken and the contract certificate too
        token = {**event.payload["idToken"], "additionalInfo": [{"additionalIdToken": "EXTRA-1", "type": "x"}]}
        for forged in ({**event.payload, "idToken": token}, {**event.payload, "certificate": "PEM"}):
            if forged == event.payload or (action != "Authorize" and "certificate" in forged):
                continue
            with pytest.raises(EventEncodingError, match="plaintext idTag"):
                ChargerEvent.from_bytes(with_payload(event, forged))


def test_shapes_hashing_cannot_touch_are_left_for_the_ledger_to_refuse() -> None:
    assert hash_id_tags("1.6", "Authorize", {"idTag": 5}) == {"idTag": 5}
    assert hash_id_tags("2.0.1", "Authorize", {"idToken": ["x"]}) == {"idToken": ["x"]}
    assert hash_id_tags("1.6", "Authorize", {"idToken": {"idToken": "x"}}) != {"idToken": {"idToken": "x"}}
    assert hash_id_tags("1.6", "Authorize", "not a dict") == "not a dict"
    world = World()
    result = world.block(ev("Authorize", {"idTag": 5}, raw=True)).results[0]
    assert result.error_code == "FormationViolation"
    unencodable = build("1.6", "Authorize", {"idTag": "\ud800"})  # a lone surrogate stays, and cannot be encoded
    with pytest.raises(EventEncodingError):
        unencodable.to_bytes()


def test_ledger_refuses_a_plaintext_id_tag_deterministically() -> None:
    """An in-process event whose payload was swapped behind the constructor's back (the only way
    to hold a plaintext idTag) is malformed for the ledger, identically on every node."""
    outcomes = []
    for _ in range(2):
        world = World()
        events = []
        for n, (version, action, payload) in enumerate(EVENTS):
            event = ev(action, payload, version=version, charger=CHARGER if version == "1.6" else CHARGER_201,
                       message_id=f"plain-{n}", raw=True)
            object.__setattr__(event, "payload", payload)
            events.append(event)
        outcomes.append(world.block(*events))
    for result in outcomes[0].results:
        assert result.reply is None and result.error_code in ("FormationViolation", "FormatViolation")
        assert result.anomalies == ("malformed",)
    assert outcomes[0].state_hash == outcomes[1].state_hash


def test_replies_and_settlement_unchanged_on_hashed_tags() -> None:
    world = World()
    assert world.one(ev("Authorize", {"idTag": "TAG-OK"})) == {"idTagInfo": ACCEPTED_16}
    assert world.one(ev("Authorize", {"idTag": "TAG-NONE"})) == {"idTagInfo": {"status": "Invalid"}}
    start = world.one(start16())
    assert start["idTagInfo"] == ACCEPTED_16
    outcome = world.block(stop16(start["transactionId"], 11_000, T0_MS + 600_000, idTag="TAG-OK"))
    assert outcome.results[0].reply == {"idTagInfo": ACCEPTED_16}
    assert [(s.session_id, s.energy_wh) for s in outcome.settlements] == [(ESCROW_1, 10_000)]
    reply = world.one(tx_event("Started", "t-1", tag="TAG-OK"))
    assert reply == {"idTokenInfo": ACCEPTED_201}
    assert world.ledger.open_sessions()[0].id_tag_hash == id_tag_hash("TAG-OK")


def test_session_token_matches_by_its_hash() -> None:
    token = session_token(ESCROW_1)
    assert session_token_hash(ESCROW_1) == id_tag_hash(token)
    world = World()
    start = ev("StartTransaction", {"connectorId": 1, "idTag": token, "meterStart": 0,
                                    "timestamp": "2026-09-21T00:00:00Z"})
    assert token.encode() not in start.to_bytes()
    assert world.one(start)["idTagInfo"] == ACCEPTED_16
    session = world.ledger.open_sessions()[0]
    assert session.escrow_session_id == ESCROW_1 and session.id_tag_hash == id_tag_hash(token)
    assert World().one(ev("Authorize", {"idTag": token}, charger=CHARGER_201, version="1.6"))["idTagInfo"] == \
        {"status": "Invalid"}  # a token of another charger's session
