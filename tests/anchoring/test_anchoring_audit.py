"""Proof service and audit: a real event verifies; tampered events, proofs from another
batch, roots not on chain and forged certificates fail. `audit replay` over block ranges.
The chain is the in-process py-evm chain; the CLI test runs the node API and anvil."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, cast

import pytest
import trio
from anchoring_world import (
    KEYS,
    LocalChain,
    Net,
    charger_event,
    replace_two_validators,
    vouched_event,
)

from anchoring.attestations import AnchorBatch, attest
from anchoring.audit import ChainReader, audit_main, block_loader, replay, verify_event
from anchoring.batches import BatchPolicy
from anchoring.chain import ChainRevert, connect
from anchoring.chain.anvil import running_anvil
from anchoring.proofs import (
    ProofNotFound,
    ProofNotReady,
    canonical_events_in_payload,
    events_in_payload,
    http_routes,
)
from consensus.types import Vote, VoteType
from ocpp_adapter.events import ChargerEvent
from primitives.eip712 import SigningKey, sort_signatures_by_signer
from primitives.hashing import keccak256

POLICY = BatchPolicy(every_blocks=3, every_ms=10**9)


def build(tmp_path: Path, net: Net, anchored_batches: int = 2) -> LocalChain:
    """Nine blocks of 0..4 events and one attestation payload: batches 0..2, some anchored."""
    local = LocalChain(tmp_path, net, POLICY)
    attestation = attest(AnchorBatch(99, keccak256(b"x"), 1, 1, 1), KEYS[0], net.anchor_domain).encode()
    for height in range(1, 11):
        events = [vouched_event(charger_event(1000 * height + i), net.anchor_domain) for i in range(height % 5)]
        local.commit(events, (attestation,) if height == 2 else ())  # not an event: not a leaf
    for batch in local.batches[:anchored_batches]:
        net.anchor(batch)
    return local


@pytest.fixture
def local(tmp_path: Path) -> LocalChain:
    return build(tmp_path, Net(connect("tester")))  # a fresh chain per test: batch ids start at 0


def test_real_event_verifies(local: LocalChain) -> None:
    chain = ChainReader(local.net.w3, local.net.anchor_address)
    assert [b.batch_id for b in local.batches] == [0, 1, 2]
    for event in local.events[:6]:
        document = json.loads(json.dumps(local.service.event_proof(event.event_id)))
        checks = verify_event(document, event.event_id, chain, loader(local))
        assert all(c.ok for c in checks), [c.line() for c in checks if not c.ok]
        assert {c.name for c in checks} >= {"merkle proof (local)", "root on chain", "commit certificate",
                                             "contract verifyInclusion", "event in block", "block hash", "vouch"}
        vouch_line = next(c.line() for c in checks if c.name == "vouch")
        assert f"vouched for by 0x{KEYS[0].address.hex()}" in vouch_line


def test_event_vouched_by_non_validator_fails_the_audit(local: LocalChain) -> None:
    """A forged event signed by an outsider, or signed by A while naming B, fails the vouch check."""
    chain = ChainReader(local.net.w3, local.net.anchor_address)
    event = local.events[0]
    document = local.service.event_proof(event.event_id)
    outsider = vouched_event(event.unsigned(), local.net.anchor_domain, SigningKey(b"\x09" * 32))
    named_b = outsider.with_vouch(KEYS[1].address, vouched_event(event.unsigned(), local.net.anchor_domain).signature)
    for forged_event in (outsider, named_b, event.unsigned()):
        forged = {**document, "event_bytes": "0x" + forged_event.to_bytes().hex()}
        assert "vouch" in failing(verify_event(forged, forged_event.event_id, chain, loader(local)))


def loader(local: LocalChain) -> Any:
    """What `audit verify` fetches besides the proof: the blocks below the event's block."""
    return block_loader(lambda path: json.loads(json.dumps(local.service.block_document(int(path.split("/")[-1])))))


