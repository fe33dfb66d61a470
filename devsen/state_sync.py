"""State sync: a joining node takes a peer's application snapshot instead of replaying blocks.

    offers  = list_offers(peer) for every peer                    (p2p/snapshots.py)
    trusted = verify_offer(offer, ...)   certificate + chain links + app hash, see below
    app.offer_snapshot(snapshot, trusted.app_hash)
    ChunkFetcher(peers offering it).run(apply each chunk)         (hash-checked per chunk)
    check_installed(app, trusted, ...)   validator set and Ethereum block against our chain

What is trusted, and why. A snapshot at height S is offered with the committed blocks
S-1, S and S+1. Block S+1's header carries `app_state_hash`, the application hash after S.
Its commit certificate must be a quorum of the validator set that decides S+1, and that set
is read from the chain, not from the peer: the consensus set of height h is the ValidatorSet
contract as the application read it at the Ethereum block named by block h-2's app header
(devsen/app.py `_follow_validator_set`: a change seen at h-2 takes effect at h). So the set
of S+1 is the contract at block S-1's Ethereum block, which must be on our own chain (number
and hash, our RPC) and no older than TRUST_PERIOD_ETH_BLOCKS below our head (a set that left
long ago may have sold its keys: the long-range attack; a node older than that needs a
trusted block from its operator). Blocks S-1 and S are tied to the certified S+1 by their
hashes (`prev_block_hash`). The restored ledger must hash to the certified app hash
(`NodeApplication.apply_snapshot_chunk`).

The certified app hash covers the whole application state: the ledger and the state beside
it (the validator set and epoch, `last_eth_block`, the anchor batcher and the open batch's
blocks, the attestation book), `app_hash = keccak(ledger hash || beside-ledger digest)`
(devsen/beside_ledger.py). A snapshot with any part doctored is refused before it is installed.
`check_installed` still compares the validator set, epoch and Ethereum read block with our own
chain (a second, independent check of what the certificate already binds).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import trio

from consensus.abci import Snapshot
from consensus.replica import BLOCKS_FILE
from consensus.store import BlockStore
from consensus.types import (
    CertificateError,
    CommittedBlock,
    ValidatorSet,
    WireError,
    decode_message,
    verify_certificate,
)
from devsen.app import NodeApplication, decode_app_header
from p2p.host import HostConfig, RunningHost, open_host
from p2p.keys import NodeKeys
from p2p.snapshots import (
    ChunkFetcher,
    Offer,
    PeerScore,
    SnapshotFetchError,
    fetch_chunk,
    list_offers,
)
from primitives.eip712 import Domain
from primitives.hashing import keccak256

log = logging.getLogger("devsen.state_sync")

# A snapshot whose certifying validator set was read at an Ethereum block more than this far
# below our head is refused (about a week of 12-second blocks).
TRUST_PERIOD_ETH_BLOCKS = 50_400

ValidatorsAt = Callable[[int, bytes], tuple[int, tuple[bytes, ...], dict[bytes, bytes]]]


class StateSyncError(Exception):
    """No offered snapshot could be verified and restored."""


@dataclass(frozen=True, slots=True)
class ChainReads:
    """What state sync reads from the joiner's own Ethereum RPC (never from a peer)."""

    head: Callable[[], int]
    block_hash: Callable[[int], bytes]  # our chain's hash of block `number`
    validators_at: ValidatorsAt  # (epoch, sorted addresses, peer bindings) at (number, hash)

    def validator_set(self, app_header: bytes, label: str) -> tuple[int, bytes, ValidatorSet, dict[bytes, bytes]]:
        """The ValidatorSet at the Ethereum block named by `app_header`; raises ValueError if that
        block is not on our chain or older than the trust period."""
        number, eth_hash = decode_app_header(app_header)
        if self.block_hash(number) != eth_hash:
            raise ValueError(f"{label} names Ethereum block {number} 0x{eth_hash.hex()}, not on our chain")
        head = self.head()
        if head - number > TRUST_PERIOD_ETH_BLOCKS:
            raise ValueError(f"{label} names Ethereum block {number}, {head - number} blocks below our head "
                             f"(trust period {TRUST_PERIOD_ETH_BLOCKS})")
        epoch, addresses, bindings = self.validators_at(number, eth_hash)
        if not addresses:
            raise ValueError(f"the ValidatorSet is empty at Ethereum block {number}")
        return number, eth_hash, ValidatorSet.equal(addresses, epoch), bindings


