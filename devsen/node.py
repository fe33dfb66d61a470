"""`devsen node`: one validator node, every part wired in one trio nursery.

    chain (web3) --- validator set, registries, escrow at agreed blocks ---+
                                                                           |
    chargers --OCPP--> ocpp_adapter --NodeIngest--> ConsensusService --> NodeApplication
                                                     (p2p + BFT)          (ledger, batches,
    auditors --HTTP--> proofs, blocks, status                              attestations)
                                                                           |
                                  Submitter --> Anchor / Escrow contracts <-+

A charger's message is answered only after the block carrying it is committed and applied.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from fastapi import APIRouter
from libp2p.peer.id import ID
from starlette.responses import PlainTextResponse, Response

from anchoring.batches import BatchPolicy, Quorum
from anchoring.chain import (
    ChainClient,
    ChainRevert,
    Deployment,
    TransactionSender,
    ValidatorSetState,
    connect,
)
from anchoring.chain.transact import rpc_health
from anchoring.onchain import OnChain
from anchoring.proofs import AnchorIndex, ProofService, http_routes
from anchoring.submitter import ANCHOR, SETTLEMENT, JobStore, Submitter, SubmitterConfig
from consensus.abci import FinalizeResult, TxResult
from consensus.core import TimeoutConfig
from consensus.types import Block, ValidatorSet
from devsen.api_routes import ReadSources, chain_session_reader, read_routes
from devsen.app import (
    MESSAGE_WINDOW_BLOCKS,
    AppSettings,
    CommandsAdmitted,
    NodeApplication,
    OwnAttestationCommitted,
    StopCharge,
    ValidatorsChanged,
    decode_event_reply,
)
from devsen.chain_view import (
    ChainChargerRegistry,
    ChainClientByHash,
    ContractChainAccess,
    SessionIndex,
    patiently,
)
from devsen.charger_commands import CommandDelivery
from devsen.command_api import MAX_COMMAND_BODY_BYTES, CommandRoutes
from devsen.config import ROLE_FULL, ConfigError, NodeConfig
from devsen.consensus_service import (
    AlreadyCommitted,
    CommitTimeout,
    ConsensusOverloaded,
    ConsensusService,
    ServiceConfig,
)
from devsen.evidence import EvidenceRecorder, EvidenceStore
from devsen.explorer import explorer_routes
from devsen.http_api import HttpError, Router, serve_http
from devsen.ledger import Ledger, LedgerParams
from devsen.ledger.vouchers import StopOrder
from devsen.logs import setup_logging
from devsen.metrics import CONTENT_TYPE, Levels, NodeMetrics
from devsen.ocpi import ocpi_router
from devsen.remote_stop import RemoteStops
from devsen.rewards_view import rewards_document
from devsen.session_audit import ROUTE as SESSION_READINGS_ROUTE
from devsen.session_audit import session_readings_route
from devsen.slashing import DoubleSignReporter, submit_pair, turn_delay_s
from devsen.state_sync import ChainReads, sync_before_start
from devsen.voucher_api import MAX_VOUCHER_BODY_BYTES, VoucherRoutes
from ocpp_adapter.config import OcppServerConfig
from ocpp_adapter.events import ChargerEvent, EventEncodingError
from ocpp_adapter.ingest import IngestOverloaded, IngestRejected, IngestResult
from ocpp_adapter.protocol import CALLERRORS_SENT
from ocpp_adapter.server import ChargerConnections, serve_ocpp
from p2p.envelope import ValidatorDirectory, network_id_of, peer_id_problem
from p2p.host import HostConfig
from p2p.keys import NodeKeys, load_identity, load_keys
from primitives.credentials import return_scrypt_buffers_to_the_os

log = logging.getLogger("devsen.node")

MAX_OWN_ATTESTATIONS = 10_000
MAX_QUEUED_QUORUMS = 10_000
QUORUM_RETRY_S = 5.0
ATTESTATION_RETRY_S = 2.0
PEER_IDS_FULL_READ_S = 300.0  # the ValidatorSet's peer ids are read in full at least this often
MAX_ATTESTATIONS_IN_FLIGHT = 64
OPERATORS_RETRY_FIRST_S = 0.5  # the start-up read of the registered operators: backoff 0.5 s doubling to 30 s
OPERATORS_RETRY_MAX_S = 30.0
# what a full node answers to a write (its payloads would reach no proposer: gossip admits validators' only)
FULL_NODE_SUBMIT = "this is a full (non-validator) node: it serves reads only; send writes to a validator"
# the p2p message counters /v1/status shows (messages on the wire per committed event, in bench/compare.py)
P2P_COUNTERS = ("events_published_messages", "events_published_payloads", "events_received_messages",
                "consensus_sent_frames", "consensus_received_frames", "sync_served", "sync_served_outsiders")


class NodeIngest:
    """The OCPP adapter's Ingest: order the event through consensus, answer from its TxResult.

    The reply travels in the commit receipt (`receipt.result`, the event's TxResult from
    FinalizeBlock); a retry of a message committed earlier is answered from the ledger's
    reply history (by dedup key). The event's idTags are already hashes (ChargerEvent hashes
    them when the adapter builds it), so what this node signs and gossips carries none in
    plaintext; the charger's own call, answered by the adapter, stays in its memory."""

    def __init__(self, service: ConsensusService, app: NodeApplication, commit_timeout_s: float,
                 *, relay: bool = False) -> None:
        self.service = service
        self.app = app
        self.commit_timeout_s = commit_timeout_s
        # A full node (a registered operator) hands its vouched events to a validator and waits for
        # the block carrying them by block sync (ConsensusService.relay), instead of its mempool.
        self.relay = relay

    def _earlier(self, event: ChargerEvent) -> IngestResult | None:
        earlier = self.app.ledger.reply_for(event.dedup_key)
        if earlier is None:
            return None
        reply, error_code = earlier
        if reply is None:
            raise IngestRejected(f"the ledger refused this message earlier ({error_code})", code=error_code)
        return IngestResult(reply, event.event_id, None, duplicate=True)

    async def submit(self, event: ChargerEvent) -> IngestResult:
        """Vouch for `event` (this node authenticated its charger), commit it (or find the earlier
        commit of the same charger message) and reply."""
        try:
            event = self.app.vouches.remember_own(event, self.app.settings.key)
            event.to_bytes()
        except EventEncodingError as exc:
            raise IngestRejected(f"the vouched event has no valid encoding: {exc}") from exc
        earlier = self._earlier(event)
        if earlier is not None:
            return earlier
        order = self.service.relay if self.relay else self.service.submit
        try:
            receipt = await order(event.to_bytes(), timeout_s=self.commit_timeout_s)
        except ValueError as exc:  # our own admission refuses it (a full node not registered as an operator)
            raise IngestRejected(f"this node cannot vouch for the event: {exc}") from exc
        except ConsensusOverloaded as exc:
            raise IngestOverloaded(str(exc)) from exc
        except CommitTimeout as exc:
            raise IngestOverloaded(f"not committed yet, retry the same message: {exc}") from exc
        except AlreadyCommitted as exc:
            earlier = self._earlier(event)
            if earlier is not None:
                return earlier
            raise IngestRejected(f"this exact event was committed long ago: {exc}") from exc
        result: TxResult = receipt.result
        reply, error_code, duplicate = decode_event_reply(result)
        if reply is None:
            raise IngestRejected(f"the ledger refused this message ({error_code})", code=error_code)
        anomalies = dict(result.info).get("anomalies")
        return IngestResult(reply, event.event_id, receipt.height, duplicate=duplicate,
                            notes={"anomalies": list(anomalies)} if anomalies else {})


