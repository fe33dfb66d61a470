"""OCPP JSON schemas (shipped by the `ocpp` package), compiled once with fastjsonschema.

A schema violation becomes a `PayloadInvalid` carrying the OCPP-J error code our table
prescribes for that version (the table in errors.py). Validation never mutates the payload
(defaults are not filled in), so the event stores exactly what the charger sent.

Numbers stay plain floats (Decimal has no canonical encoding). The 1.6 schemas whose
`multipleOf: 0.1` needs decimal arithmetic still validate exactly: fastjsonschema checks
multipleOf as Decimal(repr(x)), and repr of a parsed float is its shortest decimal form.
JSON Schema draft-04 (1.6) refuses 1.0 for an integer; draft-06 (2.0.1) accepts it.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any

import fastjsonschema
import ocpp

from ocpp_adapter import errors

_SCHEMA_ROOT = os.path.dirname(os.path.realpath(ocpp.__file__))
_SCHEMA_DIRS = {"1.6": "v16", "2.0.1": "v201"}

# fastjsonschema rule -> error code, per version. Rules not listed are value constraints.
_RULE_CODES: dict[str, dict[str, str]] = {
    "1.6": {
        "required": errors.PROTOCOL_ERROR,
        "type": errors.TYPE_CONSTRAINT,
        "additionalProperties": errors.FORMATION_VIOLATION,
        "minItems": errors.OCCURENCE_CONSTRAINT_16,
        "maxItems": errors.OCCURENCE_CONSTRAINT_16,
    },
    "2.0.1": {
        "required": errors.OCCURRENCE_CONSTRAINT_201,
        "type": errors.TYPE_CONSTRAINT,
        "additionalProperties": errors.FORMAT_VIOLATION,
        "minItems": errors.OCCURRENCE_CONSTRAINT_201,
        "maxItems": errors.OCCURRENCE_CONSTRAINT_201,
    },
}


class PayloadInvalid(ValueError):
    """A payload breaks its schema; `code` is the OCPP-J error code to answer with."""

    def __init__(self, code: str, description: str, path: str = "") -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.path = path


def schema_file(version: str, action: str, response: bool) -> str:
    """Path of the schema for `action` (request or response) in `version`."""
    directory = _SCHEMA_DIRS[version]
    if version == "1.6":
        name = action + ("Response" if response else "")
    else:
        name = action + ("Response" if response else "Request")
    return os.path.join(_SCHEMA_ROOT, directory, "schemas", name + ".json")


@functools.cache
def known_actions(version: str) -> frozenset[str]:
    """Every action that has a request schema in `version` (either direction)."""
    directory = os.path.join(_SCHEMA_ROOT, _SCHEMA_DIRS[version], "schemas")
    suffix = ".json" if version == "1.6" else "Request.json"
    names = set()
    for file_name in os.listdir(directory):
        if not file_name.endswith(suffix):
            continue
        stem = file_name[: -len(suffix)]
        if version == "1.6" and stem.endswith("Response"):
            continue
        names.add(stem)
    return frozenset(names)


@functools.cache
def _validator(version: str, action: str, response: bool) -> Callable[[Any], Any]:
    with open(schema_file(version, action, response), encoding="utf-8-sig") as f:
        schema = json.load(f)
    return fastjsonschema.compile(schema, use_default=False)


def validate(version: str, action: str, payload: Any, *, response: bool = False) -> None:
    """Check `payload` against the request (or response) schema of `action`.

    Raises PayloadInvalid with the version's error code; KeyError if the action is unknown.
    """
    if action not in known_actions(version):
        raise KeyError(f"{action!r} is not an OCPP {version} action")
    check = _validator(version, action, response)
    try:
        check(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        code = _RULE_CODES[version].get(exc.rule or "", errors.PROPERTY_CONSTRAINT)
        raise PayloadInvalid(code, exc.message, exc.name or "") from None


def precompile(version: str, actions: frozenset[str] | set[str]) -> None:
    """Compile the request and response validators of `actions` now (startup, not first use)."""
    for action in actions:
        _validator(version, action, False)
        _validator(version, action, True)
