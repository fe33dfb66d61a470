"""`devsen wallet`: act on chain as a device owner or a driver.

    devsen wallet --rpc URL --deployment FILE --key-file KEY  COMMAND ...

    roles --driver --manager           register self-service roles
    create-device ID --password PW     register a charger (EVSE) you manage
    register-idtag TAG [--expiry S]    register an RFID/token idTag (stored as keccak-256)
    faucet AMOUNT                      devnet only: mint ChargeToken base units to yourself
    open-session ID --connector N --id-tag TAG --deposit AMOUNT [--voucher-mode]
                                       prepay a charging session (approve + openSession;
                                       openVoucherSession with --voucher-mode)
    refund SESSION_ID                  take back the deposit of a session never settled in time
    session SESSION_ID                 show an escrow session
    balance                            show your ETH and ChargeToken balances
    stream SESSION_ID --cap AMOUNT --node URL [--battery-wh FILE] [--chunk-wh WH] [--voucher-out FILE]
                                       sign per-chunk payment vouchers as the session charges
                                       (devsen/voucher_stream.py); stops at the cap or when the
                                       committed energy runs ahead of the car's own view
    close-with-voucher SESSION_ID (--voucher FILE | --node URL)
                                       device manager: close a voucher-mode escrow session on
                                       chain with the driver's latest voucher alone (no network
                                       needed with --voucher: the file `stream --voucher-out`
                                       writes; --node reads it from a node's ledger)
    rewards [--owner ADDR] [--node URL]
                                       uptime rewards per epoch and why (a node), paid (chain);
                                       with --owner no key is needed

Ids are printed as 0x hex, token amounts in DCT with the base units alongside (1 DCT =
10^6 units), times in ISO 8601 UTC, statuses by name. `--json` (before or after the
command) prints one JSON document instead, for scripts.

The key is read from --key-file (hex) or $DEVSEN_WALLET_KEY. Errors from the contracts are
shown by their custom error names.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from web3 import Web3

from anchoring.chain import (
    ChainClient,
    ChainError,
    Deployment,
    TransactionSender,
    connect,
)
from anchoring.chain.client import DEFAULT_MAX_POWER_W, EscrowSession
from anchoring.chain.transact import Receipt
from anchoring.rewards import paid_to
from devsen.config import ChainSection
from devsen.fmt import dumps, eth_amount, hex0x, iso_time, token_amount
from devsen.ledger.chain import session_token
from devsen.ledger.vouchers import CHUNK_WH, PaymentVoucher, VoucherError, voucher_from_document
from devsen.rewards_view import add_chain_paid, format_rewards, parse_owner
from primitives.credentials import new_auth_credential
from primitives.eip712 import SigningKey

KEY_ENV = "DEVSEN_WALLET_KEY"
ROLE_DRIVER, ROLE_DEVICE_MANAGER = 1, 2


def open_wallet(rpc: str, deployment_path: str | Path, key_hex: str) -> ChainClient:
    """A ChainClient that signs with `key_hex`."""
    deployment = Deployment.from_json(Path(deployment_path).read_text())
    w3 = connect(rpc)
    return ChainClient(w3, deployment, TransactionSender(w3, key_hex.strip()))


def create_device(client: ChainClient, charge_box_id: str, password: str, *, connectors: int = 2,
                  price_per_kwh: int = 300_000, per_minute_fee: int = 0, location: str = "",
                  max_power_w: int = DEFAULT_MAX_POWER_W) -> Receipt:
    """Register a charger; its OCPP password is stored only as a salted scrypt hash.
    `max_power_w` (per connector, 1..4,000,000 W) bounds the energy the ledger settles."""
    salt, auth_hash = new_auth_credential(password)
    return client.create_device(charge_box_id, location=location, connector_count=connectors,
                         price_per_kwh=price_per_kwh, per_minute_fee=per_minute_fee,
                         auth_salt=salt, auth_hash=auth_hash, max_power_w=max_power_w)


NETWORK_CONFIRMATIONS = ChainSection.confirmations  # the nodes' default `chain.confirmations`
CONFIRM_TIMEOUT_S = 60.0
CONFIRM_POLL_S = 0.25


def wait_for_confirmations(client: ChainClient, block_number: int, confirmations: int = NETWORK_CONFIRMATIONS,
                           timeout_s: float = CONFIRM_TIMEOUT_S) -> bool:
    """Wait until `block_number` is `confirmations` deep by the chain head (False after `timeout_s`).

    The network reads the chain `confirmations` blocks below its head, so an escrow session
    opened in a shallower block is not yet visible to the ledger: a StartTransaction sent
    then is answered Blocked (no prepayment), however valid the idTag.
    """
    deadline = time.monotonic() + timeout_s
    while client.block_number() < block_number + confirmations:
        if time.monotonic() >= deadline:
            return False
        time.sleep(CONFIRM_POLL_S)
    return True


def open_prepaid_session(client: ChainClient, charge_box_id: str, connector: int, id_tag: str,
                         deposit: int, confirmations: int = NETWORK_CONFIRMATIONS, *,
                         voucher_mode: bool = False) -> bytes:
    """Approve the escrow for `deposit` and open a session; returns the session id once the
    session is `confirmations` deep (the depth the nodes read at, so a charge may start then).
    If the chain does not advance within CONFIRM_TIMEOUT_S it returns anyway: the session is
    open, and the network honours it once its block is deep enough. `voucher_mode`: the
    session pays by the driver's vouchers (Escrow.openVoucherSession)."""
    client.approve(client.deployment.escrow, deposit)
    session_id, receipt = client.open_session(charge_box_id, connector, id_tag, deposit, voucher_mode=voucher_mode)
    wait_for_confirmations(client, receipt.block_number, confirmations)
    return session_id


