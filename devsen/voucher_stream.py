"""`devsen wallet stream`: the driver's side of per-chunk payment vouchers.

It follows a session's committed energy and cost at one node (GET /v1/sessions/{id}/payment),
optionally checks them against the car's own view (a file holding the cumulative Wh the car
received), and signs a voucher one chunk ahead of the committed cost, chunk by chunk, posting
each to the node (POST /v1/sessions/{id}/vouchers). It stops signing at the cap or when the
committed energy runs ahead of the car's view: the network then stops the charge one chunk
later, and a voucher-mode session settles at min(metered cost, latest voucher).

With `voucher_out` it also keeps the latest voucher it signed in that file (written whole,
then renamed over the old one): what the device manager needs to close the escrow with
`devsen wallet close-with-voucher` when the network is unreachable.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from devsen.http_api import http_get_json, http_post_json
from devsen.ledger.vouchers import CHUNK_WH, PaymentVoucher, sign_voucher, voucher_document
from primitives.eip712 import Domain, SigningKey


@dataclass(frozen=True, slots=True)
class StreamPolicy:
    """What the driver agreed to: at most `cap` in total, vouchers in steps of `chunk_amount`,
    committed energy at most `tolerance_wh` above the car's own view."""

    cap: int
    chunk_amount: int
    price_per_kwh: int = 0
    tolerance_wh: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    amount: int | None  # the next cumulative amount to sign, or None
    stop_reason: str | None = None  # why signing stops for good


def next_voucher(policy: StreamPolicy, committed_wh: int, committed_cost: int, signed: int,
                 battery_wh: int | None) -> Decision:
    """Pure: the next voucher to sign given the committed state, what was signed and the car's view."""
    if battery_wh is not None and committed_wh > battery_wh + policy.tolerance_wh:
        return Decision(None, f"mismatch: the network committed {committed_wh} Wh, the car received {battery_wh} Wh")
    if signed >= policy.cap:
        return Decision(None, f"cap {policy.cap} reached")
    chunk = policy.chunk_amount
    target = committed_cost if chunk <= 0 else (committed_cost // chunk + 1) * chunk
    target = min(target, policy.cap)
    return Decision(target if target > signed else None)


def battery_reader(spec: str | None) -> Callable[[], int | None]:
    """The car's view: a file holding its cumulative Wh (re-read each time), or none."""
    if not spec:
        return lambda: None
    path = Path(spec)

    def read() -> int | None:
        try:
            return int(path.read_text().strip() or "0")
        except (OSError, ValueError):
            return None

    return read


def write_voucher_file(path: Path, voucher: PaymentVoucher) -> None:
    """Write `voucher` (voucher_document JSON) to `path` atomically: a reader never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(voucher_document(voucher)) + "\n")
    partial.replace(path)


async def stream(node: str, session_id: bytes, key: SigningKey, domain: Domain, cap: int, *,
                 chunk_wh: int = CHUNK_WH, battery: Callable[[], int | None] = lambda: None,
                 tolerance_wh: int = 0, poll_s: float = 1.0, timeout_s: float = 3_600.0,
                 progress: Callable[[dict[str, Any]], None] = lambda line: None,
                 voucher_out: Path | None = None) -> dict[str, Any]:
    """Follow the session and sign until it ends, the cap is reached or the car's view disagrees."""
    session_url = f"{node.rstrip('/')}/v1/sessions/0x{session_id.hex()}"
    url = session_url + "/payment"
    signed, stop_reason, seen_running = 0, None, False
    state: dict[str, Any] = {}
    with trio.move_on_after(timeout_s):
        while True:
            try:
                status, state = await http_get_json(url)
            except (OSError, trio.TooSlowError, ValueError) as exc:  # node busy or restarting: ask again
                progress({"event": "node_unreachable", "reason": str(exc) or type(exc).__name__})
                await trio.sleep(poll_s)
                continue
            if status != 200:
                raise ValueError(f"the node answered {status}: {state}")
            signed = max(signed, int(state.get("latest_voucher") or 0))
            if not state.get("running"):
                if seen_running or state.get("settlement") is not None:
                    break
                await trio.sleep(poll_s)
                continue
            seen_running = True
            chunk = int(state["price_per_kwh"]) * chunk_wh // 1000
            policy = StreamPolicy(cap, chunk, int(state["price_per_kwh"]), tolerance_wh)
            car = battery()
            decision = next_voucher(policy, int(state["energy_wh"]), int(state["cost"]), signed, car)
            if decision.stop_reason is not None and stop_reason is None:
                stop_reason = decision.stop_reason
                progress({"event": "stopped_signing", "reason": stop_reason, "signed": signed})
            if stop_reason is None and decision.amount is not None:
                voucher = sign_voucher(key, domain, session_id, decision.amount)
                code, answer = await http_post_json(session_url + "/vouchers", json.dumps(voucher_document(voucher)))
                if code != 200:
                    raise ValueError(f"the node refused voucher {decision.amount}: {answer}")
                signed = decision.amount
                if voucher_out is not None:
                    write_voucher_file(voucher_out, voucher)
                progress({"event": "signed", "cumulative_amount": signed, "energy_wh": state["energy_wh"],
                          "cost": state["cost"], "car_wh": car, "height": answer.get("height")})
            await trio.sleep(poll_s)
    return {"session_id": "0x" + session_id.hex(), "signed": signed, "stop_reason": stop_reason,
            "final": state}
