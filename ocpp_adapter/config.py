"""Configuration of the OCPP endpoint: a plain dataclass with a limit on everything."""

from __future__ import annotations

from dataclasses import dataclass

from ocpp_adapter.protocol import SUBPROTOCOL_VERSIONS


@dataclass(frozen=True, slots=True)
class OcppServerConfig:
    """Where and how the OCPP-J endpoint listens, and its limits.

    security_profile: 0 = no charger authentication (local development only),
    1 = HTTP Basic auth per charger, 2 = Basic auth over TLS (`wss://`, cert required).
    A TLS certificate may also be given with profile 1.
    """

    host: str = "127.0.0.1"
    port: int = 9000
    node_name: str = "node"
    path_prefix: str = "/ocpp/"
    subprotocols: tuple[str, ...] = ("ocpp2.0.1", "ocpp1.6")
    security_profile: int = 1
    tls_cert: str | None = None
    tls_key: str | None = None
    # limits
    max_frame_bytes: int = 64 * 1024
    max_connections: int = 10_000
    max_pending_handshakes: int = 512
    messages_per_second: float = 20.0
    burst_messages: int = 40
    receive_queue: int = 4  # received frames buffered per connection
    call_queue: int = 4  # charger CALLs waiting for their turn (OCPP-J allows one)
    max_call_waiters: int = 16  # CSMS-to-charger calls queued per connection
    reply_cache_entries: int = 100_000
    reply_cache_seconds: float = 600.0  # how long a decided reply answers retries at this node
    max_in_flight_submissions: int = 20_000  # ingest submissions awaiting a decision, all chargers
    verified_auth_cache_entries: int = 100_000
    concurrent_password_checks: int = 2
    failed_logins_per_minute: int = 10  # per (remote address, charger); beyond it the handshake gets 429
    failed_logins_per_address_per_minute: int = 30  # per remote address across all charger ids
    # timeouts, seconds
    call_timeout: float = 30.0
    ingest_timeout: float = 60.0
    handshake_timeout: float = 10.0
    send_timeout: float = 10.0
    close_timeout: float = 3.0
    registry_timeout: float = 10.0
    ping_interval: float | None = 60.0  # a connection silent this long is pinged (None: never)

    def __post_init__(self) -> None:
        if self.security_profile not in (0, 1, 2):
            raise ValueError(f"security_profile must be 0, 1 or 2, got {self.security_profile}")
        if self.security_profile == 2 and not (self.tls_cert and self.tls_key):
            raise ValueError("security_profile 2 needs tls_cert and tls_key")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("give both tls_cert and tls_key, or neither")
        unknown = [p for p in self.subprotocols if p not in SUBPROTOCOL_VERSIONS]
        if unknown or not self.subprotocols:
            raise ValueError(f"subprotocols must be a non-empty subset of {sorted(SUBPROTOCOL_VERSIONS)}, got {unknown}")
        if not (self.path_prefix.startswith("/") and self.path_prefix.endswith("/")):
            raise ValueError("path_prefix must start and end with '/'")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"bad port {self.port}")
        positive = {
            "max_frame_bytes": self.max_frame_bytes, "max_connections": self.max_connections,
            "max_pending_handshakes": self.max_pending_handshakes,
            "messages_per_second": self.messages_per_second, "burst_messages": self.burst_messages,
            "receive_queue": self.receive_queue, "call_queue": self.call_queue,
            "max_call_waiters": self.max_call_waiters, "reply_cache_entries": self.reply_cache_entries,
            "reply_cache_seconds": self.reply_cache_seconds,
            "max_in_flight_submissions": self.max_in_flight_submissions,
            "verified_auth_cache_entries": self.verified_auth_cache_entries,
            "concurrent_password_checks": self.concurrent_password_checks,
            "failed_logins_per_minute": self.failed_logins_per_minute,
            "failed_logins_per_address_per_minute": self.failed_logins_per_address_per_minute,
            "call_timeout": self.call_timeout, "ingest_timeout": self.ingest_timeout,
            "handshake_timeout": self.handshake_timeout, "send_timeout": self.send_timeout,
            "close_timeout": self.close_timeout, "registry_timeout": self.registry_timeout,
        }
        bad = [name for name, value in positive.items() if not value > 0]
        if bad:
            raise ValueError(f"must be > 0: {', '.join(bad)}")
        if self.ping_interval is not None and not self.ping_interval > 0:
            raise ValueError("ping_interval must be > 0 or None")

    @property
    def scheme(self) -> str:
        return "wss" if self.tls_cert else "ws"