MAX_RESERVATION_MINUTES = 120  # Escrow.MAX_RESERVATION_S / 60


def reserve_connector(client: ChainClient, charge_box_id: str, connector: int, id_tag: str, minutes: int,
                      confirmations: int = NETWORK_CONFIRMATIONS) -> tuple[int, int, int, Receipt]:
    """Reserve a connector for `minutes` (1..MAX_RESERVATION_MINUTES) in the Escrow, approving
    the fee (the device's per-minute fee x minutes); (reservation id, expiry unix s, fee, receipt),
    once `confirmations` deep (the depth the nodes read at, so the hold applies from then on)."""
    if not 1 <= minutes <= MAX_RESERVATION_MINUTES:
        raise ValueError(f"--minutes must be in 1..{MAX_RESERVATION_MINUTES}, got {minutes}")
    device = client.device(charge_box_id, "latest")
    if device is None:
        raise ValueError(f"charge_box_id {charge_box_id!r} is not a registered device")
    if device.per_minute_fee == 0:
        raise ValueError(f"device {charge_box_id} takes no reservations (its per-minute fee is 0)")
    fee = device.per_minute_fee * minutes
    expires_at = int(client.w3.eth.get_block("latest")["timestamp"]) + minutes * 60
    client.approve(client.deployment.escrow, fee)
    reservation_id, receipt = client.reserve(charge_box_id, connector, id_tag, expires_at)
    wait_for_confirmations(client, receipt.block_number, confirmations)
    return reservation_id, expires_at, fee, receipt


