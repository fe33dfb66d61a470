"""NodeApplication (the consensus application) with a static chain: validation, apply, batches,
attestations and quorums. Unit tests of one layer: the chain is a fake here; the e2e tests
run the same code against anvil."""

from __future__ import annotations

import pytest

from anchoring.attestations import AnchorBatch, attest, decode_attestation
from anchoring.batches import BatchPolicy
from anchoring.proofs import AnchorIndex
from consensus.signing import ZERO_HASH, Domain, SigningKey
from consensus.types import Block, CommitCertificate
from devsen.app import (
    AppHeaderError,
    AppSettings,
    NodeApplication,
    decode_app_header,
    encode_app_header,
)
from devsen.ledger import DeviceInfo, IdTagInfo, Ledger, StaticChainView, Tariff
from devsen.vouching import ingress_domain, vouch
from ocpp_adapter.events import ChargerEvent

KEYS = [SigningKey(bytes([i]) * 32) for i in range(1, 5)]
VALIDATORS = tuple(sorted(k.address for k in KEYS))
ANCHOR = Domain(31337, b"\x0a" * 20)
ESCROW = Domain(31337, b"\x0e" * 20)
CERT = CommitCertificate.__new__(CommitCertificate)  # apply_block does not read it


class StaticChain:
    """Ethereum blocks 0..head with fixed hashes and one static view."""

    def __init__(self, head: int = 10) -> None:
        self.head_number = head
        self.epochs: dict[int, tuple[bytes, ...]] = {0: VALIDATORS}  # from Ethereum block -> set
        self.view = StaticChainView(
            devices={"CP-1": DeviceInfo(b"\x01" * 32, "0x" + "11" * 20, 2, Tariff(300_000))},
            id_tags={"TAG-1": IdTagInfo("0x" + "22" * 20)},
        )

    def head(self, max_age_s: float = 0.25) -> int:
        return self.head_number

    def block_hash(self, number: int, fresh: bool = False) -> bytes:
        return number.to_bytes(32, "big")

    def view_at(self, number: int) -> StaticChainView:
        return self.view

    def validators_at(self, number: int):
        epoch = max(e for e in self.epochs if e <= number)
        addresses = self.epochs[epoch]
        return len([e for e in self.epochs if e <= number]) - 1, addresses, {a: b"peer" + a for a in addresses}


def make_app(tmp_path, key: SigningKey = KEYS[0], every_blocks: int = 2):
    own: list[bytes] = []
    committed_own: list[bytes] = []
    quorums = []
    app = NodeApplication(
        AppSettings(key, VALIDATORS, ANCHOR, ESCROW, BatchPolicy(every_blocks=every_blocks, every_ms=10**9), 2),
        StaticChain(), Ledger(), AnchorIndex(tmp_path / "anchors.sqlite"),
        on_own_attestation=own.append, on_own_committed=committed_own.append, on_quorum=quorums.append)
    return app, own, committed_own, quorums


def event(message_id: str, action: str = "BootNotification", payload: dict | None = None) -> bytes:
    body = payload if payload is not None else {"chargePointVendor": "V", "chargePointModel": "M"}
    unsigned = ChargerEvent("CP-1", "1.6", action, message_id, body, "", 1_700_000_000_000)
    return vouch(unsigned, KEYS[0], ingress_domain(ANCHOR)).to_bytes()


def block(app: NodeApplication, height: int, payloads: tuple[bytes, ...], eth_block: int = 5) -> Block:
    return Block(height, 1_700_000_000_000 + height * 1000, KEYS[0].address, ZERO_HASH, ZERO_HASH, payloads,
                 encode_app_header(eth_block, eth_block.to_bytes(32, "big")))


def test_app_header_round_trip_and_strictness():
    header = encode_app_header(7, b"\x07" * 32)
    assert decode_app_header(header) == (7, b"\x07" * 32)
    for bad in (b"", b"\xc0", header + b"\x00", encode_app_header(7, b"\x07" * 32)[:-1]):
        with pytest.raises(AppHeaderError):
            decode_app_header(bad)


