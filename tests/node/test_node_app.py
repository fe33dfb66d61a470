"""NodeApplication (the consensus application) with a static chain: validation, apply, batches,
attestations and quorums. Unit tests of one layer: the chain is a fake here; the e2e tests
run the same code against anvil."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import pytest

from anchoring.attestations import AnchorBatch, attest, decode_attestation
from anchoring.batches import BatchPolicy
from anchoring.proofs import AnchorIndex
from consensus.types import Block, CommitCertificate
from devsen import app as app_module
from devsen.app import (
    AppHeaderError,
    AppSettings,
    CommandsAdmitted,
    NodeApplication,
    OwnAttestationCommitted,
    ValidatorsChanged,
    decode_app_header,
    decode_event_reply,
    encode_app_header,
)
from devsen.ledger import DeviceInfo, IdTagInfo, Ledger, StaticChainView, Tariff
from ocpp_adapter.events import ChargerEvent
from ocpp_adapter.vouching import ingress_domain, vouch
from primitives.eip712 import ZERO_HASH, Domain, SigningKey

KEYS = [SigningKey(bytes([i]) * 32) for i in range(1, 5)]
VALIDATORS = tuple(sorted(k.address for k in KEYS))
ANCHOR = Domain(31337, b"\x0a" * 20)
ESCROW = Domain(31337, b"\x0e" * 20)
CERT = CommitCertificate.__new__(CommitCertificate)  # finalize_block does not read it


class StaticChain:
    """Ethereum blocks 0..head with fixed hashes and one static view."""

    def __init__(self, head: int = 10) -> None:
        self.head_number = head
        self.epochs: dict[int, tuple[bytes, ...]] = {0: VALIDATORS}  # from Ethereum block -> set
        self.view = StaticChainView(
            devices={"CP-1": DeviceInfo(b"\x01" * 32, "0x" + "11" * 20, 2, Tariff(300_000))},
            id_tags={"TAG-1": IdTagInfo("0x" + "22" * 20)},
        )
        self.reads_by: list[bytes] = []

    def head(self, max_age_s: float = 0.25) -> int:
        return self.head_number

    def block_hash(self, number: int, fresh: bool = False) -> bytes:
        return number.to_bytes(32, "big")

    def view_at(self, number: int, block_hash: bytes) -> StaticChainView:
        self.reads_by.append(block_hash)
        return self.view

    def validators_at(self, number: int, block_hash: bytes) -> tuple[int, tuple[bytes, ...], dict[bytes, bytes]]:
        epoch = max(e for e in self.epochs if e <= number)
        addresses = self.epochs[epoch]
        return len([e for e in self.epochs if e <= number]) - 1, addresses, {a: b"peer" + a for a in addresses}


class Shell:
    """The consensus shell's calls into the application, in order, collecting what it returns."""

    def __init__(self, app: NodeApplication) -> None:
        self.app = app
        self.own: list[bytes] = []
        self.committed_own: list[bytes] = []
        self.quorums: list[Any] = []
        self.commands: list[CommandsAdmitted] = []
        self.changes: list[Any] = []
        self.updates: list[Any] = []
        self.results: list[Any] = []

    def process(self, b: Block) -> bool:
        return self.app.process_proposal(b, self.app.fetch_facts(b.height, b.app_header, b.payloads))

    def finalize(self, b: Block) -> bytes:
        facts = self.app.fetch_facts(b.height, b.app_header, b.payloads, committed=True)
        result = self.app.finalize_block(b, CERT, facts)
        assert len(result.tx_results) == len(b.payloads)
        self.app.commit(b.height)
        self.own.extend(result.outbound_payloads)
        for notice in result.notices:
            if isinstance(notice, OwnAttestationCommitted):
                self.committed_own.append(notice.payload)
            elif isinstance(notice, ValidatorsChanged):
                self.changes.append(notice.validators)
            elif isinstance(notice, CommandsAdmitted):  # e.g. provisioning on a BootNotification
                self.commands.append(notice)
            else:
                self.quorums.append(notice)
        if result.validator_update is not None:
            self.updates.append(result.validator_update)
        self.results.append(result)
        return result.app_hash