ROLE_NAMES = {ROLE_DRIVER: "driver", ROLE_DEVICE_MANAGER: "device manager"}


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
    parser.add_argument("--json", action="store_true", help="print one JSON document (for scripts)")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = []
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
    faucet.add_argument("amount", type=int, help="token base units (1 DCT = 1000000)")
    session = sub.add_parser("open-session")
    session.add_argument("charge_box_id")
    session.add_argument("--connector", type=int, required=True)
    session.add_argument("--id-tag", required=True)
    session.add_argument("--deposit", type=int, required=True, help="token base units (1 DCT = 1000000)")
    session.add_argument("--voucher-mode", action="store_true",
                         help="pay by per-chunk vouchers (settles at min(metered, latest voucher))")
    session.add_argument("--wait-start", metavar="NODE_URL",
                         help="wait (up to --wait-s) for the charger's answer to the remote start, read from "
                              "this node's HTTP API, e.g. http://127.0.0.1:8080, and print it")
    session.add_argument("--wait-s", type=float, default=REMOTE_START_WAIT_S,
                         help=f"how long --wait-start waits, seconds (default {REMOTE_START_WAIT_S:.0f})")
    refund = sub.add_parser("refund")
    refund.add_argument("session_id")
    reserve = sub.add_parser("reserve", help="reserve a connector for your idTag, paying its per-minute fee")
    reserve.add_argument("charge_box_id")
    reserve.add_argument("connector", type=int, help="1-based connector (2.0.1: EVSE) id")
    reserve.add_argument("--minutes", type=int, required=True, help=f"1..{MAX_RESERVATION_MINUTES}")
    reserve.add_argument("--id-tag", required=True, help="the idTag (yours) the connector is held for")
    cancel = sub.add_parser("cancel-reservation", help="cancel your reservation; the unspent minutes are refunded")
    cancel.add_argument("reservation_id", type=int)
    show = sub.add_parser("session")
    show.add_argument("session_id")
    balance = sub.add_parser("balance")
    meter = sub.add_parser("meter-key", help="set a device's OCMF meter key and the requireSignedMeter policy")
    meter.add_argument("charge_box_id")
    meter.add_argument("--public-key", required=True, help="DER SubjectPublicKeyInfo as hex (the meter label's form)")
    meter.add_argument("--require-signed", action=argparse.BooleanOptionalAction, default=True,
                       help="settle only on signed readings (default on)")
    stream = sub.add_parser("stream")
    stream.add_argument("session_id")
    stream.add_argument("--cap", type=int, required=True, help="most you pay in total, token base units")
    stream.add_argument("--node", required=True, help="a node's HTTP API, e.g. http://127.0.0.1:8080")
    stream.add_argument("--battery-wh", help="file holding the cumulative Wh the car received (re-read)")
    stream.add_argument("--chunk-wh", type=int, default=CHUNK_WH, help="energy per voucher step, Wh")
    stream.add_argument("--tolerance-wh", type=int, default=0, help="committed Wh allowed above the car's view")
    stream.add_argument("--poll-s", type=float, default=1.0)
    stream.add_argument("--timeout-s", type=float, default=3_600.0)
    stream.add_argument("--voucher-out", help="keep the latest signed voucher in this file (for close-with-voucher)")
    close = sub.add_parser("close-with-voucher", help="manager: close a voucher-mode session with the driver's voucher")
    close.add_argument("session_id")
    source = close.add_mutually_exclusive_group(required=True)
    source.add_argument("--voucher", help="voucher file (JSON, as `stream --voucher-out` writes)")
    source.add_argument("--node", help="a node's HTTP API: take the latest voucher its ledger agreed")
    rewards = sub.add_parser("rewards", help="uptime rewards earned per epoch and why (node) and paid (chain)")
    rewards.add_argument("--owner", help="device manager address (default: the wallet's account)")
    rewards.add_argument("--node", default="http://127.0.0.1:8080", help="a node's HTTP API URL")
    commands += [roles, device, tag, faucet, session, refund, reserve, cancel, show, balance, meter, stream, close, rewards]
    for command in commands:  # `--json` also after the command
        command.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _key(args: argparse.Namespace) -> str:
    if args.key_file:
        return Path(args.key_file).read_text().strip()
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV]
    raise ValueError(f"no key: pass --key-file or set ${KEY_ENV}")


def _session_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"{text!r} is not a session id (0x + 64 hex digits)")
    return raw


def _tx(receipt: Receipt) -> dict[str, Any]:
    return {"tx_hash": hex0x(receipt.tx_hash), "block": receipt.block_number, "gas_used": receipt.gas_used}


def _tx_line(receipt: Receipt) -> str:
    return f"tx {hex0x(receipt.tx_hash)} in block {receipt.block_number}"


