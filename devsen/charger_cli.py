"""`devsen charger`: a device manager operates its charger through the network (issue 13).

    devsen charger config get CP-42 [KEY ...]      1.6 GetConfiguration; 2.0.1 GetVariables
                                                   (KEY = Component/Variable) or, without keys,
                                                   GetBaseReport (its NotifyReport stream)
    devsen charger config set CP-42 KEY VALUE      1.6 ChangeConfiguration; 2.0.1 SetVariables
    devsen charger config show CP-42               the last known configuration (no command)
    devsen charger reset CP-42 [--hard]
    devsen charger unlock CP-42 1
    devsen charger stop CP-42 TRANSACTION_ID       RemoteStopTransaction / RequestStopTransaction
    devsen charger trigger CP-42 StatusNotification [--connector N]
    devsen charger availability CP-42 inoperative [--connector N]
    devsen charger clear-cache CP-42
    devsen charger data-transfer CP-42 VENDOR [--message-id M] [--data TEXT]
    devsen charger send CP-42 ACTION '{"json": "payload"}'   any supported action
    devsen charger provisioning CP-42 [--interval S] [--measurands Voltage,SoC] [--default]
                                                   the device's provisioning profile (applied by the
                                                   ledger, then sent to the charger: profiles.py)
    devsen charger show COMMAND_ID

Each command is signed here with the manager's key (--key-file, or $DEVSEN_WALLET_KEY) under
the network's DeviceFactory EIP-712 domain (from --deployment), submitted to --node, and the
CLI waits (--wait-s) for the outcome the network committed and prints it (`--json`: the
node's command document). The charger's OCPP version comes from --ocpp, else from the node.
Exit status: 0 the charger answered (CALLRESULT) or the ledger applied it, 1 refused or failed,
3 still pending.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import trio

from anchoring.chain.deploy import Deployment
from devsen.http_api import http_get_json, http_post_json
from devsen.ledger.commands import json_text, sign_command
from devsen.ledger.profiles import PROFILE_ACTION
from primitives.eip712 import Domain, SigningKey

KEY_ENV = "DEVSEN_WALLET_KEY"  # the wallet's (devsen/wallet.py): the same account manages its devices
NODE_ENV = "DEVSEN_NODE"
EXIT_REFUSED, EXIT_PENDING = 1, 3
HARD_RESET = {"1.6": "Hard", "2.0.1": "Immediate"}
SOFT_RESET = {"1.6": "Soft", "2.0.1": "OnIdle"}


class CliError(ValueError):
    """A problem to print and exit 1 with."""


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--node", default=os.environ.get(NODE_ENV, "http://127.0.0.1:8080"),
                        help=f"a node's HTTP API (default ${NODE_ENV} or http://127.0.0.1:8080)")
    common.add_argument("--deployment", help="deployment file of the network (the signing domain)")
    common.add_argument("--key-file", help=f"file holding the manager's account key (hex); else ${KEY_ENV}")
    common.add_argument("--ocpp", choices=("1.6", "2.0.1"), help="the charger's OCPP version (default: the node's)")
    common.add_argument("--ttl-s", type=float, default=600.0, help="the command expires this long after signing")
    common.add_argument("--wait-s", type=float, default=60.0, help="how long to wait for the charger's answer")
    common.add_argument("--json", action="store_true", help="print the node's JSON document (for scripts)")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="devsen charger", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    config = sub.add_parser("config", help="read or change configuration").add_subparsers(dest="config_command",
                                                                                          required=True)
    get = config.add_parser("get", parents=[common])
    get.add_argument("charger_id")
    get.add_argument("keys", nargs="*")
    set_ = config.add_parser("set", parents=[common])
    set_.add_argument("charger_id")
    set_.add_argument("key")
    set_.add_argument("value")
    config.add_parser("show", parents=[common]).add_argument("charger_id")
    reset = sub.add_parser("reset", parents=[common])
    reset.add_argument("charger_id")
    reset.add_argument("--hard", action="store_true", help="1.6 Hard / 2.0.1 Immediate (default Soft / OnIdle)")
    unlock = sub.add_parser("unlock", parents=[common])
    unlock.add_argument("charger_id")
    unlock.add_argument("connector", type=int, help="1.6 connector / 2.0.1 EVSE id")
    stop = sub.add_parser("stop", parents=[common])
    stop.add_argument("charger_id")
    stop.add_argument("transaction_id")
    trigger = sub.add_parser("trigger", parents=[common])
    trigger.add_argument("charger_id")
    trigger.add_argument("message", help="e.g. StatusNotification, BootNotification, MeterValues, Heartbeat")
    trigger.add_argument("--connector", type=int)
    availability = sub.add_parser("availability", parents=[common])
    availability.add_argument("charger_id")
    availability.add_argument("state", choices=("operative", "inoperative"))
    availability.add_argument("--connector", type=int, help="default: the whole charger")
    sub.add_parser("clear-cache", parents=[common]).add_argument("charger_id")
    transfer = sub.add_parser("data-transfer", parents=[common])
    transfer.add_argument("charger_id")
    transfer.add_argument("vendor_id")
    transfer.add_argument("--message-id")
    transfer.add_argument("--data")
    send = sub.add_parser("send", parents=[common], help="any supported action with a JSON payload")
    send.add_argument("charger_id")
    send.add_argument("action")
    send.add_argument("payload", help="the CALL payload as JSON")
    profile = sub.add_parser("provisioning", parents=[common], help="the device's provisioning profile")
    profile.add_argument("charger_id")
    profile.add_argument("--interval", type=int, help="meter sample interval, seconds (10..3600)")
    profile.add_argument("--measurands", help="comma-separated measurands besides the energy register")
    profile.add_argument("--default", action="store_true", help="back to the network's default profile")
    sub.add_parser("show", parents=[common]).add_argument("command_id")
    return parser


def _component_variable(key: str) -> tuple[dict[str, str], dict[str, str]]:
    component, _, variable = key.partition("/")
    if not component or not variable:
        raise CliError(f"2.0.1 key {key!r} must be Component/Variable, e.g. OCPPCommCtrlr/HeartbeatInterval")
    return {"name": component}, {"name": variable}


def call_of(args: argparse.Namespace, version: str, nonce: int) -> tuple[str, dict[str, Any]]:
    """(action, payload) of a subcommand in the charger's OCPP version."""
    v16 = version == "1.6"
    command = args.command
    if command == "config" and args.config_command == "get":
        if v16:
            return "GetConfiguration", ({"key": args.keys} if args.keys else {})
        if not args.keys:
            return "GetBaseReport", {"requestId": nonce % 2**31, "reportBase": "ConfigurationInventory"}
        return "GetVariables", {"getVariableData": [
            dict(zip(("component", "variable"), _component_variable(k), strict=True)) for k in args.keys]}
    if command == "config":
        if v16:
            return "ChangeConfiguration", {"key": args.key, "value": args.value}
        component, variable = _component_variable(args.key)
        return "SetVariables", {"setVariableData": [{"component": component, "variable": variable,
                                                     "attributeValue": args.value}]}
    if command == "reset":
        return "Reset", {"type": (HARD_RESET if args.hard else SOFT_RESET)[version]}
    if command == "unlock":
        return "UnlockConnector", ({"connectorId": args.connector} if v16 else
                                   {"evseId": args.connector, "connectorId": 1})
    if command == "stop":
        if v16:
            if not args.transaction_id.isdigit():
                raise CliError("a 1.6 transaction id is an integer")
            return "RemoteStopTransaction", {"transactionId": int(args.transaction_id)}
        return "RequestStopTransaction", {"transactionId": args.transaction_id}
    if command == "trigger":
        payload: dict[str, Any] = {"requestedMessage": args.message}
        if args.connector is not None:
            payload.update({"connectorId": args.connector} if v16 else {"evse": {"id": args.connector}})
        return "TriggerMessage", payload
    if command == "availability":
        state = args.state.capitalize()
        if v16:
            return "ChangeAvailability", {"connectorId": args.connector or 0, "type": state}
        payload = {"operationalStatus": state}
        if args.connector is not None:
            payload["evse"] = {"id": args.connector}
        return "ChangeAvailability", payload
    if command == "clear-cache":
        return "ClearCache", {}
    if command == "data-transfer":
        payload = {"vendorId": args.vendor_id}
        if args.message_id:
            payload["messageId"] = args.message_id
        if args.data is not None:
            payload["data"] = args.data
        return "DataTransfer", payload
    if command == "provisioning":
        payload = {}
        if not args.default:
            if args.interval is not None:
                payload["sample_interval_s"] = args.interval
            if args.measurands:
                payload["measurands"] = [m.strip() for m in args.measurands.split(",") if m.strip()]
            if not payload:
                raise CliError("give --interval and/or --measurands, or --default")
        return PROFILE_ACTION, payload
    if command == "send":
        try:
            payload = json.loads(args.payload)
        except ValueError as exc:
            raise CliError(f"payload is not JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise CliError("payload must be a JSON object")
        return args.action, payload
    raise CliError(f"unknown command {command}")


async def _get(url: str) -> Any:
    try:
        code, body = await http_get_json(url, 10.0)
    except (OSError, ValueError, trio.TooSlowError) as exc:
        raise CliError(f"{url} did not answer ({type(exc).__name__}: {exc}); is the node running?") from exc
    if code != 200:
        raise CliError(f"{url} answered {code}: {(body or {}).get('error', body)}")
    return body


def _key(args: argparse.Namespace) -> SigningKey:
    text = Path(args.key_file).read_text().strip() if args.key_file else os.environ.get(KEY_ENV, "")
    if not text:
        raise CliError(f"no key: pass --key-file or set ${KEY_ENV} (the device manager's account key)")
    try:
        return SigningKey(bytes.fromhex(text.removeprefix("0x")))
    except ValueError as exc:
        raise CliError(f"the key is not a 32-byte hex secp256k1 secret: {exc}") from exc


def signing(args: argparse.Namespace) -> tuple[Domain, SigningKey]:
    """The network's command domain (from the deployment file) and the manager's key."""
    if not args.deployment:
        raise CliError("pass --deployment (the network's deployment file: its DeviceFactory signs the domain)")
    try:
        domain = Deployment.from_json(Path(args.deployment).read_text()).domain("DeviceFactory")
    except (KeyError, TypeError, ValueError) as exc:
        raise CliError(f"--deployment {args.deployment}: not a deployment file ({exc})") from exc
    return domain, _key(args)


async def submit(args: argparse.Namespace, domain: Domain, key: SigningKey) -> dict[str, Any]:
    """Sign, submit and wait for the outcome; the node's command document."""
    node = args.node.rstrip("/")
    version = args.ocpp
    if version is None:
        version = (await _get(f"{node}/v1/chargers/{args.charger_id}/configuration")).get("ocpp_version")
        if version is None and args.command == "provisioning":
            version = "1.6"  # a provisioning profile serves either version
        if version is None:
            raise CliError(f"the node does not know {args.charger_id}'s OCPP version; pass --ocpp 1.6 or 2.0.1")
    nonce = time.time_ns() // 1_000  # microseconds: increasing, so within the ledger's nonce window
    action, payload = call_of(args, version, nonce)
    expires = int((time.time() + args.ttl_s) * 1000)
    try:
        command = sign_command(key, domain, args.charger_id, version, action, payload, nonce, expires)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    body = {"ocpp_version": version, "action": action, "payload_json": command.payload_json.decode(),
            "nonce": str(nonce), "expires_at_ms": expires, "signature": "0x" + command.signature.hex()}
    url = f"{node}/v1/chargers/{args.charger_id}/commands"
    try:
        code, answer = await http_post_json(url, json_text(body).decode(), 40.0)
    except (OSError, ValueError, trio.TooSlowError) as exc:
        raise CliError(f"{url} did not answer ({type(exc).__name__}: {exc})") from exc
    if code != 200:
        raise CliError(f"refused ({code}): {(answer or {}).get('error', answer)}")
    return await wait_outcome(node, answer["command_id"], args.wait_s)


async def wait_outcome(node: str, command_id: str, wait_s: float) -> dict[str, Any]:
    """The command document once it has an outcome (or when `wait_s` has passed)."""
    deadline = trio.current_time() + wait_s
    while True:
        document: dict[str, Any] = await _get(f"{node}/v1/commands/{command_id}")
        if document["status"] != "pending" or trio.current_time() >= deadline:
            return document
        await trio.sleep(0.5)


def format_command(doc: dict[str, Any]) -> str:
    """A command document for people."""
    head = f"command {doc['command_id']}: {doc['action']} (OCPP {doc['ocpp_version']}) at {doc['charger_id']}"
    status, outcome = doc["status"], doc.get("outcome") or {}
    if status == "pending":
        return f"{head}: pending (committed in block {doc['height']}; the charger has not answered yet)"
    where = f" (reported by {doc['reported_by']}, block {doc['outcome_height']})" if doc.get("reported_by") else ""
    if status == "result":
        lines = [f"{head}: {outcome.get('status', 'answered')}{where}"]
        for item in outcome.get("configurationKey") or []:
            lines.append(f"  {item.get('key')} = {item.get('value', '')}" + (" (read-only)" if item.get("readonly")
                                                                             else ""))
        for name in outcome.get("unknownKey") or []:
            lines.append(f"  {name}: unknown to the charger")
        for item in outcome.get("getVariableResult") or []:
            lines.append(f"  {item['component']['name']}/{item['variable']['name']} = "
                         f"{item.get('attributeValue', '')} ({item.get('attributeStatus')})")
        for name in ("data", "listVersion"):
            if name in outcome:
                lines.append(f"  {name}: {outcome[name]}")
        return "\n".join(lines)
    if status == "applied":
        return f"{head}: applied by the ledger in block {doc['outcome_height']}"
    if status == "error":
        return f"{head}: the charger answered CALLERROR {outcome.get('code')}: {outcome.get('description')}{where}"
    if status == "timeout":
        return f"{head}: the charger did not answer in time{where}"
    if status == "refused":
        return f"{head}: not delivered: {outcome.get('reason')}{where}"
    return f"{head}: {status} before the charger got it"


def format_configuration(doc: dict[str, Any]) -> str:
    if not doc.get("known"):
        return f"{doc['charger_id']}: no configuration known yet (run `devsen charger config get {doc['charger_id']}`)"
    lines = [f"{doc['charger_id']} (OCPP {doc['ocpp_version']}), as of block {doc['height']}:"]
    lines += [f"  {e['key']} = {e['value']}" + (" (read-only)" if e["readonly"] else "") for e in doc["keys"]]
    if doc.get("dropped"):
        lines.append(f"  ({doc['dropped']} keys or values over the ledger's bounds not kept)")
    return "\n".join(lines)


async def run(args: argparse.Namespace, domain: Domain | None = None, key: SigningKey | None = None
              ) -> tuple[int, dict[str, Any], str]:
    node = args.node.rstrip("/")
    if args.command == "show":
        doc = await _get(f"{node}/v1/commands/{args.command_id}")
        return (0 if doc["status"] in ("result", "applied") else EXIT_REFUSED), doc, format_command(doc)
    if args.command == "config" and args.config_command == "show":
        doc = await _get(f"{node}/v1/chargers/{args.charger_id}/configuration")
        return 0, doc, format_configuration(doc)
    assert domain is not None and key is not None, "signing(args) first"
    doc = await submit(args, domain, key)
    code = 0 if doc["status"] in ("result", "applied") else EXIT_PENDING if doc["status"] == "pending" else EXIT_REFUSED
    return code, doc, format_command(doc)


def charger_main(argv: list[str]) -> int:
    """Entry point of `devsen charger`."""
    args = build_parser().parse_args(argv)
    try:
        reads_only = args.command == "show" or (args.command == "config" and args.config_command == "show")
        domain, key = (None, None) if reads_only else signing(args)
        code, doc, text = trio.run(run, args, domain, key)
    except (CliError, OSError) as exc:
        if args.json:
            print(json.dumps({"error": str(exc)}))
        print(f"devsen charger: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(json.dumps(doc, indent=2, sort_keys=True) if args.json else text)
    return code
