"""Chain facts: the keys a block reads are a pure function of (events, ledger state), and the
ledger never reads outside them (checked over every block of the ledger's own tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from devsen.chain_facts import ChainFacts, FactsView, chain_keys
from devsen.ledger import DeviceInfo, Ledger, Tariff, id_tag_hash
from ocpp_adapter.events import ChargerEvent

ROOT = Path(__file__).resolve().parents[2]


def _event(charger: str, action: str, payload: dict[Any, Any]) -> ChargerEvent:
    return ChargerEvent(charger, "1.6", action, "m", payload, "0x" + "a1" * 20, 1_700_000_000_000)


def test_keys_list_chargers_and_every_id_tag_sorted_and_deduplicated() -> None:
    events = [_event("B", "Authorize", {"idTag": "T1"}), _event("A", "StartTransaction", {"idTag": "T2"}),
              _event("B", "TransactionEvent", {"idToken": {"idToken": "T3", "type": "ISO14443"}})]
    keys = chain_keys(events, Ledger())
    assert keys.chargers == ("A", "B")
    assert keys.id_tags == tuple(sorted(id_tag_hash(t) for t in ("T1", "T2", "T3")))
    assert chain_keys(list(reversed(events)), Ledger()) == keys  # order of events does not matter


def test_a_read_outside_the_facts_is_absent_and_recorded() -> None:
    device = DeviceInfo(b"\x01" * 32, "0x" + "11" * 20, 2, Tariff(1))
    view = FactsView(ChainFacts(1, b"\x00" * 32, b"", chain_keys([], Ledger()), devices={"A": device}))
    assert view.device("A") == device
    assert view.device("Z") is None and view.id_tag(b"\x02" * 32) is None
    assert view.open_escrow_sessions("Z") == () and view.escrow_session(b"\x03" * 32) is None
    assert [kind for kind, _ in view.outside] == ["device", "id_tag", "open_escrow_sessions", "escrow_session"]


def test_the_ledger_tests_never_read_outside_the_prefetched_facts() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.node.facts_guard", "-p", "no:cacheprovider",
         "tests/ledger/test_ledger_v16.py", "tests/ledger/test_ledger_v201.py",
         "tests/ledger/test_ledger_session_token.py", "tests/ledger/test_ledger_properties.py",
         "tests/ledger/test_ledger_commands.py", "tests/ledger/test_ledger_provisioning.py",
         "tests/ledger/test_ledger_uptime.py",
         "tests/ledger/test_ledger_reward_parts.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    checked = int(run.stdout.split("facts_guard: ")[1].split()[0])
    assert checked > 1000, run.stdout[-2000:]
