"""Chain errors, and the one place revert data becomes a custom error name.

Reverts reach Python differently on the two chains: eth-tester (py-evm) raises
`eth_tester.exceptions.TransactionFailed` carrying the raw revert bytes, anvil answers a
JSON-RPC error that web3 turns into `ContractCustomError`/`ContractLogicError` with the
data as hex. `revert_from_exception` reads both, and `decode_revert_data` maps the 4-byte
selector to an error of any DEVSEN contract ABI (plus Solidity's `Error(string)` and
`Panic(uint256)`), so callers match on `ChainRevert.name` whatever the chain.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode

from contracts import load_artifact
from primitives.hashing import keccak256

CONTRACT_NAMES = ("ValidatorSet", "UserRegistry", "DeviceFactory", "ChargeToken", "Escrow", "Anchor", "Rewards")
ERROR_STRING_SELECTOR = bytes.fromhex("08c379a0")
PANIC_SELECTOR = bytes.fromhex("4e487b71")
MAX_REVERT_DATA_BYTES = 64 * 1024


class ChainError(Exception):
    """Base of the chain client's errors."""


class RpcUnavailable(ChainError):
    """The JSON-RPC endpoint kept failing after every retry."""


class TransactionTimeout(ChainError):
    """A sent transaction had no receipt in time."""


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """One custom error of the ABIs: its name, argument types and names."""

    name: str
    types: tuple[str, ...]
    arg_names: tuple[str, ...]


class ChainRevert(ChainError):
    """A call or transaction reverted; `name` is the decoded custom error (or "Error",
    "Panic", "Unknown" for empty or unrecognised data) and `args` its decoded arguments."""

    def __init__(self, name: str, args: tuple[Any, ...], data: bytes, tx_hash: bytes | None = None):
        self.name = name
        self.args_decoded = args
        self.data = data
        self.tx_hash = tx_hash
        super().__init__(f"{name}{args!r}" + (f" in tx 0x{tx_hash.hex()}" if tx_hash else ""))


def _canonical_type(param: dict[str, Any]) -> str:
    """ABI type string of a parameter, expanding tuples."""
    abi_type: str = param["type"]
    if abi_type.startswith("tuple"):
        inner = ",".join(_canonical_type(c) for c in param["components"])
        return f"({inner}){abi_type[len('tuple'):]}"
    return abi_type


@functools.cache
def error_selectors() -> dict[bytes, ErrorSpec]:
    """4-byte selector -> error, over every DEVSEN contract's ABI."""
    table: dict[bytes, ErrorSpec] = {}
    for contract in CONTRACT_NAMES:
        for item in load_artifact(contract)["abi"]:
            if item["type"] != "error":
                continue
            types = tuple(_canonical_type(p) for p in item["inputs"])
            selector = keccak256(f"{item['name']}({','.join(types)})".encode())[:4]
            spec = ErrorSpec(item["name"], types, tuple(p["name"] for p in item["inputs"]))
            assert table.get(selector, spec) == spec, f"selector clash on {item['name']}"
            table[selector] = spec
    return table


def decode_revert_data(data: bytes) -> tuple[str, tuple[Any, ...]]:
    """(error name, decoded args) of revert data; ("Unknown", (data,)) if not decodable."""
    if len(data) > MAX_REVERT_DATA_BYTES:
        return "Unknown", (data[:MAX_REVERT_DATA_BYTES],)
    selector, body = data[:4], data[4:]
    try:
        if selector == ERROR_STRING_SELECTOR:
            return "Error", tuple(abi_decode(["string"], body))
        if selector == PANIC_SELECTOR:
            return "Panic", tuple(abi_decode(["uint256"], body))
        spec = error_selectors().get(selector)
        if spec is not None:
            return spec.name, tuple(abi_decode(list(spec.types), body))
    except Exception:  # malformed body after a known selector
        return "Unknown", (data,)
    return "Unknown", (data,)


def _as_bytes(value: object) -> bytes | None:
    """Revert bytes from raw bytes, "0x..." hex, or eth-tester's "execution reverted: b'...'"."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if not isinstance(value, str):
        return None
    text = value.removeprefix("execution reverted: ").strip()
    if text.startswith("0x"):
        try:
            return bytes.fromhex(text[2:])
        except ValueError:
            return None
    if text.startswith(("b'", 'b"')) and len(text) <= 4 * MAX_REVERT_DATA_BYTES + 3:
        try:
            literal = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return None
        return literal if isinstance(literal, bytes) else None
    return None


def revert_data_of(exc: BaseException) -> bytes | None:
    """The raw revert data carried by a web3 or eth-tester exception, or None if it is not a revert."""
    from eth_tester.exceptions import TransactionFailed
    from web3.exceptions import ContractLogicError

    if isinstance(exc, TransactionFailed):
        for arg in exc.args:
            data = _as_bytes(arg)
            if data is not None:
                return data
        return b""
    if isinstance(exc, ContractLogicError):
        data = _as_bytes(getattr(exc, "data", None))
        if data is not None:
            return data
        return b""
    return None


def revert_from_exception(exc: BaseException, tx_hash: bytes | None = None) -> ChainRevert | None:
    """A ChainRevert with the decoded custom error if `exc` is a revert on either chain."""
    data = revert_data_of(exc)
    if data is None:
        return None
    name, args = decode_revert_data(data)
    return ChainRevert(name, args, data, tx_hash)
