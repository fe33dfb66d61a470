"""The ledger's view of Ethereum, read from the DEVSEN contracts at one agreed block.

Every committed block names an Ethereum block (number + hash) in its app header; every
node reads the registries and the escrow *at that block number*, so all nodes see the same
facts. `ContractChainView` is the ledger's `ChainView` over the chain client (memoised for
one block); `SessionIndex` knows which escrow sessions exist per chargeBoxId, learned from
`SessionRequested` logs up to the agreed block. `ChainChargerRegistry` answers the OCPP
endpoint's credential look-ups from the on-chain DeviceFactory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import trio
from eth_utils.abi import get_abi_output_types
from web3 import Web3
from web3.types import FilterParams

from anchoring.chain import ChainClient, ChainRevert, decode_revert_data, device_id_of
from anchoring.chain import EscrowSession as ChainEscrowSession
from anchoring.chain.client import SessionStatus
from anchoring.chain.errors import RpcUnavailable
from anchoring.chain.transact import TRANSIENT_ERRORS, rpc_health, sleep_until_recovery
from devsen.ledger import ChainReservation, ChainView, DeviceInfo, EscrowSession, IdTagInfo, Tariff
from ocpp_adapter.auth import ChargerCredentials, RegistryUnavailable
from primitives.hashing import keccak256

log = logging.getLogger("devsen.chain")
MAX_DEPLOYMENTS_REMEMBERED = 16
_REFUND_TIMEOUTS: dict[str, int] = {}  # Escrow address -> its immutable refundTimeout
T = TypeVar("T")

MAX_INDEXED_SESSIONS = 1_000_000  # open escrow sessions indexed in all; requests beyond are ignored
MAX_OPEN_PER_CHARGER = 256  # open escrow sessions indexed per chargeBoxId; requests beyond are ignored
CLOSED_KEPT_BLOCKS = 256  # a closed session leaves the index this many blocks after its close
MAX_LOG_RANGE = 2_000  # blocks per eth_getLogs call
MAX_REQUESTS_KEPT = 65_536  # (block, charger) of the latest SessionRequested logs, for `requested_between`
BLOCK_HASH_CACHE = 64
MAX_CACHED_READS = 100_000
CHAIN_OUTAGE_LIMIT_S = 300.0  # a read the RPC answers wrongly (not an unreachable RPC) fails after this
PATIENT_FIRST_DELAY_S = 0.25
PATIENT_MAX_DELAY_S = 2.0  # a retry at most this long after the RPC is back (or sooner, see RpcHealth)
REGISTRY_LOOKUP_S = 5.0  # one charger credentials read (the OCPP server's own bound is 10 s)
REGISTRY_THREADS = 4  # worker threads for credential reads (abandoned reads hold one until they time out)
STALE_CREDENTIALS_S = 900.0  # while the RPC is down, credentials read this recently still admit a charger
MAX_REMEMBERED_CHARGERS = 100_000
HEAD_MAX_AGE_S = 0.25  # blocks come every ~1 s or slower; proposals name head - confirmations


class ChainReadError(RuntimeError):
    """The chain could not be read at the agreed block (the node cannot apply the block yet)."""


def _is_transport(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is the RPC being unreachable, not a wrong answer."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, (RpcUnavailable, *TRANSIENT_ERRORS)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def patiently(what: str, read: Callable[[], T], *, limit_s: float = CHAIN_OUTAGE_LIMIT_S) -> T:
    """Run a chain read (in a worker thread), retrying with backoff until it succeeds.

    Used where a block must not fail half-way on RPC trouble (fetching a block's facts): the
    worker thread waits, the node's event loop keeps serving. While the RPC is unreachable
    (transport errors) it waits for as long as that lasts: a restart could not help, and the
    endpoint's RpcHealth logs the outage once; the retry comes as soon as the RPC answers
    again (`sleep_until_recovery`). Any other failure (the RPC answers, but not what the
    block needs, e.g. it lags behind) is retried for `limit_s` of wall-clock time, then
    raises ChainReadError. Logs once when it starts waiting and once when done, not per retry.
    """
    delay, began, waiting = PATIENT_FIRST_DELAY_S, time.monotonic(), False
    while True:
        try:
            value = read()
        except Exception as exc:
            transport = _is_transport(exc)
            waited = time.monotonic() - began
            if not transport and waited >= limit_s:
                raise ChainReadError(f"{what}: still failing after {waited:.0f} s: {exc}") from exc
            if not waiting and not transport:
                log.warning("%s: waiting for the chain (%s); retrying with backoff", what, exc)
            elif not waiting:
                log.debug("%s: chain RPC unreachable (%s); retrying", what, exc)
            waiting = waiting or not transport
            sleep_until_recovery(delay)
            delay = min(delay * 2, PATIENT_MAX_DELAY_S)
            continue
        if waiting:
            log.info("%s: done after %.1f s", what, time.monotonic() - began)
        return value


class SessionIndex:
    """chargeBoxId -> the escrow sessions OPEN on chain, from Escrow logs up to a block.

    `SessionRequested` adds a session, `SessionSettled` / `SessionRefunded` remove it, so the
    index (and each start's look-up) holds only open sessions, not every past one. Bounded:
    at most `MAX_OPEN_PER_CHARGER` open sessions per charger and `MAX_INDEXED_SESSIONS` in
    all are indexed; a request beyond either is ignored (logged; the driver gets a refund
    after the escrow's timeout). Which ones are ignored depends only on the log order, so
    every node ignores the same. Never raises inside block application except
    ChainReadError for an outage.

    Views must ask at non-decreasing blocks (consensus never names an older Ethereum block):
    a closed session is kept, marked with its close block, until the asked block is
    `CLOSED_KEPT_BLOCKS` past it.
    """

    def __init__(self, client: ChainClient, start_block: int) -> None:
        self._client = client
        escrow = client.contracts["Escrow"]
        self._address = Web3.to_checksum_address(client.deployment.addresses()["Escrow"])
        self._events = {Web3.to_bytes(hexstr=e.topic): e for e in (
            escrow.events.SessionRequested(), escrow.events.SessionSettled(), escrow.events.SessionRefunded())}
        # charger -> {session id: (requested at, closed at or None)}, in log order
        self._by_charger: dict[str, dict[bytes, tuple[int, int | None]]] = {}
        self._charger_of: dict[bytes, str] = {}
        self._closed: deque[tuple[int, bytes]] = deque()
        self._requests: deque[tuple[int, str]] = deque(maxlen=MAX_REQUESTS_KEPT)  # (block, charger), log order
        self.ignored = 0
        self.indexed_to = start_block - 1
        self._asked = -1
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._charger_of)

    def ensure(self, block_number: int) -> None:
        """Index every Escrow session log up to `block_number` (inclusive)."""
        with self._lock:
            while self.indexed_to < block_number:
                from_block = self.indexed_to + 1
                to_block = min(block_number, from_block + MAX_LOG_RANGE - 1)
                query: FilterParams = {"fromBlock": from_block, "toBlock": to_block, "address": self._address,
                         "topics": [["0x" + t.hex() for t in self._events]]}
                logs = patiently(f"eth_getLogs {from_block}..{to_block}", partial(self._client.w3.eth.get_logs, query))
                for entry in sorted(logs, key=lambda e: (e["blockNumber"], e["logIndex"])):
                    self._apply_log(entry)
                self.indexed_to = to_block

    def _apply_log(self, entry: Any) -> None:
        event = self._events.get(bytes(entry["topics"][0])) if entry["topics"] else None
        if event is None:
            return
        args = event.process_log(entry)["args"]
        session_id, block = bytes(args["sessionId"]), int(entry["blockNumber"])
        if event.event_name != "SessionRequested":
            charger = self._charger_of.get(session_id)
            sessions = self._by_charger.get(charger) if charger is not None else None
            if sessions is not None and session_id in sessions and sessions[session_id][1] is None:
                sessions[session_id] = (sessions[session_id][0], block)
                self._closed.append((block, session_id))
            return
        charger = str(args["chargeBoxId"])
        sessions = self._by_charger.setdefault(charger, {})
        if session_id in self._charger_of:
            return
        if len(sessions) >= MAX_OPEN_PER_CHARGER or len(self._charger_of) >= MAX_INDEXED_SESSIONS:
            self.ignored += 1
            log.warning("escrow session 0x%s for %s ignored: index bound reached", session_id.hex(), charger[:48])
            return
        sessions[session_id] = (block, None)
        self._charger_of[session_id] = charger
        self._requests.append((block, charger))

    def _forget_closed(self, asked: int) -> None:
        self._asked = max(self._asked, asked)
        while self._closed and self._closed[0][0] <= self._asked - CLOSED_KEPT_BLOCKS:
            _, session_id = self._closed.popleft()
            charger = self._charger_of.pop(session_id)
            sessions = self._by_charger[charger]
            del sessions[session_id]
            if not sessions:
                del self._by_charger[charger]

    def requested_between(self, first_block: int, last_block: int) -> list[str]:
        """The chargers with a session requested (and indexed) in blocks first..last, sorted."""
        self.ensure(last_block)
        with self._lock:
            found: set[str] = set()
            for block, charger in reversed(self._requests):
                if block < first_block:
                    break
                if block <= last_block:
                    found.add(charger)
            return sorted(found)

    def session_ids(self, charge_box_id: str, up_to_block: int) -> list[bytes]:
        """Sessions for `charge_box_id` requested at or before `up_to_block` and open at it."""
        self.ensure(up_to_block)
        with self._lock:
            self._forget_closed(up_to_block)
            return [sid for sid, (opened, closed) in self._by_charger.get(charge_box_id, {}).items()
                    if opened <= up_to_block and (closed is None or closed > up_to_block)]


def _to_ledger_session(charge_box_id: str, session: ChainEscrowSession, refund_timeout_s: int) -> EscrowSession | None:
    """The ledger's record of an escrow session; None (logged) if it is outside the ledger's bounds."""
    try:
        return EscrowSession(
            session_id=session.session_id,
            driver=session.driver,
            charge_box_id=charge_box_id,
            connector_id=session.connector_id,
            id_tag_hash=session.id_tag_hash,
            deposit=session.deposit,
            opened_at_s=session.opened_at,
            tariff=Tariff(session.price_per_kwh, session.per_minute_fee),
            refund_at_s=session.opened_at + refund_timeout_s if refund_timeout_s else None,
            # Escrow's voucherMode (issue 12, on-chain half): False until the client reads it.
            voucher_mode=bool(getattr(session, "voucher_mode", False)),
        )
    except (ValueError, TypeError) as exc:
        log.warning("escrow session 0x%s ignored: %s", session.session_id.hex(), exc)
        return None


def _to_ledger_device(record: Any, site: Any = None) -> DeviceInfo | None:
    """The ledger's record of a device (with its load-management `site`, a SiteRecord, if it is
    in one); None (treated as unregistered, logged) if it is outside the ledger's bounds (e.g.
    more connectors than MAX_CONNECTORS)."""
    site_id = int(getattr(record, "site_id", 0)) if site is not None else 0
    try:
        return DeviceInfo(
            device_id=record.device_id,
            manager=record.manager,
            connector_count=record.connector_count,
            tariff=Tariff(record.price_per_kwh, record.per_minute_fee),
            active=record.active,
            max_power_w=record.max_power_w,
            meter_public_key=bytes(record.charger_public_key),
            require_signed_meter=bool(record.require_signed_meter),
            site_id=site_id,
            site_max_power_w=site.max_power_w if site_id else 0,
            site_min_session_w=site.min_session_w if site_id else 0,
        )
    except (ValueError, TypeError) as exc:
        log.warning("device %s treated as unregistered: %s", str(record.charge_box_id)[:48], exc)
        return None


class BlockHash(bytes):
    """A 32-byte block hash used as a read's block: the read is pinned by hash (EIP-1898)."""


class ChainClientByHash(ChainClient):
    """The chain client whose reads at a `BlockHash` go to `eth_call` with EIP-1898's
    `{"blockHash": ..., "requireCanonical": true}`: a reorg makes the read fail, never answer
    from another fork (web3's contract calls turn a hash into a number first)."""

    def read(self, contract: str, function: str, *args: Any, block: Any) -> Any:
        if not isinstance(block, BlockHash):
            return super().read(contract, function, *args, block=block)
        call = self.contracts[contract].functions[function](*args)
        request = {"to": self.contracts[contract].address, "data": call._encode_transaction_data()}
        at = {"blockHash": "0x" + bytes(block).hex(), "requireCanonical": True}
        response = self.rpc(lambda: self.w3.provider.make_request("eth_call", [request, at]))  # type: ignore[arg-type]
        error = response.get("error")
        if error:
            data = error.get("data") if isinstance(error, dict) else None
            if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
                raw = bytes.fromhex(data[2:])
                name, decoded = decode_revert_data(raw)
                raise ChainRevert(name, decoded, raw)
            raise ChainReadError(f"eth_call {contract}.{function} at block 0x{bytes(block).hex()}: {error}")
        output = bytes.fromhex(str(response["result"])[2:])
        values = _checksummed(self.w3.codec.decode(get_abi_output_types(call.abi), output))
        return values[0] if len(values) == 1 else tuple(values)


def _checksummed(value: Any) -> Any:
    """Decoded ABI values as web3's contract calls return them (checksum addresses)."""
    if isinstance(value, str) and len(value) == 42 and value.startswith("0x"):
        return Web3.to_checksum_address(value)
    if isinstance(value, list):
        return [_checksummed(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_checksummed(v) for v in value)
    return value


def _event_topic(abi_entry: Any) -> bytes:
    """topics[0] of an event's logs: keccak256 of its signature `Name(type,...)`."""
    types = ",".join(str(i["type"]) for i in abi_entry.get("inputs", ()))
    return keccak256(f"{abi_entry['name']}({types})".encode())


class ReadCache:
    """Registry and escrow reads kept across Ethereum blocks until a contract event touches them.

    Valid at `block`: an entry read at an earlier block is still the value at `block`,
    because every state change of the fields read here emits an event whose first indexed
    topic is the key (deviceId, idTagHash, sessionId; any ValidatorSet event for the set),
    and `advance(E)` drops the keys touched by the logs of blocks (block, E]. This turns one
    eth_call per charger per consensus block into one eth_getLogs per new Ethereum block.
    """

    # a DeviceFactory log's first topic is a deviceId or (SiteChanged) a site id as uint256;
    # a device's reservations (Escrow.reservationsOf) depend on its record too (connector count)
    KINDS_BY_CONTRACT = {"DeviceFactory": ("device", "site", "reservations"), "UserRegistry": ("id_tag",),
                         "Escrow": ("session",)}

    def __init__(self, client: ChainClient, max_entries: int = MAX_CACHED_READS) -> None:
        self._client = client
        self._contracts = {Web3.to_checksum_address(a): name for name, a in client.deployment.addresses().items()
                           if name in ("DeviceFactory", "UserRegistry", "Escrow", "ValidatorSet")}
        # Escrow's Reservation* events are indexed by reservation id, not device: any of them
        # drops every cached reservations entry (they are rare; every write emits one)
        self._reservation_topics = frozenset(
            _event_topic(entry) for entry in client.contracts["Escrow"].abi
            if entry.get("type") == "event" and str(entry.get("name", "")).startswith("Reservation"))
        self.max_entries = max_entries
        self.block = -1
        self.entries: OrderedDict[tuple[str, bytes], Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def advance(self, number: int) -> None:
        """Make the cache valid at block `number` (going back empties it)."""
        if number == self.block:
            return
        if number < self.block or self.block < 0:
            self.entries.clear()
            self.block = number
            return
        while self.block < number:
            to_block = min(number, self.block + MAX_LOG_RANGE)
            first = self.block + 1
            logs = patiently(f"eth_getLogs {first}..{to_block}", partial(
                self._client.w3.eth.get_logs, {"fromBlock": first, "toBlock": to_block, "address": list(self._contracts)}))
            for entry in logs:
                contract = self._contracts.get(Web3.to_checksum_address(entry["address"]))
                if contract == "ValidatorSet":  # the set, and the operators (stake events included)
                    self.entries.pop(("validators", b""), None)
                    self.entries.pop(("operators", b""), None)
                elif contract == "Escrow" and entry["topics"] and bytes(entry["topics"][0]) in self._reservation_topics:
                    for slot in [k for k in self.entries if k[0] == "reservations"]:
                        del self.entries[slot]
                elif contract is not None and len(entry["topics"]) > 1:
                    key = bytes(entry["topics"][1])
                    for kind in self.KINDS_BY_CONTRACT[contract]:
                        self.entries.pop((kind, key), None)
            self.block = to_block

    def get(self, kind: str, key: bytes, read: Any) -> Any:
        """The cached value of (kind, key) at `block`, reading it at `block` when absent."""
        slot = (kind, key)
        if slot in self.entries:
            self.hits += 1
            self.entries.move_to_end(slot)
            return self.entries[slot]
        self.misses += 1
        value = patiently(f"reading {kind} at block {self.block}", lambda: read(self.block))
        self.put(kind, key, value)
        return value

    def put(self, kind: str, key: bytes, value: Any) -> None:
        """Keep `value` as (kind, key) at `block` (read by the caller at `block`)."""
        self.entries[(kind, key)] = value
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)



class ContractChainView(ChainView):
    """On-chain facts at one Ethereum block, read through the chain client and memoised."""

    def __init__(self, client: ChainClient, index: SessionIndex, block_number: int, cache: ReadCache,
                 block_hash: bytes | None = None) -> None:
        assert cache.block == block_number, "advance the cache to the view's block first"
        self._client = client
        self._index = index
        self.block_number = block_number
        # Reads go by hash when it is known (EIP-1898): a reorg fails them instead of answering
        # from another fork. The read cache is keyed by number and follows the same chain.
        self.at: Any = BlockHash(block_hash) if block_hash is not None else block_number
        self._cache = cache
        self._memo: dict[tuple[str, Any], Any] = {}

    def _read(self, key: tuple[str, Any], read: Any) -> Any:
        if key not in self._memo:
            try:
                self._memo[key] = read()
            except ChainReadError:
                raise
            except Exception as exc:
                raise ChainReadError(f"reading {key[0]} at block {self.block_number}: {exc}") from exc
        return self._memo[key]

    def prefetch_devices(self, charge_box_ids: Sequence[str], workers: int) -> None:
        """Read the uncached devices of `charge_box_ids` concurrently (`workers` threads) into
        the read cache, so the block's reads that follow hit it; a failed read is left to
        `device`'s own patient retry."""
        wanted = {device_id_of(c): c for c in charge_box_ids}
        missing = [(d, c) for d, c in wanted.items() if ("device", d) not in self._cache.entries]
        if len(missing) < 2:
            return

        def read(charge_box_id: str) -> Any:
            return self._client.device(charge_box_id, self.at)

        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(missing)))) as pool:
            futures = [(device_id, pool.submit(read, c)) for device_id, c in missing]
            for device_id, future in futures:
                try:
                    record = future.result()
                except Exception:  # an RPC blip: device() retries this one patiently
                    continue
                self._cache.misses += 1
                self._cache.put("device", device_id, record)

    def device(self, charge_box_id: str) -> DeviceInfo | None:
        record = self._cache.get("device", device_id_of(charge_box_id),
                                 lambda block: self._client.device(charge_box_id, self.at))
        if record is None:
            return None
        site_id = int(getattr(record, "site_id", 0))
        site = None
        if site_id:
            site = self._cache.get("site", site_id.to_bytes(32, "big"),
                                   lambda block: self._client.site(site_id, self.at))
        return _to_ledger_device(record, site)

    def id_tag(self, tag_hash: bytes) -> IdTagInfo | None:
        record = self._cache.get("id_tag", tag_hash, lambda block: self._client.id_tag(tag_hash, self.at))
        if record is None:
            return None
        return IdTagInfo(account=record.account, expiry_s=record.expiry, revoked=record.revoked)

    def _session(self, session_id: bytes) -> ChainEscrowSession | None:
        result: ChainEscrowSession | None = self._cache.get(
            "session", session_id, lambda block: self._client.session(session_id, self.at))
        return result

    def open_escrow_sessions(self, charge_box_id: str) -> Sequence[EscrowSession]:
        ids = self._read(("session_ids", charge_box_id),
                         lambda: self._index.session_ids(charge_box_id, self.block_number))
        sessions = []
        for session_id in ids:
            session = self._session(session_id)
            if session is not None and session.status == SessionStatus.OPEN:
                converted = _to_ledger_session(charge_box_id, session, self._refund_timeout())
                if converted is not None:
                    sessions.append(converted)
        return sessions

    def requested_since(self, first_block: int) -> list[str]:
        """The chargers with escrow sessions requested in blocks first_block..this view's block."""
        result: list[str] = self._read(("requested", first_block),
                                       lambda: self._index.requested_between(first_block, self.block_number))
        return result

    def escrow_session(self, session_id: bytes) -> EscrowSession | None:
        session = self._session(session_id)
        if session is None or session.status != SessionStatus.OPEN:
            return None
        device = self._cache.get("device", session.device_id,
                                 lambda block: self._client.device_by_id(session.device_id, self.at))
        return _to_ledger_session(device.charge_box_id if device else "", session, self._refund_timeout())

    def reservations(self, charge_box_id: str) -> Sequence[ChainReservation]:
        rows = self._cache.get("reservations", device_id_of(charge_box_id),
                               lambda block: self._client.reservations_of(charge_box_id, self.at))
        found = []
        for row in rows:
            try:
                found.append(ChainReservation(row.reservation_id, charge_box_id, row.connector_id, row.id_tag_hash,
                                              row.expires_at))
            except ValueError:
                log.warning("reservation %d of %s out of the ledger's bounds: ignored", row.reservation_id,
                            charge_box_id[:48])
        return found

    def _refund_timeout(self) -> int:
        """The Escrow's refundTimeout (immutable: read once per deployment)."""
        escrow = self._client.deployment.escrow
        if escrow not in _REFUND_TIMEOUTS:
            if len(_REFUND_TIMEOUTS) >= MAX_DEPLOYMENTS_REMEMBERED:
                _REFUND_TIMEOUTS.clear()
            _REFUND_TIMEOUTS[escrow] = self._read(("refund_timeout", escrow),
                                                  lambda: self._client.refund_timeout(self.at))
        return _REFUND_TIMEOUTS[escrow]


