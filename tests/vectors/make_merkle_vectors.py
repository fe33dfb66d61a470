"""Regenerate tests/vectors/merkle_v1.json from anchoring/merkle.py.

Event ids are keccak-256 of real canonical ChargerEvent bytes, so a vector can be checked
end to end (bytes -> event id -> leaf -> proof -> root). Usage:
    .venv/bin/python tests/vectors/make_merkle_vectors.py [--check]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from anchoring.merkle import MerkleTree, leaf_hash
from ocpp_adapter.events import ChargerEvent
from ocpp_adapter.vouching import ingress_domain, vouch
from primitives.eip712 import Domain, SigningKey

VECTOR_PATH = Path(__file__).with_name("merkle_v1.json")
LEAF_COUNTS = (0, 1, 2, 3, 5, 8, 13)
VOUCHER = SigningKey(b"\x01" * 32)  # events are version 2: vouched for by this (test) validator
DOMAIN = ingress_domain(Domain(31337, b"\x42" * 20))


def _event(n: int, i: int) -> ChargerEvent:
    return ChargerEvent(
        charger_id=f"CP-{n:02d}-{i:02d}",
        ocpp_version="1.6",
        action="MeterValues",
        message_id=f"m{i}",
        payload={"connectorId": 1, "meterValue": [{"timestamp": "2026-01-01T00:00:00Z",
                                                   "sampledValue": [{"value": str(100 * i)}]}]},
        ingress_node="",
        received_at_ms=1_767_225_600_000 + i,
        connection_id=bytes([n, i]) * 8,
    )


def _vouched(n: int, i: int) -> ChargerEvent:
    return vouch(_event(n, i), VOUCHER, DOMAIN)


def build_vectors() -> dict[str, Any]:
    """The vector document: one case per leaf count, every leaf with its proof."""
    cases = []
    for n in LEAF_COUNTS:
        events = [_vouched(n, i) for i in range(n)]
        ids = [e.event_id for e in events]
        tree = MerkleTree(ids)
        leaves = []
        for i, event in enumerate(events):
            proof = tree.proof(i)
            leaves.append({
                "event_bytes": "0x" + event.to_bytes().hex(),
                "event_id": "0x" + ids[i].hex(),
                "leaf": "0x" + leaf_hash(ids[i]).hex(),
                "proof": ["0x" + s.hex() for s in proof.siblings],
                "directions": proof.directions,
            })
        cases.append({"leaf_count": n, "root": "0x" + tree.root.hex(), "leaves": leaves})
    return {"spec": "anchoring/MERKLE.md v1", "hash": "keccak-256", "cases": cases}


def main(argv: list[str]) -> int:
    text = json.dumps(build_vectors(), indent=1) + "\n"
    if "--check" in argv:
        same = VECTOR_PATH.read_text() == text
        print("vectors up to date" if same else "vectors differ from the implementation")
        return 0 if same else 1
    VECTOR_PATH.write_text(text)
    print(f"wrote {VECTOR_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
