"""Register another validator's libp2p peer id as this validator's own, on chain."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("byzantine")


def install() -> None:
    import devsen.node as node

    original = node.build_node

    def build_node(config: Any) -> Any:
        parts = original(config)
        me = parts.keys.validator.address
        state = parts.client.validator_set("latest")
        other = next(v for v in state.validators if bytes.fromhex(v.address[2:]) != me and v.peer_id)
        log.warning("registering peer id of %s as ours", other.address)
        parts.client.set_validator_info(bytes(other.peer_id), f"ws://{config.ocpp.host}:{config.ocpp.port}/ocpp")
        return parts

    node.build_node = build_node
