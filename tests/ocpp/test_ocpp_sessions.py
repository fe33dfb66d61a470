"""Sessions over a live server: auth, subprotocols, replacement, idempotency, CSMS calls, TLS."""

from __future__ import annotations

import datetime
import json
import ssl
from pathlib import Path
from typing import Any, cast

import pytest
import trio
from ocpp_testkit import HEARTBEAT, PASSWORD, basic_auth, charger, exchange, running_server
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from ocpp_adapter import errors
from ocpp_adapter.ingest import IngestResult
from ocpp_adapter.memory_ingest import MemoryIngest

AUTHORIZE = [2, "auth-1", "Authorize", {"idTag": "TAG-OK"}]


async def handshake_status(url: str, headers: Any, subprotocols: Any=("ocpp1.6",)) -> int:
    try:
        async with open_websocket_url(url, subprotocols=list(subprotocols), extra_headers=headers, connect_timeout=5):
            return 101
    except ConnectionRejected as exc:
        return exc.status_code


@pytest.mark.parametrize(
    ("charge_box_id", "user", "password", "status"),
    [
        ("CP010", "CP010", PASSWORD, 101),
        ("CP010", "CP010", "wrong", 401),
        ("CP010", "CP011", PASSWORD, 401),  # username must be the charge box id
        ("NOBODY", "NOBODY", PASSWORD, 401),
        ("BANNED", "BANNED", PASSWORD, 403),
        ("CP010", None, None, 401),
    ],
)
async def test_basic_auth(charge_box_id: Any, user: Any, password: Any, status: Any) -> None:
    async with running_server() as harness:
        headers = basic_auth(user, password) if user else []
        assert await handshake_status(harness.url(charge_box_id), headers) == status
    assert not harness.ingest.events


async def test_bad_path_is_404_and_profile_0_needs_no_password() -> None:
    async with running_server(security_profile=0) as harness:
        assert await handshake_status(f"ws://127.0.0.1:{harness.port}/other/CP010", []) == 404
        assert await handshake_status(harness.url("has%20space"), []) == 404
        async with open_websocket_url(harness.url("ANYONE"), subprotocols=["ocpp2.0.1"]) as ws:
            assert (await exchange(ws, HEARTBEAT))[0] == 3


async def test_no_supported_subprotocol_closes_1002() -> None:
    async with running_server() as harness:
        async with open_websocket_url(
            harness.url("CP010"), subprotocols=["ocpp1.5"], extra_headers=basic_auth("CP010", PASSWORD)
        ) as ws:
            with pytest.raises(ConnectionClosed) as info:
                with trio.fail_after(5):
                    await ws.get_message()
            assert cast(Any, info.value.reason).code == 1002


async def test_charger_preference_picks_the_subprotocol() -> None:
    async with running_server() as harness:
        async with open_websocket_url(
            harness.url("CP010"), subprotocols=["ocpp1.6", "ocpp2.0.1"], extra_headers=basic_auth("CP010", PASSWORD)
        ) as ws:
            assert ws.subprotocol == "ocpp1.6"
            assert harness.connections.version("CP010") == "1.6"


async def test_retry_after_reconnect_gets_same_reply_and_one_event() -> None:
    async with running_server() as harness:
        start = [2, "s-1", "StartTransaction", {"connectorId": 1, "idTag": "TAG-OK", "meterStart": 0,
                                                 "timestamp": "2026-01-01T00:00:00Z"}]
        async with charger(harness, "CP012") as ws:
            first = await exchange(ws, start)
        async with charger(harness, "CP012") as ws:
            again = await exchange(ws, start)
            other = await exchange(ws, [2, "s-2", *start[2:]])
        assert first == again and first[2]["transactionId"] == 1
        assert other[2]["transactionId"] == 2
        assert harness.ingest.submitted == 2 and harness.ingest.applied == 2


class GatedIngest:
    """Holds every submission until `gate` is set; counts submissions."""

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.submitted = 0
        self.inner = MemoryIngest()
        self.events = self.inner.events

    async def submit(self, event: Any) -> IngestResult:
        self.submitted += 1
        await self.gate.wait()
        return await self.inner.submit(event)


async def test_retry_while_first_in_flight_shares_one_submission() -> None:
    ingest = GatedIngest()
    async with running_server(ingest=ingest) as harness:
        async with charger(harness, "CP013") as ws1:
            await ws1.send_message(json.dumps(AUTHORIZE))
            await trio.sleep(0.1)
            assert ingest.submitted == 1
            # the charger reconnects (replacing the first connection) and retries
            async with charger(harness, "CP013") as ws2:
                await ws2.send_message(json.dumps(AUTHORIZE))
                await trio.sleep(0.1)
                assert ingest.submitted == 1
                ingest.gate.set()
                with trio.fail_after(5):
                    reply = json.loads(await ws2.get_message())
                assert reply == [3, "auth-1", {"idTagInfo": {"status": "Accepted"}}]
    assert ingest.submitted == 1 and len(ingest.events) == 1