def session_document(client: ChainClient, session: EscrowSession) -> dict[str, Any]:
    """An escrow session as JSON-ready values (hex ids, status name, amounts in base units)."""
    device = client.device_by_id(session.device_id, "latest")
    return {
        "session_id": hex0x(session.session_id),
        "status": session.status.name,
        "driver": session.driver,
        "device_id": hex0x(session.device_id),
        "charge_box_id": device.charge_box_id if device is not None else None,
        "connector": session.connector_id,
        "id_tag_hash": hex0x(session.id_tag_hash),
        "session_token": session_token(session.session_id),
        "deposit_units": session.deposit,
        "settled_units": session.settled_amount,
        "refunded_units": {"SETTLED": session.deposit - session.settled_amount,
                           "REFUNDED": session.deposit}.get(session.status.name, 0),
        "energy_wh": session.energy_wh,
        "opened_at": iso_time(session.opened_at),
        "opened_at_unix": session.opened_at,
    }


def format_session(doc: dict[str, Any]) -> str:
    """`devsen wallet session` for people."""
    where = f"{doc['charge_box_id']} connector {doc['connector']}" if doc["charge_box_id"] else \
        f"device {doc['device_id']} connector {doc['connector']}"
    lines = [
        f"session   {doc['session_id']}",
        f"status    {doc['status']}",
        f"charger   {where}",
        f"driver    {doc['driver']}",
        f"opened    {doc['opened_at']}",
        f"deposit   {token_amount(doc['deposit_units'])}",
    ]
    if doc["status"] == "SETTLED":
        lines += [f"energy    {doc['energy_wh']} Wh",
                  f"paid      {token_amount(doc['settled_units'])} to the device manager",
                  f"refunded  {token_amount(doc['refunded_units'])} to the driver"]
    elif doc["status"] == "REFUNDED":
        lines.append(f"refunded  {token_amount(doc['refunded_units'])} to the driver")
    elif doc["status"] == "OPEN":
        lines.append(f"token     {doc['session_token']} (the idTag the charger gets in its remote start)")
    lines.append(f"idTag     hash {doc['id_tag_hash']}")
    return "\n".join(lines)


