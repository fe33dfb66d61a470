"""The public read API every node serves identically: chargers, sessions, validators, blocks, anchors.

Every answer names the committed `height` it was read at (and the Ethereum block `eth_block`
that height agreed on, where chain data was read). Ledger state is read in memory in one
synchronous step, so it is the state at that height; chain data (location, tariff, power,
validator endpoints) is read at that agreed Ethereum block in a worker thread with a timeout.
Answers are canonical JSON (sorted keys, no spaces): two nodes at the same height answer
byte-identically. Node-local facts (live connections, uptime) are in /v1/status, not here.

A charger's on-chain `location` may be "lat,lon" optionally followed by `;key=value` fields,
e.g. "52.52,13.405;connectors=CCS2+Type2;name=Depot 4"; `near=` and `connector_type=` use it.
Lists take `limit` (1..100) and `offset`; a bad parameter answers 400 naming it, an unknown id 404.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import trio
from fastapi import APIRouter, Path, Query

from anchoring.attestations import AnchorBatch
from anchoring.chain.client import DeviceRecord as ChainDevice
from anchoring.chain.client import ValidatorInfo
from consensus.types import CommittedBlock
from devsen.http_api import CanonicalJsonResponse, HttpError
from devsen.ledger import Ledger
from devsen.ledger.commands import command_document
from devsen.ledger.remote_starts import remote_start_command_id, remote_start_status
from devsen.ledger.sites import MAX_SITE_ID, SiteSchedule
from devsen.ledger.state import DeviceRecord, Session

MAX_LIMIT = 100
DEFAULT_LIMIT = 50
MAX_OFFSET = 1_000_000
MAX_ID_CHARS = 64  # longer than any OCPP chargeBoxId / transaction ref
MAX_SCAN_CHARGERS = 2_000  # chain-filtered searches read at most this many chargers
MAX_SESSION_ANOMALIES = 16  # anomalies naming one escrow session shown with it
CHAIN_READ_TIMEOUT_S = 8.0
CHAIN_CACHE_ENTRIES = 20_000
EARTH_RADIUS_M = 6_371_008.8
MAX_RADIUS_M = 20_100_000
SETTLEMENT_LOG_CHUNK = 2_000  # blocks per eth_getLogs call looking for a settlement transaction
SETTLEMENT_LOG_CHUNKS = 10  # looked back at most this many chunks before the read block

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="items per page")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="items to skip")]
ChargerId = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[\x21-\x7e]+$")]
HexId = Annotated[str, Path(min_length=66, max_length=66, pattern=r"^0x[0-9a-fA-F]{64}$")]
SiteId = Annotated[int, Path(ge=1, le=MAX_SITE_ID, description="the DeviceFactory site id")]


def bad(parameter: str, message: str) -> HttpError:
    """A 400 naming the parameter."""
    return HttpError(400, f"bad parameter '{parameter}': {message}")


@dataclass
class ReadSources:
    """What the read API reads. `height`/`eth_block` are read together with the ledger, in one step."""

    ledger: Ledger
    eth_block: Callable[[], int]  # the Ethereum block the last committed height agreed on
    block: Callable[[int], CommittedBlock | None]
    last_batch: Callable[[], AnchorBatch | None]
    batch: Callable[[int], AnchorBatch | None]
    validators: Callable[[], tuple[int, tuple[bytes, ...]]]  # (epoch, addresses) in force
    chain_device: Callable[[str, int], ChainDevice | None]  # I/O: the device registry at a block
    chain_validators: Callable[[int], Sequence[ValidatorInfo]]  # I/O: peer ids and endpoints at a block
    chain_session: Callable[[bytes, int], dict[str, Any] | None] | None = None  # I/O: an escrow session


def parse_location(text: str) -> dict[str, Any]:
    """The structured view of an on-chain location string (never raises)."""
    head, *fields = text.split(";")
    out: dict[str, Any] = {"text": text, "lat": None, "lon": None, "connector_types": []}
    match = re.fullmatch(r"\s*(-?\d{1,3}(?:\.\d{1,9})?)\s*,\s*(-?\d{1,3}(?:\.\d{1,9})?)\s*", head)
    if match:
        lat, lon = float(match.group(1)), float(match.group(2))
        if -90 <= lat <= 90 and -180 <= lon <= 180:
            out["lat"], out["lon"] = lat, lon
    for item in fields:
        key, _, value = item.partition("=")
        if key.strip() == "connectors":
            out["connector_types"] = sorted({t.strip() for t in value.split("+") if t.strip()})
        elif key.strip() == "name":
            out["name"] = value.strip()
    return out


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def parse_near(near: str | None, radius_m: float | None) -> tuple[float, float, float] | None:
    if near is None:
        if radius_m is not None:
            raise bad("radius_m", "needs near=lat,lon")
        return None
    parts = near.split(",")
    if len(parts) != 2:
        raise bad("near", "expected lat,lon in decimal degrees")
    try:
        lat, lon = float(parts[0]), float(parts[1])
    except ValueError:
        raise bad("near", "expected lat,lon in decimal degrees") from None
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        raise bad("near", "latitude must be within -90..90 and longitude within -180..180")
    if radius_m is None:
        raise bad("radius_m", "required with near, in metres")
    return lat, lon, radius_m


def hex0x(data: bytes) -> str:
    return "0x" + data.hex()


def _page(items: list[Any], limit: int, offset: int) -> dict[str, Any]:
    return {"total": len(items), "limit": limit, "offset": offset, "items": items[offset:offset + limit]}


def _connectors(record: DeviceRecord) -> list[dict[str, Any]]:
    return [{"connector": c.connector, "status": c.status, "error_code": c.error_code, "since_block_ms": c.block_ms}
            for c in record.connectors]


def _ledger_charger(record: DeviceRecord) -> dict[str, Any]:
    return {
        "charger_id": record.charger_id,
        "connectors": _connectors(record),
        "last_heartbeat_ms": record.last_heartbeat_ms,
        "last_boot_ms": record.last_boot_ms,
        "boot_status": record.boot_status,
        "firmware": {"vendor": record.vendor, "model": record.model, "version": record.firmware_version,
                     "status": record.firmware_status},
        "diagnostics_status": record.diagnostics_status,
        "counts": {"security_events": record.security_events, "reports": record.reports,
                   "notify_events": record.notify_events, "data_transfers": record.data_transfers},
        "last_security_event": record.last_security_event,
    }


def _chain_charger(device: ChainDevice | None) -> dict[str, Any]:
    if device is None:
        return {"registered": False, "location": None, "tariff": None, "max_power_w": None, "connector_count": None}
    return {"registered": True, "active": device.active, "location": parse_location(device.location),
            "tariff": {"price_per_kwh": str(device.price_per_kwh), "per_minute_fee": str(device.per_minute_fee)},
            "max_power_w": device.max_power_w, "connector_count": device.connector_count,
            "device_id": hex0x(device.device_id)}


def _session(session: Session) -> dict[str, Any]:
    energy = None
    if session.meter_start_wh is not None and session.meter_last_wh is not None:
        energy = max(0, session.meter_last_wh - session.meter_start_wh)
    return {
        "state": "open", "charger_id": session.charger_id, "tx_ref": session.tx_ref,
        "ocpp_version": session.ocpp_version, "connector_id": session.connector_id,
        "escrow_session_id": hex0x(session.escrow_session_id) if session.escrow_session_id else None,
        "id_tag_hash": hex0x(session.id_tag_hash) if session.id_tag_hash else None,
        "deposit": str(session.deposit), "price_per_kwh": str(session.price_per_kwh),
        "opened_block_ms": session.opened_block_ms, "energy_wh": energy, "amount": None,
    }


def site_view(schedule: SiteSchedule, chargers: Sequence[str]) -> dict[str, Any]:
    """A site's committed schedule for people and scripts (watts, ledger heights)."""
    return {"site_id": schedule.site_id, "max_power_w": schedule.max_power_w,
            "min_session_w": schedule.min_session_w, "allocated_w": schedule.allocated_w,
            "changed_height": schedule.height, "chargers": list(chargers),
            "shares": [{"charger_id": s.charger_id, "tx_ref": s.tx_ref, "connector_id": s.connector_id,
                        "ocpp_version": s.ocpp_version, "power_w": s.power_w} for s in schedule.shares]}


