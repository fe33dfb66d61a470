"""`p2p.max_peers` (issue 10): inbound connections are bounded, and an outsider flood can
neither evict nor block a validator's link. In-process, loopback libp2p hosts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from libp2p.peer.peerinfo import PeerInfo

from p2p.envelope import DropCounters, ValidatorDirectory
from p2p.host import (
    HostConfig,
    InboundGate,
    RunningHost,
    build_host,
    outsider_slots,
    parse_peer_addr,
)
from p2p.keys import init_keys
from p2p.node import P2PConfig, P2PHandlers, open_p2p

NETWORK = b"\x42" * 32
MAX_PEERS = 3  # two validators: one outsider slot
OUTSIDERS = 8


def test_outsider_slots_reserve_one_per_validator() -> None:
    assert outsider_slots(64, 4) == 60 and outsider_slots(3, 2) == 1 and outsider_slots(2, 5) == 0
    gate = InboundGate(3, 1, lambda peer: peer == b"v", lambda: 2, DropCounters())
    assert gate.admit(b"o1") == "outsider" and gate.admit(b"o2") is None  # the one slot is taken
    assert gate.admit(b"v") == "validator" and gate.admit(b"v") == "validator"  # never refused
    gate.release("outsider")
    assert gate.admit(b"o2") == "outsider"
    assert gate.begin_handshake() and not gate.begin_handshake()
    assert gate.drops.snapshot() == {"inbound/handshakes_busy": 1, "inbound/outsider_slots_full": 1}


def _connected_peers(running: RunningHost) -> set[bytes]:
    network = running.host.get_network()
    return {peer.to_bytes() for peer, conns in network.connections.items() if any(not c.is_closed for c in conns)}


def test_outsider_flood_stays_bounded_and_validator_links_still_work(tmp_path: Path) -> None:
    keys = [init_keys(tmp_path / f"v{i}") for i in range(2)]
    bindings = {k.validator_address: k.peer_id.to_bytes() for k in keys}
    received: list[tuple[bytes, bytes]] = []
    figures: dict[str, Any] = {}

    async def on_consensus(sender: bytes, body: bytes) -> None:
        received.append((sender, body))

    async def ignore(*_: object) -> None:
        return None

    handlers = P2PHandlers(on_consensus, ignore, lambda lo, hi: [], lambda: 0)

    async def main() -> None:
        with trio.fail_after(90):
            config_a = P2PConfig(NETWORK, ValidatorDirectory(bindings),
                                 HostConfig(listen="/ip4/127.0.0.1/tcp/0", max_peers=MAX_PEERS,
                                            max_pending_handshakes=4, handshake_timeout_s=2.0))
            async with open_p2p(keys[0], config_a, handlers) as a:
                target = parse_peer_addr(a.running.listen_addrs()[0])
                # The flood first: 8 outsider hosts (fresh identities) dial A, then a few hold
                # raw sockets open without ever starting the handshake.
                async with trio.open_nursery() as nursery:
                    for i in range(OUTSIDERS):
                        nursery.start_soon(_outsider, tmp_path / f"o{i}", target)
                    await trio.sleep(3)
                    outsiders_at_a = _connected_peers(a.running) - set(bindings.values())
                    figures["outsiders_connected"] = len(outsiders_at_a)
                    assert len(outsiders_at_a) <= outsider_slots(MAX_PEERS, 2) == 1, figures
                    assert a.running.gate is not None and a.running.gate.outsiders <= 1
                    # Then the validator arrives, while the outsiders keep redialing.
                    config_b = P2PConfig(NETWORK, ValidatorDirectory(bindings),
                                         HostConfig(listen="/ip4/127.0.0.1/tcp/0",
                                                    bootstrap=(a.running.listen_addrs()[0],)))
                    async with open_p2p(keys[1], config_b, handlers) as b:
                        with trio.fail_after(30):
                            while not (a.connected_validators() and b.connected_validators()):
                                await trio.sleep(0.1)
                            while not any(s == keys[1].validator_address for s, _ in received):
                                b.broadcast_consensus(b"vote from b")
                                await trio.sleep(0.2)
                        peers = _connected_peers(a.running)
                        figures["connections_at_a"] = len(peers)
                        assert keys[1].peer_id.to_bytes() in peers
                        assert len(peers - set(bindings.values())) <= 1, figures
                        assert len(peers) <= MAX_PEERS
                    figures["drops"] = a.running.drops.snapshot()
                    nursery.cancel_scope.cancel()
        print("max_peers flood:", figures)
        # every outsider beyond the one slot was refused, after the handshake or before it (how
        # often each redials depends on the dialer's retry policy, so count both kinds)
        refused = figures["drops"].get("inbound/outsider_slots_full", 0) + figures["drops"].get("inbound/handshakes_busy", 0)
        assert refused >= OUTSIDERS - 1, figures

    trio.run(main)


async def _outsider(key_dir: Path, target: PeerInfo) -> None:
    """An outsider libp2p host that keeps dialing the target (as a flood would)."""
    keys = init_keys(key_dir)
    host = build_host(keys, HostConfig(listen="/ip4/127.0.0.1/tcp/0"))
    import multiaddr

    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        while True:
            try:
                with trio.fail_after(3):
                    await host.connect(target)
            except Exception:
                pass
            await trio.sleep(0.3)


def test_unauthenticated_handshakes_are_bounded(tmp_path: Path) -> None:
    """Raw sockets that never start the Noise handshake hold at most max_pending_handshakes
    slots; the rest are closed unread."""
    keys = init_keys(tmp_path / "v")
    bindings = {keys.validator_address: keys.peer_id.to_bytes()}

    async def ignore(*_: object) -> None:
        return None

    async def main() -> None:
        with trio.fail_after(30):
            config = P2PConfig(NETWORK, ValidatorDirectory(bindings),
                               HostConfig(listen="/ip4/127.0.0.1/tcp/0", max_pending_handshakes=3,
                                          handshake_timeout_s=10.0))
            async with open_p2p(keys, config, P2PHandlers(ignore, ignore, lambda lo, hi: [], lambda: 0)) as a:
                port = int(str(a.running.listen_addrs()[0]).split("/tcp/")[1].split("/")[0])
                sockets = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(8)]
                await trio.sleep(1)
                gate = a.running.gate
                assert gate is not None and gate.pending == 3
                assert a.running.drops.get("inbound", "handshakes_busy") == 5
                for s in sockets:
                    await s.aclose()
                with trio.fail_after(5):
                    while gate.pending:
                        await trio.sleep(0.1)

    trio.run(main)