class ChainChargerRegistry:
    """OCPP credentials from the DeviceFactory at the latest block (admission needs `active`).

    A look-up runs in its own few worker threads and is bounded by `lookup_s`, so a slow or
    blackholed RPC never holds a charger's handshake (nor the threads block facts need).
    While the RPC cannot be read, a charger admitted within the last `stale_s` is admitted
    on the credentials read then (bounded memory); any other charger gets RegistryUnavailable
    (the OCPP server answers 503, retry later)."""

    def __init__(self, client: ChainClient, *, lookup_s: float = REGISTRY_LOOKUP_S,
                 stale_s: float = STALE_CREDENTIALS_S, max_remembered: int = MAX_REMEMBERED_CHARGERS) -> None:
        self._client = client
        self._health = rpc_health(client.w3)
        self._limiter = trio.CapacityLimiter(REGISTRY_THREADS)
        self._known: OrderedDict[str, tuple[float, ChargerCredentials]] = OrderedDict()
        self.lookup_s = lookup_s
        self.stale_s = stale_s
        self.max_remembered = max_remembered
        self.stale_answers = 0

    async def credentials(self, charge_box_id: str) -> ChargerCredentials | None:
        """The charger's salted password hash and whether it is admitted, or None if unknown."""
        failure: BaseException | None = None
        if self._health is None or self._health.up:  # while it is down, others probe for its return
            with trio.move_on_after(self.lookup_s):
                try:
                    record = await trio.to_thread.run_sync(
                        lambda: self._client.device(charge_box_id, "latest"), limiter=self._limiter,
                        abandon_on_cancel=True)  # type: ignore[call-arg]
                except (ChainRevert, ValueError, TypeError):
                    raise
                except Exception as exc:
                    failure = exc
                else:
                    if record is None:
                        self._known.pop(charge_box_id, None)
                        return None
                    creds = ChargerCredentials(record.auth_salt, record.auth_hash, admitted=record.active)
                    self._remember(charge_box_id, creds)
                    return creds
        known = self._known.get(charge_box_id)
        if known is not None and time.monotonic() - known[0] <= self.stale_s:
            self.stale_answers += 1
            return known[1]
        why = f"{type(failure).__name__}" if failure is not None else (
            "RPC down" if self._health is not None and not self._health.up else f"no answer in {self.lookup_s:g} s")
        raise RegistryUnavailable(f"the chain cannot be read now: {why}")

    def _remember(self, charge_box_id: str, creds: ChargerCredentials) -> None:
        self._known[charge_box_id] = (time.monotonic(), creds)
        self._known.move_to_end(charge_box_id)
        while len(self._known) > self.max_remembered:
            self._known.popitem(last=False)