def make_app(tmp_path: Path, key: SigningKey = KEYS[0], every_blocks: int = 2,
             confirmations: int = 2) -> tuple[NodeApplication, Shell]:
    app = NodeApplication(
        AppSettings(key, VALIDATORS, ANCHOR, ESCROW, BatchPolicy(every_blocks=every_blocks, every_ms=10**9),
                    confirmations),
        StaticChain(), Ledger(), AnchorIndex(tmp_path / "anchors.sqlite"))
    return app, Shell(app)


def event(message_id: str, action: str = "BootNotification", payload: dict[Any, Any] | None = None) -> bytes:
    body = payload if payload is not None else {"chargePointVendor": "V", "chargePointModel": "M"}
    unsigned = ChargerEvent("CP-1", "1.6", action, message_id, body, "", 1_700_000_000_000)
    return vouch(unsigned, KEYS[0], ingress_domain(ANCHOR)).to_bytes()


def block(app: NodeApplication, height: int, payloads: tuple[bytes, ...], eth_block: int = 5) -> Block:
    return Block(height, 1_700_000_000_000 + height * 1000, KEYS[0].address, ZERO_HASH, ZERO_HASH, payloads,
                 encode_app_header(eth_block, eth_block.to_bytes(32, "big")))


def test_app_header_round_trip_and_strictness() -> None:
    header = encode_app_header(7, b"\x07" * 32)
    assert decode_app_header(header) == (7, b"\x07" * 32)
    for bad in (b"", b"\xc0", header + b"\x00", encode_app_header(7, b"\x07" * 32)[:-1]):
        with pytest.raises(AppHeaderError):
            decode_app_header(bad)


def test_proposed_header_names_a_confirmed_block_and_never_goes_back(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path)
    prepared = app.prepare_proposal(1, (event("m1"), b"\x01junk"), app.propose_facts(1))
    assert decode_app_header(prepared.app_header)[0] == 10 - 2
    assert prepared.payloads == (event("m1"),)  # what no block could carry is left out
    app.last_eth_block = 9
    assert decode_app_header(app.prepare_proposal(2, (), app.propose_facts(2)).app_header)[0] == 9


def test_validation_rejects_garbage_foreign_and_backward_blocks(tmp_path: Path) -> None:
    app, shell = make_app(tmp_path)
    assert shell.process(block(app, 1, (event("m1"),)))
    assert not shell.process(block(app, 1, (b"\x01garbage",)))
    assert not shell.process(block(app, 1, (event("m1")[:-1],)))
    assert not shell.process(block(app, 1, (), eth_block=11))  # beyond the chain head here
    wrong_hash = Block(1, 1, KEYS[0].address, ZERO_HASH, ZERO_HASH, (), encode_app_header(5, b"\xff" * 32))
    assert not shell.process(wrong_hash)
    outsider = SigningKey(b"\x09" * 32)
    foreign = attest(AnchorBatch(0, b"\x01" * 32, 1, 1, 1), outsider, ANCHOR).encode()
    assert not shell.process(block(app, 1, (foreign,)))
    forged = bytearray(attest(AnchorBatch(0, b"\x01" * 32, 1, 1, 1), KEYS[1], ANCHOR).encode())
    forged[-5] ^= 1
    assert not shell.process(block(app, 1, (bytes(forged),)))
    future = Block(1, 4_000_000_000_000, KEYS[0].address, ZERO_HASH, ZERO_HASH, (), encode_app_header(5, (5).to_bytes(32, "big")))
    assert not shell.process(future)  # block time far ahead of this node's clock
    shell.finalize(block(app, 1, (), eth_block=6))
    assert not shell.process(block(app, 2, (), eth_block=5))  # Ethereum read block went back


def test_a_proposal_naming_an_unconfirmed_ethereum_block_is_refused(tmp_path: Path) -> None:
    """Reorg safety: head 10, confirmations 2 -> block 9 or 10 is too shallow by our own head."""
    app, shell = make_app(tmp_path)
    assert shell.process(block(app, 1, (), eth_block=8))
    for shallow in (9, 10):
        facts = app.fetch_facts(1, block(app, 1, (), eth_block=shallow).app_header)
        assert facts.problem is not None and "confirmations" in facts.problem
        assert not shell.process(block(app, 1, (), eth_block=shallow))
    # Once committed (2f+1 others saw it deep enough), it is applied all the same.
    shell.finalize(block(app, 1, (), eth_block=9))
    assert app.last_eth_block == 9
    assert cast(StaticChain, app.chain).reads_by[-1] == (9).to_bytes(32, "big")  # reads pinned by the block's hash


