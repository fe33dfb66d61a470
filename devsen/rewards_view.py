"""What an EVSE owner earned per reward epoch, and why: served by a node, shown by the wallet.

`rewards_document` is a pure function of the ledger's kept distributions (the node's route
GET /v1/rewards/{owner}); `add_chain_paid` adds what the Rewards contract actually paid;
`format_rewards` is the text for people of `devsen wallet rewards`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from devsen.fmt import token_amount
from devsen.ledger.uptime import RewardDistribution

PPM = 1_000_000


def parse_owner(text: str) -> str:
    """A 0x-hex 20-byte address, lower case; ValueError naming the fix otherwise."""
    owner = text.lower().removeprefix("0x")
    if len(owner) != 40 or any(c not in "0123456789abcdef" for c in owner):
        raise ValueError("owner must be a 0x-hex 20-byte address (the device manager's account)")
    return "0x" + owner


def rewards_document(distributions: Sequence[RewardDistribution], owner: str) -> dict[str, Any]:
    """Per closed epoch: the owner's devices (uptime, units, weight), share and amount."""
    owner = parse_owner(owner)
    epochs = []
    for dist in distributions:
        mine = [r for r in dist.rewards if r.owner == owner]
        devices = [d for d in dist.devices if d.owner == owner]
        if not mine and not devices:
            continue
        weight = mine[0].weight if mine else 0
        amount = mine[0].amount if mine else 0
        epochs.append({
            "epoch": dist.epoch,
            "epoch_start_ms": dist.epoch * dist.epoch_ms,
            "epoch_ms": dist.epoch_ms,
            "pool_units": dist.pool,
            "total_weight": dist.total_weight,
            "weight": weight,
            "share_ppm": weight * PPM // dist.total_weight if dist.total_weight else 0,
            "amount_units": amount,
            "devices": [{
                "charger_id": d.charger_id,
                "units": d.units,
                "online_ppm": d.online_ms * PPM // dist.epoch_ms,
                "uptime_ppm": d.unit_ms * PPM // (dist.epoch_ms * d.units) if d.units else 0,
                "online_ms": d.online_ms,
                "unit_ms": d.unit_ms,
            } for d in devices],
        })
    return {"owner": owner, "epochs": epochs, "earned_units": sum(e["amount_units"] for e in epochs)}


def add_chain_paid(doc: dict[str, Any], paid: Callable[[int], int]) -> dict[str, Any]:
    """Add `paid_units` per epoch (what the Rewards contract paid this owner) and the total."""
    for epoch in doc["epochs"]:
        epoch["paid_units"] = paid(epoch["epoch"])
    doc["paid_units"] = sum(e["paid_units"] for e in doc["epochs"])
    return doc


def _pct(ppm: int) -> str:
    return f"{ppm // 10_000}.{ppm % 10_000 // 100:02d}%"


def format_rewards(doc: dict[str, Any]) -> str:
    """Text for people: one paragraph per epoch, one line per device."""
    if not doc["epochs"]:
        return f"{doc['owner']}: no rewards in the epochs the node keeps"
    lines = [f"{doc['owner']}: earned {token_amount(doc['earned_units'])}"
             + (f", paid on chain {token_amount(doc['paid_units'])}" if "paid_units" in doc else "")]
    for e in doc["epochs"]:
        paid = f", paid {token_amount(e['paid_units'])}" if "paid_units" in e else ""
        lines.append(f"  epoch {e['epoch']}: {token_amount(e['amount_units'])} = {_pct(e['share_ppm'])} of "
                     f"{token_amount(e['pool_units'])}{paid}")
        for d in e["devices"]:
            lines.append(f"    {d['charger_id']}: {d['units']} connectors, online {_pct(d['online_ppm'])}, "
                         f"connectors up {_pct(d['uptime_ppm'])}")
    return "\n".join(lines)
