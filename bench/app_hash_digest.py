"""Benchmark: the cost per block of the app hash's beside-ledger digest (devsen/beside_ledger.py).

The digest covers the attestation book's recent quorums (up to MAX_OPEN_SUBJECTS = 4,096 per
kind), so hashing them afresh every block would cost tens of ms; BesideLedgerDigest remembers each
item's hash between blocks. Prints and writes the cold (first block) and remembered (per block)
figures to --out.

    .venv/bin/python bench/app_hash_digest.py --out bench/results/app_hash_digest.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from anchoring.attestations import AnchorBatch
from anchoring.batches import MAX_OPEN_SUBJECTS, BuilderState, Quorum
from devsen.beside_ledger import BesideLedgerDigest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quorums", type=int, default=MAX_OPEN_SUBJECTS)
    parser.add_argument("--blocks", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    signers = tuple(bytes([k]) * 20 for k in range(1, 4))
    quorums = [Quorum(AnchorBatch(i, bytes([i % 255 + 1]) * 32, i * 10 + 1, i * 10 + 10, 50), signers,
                      tuple(bytes([k]) * 65 for k in range(1, 4)), i * 10 + 12) for i in range(args.quorums)]
    validators = [bytes([k]) * 20 for k in range(1, 5)]
    open_blocks = [(args.quorums * 10 + 1, 0, (b"\x01" * 32,) * 50)]
    batcher = BuilderState(args.quorums, args.quorums * 10 + 1, 0)
    remembered = BesideLedgerDigest()
    started = time.perf_counter()
    remembered.digest(100, 1, validators, batcher, [], quorums, [], open_blocks)
    cold_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    for _ in range(args.blocks):
        remembered.digest(100, 1, validators, batcher, [], quorums, [], open_blocks)
    warm_ms = (time.perf_counter() - started) * 1000 / args.blocks
    result = {"quorums": args.quorums, "cold_ms": round(cold_ms, 2), "remembered_ms_per_block": round(warm_ms, 3),
              "blocks": args.blocks, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"beside-ledger digest with {args.quorums:,} recent quorums: {cold_ms:.1f} ms fresh, "
          f"{warm_ms:.2f} ms per block remembered ({args.blocks} blocks)")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
