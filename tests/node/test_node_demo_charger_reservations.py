"""The demo charger honours reservations (OCPP 1.6 §5.13, 2.0.1 H01): ReserveNow / CancelReservation
answers, and a remote start on a reserved connector only for its holder (or its Authorize group)."""

from __future__ import annotations

import time
from typing import Any

import trio

from devsen.demo_charger import DemoCharger
from devsen.ledger.parse import format_timestamp_ms


def charger(version: str = "1.6", parent: str | None = None) -> DemoCharger:
    demo = DemoCharger(None, "CP-X", ocpp_version=version)  # type: ignore[arg-type]  # no socket: pure parts only
    answers: list[tuple[str, dict[str, Any]]] = []

    async def call(action: str, payload: dict[str, Any], message_id: str | None = None) -> dict[str, Any]:
        answers.append((action, payload))
        if version == "1.6":
            return {"idTagInfo": {"status": "Accepted", **({"parentIdTag": parent} if parent else {})}}
        return {"idTokenInfo": {"status": "Accepted",
                                **({"groupIdToken": {"idToken": parent, "type": "Central"}} if parent else {})}}

    demo.call = call  # type: ignore[method-assign]
    demo.authorized = answers  # type: ignore[attr-defined]
    return demo


def later(seconds: int) -> str:
    return format_timestamp_ms(int((time.time() + seconds) * 1000))


def test_reserve_now_and_cancel_in_both_versions() -> None:
    demo = charger()
    reserve = {"connectorId": 1, "expiryDate": later(600), "idTag": "RTOKEN", "parentIdTag": "RTOKEN",
               "reservationId": 7}
    assert demo.reserve("ReserveNow", reserve) == {"status": "Accepted"}
    assert demo.reserve("ReserveNow", {**reserve, "reservationId": 8}) == {"status": "Occupied"}  # held by 7
    assert demo.reserve("ReserveNow", {**reserve, "connectorId": 9}) == {"status": "Rejected"}
    assert demo.reserve("ReserveNow", {**reserve, "expiryDate": "soon"}) == {"status": "Rejected"}
    demo.running["1"] = {"connector": 2}
    assert demo.reserve("ReserveNow", {**reserve, "connectorId": 2, "reservationId": 9}) == {"status": "Occupied"}
    assert demo.reserve("CancelReservation", {"reservationId": 7}) == {"status": "Accepted"}
    assert demo.reserve("CancelReservation", {"reservationId": 7}) == {"status": "Rejected"}  # gone
    demo201 = charger("2.0.1")
    central = {"idToken": "RTOKEN", "type": "Central"}
    assert demo201.reserve("ReserveNow", {"id": 3, "evseId": 1, "expiryDateTime": later(60), "idToken": central,
                                          "groupIdToken": central}) == {"status": "Accepted"}
    assert demo201.reservations[3]["group"] == "RTOKEN"
    # an expired reservation holds nothing
    assert demo201.reserve("ReserveNow", {"id": 4, "evseId": 2, "expiryDateTime": later(-5), "idToken": central})[
        "status"] == "Accepted"
    assert demo201.reservation_on(2) is None


async def test_a_remote_start_on_a_reserved_connector_is_only_for_its_holder() -> None:
    hostile = charger(parent=None)  # the node names no group for this idTag: someone else's start
    hostile.reserve("ReserveNow", {"connectorId": 1, "expiryDate": later(600), "idTag": "RTOKEN",
                                   "parentIdTag": "RTOKEN", "reservationId": 7})
    with trio.fail_after(5):
        assert await hostile._may_start_on(2, "SOTHER") is True  # the other connector is free
        assert await hostile._may_start_on(1, "RTOKEN") is True  # the reservation's own idTag
        assert await hostile._may_start_on(1, "SOTHER") is False
        holder = charger(parent="RTOKEN")  # the node's Authorize names the reservation group
        holder.reservations = dict(hostile.reservations)
        assert await holder._may_start_on(1, "SHOLDER") is True
        for version in ("2.0.1",):
            demo = charger(version, parent="WRONG")
            demo.reservations = dict(hostile.reservations)
            assert await demo._may_start_on(1, "SOTHER") is False
    # a start uses the reservation up
    hostile._track("StartTransaction", {"connectorId": 1, "idTag": "RTOKEN", "meterStart": 0},
                   {"idTagInfo": {"status": "Accepted"}, "transactionId": 1})
    assert hostile.reservations == {}
