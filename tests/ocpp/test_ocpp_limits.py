"""Small hostile inputs: a 5,000-digit integer, the chargeBoxId charset."""

from __future__ import annotations

import json

import pytest
from ocpp_testkit import HEARTBEAT, charger, exchange, running_server

from ocpp_adapter.protocol import OcppSession, SendReply

HUGE = "9" * 5000


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_a_5000_digit_integer_is_a_framing_callerror_not_an_exception(version: str) -> None:
    # old code: ValueError("Exceeds the limit (4300 digits) ...") escaped receive()
    outcome = OcppSession(version).receive(f'[2,"m1","Heartbeat",{{"x":{HUGE}}}]')
    assert isinstance(outcome, SendReply) and "integer literal too long" in outcome.reason
    frame = json.loads(outcome.frame)
    assert frame[0] == 4 and frame[2] == outcome.code


async def test_the_connection_survives_a_5000_digit_integer() -> None:
    async with running_server() as harness, charger(harness, "CP036") as ws:
        answer = await exchange(ws, f'[2,"m1","Heartbeat",{{"x":{HUGE}}}]')
        assert answer[0] == 4
        assert (await exchange(ws, HEARTBEAT))[0] == 3  # still connected


# DeviceFactory._checkChargeBoxId, transcribed: the server must accept exactly these
CONTRACT_CHARSET = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789*-_=:+|@.")


def test_charge_box_id_charset_is_exactly_the_contracts() -> None:
    from ocpp_adapter.server import charge_box_id_from_path

    for code in range(256):
        char = chr(code)
        encoded = f"%{code:02X}"
        accepted = charge_box_id_from_path(f"/ocpp/CP{encoded}1", "/ocpp/") == f"CP{char}1"
        assert accepted == (char in CONTRACT_CHARSET), repr(char)  # old code: '~' accepted, '|' refused
    assert charge_box_id_from_path("/ocpp/" + "A" * 48, "/ocpp/") == "A" * 48
    assert charge_box_id_from_path("/ocpp/" + "A" * 49, "/ocpp/") is None
