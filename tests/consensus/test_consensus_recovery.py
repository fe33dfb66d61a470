"""WAL, block store and Replica recovery: a crash at any point never leads to equivocation."""

import heapq
import itertools
from collections import deque

import pytest
from consensus_testkit import DOMAIN, KEYS, TIMEOUTS, VALIDATORS, block, proposal, vote

from consensus.core import (
    Broadcast,
    Commit,
    ProposalContent,
    RequestProposal,
    ScheduleTimeout,
    SendTo,
    ValidateBlock,
)
from consensus.replica import Replica
from consensus.signing import ZERO_HASH
from consensus.store import BlockStore, CatchUp, StoreError
from consensus.types import CommitCertificate, CommittedBlock, Vote, VoteType
from consensus.wal import WriteAheadLog


class Crash(Exception):
    pass


class Cluster:
    """Four Replicas on disk with FIFO delivery; node 0 may crash at its k-th storage step."""

    def __init__(self, tmp_path, crash_at=None, durable=False):
        self.tmp_path = tmp_path
        self.durable = durable
        self.crash_at = crash_at
        self.steps = 0
        self.crashes = 0
        self.sent_votes: dict[tuple, bytes] = {}
        self.commits: dict[int, dict[int, bytes]] = {i: {} for i in range(4)}
        self.queue: deque = deque()
        self.timers: list = []
        self.now = 0
        self.seq = itertools.count()
        self.replicas = [self._open(i) for i in range(4)]
        for i in range(4):
            self._run(i, lambda r: r.start())

    def _hook(self, output, phase):
        self.steps += 1
        if self.crash_at is not None and self.steps == self.crash_at:
            raise Crash()

    def _open(self, i):
        return Replica(KEYS[i], DOMAIN, VALIDATORS, self.tmp_path / f"n{i}", timeouts=TIMEOUTS,
                       durable=self.durable, fault_hook=self._hook if i == 0 else None)

    def _run(self, i, call):
        work = [call]
        while work:
            try:
                outputs = work.pop(0)(self.replicas[i])
            except Crash:
                self.crashes += 1
                self.replicas[i].close()
                self.replicas[i] = self._open(i)
                work = [lambda r: r.start()]
                continue
            for output in outputs:
                work.extend(self._dispatch(i, output))

    def _dispatch(self, i, output):
        replica = self.replicas[i]
        if isinstance(output, Broadcast):
            message = output.message
            if isinstance(message, Vote) and message.validator == KEYS[i].address:
                slot = (i, message.vote_type, message.height, message.round)
                first = self.sent_votes.setdefault(slot, message.block_hash)
                assert first == message.block_hash, f"node {i} equivocated in {slot}"
            for j in range(4):
                if j != i:
                    self.queue.append((j, output.data, i))
        elif isinstance(output, SendTo):
            self.queue.append((int(output.peer), output.data, i))
        elif isinstance(output, ScheduleTimeout):
            heapq.heappush(self.timers, (self.now + output.duration_ms, next(self.seq), i, output.timeout))
        elif isinstance(output, RequestProposal):
            content = ProposalContent((b"h%d-r%d-n%d" % (output.height, output.round, i),), b"",
                                      output.prev_timestamp_ms + 1, ZERO_HASH)
            yield lambda r: r.handle_proposal_content(output.height, output.round, content)
        elif isinstance(output, ValidateBlock):
            yield lambda r: r.handle_validation_result(output.block.hash, True)
        elif isinstance(output, Commit):
            assert output.block.height == replica.store.last_height()  # stored before returned
            self.commits[i][output.block.height] = output.block.hash

    def run_until(self, height, max_steps=20_000):
        for _ in range(max_steps):
            if all(len(c) >= height for c in self.commits.values()):
                return
            if self.queue:
                dst, data, src = self.queue.popleft()
                self._run(dst, lambda r, d=data, s=src: r.handle_message(d, str(s)))
            elif self.timers:
                self.now, _, i, timeout = heapq.heappop(self.timers)
                self._run(i, lambda r, t=timeout: r.handle_timeout(t))
        raise AssertionError(f"no progress to height {height}: {self.commits}")

    def close(self):
        for replica in self.replicas:
            replica.close()


def test_cluster_of_replicas_agrees(tmp_path):
    cluster = Cluster(tmp_path, durable=True)
    cluster.run_until(3)
    chains = [[c[h] for h in (1, 2, 3)] for c in cluster.commits.values()]
    assert all(chain == chains[0] for chain in chains)
    store = cluster.replicas[2].store
    assert store.last_height() >= 3 and store.get(2).block.prev_block_hash == chains[0][0]
    assert len(cluster.replicas[2].block_records(1, 100)) == store.last_height()
    cluster.close()


def storage_steps_for_three_heights(tmp_path):
    cluster = Cluster(tmp_path / "count")
    cluster.run_until(3)
    cluster.close()
    return cluster.steps


