"""`devsen audit session SESSION_ID`: re-check a settlement from the meter's own signatures.

    devsen audit session SESSION_ID --node URL --rpc URL --deployment FILE [--json]

What Eichrecht transparency software does, without trusting a node: the node serves the
events that carried the session's signed begin and last readings, with their inclusion
proofs (GET /v1/sessions/{session_id}/readings). The auditor
1. checks each event's proof like `devsen audit verify` (event id, Merkle proof, on-chain
   root, block hash, commit certificate), and that the event is of the session's charger;
2. re-verifies the OCMF documents in those events against the device's on-chain
   `chargerPublicKey` and takes the begin reading (TX=B) and the last reading;
3. recomputes energy and amount from the tariff the Escrow copied into the session when it
   was opened (a later DeviceFactory tariff change does not apply): energy = last - begin (Wh);
   amount = min(energy * pricePerKWh // 1000 + minutes * perMinuteFee, deposit), minutes from
   max(begin time, escrow opening) to min(last time, the last event's block time);
4. compares with what the Escrow contract settled (energyWh, settledAmount).
Verdict VALID or INVALID with reasons; exit 0 / 1; 3 while the events are not anchored yet;
2 for bad usage or an unreachable node or RPC. Other `devsen audit` commands go to
anchoring/audit.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anchoring.proofs import ProofNotFound, ProofNotReady, hex0x, unhex
from devsen.ledger.signed import signed_documents
from ocpp_adapter import ocmf
from ocpp_adapter.events import ChargerEvent, EventEncodingError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PENDING = 0, 1, 2, 3
ROUTE = "/v1/sessions/{session_id}/readings"


# ----------------------------------------------------------------- node side


def session_readings_route(ledger: Callable[[], Any], proofs: Any) -> Callable[[dict[str, str]], Any]:
    """The node's handler: the ledger's record of the session and proof documents of its signed events."""

    async def handler(params: dict[str, str]) -> tuple[int, Any]:
        try:
            session_id = unhex(params["session_id"], 32)
        except ValueError as exc:
            return 400, {"error": f"bad session id: {exc}"}
        closed = ledger().closed_for_escrow(session_id)
        if closed is None:
            return 404, {"error": "no closed transaction for that escrow session in this node's ledger "
                                  "(never settled here, or evicted)"}
        documents: dict[str, Any] = {}
        for event_id in dict.fromkeys(e for e in (closed.signed_start_event, closed.signed_last_event) if e):
            try:
                documents[hex0x(event_id)] = await proofs.event_proof_async(event_id)
            except ProofNotReady:
                documents[hex0x(event_id)] = None  # its batch is not closed yet: retry later
            except ProofNotFound:
                documents[hex0x(event_id)] = {"error": "unknown event"}
        return 200, {
            "session_id": hex0x(session_id), "outcome": closed.outcome, "energy_wh": closed.energy_wh,
            "amount": str(closed.amount), "signed_start_event": hex0x(closed.signed_start_event),
            "signed_last_event": hex0x(closed.signed_last_event), "proofs": documents,
        }

    return handler


# ----------------------------------------------------------------- the recomputation (pure)


@dataclass(frozen=True, slots=True)
class Terms:
    """What the chain says about the session and its device."""

    charge_box_id: str
    meter_public_key: bytes
    price_per_kwh: int
    per_minute_fee: int
    deposit: int
    opened_at_s: int


@dataclass(slots=True)
class Recomputed:
    energy_wh: int | None = None
    amount: int | None = None
    begin_ms: int = 0
    end_ms: int = 0
    reasons: list[str] = field(default_factory=list)


def _verified_readings(event: ChargerEvent, key: bytes, reasons: list[str]) -> list[tuple[int, ocmf.Reading]]:
    """(pagination, reading) of every import reading in the event's documents that verify."""
    payload = event.payload
    texts = signed_documents(payload.get("meterValue")) + signed_documents(payload.get("transactionData"))
    out: list[tuple[int, ocmf.Reading]] = []
    for text in texts:
        try:
            document = ocmf.parse_and_verify(text, key)
        except ocmf.OcmfError as exc:
            reasons.append(f"a signed document in {event.action} {event.message_id!r} does not count: {exc}")
            continue
        out.extend((document.pagination, r) for r in document.import_readings())
    return out


