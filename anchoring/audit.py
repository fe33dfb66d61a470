"""`devsen audit`: check charger events and blocks against the chain, trusting no node.

    devsen audit verify EVENT_ID --node URL --rpc URL [--deployment FILE] [--confirmations N]
    devsen audit replay --from H --to H --node URL --rpc URL [--deployment FILE] [--confirmations N]

`verify` fetches the proof document of one event from one node (anchoring/AUDIT.md),
recomputes the event id and the leaf from the event bytes, walks the Merkle proof
locally, reads the batch root from the Anchor contract at the RPC (and asks the
contract's own `verifyInclusion`), recomputes the block hash from the header and payload
hashes and checks the commit certificate against the validators in force at that height,
read from the ValidatorSet contract's epoch history (below).
`replay` does the same for every block of a height range and recomputes the root of
every batch covering it from the blocks' events. Each check prints PASS or FAIL; the
exit code is 0 when all pass, 1 when any fails, 3 when (replay) some blocks are not yet
anchored, 2 for bad usage or an unreachable node or RPC.

Which set certifies height h: a set change the application commits at height H (the
ValidatorSet epoch at the Ethereum block H names differs from the previous one) is used by
consensus from H + SET_SWITCH_DELAY (devsen/consensus_service.py). So the set at h >= 3 is the
epoch in force at the Ethereum block named by block h-2 (`ValidatorSet.epochAtBlock`), whose
header is fetched from the node and hash-linked to block h; heights 1 and 2 use epoch 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anchoring.attestations import AnchorBatch
from anchoring.batches import batch_event_ids
from anchoring.merkle import MerkleProof, MerkleTree, leaf_hash, root_from_proof
from anchoring.proofs import (
    PROOF_FORMAT,
    batch_block,
    batch_from_json,
    block_from_document,
    canonical_events_in_payload,
    certificate_from_json,
    hex0x,
    unhex,
)
from consensus.types import (
    Block,
    CertificateError,
    CommitCertificate,
    ValidatorSet,
    block_hash,
    payloads_hash_of,
    verify_certificate,
)
from ocpp_adapter.events import ChargerEvent, EventEncodingError
from ocpp_adapter.vouching import ingress_domain, recovered_voucher, vouch_problem
from primitives.eip712 import Domain
from primitives.hashing import keccak256

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PENDING = 0, 1, 2, 3
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
MAX_REPLAY_BLOCKS = 10_000
SET_SWITCH_DELAY = 2  # a set change committed at height H certifies from H + 2 (consensus_service)
# The application switches its own set (the one vouches are checked against in block validation)
# at the end of height H, so the vouches of block h are judged by the epoch block h-1 names.
VOUCH_SET_DELAY = 1
MAX_CACHED_EPOCHS = 1024
APP_HEADER_VERSION = 1  # the app header is msgpack [1, eth block number, eth block hash] (devsen/app.py)
HTTP_TIMEOUT_S = 15.0


class AuditUnavailable(Exception):
    """The node or the RPC could not be asked (not a verdict about the data)."""


@dataclass(frozen=True, slots=True)
class Check:
    """One verified (or failed) property, with what was compared."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


