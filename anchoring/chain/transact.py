"""Connecting, retrying and sending transactions: explicit gas, a local nonce, receipts.

`TransactionSender` signs locally (EIP-1559) and sends raw transactions, which works the
same on the in-process py-evm chain and on any JSON-RPC node. Before sending it runs the
call (`eth_call`) so a revert surfaces as a decoded `ChainRevert` without spending gas;
a transaction that still fails on chain (state changed in between) is replayed at its
block to decode the error. Transport failures are retried with exponential backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests
from eth_account import Account
from web3 import EthereumTesterProvider, HTTPProvider, Web3
from web3.exceptions import TransactionNotFound, Web3RPCError
from web3.types import RPCEndpoint

from anchoring.chain.errors import (
    ChainError,
    ChainRevert,
    RpcUnavailable,
    TransactionTimeout,
    revert_from_exception,
)

log = logging.getLogger("devsen.chain")
T = TypeVar("T")
DEFAULT_RPC_TIMEOUT_S = 10.0  # one HTTP request to the chain, connect + read
PROBE_TIMEOUT_S = 2.0  # the same while the endpoint is known down
TESTER_RPC = "tester"
MAX_GAS_PER_TX = 15_000_000
DEFAULT_PRIORITY_FEE_WEI = 1_000_000_000
RECEIPT_POLL_S = 0.02
MAX_RECEIPT_POLL_S = 1.0
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.HTTPError,  # an error status from the endpoint or a gateway before it (502, 503, 429)
)


class RpcHealth:
    """Whether one JSON-RPC endpoint answers, from the outcome of every request sent to it.

    Logs once per change of state ("unreachable", then "back"), never once per retry, and
    wakes every thread waiting in `wait_for_recovery` when the endpoint answers again.
    Thread-safe: requests come from worker threads.
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.down_since: float | None = None  # time.monotonic() of the first failure of this outage
        self.failures = 0  # failed requests in the current outage
        self.outages = 0
        self.last_error = ""
        self.last_success = float("-inf")
        self._changed = threading.Condition()

    @property
    def up(self) -> bool:
        return self.down_since is None

    def succeeded(self) -> None:
        self.last_success = time.monotonic()
        if self.down_since is None:
            return
        with self._changed:
            if self.down_since is None:
                return
            log.warning("chain RPC %s is back after %.1f s (%d failed requests)", self.endpoint,
                        time.monotonic() - self.down_since, self.failures)
            self.down_since, self.failures = None, 0
            self._changed.notify_all()
        with _RECOVERED:
            _RECOVERED.notify_all()

    def failed(self, exc: BaseException, sent_at: float | None = None) -> None:
        """A request sent at `sent_at` (time.monotonic()) failed. One sent before the latest
        success does not mean the endpoint is down: it went to a connection that died earlier."""
        if sent_at is not None and sent_at < self.last_success:
            return
        with self._changed:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            if self.down_since is None:
                self.down_since = time.monotonic()
                self.outages += 1
                log.warning("chain RPC %s unreachable (%s); requests are retried with backoff, commits wait "
                            "for it", self.endpoint, self.last_error)

    def wait_for_recovery(self, timeout_s: float) -> bool:
        """Sleep up to `timeout_s`, returning early (True) once the endpoint is up."""
        with self._changed:
            return self._changed.wait_for(lambda: self.down_since is None, timeout_s)

    def status(self) -> dict[str, Any]:
        """JSON-ready state for the node's status endpoint."""
        down = self.down_since
        return {"up": down is None, "down_for_s": None if down is None else round(time.monotonic() - down, 1),
                "failed_requests": self.failures, "outages": self.outages,
                "last_error": self.last_error if down is not None else ""}