def recompute(start: ChargerEvent, last: ChargerEvent, last_block_ms: int, terms: Terms) -> Recomputed:
    """Energy and amount from the meter's signed readings in these two events and the chain's terms."""
    result = Recomputed()
    for event in (start, last):
        if event.charger_id != terms.charge_box_id:
            result.reasons.append(f"event of charger {event.charger_id!r}, the session's is {terms.charge_box_id!r}")
            return result
    begins = [r for _, r in _verified_readings(start, terms.meter_public_key, result.reasons) if r.tx == "B"]
    lasts = sorted(_verified_readings(last, terms.meter_public_key, []), key=lambda pr: pr[0])
    if not begins or not lasts:
        result.reasons.append("no verifiable signed begin reading" if not begins else "no verifiable last reading")
        return result
    begin, final = begins[0], lasts[-1][1]
    begin_wh, final_wh = begin.wh(), final.wh()
    if begin_wh is None or final_wh is None or final_wh < begin_wh:
        result.reasons.append("signed readings are not an increasing import register")
        return result
    result.energy_wh = final_wh - begin_wh
    result.begin_ms = max(begin.time_ms, terms.opened_at_s * 1000)
    result.end_ms = min(final.time_ms, last_block_ms)
    minutes = max(0, result.end_ms - result.begin_ms) // 60_000
    result.amount = min(result.energy_wh * terms.price_per_kwh // 1000 + minutes * terms.per_minute_fee,
                        terms.deposit)
    return result


