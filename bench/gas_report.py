"""Gas of the DEVSEN contract operations on anvil (cancun), written as a table.

Starts a local anvil, deploys two networks (4 and 7 validators) and measures from the
receipts: device creation, idTag registration, open session, settle (a settleBatch of one
session) with 3-of-4 and 5-of-7 signatures, anchor with 3-of-4 and 5-of-7. Writes bench/results/gas.json and gas.md.
Run: `.venv/bin/python bench/gas_report.py`.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

from eth_account import Account
from web3 import Web3

from anchoring.chain import (
    ChainClient,
    Deployment,
    TransactionSender,
    ValidatorSpec,
    connect,
    deploy_all,
)
from anchoring.chain.anvil import running_anvil
from anchoring.escrow_sign import settlement_batch_digest
from consensus.signing import ANCHOR_BATCH_TYPE
from primitives.eip712 import SigningKey, sort_signatures_by_signer, typed_digest

RESULTS = Path(__file__).resolve().parent / "results"
TOKEN = 10**6


def _keys(count: int) -> list[SigningKey]:
    return [SigningKey(hashlib.sha256(f"gas-{count}-{i}".encode()).digest()) for i in range(count)]


def _sign(keys: list[SigningKey], digest: bytes) -> list[bytes]:
    return sort_signatures_by_signer(digest, [k.sign(digest) for k in keys])


def measure(w3: Web3, dev_key: str, validator_count: int) -> dict[str, int]:
    """Deploy a network of `validator_count` validators and return gas per operation."""
    funder = TransactionSender(w3, dev_key)
    actors = [Account.create() for _ in range(3)]
    for actor in actors:
        funder.send_data(actor.address, b"", gas=21_000, value=10**18)
    keys = _keys(validator_count)
    deployment: Deployment = deploy_all(
        TransactionSender(w3, actors[0].key),
        [ValidatorSpec(Web3.to_checksum_address(k.address)) for k in keys],
        faucet=True,
    )
    manager, driver, relayer = (ChainClient(w3, deployment, TransactionSender(w3, a.key)) for a in actors)
    quorum = (2 * validator_count) // 3 + 1
    gas: dict[str, int] = {}
    gas["register roles"] = manager.register_roles(2).gas_used
    driver.register_roles(1)
    gas["device creation"] = manager.create_device(
        "GAS-CB-0001", location="Example Street 1, Town", connector_count=2, price_per_kwh=300_000,
        per_minute_fee=0, auth_salt=b"\x11" * 16, auth_hash=b"\x22" * 32,
    ).gas_used
    gas["idTag registration"] = driver.register_id_tag("GAS-TAG-0001").gas_used
    driver.faucet_mint(actors[1].address, 100 * TOKEN)
    driver.approve(deployment.escrow, 100 * TOKEN)
    session_id, receipt = driver.open_session("GAS-CB-0001", 1, "GAS-TAG-0001", 20 * TOKEN)
    gas["open session"] = receipt.gas_used
    gas["open session (driver's 2nd)"] = driver.open_session("GAS-CB-0001", 2, "GAS-TAG-0001", 20 * TOKEN)[1].gas_used
    digest = settlement_batch_digest(deployment.domain("Escrow"), [(session_id, 12_000, 7 * TOKEN)])
    gas[f"settle {quorum}-of-{validator_count}"] = relayer.settle_batch(  # a settleBatch of one
        [(session_id, 12_000, 7 * TOKEN)], _sign(keys[:quorum], digest)
    ).gas_used
    batch: tuple[int, bytes, int, int, int] = (0, b"\x33" * 32, 1, 20, 500)
    digest = typed_digest(deployment.domain("Anchor"), ANCHOR_BATCH_TYPE, batch)
    gas[f"anchor {quorum}-of-{validator_count}"] = relayer.submit_anchor_batch(
        *batch, _sign(keys[:quorum], digest)
    ).gas_used
    batch = (1, b"\x44" * 32, 21, 40, 300)
    digest = typed_digest(deployment.domain("Anchor"), ANCHOR_BATCH_TYPE, batch)
    gas[f"anchor {quorum}-of-{validator_count} (next batch)"] = relayer.submit_anchor_batch(
        *batch, _sign(keys[:quorum], digest)
    ).gas_used
    return gas


def to_markdown(rows: dict[str, int]) -> str:
    lines = [
        "# Gas of DEVSEN contract operations (anvil 1.7.1, cancun, solc 0.8.37 optimizer 200 runs)",
        "",
        "Produced by `bench/gas_report.py` from transaction receipts (gas used, including the",
        "21,000 base and calldata). Signatures are 65-byte EIP-712 secp256k1, sorted by signer.",
        "First-time rows include zero-to-nonzero storage writes (20,000 gas each) that later calls",
        "do not pay: the escrow's token balance, the open-deposit sum, the batch counter.",
        "",
        "| operation | gas |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {value:,} |" for name, value in rows.items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, running_anvil(Path(tmp) / "anvil.log") as anvil:
        w3 = connect(anvil.url)
        small = measure(w3, anvil.dev_keys[0], 4)
        large = measure(w3, anvil.dev_keys[1], 7)
    rows = {
        "device creation": small["device creation"],
        "idTag registration": small["idTag registration"],
        "register roles": small["register roles"],
        "open session (first of the contract and driver)": small["open session"],
        "open session (driver's 2nd)": small["open session (driver's 2nd)"],
        "settle 3-of-4": small["settle 3-of-4"],
        "settle 5-of-7": large["settle 5-of-7"],
        "anchor 3-of-4": small["anchor 3-of-4"],
        "anchor 5-of-7": large["anchor 5-of-7"],
        "anchor 3-of-4 (next batch)": small["anchor 3-of-4 (next batch)"],
        "anchor 5-of-7 (next batch)": large["anchor 5-of-7 (next batch)"],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gas.json").write_text(json.dumps({"chain": "anvil 1.7.1 cancun", "gas": rows}, indent=2) + "\n")
    (RESULTS / "gas.md").write_text(to_markdown(rows))
    sys.stdout.write(to_markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
