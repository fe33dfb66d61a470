"""Register another validator's libp2p peer id as this validator's own, on chain.

The ValidatorSet refuses a peer id another validator holds (`PeerIdTaken`); the attempt's
outcome is written to BYZ_REPORT (JSON) and the node keeps running with its own peer id.
Before that refusal existed, the attempt succeeded and honest restarts failed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from behaviours import env

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
        report: dict[str, Any] = {"victim": other.address, "peer_id": bytes(other.peer_id).hex()}
        try:  # a refusal must not stop this node: the scenario is about the honest ones
            receipt = parts.client.set_validator_info(bytes(other.peer_id),
                                                      f"ws://{config.ocpp.host}:{config.ocpp.port}/ocpp")
            report["outcome"] = "accepted"
            report["tx"] = str(getattr(receipt, "tx_hash", receipt))
        except Exception as exc:  # ChainRevert(PeerIdTaken) on the defended contract
            report["outcome"] = "refused"
            report["error"] = getattr(exc, "name", type(exc).__name__)
            report["detail"] = str(exc)[:200]
        log.warning("duplicate peer id attempt: %s", report)
        if env("REPORT"):
            Path(env("REPORT")).write_text(json.dumps(report))
        return parts

    node.build_node = build_node
