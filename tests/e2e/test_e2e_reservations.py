"""Reservations end to end (issue 13): a driver reserves a connector in the Escrow on anvil, the
4 `devsen node` processes read it at the agreed Ethereum block, the node holding the demo
charger's connection sends it ReserveNow, and the outcome is the same at every node; the driver
cancels, the unspent minutes come back and the charger gets CancelReservation; an unused
reservation holds its connector until it expires and its fee goes to the manager (a no-show);
the holder's own start applies the fee to its session.

The network is the module fixture `network` of test_e2e_network.py, instantiated again here."""

from __future__ import annotations

import time
from typing import Any

import test_e2e_network
import trio
from test_e2e_commands import same_everywhere

from anchoring.chain import ChainClient
from anchoring.chain.deploy import Deployment
from anchoring.chain.transact import TransactionSender
from devsen.demo_charger import connect_demo_charger
from devsen.demo_charger import iso_now as demo_iso_now
from devsen.devnet import DEMO_CHARGER, DEMO_ID_TAG, DEMO_PASSWORD, DEMO_PRICE_PER_KWH
from devsen.ledger import ChainReservation, id_tag_hash
from devsen.ledger.reservations import reservation_command_id, reservation_token
from devsen.wallet import reserve_connector

network = test_e2e_network.network  # the devnet fixture: one network for this module
PER_MINUTE_FEE = 1_000