class ChainReader:
    """Read-only view of the Anchor and ValidatorSet contracts at one RPC (web3).

    Reads are made `confirmations` blocks below the chain head, so a root counts only once
    it is that deep (0: the head).
    """

    def __init__(self, w3: Any, anchor_address: bytes, confirmations: int = 0) -> None:
        from web3 import Web3

        from contracts import load_artifact

        if confirmations < 0:
            raise ValueError("confirmations must be >= 0")
        self.w3 = w3
        self.chain_id = int(w3.eth.chain_id)
        self.anchor_address = anchor_address
        self.confirmations = confirmations
        self.anchor = w3.eth.contract(address=Web3.to_checksum_address(anchor_address),
                                      abi=load_artifact("Anchor")["abi"])
        if not w3.eth.get_code(self.anchor.address):
            raise AuditUnavailable(f"no contract at Anchor address {hex0x(anchor_address)} on chain {self.chain_id}")
        self.validator_set_address = bytes.fromhex(self.anchor.functions.validatorSet().call()[2:])
        self._deployed_at: int | None = None  # a block at which the Anchor contract was seen deployed
        self._validators: ValidatorSet | None = None
        self._epochs: dict[int, ValidatorSet] = {}
        self.validator_set = w3.eth.contract(address=Web3.to_checksum_address(self.validator_set_address),
                                             abi=load_artifact("ValidatorSet")["abi"])

    def operators_at(self, eth_block: int) -> tuple[bytes, ...]:
        """The operators registered in the ValidatorSet (`operators()`) in the state of Ethereum
        block `eth_block`: the full nodes whose vouches a block naming it may carry (none on a
        contract without the registry)."""
        try:
            return tuple(bytes.fromhex(a[2:]) for a in
                         self.validator_set.functions.operators().call(block_identifier=eth_block))
        except Exception:  # no registry in this deployment, or the RPC refused the read: none
            return ()

    @property
    def block(self) -> int:
        """The block all contract reads are made at now: `confirmations` below the head."""
        return max(0, int(self.w3.eth.block_number) - self.confirmations)

    def _read_block(self) -> int | None:
        """`block`, or None if the Anchor contract does not exist yet at that block."""
        block = self.block
        if self._deployed_at is None or block < self._deployed_at:
            if not self.w3.eth.get_code(self.anchor.address, block):
                return None
            self._deployed_at = block
        return block

    def batch(self, batch_id: int) -> AnchorBatch | None:
        """The anchored batch `batch_id`, or None if not anchored (at the confirmation depth)."""
        from web3.exceptions import ContractLogicError

        block = self._read_block()
        if block is None or batch_id >= self.anchor.functions.nextBatchId().call(block_identifier=block):
            return None
        try:
            root, first, last, count = self.anchor.functions.batch(batch_id).call(block_identifier=block)
        except ContractLogicError:  # UnknownBatch: the node behind the RPC answered at another state
            return None
        return AnchorBatch(batch_id, bytes(root), first, last, count)

    def next_first_height(self) -> int:
        block = self._read_block()
        return 0 if block is None else int(self.anchor.functions.nextFirstHeight().call(block_identifier=block))

    def verify_inclusion(self, batch_id: int, event_id: bytes, proof: MerkleProof) -> bool:
        block = self._read_block()
        return block is not None and bool(self.anchor.functions.verifyInclusion(
            batch_id, event_id, list(proof.siblings), proof.directions).call(block_identifier=block))

    def validators(self) -> ValidatorSet:
        """The ValidatorSet contract's current validators (read once per audit)."""
        if self._validators is None:
            addresses = [bytes.fromhex(a[2:]) for a in self.validator_set.functions.validators().call()]
            self._validators = ValidatorSet.equal(addresses)
        return self._validators

    def _history_block(self) -> int:
        """The block the epoch history is read at (`block`); ValueError before the deployment."""
        block = self._read_block()
        if block is None:
            raise ValueError(f"the contracts do not exist yet at block {self.block} ({self.confirmations} "
                             "confirmations)")
        return block

    def epoch_at(self, eth_block: int) -> int:
        """The ValidatorSet epoch in force in the state of Ethereum block `eth_block`."""
        return int(self.validator_set.functions.epochAtBlock(eth_block).call(block_identifier=self._history_block()))

    def epoch_validators(self, epoch: int) -> ValidatorSet:
        """The validators of `epoch` from the contract's history (cached, bounded)."""
        if epoch not in self._epochs:
            if len(self._epochs) >= MAX_CACHED_EPOCHS:
                self._epochs.clear()
            addresses = self.validator_set.functions.epochValidators(epoch).call(
                block_identifier=self._history_block())
            self._epochs[epoch] = ValidatorSet.equal([bytes.fromhex(a[2:]) for a in addresses], epoch)
        return self._epochs[epoch]

    def validators_in_force(self, set_block: int | None) -> ValidatorSet:
        """The set certifying a height whose block two below named Ethereum block `set_block`
        (None: heights 1 and 2, certified by epoch 0)."""
        return self.epoch_validators(0 if set_block is None else self.epoch_at(set_block))

    @property
    def consensus_domain(self) -> Domain:
        return Domain(self.chain_id, self.validator_set_address)


