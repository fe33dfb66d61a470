"""No change to the node; a sampling profiler thread writes where its threads spend time.

Diagnosis only (`BYZ_PROFILE=path`): every 5 ms each thread's stack is sampled; every 2 s
the cumulative per-function sample counts (inclusive and leaf, per thread kind) are written to `path` as JSON. Nothing in
the node's behaviour changes; the sampler costs a few percent of one core.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter


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
            f = frame
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
                json.dump({"samples": samples, "inclusive": dict(inclusive), "leaf": dict(leaf)}, out)
            os.replace(path + ".tmp", path)


def install() -> None:
    path = os.environ.get("BYZ_PROFILE")
    if path:
        threading.Thread(target=_sampler, args=(path,), daemon=True).start()
