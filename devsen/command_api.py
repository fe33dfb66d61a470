"""The node's HTTP routes for manager commands (issue 13):

    POST /v1/chargers/{charger_id}/commands     a signed command (below); 200 once committed
    GET  /v1/commands/{command_id}              the command and its outcome, the same at every node
    GET  /v1/chargers/{charger_id}/configuration the charger's last known configuration (ledger state)
    GET  /v1/chargers/{charger_id}/provisioning  the effective provisioning profile (default or the
                                                manager's), the network slots, desired vs last known
                                                settings and their commands' outcomes

The POST body: {"ocpp_version": "1.6" | "2.0.1", "action": "Reset", "payload": {...} or
"payload_json": "<the exact JSON text signed>", "nonce": "N", "expires_at_ms": N,
"signature": "0x…65 bytes"}; with "payload", the signed text is the compact, key-sorted JSON
(devsen.ledger.commands.json_text). The command is checked here first, at the Ethereum block
the ledger last agreed on: schema, signature, signer = the device's manager (read from chain),
expiry, nonce; a bad one gets 400 naming the problem and never enters the mempool. A good one
is ordered through consensus and answered once committed with its id; the charger's answer
comes later (`GET /v1/commands/{id}`, "status" "pending" until then).
"""

from __future__ import annotations

import json
import time
from typing import Any

import trio

from devsen.app import NodeApplication
from devsen.command_gate import EXPIRY_MARGIN_MS
from devsen.consensus_service import (
    ConsensusService,
)
from devsen.http_api import HttpError
from devsen.ledger import Ledger
from devsen.ledger.commands import (
    MAX_COMMAND_JSON_BYTES,
    ChargerCommand,
    CommandError,
    command_document,
    config_document,
    json_text,
)
from devsen.ledger.provisioning import provisioning_document
from devsen.voucher_api import commit_payload
from ocpp_adapter.server import ChargerConnections

CHAIN_READ_TIMEOUT_S = 10.0
MAX_COMMAND_BODY_BYTES = 2 * MAX_COMMAND_JSON_BYTES + 1_024
MAX_PENDING_LISTED = 32


def _hex_bytes(text: Any, length: int, name: str) -> bytes:
    digits = text.lower().removeprefix("0x") if isinstance(text, str) else ""
    if len(digits) != 2 * length or any(c not in "0123456789abcdef" for c in digits):
        raise HttpError(400, f"{name} must be 0x + {2 * length} hex digits")
    return bytes.fromhex(digits)


def _uint64(value: Any, name: str) -> int:
    if isinstance(value, str) and value.isdigit() and len(value) <= 20:
        value = int(value)
    if type(value) is not int or not 0 <= value < 2**64:
        raise HttpError(400, f"{name} must be an integer in 0..2^64-1 (a decimal string or a number)")
    return value


def parse_command(charger_id: str, body: Any) -> ChargerCommand:
    """The command of a POST body; HttpError 400 naming what is wrong."""
    if not isinstance(body, dict):
        raise HttpError(400, 'the body must be {"ocpp_version", "action", "payload", "nonce", "expires_at_ms", '
                             '"signature"}')
    unknown = sorted(set(body) - {"ocpp_version", "action", "payload", "payload_json", "nonce", "expires_at_ms",
                                  "signature"})
    if unknown:
        raise HttpError(400, f"unknown body keys: {', '.join(unknown)}")
    for name in ("ocpp_version", "action"):
        if not isinstance(body.get(name), str):
            raise HttpError(400, f"{name} must be a string")
    if isinstance(body.get("payload_json"), str):
        payload_json = body["payload_json"].encode()
    elif isinstance(body.get("payload"), dict):
        payload_json = json_text(body["payload"])
    else:
        raise HttpError(400, "payload must be a JSON object (or payload_json its exact signed text)")
    return ChargerCommand(charger_id, body["ocpp_version"], body["action"], payload_json,
                          _uint64(body.get("nonce"), "nonce"), _uint64(body.get("expires_at_ms"), "expires_at_ms"),
                          _hex_bytes(body.get("signature"), 65, "signature"))


