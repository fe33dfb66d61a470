"""Bounds per source against a flood of valid-looking events one Byzantine validator vouches
for itself (issue 10; tests/byzantine scenario `flood_mempool_events`).

Each bound is tried by the hostile source and holds, and the honest share survives:
- block validity: one voucher's events per block, and its events of chargers the ledger does
  not know, are capped at 1/n of network-wide budgets (pure, deterministic, checked before
  any chain read), so honest capacity scales with the block and the flood's with 1/n;
- block composition: an honest proposer takes up to each voucher's share, the rest waits;
- gossip admission: duplicates, a backlogged origin and an origin over its token budget are
  refused before `check_tx` recovers a signature, and the events topic drops their batches.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, cast

import trio
from test_node_app import ANCHOR, KEYS, block, make_app

from consensus.abci import Application, CheckResult, FinalizeResult, Prepared, TxResult
from consensus.types import CommittedBlock, ValidatorSet
from devsen.app import (
    BLOCK_EVENT_BUDGET,
    NEW_CHARGER_READ_BUDGET,
    PROPOSE_OTHERS_NEW_CHARGER_FRACTION,
    new_charger_share,
    vouched_share,
)
from devsen.config import ConsensusSection
from devsen.consensus_service import ConsensusService, GossipBudget, ServiceConfig
from ocpp_adapter.events import ChargerEvent
from ocpp_adapter.vouching import ingress_domain, vouch
from p2p.envelope import ValidatorDirectory
from p2p.keys import init_keys
from primitives.eip712 import ZERO_HASH, Domain


def vouched(charger: str, message_id: str, key_index: int = 0, action: str = "Heartbeat",
            payload: dict[Any, Any] | None = None) -> bytes:
    unsigned = ChargerEvent(charger, "1.6", action, message_id, payload or {}, "", 1_700_000_000_000)
    return vouch(unsigned, KEYS[key_index], ingress_domain(ANCHOR)).to_bytes()


def boot(charger: str, message_id: str) -> bytes:
    return vouched(charger, message_id, action="BootNotification",
                   payload={"chargePointVendor": "V", "chargePointModel": "M"})


# ---------------------------------------------------------------- block validity


def _config(tmp_path: Path, validators: int, **kwargs: Any) -> ServiceConfig:
    keys = [init_keys(tmp_path / f"keys{i}") for i in range(validators)]
    bindings = {k.validator_address: k.peer_id.to_bytes() for k in keys}
    return ServiceConfig(data_dir=tmp_path / "node", domain=Domain(31337, b"\xcd" * 20),
                         validators=ValidatorSet.equal(list(bindings)), directory=ValidatorDirectory(bindings),
                         durable=False, **kwargs)


def test_the_shares_are_proportional_to_the_budgets_and_composition_stays_within_validity(tmp_path: Path) -> None:
    assert ConsensusSection().max_block_payloads == BLOCK_EVENT_BUDGET  # a node's default block = the budget
    for n in (1, 2, 3, 4, 7, 10, 100, 5000):
        assert vouched_share(n) == max(1, BLOCK_EVENT_BUDGET // n) and vouched_share(n) * min(n, 2000) <= 2000
        assert 1 <= new_charger_share(n) <= vouched_share(n)
        assert new_charger_share(n) * n <= max(n, NEW_CHARGER_READ_BUDGET)  # the flood's reads are 1/n of the budget
    assert vouched_share(4) == 500 and new_charger_share(4) == 64
    for n in (1, 4, 7):  # the proposer's per-source reap is never above the validity share
        config = _config(tmp_path / str(n), n, block_max_payloads=BLOCK_EVENT_BUDGET).derived()
        assert config.block_max_per_source == config.source_share == vouched_share(n)
        assert config.gossip_max_pending_per_origin == 8 * vouched_share(n)  # below the mempool's 1/n
        assert config.gossip_rate_per_origin == 10.0 * vouched_share(n)
        assert config.gossip_burst_per_origin == 2 * vouched_share(n)


def test_a_thousand_first_boots_at_one_voucher_take_a_few_blocks_not_hundreds(tmp_path: Path) -> None:
    app, shell = make_app(tmp_path)
    share = new_charger_share(len(app.validators))
    boots = tuple(boot("CP-1" if i == 0 else f"NEW-{i}", f"b{i}") for i in range(share))
    assert shell.process(block(app, 1, boots))  # a whole share of first contacts is one valid block
    assert -(-1000 // share) <= 16  # 1000 first boots at one node: 16 blocks with 4 validators


def test_a_block_over_one_vouchers_new_charger_share_is_refused_before_any_chain_read(tmp_path: Path) -> None:
    app, shell = make_app(tmp_path)
    share = new_charger_share(len(app.validators))
    fresh = tuple(vouched(f"FLOOD-{i}", f"f{i}", key_index=1) for i in range(share + 1))
    reads = len(cast(Any, app.chain).reads_by)
    facts = app.fetch_facts(1, block(app, 1, fresh).app_header, fresh)
    assert facts.problem is not None and "chargers the ledger does not know" in facts.problem
    assert len(cast(Any, app.chain).reads_by) == reads  # refused without reading the chain
    assert not shell.process(block(app, 1, fresh))
    assert shell.process(block(app, 1, fresh[:-1]))  # the share itself is valid
    # Another voucher's share is its own: one voucher's flood does not use it up.
    mixed = fresh[:-1] + tuple(vouched(f"OTHER-{i}", f"o{i}", key_index=2) for i in range(share))
    assert shell.process(block(app, 1, mixed))


def test_events_of_chargers_the_ledger_knows_fill_up_to_the_per_voucher_cap(tmp_path: Path) -> None:
    app, shell = make_app(tmp_path)
    shell.finalize(block(app, 1, (boot("CP-1", "b1"),)))  # CP-1 is registered on the static chain
    assert app.ledger.device("CP-1") is not None
    cap = vouched_share(len(app.validators))
    known = tuple(vouched("CP-1", f"h{i}") for i in range(cap))
    assert shell.process(block(app, 2, known))
    over = known + (vouched("CP-1", "one-more"),)
    assert not shell.process(block(app, 2, over))
    facts = app.fetch_facts(2, block(app, 2, over).app_header, over)
    assert facts.problem is not None and f"more than {cap} events" in facts.problem


def test_unregistered_chargers_stay_new_so_a_flood_never_earns_a_bigger_share(tmp_path: Path) -> None:
    app, shell = make_app(tmp_path)
    share = new_charger_share(len(app.validators))
    first = tuple(vouched(f"FLOOD-{i}", f"f{i}", key_index=1) for i in range(share))
    shell.finalize(block(app, 1, first))
    assert all(app.ledger.device(f"FLOOD-{i}") is None for i in range(share))
    again = tuple(vouched(f"FLOOD-{i}", f"g{i}", key_index=1) for i in range(share + 1))
    assert not shell.process(block(app, 2, again))


# ---------------------------------------------------------------- block composition


def test_an_honest_proposer_takes_a_share_of_the_flood_and_all_honest_traffic(tmp_path: Path) -> None:
    app, shell = make_app(tmp_path)  # this node is KEYS[0]
    shell.finalize(block(app, 1, (boot("CP-1", "b1"),)))
    share = new_charger_share(len(app.validators))
    flood = tuple(vouched(f"FLOOD-{i}", f"f{i}", key_index=1) for i in range(share + 100))
    honest = (vouched("CP-1", "h1"), vouched("NEW-CP", "n1"), vouched("CP-1", "h2", key_index=2))
    offered = flood[:50] + honest + flood[50:]
    prepared = app.prepare_proposal(2, offered, (5, (5).to_bytes(32, "big")))
    kept = set(prepared.payloads)
    assert set(honest) <= kept
    assert len(kept & set(flood)) == share // PROPOSE_OTHERS_NEW_CHARGER_FRACTION  # the rest waits
    assert shell.process(block(app, 2, prepared.payloads))
    # This node's own new chargers get the whole share in its own proposals.
    own_new = tuple(vouched(f"MINE-{i}", f"m{i}") for i in range(share + 2))
    assert len(app.prepare_proposal(2, own_new, (5, (5).to_bytes(32, "big"))).payloads) == share


# ---------------------------------------------------------------- gossip admission


def test_gossip_budget_refills_at_its_rate_up_to_its_burst() -> None:
    budget = GossipBudget(rate=10.0, burst=5, max_origins=2)
    assert [budget.take(b"a", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert not budget.has_tokens(b"a", 0.05)
    assert budget.has_tokens(b"a", 0.1) and budget.take(b"a", 0.1) and not budget.take(b"a", 0.1)
    assert budget.take(b"b", 0.0) and budget.take(b"a", 100.0)
    assert [budget.take(b"a", 100.0) for _ in range(5)] == [True] * 4 + [False]  # capped at the burst
    assert not budget.take(b"c", 0.0)  # the origin table is bounded


class CountingApp:
    """check_tx counts its calls (each stands for one signature recovery); the voucher is the
    payload's prefix before b":"."""

    def __init__(self) -> None:
        self.checks = 0

    def check_tx(self, payload: bytes) -> CheckResult:
        self.checks += 1
        return CheckResult(True, source=payload.split(b":")[0].decode())

    def propose_facts(self, height: int) -> Any:
        return height

    def prepare_proposal(self, height: int, payloads: tuple[bytes, ...], facts: Any) -> Prepared:
        return Prepared(b"h", payloads)

    def fetch_facts(self, height: int, app_header: bytes, payloads: tuple[bytes, ...] = (), *, committed: bool = False,
                    block_ms: int | None = None) -> Any:
        return None

    def process_proposal(self, block: Any, facts: Any) -> bool:
        return True

    def finalize_block(self, block: Any, certificate: Any, facts: Any) -> FinalizeResult:
        return FinalizeResult(tuple(TxResult() for _ in block.payloads), ZERO_HASH)

    def commit(self, height: int) -> None:
        pass

    def restore(self, last_height: int, get_block: Any) -> Any:
        return None


