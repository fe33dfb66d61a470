"""Provisioning (issue 13): the network configures what settlement and failover rely on.

On every committed BootNotification of a registered, active charger the ledger issues, as
ledger-originated commands (signer empty, delivered like a manager's by devsen/charger_commands.py,
outcome committed once through the outcome path), the settings of the device's provisioning
profile (profiles.py: the default, or its manager's override) that the charger's last known
configuration (shared state, commands.py) does not already satisfy:

- 1.6: ChangeConfiguration `MeterValuesSampledData` and `StopTxnSampledData` (their
  comma-separated measurands must include the profile's) and `MeterValueSampleInterval` (the
  default: a positive interval at most 60 s; an override: exactly its interval);
- 2.0.1: SetVariables `SampledDataCtrlr` TxStartedMeasurands / TxUpdatedMeasurands /
  TxEndedMeasurands and TxUpdatedInterval (one variable a command, so each outcome names one
  setting); SetNetworkProfile for slots 1..n naming the validators' OCPP endpoints by priority
  (`network_slots`), and, once every slot's command has its outcome, OCPPCommCtrlr
  NetworkConfigurationPriority listing the slots the charger accepted, in order (`priority_setting`).

Endpoints (`ProvisioningBook.note_endpoints`): the ValidatorSet's `endpoint` of each validator
at the block's agreed Ethereum block (chain facts), by validator address. One that is not text,
longer than MAX_ENDPOINT_CHARS, has a character outside printable ASCII (controls, space,
non-ASCII), is not `ws://` or `wss://`, does not parse, names no host or the unspecified
address, carries credentials, a query or a fragment, or repeats an earlier validator's URL is
skipped with its reason (`endpoint_problem`), never raised. The valid ones, by address, rotated
by keccak(charger id) mod n (so chargers spread their first choice over the nodes, and a
charger's order is stable while the set is), first MAX_NETWORK_SLOTS, are its slots 1..k.
`ws://` gets securityProfile 1 (Basic auth), `wss://` 2 (TLS + Basic auth): a charger refuses a
profile below its current one (2.0.1 B09.FR.04), and the outcome says so.

Bounded and loop-proof: a provisioning command's id is the hash of (charger, action, exact
payload), so a charger that rejects a setting, answers garbage or reboots in a loop gets each
distinct setting at most once while its record is kept (the ledger's command table); at most
`len(desired)` commands a boot. Only a command that expired undelivered (the charger left before
getting it, PROVISION_TTL_MS) is issued again, at a later boot or profile change. A setting already known as set (an accepted change, a
GetConfiguration / GetVariables / NotifyReport) is skipped, so a reboot does not re-send it.

Pure and total: `plan`, `endpoint_problem` and `note_endpoints` never raise on any input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from devsen.ledger.commands import ChargerConfig, json_text
from devsen.ledger.profiles import (
    DEFAULT_INTERVAL_S,
    ENERGY_MEASURAND,
    MAX_PROFILES,
    ProvisioningProfile,
    parse_profile,
)
from devsen.ledger.state import HashedTable
from primitives.hashing import keccak256

PROVISION_TTL_MS = 3_600_000  # a provisioning command waits an hour for its charger (it just booted)
MAX_NETWORK_SLOTS = 4  # NetworkConnectionProfiles named (the endpoints beyond are not)
MAX_ENDPOINT_CHARS = 256  # ValidatorSet.MAX_ENDPOINT_BYTES (OCPP's ocppCsmsUrl allows 512)
MAX_VALIDATOR_ENDPOINTS = 128  # ValidatorSet.MAX_VALIDATORS: endpoints looked at per block
MESSAGE_TIMEOUT_S = 30  # NetworkConnectionProfile.messageTimeout (the spec's suggested start)
SECURITY_PROFILES = {"ws": 1, "wss": 2}
MEASURAND_KEYS_16 = ("MeterValuesSampledData", "StopTxnSampledData")
INTERVAL_KEY_16 = "MeterValueSampleInterval"
MEASURAND_VARIABLES_201 = ("TxStartedMeasurands", "TxUpdatedMeasurands", "TxEndedMeasurands")
INTERVAL_VARIABLE_201 = "TxUpdatedInterval"
SAMPLED_DATA = "SampledDataCtrlr"
PRIORITY_KEY_201 = "OCPPCommCtrlr/NetworkConfigurationPriority"
NETWORK_KEY_201 = "NetworkConnectionProfiles/"


@dataclass(frozen=True, slots=True)
class Setting:
    """One desired setting: its configuration key (commands.variable_key form for 2.0.1), the
    value sent, and whether a known value satisfies it (`kind`: measurands, interval, exact)."""

    key: str
    value: str
    kind: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    """A validator's on-chain OCPP endpoint as the ledger took it: the URL, or "" and why not."""

    seq: int
    url: str
    problem: str


