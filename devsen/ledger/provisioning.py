"""Provisioning (issue 13): the network configures what settlement and failover rely on.

On every committed BootNotification of a registered, active charger the ledger issues, as
ledger-originated commands (signer empty, delivered like a manager's by devsen/charger_commands.py,
outcome committed once through the outcome path), the settings of the provisioning profile that
the charger's last known configuration (shared state, commands.py) does not already satisfy:

- 1.6: ChangeConfiguration `MeterValuesSampledData` and `StopTxnSampledData` (their
  comma-separated measurands must include Energy.Active.Import.Register) and
  `MeterValueSampleInterval` (a positive interval at most the profile's);
- 2.0.1: SetVariables `SampledDataCtrlr` TxStartedMeasurands / TxUpdatedMeasurands /
  TxEndedMeasurands and TxUpdatedInterval (one variable a command, so each outcome names one
  setting); with node endpoints, SetNetworkProfile for slots 1..n (the endpoints in priority
  order) and OCPPCommCtrlr NetworkConfigurationPriority "1,2,..,n".

Bounded and loop-proof: a provisioning command's id is the hash of (charger, action, exact
payload), so a charger that rejects a setting, answers garbage or reboots in a loop gets each
distinct setting at most once while its record is kept (the ledger's command table); at most
`len(desired)` commands a boot. A setting already known as set (an accepted change, a
GetConfiguration / GetVariables / NotifyReport) is skipped, so a reboot does not re-send it.

Pure and total: `plan` never raises on any configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from devsen.ledger.commands import ChargerConfig, json_text
from primitives.hashing import keccak256

PROVISION_TTL_MS = 3_600_000  # a provisioning command waits an hour for its charger (it just booted)
ENERGY_MEASURAND = "Energy.Active.Import.Register"
DEFAULT_INTERVAL_S = 60
MAX_NETWORK_SLOTS = 4  # NetworkConnectionProfiles named (the endpoints beyond are not)
MEASURAND_KEYS_16 = ("MeterValuesSampledData", "StopTxnSampledData")
INTERVAL_KEY_16 = "MeterValueSampleInterval"
MEASURAND_VARIABLES_201 = ("TxStartedMeasurands", "TxUpdatedMeasurands", "TxEndedMeasurands")
INTERVAL_VARIABLE_201 = "TxUpdatedInterval"
SAMPLED_DATA = "SampledDataCtrlr"
PRIORITY_KEY_201 = "OCPPCommCtrlr/NetworkConfigurationPriority"


@dataclass(frozen=True, slots=True)
class Setting:
    """One desired setting: its configuration key (commands.variable_key form for 2.0.1), the
    value sent, and whether a known value satisfies it (`kind`: measurands, interval, exact)."""

    key: str
    value: str
    kind: str
    action: str
    payload: dict[str, Any]


def _set_variable(component: str, variable: str, value: str) -> dict[str, Any]:
    return {"setVariableData": [{"component": {"name": component}, "variable": {"name": variable},
                                 "attributeValue": value}]}


def desired_settings(ocpp_version: str, endpoints: tuple[str, ...] = (),
                     interval_s: int = DEFAULT_INTERVAL_S) -> tuple[Setting, ...]:
    """The default provisioning profile of a charger speaking `ocpp_version` (() if unknown)."""
    interval = str(interval_s)
    if ocpp_version == "1.6":
        settings = [Setting(k, ENERGY_MEASURAND, "measurands", "ChangeConfiguration",
                            {"key": k, "value": ENERGY_MEASURAND}) for k in MEASURAND_KEYS_16]
        settings.append(Setting(INTERVAL_KEY_16, interval, "interval", "ChangeConfiguration",
                                {"key": INTERVAL_KEY_16, "value": interval}))
        return tuple(settings)
    if ocpp_version != "2.0.1":
        return ()
    settings = [Setting(f"{SAMPLED_DATA}/{v}", ENERGY_MEASURAND, "measurands", "SetVariables",
                        _set_variable(SAMPLED_DATA, v, ENERGY_MEASURAND)) for v in MEASURAND_VARIABLES_201]
    settings.append(Setting(f"{SAMPLED_DATA}/{INTERVAL_VARIABLE_201}", interval, "interval", "SetVariables",
                            _set_variable(SAMPLED_DATA, INTERVAL_VARIABLE_201, interval)))
    slots = endpoints[:MAX_NETWORK_SLOTS]
    for slot, url in enumerate(slots, start=1):
        settings.append(Setting(f"NetworkConnectionProfiles/{slot}", url, "exact", "SetNetworkProfile", {
            "configurationSlot": slot,
            "connectionData": {"ocppVersion": "OCPP20", "ocppTransport": "JSON", "ocppCsmsUrl": url,
                               "messageTimeout": 30, "securityProfile": 1, "ocppInterface": "Wired0"}}))
    if slots:
        priority = ",".join(str(s) for s in range(1, len(slots) + 1))
        settings.append(Setting(PRIORITY_KEY_201, priority, "exact", "SetVariables",
                                _set_variable("OCPPCommCtrlr", "NetworkConfigurationPriority", priority)))
    return tuple(settings)


def satisfied(setting: Setting, known: str | None) -> bool:
    """Whether a known configuration value already gives what `setting` asks for."""
    if known is None:
        return False
    if setting.kind == "measurands":
        have = {m.strip() for m in known.split(",")}
        return all(m in have for m in setting.value.split(","))
    if setting.kind == "interval":
        return known.isdigit() and 0 < int(known) <= int(setting.value)
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


def plan(charger_id: str, ocpp_version: str, config: ChargerConfig | None,
         endpoints: tuple[str, ...] = ()) -> tuple[tuple[bytes, Setting], ...]:
    """The provisioning commands to issue at a boot: (id, setting) of each unsatisfied setting."""
    known = known_values(config, ocpp_version)
    return tuple((provision_command_id(charger_id, s), s) for s in desired_settings(ocpp_version, endpoints)
                 if not satisfied(s, known.get(s.key)))


def provisioning_document(charger_id: str, ocpp_version: str | None, config: ChargerConfig | None,
                          endpoints: tuple[str, ...], status_of: Any) -> dict[str, Any]:
    """The JSON view of a charger's provisioning (GET /v1/chargers/{id}/provisioning): per desired
    setting the desired value, the last known value, whether it is satisfied, and the command
    issued for it with its status and outcome (`status_of(command_id)` -> (status, outcome) or None)."""
    if ocpp_version is None:
        return {"charger_id": charger_id, "ocpp_version": None, "profile": "default", "settings": []}
    known = known_values(config, ocpp_version)
    settings = []
    for setting in desired_settings(ocpp_version, endpoints):
        command_id = provision_command_id(charger_id, setting)
        found = status_of(command_id)
        settings.append({
            "key": setting.key, "action": setting.action, "desired": setting.value, "known": known.get(setting.key),
            "satisfied": satisfied(setting, known.get(setting.key)), "command_id": "0x" + command_id.hex(),
            "status": found[0] if found else None, "outcome": found[1] if found else None})
    return {"charger_id": charger_id, "ocpp_version": ocpp_version, "profile": "default", "settings": settings}
