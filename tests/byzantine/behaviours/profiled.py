"""No change to the node's behaviour; measures where an honest node's time goes (diagnosis).

With `BYZ_PROFILE=path`: a thread samples every thread's stack every 5 ms, timers wrap the
application's and the consensus shell's main calls (calls, total and max seconds), and the
receive lag of each proposal (now - its block time) is kept; every 2 s the cumulative
counts, the timers and the p2p counters are written to `path` as JSON. Costs a few percent
of one core. Used to diagnose the valid-looking event flood (tests/byzantine/README.md).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from types import FrameType
from typing import Any


def _sampler(path: str) -> None:
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    samples = 0
    last_dump = time.monotonic()
    me = threading.get_ident()
    main = threading.main_thread().ident
    while True:
        time.sleep(0.005)
        frames = sys._current_frames()
        for ident, frame in frames.items():
            if ident == me:
                continue
            kind = "main" if ident == main else "worker"
            seen = set()
            top = True
            f: FrameType | None = frame
            while f is not None:
                code = f.f_code
                name = f"{kind}:{os.path.basename(code.co_filename)}:{code.co_name}"
                if top:
                    leaf[name] += 1
                    top = False
                if name not in seen:
                    inclusive[name] += 1
                    seen.add(name)
                f = f.f_back
        samples += 1
        if time.monotonic() - last_dump > 2:
            last_dump = time.monotonic()
            with open(path + ".tmp", "w") as out:
                json.dump({"samples": samples, "inclusive": dict(inclusive), "leaf": dict(leaf),
                       "timers": {k: list(v) for k, v in TIMERS.items()}, "p2p": _p2p_stats()}, out)
            os.replace(path + ".tmp", path)


def install() -> None:
    path = os.environ.get("BYZ_PROFILE")
    if path:
        install_timers()
        threading.Thread(target=_sampler, args=(path,), daemon=True).start()


TIMERS: dict[str, list[float]] = {}  # name -> [calls, total s, max s]


def _note(name: str, began: float) -> None:
    took = time.perf_counter() - began
    entry = TIMERS.setdefault(name, [0, 0.0, 0.0])
    entry[0] += 1
    entry[1] += took
    entry[2] = max(entry[2], took)


def _time_sync(cls: type, method: str, name_of: object = None) -> None:
    original = getattr(cls, method)

    def timed(self: object, *args: object, **kwargs: object) -> object:
        began = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            _note(f"{cls.__name__}.{method}", began)

    setattr(cls, method, timed)


def _time_async(cls: type, method: str, name_of: object = None) -> None:
    original = getattr(cls, method)

    async def timed(self: object, *args: object, **kwargs: object) -> object:
        began = time.perf_counter()
        try:
            return await original(self, *args, **kwargs)
        finally:
            label = f"{cls.__name__}.{method}"
            if callable(name_of):
                label += ":" + name_of(*args)
            _note(label, began)

    setattr(cls, method, timed)


SERVICES: list[object] = []


def _p2p_stats() -> object:
    try:
        net = SERVICES[0]._net  # type: ignore[attr-defined]
        return net.stats() if net is not None else None
    except Exception as exc:  # racy read from another thread: diagnosis only
        return repr(exc)


def install_timers() -> None:
    from consensus.replica import Replica
    from devsen.app import NodeApplication
    from devsen.consensus_service import ConsensusService

    for m in ("fetch_facts", "process_proposal", "finalize_block", "prepare_proposal", "check_tx", "propose_facts"):
        _time_sync(NodeApplication, m)
    from consensus.types import Proposal, WireError, decode_message

    original_handle = Replica.handle_message

    def handle_message(self: Any, message: Any, sender: Any = None) -> Any:
        try:
            decoded = decode_message(bytes(message)) if isinstance(message, bytes | bytearray) else message
        except WireError:
            decoded = message
        if isinstance(decoded, Proposal):
            lag = time.time() - decoded.block.timestamp_ms / 1000
            entry = TIMERS.setdefault("proposal_receive_lag", [0, 0.0, 0.0])
            entry[0] += 1
            entry[1] += lag
            entry[2] = max(entry[2], lag)
        return original_handle(self, decoded, sender)

    Replica.handle_message = handle_message  # type: ignore[method-assign]
    for m in ("handle_message", "handle_timeout", "validate", "finalize", "propose"):
        _time_sync(Replica, m)
    _time_async(ConsensusService, "_execute", lambda output: type(output).__name__)
    _time_async(ConsensusService, "_on_payloads")
    original_init = ConsensusService.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        SERVICES.append(self)

    ConsensusService.__init__ = init  # type: ignore[method-assign]
    _time_async(ConsensusService, "_answer_proposal")
