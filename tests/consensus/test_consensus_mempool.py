"""Mempool: bounds with a clear error, dedup, fair FIFO reaping, committed removal."""

from typing import Any

import pytest

from consensus.mempool import Mempool, MempoolFull
from consensus.types import MAX_PAYLOAD_BYTES
from primitives.hashing import keccak256


def test_dedup_and_membership() -> None:
    pool = Mempool(max_count=10)
    assert pool.add(b"a") is True
    assert pool.add(b"a") is False
    assert keccak256(b"a") in pool and len(pool) == 1 and pool.total_bytes == 1


def test_full_by_count_and_by_bytes_raises_and_keeps_everything() -> None:
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


def test_bad_payloads_are_refused() -> None:
    pool = Mempool()
    with pytest.raises(ValueError):
        pool.add(b"")
    with pytest.raises(ValueError):
        pool.add(b"x" * (MAX_PAYLOAD_BYTES + 1))


def test_reap_is_fifo_per_source_and_round_robin_across_sources() -> None:
    pool = Mempool()
    for i in range(5):
        pool.add(b"flood-%d" % i, source="flooder")
    pool.add(b"quiet-0", source="quiet")
    pool.add(b"quiet-1", source="quiet")
    assert pool.reap(4, 10_000) == (b"flood-0", b"quiet-0", b"flood-1", b"quiet-1")
    assert pool.reap(100, 10_000)[-1] == b"flood-4"


def test_reap_respects_byte_limit_and_keeps_payloads_until_committed() -> None:
    pool = Mempool()
    pool.add(b"aaaa", source="s")
    pool.add(b"bb", source="s")
    pool.add(b"c", source="t")
    assert pool.reap(10, 5) == (b"aaaa", b"c")  # s's next payload would overflow: s stops
    assert len(pool) == 3
    assert pool.reap(0, 100) == ()


def test_committed_payloads_leave_and_are_not_taken_again() -> None:
    pool = Mempool(committed_memory=2)
    pool.add(b"a")
    pool.add(b"b")
    assert pool.remove_committed([b"a", b"zz"]) == 1
    assert pool.reap(10, 100) == (b"b",) and pool.total_bytes == 1
    assert pool.add(b"a") is False and pool.is_committed(keccak256(b"a"))
    pool.remove_committed([b"c", b"d"])  # memory of 2: "a" is forgotten
    assert pool.add(b"a") is True


# -- per-source shares: a flood refuses or evicts only the flooder ---------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def test_a_flooder_that_filled_the_pool_is_evicted_for_an_honest_source_and_then_refused() -> None:
    pool = Mempool(max_count=10)
    for i in range(10):
        pool.add(b"junk-%d" % i, source="flooder")  # an idle pool may be filled by anyone
    assert pool.add(b"honest-0", source="honest") is True  # old code: MempoolFull
    assert pool.add(b"mine-0", source="local") is True
    assert len(pool) == 10 and pool.evicted == {"flooder": 2}
    assert pool.usage("flooder") == (8, 8 * len(b"junk-0"))
    # the newest junk went first; the flooder's oldest payloads keep their turn
    assert keccak256(b"junk-0") in pool and keccak256(b"junk-9") not in pool
    # fair share with 3 active sources is 10 // 3 = 3: the flooder, at 8, is refused
    with pytest.raises(MempoolFull, match="'flooder' holds its share"):
        pool.add(b"junk-more", source="flooder")
    assert pool.add(b"honest-1", source="honest") and pool.add(b"honest-2", source="honest")
    with pytest.raises(MempoolFull, match="'honest' holds its share"):
        pool.add(b"honest-3", source="honest")  # honest sources are bounded the same way
    assert pool.usage("honest") == (3, 24)


def test_byte_shares_evict_a_flooder_of_large_payloads() -> None:
    pool = Mempool(max_count=1000, max_bytes=2 * MAX_PAYLOAD_BYTES)
    pool.add(b"a" * MAX_PAYLOAD_BYTES, source="flooder")
    pool.add(b"b" * (MAX_PAYLOAD_BYTES - 10), source="flooder")
    assert pool.add(b"small honest payload", source="honest") is True
    assert pool.evicted == {"flooder": 1} and pool.total_bytes <= pool.max_bytes
    with pytest.raises(MempoolFull, match="bytes"):
        pool.add(b"c" * MAX_PAYLOAD_BYTES, source="flooder")


def test_local_submissions_are_never_evicted_only_refused_at_their_share() -> None:
    pool = Mempool(max_count=4)
    for i in range(4):
        pool.add(b"mine-%d" % i, source="local")
    with pytest.raises(MempoolFull, match="no source holds more than its share"):
        pool.add(b"peer-0", source="peer")  # the only source over its share is protected
    assert len(pool) == 4 and pool.evicted == {}
    with pytest.raises(MempoolFull, match="'local' holds its share"):
        pool.add(b"mine-4", source="local")


