"""Peer reachability for people reading the log: a peer that is down is a few lines, not a flood.

While one peer is down, py-libp2p logs an ERROR "Failed to open TCP stream" for every
address of every dial attempt (and its swarm retries each dial 3 more times): about 90 lines
a minute per node in a 4-node devnet. Instead:
- one WARNING when a peer we had a connection to is lost (or, for a peer never reached, once
  it has failed for `grace_s`: at start-up, peers come up in any order),
- silence (DEBUG) for each failed redial, which the keeper spaces with capped exponential
  backoff,
- one WARNING summary every `summary_interval_s` naming the peers still unreachable,
- one INFO when a lost peer is reachable again, with how long it was down.

`quiet_libp2p_dial_errors` demotes py-libp2p's own per-attempt line to DEBUG.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger("p2p.reachability")

LIBP2P_TCP_LOGGER = "libp2p.transport.tcp.tcp"
_DIAL_ERROR_PREFIXES = ("Failed to open TCP stream",)
MAX_TRACKED_PEERS = 1024  # bounded: peers known to the keeper are already bounded by the validator set


@dataclass
class _Down:
    since: float
    failures: int = 0
    last_error: str = ""
    announced: bool = False
    was_up: bool = False


class Reachability:
    """Up/down state per peer (by its base58 id), turned into a few log lines."""

    def __init__(self, *, summary_interval_s: float = 60.0, grace_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, log: logging.Logger = logger) -> None:
        self._clock = clock
        self._log = log
        self._summary_interval_s = summary_interval_s
        self._grace_s = grace_s
        self._started = clock()
        self._up: set[str] = set()
        self._down: dict[str, _Down] = {}
        self._next_summary = self._started + summary_interval_s

    def connected(self, peer: str) -> None:
        """A dial succeeded or a connection is seen alive."""
        down = self._down.pop(peer, None)
        if peer in self._up:
            return
        if len(self._up) < MAX_TRACKED_PEERS:
            self._up.add(peer)
        if down is not None and down.announced:
            self._log.info("peer %s is reachable again after %.0f s (%d failed dials)",
                           peer, self._clock() - down.since, down.failures)

    def lost(self, peer: str) -> None:
        """A peer we were connected to has no live connection any more."""
        if peer not in self._up:
            return
        self._up.discard(peer)
        self._restart_summary_clock()
        self._down[peer] = _Down(self._clock(), announced=True, was_up=True)
        self._log.warning("lost the connection to peer %s; redialing with backoff (one summary per %.0f s "
                          "while it stays unreachable)", peer, self._summary_interval_s)

    def dial_failed(self, peer: str, error: str) -> None:
        """One failed dial (DEBUG); the first WARNING for a peer never reached comes after the grace time."""
        now = self._clock()
        down = self._down.get(peer)
        if down is None:
            if len(self._down) >= MAX_TRACKED_PEERS:
                return
            self._up.discard(peer)
            down = self._down[peer] = _Down(now)
        down.failures += 1
        down.last_error = error[:200]
        self._log.debug("dial %s failed (%d in a row): %s", peer, down.failures, error)
        if not down.announced and now - max(down.since, self._started) >= self._grace_s:
            self._restart_summary_clock()
            down.announced = True
            self._log.warning("peer %s is unreachable (%d dials failed, last: %s); redialing with backoff",
                              peer, down.failures, down.last_error)

    def _restart_summary_clock(self) -> None:
        """The first summary comes a whole interval after the first peer goes."""
        if not self.unreachable():
            self._next_summary = self._clock() + self._summary_interval_s

    def unreachable(self) -> list[str]:
        """Peers currently announced as unreachable."""
        return sorted(p for p, d in self._down.items() if d.announced)

    def tick(self) -> None:
        """Call periodically: one summary line per interval while any peer is unreachable."""
        now = self._clock()
        if now < self._next_summary:
            return
        self._next_summary = now + self._summary_interval_s
        down = [(p, d) for p, d in sorted(self._down.items()) if d.announced]
        if down:
            self._log.warning("still unreachable: %s", ", ".join(
                f"{p} (for {now - d.since:.0f} s, {d.failures} failed dials)" for p, d in down))


class _DemoteDialErrors(logging.Filter):
    """py-libp2p's per-attempt dial ERROR becomes DEBUG (shown only when debugging)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith(_DIAL_ERROR_PREFIXES):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def quiet_libp2p_dial_errors() -> None:
    """Install the filter on py-libp2p's TCP transport logger (idempotent)."""
    tcp_logger = logging.getLogger(LIBP2P_TCP_LOGGER)
    if not any(isinstance(f, _DemoteDialErrors) for f in tcp_logger.filters):
        tcp_logger.addFilter(_DemoteDialErrors())
