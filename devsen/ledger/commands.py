"""Commands agreed by the network: a device manager operates its charger (issue 13).

A command is the device manager's EIP-712 signature over
`ChargerCommand(string chargeBoxId,string ocppVersion,string action,bytes32 payloadHash,uint64 nonce,
uint64 expiresAtMs)` (consensus.signing.CHARGER_COMMAND_TYPE) under the DeviceFactory's domain,
`payloadHash` the keccak-256 of the exact JSON text of the OCPP CALL payload. Its id is that
EIP-712 digest. It travels as a payload of its own kind (first byte COMMAND_PAYLOAD_TAG).

What the charger answered travels as a `CommandOutcome` (first byte OUTCOME_PAYLOAD_TAG): the
validator whose node holds the charger's connection signs (command id, kind, JSON body) with
`CommandOutcome(bytes32 commandId,string kind,bytes32 bodyHash)` under the Anchor domain. Kinds:
"result" (the CALLRESULT payload), "error" (the CALLERROR {code, description}), "timeout"
(no answer within the node's call timeout: `{}`), "refused" (not deliverable, e.g. the charger
speaks another OCPP version: {"reason"}).

The ledger's rules (pure, deterministic; `CommandBook` lives inside the Ledger's state):
- A command is admitted if it is well formed (`command_problem`: a supported action of its
  OCPP version, a payload valid against that action's request schema), recovers to the
  device's manager at the block's agreed Ethereum block, is not expired at block time and
  expires at most MAX_COMMAND_TTL_MS after it, and its nonce was never used for that device
  (`NonceWindow`: above the highest nonce seen, or one of the NONCE_WINDOW below it not used
  yet; state per device is two integers). Anything else is a deterministic refusal; honest
  validators refuse a block carrying one (devsen/app.py).
- The first outcome of a pending command is recorded; any later one is refused (recorded once).
  A pending command past its expiry is marked "expired" (EXPIRY_CHECKS_PER_BLOCK a block).
- Configuration is shared state: the last known configuration keys (1.6) / variables (2.0.1)
  of each charger, from GetConfiguration / GetVariables results, accepted
  ChangeConfiguration / SetVariables and the NotifyReport stream of GetBaseReport.
Everything is bounded: MAX_COMMANDS records (the oldest finished are dropped first),
MAX_PENDING_PER_CHARGER pending per charger, MAX_CONFIG_CHARGERS chargers with
MAX_CONFIG_KEYS keys of at most MAX_KEY_CHARS / MAX_VALUE_CHARS characters.

Delivery (devsen/charger_commands.py) and its side-effect semantics are documented there.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from consensus.signing import CHARGER_COMMAND_TYPE, COMMAND_OUTCOME_TYPE
from devsen.ledger.profiles import PROFILE_ACTION, profile_problem
from devsen.ledger.state import HashedTable
from ocpp_adapter.protocol import loads_strict
from ocpp_adapter.schemas import PayloadInvalid, validate
from primitives.eip712 import Domain, SignatureError, SigningKey, recover_address, typed_digest
from primitives.hashing import keccak256

COMMAND_PAYLOAD_TAG = 0xB2  # after the payment voucher (0xB1)
OUTCOME_PAYLOAD_TAG = 0xB3
MAX_CHARGER_ID_CHARS = 48  # the OCPP adapter's chargeBoxId limit
MAX_COMMAND_JSON_BYTES = 8_192  # an OCPP CALL payload (SetChargingProfile with periods fits)
MAX_OUTCOME_JSON_BYTES = 32_768  # a GetConfiguration result of a chatty charger fits
MAX_COMMAND_BYTES = MAX_COMMAND_JSON_BYTES + 256
MAX_OUTCOME_BYTES = MAX_OUTCOME_JSON_BYTES + 256
MAX_COMMAND_TTL_MS = 7 * 86_400_000  # a command waits at most a week for its charger
MAX_NONCE = 2**64 - 1
NONCE_WINDOW = 64  # nonces this far below a device's highest may still be used once (reordering)
MAX_COMMANDS = 10_000  # command records kept (pending and finished)
MAX_PENDING_PER_CHARGER = 32
EXPIRY_CHECKS_PER_BLOCK = 64  # oldest pending commands checked against block time per block
EVICTION_SCAN = 64  # oldest records looked at for a finished one to drop when the table is full
MAX_NONCE_DEVICES = 10_000  # devices with a nonce window (as many as the ledger's devices)
MAX_CONFIG_CHARGERS = 2_000
MAX_CONFIG_KEYS = 256
MAX_KEY_CHARS = 128  # 2.0.1 keys name component, EVSE and variable
MAX_VALUE_CHARS = 1_000  # 1.6 values are CiString500; 2.0.1 values longer are not kept

OUTCOME_KINDS = ("result", "error", "timeout", "refused")
PENDING, EXPIRED, APPLIED = "pending", "expired", "applied"

# The commands a manager may send, per OCPP version (the CSMS-to-charger actions of issue 13).
ACTIONS: dict[str, frozenset[str]] = {
    "1.6": frozenset({
        "GetConfiguration", "ChangeConfiguration", "Reset", "UnlockConnector", "RemoteStopTransaction",
        "TriggerMessage", "ChangeAvailability", "ClearCache", "SendLocalList", "GetLocalListVersion",
        "SetChargingProfile", "ClearChargingProfile", "GetCompositeSchedule", "UpdateFirmware", "GetDiagnostics",
        "ReserveNow", "CancelReservation", "DataTransfer"}),
    "2.0.1": frozenset({
        "GetVariables", "SetVariables", "GetBaseReport", "Reset", "UnlockConnector", "RequestStopTransaction",
        "TriggerMessage", "ChangeAvailability", "ClearCache", "SendLocalList", "GetLocalListVersion",
        "SetChargingProfile", "ClearChargingProfile", "GetCompositeSchedule", "UpdateFirmware", "GetLog",
        "ReserveNow", "CancelReservation", "DataTransfer"}),
}
# Commands of either version the ledger itself carries out (never sent to the charger; status
# "applied" at admission): a device's provisioning profile (profiles.py).
LEDGER_ACTIONS = frozenset({PROFILE_ACTION})


class CommandError(ValueError):
    """Bytes or fields that are not a well-formed command or outcome."""


def parse_json_object(text: bytes, limit: int, what: str) -> dict[str, Any]:
    """Strict JSON object (the OCPP adapter's `loads_strict`: no NaN/Infinity, duplicate keys,
    deep nesting or huge integers), UTF-8, at most `limit` bytes. CommandError naming `what` otherwise."""
    if len(text) > limit:
        raise CommandError(f"{what} is {len(text)} bytes, at most {limit}")
    try:
        value = loads_strict(text.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError included
        raise CommandError(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CommandError(f"{what} must be a JSON object")
    return value


def json_text(value: dict[str, Any]) -> bytes:
    """The JSON text a client signs by default (compact, keys sorted, UTF-8)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class ChargerCommand:
    """A device manager's signed command to its charger."""

    charger_id: str
    ocpp_version: str
    action: str
    payload_json: bytes  # the exact JSON text of the CALL payload
    nonce: int
    expires_at_ms: int
    signature: bytes

    def encode(self) -> bytes:
        packed: bytes = msgpack.packb([self.charger_id, self.ocpp_version, self.action, self.payload_json,
                                       self.nonce, self.expires_at_ms, self.signature], use_bin_type=True)
        return bytes([COMMAND_PAYLOAD_TAG]) + packed

    def digest(self, domain: Domain) -> bytes:
        """The EIP-712 digest the manager signs; also the command's id."""
        return command_digest(domain, self.charger_id, self.ocpp_version, self.action, self.payload_json,
                              self.nonce, self.expires_at_ms)

    def signer(self, domain: Domain) -> bytes:
        try:
            return recover_address(self.digest(domain), self.signature)
        except SignatureError as exc:
            raise CommandError(f"command signature: {exc}") from exc

    def payload(self) -> dict[str, Any]:
        return parse_json_object(self.payload_json, MAX_COMMAND_JSON_BYTES, "payload")