def _service(tmp_path: Path) -> tuple[ConsensusService, CountingApp, list[bytes]]:
    keys = [init_keys(tmp_path / f"keys{i}") for i in range(4)]
    bindings = {k.validator_address: k.peer_id.to_bytes() for k in keys}
    app = CountingApp()
    config = ServiceConfig(data_dir=tmp_path / "node", domain=Domain(31337, b"\xcd" * 20),
                           validators=ValidatorSet.equal(list(bindings)), directory=ValidatorDirectory(bindings),
                           durable=False, mempool_max_count=20_000, block_max_payloads=BLOCK_EVENT_BUDGET)
    return ConsensusService(keys[0], config, cast(Application, app)), app, [k.validator_address for k in keys]


def test_a_flooding_origin_costs_at_most_its_backlog_in_checks_and_honest_gossip_still_gets_in(tmp_path: Path) -> None:
    service, app, (me, honest, byzantine, _) = _service(tmp_path)
    flooder = "0x" + byzantine.hex()
    cap = service.config.gossip_max_pending_per_origin
    assert cap == 4000
    service.gossip_budget = GossipBudget(rate=1e9, burst=10**6)  # only the backlog bounds it here
    sent = 5000

    async def main() -> None:
        flood = [b"%s:flood-%d" % (flooder.encode(), i) for i in range(sent)]
        for start in range(0, len(flood), 1000):  # batches as the events topic delivers them
            await service._on_payloads(byzantine, flood[start:start + 1000])
        assert service.mempool.usage(flooder)[0] == cap
        assert app.checks == cap  # every refused payload was refused before check_tx
        assert service.counters["gossip_payload_origin_backlogged"] == sent - cap
        assert not service._accepts_gossip_from(byzantine)  # its next batches are not even relayed
        await service._on_payloads(byzantine, flood[:10])  # replays: skipped as duplicates
        assert app.checks == cap and service.counters["gossip_payload_duplicate"] == 10
        good = [b"0x%s:hb-%d" % (honest.hex().encode(), i) for i in range(5)]
        assert service._accepts_gossip_from(honest)
        await service._on_payloads(honest, good)
        assert service.mempool.usage("0x" + honest.hex())[0] == 5 and app.checks == cap + 5
        mine = b"0x%s:own-event" % me.hex().encode()  # our own event relayed back by another node
        await service._on_payloads(honest, [mine])
        assert service.mempool.usage("local")[0] == 1
        # A proposal takes a share of the flooder's backlog and all the honest traffic.
        reaped = service.mempool.reap(2000, 4 * 1024 * 1024, per_source=service.config.block_max_per_source)
        assert sum(p.startswith(flooder.encode()) for p in reaped) == vouched_share(4) == 500
        assert set(good) <= set(reaped)

    trio.run(main)


