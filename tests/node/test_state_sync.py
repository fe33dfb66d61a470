"""State sync over real libp2p hosts (in-process, loopback): a joining NodeApplication lists
offers, verifies the certificate of block S+1 against the validator set read from its chain,
fetches chunks from several peers and restores. Hostile peers: a tampered chunk (banned, the
chunk comes from another), a stalling peer (timed out, bounded), an oversized chunk (refused),
an offer whose app hash is not certified (refused). The chain is a fake (one layer)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from libp2p.abc import INetStream
from test_node_app import KEYS, VALIDATORS, StaticChain, event, make_app

import devsen.app as app_module
from consensus.abci import Snapshot
from consensus.core import Commit
from consensus.replica import BLOCKS_FILE, Replica
from consensus.store import BlockStore
from consensus.testkit import CertifiedChain, certify
from consensus.types import CommittedBlock, ValidatorSet
from devsen.app import NodeApplication, encode_app_header
from devsen.consensus_service import ServedSnapshots
from devsen.state_sync import (
    ChainReads,
    ChunkDir,
    StateSyncError,
    check_installed,
    join,
    save_joined,
    snapshot_chunk_hashes,
    verify_offer,
)
from p2p.framing import FrameReader, encode_frame
from p2p.host import HostConfig, RunningHost, open_host, parse_peer_addr
from p2p.keys import init_keys
from p2p.snapshots import (
    MAX_CHUNK_BYTES,
    MAX_STREAMS_PER_PEER,
    SNAPSHOT_PROTOCOL,
    ChunkFetcher,
    Offer,
    SnapshotServer,
    fetch_chunk,
    list_offers,
    trusted_offers,
)
from primitives.eip712 import Domain, SigningKey
from primitives.hashing import keccak256

NETWORK = b"\x5e" * 32
CONSENSUS = Domain(31337, b"\x05" * 20)
OUTSIDERS = [SigningKey(bytes([0x70 + i]) * 32) for i in range(4)]


@pytest.fixture(autouse=True)
def small_snapshots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "SNAPSHOT_EVERY_BLOCKS", 2)
    monkeypatch.setattr(app_module, "SNAPSHOT_CHUNK_BYTES", 256)  # several chunks per snapshot
    monkeypatch.setattr(app_module, "SNAPSHOTS_KEPT", 2)


def serving(tmp_path: Path, heights: int = 7) -> tuple[NodeApplication, CertifiedChain]:
    (tmp_path / "a").mkdir(exist_ok=True)
    app, _ = make_app(tmp_path / "a")
    app.snapshot_path = tmp_path / "a" / "app_snapshot.msgpack"
    def finalize(committed: CommittedBlock) -> bytes:
        block = committed.block
        facts = app.fetch_facts(block.height, block.app_header, block.payloads, committed=True)
        app_hash = app.finalize_block(block, committed.certificate, facts).app_hash
        app.commit(block.height)
        return app_hash

    chain = CertifiedChain(finalize, KEYS[:3], CONSENSUS)
    for h in range(1, heights + 1):
        chain.add((event(f"m{h}", "Heartbeat", {}),) if h > 1 else (event("m1"),),
                  encode_app_header(5, (5).to_bytes(32, "big")))
    return app, chain


class Source(ServedSnapshots):
    """A serving node's snapshots over the chain's blocks; `tamper` flips a bit of every chunk
    it serves, `oversize` serves chunks above the bound."""

    def __init__(self, app: NodeApplication, chain: CertifiedChain, tamper: bool = False,
                 oversize: bool = False) -> None:
        super().__init__(app.list_snapshots, app.load_snapshot_chunk,
                         chain.records)
        self.tamper, self.oversize = tamper, oversize
        self.chunk_requests = 0
        self.file_read_threads: set[str] = set()  # where the server read the snapshot files

    def snapshots(self) -> tuple[Snapshot, ...]:
        self.file_read_threads.add(threading.current_thread().name)
        return super().snapshots()

    def chunk(self, height: int, format: int, index: int) -> bytes | None:
        self.chunk_requests += 1
        self.file_read_threads.add(threading.current_thread().name)
        if self.oversize:
            return b"\x00" * (MAX_CHUNK_BYTES + 1)
        data = super().chunk(height, format, index)
        if data is not None and self.tamper:
            data = bytes([data[0] ^ 1]) + data[1:]
        return data


class StallingChunks(Source):
    """Offers honestly, then never answers a chunk request."""


def chain_reads(chain: StaticChain | None = None) -> ChainReads:
    chain = chain or StaticChain()
    return ChainReads(lambda: chain.head(), chain.block_hash, chain.validators_at)


def joiner(tmp_path: Path, name: str = "b") -> NodeApplication:
    (tmp_path / name).mkdir()
    app, _ = make_app(tmp_path / name, key=KEYS[1])
    return app


async def _stall(stream: INetStream) -> None:
    """A hostile server: answers nothing, holds the stream open."""
    try:
        await FrameReader(stream, 256).read_frame()
        await trio.sleep(3600)
    except Exception:  # the joiner gave up on us and reset the stream
        pass


def _stall_chunks(server: SnapshotServer) -> Any:
    async def handle(stream: INetStream) -> None:
        try:
            wire = await FrameReader(stream, 256).read_frame()
            if wire is None:
                return
            request = msgpack.unpackb(wire)
            if request[1] == "list":
                await stream.write(encode_frame(await server.answer(request), 1 << 24))
                await stream.close()
            else:
                await trio.sleep(3600)
        except Exception:  # the joiner gave up on us and reset the stream
            pass
    return handle


async def _run_join(tmp_path: Path, sources: list[Source | str], app: NodeApplication, **kwargs: Any) -> Any:
    """Start one host per source (a Source, or "stall"), a joining host dialing them all, join."""
    results: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        servers: list[RunningHost] = []

        async def serve(index: int, source: Source | str, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            async with open_host(init_keys(tmp_path / f"k{index}"), HostConfig()) as running:
                if isinstance(source, StallingChunks):
                    running.host.set_stream_handler(SNAPSHOT_PROTOCOL, _stall_chunks(SnapshotServer(running, NETWORK,
                                                                                                    source)))
                elif isinstance(source, Source):
                    SnapshotServer(running, NETWORK, source).install()
                else:
                    running.host.set_stream_handler(SNAPSHOT_PROTOCOL, _stall)
                servers.append(running)
                task_status.started()
                await trio.sleep_forever()

        for i, source in enumerate(sources):
            await nursery.start(serve, i, source)
        addrs = [s.listen_addrs()[0] for s in servers]
        async with open_host(init_keys(tmp_path / "kj"), HostConfig(bootstrap=tuple(addrs))) as me:
            peers = [parse_peer_addr(a).peer_id.to_bytes() for a in addrs]
            for info in (parse_peer_addr(a) for a in addrs):
                await me.host.connect(info)
            try:
                results["joined"] = await join(me, NETWORK, peers, app, CONSENSUS, chain_reads(),
                                               tmp_path / "statesync", **kwargs)
            except StateSyncError as exc:
                results["error"] = exc
            results["peers"] = peers
        nursery.cancel_scope.cancel()
    return results


def test_join_over_libp2p_survives_a_tampering_and_a_stalling_peer(tmp_path: Path) -> None:
    app, chain = serving(tmp_path)
    honest, tampering, stalling = Source(app, chain), Source(app, chain, tamper=True), StallingChunks(app, chain)
    b = joiner(tmp_path)

    async def main() -> Any:
        with trio.fail_after(60):
            return await _run_join(tmp_path, [tampering, "stall", stalling, honest], b, timeout_s=1.0)

    started = trio.run(lambda: _timed(main))
    results, elapsed = started
    assert "error" not in results, results
    trusted, report = results["joined"]
    assert trusted.height == 6 and report.height == 6
    assert b.app_state_hash() == chain.blocks[6].block.app_state_hash == app_hash_after(chain, 6)
    assert b._last_block == (6, chain.blocks[5].block.hash) and b.last_eth_block == 5
    tamper_peer, silent_peer, stall_peer, honest_peer = (p.hex() for p in results["peers"])
    assert "does not hash" in report.peers[tamper_peer].banned  # penalised at once
    assert silent_peer not in report.peers  # its list request timed out: it offered nothing
    assert report.peers[stall_peer].served == 0 and report.peers[stall_peer].strikes >= 1  # timeouts
    assert report.peers[honest_peer].served >= 1
    assert elapsed < 30  # the stall cost timeouts of 1 s, not the test's deadline
    # the joiner continues from the certified block S+1 and agrees with the network
    facts = b.fetch_facts(7, chain.blocks[6].block.app_header, chain.blocks[6].block.payloads, committed=True)
    assert b.finalize_block(chain.blocks[6].block, chain.blocks[6].certificate, facts).app_hash == chain.app_hash


async def _timed(main: Any) -> tuple[Any, float]:
    start = trio.current_time()
    result = await main()
    return result, trio.current_time() - start


def app_hash_after(chain: CertifiedChain, height: int) -> bytes:
    return chain.blocks[height].block.app_state_hash  # block height+1's header certifies it


def test_oversized_chunks_are_refused_and_the_peer_banned(tmp_path: Path) -> None:
    app, chain = serving(tmp_path)
    oversized, honest = Source(app, chain, oversize=True), Source(app, chain)
    b = joiner(tmp_path)
    results = trio.run(lambda: _run_join(tmp_path, [oversized, honest], b, timeout_s=5.0))
    trusted, report = results["joined"]
    assert "oversized" in report.peers[results["peers"][0].hex()].banned
    assert b.app_state_hash() == trusted.app_hash


def test_only_hostile_peers_leave_the_state_unchanged(tmp_path: Path) -> None:
    app, chain = serving(tmp_path)
    b = joiner(tmp_path)
    before = b.app_state_hash()
    results = trio.run(lambda: _run_join(tmp_path, [Source(app, chain, tamper=True), "stall"], b, timeout_s=0.5))
    assert "every peer is banned" in str(results["error"])
    assert b.app_state_hash() == before and b._last_block[0] == 0


def _offer(app: NodeApplication, chain: CertifiedChain) -> Offer:
    source = Source(app, chain)
    snapshot, records = trusted_offers(source.snapshots(), source.records)[0]
    return Offer(snapshot, tuple(records))


def test_offer_whose_app_hash_is_not_certified_is_refused(tmp_path: Path) -> None:
    app, chain = serving(tmp_path)
    offer = _offer(app, chain)
    reads = chain_reads()
    assert verify_offer(offer, CONSENSUS, reads).app_hash == offer.snapshot.app_hash
    # S+1 certified by keys outside the on-chain validator set (a forged certificate)
    forged_after = certify(chain.blocks[6].block, OUTSIDERS[:3], CONSENSUS)
    forged = dataclasses.replace(offer, records=(*offer.records[:2], forged_after.to_bytes()))
    with pytest.raises(ValueError, match="not a quorum"):
        verify_offer(forged, CONSENSUS, reads)
    # one honest signature is not a quorum of four
    thin = certify(chain.blocks[6].block, KEYS[:1], CONSENSUS)
    with pytest.raises(ValueError, match="not a quorum"):
        verify_offer(dataclasses.replace(offer, records=(*offer.records[:2], thin.to_bytes())), CONSENSUS, reads)
    # a snapshot claiming another app hash than block S+1 certifies
    other = dataclasses.replace(offer, snapshot=dataclasses.replace(offer.snapshot, app_hash=b"\x01" * 32))
    with pytest.raises(ValueError, match="certifies"):
        verify_offer(other, CONSENSUS, reads)
    # a well-certified S+1 whose header was altered on the wire: its certificate no longer fits
    certified_hash = chain.blocks[6].block.app_state_hash
    altered = offer.records[2].replace(certified_hash, offer.snapshot.app_hash[::-1])
    assert altered != offer.records[2]
    with pytest.raises(ValueError, match="does not decode"):
        verify_offer(dataclasses.replace(offer, records=(*offer.records[:2], altered)), CONSENSUS, reads)
    # blocks that do not link, or another height's
    with pytest.raises(ValueError, match="do not link|heights"):
        verify_offer(dataclasses.replace(offer, records=(offer.records[0], chain.blocks[2].to_bytes(),
                                                         offer.records[2])), CONSENSUS, reads)
    with pytest.raises(ValueError, match="S-1, S and S\\+1"):
        verify_offer(dataclasses.replace(offer, records=offer.records[1:]), CONSENSUS, reads)


def test_certifying_set_must_be_read_on_our_chain_within_the_trust_period(tmp_path: Path) -> None:
    app, chain = serving(tmp_path)
    offer = _offer(app, chain)
    fork = StaticChain()
    fork.block_hash = lambda number, fresh=False: b"\xff" * 32  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="not on our chain"):
        verify_offer(offer, CONSENSUS, chain_reads(fork))
    later = StaticChain(head=5 + 50_401)
    with pytest.raises(ValueError, match="trust period"):
        verify_offer(offer, CONSENSUS, chain_reads(later))
    # the validators who certified S+1 left the set on chain: their certificate counts no more
    moved = StaticChain()
    moved.epochs[1] = tuple(sorted(k.address for k in OUTSIDERS))
    with pytest.raises(ValueError, match="not a quorum"):
        verify_offer(offer, CONSENSUS, chain_reads(moved))


def test_restored_validator_set_is_checked_against_the_chain(tmp_path: Path) -> None:
    app, chain = serving(tmp_path)
    offer = _offer(app, chain)
    trusted = verify_offer(offer, CONSENSUS, chain_reads())
    b = joiner(tmp_path)
    assert b.offer_snapshot(offer.snapshot, trusted.app_hash)
    for i in range(offer.snapshot.chunks):
        chunk = app.load_snapshot_chunk(offer.snapshot.height, offer.snapshot.format, i)
        assert chunk is not None
        b.apply_snapshot_chunk(i, chunk)
    check_installed(b, trusted, chain_reads())
    b.validators = b.validators[:3]  # what a snapshot with a forged validator list would install
    with pytest.raises(StateSyncError, match="validator set"):
        check_installed(b, trusted, chain_reads())


def test_fetch_resumes_from_chunks_on_disk(tmp_path: Path) -> None:
    app, chain = serving(tmp_path)
    offer = _offer(app, chain)
    hashes = snapshot_chunk_hashes(offer.snapshot)[1:]
    store = ChunkDir(tmp_path / "statesync", offer.snapshot)
    for i in range(len(hashes) - 1):  # an earlier run got all but the last chunk
        chunk = app.load_snapshot_chunk(offer.snapshot.height, offer.snapshot.format, i)
        assert chunk is not None
        store.save(i, chunk)
    store.save(0, b"damaged on disk")  # a damaged file is fetched again
    b = joiner(tmp_path)
    source = Source(app, chain)
    results = trio.run(lambda: _run_join(tmp_path, [source], b))
    trusted, report = results["joined"]
    assert report.resumed_chunks == len(hashes) - 2 and source.chunk_requests == 2
    assert b.app_state_hash() == trusted.app_hash and not store.path.exists()


def test_fetcher_bounds_requests_per_peer_and_spreads_chunks() -> None:
    hashes = [keccak256(b"%d" % i) for i in range(40)]
    in_flight: dict[bytes, int] = {}
    peak: dict[bytes, int] = {}
    got: dict[int, bytes] = {}

    async def get(peer: bytes, index: int) -> bytes:
        in_flight[peer] = in_flight.get(peer, 0) + 1
        peak[peer] = max(peak.get(peer, 0), in_flight[peer])
        await trio.sleep(0.001)
        in_flight[peer] -= 1
        return b"%d" % index

    async def on_chunk(index: int, chunk: bytes) -> None:
        got[index] = chunk

    fetcher = ChunkFetcher([b"p1", b"p2", b"p3"], hashes, get, per_peer=2)
    trio.run(fetcher.run, on_chunk)
    assert sorted(got) == list(range(40)) and max(peak.values()) <= 2
    assert all(score.served > 0 for score in fetcher.scores.values())


def test_server_answers_only_its_network_and_bounds_requests(tmp_path: Path) -> None:
    app, chain = serving(tmp_path)
    source = Source(app, chain)

    async def main() -> None:
        async with open_host(init_keys(tmp_path / "ks"), HostConfig()) as server_host, \
                open_host(init_keys(tmp_path / "kc"), HostConfig()) as client:
            server = SnapshotServer(server_host, NETWORK, source)
            server.install()
            await client.host.connect(parse_peer_addr(server_host.listen_addrs()[0]))
            peer = server_host.peer_id.to_bytes()
            offers = await list_offers(client, NETWORK, peer)
            assert [o.snapshot.height for o in offers] == [6, 4]
            assert await fetch_chunk(client, NETWORK, peer, 6, offers[0].snapshot.format, 0)
            # the snapshot files are read in worker threads, never on the event loop
            assert source.file_read_threads and threading.main_thread().name not in source.file_read_threads
            with pytest.raises(Exception, match="closed|failed"):
                await list_offers(client, b"\x00" * 32, peer, timeout_s=2)  # another network's request
            # garbage of the right size, and an oversized request: the stream is reset
            for body in (b"\xc1" * 10, b"\x00" * 1000):
                stream = await client.host.new_stream(server_host.peer_id, [SNAPSHOT_PROTOCOL])
                await stream.write(encode_frame(body, 2000))
                assert await _read_or_reset(stream) is None
            assert server_host.drops.snapshot().get("snapshots_in/bad_request", 0) == 3
            # a peer holding MAX_STREAMS_PER_PEER requests open gets its next stream reset unread
            held = [await client.host.new_stream(server_host.peer_id, [SNAPSHOT_PROTOCOL])
                    for _ in range(MAX_STREAMS_PER_PEER)]
            for stream in held:
                await stream.write(b"\x05")  # a frame that never completes
            await trio.sleep(0.2)
            assert await _ask_once(client, server_host) is None
            assert server_host.drops.snapshot().get("snapshots_in/busy", 0) == 1

    trio.run(main)


async def _ask_once(client: RunningHost, server: RunningHost) -> bytes | None:
    """A list request on a new stream: the answer, or None if the stream was refused or reset."""
    try:
        stream = await client.host.new_stream(server.peer_id, [SNAPSHOT_PROTOCOL])
        await stream.write(encode_frame(msgpack.packb([NETWORK, "list"]), 256))
    except Exception:
        return None
    return await _read_or_reset(stream)


async def _read_or_reset(stream: INetStream) -> bytes | None:
    try:
        return await FrameReader(stream, 1 << 20).read_frame()
    except Exception:
        return None



def test_replica_opens_above_the_synced_snapshot_and_decides_the_next_block(tmp_path: Path) -> None:
    """save_joined + Replica: no replay from genesis; block S+1 comes by catch-up, is verified
    against the set of S+1 and applied; a restart of the joined node restores the same."""
    app, chain = serving(tmp_path)
    b = joiner(tmp_path)
    b.snapshot_path = tmp_path / "b" / "app_snapshot.msgpack"
    results = trio.run(lambda: _run_join(tmp_path, [Source(app, chain)], b, timeout_s=30.0))
    trusted, report = results["joined"]
    assert trusted.height == 6, report.refused_offers  # the newest snapshot (a loaded machine once fell back to 4)
    (tmp_path / "b" / "consensus").mkdir()
    store = BlockStore(tmp_path / "b" / "consensus" / BLOCKS_FILE)
    save_joined(trusted, b, store, ValidatorSet.equal(VALIDATORS))
    store.close()
    for attempt in range(2):  # the first open, then a restart
        fresh = joiner(tmp_path, f"b{attempt}")
        fresh.snapshot_path = b.snapshot_path
        replica = Replica(KEYS[1], CONSENSUS, ValidatorSet.equal(VALIDATORS), tmp_path / "b" / "consensus", fresh,
                          durable=False)
        assert replica.store.first_height() == 6 and fresh.app_state_hash() == trusted.app_hash
        if attempt == 0:
            assert replica.height == 7 and replica.app_hash == trusted.app_hash and not list(replica.replay_heights())
            outputs = replica.handle_committed_block(chain.blocks[6])
            commit = next(o for o in outputs if isinstance(o, Commit))
            block = commit.block
            facts = fresh.fetch_facts(block.height, block.app_header, block.payloads, committed=True)
            replica.finalize(commit, facts)
            assert replica.height == 8 and replica.app_hash == chain.app_hash
        else:  # restored from its own snapshot of S, block S+1 replayed from its store
            assert list(replica.replay_heights()) == [7]
            stored = replica.store.get(7)
            assert stored is not None
            replica.replay(7, fresh.fetch_facts(7, stored.block.app_header, stored.block.payloads, committed=True))
            assert replica.app_hash == chain.app_hash
        replica.close()


def test_forged_block_after_the_snapshot_is_refused_by_the_synced_replica(tmp_path: Path) -> None:
    app, chain = serving(tmp_path)
    b = joiner(tmp_path)
    b.snapshot_path = tmp_path / "b" / "app_snapshot.msgpack"
    trusted, _ = trio.run(lambda: _run_join(tmp_path, [Source(app, chain)], b))["joined"]
    (tmp_path / "b" / "consensus").mkdir()
    store = BlockStore(tmp_path / "b" / "consensus" / BLOCKS_FILE)
    save_joined(trusted, b, store, ValidatorSet.equal(VALIDATORS))
    store.close()
    replica = Replica(KEYS[1], CONSENSUS, ValidatorSet.equal(VALIDATORS), tmp_path / "b" / "consensus", b,
                      durable=False)
    forged = certify(chain.blocks[6].block, OUTSIDERS[:3], CONSENSUS)
    outputs = replica.handle_committed_block(forged)
    assert not any(isinstance(o, Commit) for o in outputs) and replica.height == 7
    replica.close()
