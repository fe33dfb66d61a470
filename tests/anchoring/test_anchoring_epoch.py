"""Stale quorums after an epoch change (issue 10): the Anchor and Escrow contracts check the
validator set in force when a transaction runs, so a quorum formed by the old set but not yet
submitted is refused once the set changed, and batch ids are sequential: before, anchoring
stalled for good. Now the new set re-signs every open and completed-but-unsubmitted subject
and the submitters resubmit with the new quorum.

Six real `NodeApplication`s (the 4 validators of epoch 0 and the 2 that replace 2 of them in
epoch 1) apply the same blocks; each has a real `Submitter` sending to the real contracts on
the in-process chain. The blocks are made here (one proposer's `prepare_proposal` over a
shared mempool), standing in for consensus; a test-only ledger adds one settlement order so
the Escrow path runs without a charging session.
"""

from __future__ import annotations

import dataclasses
import time
import types
from pathlib import Path
from typing import Any, cast

import trio
from anchoring_world import (
    KEYS,
    NEWCOMERS,
    Net,
    charger_event,
    replace_two_validators,
    vouched_event,
)
from web3 import Web3
from web3.types import Wei

from anchoring.attestations import AnchorBatch, SettlementBatch, decode_attestation
from anchoring.batches import BatchPolicy, Quorum
from anchoring.chain import connect
from anchoring.chain.client import AnchoredBatch, EscrowSession
from anchoring.onchain import OnChain
from anchoring.proofs import AnchorIndex
from anchoring.submitter import SESSION_SETTLED, JobStore, Submitter, SubmitterConfig
from consensus.types import Block, CommitCertificate
from devsen.app import AppSettings, NodeApplication, ValidatorsChanged
from devsen.ledger import Ledger, StaticChainView
from devsen.ledger.state import SettlementOrder
from primitives.eip712 import ZERO_HASH, SigningKey, to_checksum_hex

POLICY = BatchPolicy(every_blocks=3, every_ms=10**9)
CERT = CommitCertificate.__new__(CommitCertificate)  # finalize_block does not read it
CONFIG = SubmitterConfig(confirmations=0, turn_timeout_s=0.3, poll_interval_s=0.05, rpc_timeout_s=10,
                         backoff_initial_s=0.05, backoff_max_s=0.2)


