"""Provisioning end to end (issue 13), real node processes: a boot gets the ledger's provisioning
commands (1.6 ChangeConfiguration, 2.0.1 SetVariables), their outcomes are committed alike at
every node (GET /v1/chargers/{id}/provisioning), and a reboot at another node re-sends nothing."""

from __future__ import annotations

from typing import Any

import test_e2e_network
import trio
from test_e2e_commands import same_everywhere

from devsen.demo_charger import connect_demo_charger
from devsen.devnet import DEMO_CHARGER, DEMO_PASSWORD
from devsen.ledger.provisioning import desired_settings

network = test_e2e_network.network  # the devnet fixture: one network for this module
PROVISIONING = f"/v1/chargers/{DEMO_CHARGER}/provisioning"
ACTIONS = ("ChangeConfiguration", "SetVariables", "SetNetworkProfile")


def provisioning_calls(charger: Any) -> list[tuple[str, Any]]:
    return [(a, p) for a, p in charger.csms_calls if a in ACTIONS]


async def serve_until(charger: Any, wanted: int) -> None:
    """Answer the node's calls until `wanted` provisioning commands have arrived."""
    def enough() -> bool:
        return len(provisioning_calls(charger)) >= wanted

    with trio.fail_after(60):
        while not enough():
            await charger.serve(2, until=enough)


async def settled(nodes: list[Any], version: str) -> dict[str, Any]:
    """The provisioning document of `version` once every setting's command has its outcome, alike
    at every node (its version is that of the last known configuration)."""
    with trio.fail_after(60):
        while True:
            doc = await same_everywhere(nodes, PROVISIONING, settled=False)
            if doc["ocpp_version"] == version and doc["settings"] and all(s["status"] not in (None, "pending") for s in doc["settings"]):
                return doc
            await trio.sleep(0.5)


async def test_boot_provisions_outcomes_agree_and_a_reboot_resends_nothing(network: dict[str, Any]) -> None:
    nodes = network["nodes"]
    for version in ("1.6", "2.0.1"):
        wanted = len(desired_settings(version))
        async with connect_demo_charger(nodes[1].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD,
                                        ocpp_version=version) as charger:
            assert (await charger.boot(connector=1))["status"] == "Accepted"
            await serve_until(charger, wanted)
            doc = await settled(nodes, version)
        assert doc["ocpp_version"] == version
        assert [s["status"] for s in doc["settings"]] == ["result"] * wanted, doc
        assert all(s["satisfied"] for s in doc["settings"]), doc
        print(f"{version}: {wanted} provisioning commands sent and answered, identical at {len(nodes)} nodes")
        async with connect_demo_charger(nodes[2].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD,
                                        ocpp_version=version) as charger:
            assert (await charger.boot(connector=1))["status"] == "Accepted"
            await charger.serve(6)
            assert provisioning_calls(charger) == []  # the reboot re-sends nothing already set