def endpoint_problem(url: Any) -> str | None:
    """Why an on-chain endpoint cannot be a charger's CSMS URL, or None. Total."""
    if not isinstance(url, str):
        return "not text"
    if not url:
        return "empty"
    if len(url) > MAX_ENDPOINT_CHARS:
        return f"longer than {MAX_ENDPOINT_CHARS} characters"
    if any(not "\x21" <= c <= "\x7e" for c in url):
        return "control, space or non-ASCII characters"
    if not url.startswith(("ws://", "wss://")):
        return "not a ws:// or wss:// URL"
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "not a URL"
    if not host:
        return "no host"
    if host in ("0.0.0.0", "::"):
        return "the unspecified address"
    if port == 0:
        return "port 0"
    if "@" in parts.netloc:
        return "credentials in the URL"
    if parts.query or parts.fragment or "?" in url or "#" in url:
        return "a query or fragment"
    return None


def _set_variable(component: str, variable: str, value: str) -> dict[str, Any]:
    return {"setVariableData": [{"component": {"name": component}, "variable": {"name": variable},
                                 "attributeValue": value}]}


def network_profile_setting(slot: int, url: str) -> Setting:
    """SetNetworkProfile of `url` into `slot` (OCPP 2.0.1 NetworkConnectionProfileType, JSON over
    the wired interface, the security profile of the URL's scheme)."""
    return Setting(f"{NETWORK_KEY_201}{slot}", url, "exact", "SetNetworkProfile", {
        "configurationSlot": slot,
        "connectionData": {"ocppVersion": "OCPP20", "ocppTransport": "JSON", "ocppCsmsUrl": url,
                           "messageTimeout": MESSAGE_TIMEOUT_S,
                           "securityProfile": SECURITY_PROFILES[url.split(":", 1)[0]], "ocppInterface": "Wired0"}})


def priority_setting(slots: Sequence[int]) -> Setting:
    """SetVariables OCPPCommCtrlr NetworkConfigurationPriority naming `slots` in order."""
    priority = ",".join(str(s) for s in slots)
    return Setting(PRIORITY_KEY_201, priority, "exact", "SetVariables",
                   _set_variable("OCPPCommCtrlr", "NetworkConfigurationPriority", priority))


def desired_settings(ocpp_version: str, endpoints: tuple[str, ...] = (),
                     profile: ProvisioningProfile | None = None) -> tuple[Setting, ...]:
    """The settings of a charger speaking `ocpp_version` (() if unknown): the profile's (the
    default when None) and, for 2.0.1, a network profile per endpoint (slots 1.., in order;
    the priority setting comes after their outcomes: `plan`)."""
    interval = str(profile.interval_s if profile is not None else DEFAULT_INTERVAL_S)
    interval_kind = "exact" if profile is not None else "interval"
    sampled = profile.sampled if profile is not None else ENERGY_MEASURAND
    if ocpp_version == "1.6":
        settings = [Setting(k, sampled, "measurands", "ChangeConfiguration",
                            {"key": k, "value": sampled}) for k in MEASURAND_KEYS_16]
        settings.append(Setting(INTERVAL_KEY_16, interval, interval_kind, "ChangeConfiguration",
                                {"key": INTERVAL_KEY_16, "value": interval}))
        return tuple(settings)
    if ocpp_version != "2.0.1":
        return ()
    settings = [Setting(f"{SAMPLED_DATA}/{v}", sampled, "measurands", "SetVariables",
                        _set_variable(SAMPLED_DATA, v, sampled)) for v in MEASURAND_VARIABLES_201]
    settings.append(Setting(f"{SAMPLED_DATA}/{INTERVAL_VARIABLE_201}", interval, interval_kind, "SetVariables",
                            _set_variable(SAMPLED_DATA, INTERVAL_VARIABLE_201, interval)))
    settings.extend(network_profile_setting(slot, url)
                    for slot, url in enumerate(endpoints[:MAX_NETWORK_SLOTS], start=1))
    return tuple(settings)


def satisfied(setting: Setting, known: str | None) -> bool:
    """Whether a known configuration value already gives what `setting` asks for."""
    if known is None:
        return False
    if setting.kind == "measurands":
        have = {m.strip() for m in known.split(",")}
        return all(m in have for m in setting.value.split(","))
    if setting.kind == "interval":
        return known.isdigit() and len(known) <= 9 and 0 < int(known) <= int(setting.value)
    return known == setting.value


