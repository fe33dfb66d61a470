"""Ledger.from_bytes hashes the reply and closed-transaction entries from their raw encoding
(devsen/ledger/state.py raw_state): only a canonical snapshot is taken, and the restored
digests equal those of a ledger that applied the blocks."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from ledger_world import World, ev

from devsen.ledger import Ledger
from devsen.ledger.ledger import SnapshotError


def _world() -> World:
    world = World()
    world.one(ev("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}))
    world.one(ev("Heartbeat", {}))
    return world


def _fields(world: World) -> Any:
    return msgpack.unpackb(world.ledger.to_bytes(), raw=False)


def test_restored_digests_equal_the_applied_ones() -> None:
    world = _world()
    restored = Ledger.from_bytes(world.ledger.to_bytes())
    assert restored.state_hash() == world.ledger.state_hash()
    assert restored.table_digests() == world.ledger.table_digests()


def test_unsorted_map_keys_are_refused() -> None:
    fields = _fields(_world())
    replies = fields[3][4]
    reply = next(v for _, v in replies if isinstance(v[2], dict) and len(v[2]) > 1)
    reply[2] = dict(reversed(list(reply[2].items())))  # same content, keys out of order
    with pytest.raises(SnapshotError):
        Ledger.from_bytes(msgpack.packb(fields, use_bin_type=True))


def test_floats_and_non_minimal_encodings_are_refused() -> None:
    fields = _fields(_world())
    replies = fields[3][4]
    replies[0][1][1] = float(replies[0][1][1])  # a height as a float
    with pytest.raises(SnapshotError):
        Ledger.from_bytes(msgpack.packb(fields, use_bin_type=True))
    data = _world().ledger.to_bytes()
    assert data[0] == 0x94  # fixarray of 4: the same array with a 16-bit length is not canonical
    with pytest.raises(SnapshotError):
        Ledger.from_bytes(b"\xdc\x00\x04" + data[1:])
