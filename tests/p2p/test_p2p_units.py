"""Unit tests of the sans-I/O parts of p2p: keys, frames, envelopes, batching."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from p2p.batching import Batcher, BatchError, decode_batch, encode_batch
from p2p.envelope import (
    DropCounters,
    DropReason,
    Envelope,
    EnvelopeDropped,
    MessageKind,
    ValidatorDirectory,
    network_id_of,
    open_envelope,
    seal,
)
from p2p.framing import (
    FrameDecoder,
    FrameError,
    RequestFailed,
    encode_frame,
    encode_uvarint,
    framed_request,
    read_request,
)
from p2p.keys import (
    LIBP2P_KEY_FILE,
    VALIDATOR_KEY_FILE,
    KeyFileError,
    init_keys,
    load_identity,
    load_keys,
)
from p2p.sync import MAX_OUTSIDER_STREAMS, BlockSyncServer, _self_bound
from primitives.eip712 import Domain, SigningKey

NETWORK = network_id_of(Domain(31337, b"\x11" * 20))
OTHER_NETWORK = network_id_of(Domain(31337, b"\x22" * 20))


def test_keys_are_created_private_and_reloaded_identically(tmp_path: Path) -> None:
    keys = init_keys(tmp_path / "k")
    for name in (LIBP2P_KEY_FILE, VALIDATOR_KEY_FILE):
        assert stat.S_IMODE(os.stat(tmp_path / "k" / name).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o700
    again = init_keys(tmp_path / "k")  # idempotent: loads, never overwrites
    loaded = load_keys(tmp_path / "k")
    assert again == loaded == keys
    assert loaded.peer_id == keys.peer_id
    assert loaded.describe()["validator_address"].lower() == "0x" + keys.validator_address.hex()


def test_keys_refuse_half_directories_exposed_files_and_garbage(tmp_path: Path) -> None:
    init_keys(tmp_path / "k")
    (tmp_path / "k" / VALIDATOR_KEY_FILE).unlink()
    with pytest.raises(KeyFileError, match="only one"):
        init_keys(tmp_path / "k")
    with pytest.raises(KeyFileError, match="missing"):
        load_keys(tmp_path / "k")
    init_keys(tmp_path / "j")
    os.chmod(tmp_path / "j" / LIBP2P_KEY_FILE, 0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        load_keys(tmp_path / "j")
    os.chmod(tmp_path / "j" / LIBP2P_KEY_FILE, 0o600)
    (tmp_path / "j" / LIBP2P_KEY_FILE).write_text("zz\n")
    with pytest.raises(KeyFileError, match="not hex"):
        load_keys(tmp_path / "j")


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(min_value=1, max_value=64))
def test_frames_roundtrip_in_any_chunking(bodies: list[bytes], chunk: int) -> None:
    wire = b"".join(encode_frame(b, 300) for b in bodies)
    decoder = FrameDecoder(300)
    out = []
    for i in range(0, len(wire), chunk):
        decoder.feed(wire[i : i + chunk])
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
    assert out == bodies
    assert decoder.buffered == 0


def test_frames_refuse_oversize_before_buffering_and_bad_varints() -> None:
    decoder = FrameDecoder(100)
    decoder.feed(encode_uvarint(101))
    with pytest.raises(FrameError, match="101-byte frame"):
        decoder.next_frame()
    decoder = FrameDecoder(100)
    decoder.feed(b"\xff" * 11)
    with pytest.raises(FrameError, match="too long"):
        decoder.next_frame()
    with pytest.raises(FrameError):
        encode_frame(b"x" * 101, 100)


def _open(wire: bytes, directory: ValidatorDirectory, from_peer: bytes,
          kinds: tuple[MessageKind, ...] = (MessageKind.CONSENSUS,), network: bytes = NETWORK) -> Envelope:
    return open_envelope(wire, network_id=network, kinds=kinds, directory=directory,
                         from_peer=from_peer, max_body_bytes=1024)


def test_envelope_accepts_a_bound_validator_and_drops_everything_else() -> None:
    alice, mallory = SigningKey(b"\x01" * 32), SigningKey(b"\x02" * 32)
    directory = ValidatorDirectory({alice.address: b"peer-alice"})
    wire = seal(alice, NETWORK, MessageKind.CONSENSUS, b"vote")
    envelope = _open(wire, directory, b"peer-alice")
    assert (envelope.sender, envelope.body, envelope.kind) == (alice.address, b"vote", MessageKind.CONSENSUS)

    def reason(wire: bytes, from_peer: bytes = b"peer-alice", **kw: Any) -> DropReason:
        with pytest.raises(EnvelopeDropped) as info:
            _open(wire, directory, from_peer, **kw)
        return info.value.reason

    assert reason(wire, network=OTHER_NETWORK) is DropReason.WRONG_NETWORK
    assert reason(wire, kinds=(MessageKind.EVENT_BATCH,)) is DropReason.WRONG_KIND
    assert reason(wire, from_peer=b"peer-mallory") is DropReason.PEER_MISMATCH
    assert reason(seal(mallory, NETWORK, MessageKind.CONSENSUS, b"vote"), b"peer-mallory") is DropReason.NOT_VALIDATOR
    assert reason(b"\xc1garbage") is DropReason.MALFORMED
    assert reason(seal(alice, NETWORK, MessageKind.CONSENSUS, b"x" * 2000)) is DropReason.OVERSIZE
    fields = msgpack.unpackb(wire)
    fields[4] = b"forged"  # body changed after signing
    assert reason(msgpack.packb(fields)) is DropReason.BAD_SIGNATURE
    fields = msgpack.unpackb(seal(mallory, NETWORK, MessageKind.CONSENSUS, b"vote"))
    fields[3] = alice.address  # mallory claims to be alice on alice's peer id
    assert reason(msgpack.packb(fields)) is DropReason.BAD_SIGNATURE


def test_directory_refuses_duplicate_peer_ids_without_raising(caplog: pytest.LogCaptureFixture) -> None:
    """Two validators claim one peer id (a hostile ValidatorSet entry): before, `replace`
    raised and every node failed to start; now the claim is a refused entry."""
    a, b, c = b"\x01" * 20, b"\x02" * 20, b"\x03" * 20
    directory = ValidatorDirectory({b: b"peer-b", c: b"peer-c"})
    with caplog.at_level("WARNING", logger="devsen.p2p.directory"):
        directory.replace({a: b"peer-b", b: b"peer-b", c: b"peer-c"})  # a (lower address) squats b's id
        directory.replace({a: b"peer-b", b: b"peer-b", c: b"peer-c"})
    assert directory.peer_of(b) == b"peer-b" and directory.address_of(b"peer-b") == b  # the incumbent keeps it
    assert a not in directory and set(directory.refused) == {a}
    assert sum("refused" in r.message for r in caplog.records) == 1  # logged once
    fresh = ValidatorDirectory({c: b"same", b: b"same", a: b"same"})  # no incumbent: the lowest address
    assert fresh.addresses() == [a] and set(fresh.refused) == {b, c}
    assert ValidatorDirectory({b: b"same", c: b"same", a: b"same"}).addresses() == [a]  # order-independent


def test_directory_refuses_garbage_entries() -> None:
    ok = b"\x05" * 20
    hostile = {b"short": b"p", b"\x01" * 20: b"", b"\x02" * 20: b"x" * 65, b"\x03" * 20: "text",
               7: b"p7", ok: b"fine"}
    directory = ValidatorDirectory(hostile)  # type: ignore[arg-type]
    assert directory.addresses() == [ok] and len(directory.refused) == 5


def test_directory_replace_and_drop_counters() -> None:
    directory = ValidatorDirectory({b"\x01" * 20: b"p1"})
    directory.replace({b"\x02" * 20: b"p2", b"\x03" * 20: b"p3"})
    assert directory.addresses() == [b"\x02" * 20, b"\x03" * 20]
    assert directory.address_of(b"p1") is None and directory.peer_of(b"\x03" * 20) == b"p3"
    counters = DropCounters()
    counters.add("events", "not_validator", 3)
    counters.add("links", "wrong_network")
    assert counters.get("events", "not_validator") == 3 and counters.total() == 4
    assert counters.snapshot() == {"events/not_validator": 3, "links/wrong_network": 1}


def test_batcher_closes_by_count_bytes_and_deadline() -> None:
    batcher = Batcher(max_count=3, max_bytes=100, max_delay_s=0.005)
    assert batcher.deadline() is None and not batcher.due(0.0)
    for i in range(3):
        assert batcher.add(b"p%d" % i, now=1.0) is None
    assert batcher.full() and batcher.due(1.0)
    assert batcher.add(b"p3", now=1.001) == [b"p0", b"p1", b"p2"]
    assert not batcher.due(1.005) and batcher.due(1.006)
    assert batcher.take() == [b"p3"] and len(batcher) == 0
    assert batcher.add(b"x" * 60, 2.0) is None
    assert batcher.add(b"y" * 60, 2.0) == [b"x" * 60]  # bytes bound
    with pytest.raises(BatchError):
        batcher.add(b"z" * 200, 2.0)


def test_batch_codec_bounds() -> None:
    payloads = [b"a", b"bb", b""]
    assert decode_batch(encode_batch(payloads), 3) == payloads
    with pytest.raises(BatchError):
        decode_batch(encode_batch(payloads), 2)
    with pytest.raises(BatchError):
        decode_batch(msgpack.packb(["text"]), 10)


def test_full_node_keys_need_no_validator_key_and_keep_their_peer_id(tmp_path: Path) -> None:
    first = load_identity(tmp_path / "keys")
    assert not (tmp_path / "keys" / VALIDATOR_KEY_FILE).exists()
    again = load_identity(tmp_path / "keys")
    assert again.peer_id == first.peer_id  # a persistent libp2p identity
    assert again.validator.address != first.validator.address  # a throwaway signer per process


def test_sync_serves_outsiders_only_under_their_own_key_and_bounded_per_peer() -> None:
    """A full node's sync request is checked like a validator's (network, kind, size, signature)
    against the key it names on the peer it came from; a claim to be a validator fails; one
    request at a time per outsider and MAX_OUTSIDER_STREAMS in all."""
    full, alice = SigningKey(b"\x03" * 32), SigningKey(b"\x01" * 32)
    request = seal(full, NETWORK, MessageKind.SYNC_REQUEST, b"req")
    envelope = _open(request, _self_bound(request, b"peer-full"), b"peer-full", kinds=(MessageKind.SYNC_REQUEST,))
    assert envelope.sender == full.address
    fields = msgpack.unpackb(request)
    fields[3] = alice.address  # an outsider posing as validator alice
    forged = msgpack.packb(fields)
    with pytest.raises(EnvelopeDropped) as info:
        _open(forged, _self_bound(forged, b"peer-full"), b"peer-full", kinds=(MessageKind.SYNC_REQUEST,))
    assert info.value.reason is DropReason.BAD_SIGNATURE
    with pytest.raises(EnvelopeDropped) as info:
        _open(b"\xc1garbage", _self_bound(b"\xc1garbage", b"peer-full"), b"peer-full")
    assert info.value.reason is DropReason.MALFORMED

    class Running:
        drops = DropCounters()

    server = BlockSyncServer(Running(), None, NETWORK, ValidatorDirectory(), lambda a, b: [], lambda: 0)  # type: ignore[arg-type]
    assert server._admit_outsider(b"peer-full")
    assert not server._admit_outsider(b"peer-full")  # its second concurrent request
    server._outsiders.give_back(b"peer-full")
    assert server._admit_outsider(b"peer-full")
    others = [b"peer-%d" % i for i in range(MAX_OUTSIDER_STREAMS - 1)]
    assert all(server._admit_outsider(p) for p in others)
    assert not server._admit_outsider(b"peer-one-too-many")
    assert Running.drops.snapshot() == {"sync_in/outsider_busy": 1, "sync_in/outsiders_full": 1}


class _FakeStream:
    """A stream whose peer sends `incoming` (then ends, or stalls if `stall`)."""

    def __init__(self, incoming: bytes, stall: bool = False) -> None:
        self.incoming, self.stall = incoming, stall
        self.written = b""
        self.was_reset = False

    async def write(self, data: bytes) -> None:
        self.written += data

    async def read(self, n: int | None = None) -> bytes:
        if not self.incoming and self.stall:
            await trio.sleep_forever()
        chunk, self.incoming = self.incoming[: n or 1], self.incoming[n or 1:]
        return chunk

    async def reset(self) -> None:
        self.was_reset = True


def test_framed_request_refuses_oversize_truncated_and_missing_answers() -> None:
    async def ask(stream: _FakeStream, request: bytes = b"req", timeout_s: float = 1.0) -> bytes:
        async def open_stream() -> _FakeStream:
            return stream

        return await framed_request(open_stream, request, max_request_bytes=16, max_answer_bytes=100,
                                    timeout_s=timeout_s)

    async def main() -> None:
        good = _FakeStream(encode_frame(b"answer", 100))
        assert await ask(good) == b"answer" and good.written == encode_frame(b"req", 16) and good.was_reset
        cases = [
            (_FakeStream(encode_uvarint(101) + b"x" * 101), "failed", "101-byte frame"),  # oversize answer
            (_FakeStream(encode_frame(b"x" * 50, 100)[:20]), "failed", "inside a frame"),  # truncated answer
            (_FakeStream(b""), "closed", "without an answer"),
            (_FakeStream(b"", stall=True), "timeout", "no answer within"),
        ]
        for stream, kind, text in cases:
            with pytest.raises(RequestFailed, match=text) as failed:
                await ask(stream, timeout_s=0.2)
            assert failed.value.kind == kind and stream.was_reset
        oversize_request = _FakeStream(encode_frame(b"answer", 100))
        with pytest.raises(RequestFailed, match="exceeds the bound"):
            await ask(oversize_request, b"r" * 17)
        assert oversize_request.written == b""  # refused before anything was sent

    trio.run(main)


def test_read_request_refuses_oversize_and_truncated_frames_and_slow_peers() -> None:
    async def main() -> None:
        assert await read_request(_FakeStream(encode_frame(b"hello", 8)), 8, 1.0) == b"hello"
        assert await read_request(_FakeStream(b""), 8, 1.0) is None  # ended before a frame
        with pytest.raises(FrameError, match="9-byte frame"):
            await read_request(_FakeStream(encode_uvarint(9) + b"y" * 9), 8, 1.0)
        with pytest.raises(FrameError, match="inside a frame"):
            await read_request(_FakeStream(encode_frame(b"hello", 8)[:3]), 8, 1.0)
        with pytest.raises(trio.TooSlowError):
            await read_request(_FakeStream(encode_frame(b"hello", 8)[:3], stall=True), 8, 0.1)

    trio.run(main)