async def test_new_connection_replaces_the_old_one() -> None:
    async with running_server() as harness:
        async with charger(harness, "CP014") as old:
            async with charger(harness, "CP014") as new:
                with pytest.raises(ConnectionClosed):
                    with trio.fail_after(5):
                        await old.get_message()
                assert (await exchange(new, HEARTBEAT))[0] == 3
                assert harness.connections.connected() == ["CP014"]
                snapshot = harness.connections.snapshot()["CP014"]
                assert snapshot["version"] == "1.6" and snapshot["calls"] == 1


async def answer_next_call(ws: Any, make_answer: Any) -> list[Any]:
    with trio.fail_after(5):
        call = json.loads(await ws.get_message())
    answer = make_answer(call)
    if answer is not None:
        await ws.send_message(json.dumps(answer))
    return cast(list[Any], call)


async def test_csms_calls_and_their_errors() -> None:
    async with running_server() as harness:
        calls = harness.connections
        with pytest.raises(errors.ChargerNotConnected):
            await calls.call("CP015", "Reset", {"type": "Hard"})
        async with charger(harness, "CP015") as ws:
            with pytest.raises(ValueError):
                await calls.call("CP015", "Reset", {"type": "Sideways"})
            with pytest.raises(ValueError):
                await calls.call("CP015", "RequestStartTransaction", {})  # a 2.0.1 action
            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer_next_call, ws, lambda c: [3, c[1], {"status": "Accepted"}])
                assert await calls.call("CP015", "Reset", {"type": "Soft"}) == {"status": "Accepted"}
            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer_next_call, ws, lambda c: [4, c[1], "NotSupported", "no", {"x": 1}])
                with pytest.raises(errors.ChargerCallError) as info:
                    await calls.call("CP015", "UnlockConnector", {"connectorId": 1})
                assert info.value.code == "NotSupported" and info.value.details == {"x": 1}
            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer_next_call, ws, lambda c: [3, c[1], {"status": "Maybe"}])
                with pytest.raises(errors.ChargerReplyInvalid):
                    await calls.call("CP015", "ChangeAvailability", {"connectorId": 0, "type": "Operative"})
            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer_next_call, ws, lambda c: None)
                with pytest.raises(errors.ChargerCallTimeout):
                    await calls.call("CP015", "TriggerMessage", {"requestedMessage": "Heartbeat"}, timeout=0.3)
            # a late answer to the timed-out call is ignored; the connection still works
            assert (await exchange(ws, HEARTBEAT))[0] == 3

            async def disconnect_mid_call() -> None:
                await answer_next_call(ws, lambda c: None)
                await ws.aclose()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(disconnect_mid_call)
                with pytest.raises(errors.ChargerDisconnected):
                    await calls.call("CP015", "GetConfiguration", {}, timeout=5)


async def test_concurrent_csms_calls_are_serialized() -> None:
    async with running_server() as harness, charger(harness, "CP016", "ocpp2.0.1") as ws:
        seen: list[str] = []

        async def charger_side() -> None:
            for _ in range(3):
                with trio.fail_after(5):
                    call = json.loads(await ws.get_message())
                seen.append(call[2])
                await trio.sleep(0.05)  # a second CALL must not arrive while this one is open
                await ws.send_message(json.dumps([3, call[1], {"status": "Accepted"}]))

        results = []

        async def csms(action: Any, payload: Any) -> None:
            results.append(await harness.connections.call("CP016", action, payload))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(charger_side)
            nursery.start_soon(csms, "Reset", {"type": "Immediate"})
            nursery.start_soon(csms, "ChangeAvailability", {"operationalStatus": "Operative"})
            nursery.start_soon(csms, "CancelReservation", {"reservationId": 3})
        assert sorted(seen) == ["CancelReservation", "ChangeAvailability", "Reset"]
        assert results == [{"status": "Accepted"}] * 3


def self_signed_cert(tmp_path: Path) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