def test_proposed_header_names_a_confirmed_block_and_never_goes_back(tmp_path):
    app, *_ = make_app(tmp_path)
    assert decode_app_header(app.propose_app_header(1))[0] == 10 - 2
    app.last_eth_block = 9
    assert decode_app_header(app.propose_app_header(2))[0] == 9


def test_validation_rejects_garbage_foreign_and_backward_blocks(tmp_path):
    app, *_ = make_app(tmp_path)
    assert app.validate_block(block(app, 1, (event("m1"),)))
    assert not app.validate_block(block(app, 1, (b"\x01garbage",)))
    assert not app.validate_block(block(app, 1, (event("m1")[:-1],)))
    assert not app.validate_block(block(app, 1, (), eth_block=11))  # beyond the chain head here
    wrong_hash = Block(1, 1, KEYS[0].address, ZERO_HASH, ZERO_HASH, (), encode_app_header(5, b"\xff" * 32))
    assert not app.validate_block(wrong_hash)
    outsider = SigningKey(b"\x09" * 32)
    foreign = attest(AnchorBatch(0, b"\x01" * 32, 1, 1, 1), outsider, ANCHOR).encode()
    assert not app.validate_block(block(app, 1, (foreign,)))
    forged = bytearray(attest(AnchorBatch(0, b"\x01" * 32, 1, 1, 1), KEYS[1], ANCHOR).encode())
    forged[-5] ^= 1
    assert not app.validate_block(block(app, 1, (bytes(forged),)))
    future = Block(1, 4_000_000_000_000, KEYS[0].address, ZERO_HASH, ZERO_HASH, (), encode_app_header(5, b"\x00" * 27 + b"\x00\x00\x00\x00\x05"))
    assert not app.validate_block(future)  # block time far ahead of this node's clock
    app.apply_block(block(app, 1, (), eth_block=6), CERT)
    assert not app.validate_block(block(app, 2, (), eth_block=5))  # Ethereum read block went back


def test_apply_answers_events_closes_batches_and_collects_a_quorum(tmp_path):
    for path in (tmp_path / f"n{i}" for i in range(4)):
        path.mkdir()
    apps = [make_app(tmp_path / f"n{i}", key) for i, key in enumerate(KEYS)]
    payloads = (event("m1"), event("m2", "Heartbeat", {}))
    hashes = {app.apply_block(block(app, 1, payloads), CERT) for app, *_ in apps}
    assert len(hashes) == 1  # every node reaches the same state
    app, own, committed_own, quorums = apps[0]
    first_id = ChargerEvent.from_bytes(payloads[0]).event_id
    height, result = app.result_for(first_id)
    assert height == 1 and result.reply["status"] == "Accepted"
    assert app.event_for_message("CP-1", "m2") == ChargerEvent.from_bytes(payloads[1]).event_id
    assert not own  # the batch needs 2 blocks
    for node, *_ in apps:
        node.apply_block(block(node, 2, ()), CERT)
    attestations = [outbox[0] for _, outbox, _, _ in apps]
    assert all(len(outbox) == 1 for _, outbox, _, _ in apps)
    batch = decode_attestation(attestations[0]).subject
    assert isinstance(batch, AnchorBatch) and batch.batch_id == 0 and batch.event_count == 2
    # Three of four attestations committed in block 3 reach the quorum on every node.
    for node, _, _, node_quorums in apps:
        node.apply_block(block(node, 3, tuple(attestations[:3])), CERT)
        assert len(node_quorums) == 1 and node_quorums[0].subject == batch
    assert committed_own == [attestations[0]]
    # A late fourth attestation is ignored quietly: no second quorum, no error.
    app.apply_block(block(app, 4, (attestations[3],)), CERT)
    assert app.counters["attestations_ignored"] == 0 and len(quorums) == 1