# ----------------------------------------------------------------- the CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devsen audit session", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("session_id", metavar="SESSION_ID", help="0x-prefixed 32-byte escrow session id")
    parser.add_argument("--node", required=True, help="any node's HTTP API, e.g. http://127.0.0.1:8080")
    parser.add_argument("--rpc", required=True, help="Ethereum JSON-RPC URL")
    parser.add_argument("--deployment", required=True, help="deployment JSON naming the contracts")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def _audit(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    from anchoring.audit import ChainReader, block_loader, http_fetcher, verify_event
    from anchoring.chain.client import ChainClient, SessionStatus
    from anchoring.chain.deploy import Deployment
    from anchoring.chain.transact import connect

    session_id = unhex(args.session_id if args.session_id.startswith("0x") else "0x" + args.session_id, 32)
    fetch = http_fetcher(args.node)
    served = fetch(f"/v1/sessions/{hex0x(session_id)}/readings")
    deployment = Deployment.load(Path(args.deployment))
    w3 = connect(args.rpc)
    client = ChainClient(w3, deployment)
    escrow = client.session(session_id, "latest")
    report: dict[str, Any] = {"session_id": hex0x(session_id), "node": args.node, "reasons": []}
    reasons: list[str] = report["reasons"]
    if escrow is None:
        return EXIT_FAILED, {**report, "verdict": "INVALID", "reasons": ["no such escrow session on chain"]}
    device = client.device_by_id(escrow.device_id, "latest")
    if device is None:
        return EXIT_FAILED, {**report, "verdict": "INVALID", "reasons": ["the session's device is not on chain"]}
    report.update(charge_box_id=device.charge_box_id, escrow_status=escrow.status.name,
                  escrow_energy_wh=escrow.energy_wh, escrow_amount=str(escrow.settled_amount),
                  node_energy_wh=served.get("energy_wh"), node_amount=served.get("amount"))
    if not device.charger_public_key:
        reasons.append("the device has no chargerPublicKey on chain: nothing signed to audit")
    chain = ChainReader(w3, unhex(deployment.anchor.lower(), 20))
    events: list[tuple[ChargerEvent, int]] = []
    for name in ("signed_start_event", "signed_last_event"):
        text = served.get(name)
        event_id = unhex(text, 32) if isinstance(text, str) and len(text) == 66 else b""
        document = served.get("proofs", {}).get(text) if event_id else None
        if not event_id or event_id == b"\x00" * 32:
            reasons.append(f"the node names no {name.replace('_', ' ')}")
            continue
        if document is None:
            return EXIT_PENDING, {**report, "verdict": "PENDING", "reasons": [f"{name} {text} is not anchored yet"]}
        batch_id = document.get("batch", {}).get("batch_id") if isinstance(document.get("batch"), dict) else None
        if isinstance(batch_id, int) and chain.batch(batch_id) is None:  # closed by the node, not yet deep on chain
            return EXIT_PENDING, {**report, "verdict": "PENDING",
                                  "reasons": [f"{name} {text}: batch {batch_id} is not anchored "
                                              f"{chain.confirmations} blocks deep yet"]}
        failed = [c.name for c in verify_event(document, event_id, chain, block_loader(fetch)) if not c.ok]
        if failed:
            reasons.append(f"{name} {text}: proof checks failed: {', '.join(failed)}")
            continue
        try:
            events.append((ChargerEvent.from_bytes(unhex(document["event_bytes"])), int(document["block"]["timestamp_ms"])))
        except (EventEncodingError, KeyError, TypeError, ValueError) as exc:
            reasons.append(f"{name}: {exc}")
    if len(events) == 2 and device.charger_public_key:
        terms = Terms(device.charge_box_id, device.charger_public_key, escrow.price_per_kwh, escrow.per_minute_fee,
                      escrow.deposit, escrow.opened_at)  # the session's terms, copied at opening
        result = recompute(events[0][0], events[1][0], events[1][1], terms)
        reasons.extend(result.reasons)
        report.update(recomputed_energy_wh=result.energy_wh,
                      recomputed_amount=None if result.amount is None else str(result.amount),
                      tariff={"price_per_kwh": str(escrow.price_per_kwh), "per_minute_fee": str(escrow.per_minute_fee)})
        if result.energy_wh is not None and result.energy_wh != escrow.energy_wh:
            reasons.append(f"the Escrow settled {escrow.energy_wh} Wh, the signed readings say {result.energy_wh} Wh")
        if result.amount is not None and result.amount != escrow.settled_amount:
            reasons.append(f"the Escrow settled {escrow.settled_amount}, the signed readings and the session's "
                           f"tariff give {result.amount}")
    if escrow.status != SessionStatus.SETTLED:
        reasons.append(f"the escrow session is {escrow.status.name}, not settled")
    verdict = "VALID" if not reasons else "INVALID"
    return (EXIT_OK if verdict == "VALID" else EXIT_FAILED), {**report, "verdict": verdict}


def session_main(argv: list[str]) -> int:
    """`devsen audit session ...`; returns the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    from anchoring.audit import AuditUnavailable

    try:
        code, report = _audit(args)
    except (AuditUnavailable, ValueError, OSError) as exc:
        print(f"cannot audit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - web3 raises many unrelated types for an unreachable RPC
        print(f"cannot audit: RPC {args.rpc}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        for key in sorted(k for k in report if k not in ("reasons", "verdict")):
            value = report[key]
            if isinstance(value, dict):  # e.g. the tariff: "price_per_kwh=300000 per_minute_fee=0"
                value = " ".join(f"{k}={v}" for k, v in value.items())
            print(f"{key}: {value}")
        for reason in report["reasons"]:
            print(f"FAIL {reason}")
        print(f"VERDICT: {report['verdict']}")
    return code


def audit_main(argv: list[str]) -> int:
    """Entry point of `devsen audit`: `session` here, every other command in anchoring/audit.py."""
    if argv[:1] == ["session"]:
        return session_main(argv[1:])
    from anchoring.audit import audit_main as events_audit_main

    return events_audit_main(argv)