def failing(checks: Any) -> set[str]:
    return {c.name for c in checks if not c.ok}


def test_tampered_event_fails(local: LocalChain) -> None:
    chain = ChainReader(local.net.w3, local.net.anchor_address)
    event = local.events[0]
    document = local.service.event_proof(event.event_id)
    fields = ChargerEvent.from_bytes(event.to_bytes())
    tampered = ChargerEvent(fields.charger_id, fields.ocpp_version, fields.action, fields.message_id,
                            {**fields.payload, "connectorId": 2}, fields.ingress_node, fields.received_at_ms,
                            fields.connection_id, fields.signature)
    forged = {**document, "event_bytes": "0x" + tampered.to_bytes().hex()}
    # asked for the original id: the bytes do not hash to it
    assert "event id" in failing(verify_event(forged, event.event_id, chain, loader(local)))
    # asked for the tampered event's own id: the proof does not lead to the anchored root
    result = failing(verify_event(forged, tampered.event_id, chain, loader(local)))
    assert {"merkle proof (local)", "root on chain", "contract verifyInclusion", "event in block", "vouch"} <= result


def test_malformed_documents_fail_cleanly(local: LocalChain) -> None:
    chain = ChainReader(local.net.w3, local.net.anchor_address)
    event = local.events[0]
    good = local.service.event_proof(event.event_id)
    broken: list[Any] = [[], {}, {**good, "format": "other"}, {**good, "proof": ["0x12"]},
              {**good, "block": {**good["block"], "payload_hashes": "nope"}},
              {**good, "block": {**good["block"], "proposer": "0xzz"}}, {**good, "directions": "x"},
              {**good, "certificate": {**good["certificate"], "signatures": ["0x00"]}}]
    for document in broken:
        assert [c.name for c in verify_event(document, event.event_id, chain, loader(local))] == ["proof document"]


def test_proof_from_another_batch_fails(local: LocalChain) -> None:
    chain = ChainReader(local.net.w3, local.net.anchor_address)
    in_batch_1 = next(e for e in local.events if cast(int, local.index.height_of(e.event_id)) >= 4)
    document = copy.deepcopy(local.service.event_proof(in_batch_1.event_id))
    assert document["batch"]["batch_id"] == 1
    other = local.service.batch_document(0)["batch"]
    document["batch"] = other  # the node claims batch 0 for a proof that belongs to batch 1
    result = failing(verify_event(document, in_batch_1.event_id, chain, loader(local)))
    assert {"merkle proof (local)", "root on chain", "contract verifyInclusion", "block in batch"} <= result


def test_root_not_on_chain_fails(local: LocalChain) -> None:
    chain = ChainReader(local.net.w3, local.net.anchor_address)
    in_batch_2 = next(e for e in local.events if cast(int, local.index.height_of(e.event_id)) >= 7)
    document = local.service.event_proof(in_batch_2.event_id)
    assert document["batch"]["batch_id"] == 2
    result = failing(verify_event(document, in_batch_2.event_id, chain, loader(local)))
    assert result == {"root on chain"}
    assert "not anchored" in next(c.detail for c in verify_event(document, in_batch_2.event_id, chain, loader(local))
                                  if c.name == "root on chain")
    local.net.anchor(local.batches[2])  # anchored later: the same reader sees it now
    assert all(c.ok for c in verify_event(document, in_batch_2.event_id, chain, loader(local)))


