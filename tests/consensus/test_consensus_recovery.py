"""WAL, block store and Replica recovery: a crash at any point never leads to equivocation."""

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from consensus_testkit import DOMAIN, KEYS, OUTSIDER, TIMEOUTS, VALIDATORS, block, proposal, vote

from consensus.abci import (
    Application,
    CheckResult,
    FinalizeResult,
    Prepared,
    TxResult,
    ValidatorUpdate,
)
from consensus.core import (
    Broadcast,
    Commit,
    RequestProposal,
    ScheduleTimeout,
    SendTo,
    ValidateBlock,
)
from consensus.replica import Replica
from consensus.store import BlockStore, CatchUp, StoreError
from consensus.types import (
    CommitCertificate,
    CommittedBlock,
    ValidatorSet,
    Vote,
    VoteType,
    verify_certificate,
)
from consensus.wal import WriteAheadLog
from primitives.eip712 import ZERO_HASH, SigningKey
from primitives.hashing import keccak256


class Crash(Exception):
    pass


SPARES = sorted((SigningKey(keccak256(b"test-spare-%d" % i)) for i in range(3)), key=lambda k: k.address)
ALL_KEYS = [*KEYS, *SPARES]


class ChainApp:
    """A minimal ABCI application: a hash chain; at `change_height` it replaces `replace`
    genesis validators by spares (from change_height + 2)."""

    def __init__(self, change_height: Any=None, replace: Any=0) -> None:
        self.app_hash = ZERO_HASH
        self.height = 0
        self.change_height = change_height
        self.replace = replace

    def check_tx(self, payload: Any) -> CheckResult:
        return CheckResult(True)

    def propose_facts(self, height: Any) -> Any:
        return None

    def prepare_proposal(self, height: Any, payloads: Any, facts: Any) -> Prepared:
        return Prepared(b"", payloads)

    def fetch_facts(self, height: Any, app_header: Any, payloads: Any=(), *, committed: Any=False, block_ms: Any=None) -> Any:
        return None

    def process_proposal(self, block: Any, facts: Any) -> bool:
        return True

    def finalize_block(self, block: Any, certificate: Any, facts: Any) -> FinalizeResult:
        assert block.height == self.height + 1
        self.height = block.height
        self.app_hash = keccak256(self.app_hash + block.hash)
        update = None
        if block.height == self.change_height:
            members = [*KEYS[self.replace:], *SPARES[:self.replace]]
            update = ValidatorUpdate(block.height + 2, ValidatorSet.equal([k.address for k in members], 1),
                                     {k.address: str(ALL_KEYS.index(k)).encode() for k in members})
        return FinalizeResult(tuple(TxResult() for _ in block.payloads), self.app_hash, update)

    def commit(self, height: Any) -> None:
        pass

    def restore(self, last_height: Any, get_block: Any) -> None:
        return None


GENESIS_BINDINGS = {k.address: str(i).encode() for i, k in enumerate(KEYS)}