class ChainOfTester:
    """NodeApplication's ChainAccess over the in-process chain: real heads, hashes and
    ValidatorSet; an empty registry view (events are answered as from unknown chargers, and
    anchored all the same)."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.client = net.client(KEYS[0])

    def head(self, max_age_s: float = 0) -> int:
        return int(self.net.w3.eth.block_number)

    def block_hash(self, number: int, fresh: bool = False) -> bytes:
        return bytes(self.net.w3.eth.get_block(number)["hash"])

    def view_at(self, number: int, block_hash: bytes) -> StaticChainView:
        return StaticChainView()

    def validators_at(self, number: int, block_hash: bytes) -> tuple[int, tuple[bytes, ...], dict[bytes, bytes]]:
        state = self.client.validator_set(number)
        return state.epoch, tuple(sorted(bytes.fromhex(v.address[2:]) for v in state.validators)), {}


class OrderingLedger(Ledger):
    """Test-only: the ledger plus settlement orders scheduled by height (same on every node)."""

    orders: dict[int, tuple[SettlementOrder, ...]] = {}

    def apply_block(self, context: Any, view: Any, events: Any, vouchers: Any = (), commands: Any = (),
                    outcomes: Any = ()) -> Any:
        outcome = super().apply_block(context, view, events, vouchers, commands, outcomes)
        extra = self.orders.get(context.height, ())
        return dataclasses.replace(outcome, settlements=(*outcome.settlements, *extra))

    def settlements_ordered_between(self, first_height: int, last_height: int) -> tuple[SettlementOrder, ...]:
        scheduled = [o for h in range(first_height, last_height + 1) for o in self.orders.get(h, ())]
        return (*super().settlements_ordered_between(first_height, last_height), *scheduled)


class Network:
    """The six nodes, their submitters, a shared mempool and the committed blocks."""

    def __init__(self, tmp_path: Any, net: Net) -> None:
        self.net, self.tmp_path = net, tmp_path
        self.genesis = tuple(sorted(k.address for k in KEYS))
        self.keys: dict[bytes, SigningKey] = {k.address: k for k in [*KEYS, *NEWCOMERS]}
        self.apps = {a: self.make_app(a) for a in self.keys}
        self.submitters = {a: self.make_submitter(a) for a in self.keys}
        self.mempool: dict[bytes, None] = {}
        self.blocks: dict[int, Block] = {}
        self.quorums: list[tuple[bytes, Quorum]] = []
        self.batches: list[AnchorBatch] = []
        self.retired: list[dict[str, Any]] = []  # status of submitters replaced by a restart

    def make_app(self, address: bytes) -> NodeApplication:
        settings = AppSettings(self.keys[address], self.genesis, self.net.anchor_domain,
                               self.net.deployment.domain("Escrow"), POLICY, confirmations=0,
                               settle_every_blocks=1)
        app = NodeApplication(settings, ChainOfTester(self.net), OrderingLedger(),
                              AnchorIndex(self.tmp_path / f"anchors-{address.hex()}.sqlite"))
        # as devsen/node.py wires it: re-sign what this node's submitter has not seen land
        app.resign_filter = lambda subject: not self.submitters[address].known_done(subject)
        return app

    def make_submitter(self, address: bytes) -> Submitter:
        return Submitter(OnChain(self.net.client(self.keys[address])),
                         JobStore(self.tmp_path / f"jobs-{address.hex()}.sqlite"), address,
                         list(self.apps[address].validators), CONFIG)

    def commit(self, events: int = 2, only_from: set[bytes] | None = None) -> Block:
        """One block naming the chain head: `events` new events plus the mempool's attestations
        (those of `only_from` signers, if given), as a member's prepare_proposal keeps them."""
        height = len(self.blocks) + 1
        proposer = self.apps[KEYS[0].address]
        head = proposer.chain.head()
        payloads = [vouched_event(charger_event(100 * height + i), self.net.anchor_domain).to_bytes()
                    for i in range(events)]
        payloads += [p for p in self.mempool
                     if only_from is None or decode_attestation(p).signer in only_from]
        prepared = proposer.prepare_proposal(height, tuple(payloads), (head, proposer.chain.block_hash(head)))
        prev = self.blocks[height - 1].hash if height > 1 else ZERO_HASH
        block = Block(height, 1_795_000_000_000 + 1000 * height, KEYS[0].address, prev, ZERO_HASH,
                      prepared.payloads, prepared.app_header)
        hashes = set()
        for address, app in self.apps.items():
            facts = app.fetch_facts(height, block.app_header, block.payloads, committed=True)
            result = app.finalize_block(block, CERT, facts)
            hashes.add(result.app_hash)
            for payload in result.outbound_payloads:
                self.mempool[payload] = None
            for notice in result.notices:
                if isinstance(notice, Quorum):
                    self.quorums.append((address, notice))
                elif isinstance(notice, ValidatorsChanged):
                    self.submitters[address].validators = sorted(notice.validators)
        assert len(hashes) == 1, f"the nodes disagree at height {height}"
        for payload in block.payloads:
            self.mempool.pop(payload, None)
        self.blocks[height] = block
        self.batches = [b for b in self._closed(proposer)]
        return block

    def _closed(self, app: NodeApplication) -> list[AnchorBatch]:
        subjects = [q.subject for q in app.book.completed_quorums()]
        subjects += [s for s in app.book.open_subjects() if app.book.reopened(s)]
        return sorted((s for s in subjects if isinstance(s, AnchorBatch)), key=lambda b: b.batch_id)

    async def deliver(self) -> None:
        """Hand every quorum found so far to its node's submitter (the node's QuorumInbox)."""
        for address, quorum in self.quorums:
            await self.submitters[address].add(quorum)
        self.quorums = []

    async def submit_until(self, done: Any, timeout_s: float = 60.0) -> float:
        """Run every submitter's rounds until `done()`; the seconds it took."""
        start = time.monotonic()
        with trio.fail_after(timeout_s):
            while not done():
                for submitter in self.submitters.values():
                    await submitter.run_round()
                await trio.sleep(CONFIG.poll_interval_s)
        return time.monotonic() - start

    def next_batch_id(self) -> int:
        return self.net.client(KEYS[0]).next_batch_id("latest")

    def session_status(self, session_id: bytes) -> int:
        session = self.net.client(KEYS[0]).session(session_id, "latest")
        return 0 if session is None else int(session.status)