class _TrackedHTTPProvider(HTTPProvider):
    """web3's HTTPProvider reporting every transport outcome to an RpcHealth. While the
    endpoint is down its requests get the short `probe_timeout_s`, so the end of an outage
    is noticed within that (a request still hanging on a dead connection would otherwise
    hold its caller for the full timeout)."""

    def __init__(self, *args: Any, health: RpcHealth, probe_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.health = health
        self.probe_timeout_s = probe_timeout_s

    def get_request_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(super().get_request_kwargs())  # web3 turns its pairs into a dict
        if "timeout" in kwargs and not self.health.up:
            kwargs["timeout"] = min(float(kwargs["timeout"]), self.probe_timeout_s)
        return kwargs

    def _make_request(self, method: RPCEndpoint, request_data: bytes) -> bytes:
        sent_at = time.monotonic()
        try:
            response = super()._make_request(method, request_data)
        except TRANSIENT_ERRORS as exc:
            self.health.failed(exc, sent_at)
            raise
        self.health.succeeded()
        return response


_RECOVERED = threading.Condition()  # notified whenever an endpoint that was down answers again


def sleep_until_recovery(seconds: float) -> None:
    """Sleep `seconds`, or less if a chain endpoint that was down answers again meanwhile
    (a backoff that does not outlast the outage)."""
    with _RECOVERED:
        _RECOVERED.wait(seconds)


def rpc_health(w3: Web3) -> RpcHealth | None:
    """The RpcHealth of a Web3 made by `connect` (None for the in-process tester chain)."""
    health = getattr(w3.provider, "health", None)
    return health if isinstance(health, RpcHealth) else None


def connect(rpc: str, *, timeout_s: float = DEFAULT_RPC_TIMEOUT_S) -> Web3:
    """A Web3 on `rpc`: "tester" for a fresh in-process py-evm chain, else an http(s) URL.

    Every HTTP request is bounded by `timeout_s` (connect and read; PROBE_TIMEOUT_S while
    the endpoint is down): an endpoint that accepts and never answers (a blackholed socket)
    fails the request instead of hanging its thread. `rpc_health(w3)` tells whether the
    endpoint currently answers."""
    if rpc == TESTER_RPC:
        return Web3(EthereumTesterProvider())
    if not rpc.startswith(("http://", "https://")):
        raise ValueError(f"rpc must be {TESTER_RPC!r} or an http(s) URL, not {rpc!r}")
    # web3 asks eth_chainId before every call and transaction; the chain id of an endpoint
    # never changes, so that one answer is cached (it halves the round trips of a read).
    return Web3(
        _TrackedHTTPProvider(rpc, request_kwargs={"timeout": timeout_s}, exception_retry_configuration=None,
                             cache_allowed_requests=True, cacheable_requests={RPCEndpoint("eth_chainId")},
                             health=RpcHealth(rpc), probe_timeout_s=min(timeout_s, PROBE_TIMEOUT_S))
    )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: `attempts` tries, delays base * 2**k capped at max_delay_s."""

    attempts: int = 5
    base_delay_s: float = 0.1
    max_delay_s: float = 5.0

    def __post_init__(self) -> None:
        assert self.attempts >= 1 and 0 <= self.base_delay_s <= self.max_delay_s

    def delay(self, attempt: int) -> float:
        return float(min(self.max_delay_s, self.base_delay_s * (2**attempt)))


def with_retries(
    operation: Callable[[], T], policy: RetryPolicy, sleep: Callable[[float], None] = time.sleep
) -> T:
    """Run `operation`, retrying transport errors with backoff; RpcUnavailable when exhausted."""
    for attempt in range(policy.attempts):
        try:
            return operation()
        except TRANSIENT_ERRORS as exc:
            if attempt + 1 == policy.attempts:
                raise RpcUnavailable(f"RPC failed {policy.attempts} times: {exc}") from exc
            sleep(policy.delay(attempt))
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class Receipt:
    """A mined, successful transaction."""

    tx_hash: bytes
    block_number: int
    block_hash: bytes
    gas_used: int
    contract_address: str | None
    raw: Any = field(repr=False)


def _error_message(exc: BaseException) -> str:
    return str(getattr(exc, "message", None) or exc).lower()


class TransactionSender:
    """Signs and sends transactions from one key with a locally managed nonce.

    Thread-safe (one lock per sender): a trio shell calls it through `trio.to_thread`.
    """

    def __init__(
        self,
        w3: Web3,
        private_key: bytes | str,
        *,
        retry: RetryPolicy = RetryPolicy(),
        receipt_timeout_s: float = 60.0,
        priority_fee_wei: int = DEFAULT_PRIORITY_FEE_WEI,
        max_fee_wei: int | None = None,
        preflight: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.w3 = w3
        self._account = Account.from_key(private_key)
        self._retry = retry
        self._receipt_timeout_s = receipt_timeout_s
        self._priority_fee_wei = priority_fee_wei
        self._max_fee_wei = max_fee_wei  # cap on maxFeePerGas (None: uncapped)
        self._preflight = preflight
        self._sleep = sleep
        self._lock = threading.Lock()
        self._nonce: int | None = None
        self._chain_id: int | None = None

    @property
    def address(self) -> str:
        return str(self._account.address)

    def resync_nonce(self) -> None:
        """Forget the local nonce; the next send reads the account's pending nonce."""
        with self._lock:
            self._nonce = None

    def rpc(self, operation: Callable[[], T]) -> T:
        """Run one read against the node with this sender's retry policy."""
        return with_retries(operation, self._retry, self._sleep)

    def send(self, call: Any, *, gas: int, value: int = 0) -> Receipt:
        """Send a bound contract function call (`contract.functions.f(...)`) with explicit gas."""
        return self.send_data(call.address, bytes(Web3.to_bytes(hexstr=call._encode_transaction_data())), gas=gas, value=value)

    def deploy(self, abi: list[Any], bytecode: str, args: tuple[Any, ...], *, gas: int) -> Receipt:
        """Deploy a contract; the receipt's `contract_address` is set."""
        data = self.w3.eth.contract(abi=abi, bytecode=bytecode).constructor(*args).data_in_transaction
        receipt = self.send_data(None, bytes(Web3.to_bytes(hexstr=data)), gas=gas)
        assert receipt.contract_address is not None
        return receipt

    def send_data(self, to: str | None, data: bytes, *, gas: int, value: int = 0) -> Receipt:
        """Sign, send and wait for a transaction; ChainRevert if it reverts (before or on chain)."""
        if not 21_000 <= gas <= MAX_GAS_PER_TX:
            raise ValueError(f"gas {gas} outside [21000, {MAX_GAS_PER_TX}]")
        call = {"from": self.address, "data": data, "value": value, "gas": gas}
        if to is not None:
            call["to"] = to
        if self._preflight:
            self._call_or_raise(call, "latest")
        with self._lock:
            tx_hash = self._sign_and_send(to, data, gas, value)
        try:
            receipt = self._wait_for_receipt(tx_hash)
        except TransactionTimeout:
            self.resync_nonce()  # the transaction may have been dropped: do not leave a nonce gap
            raise
        if receipt["status"] != 1:
            self._call_or_raise(call, receipt["blockNumber"] - 1, tx_hash)
            raise ChainRevert("Unknown", ("failed without revert data (out of gas?)",), b"", tx_hash)
        return Receipt(
            tx_hash=tx_hash,
            block_number=receipt["blockNumber"],
            block_hash=bytes(receipt["blockHash"]),
            gas_used=receipt["gasUsed"],
            contract_address=receipt.get("contractAddress"),
            raw=receipt,
        )

    def _call_or_raise(self, call: dict[str, Any], block: int | str, tx_hash: bytes | None = None) -> None:
        try:
            self.rpc(lambda: self.w3.eth.call(call, block))  # type: ignore[arg-type]
        except TRANSIENT_ERRORS + (RpcUnavailable,):
            raise
        except Exception as exc:
            revert = revert_from_exception(exc, tx_hash)
            if revert is None:
                raise
            raise revert from exc

    def _sign_and_send(self, to: str | None, data: bytes, gas: int, value: int) -> bytes:
        eth = self.w3.eth
        if self._chain_id is None:
            self._chain_id = self.rpc(lambda: eth.chain_id)
        if self._nonce is None:
            self._nonce = self.rpc(lambda: eth.get_transaction_count(self._account.address, "pending"))
        base_fee = self.rpc(lambda: eth.get_block("latest")).get("baseFeePerGas", 0)
        max_fee = 2 * base_fee + self._priority_fee_wei
        if self._max_fee_wei is not None:
            if base_fee + self._priority_fee_wei > self._max_fee_wei:
                raise ChainError(f"base fee {base_fee} wei + tip {self._priority_fee_wei} wei is above the "
                                 f"configured cap chain.max_fee_gwei ({self._max_fee_wei} wei): not sent")
            max_fee = min(max_fee, self._max_fee_wei)
        tx: dict[str, Any] = {
            "chainId": self._chain_id,
            "nonce": self._nonce,
            "gas": gas,
            "maxFeePerGas": max_fee,
            "maxPriorityFeePerGas": min(self._priority_fee_wei, max_fee),
            "value": value,
            "data": data,
            "type": 2,
        }
        if to is not None:
            tx["to"] = to
        signed = self._account.sign_transaction(tx)
        tx_hash = bytes(signed.hash)
        try:
            self.rpc(lambda: eth.send_raw_transaction(signed.raw_transaction))
        except Web3RPCError as exc:
            # "already known" / "nonce too low" after a retried send: the first attempt arrived
            if not ("already known" in _error_message(exc) or self._is_known(tx_hash)):
                self._nonce = None  # resync from the node next time (another sender used the key?)
                raise
        except Exception:
            self._nonce = None
            raise
        self._nonce += 1
        return tx_hash

    def _is_known(self, tx_hash: bytes) -> bool:
        try:
            self.rpc(lambda: self.w3.eth.get_transaction(tx_hash))  # type: ignore[arg-type]
        except TransactionNotFound:
            return False
        return True

    def _wait_for_receipt(self, tx_hash: bytes) -> Any:
        """Poll for the receipt, from every 20 ms (automining chains) up to every 1 s."""
        deadline = time.monotonic() + self._receipt_timeout_s
        poll_s = RECEIPT_POLL_S
        while True:
            try:
                return self.rpc(lambda: self.w3.eth.get_transaction_receipt(tx_hash))  # type: ignore[arg-type]
            except TransactionNotFound:
                if time.monotonic() > deadline:
                    raise TransactionTimeout(f"no receipt for 0x{tx_hash.hex()} in {self._receipt_timeout_s} s") from None
                self._sleep(poll_s)
                poll_s = min(MAX_RECEIPT_POLL_S, poll_s * 2)


__all__ = [
    "Receipt",
    "RetryPolicy",
    "RpcHealth",
    "TransactionSender",
    "connect",
    "rpc_health",
    "sleep_until_recovery",
    "with_retries",
]