def command_digest(domain: Domain, charger_id: str, ocpp_version: str, action: str, payload_json: bytes,
                   nonce: int, expires_at_ms: int) -> bytes:
    return typed_digest(domain, CHARGER_COMMAND_TYPE,
                        [charger_id, ocpp_version, action, keccak256(payload_json), nonce, expires_at_ms])


def sign_command(key: SigningKey, domain: Domain, charger_id: str, ocpp_version: str, action: str,
                 payload: dict[str, Any] | bytes, nonce: int, expires_at_ms: int) -> ChargerCommand:
    """The manager's side: a signed command (the payload as JSON text unless given as bytes)."""
    payload_json = payload if isinstance(payload, bytes) else json_text(payload)
    _check_fields(charger_id, ocpp_version, action, nonce, expires_at_ms)
    digest = command_digest(domain, charger_id, ocpp_version, action, payload_json, nonce, expires_at_ms)
    return ChargerCommand(charger_id, ocpp_version, action, payload_json, nonce, expires_at_ms, key.sign(digest))


def _check_fields(charger_id: Any, ocpp_version: Any, action: Any, nonce: Any, expires_at_ms: Any) -> None:
    if not isinstance(charger_id, str) or not 0 < len(charger_id) <= MAX_CHARGER_ID_CHARS:
        raise CommandError(f"charger id must be 1..{MAX_CHARGER_ID_CHARS} characters")
    if ocpp_version not in ACTIONS:
        raise CommandError(f"ocpp_version must be one of {', '.join(ACTIONS)}, not {ocpp_version!r}")
    if not isinstance(action, str) or (action not in ACTIONS[ocpp_version] and action not in LEDGER_ACTIONS):
        raise CommandError(f"action {action!r} is not a command of OCPP {ocpp_version}; supported: "
                           + ", ".join(sorted(ACTIONS[ocpp_version] | LEDGER_ACTIONS)))
    for name, value in (("nonce", nonce), ("expires_at_ms", expires_at_ms)):
        if type(value) is not int or not 0 <= value <= MAX_NONCE:
            raise CommandError(f"{name} must be an integer in 0..2^64-1")


