"""Output for people and scripts: hex ids, token amounts with units, ISO 8601 times, enum names.

One place decides how the CLI shows a value, so `devsen wallet`, `devsen status`,
`devsen devnet status` and `devsen audit` print the same thing the same way, and their
`--json` forms carry the same values in a stable, machine-friendly shape.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
from typing import Any

TOKEN_SYMBOL = "DCT"
TOKEN_DECIMALS = 6  # ChargeToken.decimals
WEI_PER_ETH = 10**18


def hex0x(raw: bytes | bytearray) -> str:
    """`0x` + lowercase hex."""
    return "0x" + bytes(raw).hex()


def token_amount(units: int) -> str:
    """ChargeToken base units as `12.500000 DCT (12500000 units)`: both, so nothing is guessed."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), 10**TOKEN_DECIMALS)
    return f"{sign}{whole:,}.{frac:0{TOKEN_DECIMALS}d} {TOKEN_SYMBOL} ({units} units)"


def eth_amount(wei: int) -> str:
    """Wei as ETH with 6 decimals, the exact wei alongside."""
    whole, frac = divmod(wei, WEI_PER_ETH)
    return f"{whole:,}.{frac * 10**6 // WEI_PER_ETH:06d} ETH ({wei} wei)"


def iso_time(unix_s: float) -> str:
    """Unix seconds as ISO 8601 UTC (`2026-12-02T01:02:03Z`); 0 is `never`."""
    if not unix_s:
        return "never"
    moment = datetime.datetime.fromtimestamp(unix_s, tz=datetime.UTC)
    text = moment.isoformat(timespec="seconds" if float(unix_s).is_integer() else "milliseconds")
    return text.replace("+00:00", "Z")


def duration(seconds: float) -> str:
    """`3h 04m`, `5m 02s`, `12.3s`."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def jsonable(value: Any) -> Any:
    """Dataclasses, enums, bytes, tuples made JSON-ready: bytes -> 0x hex, enums -> names."""
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (bytes, bytearray)):
        return hex0x(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Indented JSON of `jsonable(value)` (keys in insertion order)."""
    return json.dumps(jsonable(value), indent=2)
