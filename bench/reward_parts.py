"""Gas of `Rewards.distribute` per part (anvil): an epoch of 450 owners paid in 3 parts (200, 200, 50).

Every owner is a fresh account (the first payment writes a zero-to-nonzero balance slot, as for
a new owner in real traffic); 3-of-4 validators sign each part. Writes bench/results/reward_parts.json.
Run: `.venv/bin/python bench/reward_parts.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

from eth_account import Account
from web3 import Web3

from anchoring.chain import ChainClient, TransactionSender, ValidatorSpec, connect, deploy_all
from anchoring.chain.anvil import running_anvil
from anchoring.rewards import MAX_PAYOUTS, distribute, fund, reward_parts
from primitives.eip712 import SigningKey, sort_signatures_by_signer

RESULTS = Path(__file__).resolve().parent / "results"
TOKEN = 10**6
OWNERS = 450
VALIDATORS = 4
QUORUM = 3
BUDGET = 1_000 * TOKEN


def measure(w3: Web3, dev_key: str) -> dict[str, object]:
    funder = TransactionSender(w3, dev_key)
    actor = Account.create()
    funder.send_data(actor.address, b"", gas=21_000, value=10**18)
    keys = sorted((SigningKey(hashlib.sha256(f"reward-gas-{i}".encode()).digest()) for i in range(VALIDATORS)),
                  key=lambda k: k.address)
    deployment = deploy_all(TransactionSender(w3, actor.key),
                            [ValidatorSpec(Web3.to_checksum_address(k.address)) for k in keys], faucet=True,
                            reward_epoch_budget=BUDGET)
    client = ChainClient(w3, deployment, TransactionSender(w3, actor.key))
    client.faucet_mint(actor.address, 2 * BUDGET)
    fund(client, 2 * BUDGET)
    domain = deployment.domain("Rewards")
    parts = reward_parts(1, [("0x" + os.urandom(20).hex(), BUDGET // 1_000) for _ in range(OWNERS)])
    rows = []
    for part in parts:
        digest = part.digest(domain)
        sigs = sort_signatures_by_signer(digest, [k.sign(digest) for k in keys[:QUORUM]])
        receipt = distribute(client, part, sigs)
        rows.append({"part": part.part, "parts": part.parts, "payouts": len(part.payouts), "gas": receipt.gas_used,
                     "gas_per_payout": receipt.gas_used // len(part.payouts)})
    assert client.read("Rewards", "epochPaid", 1, block="latest")
    full = [r for r in rows if r["payouts"] == MAX_PAYOUTS]
    return {"chain": "anvil, cancun, solc 0.8.37 optimizer 200 runs", "signatures": f"{QUORUM}-of-{VALIDATORS}",
            "owners": OWNERS, "payout_recipients": "fresh accounts (zero-to-nonzero token balance)",
            "parts": rows, "gas_per_full_part": max(r["gas"] for r in full),
            "gas_per_payout_full_part": max(r["gas_per_payout"] for r in full),
            "epoch_total_gas": sum(r["gas"] for r in rows)}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, running_anvil(Path(tmp) / "anvil.log") as anvil:
        result = measure(connect(anvil.url), anvil.dev_keys[0])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reward_parts.json").write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