class Cluster:
    """Replicas on disk with FIFO delivery (4 validators + `spares` followers); node
    `crash_node` may crash at its k-th storage step. A node takes a message only from a peer
    bound in its replica's `bindings_in_force()` (the p2p directory's rule)."""

    def __init__(self, tmp_path: Path, crash_at: Any=None, durable: Any=False, spares: Any=0, change_height: Any=None, replace: Any=0,
                 crash_node: Any=0, empty_blocks: Any=True) -> None:
        self.tmp_path = tmp_path
        self.durable = durable
        self.crash_at = crash_at
        self.crash_node = crash_node
        self.change = (change_height, replace)
        self.empty_blocks = empty_blocks
        self.size = 4 + spares
        self.steps = 0
        self.crashes = 0
        self.refused = 0
        self.sent_votes: dict[tuple[Any, ...], bytes] = {}
        self.commits: dict[int, dict[int, bytes]] = {i: {} for i in range(self.size)}
        self.queue: deque[Any] = deque()
        self.timers: list[Any] = []
        self.now = 0
        self.seq = itertools.count()
        self.replicas = [self._open(i) for i in range(self.size)]
        for i in range(self.size):
            self._run(i, lambda r: r.start())

    def _hook(self, output: Any, phase: Any) -> None:
        self.steps += 1
        if self.crash_at is not None and self.steps == self.crash_at:
            raise Crash()

    def _open(self, i: Any) -> Replica:
        replica = Replica(ALL_KEYS[i], DOMAIN, VALIDATORS, self.tmp_path / f"n{i}", cast(Application, ChainApp(*self.change)),
                          genesis_bindings=GENESIS_BINDINGS, timeouts=TIMEOUTS, durable=self.durable,
                          fault_hook=self._hook if i == self.crash_node else None, create_empty_blocks=self.empty_blocks)
        for height in replica.replay_heights():
            replica.replay(height, None)
        return replica

    def _run(self, i: Any, call: Any) -> None:
        work = [call]
        while work:
            try:
                outputs = work.pop(0)(self.replicas[i])
                for output in outputs:
                    for follow in self._dispatch(i, output):
                        if isinstance(output, Commit):
                            work.insert(0, follow)  # finalize before anything else
                        else:
                            work.append(follow)
            except Crash:
                self.crashes += 1
                self.replicas[i].close()
                self.replicas[i] = self._open(i)
                work = [lambda r: r.start()]
                continue

    def _deliver(self, dst: Any, data: Any, src: Any) -> None:
        if str(src).encode() not in self.replicas[dst].bindings_in_force().values():
            self.refused += 1
            return
        self._run(dst, lambda r: r.handle_message(data, str(src)))

    def _dispatch(self, i: Any, output: Any) -> Iterator[Callable[[Replica], Any]]:
        if isinstance(output, Broadcast):
            message = output.message
            if isinstance(message, Vote) and message.validator == ALL_KEYS[i].address:
                slot = (i, message.vote_type, message.height, message.round)
                first = self.sent_votes.setdefault(slot, message.block_hash)
                assert first == message.block_hash, f"node {i} equivocated in {slot}"
            for j in range(self.size):
                if j != i:
                    self.queue.append((j, output.data, i))
        elif isinstance(output, SendTo):
            self.queue.append((int(output.peer), output.data, i))
        elif isinstance(output, ScheduleTimeout):
            heapq.heappush(self.timers, (self.now + output.duration_ms, next(self.seq), i, output.timeout))
        elif isinstance(output, RequestProposal):
            payload = b"h%d-r%d-n%d" % (output.height, output.round, i)
            yield lambda r: r.propose(output, (payload,), None, output.prev_timestamp_ms + 1)
        elif isinstance(output, ValidateBlock):
            yield lambda r: r.validate(output.block, None)
        elif isinstance(output, Commit):
            self.commits[i][output.block.height] = output.block.hash
            yield lambda r: r.finalize(output, None)[1]

    def run_until(self, height: Any, max_steps: Any=40_000) -> None:
        for _ in range(max_steps):
            if all(len(c) >= height for c in self.commits.values()):
                return
            if self.queue:
                dst, data, src = self.queue.popleft()
                self._deliver(dst, data, src)
            elif self.timers:
                self.now, _, i, timeout = heapq.heappop(self.timers)
                self._run(i, lambda r, t=timeout: r.handle_timeout(t))
        raise AssertionError(f"no progress to height {height}: {self.commits}")

    def close(self) -> None:
        for replica in self.replicas:
            replica.close()


def test_cluster_of_replicas_agrees(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, durable=True)
    cluster.run_until(3)
    chains = [[c[h] for h in (1, 2, 3)] for c in cluster.commits.values()]
    assert all(chain == chains[0] for chain in chains)
    store = cluster.replicas[2].store
    assert store.last_height() >= 3 and cast(CommittedBlock, store.get(2)).block.prev_block_hash == chains[0][0]
    assert len(cluster.replicas[2].block_records(1, 100)) == store.last_height()
    cluster.close()


def storage_steps_for_three_heights(tmp_path: Path) -> int:
    cluster = Cluster(tmp_path / "count")
    cluster.run_until(3)
    cluster.close()
    return cluster.steps


def test_crash_at_every_storage_step_never_equivocates(tmp_path: Path) -> None:
    total = storage_steps_for_three_heights(tmp_path)
    assert total > 20
    for crash_at in range(1, total):
        cluster = Cluster(tmp_path / f"crash{crash_at}", crash_at=crash_at)
        cluster.run_until(3)
        assert cluster.crashes == 1
        decided = {h: {c[h] for c in cluster.commits.values() if h in c} for h in (1, 2, 3)}
        assert all(len(hashes) == 1 for hashes in decided.values()), decided
        cluster.close()


