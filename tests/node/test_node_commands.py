"""Manager commands through the node's application (static chain, real application): mempool
admission, honest proposals, a Byzantine proposer's forged command refused, outcomes once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

from test_node_app import ANCHOR, ESCROW, KEYS, make_app
from test_node_app import block as make_block

from devsen.app import CODE_COMMAND_REFUSED, CommandsAdmitted
from devsen.ledger import DeviceInfo, Tariff
from devsen.ledger.commands import ChargerCommand, sign_command, sign_outcome
from primitives.eip712 import SigningKey

MANAGER = SigningKey(b"\x51" * 32)
HOSTILE = SigningKey(b"\x52" * 32)
BLOCK_MS = 1_700_000_000_000  # test_node_app.block: height h has time BLOCK_MS + h * 1000


def commands_app(tmp_path: Path) -> tuple[Any, Any]:
    app, shell = make_app(tmp_path, confirmations=0)
    cast(Any, app.chain).view.devices["CP-1"] = DeviceInfo(b"\x01" * 32, "0x" + MANAGER.address.hex(), 2,
                                                           Tariff(300_000))
    return app, shell


def reset(key: SigningKey = MANAGER, nonce: int = 1, expires: int = BLOCK_MS + 600_000,
          kind: str = "Soft") -> ChargerCommand:
    return sign_command(key, ESCROW, "CP-1", "1.6", "Reset", {"type": kind}, nonce, expires)


def test_mempool_refuses_forged_expired_invalid_and_replayed_commands(tmp_path: Path) -> None:
    app, shell = commands_app(tmp_path)
    now = int(time.time() * 1000)
    good = reset(nonce=7, expires=now + 60_000)
    assert app.check_tx(good.encode()).ok  # manager not read yet: the signature and rules only
    app.commands.note_manager("CP-1", MANAGER.address)
    assert app.check_tx(good.encode()).ok
    hostile = reset(HOSTILE, expires=now + 60_000)
    assert "not by the device's manager" in app.check_tx(hostile.encode()).reason
    assert "expired" in app.check_tx(reset(nonce=8, expires=now - 1).encode()).reason
    invalid = sign_command(MANAGER, ESCROW, "CP-1", "1.6", "Reset", {"type": "Gentle"}, 9, now + 60_000)
    assert "payload invalid for OCPP 1.6 Reset" in app.check_tx(invalid.encode()).reason
    broken = ChargerCommand(good.charger_id, good.ocpp_version, good.action, good.payload_json, good.nonce,
                            good.expires_at_ms, good.signature[:64] + b"\x05")
    assert "v must be" in app.check_tx(broken.encode()).reason
    assert not app.check_tx(good.encode()[:-3]).ok


def test_honest_proposal_leaves_out_commands_whose_manager_is_unknown_or_wrong(tmp_path: Path) -> None:
    app, _ = commands_app(tmp_path)
    now = int(time.time() * 1000)
    good, hostile = reset(nonce=1, expires=now + 600_000), reset(HOSTILE, nonce=2, expires=now + 600_000)
    assert app.check_tx(hostile.encode()).ok  # gossiped before this node read CP-1's manager
    facts = app.propose_facts(1)  # reads the managers of mempool commands' chargers
    prepared = app.prepare_proposal(1, (good.encode(), hostile.encode(), good.encode()), facts)
    assert prepared.payloads == (good.encode(),)  # the forgery and the second copy (same nonce) left out
    soon = reset(nonce=3, expires=now + 1_000)
    assert app.prepare_proposal(1, (soon.encode(),), facts).payloads == ()


def test_byzantine_block_with_a_forged_command_is_refused(tmp_path: Path) -> None:
    app, shell = commands_app(tmp_path)
    forged = reset(HOSTILE)
    assert not shell.process(make_block(app, 1, (forged.encode(),)))
    assert app.counters["proposals_rejected"] == 1
    expired = reset(expires=BLOCK_MS)
    assert not shell.process(make_block(app, 1, (expired.encode(),)))
    twice = (reset(nonce=4).encode(), reset(nonce=4, kind="Hard").encode())
    assert not shell.process(make_block(app, 1, twice))
    outsider = sign_outcome(HOSTILE, ANCHOR, b"\x01" * 32, "result", {"status": "Accepted"})
    assert not shell.process(make_block(app, 1, (outsider.encode(),)))
    assert shell.process(make_block(app, 1, (reset().encode(),)))


def test_committed_command_notice_outcome_once_and_two_nodes_agree(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    apps = [commands_app(tmp_path / "a"), commands_app(tmp_path / "b")]
    command = reset()
    command_id = command.digest(ESCROW)
    outcome = sign_outcome(KEYS[1], ANCHOR, command_id, "result", {"status": "Accepted"})
    again = sign_outcome(KEYS[2], ANCHOR, command_id, "timeout", {})
    hashes = []
    for app, shell in apps:
        first = make_block(app, 1, (command.encode(),))
        assert shell.process(first)
        shell.finalize(first)
        notices = [n for n in shell.results[-1].notices if isinstance(n, CommandsAdmitted)]
        assert [a.command_id for n in notices for a in n.commands] == [command_id]
        second = make_block(app, 2, (outcome.encode(), again.encode(), reset(nonce=1, kind="Hard").encode()))
        assert not shell.process(second)  # the nonce is used now: a proposal carrying it again is invalid
        second = make_block(app, 2, (outcome.encode(), again.encode()))
        assert shell.process(second)
        shell.finalize(second)
        results = shell.results[-1].tx_results
        assert [r.code for r in results] == [0, CODE_COMMAND_REFUSED]
        assert "already has its outcome" in results[1].log
        record = app.ledger.commands.get(command_id)
        assert record.status == "result" and record.reporter == KEYS[1].address
        hashes.append(shell.results[-1].app_hash)
    assert hashes[0] == hashes[1]
