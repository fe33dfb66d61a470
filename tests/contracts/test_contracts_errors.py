"""Revert data -> custom error names by selector, on both exception shapes."""

from __future__ import annotations

from eth_abi.abi import encode
from eth_tester.exceptions import TransactionFailed
from eth_utils.crypto import keccak
from web3.exceptions import ContractCustomError

from anchoring.chain import decode_revert_data, revert_from_exception
from anchoring.chain.errors import error_selectors


def _custom(signature: str, types: list[str], values: list[object]) -> bytes:
    return keccak(text=signature)[:4] + encode(types, values)


def test_every_contract_error_has_a_unique_selector() -> None:
    names = {spec.name for spec in error_selectors().values()}
    assert {"TooFewSignatures", "SignerNotValidator", "BatchTooLarge", "RefundTooEarly",
            "BatchAlreadyAnchored", "NotDeviceManager", "SessionNotOpen"} <= names


def test_decode_custom_error_string_panic_and_unknown() -> None:
    data = _custom("TooFewSignatures(uint256,uint256)", ["uint256", "uint256"], [2, 3])
    assert decode_revert_data(data) == ("TooFewSignatures", (2, 3))
    assert decode_revert_data(_custom("Error(string)", ["string"], ["boom"])) == ("Error", ("boom",))
    assert decode_revert_data(_custom("Panic(uint256)", ["uint256"], [0x11])) == ("Panic", (0x11,))
    assert decode_revert_data(b"\xde\xad\xbe\xef") == ("Unknown", (b"\xde\xad\xbe\xef",))
    assert decode_revert_data(b"") == ("Unknown", (b"",))
    truncated = _custom("TooFewSignatures(uint256,uint256)", ["uint256", "uint256"], [2, 3])[:20]
    assert decode_revert_data(truncated)[0] == "Unknown"


def test_both_chains_exception_shapes() -> None:
    data = _custom("SessionNotOpen(bytes32,uint8)", ["bytes32", "uint8"], [b"\x01" * 32, 2])
    tester = TransactionFailed(f"execution reverted: {data!r}")
    anvil = ContractCustomError("0x" + data[:4].hex(), data="0x" + data.hex())
    for exc in (tester, anvil):
        revert = revert_from_exception(exc)
        assert revert is not None and revert.name == "SessionNotOpen" and revert.args_decoded == (b"\x01" * 32, 2)
    assert revert_from_exception(ValueError("not a revert")) is None