def test_facts_for_another_block_are_refused(tmp_path: Path) -> None:
    app, shell = make_app(tmp_path)
    b = block(app, 1, (event("m1"),))
    other = app.fetch_facts(1, b.app_header, ())  # fetched without the block's payloads
    assert not app.process_proposal(b, other)
    with pytest.raises(AssertionError, match="fetch_facts"):
        app.finalize_block(b, CERT, other)


def test_apply_answers_events_closes_batches_and_collects_a_quorum(tmp_path: Path) -> None:
    for path in (tmp_path / f"n{i}" for i in range(4)):
        path.mkdir()
    apps = [make_app(tmp_path / f"n{i}", key) for i, key in enumerate(KEYS)]
    payloads = (event("m1"), event("m2", "Heartbeat", {}), event("m3", "Authorize", {"idTag": "NOPE"}))
    hashes = {shell.finalize(block(app, 1, payloads)) for app, shell in apps}
    assert len(hashes) == 1  # every node reaches the same state
    app, shell = apps[0]
    results = shell.results[0].tx_results
    reply, error_code, duplicate = decode_event_reply(results[0])
    assert results[0].code == 0 and cast(dict[str, Any], reply)["status"] == "Accepted" and error_code is None and not duplicate
    assert decode_event_reply(results[2])[0] == {"idTagInfo": {"status": "Invalid"}}
    assert cast(tuple[int, bytes, bytes], app.message("CP-1", "m2"))[1] == ChargerEvent.from_bytes(payloads[1]).event_id
    assert not shell.own  # the batch needs 2 blocks
    for node, node_shell in apps:
        node_shell.finalize(block(node, 2, ()))
    attestations = [s.own[0] for _, s in apps]
    assert all(len(s.own) == 1 for _, s in apps)
    batch = decode_attestation(attestations[0]).subject
    assert isinstance(batch, AnchorBatch) and batch.batch_id == 0 and batch.event_count == 3
    # Three of four attestations committed in block 3 reach the quorum on every node.
    for node, node_shell in apps:
        node_shell.finalize(block(node, 3, tuple(attestations[:3])))
        assert len(node_shell.quorums) == 1 and node_shell.quorums[0].subject == batch
    assert shell.committed_own == [attestations[0]]
    # A late fourth attestation is ignored quietly: no second quorum, no error.
    shell.finalize(block(app, 4, (attestations[3],)))
    assert app.counters["attestations_ignored"] == 0 and len(shell.quorums) == 1


def test_message_lookup_is_kept_for_a_height_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import devsen.app as app_module

    monkeypatch.setattr(app_module, "MESSAGE_WINDOW_BLOCKS", 3)
    app, shell = make_app(tmp_path, every_blocks=100)
    shell.finalize(block(app, 1, (event("m1", "Heartbeat", {}),)))
    for height in (2, 3):
        shell.finalize(block(app, height, ()))
        assert app.message("CP-1", "m1") is not None
    shell.finalize(block(app, 4, ()))
    assert app.message("CP-1", "m1") is None and not app.by_message