def test_refusal_changes_nothing() -> None:
    pool = Mempool(max_count=3)
    for i in range(3):
        pool.add(b"x-%d" % i, source="s")
    before = pool.reap(10, 10_000)
    with pytest.raises(MempoolFull):
        pool.add(b"x-3", source="s")
    assert pool.reap(10, 10_000) == before and pool.evicted == {} and pool.total_bytes == 9


def test_committed_removal_keeps_per_source_accounting() -> None:
    pool = Mempool(max_count=4)
    pool.add(b"a1", source="a")
    pool.add(b"b1", source="b")
    pool.remove_committed([b"a1"])
    assert pool.usage("a") == (0, 0) and pool.usage("b") == (1, 2) and pool.evicted == {}
    assert pool.fair_share("a") == (2, pool.max_bytes // 2)


SOURCES = ["flooder-1", "flooder-2", "honest", "local"]


@settings(max_examples=200, deadline=None)
@given(
    max_count=st.integers(4, 40),
    flood=st.lists(st.tuples(st.sampled_from(["flooder-1", "flooder-2"]), st.integers(1, 300)), max_size=300),
    honest_at=st.lists(st.integers(0, 300), max_size=40),
    commits=st.lists(st.integers(0, 300), max_size=10),
)
def test_property_an_honest_sources_share_survives_any_flood(max_count: Any, flood: Any, honest_at: Any, commits: Any) -> None:
    """Whatever two flooders send, and in whatever order, an honest peer and this node that
    each stay within bound / (number of sources) are never refused and never lose a payload."""
    max_bytes = 4 * MAX_PAYLOAD_BYTES
    pool = Mempool(max_count=max_count, max_bytes=max_bytes)
    quota_count = max_count // len(SOURCES)
    honest_size = max(1, min(64, max_bytes // len(SOURCES) // max(1, quota_count)))
    honest_slots = sorted(honest_at)[:quota_count]
    mine: list[bytes] = []
    sent = 0
    step_commits = set(commits)
    for step, (flooder, size) in enumerate(flood):
        while honest_slots and honest_slots[0] <= step:
            honest_slots.pop(0)
            for source in ("honest", "local"):
                sent += 1
                payload = b"%s-%d-" % (source.encode(), sent) + b"h" * honest_size
                payload = payload[:honest_size] if len(payload) > honest_size else payload
                assert pool.add(payload, source=source) is True  # never MempoolFull
                mine.append(payload)
        junk = (b"%s-%d-" % (flooder.encode(), step)).ljust(min(size * 100, MAX_PAYLOAD_BYTES), b"j")
        try:
            pool.add(junk, source=flooder)
        except MempoolFull:
            pass
        if step in step_commits:  # a block commits some junk: accounting stays consistent
            pool.remove_committed(pool.reap(3, MAX_PAYLOAD_BYTES))
            mine = [p for p in mine if not pool.is_committed(keccak256(p))]
        assert len(pool) <= max_count and pool.total_bytes <= max_bytes
        assert all(keccak256(p) in pool for p in mine), "an honest payload was evicted"
    assert set(pool.evicted) <= {"flooder-1", "flooder-2"}


def test_one_source_never_holds_more_than_its_cap_even_in_a_roomy_pool() -> None:
    pool = Mempool(max_count=1000, max_per_source=10)
    for i in range(10):
        pool.add(b"flood-%d" % i, source="0xbyz")
    with pytest.raises(MempoolFull, match="its maximum of 10"):
        pool.add(b"flood-more", source="0xbyz")
    assert pool.usage("0xbyz")[0] == 10 and len(pool) == 10  # the pool is far from full
    assert pool.add(b"honest", source="0xhonest")  # another source is unaffected
    for i in range(20):  # this node's own submissions are bounded by the pool, not the cap
        pool.add(b"local-%d" % i, source="local")
    assert pool.usage("local")[0] == 20


def test_reap_takes_at_most_a_share_of_each_source_and_the_rest_wait() -> None:
    pool = Mempool(max_count=1000)
    flood = [b"flood-%03d" % i for i in range(100)]
    for payload in flood:
        pool.add(payload, source="0xbyz")
    pool.add(b"honest-1", source="0xhonest")
    pool.add(b"honest-2", source="local")
    block = pool.reap(50, 10**6, per_source=8)
    assert sum(p.startswith(b"flood") for p in block) == 8
    assert b"honest-1" in block and b"honest-2" in block
    pool.remove_committed(block)
    assert len(pool) == 92  # the flooder's later payloads still wait, in order
    assert pool.reap(50, 10**6, per_source=8) == tuple(flood[8:16])
