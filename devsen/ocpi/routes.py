"""The OCPI 2.2.1 CPO (Sender) interface every node serves: versions, credentials, locations,
tariffs, sessions, cdrs (devsen/ocpi/README.md).

Every answer is OCPI's envelope `{data, status_code, status_message, timestamp}`; the
timestamp is the committed block's time, so two nodes at the same height answer
byte-identically; the height and the Ethereum block the data was read at are in the
`X-Devsen-Height` / `X-Devsen-Eth-Block` headers. Requests carry `Authorization: Token
<base64(token)>` (a raw token is accepted too, as OCPI 2.1.1 clients send it).
Errors: no or unknown token 401 / 2000; bad parameter 400 / 2001 naming it; unknown
location 404 / 2003; credentials call not allowed in this state 405 / 2000; chain RPC
trouble 503 / 3000. Lists page with `offset`/`limit` (limit clipped to MAX_LIMIT) and
`date_from`/`date_to` on `last_updated`, answering `X-Total-Count`, `X-Limit` and a `Link`
to the next page.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio
from fastapi import APIRouter, Request
from starlette.responses import Response

from anchoring.chain.client import DeviceRecord as ChainDevice
from devsen.api_routes import MAX_OFFSET, MAX_SCAN_CHARGERS, ChainCache, ReadSources
from devsen.http_api import HttpError
from devsen.ledger.state import DeviceRecord
from devsen.ocpi import mapping
from devsen.ocpi.mapping import OCPI_VERSION, Party, ocpi_time, parse_ocpi_time
from devsen.ocpi.store import PARTY, REGISTRATION, CredentialsStore, Grant, StoreFull

log = logging.getLogger("devsen.ocpi")

PREFIX = "/ocpi"
MAX_LIMIT = 100
DEFAULT_LIMIT = 50
MAX_CLOSED_SCAN = 1_000  # sessions and CDRs: the newest closed escrow-bound transactions considered
CHAIN_CHUNK = 50  # chain reads per worker-thread call
MAP_BATCH = 100  # objects mapped between checkpoints of the event loop
CHAIN_TOTAL_S = 20.0  # at most this long reading chain data for one request
MAX_BODY_BYTES = 16 * 1024
MAX_HEADER_CHARS = 512
FINAL_CACHE_ENTRIES = 20_000
ROLES = ("CPO", "EMSP", "HUB", "NAP", "NSP", "OTHER", "SCSP")
MODULES = ("credentials", "locations", "tariffs", "sessions", "cdrs")
_ID = re.compile(r"[\x21-\x7e]{1,36}")
_HOST = re.compile(r"[A-Za-z0-9.\-]{1,100}(:\d{1,5})?|\[[0-9a-fA-F:]{2,45}\](:\d{1,5})?")
_ECHO = re.compile(r"[\x20-\x7e]{1,100}")


class OcpiError(Exception):
    """Answer with this HTTP status and OCPI status code."""

    def __init__(self, http: int, code: int, message: str) -> None:
        super().__init__(message)
        self.http, self.code, self.message = http, code, message


def bad_parameter(name: str, problem: str) -> OcpiError:
    return OcpiError(400, 2001, f"bad parameter '{name}': {problem}"[:300])


class OcpiResponse(Response):
    """Compact, key-sorted JSON: the same state gives the same bytes on every node."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":"), sort_keys=True).encode()


def envelope(data: Any, timestamp_ms: int, code: int = 1000, message: str = "Success") -> dict[str, Any]:
    out = {"status_code": code, "status_message": message, "timestamp": ocpi_time(timestamp_ms)}
    if data is not None:
        out["data"] = data
    return out


def presented_token(header: str | None) -> list[str]:
    """The tokens an Authorization header may carry: base64-decoded (OCPI 2.2.1) first, raw second."""
    if not header or len(header) > MAX_HEADER_CHARS:
        return []
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "token" or not value or not re.fullmatch(r"[\x21-\x7e]+", value):
        return []
    out = []
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
        if re.fullmatch(r"[\x21-\x7e]{1,200}", decoded):
            out.append(decoded)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    out.append(value)
    return out