def decode_command(data: bytes) -> ChargerCommand:
    """Strict decoding of a command payload (canonical msgpack after COMMAND_PAYLOAD_TAG)."""
    if not data or data[0] != COMMAND_PAYLOAD_TAG or len(data) > MAX_COMMAND_BYTES:
        raise CommandError(f"a command payload starts 0x{COMMAND_PAYLOAD_TAG:02x} and is at most "
                           f"{MAX_COMMAND_BYTES} bytes")
    try:
        fields = msgpack.unpackb(data[1:], raw=False)
    except Exception as exc:
        raise CommandError(f"a command payload is msgpack: {exc}") from None
    if not isinstance(fields, list) or len(fields) != 7 or not isinstance(fields[3], bytes) \
            or not isinstance(fields[6], bytes):
        raise CommandError("a command is [chargeBoxId, ocppVersion, action, payload JSON, nonce, expiry, signature]")
    command = ChargerCommand(*fields)
    _check_fields(command.charger_id, command.ocpp_version, command.action, command.nonce, command.expires_at_ms)
    if command.encode() != data:
        raise CommandError("a command payload is not canonical")
    return command


def command_problem(command: ChargerCommand) -> str | None:
    """Why this command can never be admitted, from its bytes alone (pure), or None."""
    try:
        _check_fields(command.charger_id, command.ocpp_version, command.action, command.nonce,
                      command.expires_at_ms)
        payload = command.payload()
    except CommandError as exc:
        return str(exc)
    if command.action in LEDGER_ACTIONS:
        problem = profile_problem(payload)
        return None if problem is None else f"provisioning profile refused: {problem}"
    try:
        validate(command.ocpp_version, command.action, payload)
    except PayloadInvalid as exc:
        where = f" at {exc.path}" if exc.path else ""
        return f"payload invalid for OCPP {command.ocpp_version} {command.action}{where}: {exc.description}"
    except KeyError as exc:
        return str(exc)
    return None


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What the charger answered to a command, as the delivering validator saw it."""

    command_id: bytes
    kind: str
    body_json: bytes
    signature: bytes

    def encode(self) -> bytes:
        packed: bytes = msgpack.packb([self.command_id, self.kind, self.body_json, self.signature], use_bin_type=True)
        return bytes([OUTCOME_PAYLOAD_TAG]) + packed

    def digest(self, domain: Domain) -> bytes:
        return outcome_digest(domain, self.command_id, self.kind, self.body_json)

    def signer(self, domain: Domain) -> bytes:
        try:
            return recover_address(self.digest(domain), self.signature)
        except SignatureError as exc:
            raise CommandError(f"outcome signature: {exc}") from exc

    def body(self) -> dict[str, Any]:
        return parse_json_object(self.body_json, MAX_OUTCOME_JSON_BYTES, "outcome body")


def outcome_digest(domain: Domain, command_id: bytes, kind: str, body_json: bytes) -> bytes:
    return typed_digest(domain, COMMAND_OUTCOME_TYPE, [command_id, kind, keccak256(body_json)])


def sign_outcome(key: SigningKey, domain: Domain, command_id: bytes, kind: str,
                 body: dict[str, Any]) -> CommandOutcome:
    body_json = json_text(body)
    return CommandOutcome(command_id, kind, body_json, key.sign(outcome_digest(domain, command_id, kind, body_json)))


def decode_outcome(data: bytes) -> CommandOutcome:
    """Strict decoding of an outcome payload; its body must be a bounded JSON object."""
    if not data or data[0] != OUTCOME_PAYLOAD_TAG or len(data) > MAX_OUTCOME_BYTES:
        raise CommandError(f"an outcome payload starts 0x{OUTCOME_PAYLOAD_TAG:02x} and is at most "
                           f"{MAX_OUTCOME_BYTES} bytes")
    try:
        fields = msgpack.unpackb(data[1:], raw=False)
    except Exception as exc:
        raise CommandError(f"an outcome payload is msgpack: {exc}") from None
    if (not isinstance(fields, list) or len(fields) != 4 or not isinstance(fields[0], bytes) or len(fields[0]) != 32
            or fields[1] not in OUTCOME_KINDS or not isinstance(fields[2], bytes) or not isinstance(fields[3], bytes)):
        raise CommandError(f"an outcome is [32-byte command id, kind ({', '.join(OUTCOME_KINDS)}), JSON body, "
                           "signature]")
    outcome = CommandOutcome(*fields)
    outcome.body()
    if outcome.encode() != data:
        raise CommandError("an outcome payload is not canonical")
    return outcome


# ---------------------------------------------------------------- state records


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """One admitted command and, once known, its outcome (status "pending" until then)."""

    seq: int
    charger_id: str
    ocpp_version: str
    action: str
    payload_json: bytes
    nonce: int
    expires_at_ms: int
    signer: bytes
    height: int
    status: str = PENDING  # "pending", "expired" or an outcome kind
    body_json: bytes = b""  # the outcome's JSON body
    outcome_height: int = 0
    reporter: bytes = b""  # the validator that reported the outcome


@dataclass(frozen=True, slots=True)
class NonceWindow:
    """The nonces of one device used so far: the highest, and a bit per nonce below it (bit i:
    highest - 1 - i used)."""

    seq: int
    highest: int
    below: int

    def used(self, nonce: int) -> bool:
        if nonce > self.highest:
            return False
        if nonce == self.highest or self.highest - nonce > NONCE_WINDOW:
            return True
        return bool(self.below >> (self.highest - nonce - 1) & 1)

    def take(self, nonce: int) -> NonceWindow:
        if nonce > self.highest:
            shift = nonce - self.highest
            below = ((self.below << shift) | (1 << (shift - 1))) & ((1 << NONCE_WINDOW) - 1) if shift <= NONCE_WINDOW \
                else 0
            return replace(self, highest=nonce, below=below)
        return replace(self, below=self.below | 1 << (self.highest - nonce - 1))


@dataclass(frozen=True, slots=True)
class ConfigEntry:
    key: str
    value: str
    readonly: bool = False


@dataclass(frozen=True, slots=True)
class ChargerConfig:
    """The last known configuration of one charger (keys sorted)."""

    seq: int
    ocpp_version: str
    entries: tuple[ConfigEntry, ...]
    height: int
    dropped: int = 0  # keys or values not kept (over the bounds)


@dataclass(frozen=True, slots=True)
class AdmittedCommand:
    """A command admitted by a block: the node holding the charger's connection delivers it."""

    command_id: bytes
    record: CommandRecord