def test_forged_certificate_and_header_fail(local: LocalChain) -> None:
    chain = ChainReader(local.net.w3, local.net.anchor_address)
    event = local.events[0]
    document = copy.deepcopy(local.service.event_proof(event.event_id))
    outsider = SigningKey(keccak256(b"outsider"))
    block_hash = bytes.fromhex(document["block"]["hash"][2:])
    height = document["block"]["height"]
    domain = local.consensus_domain
    votes = [Vote.sign(k, domain, VoteType.PRECOMMIT, height, 0, block_hash) for k in (*KEYS[:2], outsider)]
    document["certificate"]["signatures"] = ["0x" + v.signature.hex()
                                             for v in sorted(votes, key=lambda v: v.validator)]
    assert failing(verify_event(document, event.event_id, chain, loader(local))) == {"commit certificate"}
    two = copy.deepcopy(local.service.event_proof(event.event_id))
    two["certificate"]["signatures"] = two["certificate"]["signatures"][:2]  # below quorum
    assert failing(verify_event(two, event.event_id, chain, loader(local))) == {"commit certificate"}
    elsewhere = copy.deepcopy(local.service.event_proof(event.event_id))
    elsewhere["anchor"]["chain_id"] = 1
    assert failing(verify_event(elsewhere, event.event_id, chain, loader(local))) == {"chain id"}
    moved = copy.deepcopy(local.service.event_proof(event.event_id))
    moved["block"]["timestamp_ms"] += 1  # a header that is not the certified block
    assert failing(verify_event(moved, event.event_id, chain, loader(local))) == {"block hash", "commit certificate"}


def test_proof_service_errors_and_routes(local: LocalChain) -> None:
    with pytest.raises(ProofNotFound):
        local.service.event_proof(keccak256(b"never committed"))
    late = charger_event(424242)
    local.commit([late])  # height 11: batch 3 is still open
    with pytest.raises(ProofNotReady):
        local.service.event_proof(late.event_id)
    routes = http_routes(local.service)

    async def call(template: Any, **params: Any) -> Any:
        return await routes[template](params)

    assert trio.run(lambda: call("/v1/events/{event_id}/proof", event_id="0x" + late.event_id.hex()))[0] == 409
    assert trio.run(lambda: call("/v1/events/{event_id}/proof", event_id="0x12"))[0] == 400
    assert trio.run(lambda: call("/v1/blocks/{height}", height="999"))[0] == 404
    first = local.events[0]
    status, body = trio.run(lambda: call("/v1/events/{event_id}/proof", event_id="0x" + first.event_id.hex()))
    assert status == 200 and body == local.service.event_proof(first.event_id)

    async def concurrent_cold_requests() -> dict[str, dict[str, Any]]:
        local.service._trees.clear()  # every batch cold: the requests share one build per batch
        documents: dict[str, dict[str, Any]] = {}

        async def request(event: ChargerEvent) -> None:
            documents["0x" + event.event_id.hex()] = await local.service.event_proof_async(event.event_id)

        async with trio.open_nursery() as nursery:
            for event in local.events[:6]:
                nursery.start_soon(request, event)
        return documents

    documents = trio.run(concurrent_cold_requests)
    assert all(documents[k] == local.service.event_proof(bytes.fromhex(k[2:])) for k in documents)
    assert len(documents) == 6
    status, body = trio.run(lambda: call("/v1/batches/{batch_id}", batch_id="1"))
    assert status == 200 and body["batch"]["first_height"] == 4
    assert events_in_payload(b"\xa1junk") == [] and events_in_payload(b"\x9ajunk") == [b"\x9ajunk"]
    assert canonical_events_in_payload(b"\x98junk") == [] and canonical_events_in_payload(b"") == []
    assert canonical_events_in_payload(late.to_bytes()) == [late.to_bytes()]