def test_epoch_change_on_chain_switches_consensus_and_attestations(tmp_path):
    newcomer = SigningKey(b"\x07" * 32)
    app, own, _, quorums = make_app(tmp_path, key=newcomer, every_blocks=2)
    changed = []
    app.on_validators_changed = lambda validators, bindings: changed.append(validators)
    app.apply_block(block(app, 1, (event("m1"),), eth_block=5), CERT)
    app.apply_block(block(app, 2, (), eth_block=5), CERT)
    assert not own  # not a validator yet: it closes the batch but does not sign
    new_set = tuple(sorted([*VALIDATORS[1:], newcomer.address]))
    app.chain.epochs[6] = new_set
    app.apply_block(block(app, 3, (), eth_block=6), CERT)
    assert app.epoch == 1 and app.validators == new_set and changed == [new_set]
    update = app.validator_update(3)
    assert update is not None and update[0].addresses == new_set and update[0].epoch == 1
    assert app.validator_update(3) is None
    assert len(own) == 1  # as a new validator it signs the batch still waiting for a quorum
    # Attestations now count only from the new set: the dropped validator's no longer validate.
    dropped_key = next(k for k in KEYS if k.address == VALIDATORS[0])
    dropped = attest(decode_attestation(own[0]).subject, dropped_key, ANCHOR).encode()
    assert not app.validate_block(block(app, 4, (dropped,), eth_block=6))
    signers = [k for k in KEYS if k.address in new_set]
    payloads = tuple(attest(decode_attestation(own[0]).subject, k, ANCHOR).encode() for k in signers[:2])
    app.apply_block(block(app, 4, (own[0], *payloads), eth_block=6), CERT)
    assert len(quorums) == 1 and newcomer.address in quorums[0].signers


def test_snapshot_restore_then_replay_reaches_the_same_state(tmp_path, monkeypatch):
    import types

    import devsen.app as app_module

    monkeypatch.setattr(app_module, "SNAPSHOT_EVERY_BLOCKS", 4)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, own_a, _, _ = make_app(tmp_path / "a")
    a.snapshot_path = tmp_path / "snapshot.msgpack"
    stored = {}
    prev = ZERO_HASH

    def commit(app, height, payloads):
        nonlocal prev
        b = Block(height, 1_700_000_000_000 + height * 1000, KEYS[0].address, prev, ZERO_HASH, payloads,
                  encode_app_header(5, (5).to_bytes(32, "big")))
        prev = b.hash
        stored[height] = types.SimpleNamespace(block=b)
        return app.apply_block(b, CERT)

    commit(a, 1, (event("m1"), event("m2", "Heartbeat", {})))
    commit(a, 2, ())  # closes batch 0; node a signs it
    other = attest(decode_attestation(own_a[0]).subject, KEYS[1], ANCHOR).encode()
    commit(a, 3, (other,))  # batch 0 waits with one signature
    commit(a, 4, (event("m3", "Heartbeat", {}),))
    commit(a, 5, ())  # writes the snapshot of the state after height 4
    commit(a, 6, (event("m4", "Heartbeat", {}),))
    assert a.snapshot_path.is_file() and a.counters["snapshots"] == 1

    b, own_b, _, _ = make_app(tmp_path / "b")
    b.snapshot_path = a.snapshot_path
    restored = b.restore(6, stored.get)
    assert restored is not None and restored[0] == 4
    for height in (5, 6):
        b.apply_block(stored[height].block, CERT)
    assert b.ledger.state_hash() == a.ledger.state_hash()
    assert b.book.export_state() == a.book.export_state()
    assert b.batcher.state == a.batcher.state and b.last_eth_block == a.last_eth_block
    assert sorted(own_b) == sorted(own_a)  # open batches are signed again (maybe never committed)

    # A snapshot that does not match the block store, or is garbage, is ignored.
    c, *_ = make_app(tmp_path / "b")
    c.snapshot_path = a.snapshot_path
    assert c.restore(3, stored.get) is None
    a.snapshot_path.write_bytes(b"\x93garbage")
    assert c.restore(6, stored.get) is None


def test_mempool_admission_refuses_what_no_block_could_carry(tmp_path):
    app, *_ = make_app(tmp_path)
    batch = AnchorBatch(0, b"\x01" * 32, 1, 1, 1)
    assert app.check_payload(event("m1"))
    assert app.check_payload(attest(batch, KEYS[1], ANCHOR).encode())
    assert not app.check_payload(b"\x01x")  # unknown kind
    assert not app.check_payload(event("m1")[:-1])  # truncated event
    assert not app.check_payload(attest(batch, SigningKey(b"\x09" * 32), ANCHOR).encode())  # outsider
    assert not app.check_payload(attest(batch, KEYS[1], ESCROW).encode())  # signed under another domain
