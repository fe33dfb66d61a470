"""`devsen wallet`: act on chain as a device owner or a driver.

    devsen wallet --rpc URL --deployment FILE --key-file KEY  COMMAND ...

    roles --driver --manager           register self-service roles
    create-device ID --password PW     register a charger (EVSE) you manage
    register-idtag TAG [--expiry S]    register an RFID/token idTag (stored as keccak-256)
    faucet AMOUNT                      devnet only: mint ChargeToken base units to yourself
    open-session ID --connector N --id-tag TAG --deposit AMOUNT
                                       prepay a charging session (approve + openSession)
    refund SESSION_ID                  take back the deposit of a session never settled in time
    session SESSION_ID                 show an escrow session
    balance                            show your ETH and ChargeToken balances

The key is read from --key-file (hex) or $DEVSEN_WALLET_KEY. Errors from the contracts are
shown by their custom error names.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from web3 import Web3

from anchoring.chain import (
    ChainClient,
    ChainError,
    Deployment,
    TransactionSender,
    connect,
    new_auth_credential,
)
from anchoring.chain.client import DEFAULT_MAX_POWER_W

KEY_ENV = "DEVSEN_WALLET_KEY"
ROLE_DRIVER, ROLE_DEVICE_MANAGER = 1, 2


def open_wallet(rpc: str, deployment_path: str | Path, key_hex: str) -> ChainClient:
    """A ChainClient that signs with `key_hex`."""
    deployment = Deployment.from_json(Path(deployment_path).read_text())
    w3 = connect(rpc)
    return ChainClient(w3, deployment, TransactionSender(w3, key_hex.strip()))


def create_device(client: ChainClient, charge_box_id: str, password: str, *, connectors: int = 2,
                  price_per_kwh: int = 300_000, per_minute_fee: int = 0, location: str = "",
                  max_power_w: int = DEFAULT_MAX_POWER_W) -> None:
    """Register a charger; its OCPP password is stored only as a salted scrypt hash.
    `max_power_w` (per connector, 1..4,000,000 W) bounds the energy the ledger settles."""
    salt, auth_hash = new_auth_credential(password)
    client.create_device(charge_box_id, location=location, connector_count=connectors,
                         price_per_kwh=price_per_kwh, per_minute_fee=per_minute_fee,
                         auth_salt=salt, auth_hash=auth_hash, max_power_w=max_power_w)


def open_prepaid_session(client: ChainClient, charge_box_id: str, connector: int, id_tag: str,
                         deposit: int) -> bytes:
    """Approve the escrow for `deposit` and open a session; returns the session id."""
    client.approve(client.deployment.escrow, deposit)
    session_id, _ = client.open_session(charge_box_id, connector, id_tag, deposit)
    return session_id


def set_meter_key(client: ChainClient, charge_box_id: str, public_key_der: bytes, require_signed: bool) -> None:
    """Register the meter's OCMF key (DER SubjectPublicKeyInfo) and the signed-meter policy."""
    from ocpp_adapter import ocmf

    if public_key_der:
        ocmf.load_public_key(public_key_der)  # refuse a key no validator could use, before paying gas
    client.update_device("setChargerPublicKey", charge_box_id, public_key_der)
    client.update_device("setRequireSignedMeter", charge_box_id, require_signed)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devsen wallet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpc", required=True, help="Ethereum JSON-RPC URL")
    parser.add_argument("--deployment", required=True, help="deployment file of the network")
    parser.add_argument("--key-file", help=f"file holding the account key (hex); else ${KEY_ENV}")
    sub = parser.add_subparsers(dest="command", required=True)
    roles = sub.add_parser("roles")
    roles.add_argument("--driver", action="store_true")
    roles.add_argument("--manager", action="store_true")
    device = sub.add_parser("create-device")
    device.add_argument("charge_box_id")
    device.add_argument("--password", required=True, help="the charger's OCPP Basic-auth password")
    device.add_argument("--connectors", type=int, default=2)
    device.add_argument("--price-per-kwh", type=int, default=300_000, help="token base units per kWh")
    device.add_argument("--per-minute-fee", type=int, default=0)
    device.add_argument("--location", default="")
    device.add_argument("--max-power-w", type=int, default=DEFAULT_MAX_POWER_W,
                        help="one connector's maximum power in W (caps settled energy)")
    tag = sub.add_parser("register-idtag")
    tag.add_argument("id_tag")
    tag.add_argument("--expiry", type=int, default=0, help="unix seconds, 0 = never")
    faucet = sub.add_parser("faucet")
    faucet.add_argument("amount", type=int)
    session = sub.add_parser("open-session")
    session.add_argument("charge_box_id")
    session.add_argument("--connector", type=int, required=True)
    session.add_argument("--id-tag", required=True)
    session.add_argument("--deposit", type=int, required=True)
    refund = sub.add_parser("refund")
    refund.add_argument("session_id")
    show = sub.add_parser("session")
    show.add_argument("session_id")
    sub.add_parser("balance")
    meter = sub.add_parser("meter-key", help="set a device's OCMF meter key and the requireSignedMeter policy")
    meter.add_argument("charge_box_id")
    meter.add_argument("--public-key", required=True, help="DER SubjectPublicKeyInfo as hex (the meter label's form)")
    meter.add_argument("--require-signed", action=argparse.BooleanOptionalAction, default=True,
                       help="settle only on signed readings (default on)")
    return parser