def provision_command_id(charger_id: str, setting: Setting) -> bytes:
    """The id of the command provisioning `setting` (the same for the same exact payload)."""
    return keccak256(b"devsen:Provision:" + charger_id.encode() + b":" + setting.action.encode() + b":"
                     + json_text(setting.payload))


def known_values(config: ChargerConfig | None, ocpp_version: str) -> dict[str, str]:
    """The charger's last known values (empty if unknown or kept for another OCPP version)."""
    if config is None or config.ocpp_version != ocpp_version:
        return {}
    return {e.key: e.value for e in config.entries}


def _priority(charger_id: str, settings: Sequence[Setting], known: dict[str, str],
              finished: Callable[[bytes], bool]) -> Setting | None:
    """The NetworkConfigurationPriority setting once every network profile is known as set or its
    command has an outcome: the accepted slots in order (None while one waits, or none was accepted)."""
    slots = []
    for setting in settings:
        if setting.action != "SetNetworkProfile":
            continue
        if satisfied(setting, known.get(setting.key)):
            slots.append(setting.payload["configurationSlot"])
        elif not finished(provision_command_id(charger_id, setting)):
            return None
    return priority_setting(slots) if slots else None


def plan(charger_id: str, ocpp_version: str, config: ChargerConfig | None, endpoints: tuple[str, ...] = (),
         profile: ProvisioningProfile | None = None,
         finished: Callable[[bytes], bool] = lambda command_id: False) -> tuple[tuple[bytes, Setting], ...]:
    """The provisioning commands to issue now: (id, setting) of each unsatisfied setting, and the
    network priority once the network profiles' outcomes are in (`finished(command id)`: the
    command has an outcome or expired)."""
    known = known_values(config, ocpp_version)
    settings = list(desired_settings(ocpp_version, endpoints, profile))
    priority = _priority(charger_id, settings, known, finished)
    if priority is not None:
        settings.append(priority)
    return tuple((provision_command_id(charger_id, s), s) for s in settings if not satisfied(s, known.get(s.key)))


def network_slots(charger_id: str, urls: Sequence[str]) -> tuple[str, ...]:
    """The endpoints of a charger's network profiles, slot 1 first: `urls` (valid, distinct, by
    validator address) rotated by keccak(charger id) mod len, at most MAX_NETWORK_SLOTS."""
    if not urls:
        return ()
    start = int.from_bytes(keccak256(b"devsen:NetworkSlots:" + charger_id.encode())[:8], "big") % len(urls)
    return tuple((list(urls[start:]) + list(urls[:start]))[:MAX_NETWORK_SLOTS])


def endpoint_records(raw: Sequence[tuple[bytes, Any]]) -> list[tuple[bytes, str, str]]:
    """(address, url, problem) of each validator endpoint, by address (the first
    MAX_VALIDATOR_ENDPOINTS), a URL seen at a lower address being a duplicate. Total."""
    seen: set[str] = set()
    records = []
    pairs = sorted(((a, u) for a, u in raw if isinstance(a, bytes) and len(a) == 20), key=lambda pair: pair[0])
    for address, url in pairs[:MAX_VALIDATOR_ENDPOINTS]:
        problem = endpoint_problem(url)
        if problem is None and url in seen:
            problem = "the URL of another validator"
        if problem is None:
            seen.add(url)
            records.append((address, url, ""))
        else:
            records.append((address, "", problem))
    return records


