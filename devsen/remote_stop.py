"""Remote stop of voucher-mode transactions whose vouchers fell behind (issue 12).

The ledger decides the stop in a committed block (devsen/ledger/vouchers.py, `StopOrder`); the
application reports it as a `StopCharge` notice and the node holding the charger's connection
sends RemoteStopTransaction (1.6) / RequestStopTransaction (2.0.1). Other nodes skip it (the
connected one sends it). Bounded queue; every failure is logged, none stops the node. The
settlement is capped by the latest voucher whatever the charger does.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from devsen.charger_commands import call_charger
from devsen.ledger.vouchers import StopOrder
from ocpp_adapter.server import ChargerConnections

log = logging.getLogger("devsen.remote_stop")

QUEUE_SIZE = 256
CALL_TIMEOUT_S = 30.0


def remote_stop_call(version: str, order: StopOrder) -> tuple[str, dict[str, Any]]:
    """(action, payload) of the remote stop in the charger's OCPP version ("1.6" or "2.0.1")."""
    if version == "1.6":
        if not order.tx_ref.isdigit():
            raise ValueError(f"1.6 transaction id {order.tx_ref!r} is not an integer")
        return "RemoteStopTransaction", {"transactionId": int(order.tx_ref)}
    if version == "2.0.1":
        return "RequestStopTransaction", {"transactionId": order.tx_ref}
    raise ValueError(f"unsupported OCPP version {version!r}")


class RemoteStops:
    """Stop orders from finalized blocks (sync side) to a worker sending them (async side)."""

    def __init__(self, connections: ChargerConnections) -> None:
        self.connections = connections
        self._send, self._receive = trio.open_memory_channel[StopOrder](QUEUE_SIZE)
        self.dropped = 0
        self.sent = 0

    def add(self, order: StopOrder) -> None:
        """Queue a stop if the charger is connected here; a full queue drops it (logged)."""
        if self.connections.version(order.charger_id) is None:
            return
        try:
            self._send.send_nowait(order)
        except trio.WouldBlock:
            self.dropped += 1
            log.error("remote stop queue full: stop of %s transaction %s dropped", order.charger_id, order.tx_ref)

    async def run(self, timeout_s: float = CALL_TIMEOUT_S) -> None:
        async for order in self._receive:
            version = self.connections.version(order.charger_id)
            if version is None:
                continue
            try:
                action, payload = remote_stop_call(version, order)
            except ValueError as exc:
                log.warning("remote stop of %s transaction %s failed: %s", order.charger_id, order.tx_ref, exc)
                continue
            answer = await call_charger(self.connections, order.charger_id, action, payload, timeout_s)
            if answer.kind != "result":
                log.warning("remote stop of %s transaction %s failed: %s", order.charger_id, order.tx_ref,
                            answer.summary())
                continue
            self.sent += 1
            log.info("voucher session 0x%s: metered %d ran more than a chunk past voucher %d; %s %s "
                     "transaction %s: charger answered %s", order.session_id.hex(), order.metered_cost,
                     order.voucher_amount, action, order.charger_id, order.tx_ref, answer.summary())