def encode_token(token: str) -> str:
    """The Authorization header value for `token` (OCPI 2.2.1: base64)."""
    return "Token " + base64.b64encode(token.encode("utf-8")).decode("ascii")


def _int_param(query: Any, name: str, default: int, low: int, high: int | None) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"\d{1,12}", raw):
        raise bad_parameter(name, "expected a non-negative integer")
    value = int(raw)
    if value < low:
        raise bad_parameter(name, f"must be at least {low}")
    if high is not None and value > high:
        raise bad_parameter(name, f"must be at most {high}")
    return value


def _time_param(query: Any, name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        return parse_ocpi_time(raw)
    except ValueError as exc:
        raise bad_parameter(name, str(exc)) from None


def _validate_credentials(body: Any) -> tuple[str, dict[str, Any]]:
    """(party key "CC*PID", the credentials to keep) of a Credentials object; OcpiError if invalid."""
    if not isinstance(body, dict):
        raise bad_parameter("body", "expected a Credentials object")
    token, url, roles = body.get("token"), body.get("url"), body.get("roles")
    if not isinstance(token, str) or not re.fullmatch(r"[\x21-\x7e]{1,64}", token):
        raise bad_parameter("token", "expected 1..64 printable ASCII characters")
    if not isinstance(url, str) or len(url) > 255 or not re.fullmatch(r"https?://[\x21-\x7e]+", url):
        raise bad_parameter("url", "expected an http(s) URL of at most 255 characters")
    if not isinstance(roles, list) or not 1 <= len(roles) <= 10:
        raise bad_parameter("roles", "expected 1..10 CredentialsRole objects")
    kept = []
    for i, role in enumerate(roles):
        if not isinstance(role, dict):
            raise bad_parameter(f"roles[{i}]", "expected a CredentialsRole object")
        if role.get("role") not in ROLES:
            raise bad_parameter(f"roles[{i}].role", "expected one of " + ", ".join(ROLES))
        if not isinstance(role.get("country_code"), str) or not re.fullmatch(r"[A-Z]{2}", role["country_code"]):
            raise bad_parameter(f"roles[{i}].country_code", "expected an ISO 3166-1 alpha-2 code")
        if not isinstance(role.get("party_id"), str) or not re.fullmatch(r"[A-Z0-9]{3}", role["party_id"]):
            raise bad_parameter(f"roles[{i}].party_id", "expected 3 capital letters or digits")
        details = role.get("business_details")
        if not isinstance(details, dict) or not isinstance(details.get("name"), str) \
                or not 0 < len(details["name"]) <= 100:
            raise bad_parameter(f"roles[{i}].business_details.name", "expected 1..100 characters")
        kept.append({"role": role["role"], "country_code": role["country_code"], "party_id": role["party_id"],
                     "business_details": {"name": details["name"]}})
    first = next((r for r in kept if r["role"] == "EMSP"), kept[0])
    return f"{first['country_code']}*{first['party_id']}", {"token": token, "url": url, "roles": kept}


class Snapshot:
    """One read of the ledger: height, the Ethereum block it agreed on, and its block time."""

    def __init__(self, sources: ReadSources) -> None:
        self.height = sources.ledger.height
        self.eth_block = sources.eth_block()
        self.block_ms = int(sources.ledger.counters()["block_ms"])


class OcpiApi:
    """The data behind the OCPI modules (reads shared with devsen/api_routes.py)."""

    def __init__(self, sources: ReadSources, store: CredentialsStore, party: Party, public_url: str = "") -> None:
        self.sources = sources
        self.store = store
        self.party = party
        self.public_url = public_url.rstrip("/")
        self.cache = ChainCache()
        self.final_sessions: OrderedDict[str, dict[str, Any]] = OrderedDict()  # settled/refunded: never change
        self.memo: OrderedDict[tuple[str, int, int], Any] = OrderedDict()

    # ------------------------------------------------------------ chain reads (bounded)

    async def _chunked(self, kind: str, keys: Sequence[str], block: int, read: Callable[[str, int], Any]) -> list[Any]:
        out: list[Any] = []
        with trio.move_on_after(CHAIN_TOTAL_S) as scope:
            for i in range(0, len(keys), CHAIN_CHUNK):
                try:
                    out.extend(await self.cache.many(kind, keys[i:i + CHAIN_CHUNK], block, read))
                except HttpError as exc:
                    raise OcpiError(503, 3000, exc.message) from exc
        if scope.cancelled_caught:
            raise OcpiError(503, 3000, f"reading chain data took over {CHAIN_TOTAL_S:g} s; retry later")
        return out

    async def devices(self, charger_ids: Sequence[str], block: int) -> list[ChainDevice | None]:
        return await self._chunked("device", charger_ids, block, self.sources.chain_device)

    async def escrow_sessions(self, session_ids: Sequence[str], block: int) -> list[dict[str, Any] | None]:
        read = self.sources.chain_session
        if read is None:
            raise OcpiError(503, 3000, "this node reads no escrow sessions")
        missing = [s for s in dict.fromkeys(session_ids) if s not in self.final_sessions]
        found = await self._chunked("session", missing, block, lambda key, b: read(bytes.fromhex(key[2:]), b))
        fresh = dict(zip(missing, found, strict=True))
        for key, value in fresh.items():
            if value is not None and (value["state"] == "refunded" or value.get("settled_at_s")):
                self.final_sessions[key] = value
                while len(self.final_sessions) > FINAL_CACHE_ENTRIES:
                    self.final_sessions.popitem(last=False)
        return [self.final_sessions.get(s, fresh.get(s)) for s in session_ids]

    async def _memoised(self, kind: str, snap: Snapshot, build: Callable[[], Awaitable[Any]]) -> Any:
        key = (kind, snap.height, snap.eth_block)
        if key not in self.memo:
            self.memo[key] = await build()
            while len(self.memo) > 16:
                self.memo.popitem(last=False)
        return self.memo[key]

    # ------------------------------------------------------------ modules

    def _records(self) -> list[DeviceRecord]:
        records = sorted(self.sources.ledger.devices(), key=lambda r: r.charger_id)
        if len(records) > MAX_SCAN_CHARGERS:
            raise OcpiError(503, 3000, f"over {MAX_SCAN_CHARGERS} chargers: this interface serves at most that many")
        return records

    async def locations(self, snap: Snapshot) -> list[dict[str, Any]]:
        async def build() -> list[dict[str, Any]]:
            records = self._records()
            chain = await self.devices([r.charger_id for r in records], snap.eth_block)
            out = []
            for i, (record, device) in enumerate(zip(records, chain, strict=True)):
                if i % MAP_BATCH == MAP_BATCH - 1:
                    await trio.lowlevel.checkpoint()  # let OCPP replies through while 2,000 chargers map
                loc = mapping.location(record, device, self.party)
                if loc is not None:
                    out.append(loc)
            return out
        result: list[dict[str, Any]] = await self._memoised("locations", snap, build)
        return result

    async def tariffs(self, snap: Snapshot) -> list[dict[str, Any]]:
        async def build() -> list[dict[str, Any]]:
            records = self._records()
            chain = await self.devices([r.charger_id for r in records], snap.eth_block)
            return [mapping.tariff(r, d, self.party) for r, d in zip(records, chain, strict=True) if d is not None]
        result: list[dict[str, Any]] = await self._memoised("tariffs", snap, build)
        return result

    async def _closed(self, snap: Snapshot) -> list[tuple[str, str, Any, dict[str, Any]]]:
        """(charger, tx ref, ClosedTransaction, escrow view) of the newest escrow-bound closed transactions."""
        closed = [c for c in reversed(self.sources.ledger.closed_transactions())
                  if c[2].escrow_session_id and c[2].outcome in ("settled", "escrow_closed")][:MAX_CLOSED_SCAN]
        views = await self.escrow_sessions(["0x" + c[2].escrow_session_id.hex() for c in closed], snap.eth_block)
        return [(cid, ref, tx, view) for (cid, ref, tx), view in zip(closed, views, strict=True) if view is not None]

    async def sessions(self, snap: Snapshot) -> list[dict[str, Any]]:
        async def build() -> list[dict[str, Any]]:
            items = [mapping.open_session(s, self.party) for s in self.sources.ledger.open_sessions()]
            items += [mapping.closed_session(cid, ref, tx, view, self.party)
                      for cid, ref, tx, view in await self._closed(snap)]
            return items
        result: list[dict[str, Any]] = await self._memoised("sessions", snap, build)
        return result

    async def cdrs(self, snap: Snapshot) -> list[dict[str, Any]]:
        async def build() -> list[dict[str, Any]]:
            closed = [c for c in await self._closed(snap) if c[3].get("settled_at_s")]
            chargers = sorted({c[0] for c in closed})
            devices = dict(zip(chargers, await self.devices(chargers, snap.eth_block), strict=True))
            out = (mapping.cdr(cid, ref, tx, view, devices[cid], self.party) for cid, ref, tx, view in closed)
            return [c for c in out if c is not None]
        result: list[dict[str, Any]] = await self._memoised("cdrs", snap, build)
        return result

    # ------------------------------------------------------------ HTTP helpers

    def base_url(self, request: Request) -> str:
        if self.public_url:
            return self.public_url
        host = request.headers.get("host", "")
        if not _HOST.fullmatch(host):
            server = request.scope.get("server") or ("127.0.0.1", 80)
            host = f"{server[0]}:{server[1]}"
        return f"{request.url.scheme}://{host}"

    def grant(self, request: Request, allow_registration: bool) -> Grant:
        for token in presented_token(request.headers.get("authorization")):
            grant = self.store.grant(token)
            if grant is not None:
                if grant.kind == REGISTRATION and not allow_registration:
                    raise OcpiError(401, 2000, "a registration token (CREDENTIALS_TOKEN_A) only reaches "
                                               "versions and credentials; register first")
                return grant
        if not request.headers.get("authorization"):
            raise OcpiError(401, 2000, "missing Authorization header: expected 'Token <base64 token>'")
        raise OcpiError(401, 2000, "unknown or revoked token")

    def our_credentials(self, request: Request, token: str) -> dict[str, Any]:
        p = self.party
        return {"token": token, "url": self.base_url(request) + PREFIX + "/versions",
                "roles": [{"role": "CPO", "country_code": p.country_code, "party_id": p.party_id,
                           "business_details": {"name": p.business_name}}]}


def _headers(request: Request, snap: Snapshot) -> dict[str, str]:
    headers = {"X-Devsen-Height": str(snap.height), "X-Devsen-Eth-Block": str(snap.eth_block)}
    for name in ("X-Request-ID", "X-Correlation-ID"):
        value = request.headers.get(name)
        if value is not None and _ECHO.fullmatch(value):
            headers[name] = value
    return headers


async def _read_body(request: Request) -> Any:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise OcpiError(413, 2000, f"body over {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        raise bad_parameter("body", "not JSON") from None


def _page(request: Request, api: OcpiApi, items: list[dict[str, Any]], *, date_required: bool = False,
          ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    query = request.query_params
    offset = _int_param(query, "offset", 0, 0, MAX_OFFSET)
    limit = min(_int_param(query, "limit", DEFAULT_LIMIT, 1, None), MAX_LIMIT)
    date_from, date_to = _time_param(query, "date_from"), _time_param(query, "date_to")
    if date_required and date_from is None:
        raise bad_parameter("date_from", "required for this module")
    if date_from is not None and date_to is not None and date_to <= date_from:
        raise bad_parameter("date_to", "must be after date_from")
    if date_from is not None or date_to is not None:
        low, high = date_from or 0, date_to or 2**62
        items = [i for i in items if low <= parse_ocpi_time(i["last_updated"]) < high]
    items = sorted(items, key=lambda i: (i["last_updated"], i["id"]))
    page = items[offset:offset + limit]
    headers = {"X-Total-Count": str(len(items)), "X-Limit": str(MAX_LIMIT)}
    if offset + limit < len(items):
        params = {k: v for k, v in query.items() if k in ("date_from", "date_to")}
        params.update(offset=str(offset + limit), limit=str(limit))
        url = api.base_url(request) + request.url.path + "?" + urllib.parse.urlencode(params)
        headers["Link"] = f'<{url}>; rel="next"'
    return page, headers


Endpoint = Callable[[Request], Awaitable[Response]]


def ocpi_routes(api: OcpiApi) -> APIRouter:
    """The OCPI routes (devsen/http_api.py Router.include)."""
    router = APIRouter(prefix=PREFIX, tags=["ocpi"])

    def answer(handler: Callable[[Request, Snapshot], Awaitable[tuple[Any, dict[str, str]]]]) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            snap = Snapshot(api.sources)
            headers = _headers(request, snap)
            try:
                data, extra = await handler(request, snap)
            except OcpiError as exc:
                return OcpiResponse(envelope(None, snap.block_ms, exc.code, exc.message), exc.http, headers)
            except Exception:
                log.exception("OCPI handler for %s failed", request.url.path[:200])
                return OcpiResponse(envelope(None, snap.block_ms, 3000, "internal error; see the node's log"),
                                    500, headers)
            return OcpiResponse(envelope(data, snap.block_ms), 200, {**headers, **extra})
        endpoint.__name__ = handler.__name__
        return endpoint

    def add(path: str, methods: list[str], handler: Endpoint, summary: str, query: Sequence[str] = ()) -> None:
        parameters = [{"name": n, "in": "path", "required": True, "schema": {"type": "string", "maxLength": 36}}
                      for n in re.findall(r"\{(\w+)\}", path)]
        parameters += [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}} for n in query]
        parameters.append({"name": "Authorization", "in": "header", "required": True,
                           "schema": {"type": "string"}, "description": "Token <base64 token>"})
        router.add_api_route(path, handler, methods=methods, summary=summary, response_class=OcpiResponse,
                             openapi_extra={"parameters": parameters})

    paging = ("offset", "limit", "date_from", "date_to")

    async def versions(request: Request, snap: Snapshot) -> tuple[Any, dict[str, str]]:
        api.grant(request, allow_registration=True)
        return [{"version": OCPI_VERSION, "url": api.base_url(request) + f"{PREFIX}/{OCPI_VERSION}"}], {}

    async def version_details(request: Request, snap: Snapshot) -> tuple[Any, dict[str, str]]:
        api.grant(request, allow_registration=True)
        base = api.base_url(request) + f"{PREFIX}/{OCPI_VERSION}"
        endpoints = [{"identifier": "credentials", "role": role, "url": f"{base}/credentials"}
                     for role in ("SENDER", "RECEIVER")]
        endpoints += [{"identifier": m, "role": "SENDER", "url": f"{base}/{m}"} for m in MODULES[1:]]
        return {"version": OCPI_VERSION, "endpoints": endpoints}, {}

    async def credentials_get(request: Request, snap: Snapshot) -> tuple[Any, dict[str, str]]:
        api.grant(request, allow_registration=True)
        token = presented_token(request.headers.get("authorization"))
        used = next(t for t in token if api.store.grant(t) is not None)
        return api.our_credentials(request, used), {}

    async def credentials_post(request: Request, snap: Snapshot) -> tuple[Any, dict[str, str]]:
        grant = api.grant(request, allow_registration=True)
        if grant.kind == PARTY:
            raise OcpiError(405, 2000, "already registered: use PUT to update or DELETE to unregister")
        party, credentials = _validate_credentials(await _read_body(request))
        try:
            token = api.store.register(grant, party, credentials)
        except StoreFull as exc:
            raise OcpiError(503, 3000, str(exc)) from None
        except KeyError:
            raise OcpiError(405, 2000, f"party {party} is already registered or the token was used") from None
        log.info("OCPI party %s registered (versions at %s)", party, credentials["url"][:100])
        return api.our_credentials(request, token), {}

    async def credentials_put(request: Request, snap: Snapshot) -> tuple[Any, dict[str, str]]:
        grant = api.grant(request, allow_registration=True)
        if grant.kind != PARTY or grant.party is None:
            raise OcpiError(405, 2000, "not registered: POST the credentials first")
        _, credentials = _validate_credentials(await _read_body(request))
        token = api.store.update(grant.party, credentials)
        return api.our_credentials(request, token), {}

    async def credentials_delete(request: Request, snap: Snapshot) -> tuple[Any, dict[str, str]]:
        grant = api.grant(request, allow_registration=True)
        if grant.kind != PARTY or grant.party is None:
            raise OcpiError(405, 2000, "not registered")
        api.store.unregister(grant.party)
        log.info("OCPI party %s unregistered", grant.party)
        return None, {}

    def module(name: str, read: Callable[[Snapshot], Awaitable[list[dict[str, Any]]]],
               date_required: bool = False) -> Endpoint:
        async def listing(request: Request, snap: Snapshot) -> tuple[Any, dict[str, str]]:
            api.grant(request, allow_registration=False)
            return _page(request, api, await read(snap), date_required=date_required)
        listing.__name__ = name
        return answer(listing)

    def path_id(request: Request, name: str) -> str:
        value = str(request.path_params[name])
        if not _ID.fullmatch(value):
            raise bad_parameter(name, "expected 1..36 printable ASCII characters")
        return value

    async def one_location(request: Request, snap: Snapshot) -> tuple[Any, dict[str, str]]:
        api.grant(request, allow_registration=False)
        wanted = path_id(request, "location_id")
        evse = path_id(request, "evse_uid") if "evse_uid" in request.path_params else None
        connector = path_id(request, "connector_id") if "connector_id" in request.path_params else None
        found: Any = next((loc for loc in await api.locations(snap) if loc["id"] == wanted), None)
        if found is None:
            raise OcpiError(404, 2003, f"unknown location {wanted}")
        if evse is not None:
            found = next((e for e in found["evses"] if e["uid"] == evse), None)
            if found is None:
                raise OcpiError(404, 2003, f"unknown EVSE {evse} of location {wanted}")
        if connector is not None:
            found = next((c for c in found["connectors"] if c["id"] == connector), None)
            if found is None:
                raise OcpiError(404, 2003, f"unknown connector {connector} of EVSE {evse}")
        return found, {}

    v = f"/{OCPI_VERSION}"
    add("/versions", ["GET"], answer(versions), "OCPI versions this node serves")
    add(v, ["GET"], answer(version_details), "OCPI 2.2.1 endpoints")
    add(f"{v}/credentials", ["GET"], answer(credentials_get), "Our credentials for the caller")
    add(f"{v}/credentials", ["POST"], answer(credentials_post), "Register with CREDENTIALS_TOKEN_A")
    add(f"{v}/credentials", ["PUT"], answer(credentials_put), "Update a registration: a new token")
    add(f"{v}/credentials", ["DELETE"], answer(credentials_delete), "Unregister")
    add(f"{v}/locations", ["GET"], module("locations", api.locations), "Locations: registry and live status", paging)
    add(f"{v}/locations/{{location_id}}", ["GET"], answer(one_location), "One location")
    add(f"{v}/locations/{{location_id}}/{{evse_uid}}", ["GET"], answer(one_location), "One EVSE")
    add(f"{v}/locations/{{location_id}}/{{evse_uid}}/{{connector_id}}", ["GET"], answer(one_location),
        "One connector")
    add(f"{v}/tariffs", ["GET"], module("tariffs", api.tariffs), "Tariffs from the device registry", paging)
    add(f"{v}/sessions", ["GET"], module("sessions", api.sessions, date_required=True),
        "Sessions: open in the ledger, closed and settled on chain (date_from required)", paging)
    add(f"{v}/cdrs", ["GET"], module("cdrs", api.cdrs), "CDRs of sessions settled on chain", paging)
    return router
