"""Mempool: bounds with a clear error, dedup, fair FIFO reaping, committed removal."""

import pytest

from consensus.mempool import Mempool, MempoolFull
from consensus.signing import keccak256
from consensus.types import MAX_PAYLOAD_BYTES


def test_dedup_and_membership():
    pool = Mempool(max_count=10)
    assert pool.add(b"a") is True
    assert pool.add(b"a") is False
    assert keccak256(b"a") in pool and len(pool) == 1 and pool.total_bytes == 1


def test_full_by_count_and_by_bytes_raises_and_keeps_everything():
    pool = Mempool(max_count=2, max_bytes=MAX_PAYLOAD_BYTES)
    pool.add(b"a")
    pool.add(b"b")
    with pytest.raises(MempoolFull, match="2 payloads"):
        pool.add(b"c")
    assert pool.reap(10, 100) == (b"a", b"b")
    by_bytes = Mempool(max_count=100, max_bytes=MAX_PAYLOAD_BYTES)
    by_bytes.add(b"x" * (MAX_PAYLOAD_BYTES - 1))
    with pytest.raises(MempoolFull, match="bytes"):
        by_bytes.add(b"yy")
    assert len(by_bytes) == 1


def test_bad_payloads_are_refused():
    pool = Mempool()
    with pytest.raises(ValueError):
        pool.add(b"")
    with pytest.raises(ValueError):
        pool.add(b"x" * (MAX_PAYLOAD_BYTES + 1))


def test_reap_is_fifo_per_source_and_round_robin_across_sources():
    pool = Mempool()
    for i in range(5):
        pool.add(b"flood-%d" % i, source="flooder")
    pool.add(b"quiet-0", source="quiet")
    pool.add(b"quiet-1", source="quiet")
    assert pool.reap(4, 10_000) == (b"flood-0", b"quiet-0", b"flood-1", b"quiet-1")
    assert pool.reap(100, 10_000)[-1] == b"flood-4"


def test_reap_respects_byte_limit_and_keeps_payloads_until_committed():
    pool = Mempool()
    pool.add(b"aaaa", source="s")
    pool.add(b"bb", source="s")
    pool.add(b"c", source="t")
    assert pool.reap(10, 5) == (b"aaaa", b"c")  # s's next payload would overflow: s stops
    assert len(pool) == 3
    assert pool.reap(0, 100) == ()


def test_committed_payloads_leave_and_are_not_taken_again():
    pool = Mempool(committed_memory=2)
    pool.add(b"a")
    pool.add(b"b")
    assert pool.remove_committed([b"a", b"zz"]) == 1
    assert pool.reap(10, 100) == (b"b",) and pool.total_bytes == 1
    assert pool.add(b"a") is False and pool.is_committed(keccak256(b"a"))
    pool.remove_committed([b"c", b"d"])  # memory of 2: "a" is forgotten
    assert pool.add(b"a") is True