def _run(args: argparse.Namespace, client: ChainClient) -> tuple[str, dict[str, Any]]:
    """Carry out the command; returns (text for people, JSON document)."""
    me = client.sender.address if client.sender else ""
    if args.command == "rewards":
        return owner_rewards(client, args.node, args.owner or me)
    if args.command == "roles":
        roles = (ROLE_DRIVER if args.driver else 0) | (ROLE_DEVICE_MANAGER if args.manager else 0)
        if not roles:
            raise ValueError("give --driver and/or --manager")
        receipt = client.register_roles(roles)
        names = [name for bit, name in ROLE_NAMES.items() if roles & bit]
        return (f"{me} registered as {' and '.join(names)}; {_tx_line(receipt)}",
                {"account": me, "roles": names, "roles_bits": roles, **_tx(receipt)})
    if args.command == "create-device":
        receipt = create_device(client, args.charge_box_id, args.password, connectors=args.connectors,
                                price_per_kwh=args.price_per_kwh, per_minute_fee=args.per_minute_fee,
                                location=args.location, max_power_w=args.max_power_w)
        return (f"device {args.charge_box_id} created, managed by {me}: {args.connectors} connectors, "
                f"{token_amount(args.price_per_kwh)} per kWh, max {args.max_power_w} W; {_tx_line(receipt)}",
                {"charge_box_id": args.charge_box_id, "manager": me, "connectors": args.connectors,
                 "price_per_kwh_units": args.price_per_kwh, "per_minute_fee_units": args.per_minute_fee,
                 "max_power_w": args.max_power_w, **_tx(receipt)})
    if args.command == "register-idtag":
        receipt = client.register_id_tag(args.id_tag, args.expiry)
        return (f"idTag {args.id_tag} registered for {me} (stored as its keccak-256), expires "
                f"{iso_time(args.expiry)}; {_tx_line(receipt)}",
                {"account": me, "id_tag": args.id_tag, "expiry": iso_time(args.expiry),
                 "expiry_unix": args.expiry, **_tx(receipt)})
    if args.command == "faucet":
        receipt = client.faucet_mint(me, args.amount)
        return (f"minted {token_amount(args.amount)} to {me}; {_tx_line(receipt)}",
                {"account": me, "minted_units": args.amount, **_tx(receipt)})
    if args.command == "close-with-voucher":
        return close_with_voucher(client, _session_id(args.session_id), voucher_file=args.voucher, node_url=args.node)
    if args.command == "open-session":
        client.approve(client.deployment.escrow, args.deposit)
        session_id, receipt = client.open_session(args.charge_box_id, args.connector, args.id_tag, args.deposit,
                                                  voucher_mode=args.voucher_mode)
        wait_for_confirmations(client, receipt.block_number)  # the nodes see it from then on
        token = session_token(session_id)
        text = (f"session {hex0x(session_id)} opened at {args.charge_box_id} connector {args.connector} with "
                f"deposit {token_amount(args.deposit)}; {_tx_line(receipt)}\n"
                f"the node the charger is connected to sends it a remote start with idTag {token}; "
                f"or present idTag {args.id_tag} at the charger")
        doc = {"session_id": hex0x(session_id), "session_token": token, "charge_box_id": args.charge_box_id,
               "connector": args.connector, "deposit_units": args.deposit, "voucher_mode": args.voucher_mode,
               **_tx(receipt)}
        if args.wait_start:
            remote = wait_remote_start(args.wait_start, session_id, args.wait_s)
            text += "\n" + format_remote_start(remote)
            doc["remote_start"] = remote
        return text, doc
    if args.command == "refund":
        session_id = _session_id(args.session_id)
        receipt = client.refund(session_id)
        return (f"session {hex0x(session_id)} refunded to {me}; {_tx_line(receipt)}",
                {"session_id": hex0x(session_id), "refunded_to": me, **_tx(receipt)})
    if args.command == "reserve":
        reservation_id, expires_at, fee, receipt = reserve_connector(
            client, args.charge_box_id, args.connector, args.id_tag, args.minutes)
        return (f"reservation {reservation_id}: {args.charge_box_id} connector {args.connector} held for idTag "
                f"{args.id_tag} until {iso_time(expires_at)}, fee up to {token_amount(fee)}; {_tx_line(receipt)}",
                {"reservation_id": reservation_id, "charge_box_id": args.charge_box_id, "connector": args.connector,
                 "expires_at": iso_time(expires_at), "expires_at_unix": expires_at, "fee_units": fee, **_tx(receipt)})
    if args.command == "cancel-reservation":
        if not 1 <= args.reservation_id < 2**31:
            raise ValueError(f"reservation_id must be in 1..{2**31 - 1}")
        receipt = client.cancel_reservation(args.reservation_id)
        return (f"reservation {args.reservation_id} cancelled, the unspent minutes refunded to {me}; {_tx_line(receipt)}",
                {"reservation_id": args.reservation_id, "refunded_to": me, **_tx(receipt)})
    if args.command == "session":
        session_id = _session_id(args.session_id)
        session = client.session(session_id, "latest")
        if session is None:
            raise ValueError(f"no escrow session {hex0x(session_id)} on this chain")
        doc = session_document(client, session)
        return format_session(doc), doc
    if args.command == "meter-key":
        from ocpp_adapter import ocmf

        try:
            der = ocmf.public_key_from_hex(args.public_key)
            set_meter_key(client, args.charge_box_id, der, args.require_signed)
        except ocmf.OcmfError as exc:
            raise ValueError(f"--public-key: {exc}") from exc
        return (f"meter key set for {args.charge_box_id} ({len(der)} bytes), requireSignedMeter={args.require_signed}",
                {"charge_box_id": args.charge_box_id, "public_key": hex0x(der), "require_signed_meter": args.require_signed})
    eth = client.w3.eth.get_balance(Web3.to_checksum_address(me))
    tokens = client.token_balance(me, "latest")
    return (f"{me}\n  {eth_amount(eth)}\n  {token_amount(tokens)}",
            {"account": me, "eth_wei": str(eth), "token_units": tokens})


