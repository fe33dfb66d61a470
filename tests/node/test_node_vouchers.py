"""Payment vouchers through the node's application and HTTP routes (static chain, real
application, real HTTP server on 127.0.0.1; consensus is one in-process proposer)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, cast

import pytest
import trio
from test_node_app import ESCROW, KEYS, make_app
from test_node_app import block as make_block

from consensus.abci import CheckResult
from devsen.app import CODE_VOUCHER_REFUSED, StopCharge
from devsen.consensus_service import CommitReceipt
from devsen.http_api import Router, http_get_json, http_post_json, serve_http
from devsen.ledger import EscrowSession, id_tag_hash
from devsen.ledger.vouchers import PaymentVoucher, sign_voucher
from devsen.remote_stop import remote_stop_call
from devsen.voucher_api import VoucherRoutes
from ocpp_adapter.events import ChargerEvent
from ocpp_adapter.vouching import ingress_domain, vouch
from primitives.eip712 import SigningKey

DRIVER = SigningKey(b"\x31" * 32)
STRANGER = SigningKey(b"\x32" * 32)
SESSION = b"\x5e" * 32
T0 = 1_700_000_000_000
PRICE = 300_000  # per kWh (StaticChain's CP-1 tariff): a 0.5 kWh chunk is 150_000
DEPOSIT = 10_000_000


def voucher_app(tmp_path: Path) -> tuple[Any, Any]:
    app, shell = make_app(tmp_path, confirmations=0)
    cast(Any, app.chain).view.sessions[SESSION] = EscrowSession(
        SESSION, "0x" + DRIVER.address.hex(), "CP-1", 1, id_tag_hash("TAG-1"), DEPOSIT, T0 // 1000 - 3_600,
        voucher_mode=True)
    return app, shell


def ocpp(message_id: str, action: str, payload: dict[Any, Any]) -> bytes:
    unsigned = ChargerEvent("CP-1", "1.6", action, message_id, payload, "", T0)
    return vouch(unsigned, KEYS[0], ingress_domain(make_app.__globals__["ANCHOR"])).to_bytes()


def meter(message_id: str, wh: int) -> bytes:
    return ocpp(message_id, "MeterValues", {"connectorId": 1, "transactionId": 1, "meterValue": [
        {"timestamp": "2023-11-14T22:13:20Z", "sampledValue": [{"value": str(wh), "unit": "Wh"}]}]})


class Chain:
    """Commits each payload in its own block through the application (check, propose, finalize)."""

    def __init__(self, app: Any, shell: Any) -> None:
        self.app, self.shell, self.height = app, shell, 0

    def commit(self, *payloads: bytes) -> Any:
        self.height += 1
        b = make_block(self.app, self.height, payloads)
        assert self.shell.process(b)
        self.shell.finalize(b)
        return self.shell.results[-1]


class OneNodeService:
    """ConsensusService.submit over `Chain`: check_tx, then a block of its own."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain

    async def submit(self, payload: bytes, timeout_s: float = 30.0) -> CommitReceipt:
        check: CheckResult = self.chain.app.check_tx(payload)
        if not check.ok:
            raise ValueError(check.reason)
        result = self.chain.commit(payload)
        return CommitReceipt(self.chain.height, b"", 0, result.tx_results[0])


def started(app: Any, shell: Any) -> Chain:
    chain = Chain(app, shell)
    chain.commit(ocpp("b1", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}))
    start = chain.commit(ocpp("s1", "StartTransaction", {"connectorId": 1, "idTag": "TAG-1", "meterStart": 0,
                                                          "timestamp": "2023-11-14T22:13:20Z"}))
    assert start.tx_results[0].code == 0
    return chain


def test_check_tx_refuses_malformed_and_foreign_vouchers(tmp_path: Path) -> None:
    app, shell = voucher_app(tmp_path)
    good = sign_voucher(DRIVER, ESCROW, SESSION, 1_000)
    assert app.check_tx(good.encode()).ok
    assert not app.check_tx(good.encode()[:-1]).ok  # wrong length
    broken = PaymentVoucher(SESSION, 1_000, good.signature[:64] + b"\x05")
    assert "v must be" in app.check_tx(broken.encode()).reason
    app.note_escrow_driver(SESSION, "0x" + DRIVER.address.hex())
    foreign = sign_voucher(STRANGER, ESCROW, SESSION, 1_000)
    assert "not by the session's driver" in app.check_tx(foreign.encode()).reason


def test_a_block_with_an_unrecoverable_voucher_is_invalid(tmp_path: Path) -> None:
    app, shell = voucher_app(tmp_path)
    good = sign_voucher(DRIVER, ESCROW, SESSION, 1_000)
    broken = PaymentVoucher(SESSION, 1_000, good.signature[:32] + b"\xff" * 32 + good.signature[64:])
    assert not shell.process(make_block(app, 1, (broken.encode(),)))