class CommandRoutes:
    """POST a command, GET a command, GET a charger's configuration."""

    def __init__(self, app: NodeApplication, service: ConsensusService, connections: ChargerConnections | None = None
                 ) -> None:
        self.app = app
        self.service = service
        self.connections = connections

    async def _manager(self, charger_id: str) -> bytes | None:
        """The device's manager at the Ethereum block the ledger last agreed on (off the event loop)."""
        number = self.app.last_eth_block

        def read() -> bytes | None:
            view = self.app.chain.view_at(number, self.app.chain.block_hash(number))
            return Ledger.device_manager(view, charger_id)

        try:
            with trio.fail_after(CHAIN_READ_TIMEOUT_S):
                manager: bytes | None = await trio.to_thread.run_sync(read, abandon_on_cancel=True)  # type: ignore[call-arg]
                return manager
        except Exception as exc:
            raise HttpError(503, f"cannot read the device from chain now ({exc}); retry") from exc

    async def submit(self, params: dict[str, str], body: Any) -> tuple[int, Any]:
        try:
            command = parse_command(params["charger_id"], body)
            command_id, signer = self.app.commands.identify(command)
        except CommandError as exc:
            raise HttpError(400, f"command refused: {exc}") from exc
        manager = await self._manager(command.charger_id)
        self.app.commands.note_manager(command.charger_id, manager)
        now_ms = int(time.time() * 1000)
        problem = self.app.ledger.commands.refusal(command, signer, manager, now_ms)
        if problem is None and command.expires_at_ms <= now_ms + EXPIRY_MARGIN_MS:
            # Honest proposers leave such a command out (command_gate): it would never enter a block.
            problem = (f"expires in {(command.expires_at_ms - now_ms) / 1000:.1f} s; a command must expire more "
                       f"than {EXPIRY_MARGIN_MS // 1000} s after submission to be proposed")
        if problem is not None:
            raise HttpError(400, f"command refused: {problem}")
        document = {"command_id": "0x" + command_id.hex(), "charger_id": command.charger_id,
                    "action": command.action, "status": "pending"}
        receipt = await commit_payload(self.service, command.encode(), "command")
        if receipt is None:
            return 200, {**document, "height": None, "duplicate": True}
        if receipt.result.code != 0:
            raise HttpError(400, f"command refused in block {receipt.height}: {receipt.result.log}")
        return 200, {**document, "height": receipt.height}

    async def command(self, params: dict[str, str]) -> tuple[int, Any]:
        command_id = _hex_bytes(params["command_id"], 32, "command id")
        ledger = self.app.ledger
        record = ledger.commands.get(command_id)
        if record is None:
            raise HttpError(404, f"no command 0x{command_id.hex()} is kept by the ledger")
        return 200, {**command_document(command_id, record, ledger.counters()["block_ms"]), "at_height": ledger.height}

    async def configuration(self, params: dict[str, str]) -> tuple[int, Any]:
        charger_id = params["charger_id"]
        ledger = self.app.ledger
        config = ledger.commands.configuration(charger_id)
        document = config_document(charger_id, config)
        pending = ledger.commands.pending_for(charger_id)
        connected = self.connections.version(charger_id) if self.connections is not None else None
        version = config.ocpp_version if config is not None else (
            connected or (pending[-1][1].ocpp_version if pending else None))
        return 200, {**document, "ocpp_version": version, "connected_here": connected is not None,
                     "pending_commands": ["0x" + i.hex() for i, _ in pending[:MAX_PENDING_LISTED]],
                     "at_height": ledger.height}

    async def provisioning(self, params: dict[str, str]) -> tuple[int, Any]:
        charger_id = params["charger_id"]
        ledger = self.app.ledger
        config = ledger.commands.configuration(charger_id)
        connected = self.connections.version(charger_id) if self.connections is not None else None
        device = ledger.device(charger_id)
        version = config.ocpp_version if config is not None else (
            (device.ocpp_version if device is not None else None) or connected)

        def status_of(command_id: bytes) -> tuple[str, Any] | None:
            record = ledger.commands.get(command_id)
            if record is None:
                return None
            return record.status, json.loads(record.body_json) if record.body_json else None

        document = provisioning_document(charger_id, version, config, ledger.provisioning, status_of)
        return 200, {**document, "at_height": ledger.height}
