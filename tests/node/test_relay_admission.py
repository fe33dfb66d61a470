"""A validator taking a full node's relayed events (p2p/relay.py, ConsensusService._on_relayed).

Hostile: a relayed event vouched by an unregistered key, a payload that is not a charger event,
a flood past the relaying peer's token bucket, and malformed or foreign request frames are all
refused; an operator's events are pooled under the operator's own mempool share (not the
relaying peer's, not this validator's); a full node whose own key is not a registered operator
refuses to relay at all."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, cast

import msgpack
import pytest
import trio
from test_operator_admission import OPERATOR, STRANGER, _app, vouched

from consensus.abci import Application
from consensus.types import ValidatorSet
from devsen.consensus_service import ConsensusService, GossipBudget, ServiceConfig
from p2p.envelope import ValidatorDirectory
from p2p.keys import init_keys
from p2p.relay import MAX_RELAY_BYTES, MAX_RELAY_PAYLOADS, decode_request, relay_batch_length
from primitives.eip712 import Domain

NETWORK = b"\x4e" * 32
FULL_PEER = b"peer-of-a-full-node"


def _service(tmp_path: Path, *, follower: bool = False) -> tuple[ConsensusService, Any]:
    app, _ = _app(tmp_path)
    app.operators = frozenset({OPERATOR.address})  # as the last applied block's facts said
    keys = [init_keys(tmp_path / f"keys{i}") for i in range(4)]
    bindings = {k.validator_address: k.peer_id.to_bytes() for k in keys}
    config = ServiceConfig(data_dir=tmp_path / "node", domain=Domain(31337, b"\xcd" * 20),
                           validators=ValidatorSet.equal(list(bindings)), directory=ValidatorDirectory(bindings),
                           durable=False, follower=follower)
    return ConsensusService(keys[0], config, cast(Application, app)), app


def test_relayed_events_are_judged_like_gossip_and_pooled_under_the_operator(tmp_path: Path) -> None:
    service, app = _service(tmp_path)
    mine, theirs = vouched(OPERATOR, "r1"), vouched(STRANGER, "r2")
    recovered_in: list[str] = []
    honest = app.recover_signatures

    def recover_signatures(payloads: Any) -> None:  # where the signatures are recovered
        recovered_in.append(threading.current_thread().name)
        honest(payloads)

    app.recover_signatures = recover_signatures

    async def main() -> None:
        verdicts = await service._on_relayed(FULL_PEER, [mine, theirs, b"\xa1not-an-event"])
        assert verdicts[0] is None
        assert verdicts[1] is not None and "nor a registered operator" in verdicts[1]
        assert verdicts[2] == "only charger events and command outcomes are relayed"
        assert service.mempool.usage("0x" + OPERATOR.address.hex())[0] == 1  # the operator's own share
        assert service.mempool.usage("0x" + FULL_PEER.hex())[0] == 0
        assert recovered_in and threading.main_thread().name not in recovered_in  # off the event loop
        refused = service.counters["relay_payload_refused"]
        assert await service._on_relayed(FULL_PEER, [mine]) == [None]  # a resend: already pooled, not re-judged
        assert service.counters["relay_payload_refused"] == refused and service.counters["relay_payload_pooled"] == 1

    trio.run(main)


def test_a_flooding_full_node_is_held_to_its_token_bucket(tmp_path: Path) -> None:
    service, _ = _service(tmp_path)
    service.relay_budget = GossipBudget(rate=0.001, burst=3)  # no refill during the test

    async def main() -> None:
        flood = [vouched(OPERATOR, f"flood-{i}", "Heartbeat") for i in range(5)]
        verdicts = await service._on_relayed(FULL_PEER, flood)
        assert verdicts[:3] == [None, None, None]
        assert all(v is not None and "relay budget" in v for v in verdicts[3:])
        assert service.counters["relay_over_budget"] == 2
        # another full node (another peer) still gets in
        assert await service._on_relayed(b"another-full-node", [vouched(OPERATOR, "other", "Heartbeat")]) == [None]
        # ... but all full nodes together get at most the validator's total relay budget
        service.relay_total = GossipBudget(rate=0.001, burst=1, max_origins=1)
        many = [await service._on_relayed(b"full-%d" % i, [vouched(OPERATOR, f"many-{i}", "Heartbeat")])
                for i in range(3)]
        assert many[0] == [None] and all(v[0] is not None and "all full nodes" in v[0] for v in many[1:])

    trio.run(main)


def test_request_frames_are_bounded_and_of_this_network() -> None:
    def frame(value: Any) -> bytes:
        return cast(bytes, msgpack.packb(value, use_bin_type=True))

    assert decode_request(frame([NETWORK, [b"\x9a1", b"\x9a2"]]), NETWORK) == [b"\x9a1", b"\x9a2"]
    assert decode_request(b"\xc1garbage", NETWORK) == "malformed"
    assert decode_request(frame([b"\x00" * 32, [b"\x9a"]]), NETWORK) == "wrong_network"
    assert decode_request(frame([NETWORK, []]), NETWORK) == "malformed"
    assert decode_request(frame([NETWORK, [b""]]), NETWORK) == "malformed"
    assert decode_request(frame([NETWORK, [b"\x9a"] * (MAX_RELAY_PAYLOADS + 1)]), NETWORK) == "malformed"
    assert decode_request(frame([NETWORK, ["text"]]), NETWORK) == "malformed"


def test_a_full_node_not_registered_as_an_operator_does_not_relay(tmp_path: Path) -> None:
    service, app = _service(tmp_path, follower=True)
    app.operators = frozenset()  # its key is not in ValidatorSet.operators()

    async def main() -> None:
        with pytest.raises(ValueError, match="nor a registered operator"):
            await service.relay(vouched(OPERATOR, "x1"), timeout_s=1)

    trio.run(main)


class _BatchingNet:
    """The validators behind a stand-in p2p: each refuses payloads starting b"bad"; a request takes 50 ms."""

    def __init__(self, directory: ValidatorDirectory) -> None:
        self.requests: list[tuple[bytes, int]] = []
        self.directory = directory

    async def relay(self, address: bytes, payloads: list[bytes]) -> list[str | None]:
        self.requests.append((address, len(payloads)))
        await trio.sleep(0.05)
        return ["refused: bad" if p.startswith(b"bad") else None for p in payloads]


def test_a_full_node_relays_what_waits_in_batches_with_a_verdict_per_payload(tmp_path: Path) -> None:
    service, _ = _service(tmp_path, follower=True)
    net = _BatchingNet(service.config.directory)
    fates: dict[bytes, str | None] = {}

    async def one(payload: bytes) -> None:
        fates[payload] = await service._relay_once(payload)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            service._net, service._nursery = cast(Any, net), nursery
            nursery.start_soon(service._relay_sender)
            async with trio.open_nursery() as callers:
                for i in range(150):
                    callers.start_soon(one, (b"bad-%d" if i == 7 else b"\x9aev-%d") % i)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert len(fates) == 150 and sum(f is None for f in fates.values()) == 149
    assert "refused: bad" in str(fates[b"bad-7"])  # one bad payload sinks only itself
    sizes = [n for _, n in net.requests]
    print(f"relay requests for 150 payloads (sizes): {sizes}")
    assert max(sizes) == MAX_RELAY_PAYLOADS and len(sizes) <= 8, sizes  # batches, not 150 requests
    assert len({a for a, _ in net.requests}) >= 2  # the refused one was asked of other validators
    assert service.counters["relay_taken"] == 149 and service.counters["relay_requests"] == len(sizes)


def test_relay_batches_are_bounded_by_count_and_bytes() -> None:
    assert relay_batch_length([10] * 100) == MAX_RELAY_PAYLOADS
    assert relay_batch_length([MAX_RELAY_BYTES // 2] * 3) == 1  # the second would pass the byte bound
    assert relay_batch_length([MAX_RELAY_BYTES]) == 0  # too large alone: refused, never sent
    assert relay_batch_length([]) == 0
