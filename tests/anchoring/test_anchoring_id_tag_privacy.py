"""idTags leave the ingress node only as hashes (issue 10, item 8).

A charger speaks to the real OCPP adapter; a real Ledger decides (one event per block), the
node's vouch is applied; the events are committed in blocks, batched, anchored and served by
the proof service. The charger's replies are what they always were, the session settles,
and no block byte, proof answer, block answer or audit line carries the plaintext idTag.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, cast

import trio
from anchoring_world import LocalChain, Net, vouched_event
from trio_websocket import open_websocket_url

from anchoring.audit import ChainReader, block_loader, verify_event
from anchoring.batches import BatchPolicy
from anchoring.chain import connect
from anchoring.proofs import http_routes
from consensus.types import CommittedBlock
from devsen.ledger import (
    BlockContext,
    DeviceInfo,
    EscrowSession,
    IdTagInfo,
    Ledger,
    StaticChainView,
    Tariff,
    id_tag_hash,
)
from devsen.ledger.reservations import reservation_token
from ocpp_adapter.auth import ChargerCredentials, InMemoryChargerRegistry
from ocpp_adapter.config import OcppServerConfig
from ocpp_adapter.events import ChargerEvent
from ocpp_adapter.ingest import IngestResult
from ocpp_adapter.server import ChargerConnections, serve_ocpp

TAG = "04A2B3C4D5E6F7"  # an RFID UID, as chargers send it (1.6 idTag, 2.0.1 idToken)
EXTRA = "DRIVER-CONTRACT-7"  # a 2.0.1 additionalIdToken
PASSWORD = "privacy test password"
T0_MS = 1_795_000_000_000
NOW = "2026-11-18T12:00:00Z"


def forms(text: str) -> list[bytes]:
    """How a plaintext could appear in raw bytes or in JSON documents."""
    raw = text.encode()
    return [raw, raw.hex().encode(), raw.hex().upper().encode(), base64.b64encode(raw), text.lower().encode()]


class LedgerIngest:
    """The node's ingest in miniature: vouch (as validator KEYS[0]), apply in its own block, reply."""

    def __init__(self, domain: Any) -> None:
        self.domain = domain
        self.ledger = Ledger()
        tariff = Tariff(price_per_kwh=2_000)
        opened = T0_MS // 1000 - 600
        self.chain = StaticChainView(
            {"CP-1": DeviceInfo(b"\x11" * 32, "0x" + "aa" * 20, 1, tariff),
             "CS-2": DeviceInfo(b"\x22" * 32, "0x" + "bb" * 20, 1, tariff)},
            {TAG: IdTagInfo("0x" + "dd" * 20)},
            [EscrowSession(b"\x01" * 32, "0x" + "dd" * 20, "CP-1", 1, id_tag_hash(TAG), 100_000, opened),
             EscrowSession(b"\x02" * 32, "0x" + "dd" * 20, "CS-2", 1, id_tag_hash(TAG), 100_000, opened)])
        self.events: list[ChargerEvent] = []
        self.settlements: list[Any] = []

    async def submit(self, event: ChargerEvent) -> IngestResult:
        event = vouched_event(event, self.domain)
        height = self.ledger.height + 1
        context = BlockContext(height, T0_MS + 60_000 * height, height, b"\x00" * 32)
        outcome = self.ledger.apply_block(context, self.chain, [event])
        result = outcome.results[0]
        assert result.reply is not None, (event.action, result.error_code)
        self.events.append(event)
        self.settlements += outcome.settlements
        return IngestResult(result.reply, event.event_id, height)