def test_a_block_with_too_many_vouchers_is_invalid(tmp_path: Path) -> None:
    from devsen.app import MAX_VOUCHERS_PER_BLOCK

    app, shell = voucher_app(tmp_path)
    many = tuple(sign_voucher(DRIVER, ESCROW, SESSION, n + 1).encode() for n in range(MAX_VOUCHERS_PER_BLOCK + 1))
    assert not shell.process(make_block(app, 1, many))
    assert shell.process(make_block(app, 1, many[:-1]))


def test_vouchers_in_blocks_counted_or_refused_deterministically_and_the_stop_notice(tmp_path: Path) -> None:
    app, shell = voucher_app(tmp_path)
    (tmp_path / "b").mkdir()
    other, other_shell = voucher_app(tmp_path / "b")
    chain = started(app, shell)
    twin = started(other, other_shell)
    payloads = (sign_voucher(DRIVER, ESCROW, SESSION, 150_000).encode(),
                sign_voucher(STRANGER, ESCROW, SESSION, 300_000).encode())  # the stranger's: refused in the block
    results = [c.commit(*payloads) for c in (chain, twin)]
    assert [r.code for r in results[0].tx_results] == [0, CODE_VOUCHER_REFUSED]
    assert "not by the session's driver" in results[0].tx_results[1].log
    assert results[0].app_hash == results[1].app_hash
    assert chain.commit(meter("m1", 900)).notices == ()  # cost 270_000, 120_000 ahead of 150_000
    result = chain.commit(meter("m2", 1_100))  # cost 330_000, 180_000 ahead > one chunk
    stops = [n.order for n in result.notices if isinstance(n, StopCharge)]
    assert [(s.charger_id, s.tx_ref) for s in stops] == [("CP-1", "1")]
    assert remote_stop_call("1.6", stops[0]) == ("RemoteStopTransaction", {"transactionId": 1})
    assert remote_stop_call("2.0.1", stops[0]) == ("RequestStopTransaction", {"transactionId": "1"})
    from ocpp.messages import get_validator

    for version in ("1.6", "2.0.1"):
        action, payload = remote_stop_call(version, stops[0])
        get_validator(2, action, version).validate(payload)  # schema-valid CSMS calls


async def _with_server(app: Any, chain: Any, body: Any) -> None:
    routes = VoucherRoutes(app, cast(Any, OneNodeService(chain)))
    router = Router()
    router.get("/v1/sessions/{session_id}/payment", routes.session)

    async def submit(params: dict[str, str], body: Any) -> tuple[int, Any]:
        return await routes.submit({**params, "body": json.dumps(body)})

    router.post("/v1/sessions/{session_id}/vouchers", submit, max_body_bytes=4_096)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, router, "127.0.0.1", 0)
        with trio.fail_after(30):
            await body(f"http://127.0.0.1:{port}", routes)
        nursery.cancel_scope.cancel()


def post_body(voucher: PaymentVoucher) -> str:
    return json.dumps({"cumulative_amount": str(voucher.cumulative_amount),
                       "signature": "0x" + voucher.signature.hex()})