def test_hostile_a_flood_of_messages_keeps_the_message_lookup_within_its_entry_cap(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A height window alone would hold MESSAGE_WINDOW_BLOCKS x max_block_events look-ups; a
    charger flooding full blocks of Heartbeats keeps it at MESSAGE_LOOKUP_MAX (oldest heights go)."""
    monkeypatch.setattr(app_module, "MESSAGE_LOOKUP_MAX", 50)
    app, shell = make_app(tmp_path, every_blocks=1000)
    for height in range(1, 21):
        shell.finalize(block(app, height, tuple(event(f"h{height}-{i}", "Heartbeat", {}) for i in range(20))))
        assert len(app.by_message) <= 50 + 20  # the cap, plus at most the block just remembered
    assert app.message("CP-1", "h20-19") is not None and app.message("CP-1", "h1-0") is None
    assert len(app.by_message) == sum(len(keys) for _, keys in app._messages_by_height) <= 70


def test_epoch_change_on_chain_switches_consensus_and_attestations(tmp_path: Path) -> None:
    newcomer = SigningKey(b"\x07" * 32)
    app, shell = make_app(tmp_path, key=newcomer, every_blocks=2)
    shell.finalize(block(app, 1, (event("m1"),), eth_block=5))
    shell.finalize(block(app, 2, (), eth_block=5))
    assert not shell.own  # not a validator yet: it closes the batch but does not sign
    new_set = tuple(sorted([*VALIDATORS[1:], newcomer.address]))
    cast(StaticChain, app.chain).epochs[6] = new_set
    shell.finalize(block(app, 3, (), eth_block=6))
    assert app.epoch == 1 and app.validators == new_set and shell.changes == [new_set]
    (update,) = shell.updates
    assert update.from_height == 5 and update.validators.addresses == new_set and update.validators.epoch == 1
    assert len(shell.own) == 1  # as a new validator it signs the batch still waiting for a quorum
    # Attestations now count only from the new set: the dropped validator's no longer validate.
    dropped_key = next(k for k in KEYS if k.address == VALIDATORS[0])
    dropped = attest(decode_attestation(shell.own[0]).subject, dropped_key, ANCHOR).encode()
    assert not shell.process(block(app, 4, (dropped,), eth_block=6))
    signers = [k for k in KEYS if k.address in new_set]
    payloads = tuple(attest(decode_attestation(shell.own[0]).subject, k, ANCHOR).encode() for k in signers[:2])
    shell.finalize(block(app, 4, (shell.own[0], *payloads), eth_block=6))
    assert len(shell.quorums) == 1 and newcomer.address in shell.quorums[0].signers


def test_snapshot_restore_then_replay_reaches_the_same_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import devsen.app as app_module

    monkeypatch.setattr(app_module, "SNAPSHOT_EVERY_BLOCKS", 4)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, shell_a = make_app(tmp_path / "a")
    a.snapshot_path = tmp_path / "snapshot.msgpack"
    stored = {}
    prev = ZERO_HASH
    app_hash = ZERO_HASH  # each header certifies the app hash after the block before (as consensus does)

    def commit(shell: Any, height: Any, payloads: Any) -> Any:
        nonlocal prev, app_hash
        b = Block(height, 1_700_000_000_000 + height * 1000, KEYS[0].address, prev, app_hash, payloads,
                  encode_app_header(5, (5).to_bytes(32, "big")))
        prev = b.hash
        stored[height] = types.SimpleNamespace(block=b)
        app_hash = shell.finalize(b)
        return app_hash

    commit(shell_a, 1, (event("m1"), event("m2", "Heartbeat", {})))
    commit(shell_a, 2, ())  # closes batch 0; node a signs it
    other = attest(decode_attestation(shell_a.own[0]).subject, KEYS[1], ANCHOR).encode()
    commit(shell_a, 3, (other,))  # batch 0 waits with one signature
    commit(shell_a, 4, (event("m3", "Heartbeat", {}),))  # commit(4) writes the snapshot after height 4
    commit(shell_a, 5, ())
    commit(shell_a, 6, (event("m4", "Heartbeat", {}),))
    assert a.snapshot_path.is_file() and a.counters["snapshots"] == 1

    b, shell_b = make_app(tmp_path / "b")
    b.snapshot_path = a.snapshot_path
    restored = b.restore(6, stored.get)
    assert restored is not None and restored[0] == 4
    resigned = b.take_restored_outbound()
    for height in (5, 6):
        shell_b.finalize(stored[height].block)
    assert b.app_state_hash() == a.app_state_hash()
    assert b.book.export_state() == a.book.export_state()
    assert b.batcher.state == a.batcher.state and b.last_eth_block == a.last_eth_block
    assert sorted([*resigned, *shell_b.own]) == sorted(shell_a.own)  # open batches are signed again

    # A snapshot that does not match the block store, or is garbage, is ignored.
    c, _ = make_app(tmp_path / "b")
    c.snapshot_path = a.snapshot_path
    assert c.restore(3, stored.get) is None
    a.snapshot_path.write_bytes(b"\x93garbage")
    assert c.restore(6, stored.get) is None


def test_mempool_admission_refuses_what_no_block_could_carry(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path)
    batch = AnchorBatch(0, b"\x01" * 32, 1, 1, 1)
    assert app.check_tx(event("m1")).ok
    ok = app.check_tx(attest(batch, KEYS[1], ANCHOR).encode())
    assert ok.ok and ok.source == "0x" + KEYS[1].address.hex()
    assert not app.check_tx(b"\x01x").ok  # unknown kind
    assert not app.check_tx(event("m1")[:-1]).ok  # truncated event
    outsider = app.check_tx(attest(batch, SigningKey(b"\x09" * 32), ANCHOR).encode())
    assert not outsider.ok and "non-validator" in outsider.reason
    assert not app.check_tx(attest(batch, KEYS[1], ESCROW).encode()).ok  # signed under another domain


def test_node_ingest_answers_from_the_commit_receipts_result(tmp_path: Path) -> None:
    """The charger's reply comes from the receipt's TxResult; no application-side result map."""
    import types

    import trio

    from devsen.app import event_tx_result
    from devsen.ledger import EventResult
    from devsen.node import NodeIngest
    from ocpp_adapter.ingest import IngestRejected

    app, _ = make_app(tmp_path)
    ev = ChargerEvent.from_bytes(event("m1"))
    answers = {
        "ok": event_tx_result(EventResult(ev.event_id, ev.dedup_key, {"status": "Accepted"}, anomalies=("clock",))),
        "refused": event_tx_result(EventResult(ev.event_id, ev.dedup_key, None, "SecurityError")),
    }

    class Service:
        answer = "ok"

        async def submit(self, payload: Any, timeout_s: Any) -> Any:
            return types.SimpleNamespace(height=7, block_hash=ZERO_HASH, index=0, result=answers[self.answer])

    service = Service()
    ingest = NodeIngest(cast(Any, service), app, commit_timeout_s=1.0)

    async def main() -> None:
        got = await ingest.submit(ev)
        assert got.reply == {"status": "Accepted"} and got.committed_height == 7 and got.notes == {"anomalies": ["clock"]}
        service.answer = "refused"
        with pytest.raises(IngestRejected) as refused:
            await ingest.submit(ev)
        assert refused.value.code == "SecurityError"

    trio.run(main)


def test_finalize_is_total_for_a_committed_block_the_ledger_refuses(tmp_path: Path) -> None:
    app, shell = make_app(tmp_path)
    shell.finalize(block(app, 1, ()))
    before = app.app_state_hash()
    stale = block(app, 1, (event("m1"),))  # height 1 again: the ledger refuses it
    result = app.finalize_block(stale, CERT, app.fetch_facts(1, stale.app_header, stale.payloads, committed=True))
    assert result.app_hash == before and [r.code for r in result.tx_results] == [3]


def test_a_decided_block_reuses_its_validation_facts_only_over_the_same_state(tmp_path: Path) -> None:
    app, shell = make_app(tmp_path)
    (tmp_path / "twin").mkdir()
    _, twin_shell = make_app(tmp_path / "twin")
    chain = cast(StaticChain, app.chain)
    first = block(app, 1, (event("m1"),))
    assert shell.process(first)
    reads = len(chain.reads_by)
    hash_one = shell.finalize(first)
    assert len(chain.reads_by) == reads and app.counters["facts_reused"] == 1  # no second chain read
    assert hash_one == twin_shell.finalize(first)  # same state as a node that read the facts at commit

    # Validated at height 2, but another block was decided at height 2: read afresh.
    proposed, decided = block(app, 2, (event("m2"),)), block(app, 2, (event("m3"),))
    assert shell.process(proposed)
    reads = len(chain.reads_by)
    assert shell.finalize(decided) == twin_shell.finalize(decided)
    assert len(chain.reads_by) == reads + 1 and app.counters["facts_reused"] == 1

    # A proposal refused for too few confirmations never lends its facts to the commit.
    shallow = block(app, 3, (event("m4"),), eth_block=9)
    assert not shell.process(shallow)
    reads = len(chain.reads_by)
    assert shell.finalize(shallow) == twin_shell.finalize(shallow)
    assert len(chain.reads_by) == reads + 1 and app.counters["facts_reused"] == 1



def test_signatures_recovered_in_a_worker_thread_are_not_recovered_again_at_admission(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import ocpp_adapter.vouching as vouching
    from primitives.eip712 import recover_address as real
    app, _ = make_app(tmp_path)
    calls: list[int] = []
    monkeypatch.setattr(vouching, "recover_address", lambda d, s: cast(Any, calls.append(threading.get_ident())) or real(d, s))
    payloads = [event(f"w{i}") for i in range(5)] + [b"\x9a\xff garbage", b""]
    worker = threading.Thread(target=app.recover_signatures, args=(payloads,))
    worker.start()
    worker.join()
    assert len(calls) == 5 and threading.get_ident() not in calls
    assert all(app.check_tx(p).ok for p in payloads[:5]) and len(calls) == 5
    assert not app.check_tx(payloads[5]).ok  # malformed: left to check_tx, which refuses it


class CountingChain(StaticChain):
    """StaticChain that counts fresh reads, with a head the RPC reports only when asked fresh
    (`cached_head` is what a recent read gave) and block hashes a reorg can replace."""

    def __init__(self) -> None:
        super().__init__()
        self.cached_head = self.head_number
        self.hashes: dict[int, bytes] = {}
        self.fresh_heads = self.fresh_hashes = 0

    def head(self, max_age_s: float = 0.25) -> int:
        if max_age_s == 0:
            self.fresh_heads += 1
            self.cached_head = self.head_number
        return self.cached_head

    def block_hash(self, number: int, fresh: bool = False) -> bytes:
        self.fresh_hashes += int(fresh)
        return self.hashes.get(number, number.to_bytes(32, "big"))


def test_validation_reads_head_and_hash_once_for_blocks_naming_the_same_ethereum_block(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many consensus blocks a second name one Ethereum block: validating them reads its hash
    fresh once per HASH_RECHECK_S and the head only when the recent one is too shallow; a
    hash a reorg replaced is still refused, and a proposal naming the new hash accepted."""
    app, shell = make_app(tmp_path)
    chain = CountingChain()
    app.chain = chain
    for _ in range(10):
        assert shell.process(block(app, 1, (), eth_block=8))
    assert (chain.fresh_heads, chain.fresh_hashes) == (0, 1)
    chain.head_number = 11  # block 9 became deep enough; our recent head (10) says it is not yet
    assert shell.process(block(app, 1, (), eth_block=9))
    assert (chain.fresh_heads, chain.fresh_hashes) == (1, 2)
    chain.hashes[9] = b"\x99" * 32  # a reorg replaced block 9
    assert shell.process(block(app, 1, (), eth_block=9))  # inside the recheck window: trusted
    clock = [time.monotonic() + app_module.HASH_RECHECK_S + 0.1]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    assert not shell.process(block(app, 1, (), eth_block=9))  # read again: the old hash is refused
    renamed = Block(1, 1_700_000_001_000, KEYS[0].address, ZERO_HASH, ZERO_HASH, (),
                    encode_app_header(9, b"\x99" * 32))
    assert shell.process(renamed)
    assert chain.fresh_hashes == 3  # the new hash was the one just read


class RequestIndex:
    """The SessionRequested log index as chain_view.SessionIndex answers it: (block, charger)."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, str]] = []

    def requested_between(self, first_block: int, last_block: int) -> list[str]:
        return sorted({c for b, c in self.requests if first_block <= b <= last_block})


def test_a_flood_of_session_requests_wakes_an_idle_network_once_per_ethereum_block(tmp_path: Path) -> None:
    """A hostile account opening escrow sessions as fast as it can (any charger, any number per
    Ethereum block) makes the chain watch ask for one block per confirmed Ethereum block that
    holds requests, never one per request; requests not yet `confirmations` deep wake nothing."""
    app, shell = make_app(tmp_path)
    chain = cast(Any, app.chain)
    chain.index = RequestIndex()
    assert not app.chain_wants_block()  # no requests
    chain.index.requests += [(9, f"CP-{n}") for n in range(500)]  # block 9: only 1 deep at head 10
    assert not app.chain_wants_block()
    chain.index.requests += [(7, f"CP-{n}") for n in range(500)]  # block 7 is confirmed (head 10 - 2 = 8)
    assert app.chain_wants_block()
    shell.finalize(block(app, 1, (), eth_block=8))  # the woken block names Ethereum block 8
    assert not app.chain_wants_block()  # its 500 requests were looked at by that one block
    chain.head_number = 11  # block 9 is now confirmed: one more block, for all of its requests
    assert app.chain_wants_block()
    shell.finalize(block(app, 2, (), eth_block=9))
    assert not app.chain_wants_block()