async def converse(ingest: LedgerIngest) -> dict[str, list[Any]]:
    """A 1.6 and a 2.0.1 charger authorize, start and stop with the plaintext idTag; their replies."""
    config = OcppServerConfig(host="127.0.0.1", port=0, node_name="privacy", ping_interval=None)
    creds = ChargerCredentials.from_password(PASSWORD)
    registry = InMemoryChargerRegistry({"CP-1": creds, "CS-2": creds})
    replies: dict[str, list[Any]] = {}
    token = {"idToken": TAG, "type": "ISO14443", "additionalInfo": [{"additionalIdToken": EXTRA, "type": "x"}]}
    calls = {
        ("CP-1", "ocpp1.6"): [
            ("Authorize", {"idTag": TAG}),
            ("StartTransaction", {"connectorId": 1, "idTag": TAG, "meterStart": 1_000, "timestamp": NOW}),
            ("StopTransaction", {"transactionId": 1, "idTag": TAG, "meterStop": 6_000, "timestamp": NOW}),
        ],
        ("CS-2", "ocpp2.0.1"): [
            ("Authorize", {"idToken": token}),
            ("TransactionEvent", {"eventType": "Started", "timestamp": NOW, "triggerReason": "Authorized",
                                  "seqNo": 0, "transactionInfo": {"transactionId": "tx-1"}, "evse": {"id": 1},
                                  "idToken": token}),
            ("TransactionEvent", {"eventType": "Ended", "timestamp": NOW, "triggerReason": "StopAuthorized",
                                  "seqNo": 1, "transactionInfo": {"transactionId": "tx-1"}, "idToken": token}),
        ],
    }
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve_ocpp(
            config, ingest, registry, connections=ChargerConnections(), task_status=task_status))
        for (charger, subprotocol), frames in calls.items():
            auth = base64.b64encode(f"{charger}:{PASSWORD}".encode())
            async with open_websocket_url(f"ws://127.0.0.1:{port}/ocpp/{charger}", subprotocols=[subprotocol],
                                          extra_headers=[(b"Authorization", b"Basic " + auth)]) as ws:
                for n, (action, payload) in enumerate(frames):
                    await ws.send_message(json.dumps([2, f"{charger}-{n}", action, payload]))
                    with trio.fail_after(10):
                        answer = json.loads(await ws.get_message())
                    assert answer[0] == 3, answer
                    replies.setdefault(charger, []).append(answer[2])
        nursery.cancel_scope.cancel()
    return replies


async def test_no_plaintext_id_tag_in_blocks_proofs_or_audit(tmp_path: Path) -> None:
    net = Net(connect("tester"))
    ingest = LedgerIngest(net.anchor_domain)
    replies = await converse(ingest)

    # The chargers get the replies they always got (with the driver's group, named by a prefix
    # of the hash, never the tag), and both sessions settle.
    group = reservation_token(id_tag_hash(TAG))
    accepted = {"status": "Accepted", "parentIdTag": group}
    assert replies["CP-1"] == [{"idTagInfo": accepted}, {"idTagInfo": accepted, "transactionId": 1},
                               {"idTagInfo": accepted}]
    assert replies["CS-2"] == [{"idTokenInfo": {"status": "Accepted",
                                                "groupIdToken": {"idToken": group, "type": "Central"}}}] * 3
    assert [(s.session_id, s.energy_wh) for s in ingest.settlements] == [(b"\x01" * 32, 5_000), (b"\x02" * 32, 0)]

    local = LocalChain(tmp_path, net, BatchPolicy(every_blocks=2, every_ms=10**9))
    for start in range(0, len(ingest.events), 2):
        local.commit(ingest.events[start:start + 2])
    local.commit([])  # closes the last batch (two blocks per batch)
    for batch in local.batches:
        net.anchor(batch)
    routes = http_routes(local.service)
    chain = ChainReader(net.w3, net.anchor_address)
    published: list[bytes] = []
    for height in range(1, cast(CommittedBlock, local.store.last()).height + 1):
        block = cast(CommittedBlock, local.store.get(height)).block
        published += list(block.payloads)  # the raw committed bytes
        status, body = await routes["/v1/blocks/{height}"]({"height": str(height)})
        assert status == 200
        published.append(json.dumps(body).encode())
    for event in ingest.events:
        status, document = await routes["/v1/events/{event_id}/proof"]({"event_id": "0x" + event.event_id.hex()})
        assert status == 200, document
        published.append(json.dumps(document).encode())
        checks = verify_event(json.loads(json.dumps(document)), event.event_id, chain, block_loader(
            lambda path: json.loads(json.dumps(local.service.block_document(int(path.split("/")[-1]))))))
        assert checks and all(c.ok for c in checks), [c.line() for c in checks if not c.ok]
        published += [c.line().encode() for c in checks]  # what `devsen audit verify` prints
        assert ChargerEvent.from_bytes(event.to_bytes()) == event
    everything = b"\n".join(published)
    for secret in (TAG, EXTRA):
        for form in forms(secret):
            assert form not in everything, (secret, form)
    assert id_tag_hash(TAG).hex().encode() in everything  # the hash is what travels