def test_restart_resumes_at_the_next_height_with_old_votes(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    cluster.run_until(2)
    replica = cluster.replicas[0]
    height = replica.height
    wal_votes = [m for m in replica.wal.messages(height) if isinstance(m, Vote)
                 and m.validator == KEYS[0].address]
    replica.close()
    again = Replica(KEYS[0], DOMAIN, VALIDATORS, tmp_path / "n0", cast(Application, ChainApp()), timeouts=TIMEOUTS, durable=False)
    for h in again.replay_heights():
        again.replay(h, None)
    assert again.height == height and again.core.prev_block_hash == cluster.commits[0][height - 1]
    resent = [o.message for o in again.start() if isinstance(o, Broadcast)]
    assert all(v in resent for v in wal_votes)
    again.close()
    for other in cluster.replicas[1:]:
        other.close()


def test_wal_keeps_order_prunes_and_reopens(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "wal.sqlite")
    a = vote(KEYS[1], VoteType.PREVOTE, 5, 0, ZERO_HASH)
    p = proposal(block(5, timestamp=9), 0)
    b = vote(KEYS[0], VoteType.PRECOMMIT, 5, 0, ZERO_HASH)
    wal.append(a, own=False)
    wal.append(p, own=False)
    wal.append(b, own=True)
    wal.append(vote(KEYS[0], VoteType.PREVOTE, 4, 0, ZERO_HASH), own=True)
    assert wal.messages(5) == [a, p, b] and wal.synced == 2
    wal.prune_below(5)
    assert wal.count() == 3
    wal.close()
    assert WriteAheadLog(tmp_path / "wal.sqlite").messages(5) == [a, p, b]


def committed(b: Any, round: Any=0) -> CommittedBlock:
    votes = [vote(k, VoteType.PRECOMMIT, b.height, round, b.hash) for k in KEYS[:3]]
    return CommittedBlock(b, CommitCertificate.from_votes(votes))


def test_block_store_only_extends_the_chain(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "blocks.sqlite", durable=True)
    b1 = block()
    b2 = block(2, prev=b1.hash, timestamp=2000)
    with pytest.raises(StoreError):
        store.save(committed(b2))
    store.save(committed(b1))
    with pytest.raises(StoreError):
        store.save(committed(block(2, prev=b"\x05" * 32, timestamp=2000)))
    store.save(committed(b2))
    assert store.last_height() == 2 and cast(CommittedBlock, store.get(2)).block == b2 and store.get(3) is None
    assert store.records(1, 1000) == [committed(b1).to_bytes(), committed(b2).to_bytes()]
    store.save_validator_set(5, VALIDATORS)
    assert store.validator_sets() == [(5, VALIDATORS)]


def test_catch_up_hands_out_verified_blocks_in_order() -> None:
    helper = CatchUp(DOMAIN, max_buffered=4)
    b1 = block()
    b2 = block(2, prev=b1.hash, timestamp=2000)
    assert helper.offer(committed(b2), 1) and not helper.offer(committed(b2), 7)
    assert helper.take_next(1, ZERO_HASH, VALIDATORS) is None
    helper.offer(committed(b1), 1)
    assert helper.take_next(1, ZERO_HASH, VALIDATORS) == committed(b1)
    assert helper.take_next(2, b"\x09" * 32, VALIDATORS) is None  # does not link: discarded
    assert helper.rejected == 1 and len(helper) == 0


def test_replica_serves_block_requests_and_buffers_blocks_ahead(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    cluster.run_until(3)
    source = cluster.replicas[1]
    from consensus.types import BlockRequest

    served = source.handle_message(BlockRequest(1, 3).to_bytes(), "peer")
    blocks = [cast(CommittedBlock, o.message) for o in served if isinstance(o, SendTo)]
    assert [b.height for b in blocks] == [1, 2, 3]
    fresh = Replica(KEYS[3], DOMAIN, VALIDATORS, tmp_path / "fresh", cast(Application, ChainApp()), timeouts=TIMEOUTS,
                    durable=False)
    fresh.start()
    assert fresh.handle_committed_block(blocks[2]) == []  # ahead: buffered
    assert fresh.handle_committed_block(blocks[1]) == []
    out = fresh.handle_committed_block(blocks[0])
    for expected in (1, 2, 3):  # one Commit per call: each is finalized before the next is taken
        commits = [o for o in out if isinstance(o, Commit)]
        assert [c.block.height for c in commits] == [expected]
        _, out = fresh.finalize(commits[0], None)
    assert fresh.latest_height() == 3
    fresh.close()
    cluster.close()


def test_wal_replay_bound_keeps_every_own_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import consensus.wal

    monkeypatch.setattr(consensus.wal, "MAX_RECORDS_PER_HEIGHT", 2)
    wal = WriteAheadLog(tmp_path / "wal.sqlite", durable=False)
    mine = vote(KEYS[0], VoteType.PREVOTE, 1, 0, ZERO_HASH)
    wal.append(mine, own=True)
    received = [vote(KEYS[1], VoteType.PREVOTE, 1, r, ZERO_HASH) for r in range(5)]
    for message in received:
        wal.append(message, own=False)
    assert wal.messages(1) == [mine, *received[-2:]]


@pytest.mark.parametrize("replace", [2, 3])
def test_replacing_most_validators_keeps_committing(tmp_path: Path, replace: int) -> None:
    # The old set decides height change+1 with its own bindings; on the old code (only the
    # new set's bindings installed at the commit) removed validators' votes were refused and
    # replacing 2 of 4 halted forever.
    cluster = Cluster(tmp_path, spares=3, change_height=2, replace=replace)
    cluster.run_until(7)
    chains = {tuple(c[h] for h in range(1, 8)) for c in cluster.commits.values()}
    assert len(chains) == 1
    new_set = cluster.replicas[3].core.schedule.set_for(7)
    assert set(new_set.addresses) == {k.address for k in [*KEYS[replace:], *SPARES[:replace]]}
    for h in (5, 6, 7):  # certified by the new set
        verify_certificate(cast(CommittedBlock, cluster.replicas[3].store.get(h)).certificate, new_set, DOMAIN,
                           cast(CommittedBlock, cluster.replicas[3].store.get(h)).block.hash)
    cluster.close()


def test_crash_at_every_step_across_an_epoch_change_replacing_three_of_four(tmp_path: Path) -> None:
    def steps() -> int:
        c = Cluster(tmp_path / "count", spares=3, change_height=2, replace=3, crash_node=3)
        c.run_until(5)
        c.close()
        return c.steps
    total = steps()
    for crash_at in range(1, total, 3):
        cluster = Cluster(tmp_path / f"crash{crash_at}", crash_at=crash_at, spares=3, change_height=2,
                          replace=3, crash_node=3)
        cluster.run_until(5)
        assert cluster.crashes == 1
        decided = {h: {c[h] for c in cluster.commits.values() if h in c} for h in range(1, 6)}
        assert all(len(hashes) == 1 for hashes in decided.values()), decided
        # whatever the crash point, the restarted node knows the new set from height 4
        assert cluster.replicas[3].core.schedule.set_for(4).addresses != VALIDATORS.addresses
        cluster.close()


def test_block_and_its_validator_set_change_are_stored_together(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "blocks.sqlite", durable=True)
    b1 = block()
    new_set = ValidatorSet.equal([k.address for k in ALL_KEYS[2:6]], 1)
    store._db.execute("CREATE TRIGGER boom BEFORE INSERT ON validator_sets BEGIN SELECT RAISE(ABORT, 'disk'); END")
    with pytest.raises(Exception, match="disk"):  # a crash between the block and its set change
        store.save(committed(b1), (3, new_set, {}))
    assert store.last_height() == 0 and store.validator_sets() == []  # neither was kept
    store._db.execute("DROP TRIGGER boom")
    store.save(committed(b1), (3, new_set, {b"\x01" * 20: b"peer"}))
    assert store.last_height() == 1 and store.validator_changes() == [(3, new_set, {b"\x01" * 20: b"peer"})]
    store.close()


def test_an_idle_network_makes_no_block_until_a_node_wakes(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, empty_blocks=False)
    cluster.run_until(1)  # the first height after start always runs
    for _ in range(10_000):  # drain: nothing of height 2 happens by itself
        if cluster.queue:
            cluster._deliver(*cluster.queue.popleft())
        elif cluster.timers:
            cluster.now, _, i, timeout = heapq.heappop(cluster.timers)
            cluster._run(i, lambda r, t=timeout: r.handle_timeout(t))
        else:
            break
    assert not cluster.queue and not cluster.timers
    assert all(len(c) == 1 for c in cluster.commits.values()) and all(r.idle for r in cluster.replicas)
    cluster._run(2, lambda r: r.wake())  # e.g. payloads reached node 2's mempool
    cluster.run_until(2)  # its vote starts the height at the others too
    cluster.close()


def test_only_a_validators_vote_starts_an_idle_height(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, empty_blocks=False)
    cluster.run_until(1)
    replica = cluster.replicas[1]
    while not replica.idle:
        cluster._deliver(*cluster.queue.popleft())
    replica.handle_message(vote(OUTSIDER, VoteType.PREVOTE, replica.height, 0, ZERO_HASH).to_bytes(), "x")
    assert replica.idle
    out = replica.handle_message(vote(KEYS[2], VoteType.PREVOTE, replica.height, 0, ZERO_HASH).to_bytes(), "2")
    assert any(isinstance(o, ScheduleTimeout) for o in out) and not replica.idle
    cluster.close()