def _stream(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """`devsen wallet stream`: no chain connection needed, the Escrow domain is in the deployment file."""
    import trio

    from devsen.voucher_stream import battery_reader, stream

    domain = Deployment.from_json(Path(args.deployment).read_text()).domain("Escrow")
    key = SigningKey(bytes.fromhex(_key(args).removeprefix("0x")))

    def progress(line: dict[str, Any]) -> None:
        if args.json:  # JSON Lines: one compact document per progress line
            print(json.dumps(line, separators=(",", ":")), flush=True)
        elif line["event"] == "signed":
            print(f"signed {token_amount(line['cumulative_amount'])} for {line['energy_wh']} Wh committed "
                  f"(cost {token_amount(int(line['cost']))}, car {line['car_wh']} Wh), block {line['height']}",
                  flush=True)
        elif line["event"] == "stopped_signing":
            print(f"stopped signing: {line['reason']}", flush=True)
        else:
            print(f"node unreachable ({line['reason']}); retrying", flush=True)

    result = trio.run(lambda: stream(args.node, _session_id(args.session_id), key, domain, args.cap,
                                     chunk_wh=args.chunk_wh, battery=battery_reader(args.battery_wh),
                                     tolerance_wh=args.tolerance_wh, poll_s=args.poll_s,
                                     timeout_s=args.timeout_s, progress=progress,
                                     voucher_out=Path(args.voucher_out) if args.voucher_out else None))
    return (f"session {result['session_id']}: signed {token_amount(result['signed'])} in total"
            + (f"; stopped signing: {result['stop_reason']}" if result["stop_reason"] else ""), result)


def latest_voucher(session_id: bytes, *, voucher_file: str | None = None,
                   node_url: str | None = None) -> PaymentVoucher:
    """The driver's latest voucher for `session_id`: from a voucher file, or the one a node's
    ledger agreed (GET /v1/sessions/{id}/payment). ValueError naming the source and the problem."""
    try:
        if voucher_file is not None:
            try:
                document: Any = json.loads(Path(voucher_file).read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"--voucher {voucher_file}: cannot read a voucher: {exc}") from exc
            return voucher_from_document(session_id, document)
        assert node_url is not None
        url = f"{node_url.rstrip('/')}/v1/sessions/{hex0x(session_id)}/payment"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (the operator's node URL)
                state = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ValueError(f"--node: cannot read {url}: {exc}; with the network down pass --voucher FILE") from exc
        if not state.get("latest_voucher_signature"):
            raise ValueError(f"--node: the ledger holds no voucher for session {hex0x(session_id)}")
        return voucher_from_document(session_id, {"cumulative_amount": state.get("latest_voucher"),
                                                  "signature": state["latest_voucher_signature"]})
    except VoucherError as exc:
        raise ValueError(f"{'--voucher' if voucher_file is not None else '--node'}: {exc}") from exc


def close_with_voucher(client: ChainClient, session_id: bytes, *, voucher_file: str | None = None,
                       node_url: str | None = None) -> tuple[str, dict[str, Any]]:
    """`devsen wallet close-with-voucher`: the manager closes a voucher-mode session on chain
    with the driver's latest voucher (Escrow.closeWithVoucher; no validator quorum needed)."""
    voucher = latest_voucher(session_id, voucher_file=voucher_file, node_url=node_url)
    session = client.session(session_id, "latest")
    if session is None:
        raise ValueError(f"no escrow session {hex0x(session_id)} on this chain")
    if not session.voucher_mode:
        raise ValueError(f"session {hex0x(session_id)} was not opened in voucher mode")
    signer = voucher.signer(client.deployment.domain("Escrow"))
    if hex0x(signer) != session.driver.lower():
        raise ValueError(f"the voucher is signed by {hex0x(signer)}, not by the session's driver {session.driver}")
    receipt = client.close_with_voucher(session_id, voucher.cumulative_amount, voucher.signature)
    paid = min(voucher.cumulative_amount, session.deposit)
    return (f"session {hex0x(session_id)} closed with the driver's voucher: {token_amount(paid)} to the manager, "
            f"{token_amount(session.deposit - paid)} back to the driver; {_tx_line(receipt)}",
            {"session_id": hex0x(session_id), "cumulative_amount": str(voucher.cumulative_amount),
             "paid_units": paid, "refunded_units": session.deposit - paid,
             "source": "file" if voucher_file is not None else "node", **_tx(receipt)})


REMOTE_START_WAIT_S = 120.0
REMOTE_START_POLL_S = 1.0


def wait_remote_start(node_url: str, session_id: bytes, wait_s: float) -> dict[str, Any]:
    """The session's remote start as the node's ledger reports it (GET /v1/sessions/{id}
    "remote_start"), once the charger answered or the request expired, or as it is after
    `wait_s` seconds (state "waiting": the charger is offline; it is started when it connects)."""
    url = f"{node_url.rstrip('/')}/v1/sessions/{hex0x(session_id)}"
    deadline = time.monotonic() + wait_s
    remote: dict[str, Any] = {"state": "waiting", "detail": "no remote start issued yet"}
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (the driver's node URL)
                doc = json.loads(response.read())
            remote = doc.get("session", {}).get("remote_start") or remote
        except urllib.error.HTTPError as exc:
            if exc.code != 404:  # 404: the node does not see the session yet
                raise ValueError(f"--wait-start: {url} answered {exc.code}") from exc
        except (urllib.error.URLError, json.JSONDecodeError, OSError) as exc:
            raise ValueError(f"--wait-start: cannot read {url}: {exc}") from exc
        if remote["state"] != "waiting" or time.monotonic() >= deadline:
            return remote
        time.sleep(REMOTE_START_POLL_S)


def format_remote_start(remote: dict[str, Any]) -> str:
    """One line for people: what became of the remote start."""
    headline = {"accepted": "remote start ACCEPTED by the charger", "rejected": "remote start REJECTED by the charger",
                "failed": "remote start FAILED", "expired": "remote start EXPIRED (the charger never answered)",
                "waiting": "remote start still waiting for the charger (it is sent when the charger connects)"}
    line = f"{headline.get(str(remote.get('state')), 'remote start: ' + str(remote.get('state')))}: {remote.get('detail')}"
    if remote.get("outcome_height"):
        line += f" (committed at height {remote['outcome_height']})"
    return line


def owner_rewards(client: ChainClient, node_url: str, owner_text: str) -> tuple[str, dict[str, Any]]:
    """What `owner` earned (the node's ledger explains it) and what the Rewards contract paid."""
    owner = parse_owner(owner_text)
    url = f"{node_url.rstrip('/')}/v1/rewards/{owner}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (the operator's node URL)
            doc: dict[str, Any] = json.loads(response.read())
    except (urllib.error.URLError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {url}: {exc}; pass --node with a running node's HTTP URL") from exc
    if client.deployment.rewards:
        doc = add_chain_paid(doc, lambda epoch: paid_to(client, epoch, owner))
    return format_rewards(doc), doc


def wallet_main(argv: list[str]) -> int:
    """Entry point of `devsen wallet`; returns an exit code (1 on chain or input errors)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "stream":
            text, document = _stream(args)
            print(json.dumps({"event": "done", **document}, separators=(",", ":")) if args.json else text)
            return 0
        if args.command == "rewards" and args.owner and not (args.key_file or os.environ.get(KEY_ENV)):
            deployment = Deployment.from_json(Path(args.deployment).read_text())
            client = ChainClient(connect(args.rpc), deployment)  # read-only: no key needed
        else:
            client = open_wallet(args.rpc, args.deployment, _key(args))
        text, document = _run(args, client)
    except (ChainError, ValueError, OSError) as exc:
        if args.json:
            print(dumps({"error": str(exc), "command": args.command}))
        print(f"devsen wallet {args.command}: {exc}", file=sys.stderr)
        return 1
    print(dumps(document) if args.json else text)
    return 0