class ChainCache:
    """Chain reads by (key, Ethereum block), bounded LRU; reads run in worker threads with a timeout."""

    def __init__(self, max_entries: int = CHAIN_CACHE_ENTRIES) -> None:
        self.entries: OrderedDict[tuple[str, str, int], Any] = OrderedDict()
        self.max_entries = max_entries
        self.limiter = trio.CapacityLimiter(2)

    async def many(self, kind: str, keys: Sequence[str], block: int, read: Callable[[str, int], Any]) -> list[Any]:
        missing = [k for k in keys if (kind, k, block) not in self.entries]

        def read_all() -> list[Any]:
            return [read(k, block) for k in missing]

        if missing:
            with trio.move_on_after(CHAIN_READ_TIMEOUT_S) as scope:
                try:
                    values = await trio.to_thread.run_sync(read_all, limiter=self.limiter, abandon_on_cancel=True)  # type: ignore[call-arg]
                except Exception as exc:
                    raise HttpError(503, f"the chain RPC failed ({type(exc).__name__}); retry later") from exc
            if scope.cancelled_caught:
                raise HttpError(503, f"the chain RPC did not answer within {CHAIN_READ_TIMEOUT_S:g} s; retry later")
            for key, value in zip(missing, values, strict=True):
                self.entries[(kind, key, block)] = value
                while len(self.entries) > self.max_entries:
                    self.entries.popitem(last=False)
        out = []
        for key in keys:
            self.entries.move_to_end((kind, key, block))
            out.append(self.entries[(kind, key, block)])
        return out


