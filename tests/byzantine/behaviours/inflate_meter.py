"""The ingress validator inflates the energy its charger reports: before vouching for a
MeterValues or StopTransaction of BYZ_CHARGER, it multiplies every unsigned energy reading
(sampledValue values, meterStop) by BYZ_FACTOR (default 5). The event is then vouched for
with this validator's own key and committed like an honest one: only the driver's vouchers
(and the physics bound) stand between the inflated meter and the driver's deposit.

Patched: `devsen.node.NodeIngest.submit` (the one place an ingress node turns its charger's
call into a vouched event). Everything else, the remote stop included, is the real node's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from behaviours import env, log


def _inflate_samples(meter_values: Any, factor: int) -> Any:
    if not isinstance(meter_values, list):
        return meter_values
    out = []
    for meter_value in meter_values:
        if isinstance(meter_value, dict) and isinstance(meter_value.get("sampledValue"), list):
            samples = []
            for sample in meter_value["sampledValue"]:
                if isinstance(sample, dict) and sample.get("format") != "SignedData" and \
                        str(sample.get("value", "")).isdigit():
                    sample = {**sample, "value": str(int(sample["value"]) * factor)}
                samples.append(sample)
            meter_value = {**meter_value, "sampledValue": samples}
        out.append(meter_value)
    return out


def inflated(event: Any, charger: str, factor: int) -> Any:
    """`event` with its energy readings multiplied by `factor` (other events unchanged)."""
    if event.charger_id != charger or event.ocpp_version != "1.6":
        return event
    payload = dict(event.payload)
    if event.action == "MeterValues":
        payload["meterValue"] = _inflate_samples(payload.get("meterValue"), factor)
    elif event.action == "StopTransaction" and isinstance(payload.get("meterStop"), int):
        payload["meterStop"] = payload["meterStop"] * factor
    else:
        return event
    log.warning("inflating %s of %s by %d", event.action, charger, factor)
    return dataclasses.replace(event, payload=payload)


def install() -> None:
    import devsen.node as node

    charger, factor = env("CHARGER"), int(env("FACTOR", "5"))
    original = node.NodeIngest.submit

    async def submit(self: Any, event: Any) -> Any:
        return await original(self, inflated(event, charger, factor))

    node.NodeIngest.submit = submit  # type: ignore[method-assign]