@dataclass(frozen=True, slots=True)
class TrustedSnapshot:
    """An offer whose app hash is certified: blocks S-1, S, S+1 and the set that decided S+1."""

    snapshot: Snapshot
    blocks: tuple[CommittedBlock, CommittedBlock, CommittedBlock]
    validators: ValidatorSet  # the set that certified S+1
    bindings: dict[bytes, bytes]

    @property
    def height(self) -> int:
        return self.snapshot.height

    @property
    def app_hash(self) -> bytes:
        return self.blocks[2].block.app_state_hash

    @property
    def base(self) -> CommittedBlock:
        """Block S: the first block of the joiner's store."""
        return self.blocks[1]


def snapshot_chunk_hashes(snapshot: Snapshot) -> tuple[bytes, ...]:
    """(block hash of S, chunk hashes...) from a NodeApplication snapshot's metadata; ValueError."""
    try:
        block_hash, hashes = msgpack.unpackb(snapshot.metadata)
        hashes = [bytes(h) for h in hashes]
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"snapshot metadata malformed: {exc}") from exc
    if not isinstance(block_hash, bytes) or snapshot.chunks != snapshot.chunks \
            or keccak256(b"".join(hashes)) != snapshot.hash:
        raise ValueError("snapshot metadata does not match the snapshot's hash")
    return (block_hash, *hashes)


def verify_offer(offer: Offer, domain: Domain, chain: ChainReads) -> TrustedSnapshot:
    """The offer's snapshot with its certified app hash (see the module docstring); raises
    ValueError naming what does not hold."""
    snapshot = offer.snapshot
    height = snapshot.height
    if height < 2 or len(offer.records) != 3:
        raise ValueError("an offer carries blocks S-1, S and S+1 (S >= 2)")
    blocks: list[CommittedBlock] = []
    for record in offer.records:
        try:
            committed = decode_message(record)
        except WireError as exc:
            raise ValueError(f"an offered block does not decode: {exc}") from exc
        if not isinstance(committed, CommittedBlock):
            raise ValueError("an offered record is not a committed block")
        blocks.append(committed)
    before, base, after = blocks
    if (before.height, base.height, after.height) != (height - 1, height, height + 1):
        raise ValueError(f"the offered blocks are not heights {height - 1}..{height + 1}")
    if base.block.prev_block_hash != before.block.hash or after.block.prev_block_hash != base.block.hash:
        raise ValueError("the offered blocks do not link")
    if snapshot_chunk_hashes(snapshot)[0] != base.block.hash:
        raise ValueError(f"the snapshot is not of block {height} the offer carries")
    _, _, validators, bindings = chain.validator_set(before.block.app_header, f"block {height - 1}")
    try:
        verify_certificate(after.certificate, validators, domain, after.block.hash)
    except CertificateError as exc:
        raise ValueError(f"block {height + 1}'s certificate is not a quorum of the set on chain: {exc}") from exc
    if after.block.app_state_hash != snapshot.app_hash:
        raise ValueError(f"the snapshot claims app hash 0x{snapshot.app_hash.hex()}, block {height + 1} "
                         f"certifies 0x{after.block.app_state_hash.hex()}")
    return TrustedSnapshot(snapshot, (before, base, after), validators, bindings)


def check_installed(app: NodeApplication, trusted: TrustedSnapshot, chain: ChainReads) -> None:
    """The restored validator set, epoch and Ethereum read block against our own chain (the app
    hash binds them too; this names the mismatch) (raises StateSyncError)."""
    number, _, validators, _ = chain.validator_set(trusted.base.block.app_header, f"block {trusted.height}")
    if app.last_eth_block != number:
        raise StateSyncError(f"the snapshot's Ethereum block {app.last_eth_block} is not block "
                             f"{trusted.height}'s ({number})")
    if tuple(sorted(app.validators)) != validators.addresses or app.epoch != validators.epoch:
        raise StateSyncError(f"the snapshot's validator set (epoch {app.epoch}) is not the chain's at Ethereum "
                             f"block {number} (epoch {validators.epoch})")


@dataclass(slots=True)
class JoinReport:
    """How a join went (figures for people and the benchmark)."""

    height: int = 0
    chunks: int = 0
    resumed_chunks: int = 0
    bytes: int = 0
    seconds: float = 0.0
    refused_offers: list[str] = field(default_factory=list)
    peers: dict[str, PeerScore] = field(default_factory=dict)