def test_replay_checks_blocks_and_batches(local: LocalChain) -> None:
    chain = ChainReader(local.net.w3, local.net.anchor_address)

    def fetch(path: str) -> Any:
        _, kind, key = path.split("/")[1:4]
        assert kind == "blocks"
        return json.loads(json.dumps(local.service.block_document(int(key))))

    checks, pending = replay(fetch, chain, 1, 9)
    assert all(c.ok for c in checks), [c.line() for c in checks if not c.ok]
    assert pending == [7, 8, 9]  # batch 2 is closed but not anchored
    assert {c.name for c in checks} >= {"batch 0", "batch 1", "block 1", "link 8->9"}
    checks, pending = replay(fetch, chain, 5, 5)  # a batch is always recomputed over its whole range
    assert all(c.ok for c in checks) and "batch 1" in {c.name for c in checks} and pending == []

    def tampering_fetch(path: str) -> Any:
        document = fetch(path)
        if path == "/v1/blocks/4":
            payloads = document["block"]["payloads"]
            document["block"]["payloads"] = payloads[1:]  # the node hides an event
        return document

    checks, _ = replay(tampering_fetch, chain, 4, 6)
    # blocks 5 and 6 too: their set is read from headers that no longer hash-link to them
    assert failing(checks) == {"block 4", "block 5", "block 6", "link 4->5", "batch 1"}


async def _serve(local: LocalChain, task_status: Any=trio.TASK_STATUS_IGNORED) -> None:
    from devsen.http_api import Router, serve_http

    router = Router()
    for template, handler in http_routes(local.service).items():
        router.get(template, handler)
    await serve_http(router, "127.0.0.1", 0, task_status=task_status)