def _fund(w3: Web3, keys: list[SigningKey]) -> None:
    for key in keys:
        tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": to_checksum_hex(key.address),
                                      "value": Wei(10**19), "gas": 21_000})
        w3.eth.wait_for_transaction_receipt(tx)


async def test_replacing_two_of_four_while_work_is_pending_keeps_anchoring_and_settling(tmp_path: Path) -> None:
    net = Net(connect("tester"))
    _fund(net.w3, NEWCOMERS)
    session_id = net.open_escrow_session(10_000_000)
    order = SettlementOrder(session_id, 1_000, 3_600_000)
    OrderingLedger.orders = {6: (order,)}
    network = Network(tmp_path, net)
    old_members = {k.address for k in KEYS}

    # Epoch 0: batch 0 is anchored.
    for _ in range(4):
        network.commit()  # batch 0 closes at 3, its quorum at 4
    await network.deliver()
    await network.submit_until(lambda: not any(s.pending() for s in network.submitters.values()))
    assert network.next_batch_id() == 1
    # Batch 1 (heights 4..6) and the settlement reach their quorums at 7; nobody submits yet.
    for _ in range(3):
        network.commit()
    assert {type(q.subject) for _, q in network.quorums} == {AnchorBatch, SettlementBatch}
    await network.deliver()
    # Batch 2 closes at 9; only the two validators about to leave get their attestations in.
    network.commit()
    network.commit()
    leaving = {KEYS[2].address, KEYS[3].address}
    network.commit(only_from=leaving)  # height 10
    book = network.apps[KEYS[0].address].book
    batch2 = next(s for s in book.open_subjects() if isinstance(s, AnchorBatch) and s.batch_id == 2)
    assert book.signers_of(batch2) == leaving

    # The set changes on chain: KEYS[2] and KEYS[3] are replaced.
    new_keys = replace_two_validators(net)
    changed_at = time.monotonic()
    new_set = {k.address for k in new_keys}
    # The old set's quorums are now refused by the contracts (the stall this test guards against).
    for address in old_members:
        await network.submitters[address].run_round()
    for _ in range(3):  # every turn has passed: each old validator has tried the stale quorum
        await trio.sleep(CONFIG.turn_timeout_s)
        for address in old_members:
            await network.submitters[address].run_round()
    assert network.next_batch_id() == 1 and network.session_status(session_id) == 1
    assert sum(network.submitters[a].status()["rejected_sends"] for a in old_members) >= 2

    # Height 11 names the new epoch: every node rebases; members of the new set re-sign what
    # their submitter has not seen land (batch 1, the settlement; batch 0 landed).
    network.commit(only_from=set())
    newcomer = NEWCOMERS[0].address
    app = network.apps[newcomer]
    assert app.epoch == 1 and set(app.validators) == new_set
    reopened = {_key(cast("AnchorBatch | SettlementBatch", s)) for s in app.book.open_subjects() if app.book.reopened(s)}
    assert reopened == {0, 1, SETTLED}
    assert {_key(cast("AnchorBatch | SettlementBatch", decode_attestation(p).subject)) for p in network.mempool
            if decode_attestation(p).signer == newcomer} == {1, 2, SETTLED}  # not batch 0: it landed

    # A restart of a newcomer right after the rebase: its snapshot keeps the re-opened
    # subjects, and it signs them again.
    app.snapshot_path = tmp_path / "newcomer.msgpack"
    app.write_snapshot(11, network.blocks[11].hash)
    restarted = network.make_app(newcomer)
    restarted.snapshot_path = app.snapshot_path
    stored = {h: types.SimpleNamespace(block=b) for h, b in network.blocks.items()}
    assert restarted.restore(11, stored.get) == (11, app.app_state_hash())
    assert restarted.book.export_state() == app.book.export_state()
    resigned = restarted.take_restored_outbound()
    assert {_key(cast("AnchorBatch | SettlementBatch", decode_attestation(p).subject)) for p in resigned} == {1, 2, SETTLED}
    assert all(p in network.mempool for p in resigned)  # the same bytes as before the restart
    network.apps[newcomer] = restarted

    # Height 12 carries the new set's attestations: new quorums for batches 1, 2 and the settlement.
    network.commit()
    recollected = [q for a, q in network.quorums if a == KEYS[0].address]
    assert {(type(q.subject), getattr(q.subject, "batch_id", None)) for q in recollected} == {
        (AnchorBatch, 1), (AnchorBatch, 2), (SettlementBatch, 6 * 64)}
    assert all(set(q.signers) <= new_set for q in recollected)
    await network.deliver()
    # The replaced quorums survive a submitter restart (they are in its job store).
    for address in (KEYS[0].address, newcomer):
        old = network.submitters[address]
        network.retired.append(old.status())
        old.store.close()
        again = network.make_submitter(address)
        again.validators = list(old.validators)
        network.submitters[address] = again
        assert all(set(j.quorum.signers) <= new_set for j in again.pending())

    landed = await network.submit_until(
        lambda: network.next_batch_id() == 3 and network.session_status(session_id) == SESSION_SETTLED)
    since_change = time.monotonic() - changed_at

    # Anchoring continues under the new set.
    for _ in range(6):
        network.commit()
    await network.deliver()
    await network.submit_until(lambda: network.next_batch_id() >= 5)
    await network.submit_until(lambda: not any(s.pending() for s in network.submitters.values()))
    client = net.client(KEYS[0])
    anchored = [cast(AnchoredBatch, client.anchored_batch(i, "latest")) for i in range(network.next_batch_id())]
    assert [(b.batch_id, b.root) for b in anchored] == [(b.batch_id, b.root) for b in network.batches[:len(anchored)]]
    session = cast(EscrowSession, client.session(session_id, "latest"))
    assert (session.energy_wh, session.settled_amount) == (order.energy_wh, order.amount)
    # Nothing was double-submitted: one successful transaction per subject that landed.
    statuses = [*network.retired, *(s.status() for s in network.submitters.values())]
    successful = sum(s["sends"] - s["rejected_sends"] for s in statuses)
    assert successful == len(anchored) + 1
    assert not any("conflict" in s["done"] for s in statuses)
    # A restart now hands the book's recent quorums to the submitter again (a quorum queued but
    # not persisted before a stop is not lost); those already on chain are not sent again.
    first = network.apps[KEYS[0].address]
    height = len(network.blocks)
    first.snapshot_path = tmp_path / "first.msgpack"
    first.write_snapshot(height, network.blocks[height].hash)
    again_app = network.make_app(KEYS[0].address)
    again_app.snapshot_path = first.snapshot_path
    stored = {h: types.SimpleNamespace(block=b) for h, b in network.blocks.items()}
    assert again_app.restore(height, stored.get) is not None
    restored = again_app.take_restored_quorums()
    assert {_key(cast("AnchorBatch | SettlementBatch", q.subject)) for q in restored} >= {1, 2, 3, 4, SETTLED}
    for quorum in restored:
        await network.submitters[KEYS[0].address].add(quorum)
    assert network.submitters[KEYS[0].address].pending() == []
    print(f"\nepoch change -> batches 1, 2 and the settlement on chain: {since_change:.2f} s "
          f"(submission rounds {landed:.2f} s after the re-collected quorums)")


SETTLED = b"settlement batch"  # _key of the test's one settlement batch


def _key(subject: AnchorBatch | SettlementBatch) -> int | bytes:
    return subject.batch_id if isinstance(subject, AnchorBatch) else SETTLED
