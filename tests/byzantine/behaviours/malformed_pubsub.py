"""Open a pubsub (gossipsub 1.1) stream to every linked validator and write length-prefixed
bytes that are not a protobuf RPC, once a second."""

from __future__ import annotations

import os
from typing import Any

import trio

from behaviours import after_start, log


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


async def attack(parts: Any) -> None:
    from libp2p.custom_types import TProtocol
    from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11

    service = parts.service
    while service._net is None:
        await trio.sleep(0.1)
    await trio.sleep(2)
    net = service._net
    while True:
        for address in net.directory.addresses():
            peer = net.directory.peer_of(address)
            if peer is None or address == parts.keys.validator.address:
                continue
            try:
                from libp2p.peer.id import ID

                stream = await net.running.host.new_stream(ID(peer), [TProtocol(str(PROTOCOL_ID_V11))])
                junk = b"\x0a\xff\xff\xff\xff\x0f" + os.urandom(32)  # a field claiming 4 GiB
                await stream.write(_varint(len(junk)) + junk)
                await stream.close()
            except Exception as exc:
                log.warning("malformed pubsub write to %s failed: %s", peer.hex()[:12], exc)
        await trio.sleep(1)


def install() -> None:
    after_start(attack)