def test_an_origin_over_its_token_budget_is_refused_before_check_tx(tmp_path: Path) -> None:
    service, app, (_, honest, _, _) = _service(tmp_path)
    service.config.gossip_max_pending_per_origin = 10**6  # only the token bucket bounds it here
    burst = cast(int, service.config.gossip_burst_per_origin)
    service.gossip_budget = GossipBudget(rate=0.001, burst=burst)  # no refill during the test

    async def main() -> None:
        payloads = [b"0x%s:e-%d" % (honest.hex().encode(), i) for i in range(burst + 100)]
        await service._on_payloads(honest, payloads)
        assert app.checks == burst
        assert service.counters["gossip_payload_over_budget"] == 100
        assert not service._accepts_gossip_from(honest)

    trio.run(main)



class RecoveringApp(CountingApp):
    """Offers recover_signatures (as NodeApplication does): records what it was given, and where."""

    def __init__(self) -> None:
        super().__init__()
        self.recovered: list[bytes] = []
        self.threads: set[int] = set()

    def recover_signatures(self, payloads: Any) -> None:
        self.threads.add(threading.get_ident())
        self.recovered.extend(payloads)


def test_gossiped_signatures_are_recovered_off_the_loop_only_within_the_budget_and_backlog(tmp_path: Path) -> None:
    service, _, (_, honest, byzantine, _) = _service(tmp_path)
    app = RecoveringApp()
    service.app = cast(Application, app)
    burst = 50
    service.gossip_budget = GossipBudget(rate=0.001, burst=burst)  # no refill during the test
    service.config.gossip_max_pending_per_origin = 30

    async def main() -> None:
        flood = [b"0x%s:e-%d" % (byzantine.hex().encode(), i) for i in range(burst + 100)]
        await service._on_payloads(byzantine, flood)
        assert app.recovered == flood[:30]  # within the backlog room of the budgeted 50
        assert threading.get_ident() not in app.threads  # in a worker thread
        assert app.checks == 30 and service.mempool.usage("0x" + byzantine.hex())[0] == 30
        assert service.counters["gossip_payload_over_budget"] == 100
        assert service.counters["gossip_payload_origin_backlogged"] == 20
        await service._on_payloads(honest, [b"0x%s:one" % honest.hex().encode()])  # too few for a thread hop
        assert len(app.recovered) == 30 and app.checks == 31

    trio.run(main)