async def test_security_profile_2_over_tls(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    async with running_server(security_profile=2, tls_cert=cert, tls_key=key) as harness:
        client_context = ssl.create_default_context(cafile=cert)
        url = f"wss://localhost:{harness.port}/ocpp/CP017"
        async with open_websocket_url(url, ssl_context=client_context, subprotocols=["ocpp1.6"],
                                      extra_headers=basic_auth("CP017", PASSWORD)) as ws:
            assert (await exchange(ws, HEARTBEAT))[0] == 3
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(url, ssl_context=client_context, subprotocols=["ocpp1.6"],
                                          extra_headers=basic_auth("CP017", "wrong")):
                pass
        assert info.value.status_code == 401


async def test_failed_logins_are_throttled_per_address_and_charger() -> None:
    async with running_server(failed_logins_per_minute=3) as harness:
        async with charger(harness, "CP018"):
            pass  # verified once: later logins of CP018 with this password skip the hash
        statuses = [await handshake_status(harness.url("CP019"), basic_auth("CP019", "guess")) for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        assert await handshake_status(harness.url("CP019"), basic_auth("CP019", PASSWORD)) == 429
        assert await handshake_status(harness.url("CP018"), basic_auth("CP018", PASSWORD)) == 101
        # Budgets are per (address, charger): a neighbour behind the same address, never verified
        # before, still logs in (its password is hashed and checked).
        assert await handshake_status(harness.url("CP020"), basic_auth("CP020", PASSWORD)) == 101


async def test_pipelined_calls_beyond_the_queue_are_refused() -> None:
    ingest = GatedIngest()
    async with running_server(ingest=ingest, call_queue=2) as harness, charger(harness, "CP021") as ws:
        for n in range(5):  # one in the worker, two queued, two refused at once
            await ws.send_message(json.dumps([2, f"p{n}", "Heartbeat", {}]))
        refused = []
        with trio.fail_after(5):
            for _ in range(2):
                refused.append(json.loads(await ws.get_message()))
        assert sorted(r[1] for r in refused) == ["p3", "p4"]
        assert all(r[2] == "GenericError" for r in refused)
        ingest.gate.set()
        with trio.fail_after(5):
            answered = [json.loads(await ws.get_message()) for _ in range(3)]
        assert [a[:2] for a in answered] == [[3, "p0"], [3, "p1"], [3, "p2"]]


async def test_keepalive_pings_keep_a_responsive_charger() -> None:
    async with running_server(ping_interval=0.05) as harness, charger(harness, "CP022") as ws:
        await trio.sleep(0.4)
        assert (await exchange(ws, HEARTBEAT))[0] == 3


async def test_hostile_a_charger_that_never_answers_pings_is_closed_and_a_busy_one_is_not_pinged() -> None:
    """The keepalive is a ping of a connection silent for ping_interval (no keepalive task per
    connection): a charger that completes the handshake and then never reads (no pong) is
    disconnected after send_timeout; one that keeps talking stays connected."""
    async with running_server(ping_interval=0.1, send_timeout=0.3) as harness:
        stream = await trio.open_tcp_stream("127.0.0.1", harness.port)
        auth = basic_auth("CP024", PASSWORD)[0][1].decode()
        await stream.send_all(("GET /ocpp/CP024 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                               "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ocpp1.6\r\n"
                               f"Authorization: {auth}\r\n\r\n").encode())
        with trio.fail_after(5):
            assert b" 101 " in await stream.receive_some(4096)
            while "CP024" not in harness.connections.connected():
                await trio.sleep(0.01)
        async with charger(harness, "CP025") as ws:
            for _ in range(10):  # busy: answered every 50 ms, never silent for 100 ms
                assert (await exchange(ws, HEARTBEAT))[0] == 3
                await trio.sleep(0.05)
            with trio.fail_after(5):
                while "CP024" in harness.connections.connected():  # never read: no pong
                    await trio.sleep(0.02)
            assert "CP025" in harness.connections.connected()
            await trio.sleep(0.6)  # silent CP025 is pinged and answers (its client's reader pongs)
            assert (await exchange(ws, HEARTBEAT))[0] == 3
        await stream.aclose()


async def test_ingest_may_call_the_charger_while_deciding_no_deadlock() -> None:
    """The receive loop keeps routing while a CALL is being decided, so a decision that
    itself needs an answer from the charger (e.g. read its configuration) completes."""

    class AskingIngest:
        def __init__(self) -> None:
            self.inner = MemoryIngest()
            self.events = self.inner.events
            self.connections: Any = None
            self.asked: dict[str, Any] = {}

        async def submit(self, event: Any) -> IngestResult:
            if event.action == "BootNotification":
                self.asked = await self.connections.call(event.charger_id, "GetConfiguration", {"key": ["X"]})
            return await self.inner.submit(event)

    ingest = AskingIngest()
    async with running_server(ingest=ingest) as harness, charger(harness, "CP023") as ws:
        ingest.connections = harness.connections
        await ws.send_message(json.dumps([2, "boot", "BootNotification", {"chargePointVendor": "v", "chargePointModel": "m"}]))
        with trio.fail_after(5):
            call = json.loads(await ws.get_message())
            assert call[2] == "GetConfiguration"
            await ws.send_message(json.dumps([3, call[1], {"configurationKey": [{"key": "X", "readonly": True, "value": "1"}]}]))
            reply = json.loads(await ws.get_message())
        assert reply[:2] == [3, "boot"] and reply[2]["status"] == "Accepted"
        assert ingest.asked["configurationKey"][0]["value"] == "1"