class ChunkDir:
    """Verified chunks of one snapshot on disk, so an interrupted fetch resumes."""

    def __init__(self, root: Path, snapshot: Snapshot) -> None:
        self.path = root / snapshot.hash.hex()

    def load(self, hashes: Sequence[bytes]) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        if not self.path.is_dir():
            return found
        for index, expected in enumerate(hashes):
            try:
                data = (self.path / f"{index:05d}").read_bytes()
            except OSError:
                continue
            if keccak256(data) == expected:
                found[index] = data
        return found

    def save(self, index: int, chunk: bytes) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        temporary = self.path / f"{index:05d}.tmp"
        temporary.write_bytes(chunk)
        os.replace(temporary, self.path / f"{index:05d}")

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


async def gather_offers(running: RunningHost, network_id: bytes, peers: Sequence[bytes],
                        timeout_s: float) -> dict[bytes, list[Offer]]:
    """Every peer's offers, asked concurrently; a peer that fails offers nothing."""
    found: dict[bytes, list[Offer]] = {}

    async def ask(peer: bytes) -> None:
        try:
            found[peer] = await list_offers(running, network_id, peer, timeout_s)
        except SnapshotFetchError as exc:
            log.info("state sync: no offers from a peer: %s", exc)

    async with trio.open_nursery() as nursery:
        for peer in peers:
            nursery.start_soon(ask, peer)
    return found


async def _fetch_and_apply(app: NodeApplication, snapshot: Snapshot, peers: list[bytes],
                           get: Callable[[bytes, int], Any], store: ChunkDir, report: JoinReport,
                           per_peer: int, deadline_s: float) -> str | None:
    """Resume from `store`, fetch the missing chunks, apply each; None once restored, else why not."""
    hashes = snapshot_chunk_hashes(snapshot)[1:]
    outcome: list[bool | None] = [None]
    applying = trio.Lock()  # one chunk at a time into the application (the last one installs the state)

    async def take(index: int, chunk: bytes, save: bool = True) -> None:
        if save:
            store.save(index, chunk)
        report.bytes += len(chunk)
        async with applying:
            if outcome[0] is True:  # installed already: a late chunk changes nothing
                return
            outcome[0] = await trio.to_thread.run_sync(app.apply_snapshot_chunk, index, chunk)

    resumed = store.load(hashes)
    for index, chunk in resumed.items():
        await take(index, chunk, save=False)
    report.resumed_chunks = len(resumed)
    fetcher = ChunkFetcher(peers, hashes, get, per_peer=per_peer, have=set(resumed))
    try:
        if len(resumed) < snapshot.chunks:
            await fetcher.run(take, deadline_s)
    except SnapshotFetchError as exc:
        return str(exc)
    finally:
        report.peers.update({peer.hex(): score for peer, score in fetcher.scores.items()})
    if outcome[0] is not True:
        store.remove()
        return "the restored state does not hash to the certified app hash"
    return None


async def join(running: RunningHost, network_id: bytes, peers: Sequence[bytes], app: NodeApplication,
               domain: Domain, chain: ChainReads, work_dir: Path, *, per_peer: int = 2,
               timeout_s: float = 10.0, deadline_s: float = 600.0) -> tuple[TrustedSnapshot, JoinReport]:
    """Restore `app` from the newest snapshot peers offer that verifies (module docstring).

    Raises StateSyncError when none restores (the app is then unchanged), or when a restored
    snapshot's validator set is not the chain's (`check_installed`: the app then holds that
    state and must not be used; nothing is persisted before the caller saves it)."""
    started = time.perf_counter()
    report = JoinReport()
    offers = await gather_offers(running, network_id, peers, timeout_s)
    by_snapshot: dict[tuple[int, bytes], list[tuple[bytes, Offer]]] = {}
    for peer, peer_offers in offers.items():
        for offer in peer_offers:
            by_snapshot.setdefault((offer.snapshot.height, offer.snapshot.hash), []).append((peer, offer))
    for (height, _), offered in sorted(by_snapshot.items(), key=lambda item: -item[0][0]):
        trusted: TrustedSnapshot | None = None
        for _, offer in offered:
            try:
                trusted = await trio.to_thread.run_sync(verify_offer, offer, domain, chain)
                break
            except Exception as exc:  # hostile offers and chain read failures alike: try the next
                report.refused_offers.append(f"height {height}: {exc}")
                log.warning("state sync: snapshot offer at height %d refused: %s", height, exc)
        if trusted is None:
            continue
        snapshot = trusted.snapshot
        if not app.offer_snapshot(snapshot, trusted.app_hash):
            report.refused_offers.append(f"height {height}: the application refused the offer")
            continue

        async def get(peer: bytes, index: int, *, height: int = height, format: int = snapshot.format) -> bytes:
            return await fetch_chunk(running, network_id, peer, height, format, index, timeout_s)

        store = ChunkDir(work_dir, snapshot)
        problem = await _fetch_and_apply(app, snapshot, [peer for peer, _ in offered], get, store, report,
                                         per_peer, deadline_s)
        if problem is not None:
            report.refused_offers.append(f"height {height}: {problem}")
            log.warning("state sync: the snapshot at height %d is not restored: %s", height, problem)
            continue
        await trio.to_thread.run_sync(check_installed, app, trusted, chain)
        store.remove()
        report.height, report.chunks = height, snapshot.chunks
        report.seconds = time.perf_counter() - started
        log.info("state sync: restored height %d (%d chunks, %.1f MB) in %.1f s", height, snapshot.chunks,
                 report.bytes / 1e6, report.seconds)
        return trusted, report
    raise StateSyncError("no offered snapshot could be verified and restored: "
                         + ("; ".join(report.refused_offers) or "no peer offered one"))


