"""Property tests of escrow accounting on the in-process chain: whatever sequence of opens,
settlements and refunds happens, token balances sum to the supply and the escrow holds
exactly the open deposits (never less)."""

from __future__ import annotations

import pytest
from conftest import REFUND_TIMEOUT_S, TOKEN, World, advance_time, build_world, quorum_signatures
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anchoring.chain import ChainRevert, SessionStatus, connect
from anchoring.escrow_sign import settlement_batch_digest

SALT = b"\x01" * 16
AUTH_HASH = b"\x02" * 32

open_op = st.tuples(st.just("open"), st.integers(min_value=1, max_value=50 * TOKEN))  # below MIN_DEPOSIT: refused
settle_op = st.tuples(st.just("settle"), st.integers(min_value=0, max_value=60 * TOKEN))
refund_op = st.tuples(st.just("refund"), st.integers(min_value=0, max_value=REFUND_TIMEOUT_S * 2))
operations = st.lists(st.one_of(open_op, settle_op, refund_op), min_size=1, max_size=6)


@pytest.fixture(scope="module")
def escrow_world() -> World:
    world = build_world(connect("tester"))
    world.manager.create_device("PROP-1", location="", connector_count=2, price_per_kwh=1,
                                per_minute_fee=0, auth_salt=SALT, auth_hash=AUTH_HASH)
    world.driver.register_id_tag("PROP-TAG")
    world.driver.faucet_mint(world.driver.sender.address, 1_000_000 * TOKEN)  # type: ignore[union-attr]
    world.driver.approve(world.deployment.escrow, 2**256 - 1)
    return world


def _holders(world: World) -> list[str]:
    d = world.deployment
    return [world.driver.sender.address, world.manager.sender.address, d.escrow]  # type: ignore[union-attr]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_balances_sum_and_escrow_covers_open_deposits(escrow_world: World, ops: list[tuple[str, int]]) -> None:
    world = escrow_world
    reader = world.deployer
    supply = int(reader.contracts["ChargeToken"].functions.totalSupply().call())
    open_sessions: list[bytes] = []
    for kind, value in ops:
        try:
            if kind == "open":
                session_id, _ = world.driver.open_session("PROP-1", 1, "PROP-TAG", value)
                open_sessions.append(session_id)
            elif kind == "settle" and open_sessions:
                session_id = open_sessions[0]
                digest = settlement_batch_digest(world.deployment.domain("Escrow"), [(session_id, 1, value)])
                world.relayer.settle_batch([(session_id, 1, value)], quorum_signatures(world.validators[:3], digest))
                open_sessions.pop(0)
            elif kind == "refund" and open_sessions:
                advance_time(world.w3, value)
                world.driver.refund(open_sessions[-1])
                open_sessions.pop()
        except ChainRevert as exc:
            # the only rejections these operations may meet, and they change nothing
            assert exc.name in ("RefundTooEarly", "DepositInvalid"), exc
        block = reader.block_number()
        balances = [reader.token_balance(a, block) for a in _holders(world)]
        assert sum(balances) == supply
        open_total = reader.open_deposits(block)
        assert balances[2] == open_total
        listed = [reader.session(s, block) for s in open_sessions]
        assert all(s is not None and s.status is SessionStatus.OPEN for s in listed)
        assert sum(s.deposit for s in listed if s is not None) <= open_total
