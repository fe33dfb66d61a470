"""Unit tests of the pure parts: limits, auth, paths, session calls, idempotency, in-memory ingest."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from ocpp_adapter import errors, schemas
from ocpp_adapter.auth import (
    ChargerCredentials,
    InMemoryChargerRegistry,
    parse_basic_auth,
)
from ocpp_adapter.bounded import LruMap, TokenBucket
from ocpp_adapter.config import OcppServerConfig
from ocpp_adapter.events import ENCODING_VERSION, ChargerEvent, EventEncodingError, canonical_bytes
from ocpp_adapter.idempotency import ReplyCache, SubmissionFailed
from ocpp_adapter.ingest import IngestOverloaded, IngestRejected, IngestResult
from ocpp_adapter.memory_ingest import MemoryIngest
from ocpp_adapter.protocol import CHARGER_INITIATED, CallAnswered, Ignored, OcppSession
from ocpp_adapter.server import charge_box_id_from_path, choose_subprotocol
from primitives.credentials import hash_charger_password, verify_charger_password
from primitives.hashing import keccak256

NOW = "2026-01-01T00:00:00Z"


def test_token_bucket_grants_burst_then_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert bucket.take(0.1) == 0.0
    assert bucket.take(10.0) == 0.0  # refills, but never above the burst
    assert [bucket.take(10.0) for _ in range(3)][-1] > 0


def test_lru_map_is_bounded_and_keeps_recent() -> None:
    lru: LruMap[int, str] = LruMap(2)
    lru.put(1, "a")
    lru.put(2, "b")
    assert lru.get(1) == "a"
    lru.put(3, "c")
    assert 2 not in lru and 1 in lru and 3 in lru and len(lru) == 2


def test_password_hash_is_scrypt_of_the_agreed_parameters() -> None:
    salt = bytes(range(16))
    import hashlib

    expected = hashlib.scrypt(b"pw", salt=salt, n=16384, r=8, p=1, dklen=32)
    assert hash_charger_password("pw", salt) == expected
    assert verify_charger_password("pw", salt, expected)
    assert not verify_charger_password("pW", salt, expected)
    assert not verify_charger_password("pw", salt, expected[:31])
    with pytest.raises(ValueError):
        hash_charger_password("pw", b"short")


def test_parse_basic_auth() -> None:
    def header(text: str) -> bytes:
        return b"Basic " + base64.b64encode(text.encode())

    assert parse_basic_auth(header("CP1:pa:ss")) == ("CP1", "pa:ss")
    assert parse_basic_auth(header("no-colon")) is None
    assert parse_basic_auth(b"Bearer abc") is None
    assert parse_basic_auth(b"Basic !!!") is None


async def test_registry_from_toml(tmp_path: Path) -> None:
    salt, digest = bytes(16), hash_charger_password("x", bytes(16))
    path = tmp_path / "chargers.toml"
    path.write_text(
        'CP1 = "secret"\n'
        '[CP2]\npassword = "other"\nadmitted = false\n'
        f'[CP3]\nsalt = "{salt.hex()}"\nhash = "{digest.hex()}"\n'
    )
    registry = InMemoryChargerRegistry.from_toml(str(path))
    cp1 = await registry.credentials("CP1")
    assert cp1 is not None and verify_charger_password("secret", cp1.auth_salt, cp1.auth_hash)
    cp2 = await registry.credentials("CP2")
    assert cp2 is not None and not cp2.admitted
    assert await registry.credentials("CP3") == ChargerCredentials(salt, digest, True)
    assert await registry.credentials("CP4") is None


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/ocpp/CP1", "CP1"), ("/ocpp/CP1/", "CP1"), ("/ocpp/CP%2D1?x=1", "CP-1"),
        ("/ocpp/", None), ("/ocpp/a/b", None), ("/other/CP1", None), ("/ocpp/" + "x" * 49, None),
        ("/ocpp/has%20space", None), ("/ocpp/%FF", None),
    ],
)
def test_charge_box_id_from_path(path: Any, expected: Any) -> None:
    assert charge_box_id_from_path(path, "/ocpp/") == expected


def test_choose_subprotocol_follows_the_charger_preference() -> None:
    supported = ("ocpp2.0.1", "ocpp1.6")
    assert choose_subprotocol(("ocpp1.6", "ocpp2.0.1"), supported) == "ocpp1.6"
    assert choose_subprotocol(("ocpp2.0", "ocpp2.0.1"), supported) == "ocpp2.0.1"
    assert choose_subprotocol(("ocpp1.5",), supported) is None


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        OcppServerConfig(security_profile=2)  # TLS required
    with pytest.raises(ValueError):
        OcppServerConfig(subprotocols=("ocpp1.5",))
    with pytest.raises(ValueError):
        OcppServerConfig(max_frame_bytes=0)
    with pytest.raises(ValueError):
        OcppServerConfig(tls_cert="c.pem")


def test_session_outgoing_call_lifecycle() -> None:
    session = OcppSession("1.6")
    message_id, frame = session.begin_call("Reset", {"type": "Hard"})
    assert json.loads(frame) == [2, message_id, "Reset", {"type": "Hard"}]
    assert isinstance(session.receive(json.dumps([3, "other", {}])), Ignored)
    answered = session.receive(json.dumps([3, message_id, {"status": "Accepted"}]))
    assert isinstance(answered, CallAnswered) and answered.payload == {"status": "Accepted"}
    assert session.pending is None
    message_id, _ = session.begin_call("Reset", {"type": "Soft"})
    session.abandon_call(message_id)
    assert isinstance(session.receive(json.dumps([3, message_id, {"status": "Accepted"}])), Ignored)
    message_id, _ = session.begin_call("Reset", {"type": "Soft"})
    error = session.receive(json.dumps([4, message_id, "NotSupported", "nope", {}]))
    assert isinstance(error, CallAnswered) and isinstance(error.error, errors.ChargerCallError)


def event(action: Any="Heartbeat", payload: Any=None, message_id: Any="m1", charger: Any="CP1", version: Any="1.6") -> ChargerEvent:
    return ChargerEvent(charger, version, action, message_id, payload or {}, "", 1)


async def test_reply_cache_remembers_decisions_and_forgets_transient_failures() -> None:
    cache = ReplyCache(capacity=10, max_in_flight=2)
    calls = []

    async def submit(ev: Any) -> Any:
        calls.append(ev)
        if ev.action == "Authorize":
            raise IngestRejected("no")
        if ev.action == "StatusNotification":
            raise IngestOverloaded("full")
        return IngestResult({"currentTime": NOW}, ev.event_id)

    async with trio.open_nursery() as nursery:
        first = await cache.submit_once(event(), submit, nursery, 1.0)
        again = await cache.submit_once(dataclasses.replace(event(), received_at_ms=99), submit, nursery, 1.0)
        assert first is again and len(calls) == 1
        for _ in range(2):
            with pytest.raises(IngestRejected):
                await cache.submit_once(event("Authorize", {"idTag": "x"}), submit, nursery, 1.0)
        assert len(calls) == 2  # rejection remembered
        for _ in range(2):
            with pytest.raises(IngestOverloaded):
                await cache.submit_once(event("StatusNotification", {"a": 1}), submit, nursery, 1.0)
        assert len(calls) == 4  # transient: submitted again


async def test_reply_cache_entries_expire(autojump_clock: Any) -> None:
    cache = ReplyCache(capacity=10, max_in_flight=2, ttl=60)
    calls = []

    async def submit(ev: Any) -> IngestResult:
        calls.append(ev)
        return IngestResult({}, ev.event_id)

    async with trio.open_nursery() as nursery:
        await cache.submit_once(event(), submit, nursery, 1.0)
        await trio.sleep(59)
        await cache.submit_once(event(), submit, nursery, 1.0)
        assert len(calls) == 1
        await trio.sleep(2)
        await cache.submit_once(event(), submit, nursery, 1.0)
        assert len(calls) == 2


async def test_hostile_a_heartbeat_flood_keeps_the_reply_cache_at_its_cap_with_no_event_per_entry() -> None:
    """One charger sending Heartbeats as fast as it can: the cache holds `capacity` decided
    entries, each sharing one set Event (no trio.Event kept per remembered reply)."""
    cache = ReplyCache(capacity=100, max_in_flight=4)

    async def submit(ev: Any) -> IngestResult:
        return IngestResult({"currentTime": NOW}, ev.event_id)

    async with trio.open_nursery() as nursery:
        for i in range(2_000):
            await cache.submit_once(event(message_id=f"hb-{i}"), submit, nursery, 1.0)
            assert len(cache) <= 100
        again = await cache.submit_once(event(message_id="hb-1999"), submit, nursery, 1.0)
    assert len(cache) == 100 and cache.in_flight == 0 and again.reply == {"currentTime": NOW}
    assert len({id(cache._entries.get(key).done) for key in list(cache._entries)}) == 1  # type: ignore[union-attr]


async def test_hostile_a_steady_flood_holds_only_the_ttl_of_replies_not_the_capacity(autojump_clock: Any) -> None:
    """One charger at 20 messages/s (as fast as the endpoint allows) for 5 minutes against a
    100,000-entry cache with a 30 s TTL: decided entries older than the TTL go at each new
    submission, so ~30 s of messages stay, not all 6,000."""
    cache = ReplyCache(capacity=100_000, max_in_flight=4, ttl=30)

    async def submit(ev: Any) -> IngestResult:
        return IngestResult({"currentTime": NOW}, ev.event_id)

    async with trio.open_nursery() as nursery:
        for i in range(6_000):
            await cache.submit_once(event(message_id=f"hb-{i}"), submit, nursery, 1.0)
            await trio.sleep(0.05)
    assert 590 <= len(cache) <= 610 and cache.in_flight == 0


async def test_reply_cache_times_out_and_caps_in_flight() -> None:
    cache = ReplyCache(capacity=10, max_in_flight=1)

    async def never(ev: Any) -> IngestResult:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        async def first() -> None:
            with pytest.raises(SubmissionFailed):
                await cache.submit_once(event(message_id="a"), never, nursery, 0.2)

        nursery.start_soon(first)
        await trio.sleep(0.05)
        with pytest.raises(IngestOverloaded):
            await cache.submit_once(event(message_id="b"), never, nursery, 0.2)
    assert cache.in_flight == 0 and len(cache) == 0


SAMPLE_PAYLOADS = {
    ("1.6", "BootNotification"): {"chargePointVendor": "v", "chargePointModel": "m"},
    ("1.6", "Heartbeat"): {},
    ("1.6", "StatusNotification"): {"connectorId": 1, "errorCode": "NoError", "status": "Available"},
    ("1.6", "Authorize"): {"idTag": "TAG-OK"},
    ("1.6", "StartTransaction"): {"connectorId": 1, "idTag": "TAG-OK", "meterStart": 0, "timestamp": NOW},
    ("1.6", "MeterValues"): {"connectorId": 1, "meterValue": [{"timestamp": NOW, "sampledValue": [{"value": "1"}]}]},
    ("1.6", "StopTransaction"): {"meterStop": 5, "timestamp": NOW, "transactionId": 1, "idTag": "BAD"},
    ("1.6", "DataTransfer"): {"vendorId": "acme", "data": "x"},
    ("1.6", "FirmwareStatusNotification"): {"status": "Installed"},
    ("1.6", "DiagnosticsStatusNotification"): {"status": "Idle"},
    ("2.0.1", "BootNotification"): {"reason": "PowerUp", "chargingStation": {"model": "m", "vendorName": "v"}},
    ("2.0.1", "Heartbeat"): {},
    ("2.0.1", "StatusNotification"): {"timestamp": NOW, "connectorStatus": "Available", "evseId": 1, "connectorId": 1},
    ("2.0.1", "Authorize"): {"idToken": {"idToken": "BAD", "type": "ISO14443"}},
    ("2.0.1", "TransactionEvent"): {"eventType": "Started", "timestamp": NOW, "triggerReason": "Authorized",
                                    "seqNo": 0, "transactionInfo": {"transactionId": "t"},
                                    "idToken": {"idToken": "TAG-OK", "type": "ISO14443"}},
    ("2.0.1", "MeterValues"): {"evseId": 1, "meterValue": [{"timestamp": NOW, "sampledValue": [{"value": 1.5}]}]},
    ("2.0.1", "NotifyReport"): {"requestId": 1, "generatedAt": NOW, "seqNo": 0},
    ("2.0.1", "NotifyEvent"): {"generatedAt": NOW, "seqNo": 0, "eventData": [{
        "eventId": 1, "timestamp": NOW, "trigger": "Alerting", "actualValue": "1", "eventNotificationType": "HardWiredNotification",
        "component": {"name": "c"}, "variable": {"name": "v"}}]},
    ("2.0.1", "FirmwareStatusNotification"): {"status": "Installed"},
    ("2.0.1", "SecurityEventNotification"): {"type": "StartupOfTheDevice", "timestamp": NOW},
}


def test_samples_cover_every_handled_action() -> None:
    assert {k for k in SAMPLE_PAYLOADS} == {(v, a) for v, acts in CHARGER_INITIATED.items() for a in acts}


@pytest.mark.parametrize(("version", "action"), sorted(SAMPLE_PAYLOADS))
async def test_memory_ingest_replies_are_schema_valid(version: Any, action: Any) -> None:
    payload = SAMPLE_PAYLOADS[(version, action)]
    schemas.validate(version, action, payload)
    ingest = MemoryIngest(id_tags=["TAG-OK"])
    result = await ingest.submit(event(action, payload, version=version))
    schemas.validate(version, action, result.reply, response=True)


async def test_memory_ingest_rules_and_idempotency() -> None:
    ingest = MemoryIngest(id_tags=["TAG-OK"], heartbeat_interval=42)
    start = SAMPLE_PAYLOADS[("1.6", "StartTransaction")]
    first = await ingest.submit(event("StartTransaction", start, message_id="s1"))
    retry = await ingest.submit(dataclasses.replace(event("StartTransaction", start, message_id="s1"), received_at_ms=7))
    second = await ingest.submit(event("StartTransaction", start, message_id="s2"))
    assert first.reply == retry.reply and retry.duplicate and not first.duplicate
    assert (first.reply["transactionId"], second.reply["transactionId"]) == (1, 2)
    stop = await ingest.submit(event("StopTransaction", SAMPLE_PAYLOADS[("1.6", "StopTransaction")]))
    assert stop.reply == {"idTagInfo": {"status": "Invalid"}}
    boot = await ingest.submit(event("BootNotification", SAMPLE_PAYLOADS[("1.6", "BootNotification")]))
    assert boot.reply["interval"] == 42 and boot.reply["status"] == "Accepted"
    assert ingest.applied == 4 and len(ingest.events) == 4
    with pytest.raises(IngestRejected):
        await ingest.submit(event("Reset", {"type": "Hard"}))


CSMS_CALLS: dict[str, dict[str, Any]] = {
    "1.6": {
        "RemoteStartTransaction": {"idTag": "T", "connectorId": 1, "chargingProfile": {
            "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Absolute", "chargingSchedule": {
                "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 21.4}]}}},
        "RemoteStopTransaction": {"transactionId": 1},
        "Reset": {"type": "Soft"},
        "ChangeConfiguration": {"key": "HeartbeatInterval", "value": "60"},
        "GetConfiguration": {"key": ["HeartbeatInterval"]},
        "TriggerMessage": {"requestedMessage": "StatusNotification", "connectorId": 1},
        "ChangeAvailability": {"connectorId": 1, "type": "Inoperative"},
        "UnlockConnector": {"connectorId": 1},
        "ReserveNow": {"connectorId": 1, "expiryDate": NOW, "idTag": "T", "reservationId": 3},
        "CancelReservation": {"reservationId": 3},
        "DataTransfer": {"vendorId": "devsen"},
    },
    "2.0.1": {
        "RequestStartTransaction": {"idToken": {"idToken": "T", "type": "ISO14443"}, "remoteStartId": 1},
        "RequestStopTransaction": {"transactionId": "tx-1"},
        "Reset": {"type": "OnIdle"},
        "SetVariables": {"setVariableData": [{"attributeValue": "60", "component": {"name": "OCPPCommCtrlr"},
                                              "variable": {"name": "HeartbeatInterval"}}]},
        "GetVariables": {"getVariableData": [{"component": {"name": "OCPPCommCtrlr"},
                                              "variable": {"name": "HeartbeatInterval"}}]},
        "TriggerMessage": {"requestedMessage": "Heartbeat"},
        "ChangeAvailability": {"operationalStatus": "Inoperative", "evse": {"id": 1}},
        "UnlockConnector": {"evseId": 1, "connectorId": 1},
        "ReserveNow": {"id": 3, "expiryDateTime": NOW, "idToken": {"idToken": "T", "type": "ISO14443"}},
        "CancelReservation": {"reservationId": 3},
    },
}


@pytest.mark.parametrize(("version", "action"), [(v, a) for v, calls in CSMS_CALLS.items() for a in calls])
def test_csms_to_charger_calls_validate(version: Any, action: Any) -> None:
    session = OcppSession(version)
    message_id, frame = session.begin_call(action, CSMS_CALLS[version][action])
    assert json.loads(frame)[:3] == [2, message_id, action]


def test_csms_cannot_send_charger_initiated_actions() -> None:
    with pytest.raises(ValueError):
        OcppSession("1.6").begin_call("BootNotification", {"chargePointVendor": "v", "chargePointModel": "m"})


@pytest.mark.parametrize(
    "text", ["[1e400]", "[-1e400]", "[NaN]", "[Infinity]", '{"a":1,"a":1}', "[" * 40 + "]" * 40, "[18446744073709551616]"]
)
def test_strict_parse_refuses_what_has_no_canonical_form(text: Any) -> None:
    from ocpp_adapter.protocol import loads_strict

    with pytest.raises(ValueError):
        loads_strict(text)


def test_strict_parse_keeps_plain_json_types() -> None:
    from ocpp_adapter.protocol import loads_strict

    assert loads_strict('{"a":[1,2.5,"x",true,null],"b":18446744073709551615}') == {
        "a": [1, 2.5, "x", True, None], "b": 2**64 - 1}


def test_multiple_of_is_decimal_exact_on_floats() -> None:
    profile = CSMS_CALLS["1.6"]["RemoteStartTransaction"]
    period = profile["chargingProfile"]["chargingSchedule"]["chargingSchedulePeriod"][0]
    for limit, valid in [(21.4, True), (0.3, True), (21.45, False)]:
        payload = json.loads(json.dumps(profile).replace('"limit": 21.4', f'"limit": {limit}'))
        assert period["limit"] == 21.4
        if valid:
            schemas.validate("1.6", "RemoteStartTransaction", payload)
        else:
            with pytest.raises(schemas.PayloadInvalid):
                schemas.validate("1.6", "RemoteStartTransaction", payload)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=24)


@settings(max_examples=300, deadline=None)
@given(payload=st.dictionaries(st.text(max_size=6), _JSON, max_size=5))
def test_event_encodings_pack_the_payload_once_and_stay_byte_identical(payload: dict[str, Any]) -> None:
    """The event packs its canonical payload once and splices it into its three encodings; the
    bytes must equal the whole-array canonical encoding (what blocks, proofs and vouches hold)."""
    try:
        event = ChargerEvent("CP-1", "1.6", "DataTransfer", "m-1", payload, "0x" + "ab" * 20, 7, b"\x01" * 16,
                             b"\x02" * 65)
        encoded = event.to_bytes()
    except EventEncodingError:
        return  # e.g. lone surrogates: refused alike either way
    fields = [ENCODING_VERSION, "CP-1", "1.6", "DataTransfer", "m-1", event.payload, 7, b"\xab" * 20, b"\x01" * 16]
    assert encoded == canonical_bytes([*fields, b"\x02" * 65])
    assert event.body_hash == keccak256(canonical_bytes(fields))
    assert event.dedup_key == keccak256(canonical_bytes(["CP-1", "1.6", "m-1", "DataTransfer", event.payload]))
    assert ChargerEvent.from_bytes(encoded) == event