def save_joined(trusted: TrustedSnapshot, app: NodeApplication, store: BlockStore, genesis: ValidatorSet) -> None:
    """Persist a restored join: the app's snapshot of block S, block S as the store's base, and
    the validator sets of S+1 (certified it) and S+2 (the restored app's, checked on chain)
    where their epoch moved past the one before (`genesis`: the set the Replica is opened
    with), so a Replica opened on `store` restores S and decides S+1 on (consensus/replica.py)."""
    app.write_snapshot(trusted.height, trusted.base.block.hash)
    store.save_base(trusted.base)
    last = genesis
    if trusted.validators.epoch > last.epoch:
        store.save_validator_set(trusted.height + 1, trusted.validators, trusted.bindings)
        last = trusted.validators
    after = ValidatorSet.equal(app.validators, app.epoch)
    if after.epoch > last.epoch:
        store.save_validator_set(trusted.height + 2, after)


def _ephemeral(listen: str) -> str:
    """The multiaddr `listen` with port 0 (its IP kept): `/ip4/127.0.0.1/tcp/4001` -> `.../tcp/0`."""
    parts = listen.split("/")
    return "/".join(parts[:-1] + ["0"]) if len(parts) >= 5 and parts[-2] == "tcp" else listen


async def _connected_peers(running: RunningHost, wait_s: float) -> list[bytes]:
    """Peers with a live connection once the bootstrap dials had `wait_s` to succeed."""
    network: Any = running.host.get_network()
    with trio.move_on_after(wait_s):
        while not any(any(not c.is_closed for c in conns) for conns in network.connections.values()):
            await trio.sleep(0.1)
        await trio.sleep(0.5)  # let the other bootstrap dials land too
    return [peer.to_bytes() for peer, conns in network.connections.items() if any(not c.is_closed for c in conns)]


def sync_before_start(keys: NodeKeys, host: HostConfig, network_id: bytes, app: NodeApplication, domain: Domain,
                      chain: ChainReads, consensus_dir: Path, genesis: ValidatorSet, *,
                      deadline_s: float = 600.0) -> JoinReport | None:
    """`p2p.state_sync`: if the block store under `consensus_dir` is empty, join by state sync
    from the bootstrap peers on a host of its own, persist the result (`save_joined`) and
    return the report; None if the store has blocks. Raises StateSyncError (the node must not
    start on a state it could not verify).

    That host has a throwaway libp2p identity and an ephemeral port (snapshots are served to
    any peer and verified by content): peers that dial the node's own peer id meanwhile must
    not reach a host without the consensus protocols (their links and gossip mesh to the node
    would break until they gave up on it)."""
    consensus_dir.mkdir(parents=True, exist_ok=True)
    store = BlockStore(consensus_dir / BLOCKS_FILE)
    try:
        if store.last_height():
            return None

        async def main() -> tuple[TrustedSnapshot, JoinReport]:
            throwaway = NodeKeys(libp2p_seed=secrets.token_bytes(32), validator=keys.validator)
            async with open_host(throwaway, dataclasses.replace(host, listen=_ephemeral(host.listen))) as running:
                peers = await _connected_peers(running, 30.0)
                if not peers:
                    raise StateSyncError("state sync: no bootstrap peer answered within 30 s")
                return await join(running, network_id, peers, app, domain, chain, consensus_dir / "statesync",
                                  deadline_s=deadline_s)

        trusted, report = trio.run(main)
        save_joined(trusted, app, store, genesis)
        return report
    finally:
        store.close()
