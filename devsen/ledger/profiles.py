"""A device's provisioning profile, overridable by its manager (issue 13).

The default profile asks a charger for the energy register in its sampled and stop data and a
sample interval of at most DEFAULT_INTERVAL_S (provisioning.py). The device's manager may
override it with a ledger command (`PROFILE_ACTION`, signed and admitted like any manager
command, devsen/ledger/commands.py; it is applied by the ledger, never sent to the charger):

    {"sample_interval_s": 30, "measurands": ["Voltage", "SoC"]}   both optional
    {}                                                           back to the default

- `sample_interval_s`: an integer in MIN_INTERVAL_S..MAX_INTERVAL_S (every sample is a
  consensus event: no faster; settlement needs readings: no slower); set exactly.
- `measurands`: at most MAX_EXTRA_MEASURANDS distinct names of MEASURANDS (the measurands
  OCPP 1.6 and 2.0.1 both define, so one profile serves either version), sampled besides the
  energy register, which is always first and cannot be dropped.
Anything else is refused with the reason (`profile_problem`), at submission (HTTP 400) and in
a block alike. Pure, total.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROFILE_ACTION = "SetProvisioningProfile"
ENERGY_MEASURAND = "Energy.Active.Import.Register"
DEFAULT_INTERVAL_S = 60
MIN_INTERVAL_S = 10
MAX_INTERVAL_S = 3_600
MAX_EXTRA_MEASURANDS = 8
MAX_PROFILES = 10_000  # devices with an overridden profile (as many as the ledger's nonce windows)
# The Measurand values of OCPP 1.6 (MeterValues.json) that OCPP 2.0.1's MeasurandEnumType also has.
MEASURANDS = (
    "Energy.Active.Export.Register", "Energy.Active.Import.Register", "Energy.Reactive.Export.Register",
    "Energy.Reactive.Import.Register", "Energy.Active.Export.Interval", "Energy.Active.Import.Interval",
    "Energy.Reactive.Export.Interval", "Energy.Reactive.Import.Interval", "Power.Active.Export",
    "Power.Active.Import", "Power.Offered", "Power.Reactive.Export", "Power.Reactive.Import", "Power.Factor",
    "Current.Import", "Current.Export", "Current.Offered", "Voltage", "Frequency", "SoC")
PROFILE_KEYS = ("sample_interval_s", "measurands")


@dataclass(frozen=True, slots=True)
class ProvisioningProfile:
    """A device's overridden profile: the sample interval, the measurands besides the energy
    register, and the manager command that set it (id, height)."""

    seq: int
    interval_s: int
    measurands: tuple[str, ...]
    command_id: bytes
    height: int

    @property
    def sampled(self) -> str:
        """The comma-separated measurands a charger is asked to sample (energy first)."""
        return ",".join((ENERGY_MEASURAND, *self.measurands))


def profile_problem(payload: Any) -> str | None:
    """Why `payload` is not a provisioning profile, or None."""
    if not isinstance(payload, dict):
        return "a provisioning profile is a JSON object"
    unknown = sorted(k for k in payload if k not in PROFILE_KEYS)
    if unknown:
        return f"unknown provisioning profile keys {', '.join(map(repr, unknown))[:200]}; known: {', '.join(PROFILE_KEYS)}"
    interval = payload.get("sample_interval_s", DEFAULT_INTERVAL_S)
    if type(interval) is not int or not MIN_INTERVAL_S <= interval <= MAX_INTERVAL_S:
        return f"sample_interval_s must be an integer of {MIN_INTERVAL_S}..{MAX_INTERVAL_S} seconds, not {str(interval)[:40]}"
    measurands = payload.get("measurands", [])
    if not isinstance(measurands, list) or len(measurands) > MAX_EXTRA_MEASURANDS:
        return f"measurands must be a list of at most {MAX_EXTRA_MEASURANDS} measurand names"
    for name in measurands:
        if not isinstance(name, str) or name not in MEASURANDS:
            return (f"measurand {str(name)[:60]!r} is not one OCPP 1.6 and 2.0.1 both define: "
                    + ", ".join(MEASURANDS))
    if len(set(measurands)) != len(measurands):
        return "measurands must be distinct"
    return None


def parse_profile(payload: dict[str, Any]) -> tuple[int, tuple[str, ...]] | None:
    """(interval, extra measurands) of a valid profile payload (`profile_problem` is None), or
    None for {} (back to the default)."""
    if not payload:
        return None
    measurands = tuple(m for m in payload.get("measurands", []) if m != ENERGY_MEASURAND)
    return int(payload.get("sample_interval_s", DEFAULT_INTERVAL_S)), measurands