def test_crash_at_every_storage_step_never_equivocates(tmp_path):
    total = storage_steps_for_three_heights(tmp_path)
    assert total > 20
    for crash_at in range(1, total):
        cluster = Cluster(tmp_path / f"crash{crash_at}", crash_at=crash_at)
        cluster.run_until(3)
        assert cluster.crashes == 1
        decided = {h: {c[h] for c in cluster.commits.values() if h in c} for h in (1, 2, 3)}
        assert all(len(hashes) == 1 for hashes in decided.values()), decided
        cluster.close()


def test_restart_resumes_at_the_next_height_with_old_votes(tmp_path):
    cluster = Cluster(tmp_path)
    cluster.run_until(2)
    replica = cluster.replicas[0]
    height = replica.height
    wal_votes = [m for m in replica.wal.messages(height) if isinstance(m, Vote)
                 and m.validator == KEYS[0].address]
    replica.close()
    again = Replica(KEYS[0], DOMAIN, VALIDATORS, tmp_path / "n0", timeouts=TIMEOUTS, durable=False)
    assert again.height == height and again.core.prev_block_hash == cluster.commits[0][height - 1]
    resent = [o.message for o in again.start() if isinstance(o, Broadcast)]
    assert all(v in resent for v in wal_votes)
    again.close()
    for other in cluster.replicas[1:]:
        other.close()


def test_wal_keeps_order_prunes_and_reopens(tmp_path):
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


def committed(b, round=0):
    votes = [vote(k, VoteType.PRECOMMIT, b.height, round, b.hash) for k in KEYS[:3]]
    return CommittedBlock(b, CommitCertificate.from_votes(votes))


def test_block_store_only_extends_the_chain(tmp_path):
    store = BlockStore(tmp_path / "blocks.sqlite", durable=True)
    b1 = block()
    b2 = block(2, prev=b1.hash, timestamp=2000)
    with pytest.raises(StoreError):
        store.save(committed(b2))
    store.save(committed(b1))
    with pytest.raises(StoreError):
        store.save(committed(block(2, prev=b"\x05" * 32, timestamp=2000)))
    store.save(committed(b2))
    assert store.last_height() == 2 and store.get(2).block == b2 and store.get(3) is None
    assert store.records(1, 1000) == [committed(b1).to_bytes(), committed(b2).to_bytes()]
    store.save_validator_set(5, VALIDATORS)
    assert store.validator_sets() == [(5, VALIDATORS)]


def test_catch_up_hands_out_verified_blocks_in_order():
    helper = CatchUp(DOMAIN, max_buffered=4)
    b1 = block()
    b2 = block(2, prev=b1.hash, timestamp=2000)
    assert helper.offer(committed(b2), 1) and not helper.offer(committed(b2), 7)
    assert helper.take_next(1, ZERO_HASH, VALIDATORS) is None
    helper.offer(committed(b1), 1)
    assert helper.take_next(1, ZERO_HASH, VALIDATORS) == committed(b1)
    assert helper.take_next(2, b"\x09" * 32, VALIDATORS) is None  # does not link: discarded
    assert helper.rejected == 1 and len(helper) == 0


def test_replica_serves_block_requests_and_buffers_blocks_ahead(tmp_path):
    cluster = Cluster(tmp_path)
    cluster.run_until(3)
    source = cluster.replicas[1]
    from consensus.types import BlockRequest

    served = source.handle_message(BlockRequest(1, 3).to_bytes(), "peer")
    blocks = [o.message for o in served if isinstance(o, SendTo)]
    assert [b.height for b in blocks] == [1, 2, 3]
    fresh = Replica(KEYS[3], DOMAIN, VALIDATORS, tmp_path / "fresh", timeouts=TIMEOUTS, durable=False)
    fresh.start()
    assert fresh.handle_committed_block(blocks[2]) == []  # ahead: buffered
    assert fresh.handle_committed_block(blocks[1]) == []
    out = fresh.handle_committed_block(blocks[0])
    assert [o.block.height for o in out if isinstance(o, Commit)] == [1]
    out = fresh.poll()
    assert [o.block.height for o in out if isinstance(o, Commit)] == [2]
    out = fresh.poll()
    assert [o.block.height for o in out if isinstance(o, Commit)] == [3]
    assert fresh.latest_height() == 3
    fresh.close()
    cluster.close()


def test_wal_replay_bound_keeps_every_own_record(tmp_path, monkeypatch):
    import consensus.wal

    monkeypatch.setattr(consensus.wal, "MAX_RECORDS_PER_HEIGHT", 2)
    wal = WriteAheadLog(tmp_path / "wal.sqlite", durable=False)
    mine = vote(KEYS[0], VoteType.PREVOTE, 1, 0, ZERO_HASH)
    wal.append(mine, own=True)
    received = [vote(KEYS[1], VoteType.PREVOTE, 1, r, ZERO_HASH) for r in range(5)]
    for message in received:
        wal.append(message, own=False)
    assert wal.messages(1) == [mine, *received[-2:]]