def variable_key(component: Any, variable: Any, attribute_type: Any = None) -> str | None:
    """The configuration key of a 2.0.1 variable: Component[.instance][@evse[.connector]]/Variable[.instance]
    [:AttributeType unless Actual]; None for shapes that are not one."""
    if not isinstance(component, dict) or not isinstance(variable, dict):
        return None
    name, var = component.get("name"), variable.get("name")
    if not isinstance(name, str) or not isinstance(var, str):
        return None
    key = name + (f".{component['instance']}" if isinstance(component.get("instance"), str) else "")
    evse = component.get("evse")
    if isinstance(evse, dict) and type(evse.get("id")) is int:
        key += f"@{evse['id']}" + (f".{evse['connectorId']}" if type(evse.get("connectorId")) is int else "")
    key += "/" + var + (f".{variable['instance']}" if isinstance(variable.get("instance"), str) else "")
    if isinstance(attribute_type, str) and attribute_type != "Actual":
        key += ":" + attribute_type
    return key


class CommandBook:
    """Commands, nonce windows and last known configurations (part of the ledger's hashed state)."""

    def __init__(self, next_seq: Callable[[], int]) -> None:
        self.table: HashedTable[bytes, CommandRecord] = HashedTable("commands")
        self.nonces: HashedTable[str, NonceWindow] = HashedTable("command_nonces")
        self.config: HashedTable[str, ChargerConfig] = HashedTable("charger_config")
        self._next_seq = next_seq
        # Derived (not hashed; rebuilt on restore, a pure function of the table): the pending
        # command ids in admission order (the table's order), and per charger.
        self._pending_all: dict[bytes, None] = {}
        self._pending: dict[str, list[bytes]] = {}
        # Why a ledger action (LEDGER_ACTIONS) for a charger cannot be carried out now, or None
        # (the Ledger sets it: e.g. its profile table is full).
        self.ledger_action_refusal: Callable[[str], str | None] = lambda charger_id: None

    # ------------------------------------------------------------ reads

    def tables(self) -> tuple[HashedTable[Any, Any], ...]:
        return (self.table, self.nonces, self.config)

    def in_use(self) -> bool:
        return any(len(t) for t in self.tables())

    def get(self, command_id: bytes) -> CommandRecord | None:
        return self.table.get(command_id)

    def pending_for(self, charger_id: str) -> tuple[tuple[bytes, CommandRecord], ...]:
        ids = self._pending.get(charger_id, [])
        return tuple((i, r) for i in ids if (r := self.table.get(i)) is not None)

    def pending_chargers(self) -> tuple[str, ...]:
        return tuple(self._pending)

    def configuration(self, charger_id: str) -> ChargerConfig | None:
        return self.config.get(charger_id)

    # ------------------------------------------------------------ admission

    def refusal(self, command: ChargerCommand, signer: bytes, manager: bytes | None, block_ms: int) -> str | None:
        """Why `command` (recovering to `signer`) cannot be admitted now, or None. Pure."""
        problem = command_problem(command)
        if problem is not None:
            return problem
        if manager is None:
            return f"charger {command.charger_id} is not registered on chain (or inactive) at the agreed block"
        if signer != manager:
            return (f"signed by 0x{signer.hex()}, not by the device's manager 0x{manager.hex()} "
                    f"of {command.charger_id}")
        if command.expires_at_ms <= block_ms:
            return f"expired at {command.expires_at_ms} ms, block time is {block_ms} ms"
        if command.expires_at_ms > block_ms + MAX_COMMAND_TTL_MS:
            return f"expires more than {MAX_COMMAND_TTL_MS // 3_600_000} h after block time"
        window = self.nonces.get(command.charger_id)
        if window is not None and window.used(command.nonce):
            return (f"nonce {command.nonce} already used for {command.charger_id} (or more than {NONCE_WINDOW} "
                    f"below its highest nonce {window.highest})")
        if window is None and len(self.nonces) >= MAX_NONCE_DEVICES:
            return f"commands are kept for at most {MAX_NONCE_DEVICES} devices"
        if len(self._pending.get(command.charger_id, [])) >= MAX_PENDING_PER_CHARGER:
            return f"{MAX_PENDING_PER_CHARGER} commands already wait for {command.charger_id}"
        if len(self.table) >= MAX_COMMANDS and self._evictable() is None:
            return f"{MAX_COMMANDS} commands are waiting; retry after some are answered or expire"
        if command.action in LEDGER_ACTIONS:
            return self.ledger_action_refusal(command.charger_id)
        return None

    def admit(self, command: ChargerCommand, command_id: bytes, signer: bytes, manager: bytes | None,
              block_ms: int, height: int) -> str | None:
        """Admit `command` if it may be; the refusal reason otherwise (state unchanged)."""
        problem = self.refusal(command, signer, manager, block_ms)
        if problem is not None:
            return problem
        if command_id in self.table:  # a second encoding of the same signed fields: same nonce, refused above
            return "command already admitted"
        if len(self.table) >= MAX_COMMANDS:
            evict = self._evictable()
            assert evict is not None
            self.table.pop(evict)
        window = self.nonces.get(command.charger_id) or NonceWindow(self._next_seq(), -1, 0)
        self.nonces.put(command.charger_id, window.take(command.nonce))
        self.table.put(command_id, CommandRecord(
            self._next_seq(), command.charger_id, command.ocpp_version, command.action, command.payload_json,
            command.nonce, command.expires_at_ms, signer, height))
        self._pending.setdefault(command.charger_id, []).append(command_id)
        self._pending_all[command_id] = None
        return None

    def admit_from_ledger(self, command_id: bytes, charger_id: str, ocpp_version: str, action: str,
                          payload: dict[str, Any], expires_at_ms: int, height: int, *,
                          renew_expired: bool = False) -> bool:
        """Admit a command the ledger itself decided (signer empty, no nonce), e.g. a ReserveNow
        for a reservation from the chain (reservations.py); False if kept already or no room.
        `renew_expired`: a kept one that expired undelivered is admitted afresh (provisioning)."""
        if len(self._pending.get(charger_id, [])) >= MAX_PENDING_PER_CHARGER:
            return False
        kept = self.table.get(command_id)
        if kept is not None and not (renew_expired and kept.status == EXPIRED):
            return False
        if kept is not None:
            self.table.pop(command_id)
        if len(self.table) >= MAX_COMMANDS:
            evict = self._evictable()
            if evict is None:
                return False
            self.table.pop(evict)
        self.table.put(command_id, CommandRecord(self._next_seq(), charger_id, ocpp_version, action,
                                                 json_text(payload), 0, expires_at_ms, b"", height))
        self._pending.setdefault(charger_id, []).append(command_id)
        self._pending_all[command_id] = None
        return True

    def mark_applied(self, command_id: bytes, height: int) -> None:
        """A ledger action (LEDGER_ACTIONS) was carried out at admission: finished, never delivered."""
        record = self.table.get(command_id)
        if record is not None and record.status == PENDING:
            self._finish(command_id, replace(record, status=APPLIED, outcome_height=height))

    def _evictable(self) -> bytes | None:
        for index, command_id in enumerate(self.table):
            if index >= EVICTION_SCAN:
                break
            record = self.table.get(command_id)
            if record is not None and record.status != PENDING:
                return command_id
        return None

    # ------------------------------------------------------------ outcomes

    def record_outcome(self, outcome: CommandOutcome, reporter: bytes, height: int) -> str | None:
        """Record the first outcome of a pending command; the refusal reason otherwise."""
        record = self.table.get(outcome.command_id)
        if record is None:
            return f"no command 0x{outcome.command_id.hex()} is kept"
        if record.status != PENDING:
            return f"command 0x{outcome.command_id.hex()} already has its outcome ({record.status})"
        try:
            body = outcome.body()
        except CommandError as exc:
            return str(exc)
        self._finish(outcome.command_id, replace(record, status=outcome.kind, body_json=outcome.body_json,
                                                 outcome_height=height, reporter=reporter))
        if outcome.kind == "result":
            self._config_from_result(record, body, height)
        return None

    def expire(self, block_ms: int, height: int) -> None:
        """Mark pending commands past their expiry as expired: EXPIRY_CHECKS_PER_BLOCK a block, a
        window that moves with the height over the pending ones in admission order."""
        pending = list(self._pending_all)
        if not pending:
            return
        start = height * EXPIRY_CHECKS_PER_BLOCK % len(pending)
        for command_id in (pending + pending)[start:start + min(EXPIRY_CHECKS_PER_BLOCK, len(pending))]:
            record = self.table.get(command_id)
            if record is not None and record.expires_at_ms <= block_ms:
                self._finish(command_id, replace(record, status=EXPIRED, outcome_height=height))

    def _finish(self, command_id: bytes, record: CommandRecord) -> None:
        self.table.put(command_id, record)
        self._pending_all.pop(command_id, None)
        ids = self._pending.get(record.charger_id, [])
        if command_id in ids:
            ids.remove(command_id)
        if not ids:
            self._pending.pop(record.charger_id, None)

    # ------------------------------------------------------------ configuration

    def _config_from_result(self, record: CommandRecord, body: dict[str, Any], height: int) -> None:
        try:
            request = json.loads(record.payload_json)
        except ValueError:
            return
        updates: list[ConfigEntry] = []
        action = record.action
        if action == "GetConfiguration":
            for item in _items(body.get("configurationKey")):
                if isinstance(item.get("key"), str):
                    value = item.get("value")
                    updates.append(ConfigEntry(item["key"], value if isinstance(value, str) else "",
                                               item.get("readonly") is True))
        elif action == "ChangeConfiguration" and body.get("status") in ("Accepted", "RebootRequired"):
            if isinstance(request.get("key"), str) and isinstance(request.get("value"), str):
                updates.append(ConfigEntry(request["key"], request["value"]))
        elif action == "SetNetworkProfile" and body.get("status") == "Accepted":
            slot, data = request.get("configurationSlot"), request.get("connectionData")
            if type(slot) is int and isinstance(data, dict) and isinstance(data.get("ocppCsmsUrl"), str):
                updates.append(ConfigEntry(f"NetworkConnectionProfiles/{slot}", data["ocppCsmsUrl"]))
        elif action == "GetVariables":
            for item in _items(body.get("getVariableResult")):
                key = variable_key(item.get("component"), item.get("variable"), item.get("attributeType"))
                if key is not None and item.get("attributeStatus") == "Accepted" \
                        and isinstance(item.get("attributeValue"), str):
                    updates.append(ConfigEntry(key, item["attributeValue"]))
        elif action == "SetVariables":
            wanted = {}
            for item in _items(request.get("setVariableData")):
                key = variable_key(item.get("component"), item.get("variable"), item.get("attributeType"))
                if key is not None and isinstance(item.get("attributeValue"), str):
                    wanted[key] = item["attributeValue"]
            for item in _items(body.get("setVariableResult")):
                key = variable_key(item.get("component"), item.get("variable"), item.get("attributeType"))
                if key in wanted and item.get("attributeStatus") in ("Accepted", "RebootRequired"):
                    updates.append(ConfigEntry(key, wanted[key]))
        if updates:
            self.merge_config(record.charger_id, record.ocpp_version, updates, height)

    def config_from_report(self, charger_id: str, payload: Any, height: int) -> None:
        """A 2.0.1 NotifyReport (the stream GetBaseReport triggers): its variables' values."""
        if not isinstance(payload, dict):
            return
        updates: list[ConfigEntry] = []
        for item in _items(payload.get("reportData")):
            for attribute in _items(item.get("variableAttribute")):
                key = variable_key(item.get("component"), item.get("variable"), attribute.get("type"))
                if key is not None and isinstance(attribute.get("value"), str):
                    updates.append(ConfigEntry(key, attribute["value"], attribute.get("mutability") == "ReadOnly"))
        if updates:
            self.merge_config(charger_id, "2.0.1", updates, height)

    def merge_config(self, charger_id: str, ocpp_version: str, updates: Iterable[ConfigEntry], height: int) -> None:
        """Set these keys (bounded: longer keys or values and keys beyond MAX_CONFIG_KEYS are counted, not kept).
        A charger now speaking another OCPP version starts a fresh configuration (1.6 keys are not 2.0.1 variables)."""
        current = self.config.get(charger_id)
        if current is not None and current.ocpp_version != ocpp_version:
            self.config.pop(charger_id)
            current = None
        entries = {e.key: e for e in current.entries} if current is not None else {}
        dropped = current.dropped if current is not None else 0
        for entry in updates:
            if len(entry.key) > MAX_KEY_CHARS or len(entry.value) > MAX_VALUE_CHARS \
                    or (entry.key not in entries and len(entries) >= MAX_CONFIG_KEYS):
                dropped += 1
                continue
            entries[entry.key] = entry
        if current is None:
            while len(self.config) >= MAX_CONFIG_CHARGERS:
                self.config.pop(self.config.oldest())
        record = ChargerConfig(self._next_seq(), ocpp_version, tuple(entries[k] for k in sorted(entries)), height,
                               dropped)
        self.config.put(charger_id, record, to_end=True)  # the least recently updated is dropped first

    # ------------------------------------------------------------ snapshots

    def to_state(self) -> list[Any]:
        return [t.to_state() for t in self.tables()]

    def restore(self, state: Any) -> None:
        commands, nonces, config = state
        for key, v in commands:
            record = CommandRecord(*v)
            self.table.put(key, record)
            if record.status == PENDING:
                self._pending.setdefault(record.charger_id, []).append(key)
                self._pending_all[key] = None
        for key, v in nonces:
            self.nonces.put(key, NonceWindow(*v))
        for key, v in config:
            values = list(v)
            values[2] = tuple(ConfigEntry(*e) for e in v[2])
            self.config.put(key, ChargerConfig(*values))


