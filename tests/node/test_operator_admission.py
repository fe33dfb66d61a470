"""Admission of events vouched by a registered operator (a full node accepting chargers, issue 15).

An event vouched by an address in ValidatorSet.operators() at the block's agreed Ethereum block is
valid; the same event in a block naming an Ethereum block before the registration is not, and
one vouched by an unregistered node is refused at admission and in blocks at any block. An
operator gets one voucher's share of a block, like a validator (a flood spoils the block), and
the ledger is told which vouchers are validators (presence an operator vouches for earns no uptime).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_node_app import ANCHOR, KEYS, VALIDATORS, StaticChain, block, make_app

from devsen.app import NodeApplication, new_charger_share
from ocpp_adapter.events import ChargerEvent
from ocpp_adapter.vouching import ingress_domain, vouch
from primitives.eip712 import SigningKey

OPERATOR = SigningKey(b"\x0b" * 32)
STRANGER = SigningKey(b"\x0c" * 32)
REGISTERED_AT = 4  # the Ethereum block whose state first lists the operator


class OperatorChain(StaticChain):
    def operators_at(self, number: int, block_hash: bytes) -> tuple[bytes, ...]:
        return (OPERATOR.address,) if number >= REGISTERED_AT else ()


def _app(tmp_path: Path) -> tuple[NodeApplication, Any]:
    app, shell = make_app(tmp_path)
    app.chain = OperatorChain()
    return app, shell


def vouched(key: SigningKey, message_id: str, action: str = "BootNotification") -> bytes:
    body = {"chargePointVendor": "V", "chargePointModel": "M"} if action == "BootNotification" else {}
    return vouch(ChargerEvent("CP-1", "1.6", action, message_id, body, "", 1_700_000_000_000),
                 key, ingress_domain(ANCHOR)).to_bytes()


def test_an_operator_event_is_valid_from_its_registration_and_a_strangers_never(tmp_path: Path) -> None:
    app, shell = _app(tmp_path)

    def valid(b: Any) -> bool:
        return bool(app.process_proposal(b, app.fetch_facts(b.height, b.app_header, b.payloads)))

    mine, theirs = vouched(OPERATOR, "m1"), vouched(STRANGER, "m2")
    assert OPERATOR.address not in VALIDATORS
    assert not app.check_tx(mine).ok  # no block applied yet has shown the registration
    assert not valid(block(app, 1, (mine,), eth_block=REGISTERED_AT - 1))  # not registered at that block
    assert valid(block(app, 1, (mine,), eth_block=REGISTERED_AT))
    assert not valid(block(app, 1, (theirs,), eth_block=REGISTERED_AT))
    assert not valid(block(app, 1, (mine, theirs), eth_block=REGISTERED_AT))
    shell.finalize(block(app, 1, (mine,), eth_block=REGISTERED_AT))
    assert app.operators == frozenset({OPERATOR.address})
    admitted = app.check_tx(vouched(OPERATOR, "m3"))
    assert admitted.ok and admitted.source == "0x" + OPERATOR.address.hex()  # its own mempool share
    refused = app.check_tx(theirs)
    assert not refused.ok and "nor a registered operator" in (refused.reason or "")


def test_an_operator_gets_one_voucher_share_of_a_block(tmp_path: Path) -> None:
    app, _ = _app(tmp_path)
    share = new_charger_share(len(VALIDATORS))  # events of a charger the ledger does not know yet
    flood = tuple(vouched(OPERATOR, f"f{i}", "Heartbeat") for i in range(share + 1))
    facts = app.fetch_facts(1, block(app, 1, flood, eth_block=REGISTERED_AT).app_header, flood)
    assert facts.problem is not None and "more than" in facts.problem
    validators_too = flood[:share] + tuple(vouched(KEYS[1], f"v{i}", "Heartbeat") for i in range(3))
    b = block(app, 1, validators_too, eth_block=REGISTERED_AT)
    assert app.process_proposal(b, app.fetch_facts(b.height, b.app_header, b.payloads))


def test_the_ledger_knows_which_vouchers_are_validators(tmp_path: Path) -> None:
    app, shell = _app(tmp_path)
    shell.finalize(block(app, 1, (vouched(OPERATOR, "b1"),), eth_block=REGISTERED_AT))
    assert app.ledger.uptime("CP-1") is None  # an operator's word earns no rewards
    shell.finalize(block(app, 2, (vouched(KEYS[2], "b2"),), eth_block=REGISTERED_AT))
    assert app.ledger.uptime("CP-1") is not None


class LeavingChain(OperatorChain):
    """The operator is registered from Ethereum block 4 and has left at block 8."""

    def operators_at(self, number: int, block_hash: bytes) -> tuple[bytes, ...]:
        return (OPERATOR.address,) if REGISTERED_AT <= number < 8 else ()


def test_a_proposer_leaves_out_an_operator_that_left_since_the_last_block(tmp_path: Path) -> None:
    """Liveness: the mempool admitted the operator's event while it was registered; the next
    proposal names an Ethereum block where it no longer is. Proposing it would make the block
    invalid on every node, round after round (each proposer's admission still says yes): the
    proposer reads the registry at its own Ethereum block and leaves the event out, and admission
    refuses it from then on."""
    app, shell = _app(tmp_path)
    chain = LeavingChain()
    app.chain = chain
    shell.finalize(block(app, 1, (vouched(OPERATOR, "o1"),), eth_block=REGISTERED_AT))
    pending = vouched(OPERATOR, "o2")
    assert app.check_tx(pending).ok  # admitted while registered
    chain.head_number = 10  # confirmations 2: the proposal names Ethereum block 8
    facts = app.propose_facts(2)
    assert facts[0] == 8
    prepared = app.prepare_proposal(2, (pending, vouched(KEYS[1], "v1")), facts)
    assert pending not in prepared.payloads and len(prepared.payloads) == 1
    b = block(app, 2, prepared.payloads, eth_block=8)
    assert app.process_proposal(b, app.fetch_facts(b.height, b.app_header, b.payloads))
    assert not app.check_tx(pending).ok