def eth_block_of(app_header: bytes) -> int:
    """The Ethereum block number a block's app header names; ValueError unless canonical."""
    import msgpack

    try:
        fields = msgpack.unpackb(app_header, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ValueError(f"app header is not msgpack: {exc}") from exc
    if (not isinstance(fields, list) or len(fields) != 3 or fields[0] != APP_HEADER_VERSION
            or not isinstance(fields[1], int) or isinstance(fields[1], bool) or fields[1] < 0
            or not isinstance(fields[2], bytes) or len(fields[2]) != 32
            or msgpack.packb(fields, use_bin_type=True) != app_header):
        raise ValueError("app header is not [1, eth block number, 32-byte eth block hash]")
    return fields[1]


BlockLoader = Callable[[int], "Block | None"]


def set_block_for(height: int, prev_block_hash: bytes, load: BlockLoader,
                  delay: int = SET_SWITCH_DELAY) -> int | None:
    """The Ethereum block whose epoch certifies `height` (None: epoch 0), from the headers of
    blocks height-1 .. height-`delay`, which must hash-link to `prev_block_hash`. ValueError
    if the node does not serve them or they do not link. `delay` is SET_SWITCH_DELAY for
    commit certificates and VOUCH_SET_DELAY for the vouch (the application's own set)."""
    if height <= delay:
        return None
    expected = prev_block_hash
    ancestor: Block | None = None
    for below in range(height - 1, height - delay - 1, -1):
        ancestor = load(below)
        if ancestor is None:
            raise ValueError(f"the node does not serve block {below}")
        if ancestor.height != below or ancestor.hash != expected:
            raise ValueError(f"block {below} does not hash-link to block {below + 1}")
        expected = ancestor.prev_block_hash
    assert ancestor is not None
    return eth_block_of(ancestor.app_header)


def check_certificate(chain: ChainReader, block_hash: bytes, certificate: CommitCertificate,
                      set_block: int | None = None) -> Check:
    """The certificate is a quorum of precommits for `block_hash` by the validators in force
    at its height: the epoch of Ethereum block `set_block` (see `set_block_for`)."""
    validators = chain.validators_in_force(set_block)
    source = (f"epoch {validators.epoch} of the ValidatorSet at {hex0x(chain.validator_set_address)}"
              f" (in force at Ethereum block {set_block if set_block is not None else 'of deployment'})")
    try:
        signers = verify_certificate(certificate, validators, chain.consensus_domain, block_hash)
    except CertificateError as exc:
        return Check("commit certificate", False, f"{exc} (checked against {source})")
    return Check("commit certificate", True,
                 f"{len(signers)} of {len(validators.addresses)} validators of {source} precommitted block "
                 f"{hex0x(block_hash)} at round {certificate.round}")


def _certificate_check(chain: ChainReader, block_hash: bytes, height: int,
                       prev_block_hash: bytes, certificate: CommitCertificate, load: BlockLoader | None) -> Check:
    """check_certificate with the set in force at `height` found through `load`."""
    try:
        if load is None and height > SET_SWITCH_DELAY:
            raise ValueError("no way to fetch the blocks below it")
        set_block = set_block_for(height, prev_block_hash, load or (lambda _: None))
        return check_certificate(chain, block_hash, certificate, set_block)
    except ValueError as exc:
        return Check("commit certificate", False, f"cannot tell which validator set certifies block {height}: {exc}")


def block_loader(fetch: Callable[[str], Any]) -> BlockLoader:
    """Blocks by height from a node's `/v1/blocks/{height}` (None if missing or malformed)."""
    cache: dict[int, Block | None] = {}

    def load(height: int) -> Block | None:
        if height not in cache:
            if len(cache) >= MAX_REPLAY_BLOCKS:
                cache.clear()
            try:
                cache[height] = block_from_document(fetch(f"/v1/blocks/{height}")["block"])
            except (KeyError, TypeError, ValueError, AuditUnavailable):
                cache[height] = None
        return cache[height]

    return load


def _vouch_check(event: ChargerEvent, chain: ChainReader, height: int, prev_block_hash: bytes,
                 load: BlockLoader | None, eth_block: int | None = None) -> Check:
    """Who vouched for the event (the recovered ingress signer), and whether it was a validator
    of the set that judged block `height`'s vouches: the epoch block height-1 names (found,
    hash-linked, through `load`), as in block validation; never today's set. Else, whether it
    was an operator registered at `eth_block`, the Ethereum block the event's own block names
    (a full node accepting chargers; block validation reads the registry there)."""
    domain = ingress_domain(Domain(chain.chain_id, chain.anchor_address))
    signer = recovered_voucher(event, domain)
    who = f"vouched for by 0x{signer.hex()}" if isinstance(signer, bytes) else "no voucher"
    try:
        if load is None and height > VOUCH_SET_DELAY:
            raise ValueError("no way to fetch the block below it")
        set_block = set_block_for(height, prev_block_hash, load or (lambda _: None), VOUCH_SET_DELAY)
        validators = chain.validators_in_force(set_block)
    except ValueError as exc:
        return Check("vouch", False, f"{who}, but which validator set judged block {height} is unknown: {exc}")
    problem = vouch_problem(event, domain, validators.addresses, signer)
    if problem is not None and isinstance(signer, bytes) and eth_block is not None \
            and vouch_problem(event, domain, chain.operators_at(eth_block), signer) is None:
        return Check("vouch", True, f"{who} over connection 0x{event.connection_id.hex()} (an operator registered "
                     f"at Ethereum block {eth_block}, not a validator: a full node; it authenticated the charger)")
    return Check("vouch", problem is None, f"{who} over connection 0x{event.connection_id.hex()}"
                 + (f": {problem} (epoch {validators.epoch})" if problem
                    else f" (a validator of epoch {validators.epoch}; it authenticated the charger)"))


def _block_hash_from_proof(block: dict[str, Any]) -> bytes:
    """Block hash of SIGNING.md from header fields and payload hashes (no payload bytes)."""
    payloads_hash = payloads_hash_of([unhex(h, 32) for h in block["payload_hashes"]])
    return block_hash(int(block["height"]), int(block["timestamp_ms"]), unhex(block["proposer"], 20),
                      unhex(block["prev_block_hash"], 32), unhex(block["app_state_hash"], 32), payloads_hash,
                      keccak256(unhex(block["app_header"])))


def verify_event(document: dict[str, Any], event_id: bytes, chain: ChainReader,
                 load: BlockLoader | None = None) -> list[Check]:
    """All checks of `audit verify` on one proof document; `load` fetches the two blocks below
    the event's block (their headers say which validator set certifies it)."""
    checks: list[Check] = []
    try:
        if not isinstance(document, dict) or document.get("format") != PROOF_FORMAT:
            raise ValueError(f"not a {PROOF_FORMAT} document")
        event_bytes = unhex(document["event_bytes"])
        proof = MerkleProof(tuple(unhex(s, 32) for s in document["proof"]), int(document["directions"]))
        batch = batch_from_json(document["batch"])
        block = document["block"]
        certificate = certificate_from_json(document["certificate"])
        payload = unhex(block["payload"])
        payload_index = int(block["payload_index"])
        height = int(block["height"])
        hashes = [unhex(h, 32) for h in block["payload_hashes"]]
        block_hash = _block_hash_from_proof(block)
        prev_block_hash = unhex(block["prev_block_hash"], 32)
        claimed_chain = document.get("anchor", {}).get("chain_id")
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        return [Check("proof document", False, f"malformed: {exc}")]

    recomputed_id = keccak256(event_bytes)
    checks.append(Check("event id", recomputed_id == event_id,
                        f"keccak256(event bytes) = {hex0x(recomputed_id)}, asked for {hex0x(event_id)}"))
    try:
        event = ChargerEvent.from_bytes(event_bytes)
        checks.append(Check("event bytes", True, f"canonical ChargerEvent {event.action} from charger "
                            f"{event.charger_id!r}, message {event.message_id!r}, received by {event.ingress_node!r}"))
        try:
            own_eth_block: int | None = eth_block_of(unhex(block["app_header"]))
        except (KeyError, TypeError, ValueError):
            own_eth_block = None
        checks.append(_vouch_check(event, chain, height, prev_block_hash, load, own_eth_block))
    except EventEncodingError as exc:
        checks.append(Check("event bytes", False, f"not a canonical ChargerEvent: {exc}"))
    leaf = leaf_hash(recomputed_id)
    checks.append(Check("leaf", hex0x(leaf) == document.get("leaf"), f"H(0x00 || event id) = {hex0x(leaf)}"))
    local_root = root_from_proof(recomputed_id, proof)
    checks.append(Check("merkle proof (local)", local_root == batch.root,
                        f"{len(proof.siblings)} siblings lead to {hex0x(local_root)}; batch {batch.batch_id}"
                        f" claims root {hex0x(batch.root)}"))

    if claimed_chain is not None and claimed_chain != chain.chain_id:
        checks.append(Check("chain id", False, f"the node anchors on chain {claimed_chain}, the RPC is chain "
                            f"{chain.chain_id}"))
    on_chain = chain.batch(batch.batch_id)
    if on_chain is None:
        depth = f" at least {chain.confirmations} blocks deep" if chain.confirmations else ""
        checks.append(Check("root on chain", False, f"batch {batch.batch_id} is not anchored{depth} at Anchor "
                            f"{hex0x(chain.anchor_address)} on chain {chain.chain_id}"))
    else:
        checks.append(Check("root on chain", on_chain.root == local_root,
                            f"Anchor.batch({batch.batch_id}).root = {hex0x(on_chain.root)}"))
        checks.append(Check("batch range", on_chain == batch,
                            f"on chain: heights {on_chain.first_height}..{on_chain.last_height}, "
                            f"{on_chain.event_count} events"))
        checks.append(Check("contract verifyInclusion", chain.verify_inclusion(batch.batch_id, recomputed_id, proof),
                            "the Anchor contract's own check of the same proof"))

    checks.append(Check("block in batch", batch.first_height <= height <= batch.last_height,
                        f"block {height} in heights {batch.first_height}..{batch.last_height}"))
    in_block = (0 <= payload_index < len(hashes) and hashes[payload_index] == keccak256(payload)
                and event_bytes in canonical_events_in_payload(payload))
    checks.append(Check("event in block", in_block, f"payload #{payload_index} of block {height} carries the event"))
    checks.append(Check("block hash", hex0x(block_hash) == block.get("hash") and certificate.height == height,
                        f"recomputed {hex0x(block_hash)} from the header and {len(hashes)} payload hashes"))
    checks.append(_certificate_check(chain, block_hash, height, prev_block_hash, certificate, load))
    return checks


def replay(fetch: Callable[[str], Any], chain: ChainReader, first: int, last: int) -> tuple[list[Check], list[int]]:
    """Checks of `audit replay` over heights first..last; also returns the heights not yet anchored."""
    checks: list[Check] = []
    blocks: dict[int, Block] = {}
    claimed_batch: dict[int, int | None] = {}
    raw = block_loader(fetch)

    def ancestor(height: int) -> Block | None:
        return blocks.get(height) or raw(height)

    def load(height: int) -> Block | None:
        if height in blocks:
            return blocks[height]
        document = fetch(f"/v1/blocks/{height}")
        try:
            block = block_from_document(document["block"])
            certificate = certificate_from_json(document["certificate"])
            batch_id = document["batch_id"]
            if batch_id is not None and (not isinstance(batch_id, int) or isinstance(batch_id, bool)):
                raise ValueError(f"batch_id {batch_id!r} is not an integer")
        except (KeyError, TypeError, ValueError) as exc:
            checks.append(Check(f"block {height}", False, f"malformed block document: {exc}"))
            return None
        claimed_batch[height] = batch_id
        certificate_check = _certificate_check(chain, block.hash, block.height, block.prev_block_hash,
                                               certificate, ancestor)
        checks.append(Check(f"block {height}", certificate_check.ok and block.height == height,
                            f"hash {hex0x(block.hash)}; {certificate_check.detail}"))
        blocks[height] = block
        return block

    for height in range(first, last + 1):
        load(height)
    for height in range(first + 1, last + 1):
        if height in blocks and height - 1 in blocks:
            linked = blocks[height].prev_block_hash == blocks[height - 1].hash
            checks.append(Check(f"link {height - 1}->{height}", linked, "prev_block_hash matches"))

    anchored_up_to = chain.next_first_height() - 1
    pending = [h for h in range(first, last + 1) if h > anchored_up_to]
    batch_ids = sorted({b for h, b in claimed_batch.items() if b is not None and h <= anchored_up_to})
    for batch_id in batch_ids:
        on_chain = chain.batch(batch_id)
        if on_chain is None:
            checks.append(Check(f"batch {batch_id}", False, "the node names it, but it is not anchored"))
            continue
        if on_chain.last_height - on_chain.first_height + 1 > MAX_REPLAY_BLOCKS:
            checks.append(Check(f"batch {batch_id}", False, f"range exceeds {MAX_REPLAY_BLOCKS} blocks"))
            continue
        range_blocks = [load(h) for h in range(on_chain.first_height, on_chain.last_height + 1)]
        if any(b is None for b in range_blocks):
            checks.append(Check(f"batch {batch_id}", False, "some of its blocks could not be read"))
            continue
        ids = batch_event_ids([batch_block(b, canonical_events_in_payload) for b in range_blocks if b is not None])
        root = MerkleTree(ids).root
        claims = {claimed_batch.get(h) for h in range(on_chain.first_height, on_chain.last_height + 1)}
        ok = root == on_chain.root and len(ids) == on_chain.event_count and claims == {batch_id}
        checks.append(Check(f"batch {batch_id}", ok,
                            f"heights {on_chain.first_height}..{on_chain.last_height}: {len(ids)} events, recomputed"
                            f" root {hex0x(root)}, on chain {hex0x(on_chain.root)} ({on_chain.event_count} events)"))
    return checks, pending


def http_fetcher(node: str) -> Callable[[str], Any]:
    base = node.rstrip("/")

    def fetch(path: str) -> Any:
        url = base + path
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
                body = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            detail = exc.read(4096).decode(errors="replace")
            raise AuditUnavailable(f"GET {url}: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise AuditUnavailable(f"GET {url}: {exc}") from exc
        if len(body) > MAX_RESPONSE_BYTES:
            raise AuditUnavailable(f"GET {url}: response larger than {MAX_RESPONSE_BYTES} bytes")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise AuditUnavailable(f"GET {url}: not JSON: {exc}") from exc

    return fetch


def _claimed_anchor(document: Any) -> str | None:
    """The Anchor address a node's document names ("0x" + 40 hex digits), or None."""
    anchor = document.get("anchor") if isinstance(document, dict) else None
    contract = anchor.get("contract") if isinstance(anchor, dict) else None
    if isinstance(contract, str) and len(contract) == 42 and contract.startswith("0x"):
        try:
            bytes.fromhex(contract[2:])
            return contract.lower()
        except ValueError:
            return None
    return None


def _anchor_address(args: argparse.Namespace, claimed: str | None) -> tuple[bytes, str]:
    """The Anchor address to trust and where it came from."""
    if args.deployment:
        from anchoring.chain.deploy import Deployment

        deployment = Deployment.load(Path(args.deployment))
        return unhex(deployment.anchor.lower(), 20), f"deployment file {args.deployment}"
    if claimed is None:
        raise AuditUnavailable("the node did not name an Anchor contract; pass --deployment FILE")
    return unhex(claimed, 20), "the node (pass --deployment FILE to pin the contract yourself)"


def _chain(args: argparse.Namespace, anchor: bytes) -> ChainReader:
    from anchoring.chain.transact import connect

    try:
        return ChainReader(connect(args.rpc), anchor, args.confirmations)
    except AuditUnavailable:
        raise
    except Exception as exc:  # web3 raises many unrelated types for an unreachable or wrong RPC
        raise AuditUnavailable(f"RPC {args.rpc}: {type(exc).__name__}: {exc}") from exc


class _Report:
    """What an audit command prints: lines for people, or (`--json`) one document at the end."""

    def __init__(self, as_json: bool, command: str) -> None:
        self.as_json = as_json
        self.document: dict[str, Any] = {"command": command}

    def line(self, text: str) -> None:
        if not self.as_json:
            print(text)

    def checks(self, checks: list[Check]) -> bool:
        for check in checks:
            self.line(check.line())
        self.document["checks"] = [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks]
        return all(c.ok for c in checks)

    def verdict(self, verdict: str, text: str, code: int, **fields: Any) -> int:
        self.line(text)
        if self.as_json:
            self.document.update(fields, verdict=verdict, exit_code=code, summary=text.removeprefix("VERDICT: "))
            print(json.dumps(self.document, indent=2))
        return code


def _cmd_verify(args: argparse.Namespace) -> int:
    try:
        event_id = unhex(args.event_id if args.event_id.startswith("0x") else "0x" + args.event_id, 32)
    except ValueError as exc:
        print(f"bad EVENT_ID: {exc}", file=sys.stderr)
        return EXIT_USAGE
    document = http_fetcher(args.node)(f"/v1/events/{hex0x(event_id)}/proof")
    claimed = _claimed_anchor(document)
    anchor, source = _anchor_address(args, claimed)
    chain = _chain(args, anchor)
    report = _Report(args.json, "verify")
    report.document.update(event_id=hex0x(event_id), node=args.node, rpc=args.rpc, chain_id=chain.chain_id,
                           read_at_block=chain.block, confirmations=chain.confirmations, anchor=hex0x(anchor),
                           anchor_from=source, node_names_anchor=claimed)
    report.line(f"event {hex0x(event_id)}; node {args.node}; chain {chain.chain_id} at {args.rpc}, read at block "
                f"{chain.block} ({chain.confirmations} confirmations); Anchor {hex0x(anchor)} from {source}")
    if claimed is not None and claimed != hex0x(anchor):
        report.line(f"note: the node names Anchor {claimed}, not the pinned {hex0x(anchor)}")
    checks = verify_event(document, event_id, chain, block_loader(http_fetcher(args.node)))
    if report.checks(checks):
        batch = document["batch"]
        return report.verdict(
            "VALID", f"VERDICT: VALID. Event {hex0x(event_id)} is in batch {batch['batch_id']} (root {batch['root']}), "
            f"anchored on chain {chain.chain_id}.", EXIT_OK, batch_id=batch["batch_id"], root=batch["root"])
    failed = [c.name for c in checks if not c.ok]
    return report.verdict("INVALID", f"VERDICT: INVALID. Failed: {', '.join(failed)}.", EXIT_FAILED, failed=failed)


def _cmd_replay(args: argparse.Namespace) -> int:
    if not 1 <= args.from_height <= args.to_height or args.to_height - args.from_height >= MAX_REPLAY_BLOCKS:
        print(f"need 1 <= --from <= --to and at most {MAX_REPLAY_BLOCKS} blocks", file=sys.stderr)
        return EXIT_USAGE
    fetch = http_fetcher(args.node)
    claimed = None
    if not args.deployment:
        first_doc = fetch(f"/v1/blocks/{args.from_height}")
        batch_id = first_doc.get("batch_id") if isinstance(first_doc, dict) else None
        if isinstance(batch_id, int):
            claimed = _claimed_anchor(fetch(f"/v1/batches/{batch_id}"))
    anchor, source = _anchor_address(args, claimed)
    chain = _chain(args, anchor)
    report = _Report(args.json, "replay")
    report.document.update(from_height=args.from_height, to_height=args.to_height, node=args.node, rpc=args.rpc,
                           chain_id=chain.chain_id, anchor=hex0x(anchor), anchor_from=source)
    report.line(f"blocks {args.from_height}..{args.to_height}; node {args.node}; chain {chain.chain_id} at {args.rpc}; "
                f"Anchor {hex0x(anchor)} from {source}")
    checks, pending = replay(fetch, chain, args.from_height, args.to_height)
    ok = report.checks(checks)
    if not ok:
        failed = [c.name for c in checks if not c.ok]
        return report.verdict("INVALID", f"VERDICT: INVALID. Failed: {', '.join(failed)}.", EXIT_FAILED,
                              failed=failed)
    if pending:
        return report.verdict(
            "VALID_SO_FAR", f"VERDICT: VALID SO FAR. Blocks {pending[0]}..{pending[-1]} are certified but not "
            "anchored yet.", EXIT_PENDING, pending_heights=[pending[0], pending[-1]])
    return report.verdict(
        "VALID", f"VERDICT: VALID. All {args.to_height - args.from_height + 1} blocks are certified and anchored.",
        EXIT_OK)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devsen audit", description="Check events and blocks against the chain.")
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="verify one event against its on-chain root")
    verify.add_argument("event_id", metavar="EVENT_ID", help="0x-prefixed 32-byte event id")
    replay_cmd = commands.add_parser("replay", help="verify a range of blocks and their batches")
    replay_cmd.add_argument("--from", dest="from_height", type=int, required=True)
    replay_cmd.add_argument("--to", dest="to_height", type=int, required=True)
    for sub in (verify, replay_cmd):
        sub.add_argument("--node", required=True, help="a node's HTTP API, e.g. http://127.0.0.1:8080")
        sub.add_argument("--rpc", required=True, help="Ethereum JSON-RPC URL")
        sub.add_argument("--deployment", help="deployment JSON naming the contracts (recommended)")
        sub.add_argument("--confirmations", type=int, default=0,
                         help="count a root only once it is this many blocks below the chain head")
        sub.add_argument("--json", action="store_true", help="print one JSON document (checks and verdict)")
    return parser


def audit_main(argv: list[str]) -> int:
    """Entry point of `devsen audit`; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    from requests.exceptions import RequestException
    from web3.exceptions import Web3Exception

    try:
        return _cmd_verify(args) if args.command == "verify" else _cmd_replay(args)
    except AuditUnavailable as exc:
        return _unavailable(args, f"cannot audit: {exc}")
    except (RequestException, Web3Exception, OSError) as exc:  # the RPC failed in the middle of the audit
        return _unavailable(args, f"cannot audit: RPC {args.rpc} failed: {type(exc).__name__}: {exc}")


def _unavailable(args: argparse.Namespace, message: str) -> int:
    """No verdict could be reached: the reason on stderr (and as JSON with `--json`)."""
    if args.json:
        print(json.dumps({"command": args.command, "verdict": "UNAVAILABLE", "exit_code": EXIT_USAGE,
                          "error": message.removeprefix("cannot audit: ")}, indent=2))
    print(message, file=sys.stderr)
    return EXIT_USAGE
