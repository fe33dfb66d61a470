"""A second escrow session for the same charger, connector and idTag, after a first one settled,
binds (with or without a refund deadline, on a signed-meter device): the ledger was not the
cause of the signed-meter e2e test's Blocked start (see tests/foundation/test_wallet_confirmations.py)."""

from __future__ import annotations

from ledger_world import CHARGER, DEPOSIT, ESCROW_1, World, start16, stop16

from devsen.ledger import EscrowSession, id_tag_hash

ESCROW_3 = b"\x07" * 32


def _second(world: World, refund_timeout_s: int | None) -> str:
    tx = world.one(start16(meter=1_000))["transactionId"]
    world.now_ms += 600_000
    orders = world.block(stop16(tx, 2_000, world.now_ms - 1_000)).settlements
    assert [o.session_id for o in orders] == [ESCROW_1]
    world.chain.close_escrow_session(ESCROW_1)
    world.block()
    opened = world.now_ms // 1000
    world.chain.sessions[ESCROW_3] = EscrowSession(
        ESCROW_3, "0x" + "dd" * 20, CHARGER, 1, id_tag_hash("TAG-OK"), DEPOSIT, opened,
        refund_at_s=None if refund_timeout_s is None else opened + refund_timeout_s)
    world.now_ms += 5_000
    reply = world.one(start16(meter=20_000, at_ms=world.now_ms))
    return str(reply["idTagInfo"]["status"])


def test_second_escrow_binds_without_deadline() -> None:
    assert _second(World(), None) == "Accepted"


def test_second_escrow_binds_with_deadline() -> None:
    assert _second(World(), 86_400) == "Accepted"


def test_second_escrow_binds_on_a_signed_meter_device() -> None:
    from test_ledger_signed import signed_world
    assert _second(signed_world(), 86_400) == "Accepted"
