"""End to end with a signing meter: anvil, the contracts, 4 `devsen node` processes; the
demo charger's meter key registered on chain with requireSignedMeter. The charger signs its
begin and end readings (OCMF); the network settles exactly the signed energy; `devsen audit
session` re-verifies the signatures against the on-chain key through another node and says
VALID. A second session whose end documents are a tampered one (value raised after signing)
and one replayed from the first session settles only what the meter signed (0 Wh), and its
audit is VALID at 0 Wh too. A session whose device tariff is raised after opening settles and
audits VALID at the tariff copied at opening."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

import pytest
import trio
from e2e_devnet import running_devnet

from anchoring.chain import ChainClient, TransactionSender, connect
from anchoring.chain.client import SessionStatus, device_id_of
from devsen.demo_charger import connect_demo_charger, demo_meter_key
from devsen.devnet import (
    DEMO_CHARGER,
    DEMO_DEPOSIT,
    DEMO_ID_TAG,
    DEMO_PASSWORD,
    DEMO_PRICE_PER_KWH,
)
from devsen.session_audit import EXIT_OK, EXIT_PENDING, session_main
from devsen.wallet import open_prepaid_session

NODES = 4


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_devnet(tmp_path_factory.mktemp("devnet-signed"), NODES, signed_meter=True) as devnet:
        yield devnet


def _audit(argv: list[str]) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = session_main(argv)
    text = out.getvalue().strip()
    return code, (json.loads(text) if text.startswith("{") else {"raw": text})


async def _settled(client: Any, session_id: bytes) -> Any:
    with trio.fail_after(120):
        while True:
            session = client.session(session_id, "latest")
            if session.status == SessionStatus.SETTLED:
                return session
            await trio.sleep(0.5)


async def _audit_until_anchored(network: Any, session_id: bytes, node_url: str) -> tuple[int, dict[str, Any]]:
    argv = ["0x" + session_id.hex(), "--node", node_url, "--rpc", network["anvil"].url,
            "--deployment", str(network["deployment_path"]), "--json"]
    with trio.fail_after(120):
        while True:
            code, report = await trio.to_thread.run_sync(_audit, argv)
            if code != EXIT_PENDING:
                return code, report
            await trio.sleep(1.0)


async def test_signing_charger_settles_signed_energy_and_audits_valid(network: dict[str, Any]) -> None:
    nodes = network["nodes"]
    entry, auditor = nodes[1], nodes[2]
    signed: list[dict[str, Any]] = []
    async with connect_demo_charger(entry.ocpp_url, DEMO_CHARGER, DEMO_PASSWORD, demo_meter_key()) as charger:
        record = charger.signed_sample

        def keep(id_tag: str, tx: str, wh: int) -> dict[str, Any]:
            signed.append(record(id_tag, tx, wh))
            return signed[-1]

        charger.signed_sample = keep  # type: ignore[method-assign]
        result = await charger.charge_session(DEMO_ID_TAG, connector=1, meter_start_wh=2_000, meter_stop_wh=9_500)
    assert result["start"]["idTagInfo"]["status"] == "Accepted"

    client = network["seeded"]["driver_client"]
    session_id = network["seeded"]["session_id"]
    session = await _settled(client, session_id)
    assert session.energy_wh == 7_500
    assert session.settled_amount == min(7_500 * DEMO_PRICE_PER_KWH // 1000, DEMO_DEPOSIT)
    code, report = await _audit_until_anchored(network, session_id, auditor.http_url)
    print(report)
    assert code == EXIT_OK and report["verdict"] == "VALID", report
    assert report["recomputed_energy_wh"] == 7_500 == report["escrow_energy_wh"]

    # Second session: the end documents are tampered with / replayed from the first session.
    second = await trio.to_thread.run_sync(
        lambda: open_prepaid_session(client, DEMO_CHARGER, 1, DEMO_ID_TAG, DEMO_DEPOSIT))
    replayed_end = signed[-1]
    async with connect_demo_charger(entry.ocpp_url, DEMO_CHARGER, DEMO_PASSWORD, demo_meter_key()) as charger:
        sign = charger.signed_sample

        def forged(id_tag: str, tx: str, wh: int) -> dict[str, Any]:
            sample = sign(id_tag, tx, wh)
            if tx == "E":  # what a tampering charger or ingress would send instead
                sample = {**sample, "value": sample["value"].replace(f'"RV":{wh}', f'"RV":{wh * 10}')}
            return sample

        charger.signed_sample = forged  # type: ignore[method-assign]
        real_call = charger.call

        async def call(action: str, payload: dict[str, Any], message_id: str | None = None) -> dict[str, Any]:
            if action == "StopTransaction":
                payload["transactionData"][0]["sampledValue"].append(replayed_end)
            return await real_call(action, payload, message_id)

        charger.call = call  # type: ignore[method-assign]
        await charger.transaction(DEMO_ID_TAG, 1, 20_000, 30_000)
    tampered = await _settled(client, second)
    assert tampered.energy_wh == 0 and tampered.settled_amount == 0  # only the signed begin reading counts
    code, report = await _audit_until_anchored(network, second, nodes[3].http_url)
    print(report)
    assert code == EXIT_OK and report["recomputed_energy_wh"] == 0, report


async def test_tariff_changed_after_opening_settles_and_audits_at_the_opening_tariff(
        network: dict[str, Any]) -> None:
    """The manager raises the device tariff after the driver opened the session: the network
    settles at the tariff the Escrow copied at opening, and `devsen audit session` (which
    reads that copy, not DeviceFactory.tariffOf at the head) says VALID."""
    anvil, nodes = network["anvil"], network["nodes"]
    client = network["seeded"]["driver_client"]
    w3 = connect(anvil.url)
    manager = ChainClient(w3, client.deployment, TransactionSender(w3, anvil.dev_keys[1]))
    session_id = await trio.to_thread.run_sync(
        lambda: open_prepaid_session(client, DEMO_CHARGER, 1, DEMO_ID_TAG, DEMO_DEPOSIT))
    await trio.to_thread.run_sync(manager.update_device, "setTariff", DEMO_CHARGER, 3 * DEMO_PRICE_PER_KWH, 1_000)
    device = manager.device_by_id(device_id_of(DEMO_CHARGER), "latest")
    assert device is not None and device.price_per_kwh == 3 * DEMO_PRICE_PER_KWH
    async with connect_demo_charger(nodes[0].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD, demo_meter_key()) as charger:
        await charger.transaction(DEMO_ID_TAG, 1, 40_000, 45_000)
    session = await _settled(client, session_id)
    assert session.energy_wh == 5_000
    assert session.settled_amount == 5_000 * DEMO_PRICE_PER_KWH // 1000  # the opening tariff, no minute fee
    code, report = await _audit_until_anchored(network, session_id, nodes[1].http_url)
    print(report)
    assert code == EXIT_OK and report["verdict"] == "VALID", report
    assert report["tariff"] == {"price_per_kwh": str(DEMO_PRICE_PER_KWH), "per_minute_fee": "0"}