def _key(args: argparse.Namespace) -> str:
    if args.key_file:
        return Path(args.key_file).read_text().strip()
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV]
    raise ValueError(f"no key: pass --key-file or set ${KEY_ENV}")


def _session_id(text: str) -> bytes:
    raw = bytes.fromhex(text.removeprefix("0x"))
    if len(raw) != 32:
        raise ValueError("a session id is 32 bytes of hex")
    return raw


def _run(args: argparse.Namespace, client: ChainClient) -> Any:
    me = client.sender.address if client.sender else ""
    if args.command == "roles":
        roles = (ROLE_DRIVER if args.driver else 0) | (ROLE_DEVICE_MANAGER if args.manager else 0)
        if not roles:
            raise ValueError("give --driver and/or --manager")
        client.register_roles(roles)
        return f"roles {roles} registered for {me}"
    if args.command == "create-device":
        create_device(client, args.charge_box_id, args.password, connectors=args.connectors,
                      price_per_kwh=args.price_per_kwh, per_minute_fee=args.per_minute_fee, location=args.location,
                      max_power_w=args.max_power_w)
        return f"device {args.charge_box_id} created, managed by {me}"
    if args.command == "register-idtag":
        client.register_id_tag(args.id_tag, args.expiry)
        return f"idTag registered (as its keccak-256) for {me}"
    if args.command == "faucet":
        client.faucet_mint(me, args.amount)
        return f"minted {args.amount} to {me}"
    if args.command == "open-session":
        session_id = open_prepaid_session(client, args.charge_box_id, args.connector, args.id_tag, args.deposit)
        return f"session 0x{session_id.hex()} opened with deposit {args.deposit}"
    if args.command == "refund":
        client.refund(_session_id(args.session_id))
        return "refunded"
    if args.command == "session":
        return repr(client.session(_session_id(args.session_id), "latest"))
    if args.command == "meter-key":
        from ocpp_adapter import ocmf

        try:
            der = ocmf.public_key_from_hex(args.public_key)
            set_meter_key(client, args.charge_box_id, der, args.require_signed)
        except ocmf.OcmfError as exc:
            raise ValueError(f"--public-key: {exc}") from exc
        return f"meter key set for {args.charge_box_id} ({len(der)} bytes), requireSignedMeter={args.require_signed}"
    eth = client.w3.eth.get_balance(Web3.to_checksum_address(me))
    return f"{me}: {eth} wei, {client.token_balance(me, 'latest')} ChargeToken base units"


def wallet_main(argv: list[str]) -> int:
    """Entry point of `devsen wallet`; returns an exit code (1 on chain or input errors)."""
    args = _parser().parse_args(argv)
    try:
        client = open_wallet(args.rpc, args.deployment, _key(args))
        print(_run(args, client))
    except (ChainError, ValueError, OSError) as exc:
        print(f"devsen wallet {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0