def test_http_submit_and_follow(tmp_path: Path) -> None:
    app, shell = voucher_app(tmp_path)
    chain = started(app, shell)
    url = f"/v1/sessions/0x{SESSION.hex()}"

    async def body(base: str, routes: VoucherRoutes) -> None:
        status, doc = await http_post_json(base + url + "/vouchers", post_body(sign_voucher(DRIVER, ESCROW, SESSION, 150_000)))
        assert status == 200 and doc["cumulative_amount"] == "150000", doc
        for amount, key, why in ((150_000, DRIVER, "not above the latest"), (DEPOSIT + 1, DRIVER, "exceeds the deposit"),
                                 (300_000, STRANGER, "not by the session's driver")):
            status, doc = await http_post_json(base + url + "/vouchers", post_body(sign_voucher(key, ESCROW, SESSION, amount)))
            assert status == 400 and why in doc["error"], doc
        status, doc = await http_post_json(base + url + "/vouchers", "not json")
        assert status == 400 and "not JSON" in doc["error"]
        status, doc = await http_post_json(base + url + "/vouchers", json.dumps({"cumulative_amount": "1", "signature": "0x00"}))
        assert status == 400 and "130 hex digits" in doc["error"]
        status, doc = await http_post_json(base + url + "/vouchers", "x" * 5_000)
        assert status == 413
        status, doc = await http_get_json(base + url + "/vouchers")
        assert status == 405
        chain.commit(meter("m1", 400))
        status, doc = await http_get_json(base + url + "/payment")
        assert status == 200 and doc["running"] and doc["energy_wh"] == 400 and doc["latest_voucher"] == "150000"
        assert doc["cost"] == str(400 * PRICE // 1000) and doc["chunk_amount"] == "150000"
        started_at = time.perf_counter()
        for n in range(2, 12):
            status, _ = await http_post_json(base + url + "/vouchers",
                                             post_body(sign_voucher(DRIVER, ESCROW, SESSION, 150_000 * n)))
            assert status == 200
        print(f"HTTP voucher submit (one-node in-process commit): {(time.perf_counter() - started_at) * 100:.1f} ms each")

    trio.run(_with_server, app, chain, body)


def test_wallet_stream_signs_chunk_by_chunk_and_stops_on_a_mismatch(tmp_path: Path) -> None:
    from devsen.voucher_stream import stream

    app, shell = voucher_app(tmp_path)
    chain = started(app, shell)
    car = tmp_path / "car_wh"
    lines: list[dict[Any, Any]] = []

    async def body(base: str, routes: VoucherRoutes) -> None:
        async def charge() -> None:
            for n in range(1, 9):
                await trio.sleep(0.15)
                reported = 250 * n + (400 if n >= 6 else 0)  # from reading 6 on the ingress node inflates
                car.write_text(str(250 * n))
                chain.commit(meter(f"m{n}", reported))
            await trio.sleep(0.3)
            chain.commit(ocpp("stop", "StopTransaction", {"transactionId": 1, "meterStop": 250 * 8 + 400,
                                                          "timestamp": "2023-11-14T22:20:00Z"}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(charge)
            result = await stream(base, SESSION, DRIVER, ESCROW, cap=DEPOSIT, battery=lambda: int(car.read_text())
                                  if car.exists() else None, poll_s=0.05, timeout_s=20, progress=lines.append)
        assert result["stop_reason"] and "mismatch" in result["stop_reason"]
        assert result["final"]["settlement"] is not None
        paid = int(result["final"]["settlement"]["amount"])
        assert paid <= result["signed"]  # never more than the driver signed
        true_cost = 250 * 8 * PRICE // 1000
        assert paid <= true_cost + 150_000

    trio.run(_with_server, app, chain, body)
    assert any(line["event"] == "signed" for line in lines)
    assert any(line["event"] == "stopped_signing" for line in lines)


@pytest.mark.parametrize("count", [2_000])
def test_voucher_verify_cost(count: int) -> None:
    vouchers = [sign_voucher(DRIVER, ESCROW, SESSION, n + 1) for n in range(count)]
    began = time.perf_counter()
    for v in vouchers:
        assert v.signer(ESCROW) == DRIVER.address
    print(f"voucher verify (EIP-712 digest + secp256k1 recover): {(time.perf_counter() - began) / count * 1e6:.0f} µs")


class Connected:
    """Stand-in for ChargerConnections: which chargers are connected here, the calls sent."""

    def __init__(self, versions: dict[str, str]) -> None:
        self.versions = versions
        self.calls: list[Any] = []

    def version(self, charge_box_id: str) -> str | None:
        return self.versions.get(charge_box_id)

    async def call(self, charge_box_id: str, action: str, payload: dict[Any, Any], timeout: float | None = None) -> dict[Any, Any]:
        self.calls.append((charge_box_id, action, payload))
        if charge_box_id == "CP-BAD":
            from ocpp_adapter.errors import ChargerCallFailed

            raise ChargerCallFailed("NotSupported", "no remote stop here")
        return {"status": "Accepted"}


def test_remote_stops_go_only_to_chargers_connected_here_and_survive_failures() -> None:
    from devsen.ledger.vouchers import StopOrder
    from devsen.remote_stop import RemoteStops

    connections = Connected({"CP-1": "1.6", "CP-BAD": "1.6", "CS-2": "2.0.1"})
    stops = RemoteStops(connections)  # type: ignore[arg-type]
    def order(charger: str, tx: str) -> StopOrder:
        return StopOrder(SESSION, charger, tx, "1.6", 1, 10, 0)

    for charger, tx in (("CP-ELSEWHERE", "1"), ("CP-BAD", "2"), ("CP-1", "3"), ("CS-2", "tx-9")):
        stops.add(order(charger, tx))

    async def run() -> None:
        with trio.move_on_after(1.0):
            await stops.run(timeout_s=1.0)

    trio.run(run)
    assert connections.calls == [("CP-BAD", "RemoteStopTransaction", {"transactionId": 2}),
                                 ("CP-1", "RemoteStopTransaction", {"transactionId": 3}),
                                 ("CS-2", "RequestStopTransaction", {"transactionId": "tx-9"})]
    assert stops.sent == 2
