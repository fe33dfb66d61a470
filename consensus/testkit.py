"""A minimal deterministic ABCI application for tests, benchmarks and the harness node.

`HashChainApp` admits payloads up to 64 KiB, proposes them under a fixed app header, and
keeps state_h = keccak(state_{h-1} || payloadsHash_h); it has no snapshots. Test apps that
need other behaviour subclass it and override only what differs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from consensus.abci import CheckResult, FinalizeResult, Prepared, TxResult
from consensus.types import Block, CommitCertificate, CommittedBlock, Vote, VoteType
from primitives.eip712 import ZERO_HASH, Domain, SigningKey
from primitives.hashing import keccak256

HASH_CHAIN_HEADER = b"hashchain/v1"


def certify(block: Block, keys: list[SigningKey], domain: Domain, round: int = 0) -> CommittedBlock:
    """`block` with a commit certificate of precommits by `keys` (tests, benchmarks: a chain
    of certified blocks built without running consensus)."""
    votes = [Vote.sign(k, domain, VoteType.PRECOMMIT, block.height, round, block.hash) for k in keys]
    return CommittedBlock(block, CommitCertificate.from_votes(votes))


class CertifiedChain:
    """A chain of linked, certified blocks applied by `finalize(committed) -> app hash` as they
    are made (each header carries the app hash after the previous block, as consensus does)."""

    def __init__(self, finalize: Callable[[CommittedBlock], bytes], signers: list[SigningKey], domain: Domain,
                 start_ms: int = 1_700_000_000_000) -> None:
        self.finalize = finalize
        self.signers = signers
        self.domain = domain
        self.start_ms = start_ms
        self.blocks: list[CommittedBlock] = []
        self.app_hash = ZERO_HASH

    def add(self, payloads: tuple[bytes, ...], app_header: bytes) -> CommittedBlock:
        height = len(self.blocks) + 1
        prev = self.blocks[-1].block.hash if self.blocks else ZERO_HASH
        block = Block(height, self.start_ms + height * 1000, self.signers[0].address, prev, self.app_hash,
                      payloads, app_header)
        committed = certify(block, self.signers, self.domain)
        self.app_hash = self.finalize(committed)
        self.blocks.append(committed)
        return committed

    def records(self, from_height: int, to_height: int) -> list[bytes]:
        """Wire bytes of blocks from_height..to_height (a BlockStore's `records`)."""
        return [c.to_bytes() for c in self.blocks[max(0, from_height - 1):max(0, to_height)]]


class HashChainApp:
    """Deterministic test application: state_h = keccak(state_{h-1} || payloadsHash_h)."""

    def __init__(self) -> None:
        self.state = ZERO_HASH
        self.height = 0

    # consensus.abci.Application (the shell's only way in)
    def check_tx(self, payload: bytes) -> CheckResult:
        return CheckResult(len(payload) <= 65536, "payload too large")

    def propose_facts(self, height: int) -> Any:
        return None

    def prepare_proposal(self, height: int, payloads: tuple[bytes, ...], facts: Any) -> Prepared:
        return Prepared(HASH_CHAIN_HEADER, payloads)

    def fetch_facts(self, height: int, app_header: bytes, payloads: tuple[bytes, ...] = (),
                    *, committed: bool = False, block_ms: int | None = None) -> Any:
        return None

    def process_proposal(self, block: Any, facts: Any) -> bool:
        return bool(block.app_header == HASH_CHAIN_HEADER and all(len(p) <= 65536 for p in block.payloads))

    def finalize_block(self, block: Any, certificate: Any, facts: Any) -> FinalizeResult:
        assert block.height == self.height + 1, "blocks are applied in order"
        self.state = keccak256(self.state + block.payloads_hash)
        self.height = block.height
        return FinalizeResult(tuple(TxResult() for _ in block.payloads), self.state)

    def commit(self, height: int) -> None:
        pass

    def restore(self, last_height: int, get_block: Any) -> Any:
        return None

    def list_snapshots(self) -> Any:
        return ()

    def load_snapshot_chunk(self, height: int, format: int, index: int) -> bytes | None:
        return None

    def offer_snapshot(self, snapshot: Any, app_hash: bytes) -> bool:
        return False

    def apply_snapshot_chunk(self, index: int, chunk: bytes) -> bool | None:
        return False