class AttestationOutbox:
    """This node's own payloads (a validator's attestations; command outcomes, from a validator or
    an operator full node), submitted to consensus until committed: into the mempool on a
    validator, by relay to a validator on a full node (`run(service, relay=True)`)."""

    def __init__(self) -> None:
        self.pending: OrderedDict[bytes, None] = OrderedDict()
        self.wake = trio.Event()
        self.dropped = 0

    def add(self, payload: bytes) -> None:
        """Queue a payload (from FinalizeResult.outbound_payloads); the oldest go first when full."""
        if len(self.pending) >= MAX_OWN_ATTESTATIONS:
            self.pending.popitem(last=False)
            self.dropped += 1
            log.error("own payload outbox full: dropped the oldest (the chain is far behind)")
        self.pending[payload] = None
        self.wake.set()

    def committed(self, payload: bytes) -> None:
        """A payload is in a committed block: stop resubmitting it."""
        self.pending.pop(payload, None)

    async def run(self, service: ConsensusService, *, relay: bool = False) -> None:
        """Submit pending payloads concurrently (bounded); retry after overload or timeouts."""
        in_flight: set[bytes] = set()
        order = service.relay if relay else service.submit

        async def submit_one(payload: bytes) -> None:
            try:
                await order(payload, timeout_s=30.0)
                self.pending.pop(payload, None)
            except (AlreadyCommitted, ValueError) as exc:  # done long ago, or can never count now
                log.info("own payload dropped from the outbox: %s", exc)
                self.pending.pop(payload, None)
            except (ConsensusOverloaded, CommitTimeout) as exc:
                log.warning("own payload not committed yet (%s); retrying", exc)
                await trio.sleep(ATTESTATION_RETRY_S)
            finally:
                in_flight.discard(payload)
                self.wake.set()

        async with trio.open_nursery() as nursery:
            while True:
                self.wake = trio.Event()
                for payload in list(self.pending):
                    if len(in_flight) >= MAX_ATTESTATIONS_IN_FLIGHT:
                        break
                    if payload not in in_flight:
                        in_flight.add(payload)
                        nursery.start_soon(submit_one, payload)
                await self.wake.wait()


@dataclass
class NodeParts:
    """Everything `run_node` builds, exposed for tests and the status endpoint."""

    config: NodeConfig
    keys: NodeKeys
    deployment: Deployment
    client: ChainClient
    app: NodeApplication
    service: ConsensusService
    submitter: Submitter
    outbox: AttestationOutbox
    quorums: QuorumInbox
    connections: ChargerConnections
    started_at: float
    evidence: EvidenceRecorder | None = None
    metrics: NodeMetrics | None = None
    stops: RemoteStops | None = None
    double_sign: DoubleSignReporter | None = None
    commands: CommandDelivery | None = None


def _load_deployment(config: NodeConfig) -> Deployment:
    path = Path(config.chain.deployment)
    if not path.is_file():
        raise ConfigError(f"config key 'chain.deployment': {path} does not exist; fix: run "
                          "`devsen chain deploy --rpc URL --validators ... --out deployment.json` first")
    return Deployment.from_json(path.read_text())


def _peer_bindings(state: ValidatorSetState) -> dict[bytes, bytes]:
    """Validator address -> libp2p peer id, for validators that published a usable one.

    Chain data is hostile input: a malformed address or peer id is skipped (logged), never
    raised; duplicates are left to the directory, which refuses them deterministically."""
    out: dict[bytes, bytes] = {}
    for v in state.validators:
        try:
            address = bytes.fromhex(str(v.address).removeprefix("0x"))
        except ValueError:
            log.warning("the ValidatorSet lists a malformed address %r; ignored", v.address)
            continue
        peer = v.peer_id
        if not peer:
            continue
        problem = peer_id_problem(peer) if len(address) == 20 else "malformed address"
        if problem is not None:
            log.warning("the ValidatorSet binds %s to an unusable peer id (%s); ignored", v.address, problem)
            continue
        out[address] = bytes(peer)
    return out