def read_routes(sources: ReadSources) -> APIRouter:
    """The typed read routes (devsen/http_api.py Router.include)."""
    api = APIRouter(prefix="/v1", default_response_class=CanonicalJsonResponse, tags=["public"])
    cache = ChainCache()
    ledger = sources.ledger

    sorted_at: list[Any] = [None, ()]  # (ledger height, its devices by charger id): one sort per height

    def now() -> tuple[int, int]:
        return ledger.height, sources.eth_block()

    def devices_by_id() -> tuple[DeviceRecord, ...]:
        if sorted_at[0] != ledger.height:
            sorted_at[:] = [ledger.height, tuple(sorted(ledger.devices(), key=lambda r: r.charger_id))]
        result: tuple[DeviceRecord, ...] = sorted_at[1]
        return result

    async def devices(ids: Sequence[str], block: int) -> list[ChainDevice | None]:
        return await cache.many("device", ids, block, sources.chain_device)

    @api.get("/chargers", summary="Chargers known to the ledger, searchable by place, status, connector, power")
    async def chargers(
        limit: Limit = DEFAULT_LIMIT, offset: Offset = 0,
        near: Annotated[str | None, Query(max_length=64, description="lat,lon in decimal degrees")] = None,
        radius_m: Annotated[float | None, Query(gt=0, le=MAX_RADIUS_M)] = None,
        status: Annotated[str | None, Query(max_length=32, pattern=r"^[A-Za-z]+$",
                                            description="a connector in this OCPP status, e.g. Available")] = None,
        connector_type: Annotated[str | None, Query(max_length=32, pattern=r"^[A-Za-z0-9_\-]+$")] = None,
        min_power_w: Annotated[int | None, Query(ge=0, le=10**9)] = None,
    ) -> Any:
        centre = parse_near(near, radius_m)
        height, block = now()
        records = list(devices_by_id())
        if status is not None:
            records = [r for r in records if any(c.status == status for c in r.connectors)]
        needs_chain_filter = centre is not None or connector_type is not None or min_power_w is not None
        if needs_chain_filter and len(records) > MAX_SCAN_CHARGERS:
            raise HttpError(400, f"a location/connector/power search scans at most {MAX_SCAN_CHARGERS} chargers, "
                                 f"{len(records)} match; narrow it with status=")
        page_records = records if needs_chain_filter else records[offset:offset + limit]
        chain = await devices([r.charger_id for r in page_records], block)
        items = []
        for record, device in zip(page_records, chain, strict=True):
            item = {**_ledger_charger(record), **_chain_charger(device)}
            location = item["location"]
            if centre is not None:
                if location is None or location["lat"] is None:
                    continue
                d = distance_m(centre[0], centre[1], location["lat"], location["lon"])
                if d > centre[2]:
                    continue
                item["distance_m"] = round(d)
            if connector_type is not None and (location is None or connector_type not in location["connector_types"]):
                continue
            if min_power_w is not None and (device is None or device.max_power_w < min_power_w):
                continue
            items.append(item)
        if centre is not None:
            items.sort(key=lambda i: (i["distance_m"], i["charger_id"]))
        answer = _page(items, limit, offset) if needs_chain_filter else \
            {"total": len(records), "limit": limit, "offset": offset, "items": items}
        return {"height": height, "eth_block": block, **answer}

    def _record(charger_id: str) -> DeviceRecord:
        record = ledger.device(charger_id)
        if record is None:
            raise HttpError(404, f"no charger {charger_id!r} in the ledger")
        return record

    @api.get("/chargers/{charger_id}", summary="One charger: chain registry data and live ledger state")
    async def charger(charger_id: ChargerId) -> Any:
        height, block = now()
        record = _record(charger_id)
        sessions = sum(1 for s in ledger.open_sessions() if s.charger_id == charger_id)
        anomalies = sum(1 for a in ledger.anomalies() if a.charger_id == charger_id)
        (device,) = await devices([charger_id], block)
        return {"height": height, "eth_block": block, "charger": {
            **_ledger_charger(record), **_chain_charger(device), "open_sessions": sessions, "anomalies": anomalies}}

    def _charger_sessions(charger_id: str | None) -> list[dict[str, Any]]:
        items = [_session(s) for s in ledger.open_sessions() if charger_id in (None, s.charger_id)]
        for order in ledger.pending_settlements():
            items.append({"state": "settling", "escrow_session_id": hex0x(order.session_id),
                          "energy_wh": order.energy_wh, "amount": str(order.amount)})
        for cid, tx_ref, closed in reversed(ledger.closed_transactions()):
            if charger_id in (None, cid):
                items.append({"state": "closed", "charger_id": cid, "tx_ref": tx_ref, "outcome": closed.outcome,
                              "energy_wh": closed.energy_wh, "amount": str(closed.amount),
                              "escrow_session_id": hex0x(closed.escrow_session_id) if closed.escrow_session_id
                              else None})
        return items

    @api.get("/chargers/{charger_id}/sessions", summary="A charger's open and recently closed sessions")
    async def charger_sessions(charger_id: ChargerId, limit: Limit = DEFAULT_LIMIT, offset: Offset = 0) -> Any:
        height, _ = now()
        _record(charger_id)
        items = [i for i in _charger_sessions(charger_id) if i["state"] != "settling"]
        return {"height": height, "charger_id": charger_id, **_page(items, limit, offset)}

    @api.get("/chargers/{charger_id}/anomalies", summary="Input from this charger the ledger could not honour")
    async def charger_anomalies(charger_id: ChargerId, limit: Limit = DEFAULT_LIMIT, offset: Offset = 0) -> Any:
        height, _ = now()
        _record(charger_id)
        items = [{"height": a.height, "action": a.action, "message_id": a.message_id, "kind": a.kind,
                  "detail": a.detail} for a in reversed(ledger.anomalies()) if a.charger_id == charger_id]
        return {"height": height, "charger_id": charger_id, **_page(items, limit, offset)}

    @api.get("/sessions", summary="Open sessions, settlements in flight and recently closed transactions")
    async def sessions(
        limit: Limit = DEFAULT_LIMIT, offset: Offset = 0,
        state: Annotated[str | None, Query(pattern=r"^(open|settling|closed)$")] = None,
    ) -> Any:
        height, _ = now()
        items = [i for i in _charger_sessions(None) if state in (None, i["state"])]
        return {"height": height, **_page(items, limit, offset)}

    def _remote_start(session_hex: str) -> dict[str, Any]:
        """{"remote_start": ...}: the ledger's remote start of this escrow session and the
        charger's answer (devsen/ledger/remote_starts.py), or {} if none was issued."""
        command_id = remote_start_command_id(bytes.fromhex(session_hex[2:]))
        record = ledger.commands.get(command_id)
        if record is None:
            return {}
        doc = command_document(command_id, record, int(ledger.counters()["block_ms"]))
        return {"remote_start": {"command_id": doc["command_id"], "action": doc["action"], "status": doc["status"],
                                 "height": doc["height"], "outcome_height": doc["outcome_height"],
                                 "reported_by": doc["reported_by"],
                                 **remote_start_status(doc["status"], doc.get("outcome"))}}

    def _session_anomalies(charger_ids: set[str], session_hex: str) -> dict[str, Any]:
        """{"anomalies": [...]}: the ledger's anomalies at the session's charger that name this
        escrow session (e.g. no_energy_reading: settled at 0 Wh), newest first, or {} if none."""
        found = [{"height": a.height, "kind": a.kind, "action": a.action, "detail": a.detail}
                 for a in reversed(ledger.anomalies()) if a.charger_id in charger_ids and session_hex in a.detail]
        return {"anomalies": found[:MAX_SESSION_ANOMALIES]} if found else {}

    @api.get("/sessions/{escrow_session_id}",
             summary="One escrow session: the ledger's view while open or settling, else the Escrow contract's")
    async def session(escrow_session_id: HexId) -> Any:
        height, block = now()
        wanted = escrow_session_id.lower()
        matches = [i for i in _charger_sessions(None) if i.get("escrow_session_id") == wanted]
        live = next((i for i in matches if i["state"] != "closed"), None)  # open, or settling
        remote = {**_remote_start(wanted),
                  **_session_anomalies({i["charger_id"] for i in matches if "charger_id" in i}, wanted)}
        if live is not None and live["state"] == "open":
            return {"height": height, "session": {**live, **remote}}
        # Closed in the ledger: the Escrow contract's record, with the ledger's charger and transaction ref.
        closed = next(({"charger_id": i["charger_id"], "tx_ref": i["tx_ref"], "outcome": i["outcome"]}
                       for i in matches if i["state"] == "closed"), {})
        found = None
        if sources.chain_session is not None:
            read = sources.chain_session
            (found,) = await cache.many("session", [wanted], block, lambda key, b: read(bytes.fromhex(key[2:]), b))
        if live is not None and (found is None or found["state"] != "settled"):
            return {"height": height, "eth_block": block, "session": {**(found or {}), **live, **closed, **remote}}
        if found is not None:
            return {"height": height, "eth_block": block, "session": {**found, **closed, **remote}}
        raise HttpError(404, f"no escrow session {wanted} (in the ledger or on chain)")

    @api.get("/sites/{site_id}", summary="A load-management site: its power and the committed division (W)")
    async def site(site_id: SiteId) -> Any:
        height, _ = now()
        schedule = ledger.sites.schedules.get(site_id)
        if schedule is None:
            raise HttpError(404, f"no site {site_id} in the ledger (it learns a site from its chargers' events)")
        return {"height": height, "site": site_view(schedule, ledger.sites.chargers_of(site_id))}

    @api.get("/validators", summary="The validators in force: address, peer id, endpoint, epoch")
    async def validators() -> Any:
        height, block = now()
        epoch, addresses = sources.validators()
        (infos,) = await cache.many("validators", [""], block, lambda _, b: tuple(sources.chain_validators(b)))
        by_address = {bytes.fromhex(v.address[2:]): v for v in infos}
        items = []
        for address in addresses:
            info = by_address.get(address)
            items.append({"address": hex0x(address), "peer_id": _peer_text(info.peer_id) if info else None,
                          "endpoint": info.endpoint if info else None})
        return {"height": height, "eth_block": block, "epoch": epoch, "total": len(items), "items": items}

    @api.get("/blocks", summary="Committed block headers, newest first")
    async def blocks(limit: Limit = 20, before: Annotated[int | None, Query(ge=1, le=2**62)] = None) -> Any:
        height, _ = now()
        top = min(height, before - 1) if before is not None else height
        items = []
        for h in range(top, max(0, top - limit), -1):
            committed = sources.block(h)
            if committed is None:
                continue
            b = committed.block
            # Header fields only: each node assembles its own commit certificate (another quorum of
            # precommits), so certificates are served per block by /v1/blocks/{height}, not here.
            items.append({"height": b.height, "hash": hex0x(b.hash), "timestamp_ms": b.timestamp_ms,
                          "proposer": hex0x(b.proposer), "payloads": len(b.payloads),
                          "app_state_hash": hex0x(b.app_state_hash)})
        return {"height": height, "limit": limit, "items": items}

    @api.get("/anchors", summary="Closed anchor batches (Merkle roots over committed events), newest first")
    async def anchors(limit: Limit = 20, before: Annotated[int | None, Query(ge=1, le=2**62)] = None) -> Any:
        height, _ = now()
        last = sources.last_batch()
        items: list[dict[str, Any]] = []
        batch_id = -1 if last is None else last.batch_id if before is None else min(last.batch_id, before - 1)
        while batch_id >= 0 and len(items) < limit:
            batch = sources.batch(batch_id)
            batch_id -= 1
            if batch is None or batch.last_height > height:
                continue
            items.append({"batch_id": batch.batch_id, "root": hex0x(batch.root), "first_height": batch.first_height,
                          "last_height": batch.last_height, "event_count": batch.event_count})
        return {"height": height, "limit": limit, "items": items}

    return api


