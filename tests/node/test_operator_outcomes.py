"""Command outcomes reported by a registered operator (a full node accepting chargers).

An operator may report the outcome of a command only for a charger whose last applied event it
vouched (the charger is connected to it). Hostile: a second registered operator reporting for a
charger connected to the first, an operator reporting after its charger moved to a validator,
and an unregistered key: refused at admission; in a (Byzantine) proposed block the first two are
refused by the ledger (the command stays pending, state identical on every node), the third
makes the block invalid. The operator's own outcome then counts, once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from test_node_app import ANCHOR, ESCROW, KEYS, make_app
from test_node_app import block as make_block
from test_operator_admission import OPERATOR, REGISTERED_AT, STRANGER, OperatorChain, vouched

from devsen.app import CODE_COMMAND_REFUSED
from devsen.ledger import DeviceInfo, Ledger, Tariff
from devsen.ledger.commands import sign_command, sign_outcome
from primitives.eip712 import SigningKey

MANAGER = SigningKey(b"\x51" * 32)
ROGUE = SigningKey(b"\x0d" * 32)  # registered as an operator too, but CP-1 is not connected to it
BLOCK_MS = 1_700_000_000_000


class TwoOperators(OperatorChain):
    def operators_at(self, number: int, block_hash: bytes) -> tuple[bytes, ...]:
        return (OPERATOR.address, ROGUE.address) if number >= REGISTERED_AT else ()


def _app(tmp_path: Path) -> tuple[Any, Any]:
    app, shell = make_app(tmp_path, confirmations=0)
    app.chain = TwoOperators()
    cast(Any, app.chain).view.devices["CP-1"] = DeviceInfo(b"\x01" * 32, "0x" + MANAGER.address.hex(), 2,
                                                           Tariff(300_000))
    return app, shell


def _reset(nonce: int) -> Any:
    return sign_command(MANAGER, ESCROW, "CP-1", "1.6", "Reset", {"type": "Soft"}, nonce, BLOCK_MS + 3_600_000)


def _accepted(key: SigningKey, command_id: bytes) -> bytes:
    return sign_outcome(key, ANCHOR, command_id, "result", {"status": "Accepted"}).encode()


def test_only_the_operator_a_charger_is_connected_to_reports_its_outcomes(tmp_path: Path) -> None:
    app, shell = _app(tmp_path)
    command = _reset(1)
    command_id = command.digest(ESCROW)
    first = make_block(app, 1, (command.encode(), vouched(OPERATOR, "boot-1")), eth_block=REGISTERED_AT)
    assert shell.process(first)
    shell.finalize(first)
    name = "0x" + OPERATOR.address.hex()
    assert app.ledger.charger_operator("CP-1") == name

    # admission: the ingress operator and the validators yes; another operator or a stranger no
    assert app.check_tx(_accepted(OPERATOR, command_id)).ok
    assert app.check_tx(_accepted(OPERATOR, command_id)).source == name  # its own mempool share
    assert app.check_tx(_accepted(KEYS[1], command_id)).ok
    rogue = app.check_tx(_accepted(ROGUE, command_id))
    assert not rogue.ok and "neither a validator nor the operator charger CP-1 is connected to" in rogue.reason
    stranger = app.check_tx(_accepted(STRANGER, command_id))
    assert not stranger.ok and "neither a validator nor a registered operator" in stranger.reason

    # a Byzantine proposer carries them anyway: the stranger's makes the block invalid ...
    assert not shell.process(make_block(app, 2, (_accepted(STRANGER, command_id),), eth_block=REGISTERED_AT))
    # ... the rogue operator's is refused by the ledger: the command stays pending
    forged = make_block(app, 2, (_accepted(ROGUE, command_id),), eth_block=REGISTERED_AT)
    assert shell.process(forged)
    shell.finalize(forged)
    result = shell.results[-1].tx_results[0]
    assert result.code == CODE_COMMAND_REFUSED and "is connected to" in result.log
    assert app.ledger.commands.get(command_id).status == "pending"

    honest = make_block(app, 3, (_accepted(OPERATOR, command_id),), eth_block=REGISTERED_AT)
    assert shell.process(honest)
    shell.finalize(honest)
    record = app.ledger.commands.get(command_id)
    assert shell.results[-1].tx_results[0].code == 0
    assert record.status == "result" and record.reporter == OPERATOR.address

    # the snapshot keeps who the charger's operator is (state hash included)
    restored = Ledger.from_bytes(app.ledger.to_bytes())
    assert restored.charger_operator("CP-1") == name and restored.state_hash() == app.ledger.state_hash()


def test_an_operator_whose_charger_moved_to_a_validator_reports_no_more(tmp_path: Path) -> None:
    app, shell = _app(tmp_path)
    command = _reset(2)
    command_id = command.digest(ESCROW)
    first = make_block(app, 1, (command.encode(), vouched(OPERATOR, "boot-1")), eth_block=REGISTERED_AT)
    shell.finalize(first)
    moved = make_block(app, 2, (vouched(KEYS[2], "boot-2"),), eth_block=REGISTERED_AT)  # reconnected at a validator
    shell.finalize(moved)
    assert app.ledger.charger_operator("CP-1") is None
    late = app.check_tx(_accepted(OPERATOR, command_id))
    assert not late.ok and "is connected to" in late.reason
    stale = make_block(app, 3, (_accepted(OPERATOR, command_id),), eth_block=REGISTERED_AT)
    assert shell.process(stale)
    shell.finalize(stale)
    assert shell.results[-1].tx_results[0].code == CODE_COMMAND_REFUSED
    assert app.ledger.commands.get(command_id).status == "pending"  # the validator's delivery reports it


def test_a_validator_only_network_keeps_its_state_hash_layout(tmp_path: Path) -> None:
    """No operator ever vouched: the ingress table is absent from snapshot and hash (as before)."""
    app, shell = _app(tmp_path)
    shell.finalize(make_block(app, 1, (vouched(KEYS[1], "boot-v"),), eth_block=REGISTERED_AT))
    assert app.ledger.charger_operator("CP-1") is None
    assert len(app.ledger._operator_ingress) == 0 and app.ledger._extra_tables() < 6