def _items(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def command_document(command_id: bytes, record: CommandRecord, block_ms: int) -> dict[str, Any]:
    """The JSON view of one command (GET /v1/commands/{id}), the same on every node at one height."""
    status = record.status
    if status == PENDING and record.expires_at_ms <= block_ms:
        status = EXPIRED  # the ledger marks it in a later block; report it now
    doc: dict[str, Any] = {
        "command_id": "0x" + command_id.hex(), "charger_id": record.charger_id, "ocpp_version": record.ocpp_version,
        "action": record.action, "payload": json.loads(record.payload_json), "nonce": str(record.nonce),
        "expires_at_ms": record.expires_at_ms, "manager": "0x" + record.signer.hex() if record.signer else None,
        "origin": "manager" if record.signer else "ledger", "height": record.height,
        "status": status, "outcome_height": record.outcome_height or None,
        "reported_by": "0x" + record.reporter.hex() if record.reporter else None,
    }
    if record.body_json:
        doc["outcome"] = json.loads(record.body_json)
    return doc


def config_document(charger_id: str, config: ChargerConfig | None) -> dict[str, Any]:
    """The JSON view of a charger's last known configuration."""
    if config is None:
        return {"charger_id": charger_id, "known": False, "keys": []}
    return {"charger_id": charger_id, "known": True, "ocpp_version": config.ocpp_version, "height": config.height,
            "dropped": config.dropped,
            "keys": [{"key": e.key, "value": e.value, "readonly": e.readonly} for e in config.entries]}