def chain_session_reader(client: Any, first_block: int) -> Callable[[bytes, int], dict[str, Any] | None]:
    """I/O: an escrow session as the Escrow contract holds it at a block, with the transaction that
    settled it (and that block's time, `settled_at_s`) when that lies within SETTLEMENT_LOG_CHUNKS * SETTLEMENT_LOG_CHUNK blocks before."""
    from web3.exceptions import BadFunctionCallOutput

    from anchoring.chain.client import SessionStatus

    escrow = client.contracts["Escrow"]
    topic = escrow.events.SessionSettled().topic
    address = escrow.address

    def read(session_id: bytes, block: int) -> dict[str, Any] | None:
        try:
            chain = client.session(session_id, block)
        except BadFunctionCallOutput:  # no Escrow code at that block yet (deployed after the read block)
            return None
        if chain is None:
            return None
        tx = None
        settled_at = None
        if chain.status == SessionStatus.SETTLED:
            to_block = block
            for _ in range(SETTLEMENT_LOG_CHUNKS):
                from_block = max(first_block, to_block - SETTLEMENT_LOG_CHUNK + 1)
                logs = client.w3.eth.get_logs({"fromBlock": from_block, "toBlock": to_block, "address": address,
                                               "topics": [topic, hex0x(session_id)]})
                if logs:
                    tx = hex0x(bytes(logs[-1]["transactionHash"]))
                    settled_at = int(client.w3.eth.get_block(logs[-1]["blockNumber"])["timestamp"])
                    break
                if from_block <= first_block:
                    break
                to_block = from_block - 1
        return {"state": chain.status.name.lower(), "escrow_session_id": hex0x(session_id),
                "device_id": hex0x(chain.device_id), "connector_id": chain.connector_id,
                "id_tag_hash": hex0x(chain.id_tag_hash), "deposit": str(chain.deposit),
                "energy_wh": chain.energy_wh, "amount": str(chain.settled_amount), "opened_at_s": chain.opened_at,
                "price_per_kwh": str(chain.price_per_kwh), "per_minute_fee": str(chain.per_minute_fee),
                "settlement_tx": tx, "settled_at_s": settled_at}

    return read


def _peer_text(peer_id: bytes) -> str | None:
    if not peer_id:
        return None
    try:
        from libp2p.peer.id import ID

        return str(ID(peer_id).to_base58())
    except Exception:
        return hex0x(peer_id)
