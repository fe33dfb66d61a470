"""`devsen stake`: a validator operator's on-chain steps with the node's own key
(contracts/STAKING.md).

    devsen stake show       --keys DIR --network deployment.json --rpc URL
    devsen stake register   --keys DIR --network deployment.json --rpc URL [--amount N] --peer-id ID --endpoint URL
    devsen stake register-operator --keys DIR --network ... --rpc ... [--amount N] --peer-id ID --endpoint URL
    devsen stake sign-update --keys DIR --network ... --rpc ... (--add 0x.. | --remove 0x..)...
    devsen stake submit-update --keys DIR --network ... --rpc ... --epoch E --validators 0x..,0x.. --signatures F1,F2,...
    devsen stake unbond     --keys DIR --network ... --rpc ...
    devsen stake withdraw   --keys DIR --network ... --rpc ...

`register` approves the ValidatorSet and bonds `--amount` (default: the minimum stake) with
`registerCandidate`; `register-operator` bonds the same way with `registerOperator`, for a full
node that accepts chargers (`node.accept_chargers`): it vouches for their events as an operator
of the network without joining the validator set. A set change is the existing quorum path: each current validator runs
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
from consensus.signing import VALIDATOR_SET_UPDATE_TYPE
from p2p.keys import KeyFileError
from primitives.eip712 import SignatureError, recover_address, to_checksum_hex, typed_digest
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


def _show(client: ChainClient, me: str) -> dict[str, Any]:
    stake = client.stake(me, "latest")
    terms = client.staking_terms("latest")
    state = client.validator_set("latest")
    return {"account": me, "stake_base_units": stake.stake, "withdrawable_at": stake.withdrawable_at,
            "in_current_set": me in state.addresses(), "was_validator": stake.was_validator,
            "operator": bytes.fromhex(me[2:]) in client.operators("latest"),
            "epoch": state.epoch, "min_stake_base_units": terms.min_stake, "unbonding_s": terms.unbonding_s,
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
    parser.add_argument("action", choices=("show", "register", "register-operator", "sign-update", "submit-update", "unbond", "withdraw"))
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
    parser.add_argument("--signatures", default="", help="submit-update: comma-separated sign-update files")
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
    if args.json or args.action == "sign-update":
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
        amount = args.amount or client.staking_terms("latest").min_stake
        if amount <= 0:
            raise StakeCliError("--amount: this network has no minimum stake; give a positive --amount")
        client.approve(deployment.validator_set, amount)
        register = client.register_operator if args.action == "register-operator" else client.register_candidate
        receipt = register(amount, peer_id, args.endpoint)
        return {**_show(client, me), "tx": "0x" + receipt.tx_hash.hex()}
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
        by_signer: dict[bytes, bytes] = {}
        for line in _read_signatures([p for p in args.signatures.split(",") if p]):
            if line.get("epoch") != args.epoch or line.get("validators") != new_set:
                raise StakeCliError(f"--signatures: {line.get('signer')} signed another update "
                                    f"(epoch {line.get('epoch')}, {len(line.get('validators') or [])} validators)")
            signature = bytes.fromhex(str(line.get("signature", "")).removeprefix("0x"))
            by_signer[recover_address(digest, signature)] = signature
        receipt = client.update_validators(args.epoch, new_set, [by_signer[a] for a in sorted(by_signer)])
        return {"epoch": args.epoch, "validators": ",".join(new_set), "signatures": len(by_signer),
                "tx": "0x" + receipt.tx_hash.hex(), "gas_used": receipt.gas_used}
    if args.action == "unbond":
        receipt = client.begin_unbonding()
        return {**_show(client, me), "tx": "0x" + receipt.tx_hash.hex()}
    receipt = client.withdraw_stake()
    return {**_show(client, me), "tx": "0x" + receipt.tx_hash.hex()}