def merge_bindings(directory: ValidatorDirectory, validators: tuple[bytes, ...],
                   chain_bindings: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """Peer ids of the application's validators plus those already bound: the chain's id, else
    the one we had. A validator removed on chain stays reachable, since consensus switches
    sets two heights later and the core itself refuses votes from outside the set. Total:
    unusable entries are dropped here, duplicates are refused by the directory."""
    known = {a: directory.peer_of(a) for a in directory.addresses()}
    wanted = set(validators) | set(known)
    merged: dict[bytes, bytes] = {}
    for address in sorted(wanted):
        peer = chain_bindings.get(address)
        if peer_id_problem(peer) is not None:
            peer = known.get(address)
        if peer is not None and peer_id_problem(peer) is None:
            merged[address] = peer
    return merged


async def refresh_peer_bindings(parts: NodeParts, interval_s: float = 5.0,
                                full_read_s: float = PEER_IDS_FULL_READ_S) -> None:
    """Follow validators publishing (or changing) their peer ids in the ValidatorSet.

    Every `interval_s`: one eth_blockNumber and, if blocks were added, one eth_getLogs of the
    ValidatorSet since the last look; the set itself (3 calls + one per validator, ~20 ms of
    a core here) is read only when the ValidatorSet emitted an event since, at the first look,
    and at least every `full_read_s` whatever the logs said."""
    directory = parts.service.config.directory
    client = parts.client
    me, my_peer = parts.keys.validator.address, parts.keys.peer_id.to_bytes()
    last: tuple[dict[bytes, bytes], dict[bytes, bytes | None]] | None = None  # (merged, directory after it)
    failing = False  # logged once per failing spell, not every interval
    checked_to: int | None = None  # the ValidatorSet is known as of this block
    last_full_read = trio.current_time()

    def changes(full: bool) -> tuple[bool, int]:
        """(whether the set must be read, the head it is checked up to); in a worker thread."""
        head = client.block_number()
        if full or checked_to is None:
            return True, head
        if head <= checked_to:
            return False, checked_to
        return client.logs_count("ValidatorSet", checked_to + 1, head) > 0, head

    while True:
        await trio.sleep(interval_s)
        try:
            full = trio.current_time() - last_full_read >= full_read_s
            read, head = await trio.to_thread.run_sync(changes, full)
            if not read:
                checked_to, failing = head, False
                continue
            state = await trio.to_thread.run_sync(client.validator_set, "latest")
            merged = merge_bindings(directory, parts.app.validators, _own_binding_first(state, me, my_peer))
            checked_to, last_full_read = head, trio.current_time()
        except Exception as exc:  # RPC trouble or hostile data: keep the bindings we have, retry later
            if not failing:
                log.warning("could not refresh validator peer ids (%s); keeping the current ones, retrying", exc)
            failing = True
            continue
        failing = False
        current = {a: directory.peer_of(a) for a in directory.addresses()}
        if merged == current or last == (merged, current):
            continue  # unchanged (a refused entry keeps `merged` and the directory apart: no churn)
        log.info("validator peer ids changed on chain; updating the directory")
        directory.replace(merged)
        last = (merged, {a: directory.peer_of(a) for a in directory.addresses()})


def _own_binding_first(state: ValidatorSetState, me: bytes, my_peer: bytes) -> dict[bytes, bytes]:
    """The chain's bindings with this node's own (proven by its key) in place of any other
    validator's claim on the same peer id."""
    bindings = {a: p for a, p in _peer_bindings(state).items() if p != my_peer or a == me}
    bindings[me] = my_peer
    return bindings


def _publish_own_info(client: ChainClient, me: bytes, my_peer: bytes, endpoint: str) -> None:
    """Publish this validator's peer id and endpoint; a refusal by the contract (peer id taken,
    endpoint too long) is logged with the fix and the node starts anyway (RPC trouble still
    fails the start, as before: a restart retries)."""
    try:
        client.set_validator_info(my_peer, endpoint)
    except ChainRevert as exc:  # deterministic: retrying cannot help, starting still serves chargers
        log.error("the ValidatorSet refused this node's peer id / endpoint (%s); fix: a peer id held by "
                  "another validator needs fresh p2p keys, an endpoint must be at most 256 bytes", exc)


def _operators(client: ChainClient) -> tuple[bytes, ...]:
    """The operators registered now (a deployment without the registry has none)."""
    try:
        return client.operators("latest")
    except ChainRevert:
        return ()


async def read_operators(app: NodeApplication, read: Callable[[], tuple[bytes, ...]], operator: bytes | None = None,
                         *, first_delay_s: float = OPERATORS_RETRY_FIRST_S,
                         max_delay_s: float = OPERATORS_RETRY_MAX_S) -> None:
    """The registered operators (ValidatorSet.operators()) read at start, in the background: the
    node starts without them (admission of operators' events waits for this read or the first
    block applied, which names its own), retrying with capped exponential backoff while the RPC
    fails. One log line when the read starts failing and one when it succeeds after that.
    `operator`: this full node's own key, warned about if it is not registered."""
    delay = first_delay_s
    failing = False
    while True:
        try:
            operators = await trio.to_thread.run_sync(read, abandon_on_cancel=True)  # type: ignore[call-arg]
        except Exception as exc:  # RPC down or hostile data: start anyway, retry later
            if not failing:
                log.warning("could not read the registered operators (%s); started without them, retrying in the "
                            "background (operators' events are admitted once a read or a block names them)", exc)
                failing = True
            await trio.sleep(delay)
            delay = min(max_delay_s, delay * 2)
            continue
        if failing:
            log.info("read the registered operators after all: %d registered", len(operators))
        if app.operators_named_at is None:  # else a block (or proposal) read meanwhile named the set,
            app.operators = frozenset(operators)  # possibly empty, at an agreed Ethereum block: it stays
        if operator is not None and operator not in operators:
            log.warning("operator 0x%s is not registered on chain (ValidatorSet.operators()): its chargers' "
                        "events are refused until it is; fix: `devsen stake register-operator` with this key",
                        operator.hex())
        return


def start_operators_read(nursery: trio.Nursery, parts: NodeParts) -> None:
    """Read the registered operators in the background (this node's own key checked if it is one)."""
    operator = parts.keys.validator.address if parts.config.node.accept_chargers and \
        parts.config.node.role == ROLE_FULL else None
    nursery.start_soon(read_operators, parts.app, lambda: _operators(parts.client), operator)


def build_node(config: NodeConfig) -> NodeParts:
    """Load keys and deployment, read the validator set from chain, construct every part."""
    if config.chain.rpc == "embedded":
        raise ConfigError("config key 'chain.rpc': 'embedded' runs in one process only (tests); "
                          "fix: point nodes at a shared JSON-RPC chain, e.g. the devnet's anvil")
    full = config.node.role == ROLE_FULL
    operator = full and config.node.accept_chargers  # vouches with its own (operator) key
    serves_chargers = operator or not full
    keys = load_identity(config.keys_dir) if full and not operator else load_keys(config.keys_dir)
    deployment = _load_deployment(config)
    data_dir = Path(config.node.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    w3 = connect(config.chain.rpc)
    client = ChainClientByHash(w3, deployment, TransactionSender(
        w3, keys.validator.secret, priority_fee_wei=config.chain.priority_fee_wei,
        max_fee_wei=config.chain.max_fee_wei))
    if config.chain.chain_id and config.chain.chain_id != deployment.chain_id:
        raise ConfigError(f"config key 'chain.chain_id': {config.chain.chain_id}, but the deployment file "
                          f"{config.chain.deployment} is for chain {deployment.chain_id}; fix: use that network's "
                          "deployment file or set chain_id to its chain")
    # A node (re)started during an RPC outage waits here for the chain (logged once), not crash-loops.
    chain_id = patiently("reading the chain id at startup", lambda: int(w3.eth.chain_id))
    if chain_id != deployment.chain_id:
        raise ConfigError(f"config key 'chain.rpc': the chain there has id {chain_id}, the deployment file "
                          f"says {deployment.chain_id}; fix: use the RPC of the deployment's chain")
    validator_state = patiently("reading the validator set at startup", lambda: client.validator_set("latest"))
    addresses = [bytes.fromhex(v.address[2:]) for v in validator_state.validators]
    me = keys.validator.address
    # The registered operators are read in the background once the node serves (read_operators).
    if operator:
        log.info("role = full, accepting chargers: following the chain as peer %s, vouching as operator 0x%s",
                 keys.peer_id.to_base58(), me.hex())
    elif full:
        log.info("role = full: following the chain as peer %s, never signing", keys.peer_id.to_base58())
    elif me not in addresses:
        raise ConfigError(f"this node's validator address 0x{me.hex()} is not in the on-chain ValidatorSet "
                          f"at {deployment.validator_set}; fix: register it (a quorum-signed update) or use "
                          "the keys of a registered validator")
    my_peer = keys.peer_id.to_bytes()
    on_chain = _peer_bindings(validator_state)
    if not full and on_chain.get(me) != my_peer:
        if me in on_chain:
            log.warning("the ValidatorSet binds validator 0x%s to peer %s; publishing this node's peer %s",
                        me.hex(), ID(on_chain[me]).to_base58(), keys.peer_id.to_base58())
        patiently("publishing this node's peer id", lambda: _publish_own_info(
            client, me, my_peer, f"ws://{config.ocpp.host}:{config.ocpp.port}/ocpp"))
    bindings = on_chain if full else _own_binding_first(validator_state, me, my_peer)
    # Consensus starts from the set in force at deployment (epoch 0); the application replays
    # later epoch changes at the heights where they were committed.
    genesis = patiently("reading the genesis validator set", lambda: client.validator_set(deployment.deploy_block))
    genesis_addresses = sorted(bytes.fromhex(v.address[2:]) for v in genesis.validators)
    settings = AppSettings(
        key=keys.validator,
        validators=tuple(genesis_addresses),
        epoch=genesis.epoch,
        anchor_domain=deployment.domain("Anchor"),
        escrow_domain=deployment.domain("Escrow"),
        rewards_domain=deployment.domain("Rewards") if deployment.rewards else None,
        commands_domain=deployment.domain("DeviceFactory"),
        batch_policy=BatchPolicy(every_blocks=config.anchoring.every_blocks,
                                 every_ms=config.anchoring.every_seconds * 1000),
        confirmations=config.chain.confirmations,
        settle_every_blocks=config.anchoring.settle_every_blocks,
    )
    outbox = AttestationOutbox()
    submitter = Submitter(
        OnChain(client), JobStore(data_dir / "submissions.sqlite"), me, genesis_addresses,
        SubmitterConfig(confirmations=config.chain.confirmations, turn_timeout_s=config.anchoring.submit_timeout_s,
                        poll_interval_s=config.chain.poll_interval_s),
    )
    quorums = QuorumInbox()
    access = ContractChainAccess(client, SessionIndex(client, deployment.deploy_block))
    # the reward pool and epoch are the Rewards contract's immutables: the same on every node
    params = LedgerParams()
    if deployment.rewards:
        params = LedgerParams(reward_pool_per_epoch=int(client.read("Rewards", "epochBudget", block="latest")),
                              reward_epoch_ms=1000 * int(client.read("Rewards", "epochSeconds", block="latest")))
    ledger = Ledger(params)
    app = NodeApplication(settings, access, ledger, AnchorIndex(data_dir / "anchors.sqlite"))
    app.snapshot_path = data_dir / "app_snapshot.msgpack"
    app.operators, app.operators_named_at = frozenset(), None  # read_operators fills it, unless a block names it first
    host = HostConfig(listen=config.p2p.listen, bootstrap=tuple(config.p2p.bootstrap), max_peers=config.p2p.max_peers)
    if config.p2p.state_sync:  # an empty block store: restore a verified snapshot from peers first
        consensus_domain = deployment.domain("ValidatorSet")
        joined = sync_before_start(keys, host, network_id_of(consensus_domain), app, consensus_domain,
                                   ChainReads(access.head, access.block_hash, access.validators_at),
                                   data_dir / "consensus", ValidatorSet.equal(genesis_addresses, genesis.epoch))
        if joined is not None:
            log.info("joined by state sync at height %d (%d chunks, %.1f MB, %.1f s)", joined.height,
                     joined.chunks, joined.bytes / 1e6, joined.seconds)
    # After an epoch change, re-sign only what this node has not seen land (AttestationBook.rebased).
    app.resign_filter = lambda subject: not submitter.known_done(subject)
    on_validators: list[Callable[[ValidatorsChanged], None]] = []
    connections = ChargerConnections()
    stops = RemoteStops(connections)
    # An operator (full node) delivers only to chargers whose last applied event it vouched: the
    # only ones whose outcomes the validators take from it (Ledger.outcome_reporter_problem).
    ingress_name = "0x" + me.hex()
    delivery = CommandDelivery(connections, lambda charger: app.ledger.commands.pending_for(charger),
                               lambda: app.ledger.commands.pending_chargers(), outbox.add, keys.validator,
                               settings.anchor_domain, config.ocpp.call_timeout_s,
                               reports_for=(lambda charger: app.ledger.charger_operator(charger) == ingress_name)
                               if full else None)
    route = FinalizeRouter(outbox, quorums, on_validators, stops.add, delivery.wake)
    timeouts = TimeoutConfig(
        propose_ms=config.consensus.timeout_propose_ms, propose_delta_ms=config.consensus.timeout_delta_ms,
        prevote_ms=config.consensus.timeout_vote_ms, prevote_delta_ms=config.consensus.timeout_delta_ms,
        precommit_ms=config.consensus.timeout_vote_ms, precommit_delta_ms=config.consensus.timeout_delta_ms,
        per_payload_ms=config.consensus.timeout_per_payload_ms, size_cap_ms=config.consensus.timeout_size_cap_ms,
    )
    service = ConsensusService(keys, ServiceConfig(
        data_dir=data_dir / "consensus",
        domain=deployment.domain("ValidatorSet"),
        validators=ValidatorSet.equal(genesis_addresses, genesis.epoch),
        directory=ValidatorDirectory(bindings),
        host=host,
        timeouts=timeouts,
        mempool_max_count=config.consensus.mempool_max_payloads,
        block_max_payloads=config.consensus.max_block_payloads,
        block_max_bytes=config.consensus.max_block_bytes,
        # An idle proposer waits for payloads, but well inside its own propose timeout.
        empty_block_interval_s=max(0.05, min(1.0, config.consensus.timeout_propose_ms / 2000)),
        min_block_interval_s=config.consensus.block_interval_ms / 1000,
        submit_outbound=False,  # own attestations go through the retrying AttestationOutbox
        follower=full,
    ), app)
    service.finalize_listeners.append(route.on_finalized)
    evidence = _evidence_recorder(data_dir, app, service)
    # Equivocation the consensus core sees is written down and slashed on chain with this key.
    double_sign = DoubleSignReporter(data_dir / "double_sign", deployment.domain("ValidatorSet"),
                                     lambda pair: submit_pair(client, pair),
                                     lambda pair: turn_delay_s(me, app.validators, pair))
    if not full:  # a full node signs nothing, so it submits no evidence either
        service.evidence_listeners.append(double_sign.on_evidence)
    directory = service.config.directory

    def validators_changed(validators: tuple[bytes, ...], chain_bindings: dict[bytes, bytes]) -> None:
        directory.replace(merge_bindings(directory, validators, chain_bindings))
        submitter.validators = sorted(validators)

    validators_changed(app.validators, bindings)  # after the replay of committed blocks
    on_validators.append(lambda change: validators_changed(change.validators, change.bindings))
    for payload in app.take_restored_outbound():
        outbox.add(payload)
    for quorum in app.take_restored_quorums():  # the submitter ignores the ones it knows
        quorums.add(quorum)
    parts = NodeParts(config, keys, deployment, client, app, service, submitter, outbox, quorums,
                      connections, time.time(), evidence, stops=stops if serves_chargers else None,
                      double_sign=None if full else double_sign, commands=delivery if serves_chargers else None)
    parts.metrics = node_metrics(parts)
    return parts


def node_metrics(parts: NodeParts) -> NodeMetrics:
    """The node's Prometheus metrics: a finalize listener, the chain client's requests timed, levels."""

    def pending() -> dict[str, int]:
        kinds = [job["kind"] for job in parts.submitter.status()["pending"]]
        return {"anchors": kinds.count(ANCHOR), "settlements": kinds.count(SETTLEMENT),
                "own_attestations": len(parts.outbox.pending)}

    metrics = NodeMetrics(Levels(
        height=lambda: parts.service.committed_height,
        mempool=lambda: len(parts.service.mempool),
        chargers=lambda: len(parts.connections),
        peers=lambda: int(parts.service.stats().get("p2p", {}).get("peers_connected", 0)),
        pending=pending,
        callerrors=lambda: dict(CALLERRORS_SENT),
    ))
    parts.service.finalize_listeners.append(metrics.on_finalized)
    parts.client.rpc = metrics.timed_rpc(parts.client.rpc)  # type: ignore[method-assign, assignment]
    return metrics


def read_sources(parts: NodeParts) -> ReadSources:
    """What the public read API (devsen/api_routes.py) reads from this node."""
    app, client, store = parts.app, parts.client, parts.service.store
    return ReadSources(
        ledger=app.ledger,
        eth_block=lambda: app.last_eth_block,
        block=store.get,
        last_batch=app.anchor_index.last_batch,
        batch=app.anchor_index.batch,
        validators=lambda: (app.epoch, tuple(app.validators)),
        chain_device=client.device,
        chain_validators=lambda block: client.validator_set(block).validators,
        chain_session=chain_session_reader(client, parts.deployment.deploy_block),
    )


def _evidence_recorder(data_dir: Path, app: NodeApplication, service: ConsensusService) -> EvidenceRecorder:
    """Evidence against validators (devsen/evidence.py) from every finalized block and every
    gossiped event admission refuses; the ledger's anomaly detail explains a capped event."""

    def detail_of(event: ChargerEvent, kind: str) -> str:
        for anomaly in reversed(app.ledger.anomalies()):
            if (anomaly.kind, anomaly.charger_id, anomaly.message_id) == (kind, event.charger_id, event.message_id):
                return anomaly.detail
        return ""

    recorder = EvidenceRecorder(EvidenceStore(data_dir / "evidence.sqlite"), app.vouches.domain,
                                lambda: app.validators, lambda: service.committed_height, detail_of)
    service.finalize_listeners.append(
        lambda block, result: recorder.on_finalized(block.height, block.payloads, result.tx_results))
    service.refusal_listeners.append(recorder.on_refused)
    return recorder


def build_router(parts: NodeParts) -> Router:
    """The node's HTTP API: status plus the proof service's routes (anchoring/AUDIT.md)."""
    router = Router()
    proofs = ProofService(parts.service.store, parts.app.anchor_index, chain_id=parts.deployment.chain_id,
                          anchor_address=bytes.fromhex(parts.deployment.anchor[2:]))
    for template, handler in http_routes(proofs).items():
        router.get(template, handler)

    async def chain_head(rpc_up: bool) -> int | None:
        """The chain head (cached up to 2 s; read off the event loop, bounded at 0.5 s). While
        the RPC is known to be down, None at once: status must answer during an outage."""
        if not rpc_up:
            return None
        with trio.move_on_after(0.5):
            try:
                return await trio.to_thread.run_sync(lambda: parts.app.chain.head(max_age_s=2.0),
                                                     abandon_on_cancel=True)  # type: ignore[call-arg]
            except Exception:  # the RPC is down: status still answers
                return None
        return None

    async def status(_: dict[str, str]) -> tuple[int, Any]:
        service = parts.service
        stats = service.stats()
        p2p: dict[str, Any] = stats.get("p2p") or {}
        health = rpc_health(parts.client.w3)
        pending_kinds = [job["kind"] for job in parts.submitter.status()["pending"]]
        head = await chain_head(health is None or health.up)
        agreed = parts.app.last_eth_block
        full = parts.config.node.role == ROLE_FULL
        me = "0x" + parts.keys.validator.address.hex()
        return 200, {
            "node": parts.config.node.name,
            "role": parts.config.node.role,
            "validator": None if full else me,
            "operator": me if full and parts.config.node.accept_chargers else None,
            "peer_id": parts.keys.peer_id.to_base58(),
            "committed_height": service.committed_height,
            "epoch": parts.app.epoch,
            "validators": len(parts.app.validators),
            "app_state_hash": "0x" + service.app_state_hash.hex(),
            "chargers_connected": len(parts.connections),
            "consensus": {k: v for k, v in stats.items() if k != "p2p"},
            "p2p": {"linked_validators": p2p.get("linked_validators", 0), "dial_failures": p2p.get("dial_failures", 0),
                    **{k: p2p.get(k, 0) for k in P2P_COUNTERS}, "drops": p2p.get("drops", {})},
            "app": dict(parts.app.counters),
            "own_attestations_pending": len(parts.outbox.pending),
            "submitter": parts.submitter.status(),
            "double_sign": parts.double_sign.status() if parts.double_sign is not None else None,
            "chain_rpc": health.status() if health is not None else None,
            "uptime_s": round(time.time() - parts.started_at, 1),
            "height": service.committed_height,
            "peers": {"connected": p2p.get("peers_connected", 0), "unreachable": p2p.get("peers_unreachable", []),
                      "linked_validators": p2p.get("linked_validators", 0)},
            "validators_seen": sorted({*([] if full else [me]), *p2p.get("linked_validator_addresses", [])}),
            "validator_set": ["0x" + v.hex() for v in parts.app.validators],
            "pending": {"anchors": pending_kinds.count(ANCHOR), "settlements": pending_kinds.count(SETTLEMENT),
                        "submissions": parts.submitter.status()["pending_count"],
                        "own_attestations": len(parts.outbox.pending)},
            "chain": {"rpc": parts.config.chain.rpc, "head": head, "agreed_block": agreed,
                      "lag_blocks": head - agreed if head is not None else None,
                      "confirmations": parts.config.chain.confirmations},
        }

    async def ledger_state(params: dict[str, str]) -> tuple[int, Any]:
        if not params["height"].isdigit():
            raise HttpError(400, "height must be a decimal integer")
        committed = parts.service.store.get(int(params["height"]))
        if committed is None:
            raise HttpError(404, f"no committed block at height {params['height']}")
        return 200, {"height": committed.height, "block_hash": "0x" + committed.block.hash.hex(),
                     "app_state_hash_before": "0x" + committed.block.app_state_hash.hex()}

    async def charger_message(params: dict[str, str]) -> tuple[int, Any]:
        found = parts.app.message(params["charger_id"], params["message_id"])
        if found is None:
            raise HttpError(404, "no committed event for that charger message in the last "
                                 f"{MESSAGE_WINDOW_BLOCKS} blocks")
        height, event_id, dedup_key = found
        body: dict[str, Any] = {"event_id": "0x" + event_id.hex(), "height": height}
        reply = parts.app.ledger.reply_for(dedup_key)
        if reply is not None:
            body.update(reply=reply[0], error_code=reply[1])
        return 200, body

    async def evidence_summary(_: dict[str, str]) -> tuple[int, Any]:
        if parts.evidence is None:
            return 200, {"validators": {}, "dropped": 0}
        counts = parts.evidence.store.counts()
        return 200, {"validators": {"0x" + a.hex(): n for a, n in sorted(counts.items())},
                     "dropped": parts.evidence.store.dropped}

    async def evidence_of(params: dict[str, str]) -> tuple[int, Any]:
        text = params["validator"].lower().removeprefix("0x")
        if len(text) != 40 or any(c not in "0123456789abcdef" for c in text):
            raise HttpError(400, "validator must be a 0x-hex 20-byte address")
        records = [] if parts.evidence is None else parts.evidence.store.of(bytes.fromhex(text))
        return 200, {"validator": "0x" + text, "records": [r.to_json() for r in records]}

    async def rewards_of(params: dict[str, str]) -> tuple[int, Any]:
        try:
            return 200, rewards_document(parts.app.ledger.reward_distributions(), params["owner"])
        except ValueError as exc:
            raise HttpError(400, str(exc)) from exc

    router.get("/v1/rewards/{owner}", rewards_of)
    router.get("/v1/status", status)
    router.get("/v1/evidence", evidence_summary)
    router.get("/v1/evidence/{validator}", evidence_of)
    router.get("/v1/chargers/{charger_id}/messages/{message_id}", charger_message)
    router.get("/v1/heights/{height}", ledger_state)
    router.get(SESSION_READINGS_ROUTE, session_readings_route(lambda: parts.app.ledger, proofs))
    router.include(read_routes(read_sources(parts)))
    if parts.config.ocpi.enabled:
        router.include(ocpi_router(read_sources(parts), parts.config.ocpi, Path(parts.config.node.data_dir)))
    router.include(explorer_routes())  # the explorer's static page at /explorer/ (devsen/explorer)
    if parts.metrics is not None:
        router.include(metrics_route(parts.metrics))
    vouchers = VoucherRoutes(parts.app, parts.service)
    router.get("/v1/sessions/{session_id}/payment", vouchers.session)

    full = parts.config.node.role == ROLE_FULL

    async def submit_voucher(params: dict[str, str], body: Any) -> tuple[int, Any]:
        if full:
            raise HttpError(503, FULL_NODE_SUBMIT)
        return await vouchers.submit({**params, "body": json.dumps(body)})

    router.post("/v1/sessions/{session_id}/vouchers", submit_voucher, summary="Submit a driver's payment voucher",
                max_body_bytes=MAX_VOUCHER_BODY_BYTES)
    commands = CommandRoutes(parts.app, parts.service, parts.connections)

    async def submit_command(params: dict[str, str], body: Any) -> tuple[int, Any]:
        if full:
            raise HttpError(503, FULL_NODE_SUBMIT)
        return await commands.submit(params, body)

    router.post("/v1/chargers/{charger_id}/commands", submit_command,
                summary="Submit a device manager's signed command to its charger", max_body_bytes=MAX_COMMAND_BODY_BYTES)
    router.get("/v1/commands/{command_id}", commands.command, summary="A command and its outcome")
    router.get("/v1/chargers/{charger_id}/configuration", commands.configuration,
               summary="A charger's last known configuration (ledger state)")
    router.get("/v1/chargers/{charger_id}/provisioning", commands.provisioning,
               summary="A charger's provisioning: desired vs last known settings, outcomes (ledger state)")
    return router


def metrics_route(metrics: NodeMetrics) -> APIRouter:
    """`GET /metrics` in the Prometheus text format."""
    api = APIRouter()

    @api.get("/metrics", summary="Prometheus metrics of this node", response_class=PlainTextResponse)
    async def scrape() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return api


class FinalizeRouter:
    """Carries out a FinalizeResult after its block is committed: own attestations to the
    outbox, committed own attestations out of it, quorums to the submitter's inbox, validator
    set changes to the peer directory and the submitter."""

    def __init__(self, outbox: AttestationOutbox, quorums: QuorumInbox,
                 on_validators: list[Callable[[ValidatorsChanged], None]],
                 on_stop: Callable[[StopOrder], None] | None = None,
                 on_commands: Callable[[CommandsAdmitted], None] | None = None) -> None:
        self.outbox = outbox
        self.quorums = quorums
        self.on_validators = on_validators
        self.on_stop = on_stop
        self.on_commands = on_commands

    def on_finalized(self, block: Block, result: FinalizeResult) -> None:
        for payload in result.outbound_payloads:
            self.outbox.add(payload)
        for notice in result.notices:
            if isinstance(notice, OwnAttestationCommitted):
                self.outbox.committed(notice.payload)
            elif isinstance(notice, Quorum):
                self.quorums.add(notice)
            elif isinstance(notice, ValidatorsChanged):
                for listener in self.on_validators:
                    listener(notice)
            elif isinstance(notice, StopCharge) and self.on_stop is not None:
                self.on_stop(notice.order)  # sent only if the charger is connected here
            elif isinstance(notice, CommandsAdmitted) and self.on_commands is not None:
                self.on_commands(notice)  # delivered by the node holding the charger's connection


class QuorumInbox:
    """Quorums found while applying blocks (sync), handed to the submitter (async)."""

    def __init__(self) -> None:
        self.queue: deque[Quorum] = deque()
        self.wake = trio.Event()
        self.dropped = 0

    def add(self, quorum: Quorum) -> None:
        """Called with FinalizeResult notices. Bounded: the submitter persists quorums faster than blocks
        make them; if it is stuck this long, the oldest is dropped (a restart finds it again
        by replaying the blocks)."""
        if len(self.queue) >= MAX_QUEUED_QUORUMS:
            self.queue.popleft()
            self.dropped += 1
            log.error("quorum queue full: dropped the oldest (the submitter is stuck)")
        self.queue.append(quorum)
        self.wake.set()

    async def run(self, submitter: Submitter) -> None:
        """Forward every quorum to the submitter, which persists it before acting."""
        while True:
            if not self.queue:
                self.wake = trio.Event()
                await self.wake.wait()
            try:
                await submitter.add(self.queue[0])
            except Exception as exc:  # full or failing job store: keep the quorum, try again
                log.error("the submitter did not take quorum %s: %s; retrying", self.queue[0].subject, exc)
                await trio.sleep(QUORUM_RETRY_S)
                continue
            self.queue.popleft()


async def supervised(name: str, run: Callable[[], Awaitable[None]], restart_delay_s: float = 5.0) -> None:
    """Run a background task of the node forever: a crash is logged and the task restarted,
    so a bug or an unexpected chain error in one part never stops consensus or chargers."""
    while True:
        try:
            await run()
            log.error("%s stopped unexpectedly; restarting", name)
        except Exception:
            log.exception("%s failed; restarting in %.0f s", name, restart_delay_s)
        await trio.sleep(restart_delay_s)


async def serve_node(parts: NodeParts, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run consensus, the OCPP endpoint, the HTTP API and the submitter until cancelled."""
    config = parts.config
    ingest = NodeIngest(parts.service, parts.app, commit_timeout_s=config.ocpp.call_timeout_s,
                        relay=config.node.role == ROLE_FULL)
    ocpp_config = OcppServerConfig(
        host=config.ocpp.host, port=config.ocpp.port, node_name=config.node.name,
        security_profile=config.ocpp.security_profile, tls_cert=config.ocpp.tls_cert or None,
        tls_key=config.ocpp.tls_key or None, max_connections=config.ocpp.max_connections,
        max_frame_bytes=config.ocpp.max_frame_bytes, messages_per_second=config.ocpp.messages_per_second,
        call_timeout=config.ocpp.call_timeout_s, ingest_timeout=config.ocpp.call_timeout_s + 5,
    )
    if config.node.role == ROLE_FULL:
        await serve_full_node(parts, ocpp_config if config.node.accept_chargers else None, ingest,
                              task_status=task_status)
        return
    async with trio.open_nursery() as nursery:
        start_operators_read(nursery, parts)
        await nursery.start(parts.service.run)
        nursery.start_soon(supervised, "submitter", parts.submitter.run)
        nursery.start_soon(supervised, "quorum inbox", lambda: parts.quorums.run(parts.submitter))
        nursery.start_soon(supervised, "peer-id refresh", lambda: refresh_peer_bindings(parts))
        if parts.double_sign is not None:
            nursery.start_soon(supervised, "double-sign reporter", parts.double_sign.run)
        start_charger_side(nursery, parts)
        ocpp_port = await nursery.start(
            lambda task_status: serve_ocpp(ocpp_config, ingest, ChainChargerRegistry(parts.client),
                                           connections=parts.connections, task_status=task_status))
        http_port = await nursery.start(serve_http, build_router(parts), config.http.host, config.http.port)
        log.info("node %s up: validator 0x%s, OCPP ws://%s:%d/ocpp/{chargeBoxId}, HTTP http://%s:%d",
                 config.node.name, parts.keys.validator.address.hex(), config.ocpp.host, ocpp_port,
                 config.http.host, http_port)
        task_status.started({"ocpp_port": ocpp_port, "http_port": http_port})


def start_charger_side(nursery: trio.Nursery, parts: NodeParts) -> None:
    """What every node serving chargers runs besides the OCPP endpoint, validator or operator
    full node alike: the outbox of its own payloads (into the mempool, or relayed by a full node),
    the delivery of the ledger's commands (manager commands, provisioning, remote starts) and the
    voucher remote stops to the chargers connected here."""
    relay = parts.config.node.role == ROLE_FULL
    nursery.start_soon(supervised, "own payload outbox", lambda: parts.outbox.run(parts.service, relay=relay))
    if parts.stops is not None:
        stops = parts.stops
        nursery.start_soon(supervised, "voucher remote stops", lambda: stops.run())
    if parts.commands is not None:
        nursery.start_soon(supervised, "command delivery", parts.commands.run)


async def serve_full_node(parts: NodeParts, ocpp_config: OcppServerConfig | None = None,
                          ingest: NodeIngest | None = None, *,
                          task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """A full node: block sync and the read API. No submitter, quorum inbox or double-sign
    reporter (it signs no consensus message). With `ocpp_config` (`node.accept_chargers`) it also
    serves chargers: it authenticates them against the chain like a validator, vouches for their
    events with its operator key, relays them to the validators (ConsensusService.relay) and
    answers once the block carrying them is applied here. It delivers the ledger's commands
    (manager commands, provisioning, remote starts) and voucher remote stops to its chargers like a
    validator (`start_charger_side`), once the charger's last applied event is one it vouched; the
    outcomes, signed by its operator key, are relayed to a validator."""
    config = parts.config
    async with trio.open_nursery() as nursery:
        start_operators_read(nursery, parts)
        await nursery.start(parts.service.run)
        ocpp_port = None
        if ocpp_config is not None and ingest is not None:
            start_charger_side(nursery, parts)
            ocpp_port = await nursery.start(
                lambda task_status: serve_ocpp(ocpp_config, ingest, ChainChargerRegistry(parts.client),
                                               connections=parts.connections, task_status=task_status))
        http_port = await nursery.start(serve_http, build_router(parts), config.http.host, config.http.port)
        if ocpp_port is None:
            log.info("full node %s up: peer %s, no OCPP port, HTTP http://%s:%d", config.node.name,
                     parts.keys.peer_id.to_base58(), config.http.host, http_port)
        else:
            log.info("full node %s up: peer %s, operator 0x%s, OCPP ws://%s:%d/ocpp/{chargeBoxId}, HTTP http://%s:%d",
                     config.node.name, parts.keys.peer_id.to_base58(), parts.keys.validator.address.hex(),
                     config.ocpp.host, ocpp_port, config.http.host, http_port)
        task_status.started({"ocpp_port": ocpp_port, "http_port": http_port})


def run_node(config: NodeConfig, *, log_format: str | None = None, log_level: str | None = None) -> int:
    """`devsen node`: build the node and serve until interrupted; config problems exit 2."""
    setup_logging(log_level or config.logging.level, log_format or config.logging.format)
    return_scrypt_buffers_to_the_os()  # each charger login hashes a password (16 MiB of scrypt)
    try:
        parts = build_node(config)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    try:
        trio.run(serve_node, parts)
    except KeyboardInterrupt:
        log.info("stopped by interrupt")
    return 0