async def test_a_reservation_reaches_the_charger_as_reserve_now_and_cancels_with_a_refund(
        network: dict[str, Any]) -> None:
    nodes, driver = network["nodes"], network["seeded"]["driver_client"]
    deployment: Deployment = network["deployment"]
    manager = ChainClient(driver.w3, deployment, TransactionSender(driver.w3, network["anvil"].dev_keys[1]))
    await trio.to_thread.run_sync(manager.update_device, "setTariff", DEMO_CHARGER, DEMO_PRICE_PER_KWH,
                                  PER_MINUTE_FEE)
    before = driver.token_balance(driver.sender.address, "latest")
    reservation_id, expires_at, fee, _ = await trio.to_thread.run_sync(
        reserve_connector, driver, DEMO_CHARGER, 2, DEMO_ID_TAG, 15)
    assert fee == 15 * PER_MINUTE_FEE
    reservation = ChainReservation(reservation_id, DEMO_CHARGER, 2, id_tag_hash(DEMO_ID_TAG), expires_at)
    began = time.perf_counter()

    def reserve_now_calls(charger: Any) -> list[dict[str, Any]]:
        return [p for action, p in charger.csms_calls if action == "ReserveNow"]

    async with connect_demo_charger(nodes[1].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        assert (await charger.boot(connector=1))["status"] == "Accepted"
        with trio.fail_after(60):
            while not reserve_now_calls(charger):
                await charger.call("Heartbeat", {})  # an event of this charger in a block
                await charger.serve(2, until=lambda: bool(reserve_now_calls(charger)))
        latency_s = time.perf_counter() - began
        (payload,) = reserve_now_calls(charger)
        token = reservation_token(id_tag_hash(DEMO_ID_TAG))
        assert payload["reservationId"] == reservation_id and payload["connectorId"] == 2
        assert payload["idTag"] == payload["parentIdTag"] == token
        command_id = reservation_command_id(reservation)
        doc = await same_everywhere(nodes, f"/v1/commands/0x{command_id.hex()}")
        assert doc["action"] == "ReserveNow" and doc["origin"] == "ledger" and doc["status"] == "result"
        print(f"reservation {reservation_id}: ReserveNow at the charger {latency_s:.1f} s after the reserve confirmed")
        await trio.to_thread.run_sync(driver.cancel_reservation, reservation_id)
        after = driver.token_balance(driver.sender.address, "latest")
        assert before - fee < after <= before  # the unspent minutes came back
        cancels = [p for action, p in charger.csms_calls if action == "CancelReservation"]
        with trio.fail_after(60):  # the network tells the charger once the cancel is deep enough
            while not cancels:
                await charger.call("Heartbeat", {})
                await charger.serve(2, until=lambda: any(a == "CancelReservation" for a, _ in charger.csms_calls))
                cancels = [p for action, p in charger.csms_calls if action == "CancelReservation"]
        assert cancels == [{"reservationId": reservation_id}]


async def test_an_unused_reservation_holds_until_it_expires_then_frees_the_connector_and_pays_the_no_show_fee(
        network: dict[str, Any]) -> None:
    """A reservation of connector 2 for 30 s that its driver never uses: while it holds, another
    card of a funded session is refused there ("Blocked", and the charger refuses that session's
    remote start); once the agreed block time passes the expiry the same card starts; the charger
    never got CancelReservation (it expires the reservation itself); anyone then closes the
    reservation on chain and its whole fee goes to the device's manager (the no-show fee)."""
    from web3.logs import DISCARD

    from devsen.wallet import open_prepaid_session, wait_for_confirmations

    nodes, driver = network["nodes"], network["seeded"]["driver_client"]
    deployment: Deployment = network["deployment"]
    manager = ChainClient(driver.w3, deployment, TransactionSender(driver.w3, network["anvil"].dev_keys[1]))
    stranger = ChainClient(driver.w3, deployment, TransactionSender(driver.w3, network["anvil"].dev_keys[3]))
    await trio.to_thread.run_sync(manager.update_device, "setTariff", DEMO_CHARGER, DEMO_PRICE_PER_KWH,
                                  PER_MINUTE_FEE)
    other_card = "OTHER-CARD-7"
    await trio.to_thread.run_sync(driver.register_id_tag, other_card)
    expires_at = int(driver.w3.eth.get_block("latest")["timestamp"]) + 30
    await trio.to_thread.run_sync(driver.approve, deployment.escrow, PER_MINUTE_FEE)
    reservation_id, receipt = await trio.to_thread.run_sync(driver.reserve, DEMO_CHARGER, 2, DEMO_ID_TAG, expires_at)
    await trio.to_thread.run_sync(wait_for_confirmations, driver, receipt.block_number)
    async with connect_demo_charger(nodes[3].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        assert (await charger.boot(connector=2))["status"] == "Accepted"
        await _until_held_at(charger, reservation_id, 20)
        session_id = await trio.to_thread.run_sync(open_prepaid_session, driver, DEMO_CHARGER, 2, other_card,
                                                   5 * 10**6)
        with trio.fail_after(20):  # the network asks; the charger refuses: the connector is reserved
            while not charger.refused_remote_starts:
                await charger.call("Heartbeat", {})
                await charger.serve(1, until=lambda: bool(charger.refused_remote_starts))
        held = await charger.call("StartTransaction", {"connectorId": 2, "idTag": other_card, "meterStart": 0,
                                                       "timestamp": demo_iso_now()})
        assert held["idTagInfo"]["status"] == "Blocked"
        while time.time() < expires_at + 2:  # the next block's time is past the expiry
            await charger.call("Heartbeat", {})
            await trio.sleep(1)
        result = await charger.transaction(other_card, connector=2, meter_start_wh=2_000, meter_stop_wh=2_300)
        assert result["start"]["idTagInfo"]["status"] == "Accepted"
        assert not [p for action, p in charger.csms_calls if action == "CancelReservation"]
    from anchoring.chain.client import SessionStatus
    with trio.fail_after(60):  # settled before the next test reads the driver's balance
        while driver.session(session_id, "latest").status != SessionStatus.SETTLED:
            await trio.sleep(0.5)
    closing = await trio.to_thread.run_sync(stranger.close_reservation, reservation_id)
    (ended,) = driver.contracts["Escrow"].events.ReservationEnded().process_receipt(closing.raw, errors=DISCARD)
    assert ended["args"]["paid"] == PER_MINUTE_FEE and not ended["args"]["cancelled"]
    assert ended["args"]["refunded"] == 0
    print(f"reservation {reservation_id}: held until its expiry, then the other card's session "
          f"0x{session_id.hex()[:12]} started; no-show fee {PER_MINUTE_FEE} paid to the manager")


async def test_the_holders_remote_start_on_its_reserved_connector_gets_the_fee_applied(
        network: dict[str, Any]) -> None:
    """The holder reserves connector 2, the charger gets ReserveNow; the holder opens its session
    there: the Escrow moves the fee into it, the charger admits the holder's session token (its
    Authorize names the reservation group) and the driver pays max(charge, fee) in all."""
    from anchoring.chain.client import SessionStatus
    from devsen.ledger import session_token
    from devsen.wallet import open_prepaid_session

    nodes, driver = network["nodes"], network["seeded"]["driver_client"]
    deployment: Deployment = network["deployment"]
    manager = ChainClient(driver.w3, deployment, TransactionSender(driver.w3, network["anvil"].dev_keys[1]))
    await trio.to_thread.run_sync(manager.update_device, "setTariff", DEMO_CHARGER, DEMO_PRICE_PER_KWH,
                                  PER_MINUTE_FEE)
    me = driver.sender.address
    before = driver.token_balance(me, "latest")
    reservation_id, _, fee, _ = await trio.to_thread.run_sync(
        reserve_connector, driver, DEMO_CHARGER, 2, DEMO_ID_TAG, 20)
    async with connect_demo_charger(nodes[2].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD) as charger:
        assert (await charger.boot(connector=2))["status"] == "Accepted"
        await _until_held_at(charger, reservation_id, 60)
        deposit = 5 * 10**6
        session_id = await trio.to_thread.run_sync(open_prepaid_session, driver, DEMO_CHARGER, 2, DEMO_ID_TAG,
                                                   deposit)
        session = driver.session(session_id, "latest")
        assert session.deposit == deposit + fee  # the fee moved into the session
        assert driver.read("Escrow", "sessionReservationFee", session_id, block="latest") == fee
        token = session_token(session_id)
        with trio.fail_after(60):
            request = await charger.next_remote_start(60)
            while request["idTag"] != token:
                request = await charger.next_remote_start(60)
        assert request["connectorId"] == 2 and not charger.refused_remote_starts
        result = await charger.transaction(token, connector=2, meter_start_wh=1_000, meter_stop_wh=1_500)
        assert result["start"]["idTagInfo"]["status"] == "Accepted"
        assert reservation_id not in charger.reservations  # the start used it up at the charger too
    with trio.fail_after(60):
        while (session := driver.session(session_id, "latest")).status != SessionStatus.SETTLED:
            await trio.sleep(0.5)
    charge = 500 * DEMO_PRICE_PER_KWH // 1000  # at least the energy; the minutes add to it
    assert session.settled_amount >= max(charge, fee)
    after = driver.token_balance(me, "latest")
    assert before - after == session.settled_amount  # the fee and the charge: paid once, as one
    print(f"reservation {reservation_id}: fee {fee} applied to session 0x{session_id.hex()[:12]}, "
          f"settled {session.settled_amount} (energy alone {charge}); the driver paid {before - after} in all")


async def _until_held_at(charger: Any, reservation_id: int, timeout_s: float) -> None:
    """Heartbeat (an event of this charger in a block) until the charger got the reservation's ReserveNow."""
    with trio.fail_after(timeout_s):
        while reservation_id not in charger.reservations:
            await charger.call("Heartbeat", {})
            await charger.serve(1, until=lambda: reservation_id in charger.reservations)