class ProvisioningBook:
    """Managers' profile overrides and the validators' endpoints (part of the ledger's hashed state)."""

    def __init__(self, next_seq: Callable[[], int]) -> None:
        self.profiles: HashedTable[str, ProvisioningProfile] = HashedTable("provisioning_profiles")
        self.endpoints: HashedTable[bytes, EndpointRecord] = HashedTable("network_endpoints")
        self._next_seq = next_seq
        self._raw: tuple[tuple[bytes, Any], ...] | None = None  # the last endpoints read (a memo, not state)
        self._urls: tuple[str, ...] = ()  # the valid URLs of `endpoints`, by address (derived)

    def tables(self) -> tuple[HashedTable[Any, Any], ...]:
        return (self.profiles, self.endpoints)

    def in_use(self) -> bool:
        return bool(len(self.profiles) or len(self.endpoints))

    def note_endpoints(self, raw: Sequence[tuple[bytes, Any]]) -> None:
        """The validators' endpoints at this block's Ethereum block: kept when they changed."""
        raw = tuple(raw)[:4 * MAX_VALIDATOR_ENDPOINTS]
        if raw == self._raw:
            return
        self._raw = raw
        records = endpoint_records(raw)
        current = [(a, r.url, r.problem) for a, r in self.endpoints.items()]
        if current == records:
            return
        for address in list(self.endpoints):
            self.endpoints.pop(address)
        for address, url, problem in records:
            self.endpoints.put(address, EndpointRecord(self._next_seq(), url, problem))
        self._rederive()

    def _rederive(self) -> None:
        self._urls = tuple(r.url for r in self.endpoints.values() if r.url)

    def slots_for(self, charger_id: str) -> tuple[str, ...]:
        return network_slots(charger_id, self._urls)

    def profile(self, charger_id: str) -> ProvisioningProfile | None:
        return self.profiles.get(charger_id)

    def refusal(self, charger_id: str) -> str | None:
        """Why a profile for `charger_id` cannot be kept now (the table is full), or None."""
        if charger_id not in self.profiles and len(self.profiles) >= MAX_PROFILES:
            return f"provisioning profiles are kept for at most {MAX_PROFILES} devices"
        return None

    def set_profile(self, charger_id: str, payload: dict[str, Any], command_id: bytes, height: int) -> None:
        """Apply a manager's valid profile payload ({}: back to the default)."""
        parsed = parse_profile(payload)
        if parsed is None:
            if charger_id in self.profiles:
                self.profiles.pop(charger_id)
            return
        if self.refusal(charger_id) is not None:
            return
        interval, measurands = parsed
        self.profiles.put(charger_id, ProvisioningProfile(self._next_seq(), interval, measurands, command_id, height))

    def to_state(self) -> list[Any]:
        return [t.to_state() for t in self.tables()]

    def restore(self, state: Any) -> None:
        profiles, endpoints = state
        for key, (seq, interval, measurands, command_id, height) in profiles:
            self.profiles.put(key, ProvisioningProfile(seq, interval, tuple(measurands), command_id, height))
        for key, v in endpoints:
            self.endpoints.put(key, EndpointRecord(*v))
        self._rederive()


def profile_view(profile: ProvisioningProfile | None) -> dict[str, Any]:
    """The effective profile and where it came from (GET /v1/chargers/{id}/provisioning)."""
    if profile is None:
        return {"source": "default", "sample_interval_s": DEFAULT_INTERVAL_S, "interval_rule": "at most",
                "measurands": [ENERGY_MEASURAND], "command_id": None, "height": None}
    return {"source": "manager", "sample_interval_s": profile.interval_s, "interval_rule": "exactly",
            "measurands": profile.sampled.split(","), "command_id": "0x" + profile.command_id.hex(),
            "height": profile.height}


def provisioning_document(charger_id: str, ocpp_version: str | None, config: ChargerConfig | None,
                          book: ProvisioningBook, status_of: Any) -> dict[str, Any]:
    """The JSON view of a charger's provisioning (GET /v1/chargers/{id}/provisioning): the
    effective profile, the validators' endpoints (taken or skipped, why), and per desired setting
    the desired value, the last known value, whether it is satisfied, and the command issued for
    it with its status and outcome (`status_of(command_id)` -> (status, outcome) or None)."""
    profile = book.profile(charger_id)
    endpoints = book.slots_for(charger_id)
    network = {"slots": [{"slot": i, "url": u} for i, u in enumerate(endpoints, start=1)],
               "skipped": [{"validator": "0x" + a.hex(), "problem": r.problem}
                           for a, r in book.endpoints.items() if r.problem]}
    head = {"charger_id": charger_id, "ocpp_version": ocpp_version, "profile": profile_view(profile),
            "network": network if ocpp_version == "2.0.1" else None}
    if ocpp_version is None:
        return {**head, "settings": []}
    known = known_values(config, ocpp_version)
    desired = list(desired_settings(ocpp_version, endpoints, profile))

    def finished(command_id: bytes) -> bool:
        found = status_of(command_id)
        return found is not None and found[0] != "pending"

    priority = _priority(charger_id, desired, known, finished)
    if priority is not None:
        desired.append(priority)
    settings = []
    for setting in desired:
        command_id = provision_command_id(charger_id, setting)
        found = status_of(command_id)
        settings.append({
            "key": setting.key, "action": setting.action, "desired": setting.value, "known": known.get(setting.key),
            "satisfied": satisfied(setting, known.get(setting.key)), "command_id": "0x" + command_id.hex(),
            "status": found[0] if found else None, "outcome": found[1] if found else None})
    return {**head, "settings": settings}