class DeferringApp(CountingApp):
    """prepare_proposal leaves out b"later" payloads (over a share); check_tx refuses b"stale" ones
    from now on (they became invalid)."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse_stale = False

    def check_tx(self, payload: bytes) -> CheckResult:
        self.checks += 1
        return CheckResult(not (self.refuse_stale and payload.startswith(b"stale")), source="0xsome")

    def prepare_proposal(self, height: int, payloads: tuple[bytes, ...], facts: Any) -> Prepared:
        return Prepared(b"h", tuple(p for p in payloads if p.startswith(b"now")))


def test_payloads_a_proposal_leaves_out_over_their_share_wait_and_refused_ones_are_forgotten(tmp_path: Path) -> None:
    keys = init_keys(tmp_path / "keys")
    bindings = {keys.validator_address: keys.peer_id.to_bytes()}
    app = DeferringApp()
    config = ServiceConfig(data_dir=tmp_path / "node", domain=Domain(31337, b"\xcd" * 20),
                           validators=ValidatorSet.equal(list(bindings)), directory=ValidatorDirectory(bindings),
                           durable=False)
    service = ConsensusService(keys, config, cast(Application, app))  # the only validator: it proposes every height

    async def main() -> None:
        for payload in (b"now-1", b"later-1", b"stale-1"):
            service.mempool.add(payload, source="0xsome")
        app.refuse_stale = True
        await service._carry_out(service.replica.start())
        if service._pending_proposal is None:
            await service._carry_out(service.replica.wake())
        assert service._pending_proposal is not None
        with trio.fail_after(10):
            await service._answer_proposal()
        assert service.committed_height == 1 and cast(CommittedBlock, service.store.get(1)).block.payloads == (b"now-1",)
        assert len(service.mempool) == 1 and service.mempool.reap(10, 10**6) == (b"later-1",)
        assert service.counters["proposal_payload_deferred"] == 1
        assert service.counters["proposal_payload_refused"] == 1

    trio.run(main)


def test_the_events_topic_drops_a_batch_whose_origin_the_node_refuses(tmp_path: Path) -> None:
    """p2p/gossip.py `accept_origin`: the node's backpressure refuses the batch in the topic
    validator, so py-libp2p neither delivers nor forwards it."""
    from types import SimpleNamespace

    from libp2p.pubsub.pb import rpc_pb2

    from p2p.batching import encode_batch
    from p2p.envelope import DropCounters, MessageKind, seal
    from p2p.gossip import EventGossip

    keys = [init_keys(tmp_path / f"keys{i}") for i in range(2)]
    directory = ValidatorDirectory({k.validator_address: k.peer_id.to_bytes() for k in keys})
    network_id = b"\x07" * 32
    running = SimpleNamespace(drops=DropCounters())

    async def on_payloads(sender: bytes, payloads: list[bytes]) -> None:
        pass

    gossip = EventGossip(running, keys[0], network_id, directory, on_payloads)  # type: ignore[arg-type]
    wire = seal(keys[1].validator, network_id, MessageKind.EVENT_BATCH, encode_batch([b"e1", b"e2"]))
    msg = rpc_pb2.Message(from_id=keys[1].peer_id.to_bytes(), seqno=b"\x00" * 8, data=wire)
    assert gossip._validate(keys[1].peer_id, msg)  # no backpressure: accepted
    refused: list[bytes] = []
    gossip.accept_origin = lambda origin: cast(Any, refused.append(origin)) is not None  # always False
    msg.seqno = b"\x00" * 7 + b"\x01"
    assert not gossip._validate(keys[1].peer_id, msg)
    assert refused == [keys[1].validator_address]
    assert running.drops.snapshot().get(f"{gossip.topic}/origin_backlogged") == 1


# ---------------------------------------------------------------- chain reads of a block


class SlowDevices:
    """A chain client whose device() read takes 50 ms (an eth_call under load) and counts calls."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.deployment = SimpleNamespace(addresses=lambda: {})
        self.contracts = {"Escrow": SimpleNamespace(abi=[])}  # no events: nothing to invalidate
        self.calls: list[str] = []

    def device(self, charge_box_id: str, block: Any) -> Any:
        import time

        time.sleep(0.05)
        self.calls.append(charge_box_id)
        return None if charge_box_id.startswith("FLOOD") else ("record", charge_box_id)


def test_a_blocks_uncached_device_reads_are_prefetched_concurrently_then_hit_the_cache() -> None:
    import time

    from anchoring.chain import device_id_of
    from devsen.chain_view import ContractChainView, ReadCache

    client = SlowDevices()
    cache = ReadCache(client)  # type: ignore[arg-type]
    cache.advance(5)
    view = ContractChainView(client, None, 5, cache)  # type: ignore[arg-type]
    cache.put("device", device_id_of("CACHED"), ("record", "CACHED"))
    chargers = [f"FLOOD-{i}" for i in range(32)] + ["CACHED"]
    started = time.monotonic()
    view.prefetch_devices(chargers, 8)
    assert time.monotonic() - started < 32 * 0.05 / 2  # 8 at once, not one after another
    assert sorted(client.calls) == sorted(chargers[:-1])  # the cached one is not read again
    assert all(cache.entries[("device", device_id_of(c))] is None for c in chargers[:-1])  # absent, cached
    before = len(client.calls)
    assert view.device("FLOOD-3") is None and len(client.calls) == before  # answered from the cache