class ContractChainAccess:
    """What the node application needs of the chain: head, block hashes, views at a block."""

    def __init__(self, client: ChainClient, index: SessionIndex) -> None:
        self.client = client
        self.index = index
        self._hashes: OrderedDict[int, bytes] = OrderedDict()
        self._head: tuple[int, float] | None = None
        self.cache = ReadCache(client)

    def head(self, max_age_s: float = HEAD_MAX_AGE_S) -> int:
        """The latest block number, as seen at most `max_age_s` ago (0: ask the RPC now)."""
        now = time.monotonic()
        if self._head is not None and now - self._head[1] <= max_age_s:
            return self._head[0]
        try:
            number = self.client.block_number()
        except Exception as exc:
            raise ChainReadError(f"eth_blockNumber failed: {exc}") from exc
        self._head = (number, now)
        return number

    def block_hash(self, number: int, fresh: bool = False) -> bytes:
        """The hash of block `number` as the RPC sees it (remembered for a few recent blocks:
        blocks named by consensus are `confirmations` deep, below where reorgs are expected)."""
        cached = self._hashes.get(number)
        if cached is not None and not fresh:
            return cached
        try:
            block_hash = bytes(self.client.w3.eth.get_block(number)["hash"])
        except Exception as exc:
            raise ChainReadError(f"eth_getBlockByNumber({number}) failed: {exc}") from exc
        self._hashes[number] = block_hash
        while len(self._hashes) > BLOCK_HASH_CACHE:
            self._hashes.popitem(last=False)
        return block_hash

    def view_at(self, number: int, block_hash: bytes | None = None) -> ContractChainView:
        """The ledger's ChainView at block `number` (reads by `block_hash` when given)."""
        self.cache.advance(number)
        return ContractChainView(self.client, self.index, number, self.cache, block_hash)

    def validators_at(self, number: int, block_hash: bytes | None = None) -> tuple[int, tuple[bytes, ...], dict[bytes, bytes]]:
        """(epoch, sorted addresses, address -> peer id) of the ValidatorSet at block `number`
        (read by `block_hash` when given)."""
        epoch, addresses, bindings, _ = self._validator_state(number, block_hash)
        return epoch, addresses, bindings

    def validator_endpoints_at(self, number: int, block_hash: bytes | None = None) -> dict[bytes, str]:
        """Address -> OCPP endpoint (as published, unchecked) of each validator at block `number`:
        the same read as `validators_at`, cached with it."""
        return self._validator_state(number, block_hash)[3]

    def _validator_state(self, number: int, block_hash: bytes | None
                         ) -> tuple[int, tuple[bytes, ...], dict[bytes, bytes], dict[bytes, str]]:
        self.cache.advance(number)
        at: Any = BlockHash(block_hash) if block_hash is not None else number

        def read(block: int) -> tuple[int, tuple[bytes, ...], dict[bytes, bytes], dict[bytes, str]]:
            state = self.client.validator_set(at)
            bindings = {bytes.fromhex(v.address[2:]): bytes(v.peer_id) for v in state.validators if v.peer_id}
            endpoints = {bytes.fromhex(v.address[2:]): str(v.endpoint) for v in state.validators}
            return (state.epoch, tuple(sorted(bytes.fromhex(v.address[2:]) for v in state.validators)), bindings,
                    endpoints)

        result: tuple[int, tuple[bytes, ...], dict[bytes, bytes], dict[bytes, str]] = self.cache.get(
            "validators", b"", read)
        return result

    def operators_at(self, number: int, block_hash: bytes | None = None) -> tuple[bytes, ...]:
        """The registered network operators (ValidatorSet.operators(), at most MAX_OPERATORS) at
        block `number`, sorted; cached until a ValidatorSet event. A contract without the
        registry (an older deployment) reads as none, on every node alike."""
        self.cache.advance(number)
        at: Any = BlockHash(block_hash) if block_hash is not None else number

        def read(block: int) -> tuple[bytes, ...]:
            try:
                return self.client.operators(at)
            except ChainRevert:
                return ()

        result: tuple[bytes, ...] = self.cache.get("operators", b"", read)
        return result
