"""`devsen stake`: a validator operator's on-chain steps with the node's own key
(contracts/STAKING.md).

    devsen stake show       --keys DIR --network deployment.json --rpc URL
    devsen stake register   --keys DIR --network deployment.json --rpc URL [--amount N] --peer-id ID --endpoint URL
    devsen stake register-operator --keys DIR --network ... --rpc ... [--amount N] --peer-id ID --endpoint URL
    devsen stake sign-update --keys DIR --network ... --rpc ... (--add 0x.. | --remove 0x..)...
    devsen stake submit-update --keys DIR --network ... --rpc ... --epoch E --validators 0x..,0x.. --signatures F1,F2,...
    devsen stake sign-remove-operator   --keys DIR --network ... --rpc ... --operator 0x..
    devsen stake submit-remove-operator --keys DIR --network ... --rpc ... --operator 0x.. --signatures F1,F2,...
    devsen stake prune-operator --keys DIR --network ... --rpc ... --operator 0x..
    devsen stake unbond     --keys DIR --network ... --rpc ...
    devsen stake withdraw   --keys DIR --network ... --rpc ...

`register` approves the ValidatorSet and bonds `--amount` (default: the minimum stake) with
`registerCandidate`; `register-operator` bonds (default: the minimum operator stake,
`minOperatorStake`) with `registerOperator`, for a full node that accepts chargers
(`node.accept_chargers`): it vouches for their events as an operator of the network without
joining the validator set. When the 256 operator slots are full, `register-operator` names an operator
whose stake fell below the minimum, if there is one: anyone frees its slot with `prune-operator`. A quorum removes (and bars) an operator the same
way it changes the set: `sign-remove-operator` on each validator, `submit-remove-operator` once. A set change is the existing quorum path: each current validator runs
`sign-update` (it prints the proposed set and its signature as one JSON line), anyone collects
a quorum of those lines into files and runs `submit-update`. A validator leaves by a set change
without it, then `unbond`s and, after the unbonding period, `withdraw`s.
Amounts are ChargeToken base units (6 decimals: 1 DCT = 1,000,000).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from web3 import Web3

from anchoring.chain import (
    ChainClient,
    ChainError,
    ChainRevert,
    Deployment,
    TransactionSender,
    connect,
)
from consensus.signing import OPERATOR_REMOVAL_TYPE, VALIDATOR_SET_UPDATE_TYPE
from p2p.keys import KeyFileError
from primitives.eip712 import (
    SignatureError,
    sort_signatures_by_signer,
    to_checksum_hex,
    typed_digest,
)
from primitives.hashing import validators_hash

MAX_SIGNATURE_FILE_BYTES = 4096
PROG = "devsen stake"


class StakeCliError(ValueError):
    """A bad argument; the message names it."""


def _address(text: str, what: str) -> str:
    if not Web3.is_address(text):
        raise StakeCliError(f"{what}: {text!r} is not an address")
    return Web3.to_checksum_address(text)


def _ascending(addresses: list[str]) -> list[str]:
    return sorted(set(addresses), key=lambda a: bytes.fromhex(a[2:]))


def _client(args: argparse.Namespace) -> tuple[ChainClient, str]:
    from p2p.keys import load_keys

    keys = load_keys(args.keys)
    deployment = Deployment.load(args.network)
    w3 = connect(args.rpc)
    client = ChainClient(w3, deployment, TransactionSender(w3, keys.validator.secret))
    return client, to_checksum_hex(keys.validator.address)


def update_digest(deployment: Deployment, epoch: int, validators: list[str]) -> bytes:
    """The ValidatorSetUpdate digest the current validators sign."""
    return typed_digest(deployment.domain("ValidatorSet"), VALIDATOR_SET_UPDATE_TYPE,
                        [epoch, validators_hash(validators)])


def removal_digest(deployment: Deployment, epoch: int, operator: str) -> bytes:
    """The OperatorRemoval digest the current validators sign to remove `operator`."""
    return typed_digest(deployment.domain("ValidatorSet"), OPERATOR_REMOVAL_TYPE, [epoch, operator])


def _sorted_signatures(digest: bytes, lines: list[dict[str, Any]]) -> list[bytes]:
    """The lines' signatures over `digest`, one per signer, sorted by signer (as the contract wants)."""
    return sort_signatures_by_signer(
        digest, (bytes.fromhex(str(line.get("signature", "")).removeprefix("0x")) for line in lines))


