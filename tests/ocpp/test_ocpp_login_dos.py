"""Login DoS: one address cycling through public charger ids with wrong passwords must not
keep an honest charger at another address from connecting within its handshake timeout."""

from __future__ import annotations

import logging
import time
from typing import Any

import trio
from ocpp_testkit import _CREDS, PASSWORD, basic_auth, running_server
from trio_websocket import (
    ConnectionRejected,
    HandshakeError,
    open_websocket_url,
    wrap_client_stream,
)

ATTACK_IDS = [f"PUBLIC{i:04d}" for i in range(1000)]
HANDSHAKE_TIMEOUT = 5.0


async def connect_from(local_address: str, port: int, charge_box_id: str, password: str) -> int:
    """Handshake status for a charger whose TCP connection comes from `local_address`."""
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=local_address)
    status = 101
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery, stream, "127.0.0.1", f"/ocpp/{charge_box_id}", subprotocols=["ocpp1.6"],
                extra_headers=basic_auth(charge_box_id, password),
            )
            await ws.aclose()
    except* ConnectionRejected as group:
        status = next(e.status_code for e in group.exceptions if isinstance(e, ConnectionRejected))
    finally:
        await trio.aclose_forcefully(stream)
    return status


async def attacker(url_of: Any, ids: list[str], statuses: dict[int, int]) -> None:
    for charge_box_id in ids:
        try:
            async with open_websocket_url(url_of(charge_box_id), subprotocols=["ocpp1.6"],
                                          extra_headers=basic_auth(charge_box_id, "guess"), connect_timeout=30):
                status = 101
        except ConnectionRejected as exc:
            status = exc.status_code
        except (HandshakeError, OSError, trio.TooSlowError):
            status = -1
        statuses[status] = statuses.get(status, 0) + 1


async def honest_latency_under_attack(concurrency: int = 400) -> tuple[int, float, int, float, dict[int, int]]:
    """(status, seconds) of an honest first login and of its reconnect, while the attack runs."""
    logging.getLogger("ocpp_adapter.server").setLevel(logging.ERROR)  # 1,000 rejections
    async with running_server(handshake_timeout=HANDSHAKE_TIMEOUT) as harness:
        for charge_box_id in ATTACK_IDS:
            harness.registry.add(charge_box_id, _CREDS)
        statuses: dict[int, int] = {}
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for worker in range(concurrency):
                    nursery.start_soon(attacker, harness.url, ATTACK_IDS[worker::concurrency], statuses)
                await trio.sleep(1.5)  # the attack is in full swing
                started = time.monotonic()
                first = await connect_from("127.0.0.2", harness.port, "CP001", PASSWORD)
                first_latency = time.monotonic() - started
                started = time.monotonic()
                again = await connect_from("127.0.0.2", harness.port, "CP001", PASSWORD)
                again_latency = time.monotonic() - started
                # the attack runs to its end (all 1,000 ids): refused without scrypt beyond the budget
        return first, first_latency, again, again_latency, statuses


async def test_an_address_cycling_charger_ids_does_not_lock_out_an_honest_charger() -> None:
    first, first_latency, again, again_latency, statuses = await honest_latency_under_attack()
    print(f"honest first login {first} in {first_latency:.3f}s, reconnect {again} in {again_latency:.3f}s; "
          f"attacker statuses {statuses}")
    assert first == 101 and first_latency < HANDSHAKE_TIMEOUT
    assert again == 101 and again_latency < 1.0
    assert 101 not in statuses and sum(statuses.values()) == len(ATTACK_IDS)
    # wrong passwords hashed for that address: the per-address budget (30) plus its refill
    assert statuses.get(401, 0) <= 60  # 429 (budget) or 503 (waited its turn past the timeout) for the rest


def test_login_budgets_are_per_address_across_charger_ids() -> None:
    from ocpp_adapter.auth import LoginBudgets

    budgets = LoginBudgets(per_charger_per_minute=10, per_address_per_minute=3, capacity=100)
    for n in range(3):  # three different ids, one wrong password each
        assert budgets.admit("10.0.0.9", f"CP{n}", now=0.0) is None
        budgets.failed("10.0.0.9", f"CP{n}", now=0.0)
    assert budgets.admit("10.0.0.9", "CP99", now=0.0) == "too many failed logins from this address; wait"
    assert budgets.admit("10.0.0.8", "CP99", now=0.0) is None  # another address is unaffected
    assert budgets.admit("10.0.0.9", "CP99", now=20.0) is None  # refilled at 3 a minute


async def test_cycling_ids_from_one_address_hits_the_address_budget_and_a_password_change_misses_the_cache() -> None:
    from ocpp_adapter.auth import ChargerCredentials

    async with running_server(failed_logins_per_address_per_minute=3) as harness:
        statuses = [await connect_from("127.0.0.1", harness.port, f"CP03{n}", "guess") for n in range(5)]
        assert statuses == [401, 401, 401, 429, 429]  # old code: five 401s, five scrypt runs
        assert await connect_from("127.0.0.3", harness.port, "CP035", PASSWORD) == 101
        harness.registry.add("CP035", ChargerCredentials.from_password("rotated on chain"))
        assert await connect_from("127.0.0.3", harness.port, "CP035", PASSWORD) == 401  # cache keyed by the record
        assert await connect_from("127.0.0.3", harness.port, "CP035", "rotated on chain") == 101