async def test_cli_verify_and_replay_against_anvil(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with running_anvil(tmp_path / "anvil.log") as anvil:
        net = Net(connect(anvil.url))
        local = build(tmp_path, net)
        deployment_file = tmp_path / "deployment.json"
        net.deployment.save(deployment_file)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(_serve, local)
            node = f"http://127.0.0.1:{port}"
            event = local.events[0]

            async def cli(*argv: str) -> int:
                return await trio.to_thread.run_sync(audit_main, list(argv))

            assert await cli("verify", "0x" + event.event_id.hex(), "--node", node, "--rpc", anvil.url) == 0
            out = capsys.readouterr().out
            assert "VERDICT: VALID" in out and "from the node" in out
            assert await cli("verify", event.event_id.hex(), "--node", node, "--rpc", anvil.url,
                             "--deployment", str(deployment_file)) == 0
            capsys.readouterr()
            # the roots are only a few blocks deep: demanding 1000 confirmations fails
            assert await cli("verify", event.event_id.hex(), "--node", node, "--rpc", anvil.url,
                             "--confirmations", "1000") == 1
            assert "not anchored at least 1000 blocks deep" in capsys.readouterr().out
            net.mine(3)
            assert await cli("verify", event.event_id.hex(), "--node", node, "--rpc", anvil.url,
                             "--confirmations", "3") == 0
            unanchored = next(e for e in local.events if cast(int, local.index.height_of(e.event_id)) >= 7)
            assert await cli("verify", "0x" + unanchored.event_id.hex(), "--node", node, "--rpc", anvil.url) == 1
            out = capsys.readouterr().out
            assert "VERDICT: INVALID. Failed: root on chain." in out
            assert await cli("verify", "0x" + "ab" * 32, "--node", node, "--rpc", anvil.url) == 2
            assert "HTTP 404" in capsys.readouterr().err
            assert await cli("replay", "--from", "1", "--to", "6", "--node", node, "--rpc", anvil.url) == 0
            assert "VERDICT: VALID. All 6 blocks" in capsys.readouterr().out
            assert await cli("replay", "--from", "1", "--to", "9", "--node", node, "--rpc", anvil.url,
                             "--deployment", str(deployment_file)) == 3
            assert "Blocks 7..9 are certified but not anchored yet" in capsys.readouterr().out
            assert await cli("verify", "0x" + event.event_id.hex(), "--node", node, "--rpc",
                             "http://127.0.0.1:1") == 2
            nursery.cancel_scope.cancel()


_replace_two_validators = replace_two_validators


def _anchor_with(net: Net, batch: AnchorBatch, keys: list[SigningKey]) -> None:
    digest = batch.digest(net.anchor_domain)
    net.client(KEYS[0]).submit_anchor_batch(batch.batch_id, batch.root, batch.first_height, batch.last_height,
                                            batch.event_count,
                                            sort_signatures_by_signer(digest, [k.sign(digest) for k in keys]))


def _resigned(document: dict[str, Any], local: LocalChain, keys: list[SigningKey]) -> dict[str, Any]:
    """The same proof, its block certified by `keys` instead."""
    forged = copy.deepcopy(document)
    block_hash = bytes.fromhex(forged["block"]["hash"][2:])
    votes = [Vote.sign(k, local.consensus_domain, VoteType.PRECOMMIT, forged["block"]["height"], 0, block_hash)
             for k in keys]
    forged["certificate"]["signatures"] = ["0x" + v.signature.hex() for v in sorted(votes, key=lambda v: v.validator)]
    return forged


def test_events_before_and_after_an_epoch_change_verify_against_their_own_set(tmp_path: Path) -> None:
    """Two of four validators are replaced. Before, the audit checked every certificate against
    today's set, so every event committed before the change failed audit; now each height is
    checked against the set in force there, and a certificate by the wrong set fails."""
    net = Net(connect("tester"))
    local = build(tmp_path, net, anchored_batches=3)  # heights 1..10 by epoch 0, batches 0..2 anchored
    new_keys = _replace_two_validators(net)
    signer_of_height = {}
    for height in range(11, 19):
        # block 11 is the first to name an Ethereum block of epoch 1: consensus switches at 13
        signers = KEYS[:3] if height <= 12 else new_keys[:3]
        signer_of_height[height] = signers
        local.commit([vouched_event(charger_event(1000 * height + i), net.anchor_domain)
                      for i in range(height % 5 or 1)], signers=signers)
    assert [b.batch_id for b in local.batches] == [0, 1, 2, 3, 4, 5]
    for batch in local.batches[3:5]:
        _anchor_with(net, batch, new_keys[:3])  # the Anchor checks the set in force on chain now
    chain = ChainReader(net.w3, net.anchor_address)
    assert chain.validators().addresses == tuple(k.address for k in new_keys)
    by_height: dict[int, ChargerEvent] = {}
    for event in local.events:
        by_height.setdefault(cast(int, local.index.height_of(event.event_id)), event)
    for height in (1, 3, 9, 11, 12, 13, 15):
        event = by_height[height]
        document = json.loads(json.dumps(local.service.event_proof(event.event_id)))
        checks = verify_event(document, event.event_id, chain, loader(local))
        assert all(c.ok for c in checks), (height, [c.line() for c in checks if not c.ok])
        detail = next(c.detail for c in checks if c.name == "commit certificate")
        assert f"epoch {0 if height <= 12 else 1} " in detail
        # the other set's quorum for the same block is refused: the old set after the switch,
        # the new set before it (KEYS[0..1] are in both, the third signer is not)
        newcomer = next(k for k in new_keys if k not in KEYS)
        wrong = [*KEYS[:2], newcomer] if height <= 12 else KEYS[:3]
        assert set(wrong) != set(signer_of_height.get(height, KEYS[:3]))
        forged = _resigned(document, local, sorted(wrong, key=lambda k: k.address))
        assert failing(verify_event(forged, event.event_id, chain, loader(local))) == {"commit certificate"}

    def fetch(path: str) -> Any:
        return json.loads(json.dumps(local.service.block_document(int(path.split("/")[-1]))))

    checks, pending = replay(fetch, chain, 1, 18)
    assert all(c.ok for c in checks), [c.line() for c in checks if not c.ok]
    assert pending == [16, 17, 18]
    # a node that hides the headers below a block leaves its set unknown: a failure, not a pass
    lost = json.loads(json.dumps(local.service.event_proof(by_height[13].event_id)))
    checks = verify_event(lost, by_height[13].event_id, chain, block_loader(lambda path: {}))
    assert failing(checks) == {"commit certificate", "vouch"}


def test_a_quorum_of_the_replaced_set_no_longer_anchors(tmp_path: Path) -> None:
    """What happens to a quorum formed before an epoch change: the Anchor checks the set in
    force when the transaction runs, so the old set's quorum is refused once the change landed
    (and a batch anchored before the change stays valid and auditable). The nodes re-collect
    such quorums from the new set: test_anchoring_epoch.py runs that against these contracts."""
    net = Net(connect("tester"))
    local = build(tmp_path, net, anchored_batches=2)
    stale = net.quorum(local.batches[2])  # formed by epoch 0
    new_keys = _replace_two_validators(net)
    with pytest.raises(ChainRevert) as info:
        net.client(KEYS[0]).submit_anchor_batch(2, local.batches[2].root, local.batches[2].first_height,
                                                local.batches[2].last_height, local.batches[2].event_count,
                                                list(stale.signatures))
    assert info.value.name in {"SignerNotValidator", "TooFewSignatures"}
    _anchor_with(net, local.batches[2], new_keys[:3])  # re-signed by the new set, it lands
    chain = ChainReader(net.w3, net.anchor_address)
    event = local.events[0]
    document = json.loads(json.dumps(local.service.event_proof(event.event_id)))
    assert all(c.ok for c in verify_event(document, event.event_id, chain, loader(local)))


def test_the_vouch_is_checked_against_the_set_in_force_at_the_events_height(tmp_path: Path) -> None:
    """Two of four validators are replaced; block 11 names the first Ethereum block of epoch 1,
    so the application judges vouches by epoch 0 up to block 11 and by epoch 1 from block 12.
    Before, the audit checked every vouch against today's set: an event vouched for by a
    validator removed later failed, and one vouched for by a newcomer before it joined passed."""
    net = Net(connect("tester"))
    local = build(tmp_path, net, anchored_batches=3)  # heights 1..10, epoch 0
    new_keys = _replace_two_validators(net)
    removed, newcomer = KEYS[3], next(k for k in new_keys if k not in KEYS)
    cases: dict[int, list[tuple[ChargerEvent, bool]]] = {}
    for height in (11, 12, 13):
        by_removed = vouched_event(charger_event(50_000 + 2 * height), net.anchor_domain, removed)
        by_newcomer = vouched_event(charger_event(50_001 + 2 * height), net.anchor_domain, newcomer)
        # the set that judged the block's vouches: epoch 0 at 11, epoch 1 from 12
        cases[height] = [(by_removed, height <= 11), (by_newcomer, height >= 12)]
        local.commit([by_removed, by_newcomer], signers=KEYS[:3] if height <= 12 else new_keys[:3])
    assert [b.batch_id for b in local.batches] == [0, 1, 2, 3]  # batch 3: heights 10..12
    _anchor_with(net, local.batches[3], new_keys[:3])
    chain = ChainReader(net.w3, net.anchor_address)
    for height in (11, 12):
        for event, valid in cases[height]:
            document = json.loads(json.dumps(local.service.event_proof(event.event_id)))
            checks = verify_event(document, event.event_id, chain, loader(local))
            vouch_line = next(c.line() for c in checks if c.name == "vouch")
            assert failing(checks) == (set() if valid else {"vouch"}), (height, vouch_line)
            assert f"epoch {0 if height <= 11 else 1}" in vouch_line
    # an event of block 1 vouched for by the (later removed) validator still verifies today
    early = json.loads(json.dumps(local.service.event_proof(local.events[0].event_id)))
    assert all(c.ok for c in verify_event(early, local.events[0].event_id, chain, loader(local)))
    # without the blocks below it the set is unknown: a failure, not a pass
    document = json.loads(json.dumps(local.service.event_proof(cases[12][1][0].event_id)))
    lost = verify_event(document, cases[12][1][0].event_id, chain, block_loader(lambda path: {}))
    assert "vouch" in failing(lost)