def _prunable(client: ChainClient, min_operator_stake: int) -> str | None:
    """A registered operator whose stake is below the minimum (its slot is free to take), or None."""
    for account in client.registered_operators("latest"):
        if client.stake(account, "latest").stake < min_operator_stake:
            return Web3.to_checksum_address(account)
    return None


def _show(client: ChainClient, me: str) -> dict[str, Any]:
    stake = client.stake(me, "latest")
    terms = client.staking_terms("latest")
    state = client.validator_set("latest")
    return {"account": me, "stake_base_units": stake.stake, "withdrawable_at": stake.withdrawable_at,
            "in_current_set": me in state.addresses(), "was_validator": stake.was_validator,
            "operator": bytes.fromhex(me[2:]) in client.operators("latest"),
            "epoch": state.epoch, "min_stake_base_units": terms.min_stake, "unbonding_s": terms.unbonding_s,
            "min_operator_stake_base_units": terms.min_operator_stake,
            "eth_balance_wei": int(client.w3.eth.get_balance(Web3.to_checksum_address(me))),
            "token_balance_base_units": client.token_balance(me, "latest")}


def _read_signatures(paths: list[str]) -> list[dict[str, Any]]:
    lines = []
    for name in paths:
        path = Path(name)
        if path.stat().st_size > MAX_SIGNATURE_FILE_BYTES:
            raise StakeCliError(f"--signatures: {path} is larger than {MAX_SIGNATURE_FILE_BYTES} bytes")
        try:
            lines.append(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise StakeCliError(f"--signatures: {path} is not a sign-update JSON line: {exc}") from exc
    return lines


def stake_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("show", "register", "register-operator", "sign-update", "submit-update",
                                           "sign-remove-operator", "submit-remove-operator", "prune-operator",
                                           "unbond", "withdraw"))
    parser.add_argument("--keys", required=True, type=Path, help="the node's key directory (keys.dir)")
    parser.add_argument("--network", required=True, type=Path, help="the network's deployment.json")
    parser.add_argument("--rpc", required=True, help="JSON-RPC URL of the deployment's chain")
    parser.add_argument("--amount", type=int, default=0, help="register: base units to bond (default: minimum)")
    parser.add_argument("--peer-id", default="", help="register: this node's libp2p peer id (base58)")
    parser.add_argument("--endpoint", default="", help="register: this node's OCPP endpoint URL")
    parser.add_argument("--add", action="append", default=[], help="sign-update: address to add")
    parser.add_argument("--remove", action="append", default=[], help="sign-update: address to remove")
    parser.add_argument("--epoch", type=int, default=-1, help="submit-update: the epoch signed")
    parser.add_argument("--validators", default="", help="submit-update: comma-separated new set")
    parser.add_argument("--signatures", default="", help="submit-update, submit-remove-operator: comma-separated "
                                                          "files of the signed JSON lines")
    parser.add_argument("--operator", default="", help="sign-/submit-remove-operator, prune-operator: its address")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    try:
        client, me = _client(args)
        result = _run(args, client, me)
    except ChainRevert as exc:
        print(f"{PROG} {args.action}: refused on chain: {exc.name}{exc.args_decoded}", file=sys.stderr)
        return 1
    except (ChainError, OSError, ValueError, SignatureError, KeyFileError) as exc:
        print(f"{PROG} {args.action}: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, (ChainError, OSError, KeyFileError)) else 2
    if args.json or args.action in ("sign-update", "sign-remove-operator"):
        print(json.dumps(result, sort_keys=True))
    else:
        print("\n".join(f"{key:26} {value}" for key, value in result.items()))
    return 0


def _run(args: argparse.Namespace, client: ChainClient, me: str) -> dict[str, Any]:
    deployment = client.deployment
    if args.action == "show":
        return _show(client, me)
    if args.action in ("register", "register-operator"):
        from libp2p.peer.id import ID

        if not args.peer_id or not args.endpoint:
            raise StakeCliError(f"{args.action} needs --peer-id (base58) and --endpoint (ws://host:port/ocpp)")
        try:
            peer_id = ID.from_base58(args.peer_id).to_bytes()
        except Exception as exc:  # the base58 decoder raises plain ValueError/Exception kinds
            raise StakeCliError(f"--peer-id: {args.peer_id!r} is not a base58 libp2p peer id") from exc
        terms = client.staking_terms("latest")
        operator = args.action == "register-operator"
        amount = args.amount or (terms.min_operator_stake if operator else terms.min_stake)
        if amount <= 0:
            raise StakeCliError("--amount: this network has no minimum stake; give a positive --amount")
        client.approve(deployment.validator_set, amount)
        register = client.register_operator if operator else client.register_candidate
        try:
            receipt = register(amount, peer_id, args.endpoint)
        except ChainRevert as exc:
            if exc.name != "OperatorsFull":
                raise
            stale = _prunable(client, terms.min_operator_stake)
            fix = (f"free the slot of {stale}, whose stake is below the minimum: `{PROG} prune-operator "
                   f"--operator {stale}`, then register again" if stale else
                   "every registered operator holds the minimum stake; ask the validators to remove one "
                   f"(`{PROG} sign-remove-operator`) or wait for one to leave")
            raise StakeCliError(f"register-operator: all operator slots are taken (OperatorsFull); {fix}") from exc
        return {**_show(client, me), "tx": "0x" + receipt.tx_hash.hex()}
    if args.action in ("sign-remove-operator", "submit-remove-operator", "prune-operator"):
        if not args.operator:
            raise StakeCliError(f"{args.action} needs --operator 0x.. (the operator's address)")
        target = _address(args.operator, "--operator")
        if args.action == "prune-operator":
            receipt = client.prune_operator(target)
            return {"pruned": target, "tx": "0x" + receipt.tx_hash.hex(), "gas_used": receipt.gas_used}
        epoch = client.validator_set("latest").epoch
        digest = removal_digest(deployment, epoch, target)
        if args.action == "sign-remove-operator":
            from p2p.keys import load_keys

            signature = load_keys(args.keys).validator.sign(digest)
            return {"remove_operator": target, "epoch": epoch, "signer": me, "signature": "0x" + signature.hex()}
        if not args.signatures:
            raise StakeCliError("submit-remove-operator needs --signatures (files of sign-remove-operator lines)")
        lines = _read_signatures([p for p in args.signatures.split(",") if p])
        for line in lines:
            if line.get("remove_operator") != target or line.get("epoch") != epoch:
                raise StakeCliError(f"--signatures: {line.get('signer')} signed another removal "
                                    f"({line.get('remove_operator')} at epoch {line.get('epoch')}; "
                                    f"this is {target} at epoch {epoch}): sign again")
        signatures = _sorted_signatures(digest, lines)
        receipt = client.remove_operator(target, signatures)
        return {"removed": target, "epoch": epoch, "signatures": len(signatures),
                "tx": "0x" + receipt.tx_hash.hex(), "gas_used": receipt.gas_used}
    if args.action == "sign-update":
        state = client.validator_set("latest")
        removed = {_address(a, "--remove") for a in args.remove}
        added = [_address(a, "--add") for a in args.add]
        if not added and not removed:
            raise StakeCliError("sign-update needs --add or --remove")
        new_set = _ascending([a for a in state.addresses() if a not in removed] + added)
        from p2p.keys import load_keys

        key = load_keys(args.keys).validator
        epoch = state.epoch + 1
        signature = key.sign(update_digest(deployment, epoch, new_set))
        return {"epoch": epoch, "validators": new_set, "signer": me, "signature": "0x" + signature.hex()}
    if args.action == "submit-update":
        if args.epoch < 0 or not args.validators or not args.signatures:
            raise StakeCliError("submit-update needs --epoch, --validators and --signatures")
        new_set = _ascending([_address(a.strip(), "--validators") for a in args.validators.split(",") if a.strip()])
        digest = update_digest(deployment, args.epoch, new_set)
        lines = _read_signatures([p for p in args.signatures.split(",") if p])
        for line in lines:
            if line.get("epoch") != args.epoch or line.get("validators") != new_set:
                raise StakeCliError(f"--signatures: {line.get('signer')} signed another update "
                                    f"(epoch {line.get('epoch')}, {len(line.get('validators') or [])} validators)")
        signatures = _sorted_signatures(digest, lines)
        receipt = client.update_validators(args.epoch, new_set, signatures)
        return {"epoch": args.epoch, "validators": ",".join(new_set), "signatures": len(signatures),
                "tx": "0x" + receipt.tx_hash.hex(), "gas_used": receipt.gas_used}
    if args.action == "unbond":
        receipt = client.begin_unbonding()
        return {**_show(client, me), "tx": "0x" + receipt.tx_hash.hex()}
    receipt = client.withdraw_stake()
    return {**_show(client, me), "tx": "0x" + receipt.tx_hash.hex()}
