"""Gas per session of `Escrow.settleBatch` at 1, 10 and 100 sessions per transaction (anvil).

Each session has its own driver (so every refund writes a different, cold balance slot, as
in real traffic); drivers and the manager already hold tokens (no zero-to-nonzero balance
writes, which only a first payment pays). One manager owns the devices, so the batch pays
the manager once. 3-of-4 validators sign. (The network's own batches on the devnet, and the
latency from stop to settled: bench/results/settle_devnet.json, from tests/e2e/test_e2e_network.py.)
Writes bench/results/settle_batch.json. Run: `.venv/bin/python bench/settle_batch.py`.
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
from primitives.eip712 import SigningKey, sort_signatures_by_signer

RESULTS = Path(__file__).resolve().parent / "results"
TOKEN = 10**6
SIZES = (1, 10, 100)
VALIDATORS = 4
QUORUM = 3


def _sign(keys: list[SigningKey], digest: bytes) -> list[bytes]:
    return sort_signatures_by_signer(digest, [k.sign(digest) for k in keys])


def _open_sessions(w3: Web3, funder: TransactionSender, deployment: Deployment, cbid: str, count: int,
                   tag_prefix: str) -> list[bytes]:
    """`count` sessions on `cbid`, each opened by a fresh driver who keeps a token balance."""
    ids = []
    for i in range(count):
        account = Account.create()
        funder.send_data(account.address, b"", gas=21_000, value=10**17)
        driver = ChainClient(w3, deployment, TransactionSender(w3, account.key))
        driver.register_roles(1)
        tag = f"{tag_prefix}-{i}"
        driver.register_id_tag(tag)
        driver.faucet_mint(account.address, 21 * TOKEN)
        driver.approve(deployment.escrow, 20 * TOKEN)
        ids.append(driver.open_session(cbid, 1 + i % 2, tag, 20 * TOKEN)[0])
    return ids


def measure(w3: Web3, dev_key: str) -> dict[str, object]:
    funder = TransactionSender(w3, dev_key)
    actors = [Account.create() for _ in range(2)]
    for actor in actors:
        funder.send_data(actor.address, b"", gas=21_000, value=10**18)
    keys = [SigningKey(hashlib.sha256(f"batch-gas-{i}".encode()).digest()) for i in range(VALIDATORS)]
    deployment = deploy_all(TransactionSender(w3, actors[0].key),
                            [ValidatorSpec(Web3.to_checksum_address(k.address)) for k in keys], faucet=True)
    manager, relayer = (ChainClient(w3, deployment, TransactionSender(w3, a.key)) for a in actors)
    manager.register_roles(2)
    manager.faucet_mint(actors[0].address, TOKEN)  # the manager already holds tokens
    cbid = "BATCH-CB-1"
    manager.create_device(cbid, location="", connector_count=2, price_per_kwh=300_000, per_minute_fee=0,
                          auth_salt=b"\x11" * 16, auth_hash=b"\x22" * 32)
    # warm-up: the contract's first settlement pays one-time zero-to-nonzero writes
    warm = _open_sessions(w3, funder, deployment, cbid, 1, "W")
    relayer.settle_batch([(warm[0], 1, 1)], _sign(keys[:QUORUM], settlement_batch_digest(
        deployment.domain("Escrow"), [(warm[0], 1, 1)])))
    rows: dict[str, dict[str, int]] = {}
    for size in SIZES:
        ids = _open_sessions(w3, funder, deployment, cbid, size, f"B{size}")
        entries = [(sid, 12_000 + i, 7 * TOKEN) for i, sid in enumerate(ids)]
        sigs = _sign(keys[:QUORUM], settlement_batch_digest(deployment.domain("Escrow"), entries))
        receipt = relayer.settle_batch(entries, sigs, gas=200_000 + 40_000 * size)
        rows[str(size)] = {"gas": receipt.gas_used, "gas_per_session": receipt.gas_used // size}
        replay = relayer.settle_batch(entries, sigs, gas=200_000 + 40_000 * size)
        rows[str(size)]["replay_gas"] = replay.gas_used  # every entry skipped as already settled
    return {"chain": "anvil, cancun, solc 0.8.37 optimizer 200 runs",
            "signatures": f"{QUORUM}-of-{VALIDATORS}", "settle_batch": rows}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, running_anvil(Path(tmp) / "anvil.log") as anvil:
        result = measure(connect(anvil.url), anvil.dev_keys[0])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "settle_batch.json").write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
