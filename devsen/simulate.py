"""`devsen simulate`: the project's OCPP load generator.

N simulated chargers speak real OCPP-J over WebSockets (HTTP Basic auth, one outstanding CALL
per charger as OCPP-J requires) to any list of CSMS URLs (a DEVSEN network's nodes, or any
other CSMS), spread round-robin. Each charger runs a full session: BootNotification,
StatusNotification, Authorize, StartTransaction (1.6) / TransactionEvent Started (2.0.1) during
setup; then meter values (MeterValues / TransactionEvent Updated) through the measured phases;
then StopTransaction / TransactionEvent Ended and StatusNotification at the end.

Phases, one after another on the same connections (so logins, which cost a node a scrypt
hash each, stay out of every measured window):
- open loop `--rate R` (messages/s over all chargers): each charger has a fixed schedule of
  intended send times; latency is measured from the INTENDED time, so a CSMS that falls behind
  shows its queueing (no coordinated omission);
- closed loop `--closed`: each charger sends its next message as soon as the last is answered;
  the answered rate is the most this CSMS serves to N chargers.

Every CALLERROR (by code), reply timeout and lost connection is counted; nothing is retried
silently. A progress line goes to stderr once a second; `--json` prints the result document,
`--out FILE` writes it.

    devsen simulate --url ws://127.0.0.1:9001 --url ws://127.0.0.1:9002 --chargers 100 \\
        --id-format 'BENCH-CP-{i:04d}' --password-format 'bench-password-{i:04d}' \\
        --rate 200 500 --closed --duration 10 --json
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import time
import tomllib
import traceback
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError

from devsen.demo_charger import (
    SUBPROTOCOLS,
    ChargerCallFailed,
    DemoCharger,
    connect_demo_charger,
    iso_now,
)

VERSIONS = tuple(SUBPROTOCOLS)
MAX_CHARGERS = 20_000
MAX_PHASES = 32
MAX_RATE = 1_000_000.0
MAX_DURATION_S = 3600.0
MAX_LATENCIES_PER_PHASE = 2_000_000
MAX_ERROR_SAMPLES = 20
DEFAULT_ID_TAG = "DEMO-TAG-1"


class SimulateError(ValueError):
    """A bad simulate parameter (the message names it)."""


@dataclass(frozen=True)
class ChargerSpec:
    """One simulated charger: who it is and where it connects."""

    charge_box_id: str
    password: str
    url: str
    version: str


@dataclass(frozen=True)
class Phase:
    """One measured phase: open loop at `rate` messages/s, or closed loop (`rate` None)."""

    rate: float | None
    duration_s: float

    @property
    def name(self) -> str:
        return "closed" if self.rate is None else f"open {self.rate:g}/s"


@dataclass
class Tally:
    """What the chargers saw in one phase (or in setup/teardown)."""

    latencies_ms: list[float] = field(default_factory=list)
    intended: int = 0  # messages scheduled inside the window (open loop) or sent (closed)
    sent: int = 0
    answered: int = 0
    answered_in_window: int = 0
    callerrors: collections.Counter[str] = field(default_factory=collections.Counter)
    timeouts: int = 0
    connection_lost: int = 0
    unsent: int = 0  # open loop: intended in the window, still unsent a call timeout after it
    error_samples: list[dict[str, Any]] = field(default_factory=list)

    def note_error(self, kind: str, charger: str, detail: str) -> None:
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append({"kind": kind, "charger": charger, "detail": detail[:200]})

    @property
    def errors(self) -> int:
        return sum(self.callerrors.values()) + self.timeouts + self.connection_lost + self.unsent


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of already sorted values, None when there are none."""
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


# ---------------------------------------------------------------- OCPP payloads per version

def _sampled_1_6(wh: int) -> list[dict[str, Any]]:
    return [{"timestamp": iso_now(), "sampledValue": [
        {"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}]


def _sampled_2_0_1(wh: int) -> list[dict[str, Any]]:
    return [{"timestamp": iso_now(), "sampledValue": [
        {"value": wh, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "Wh"}}]}]


class Session:
    """One charger's transaction, in its OCPP version: the (action, payload) of each step."""

    def __init__(self, version: str, id_tag: str) -> None:
        self.version = version
        self.id_tag = id_tag
        self.wh = 0
        self.seq = 0
        self.transaction_id: Any = None
        self.tx_uuid = uuid.uuid4().hex[:32]

    def boot(self) -> tuple[str, dict[str, Any]]:
        if self.version == "1.6":
            return "BootNotification", {"chargePointVendor": "DEVSEN", "chargePointModel": "simulate"}
        return "BootNotification", {"reason": "PowerUp", "chargingStation": {"model": "simulate", "vendorName": "DEVSEN"}}

    def status(self, state: str) -> tuple[str, dict[str, Any]]:
        if self.version == "1.6":
            return "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": state,
                                          "timestamp": iso_now()}
        return "StatusNotification", {"timestamp": iso_now(), "connectorStatus": "Available" if state == "Available"
                                      else "Occupied", "evseId": 1, "connectorId": 1}

    def authorize(self) -> tuple[str, dict[str, Any]]:
        if self.version == "1.6":
            return "Authorize", {"idTag": self.id_tag}
        return "Authorize", {"idToken": {"idToken": self.id_tag, "type": "Central"}}

    def _event(self, event_type: str, trigger: str, **extra: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {"eventType": event_type, "timestamp": iso_now(), "triggerReason": trigger,
                                   "seqNo": self.seq, "transactionInfo": {"transactionId": self.tx_uuid},
                                   "meterValue": _sampled_2_0_1(self.wh), **extra}
        self.seq += 1
        return payload

    def start(self) -> tuple[str, dict[str, Any]]:
        if self.version == "1.6":
            return "StartTransaction", {"connectorId": 1, "idTag": self.id_tag, "meterStart": self.wh,
                                        "timestamp": iso_now()}
        return "TransactionEvent", self._event("Started", "Authorized", idToken={"idToken": self.id_tag,
                                                                                 "type": "Central"},
                                               evse={"id": 1, "connectorId": 1})

    def started(self, reply: dict[str, Any]) -> None:
        if self.version == "1.6":
            self.transaction_id = reply.get("transactionId")

    def meter(self) -> tuple[str, dict[str, Any]]:
        self.wh += 1  # 1 Wh per reading: far below any charger's power limit
        if self.version == "1.6":
            payload: dict[str, Any] = {"connectorId": 1, "meterValue": _sampled_1_6(self.wh)}
            if isinstance(self.transaction_id, int):
                payload["transactionId"] = self.transaction_id
            return "MeterValues", payload
        return "TransactionEvent", self._event("Updated", "MeterValuePeriodic")

    def stop(self) -> tuple[str, dict[str, Any]]:
        if self.version == "1.6":
            return "StopTransaction", {"transactionId": self.transaction_id if isinstance(self.transaction_id, int)
                                       else 0, "meterStop": self.wh, "timestamp": iso_now(), "idTag": self.id_tag}
        payload = self._event("Ended", "StopAuthorized")
        payload["transactionInfo"]["stoppedReason"] = "Local"
        return "TransactionEvent", payload


def reply_status(reply: dict[str, Any]) -> str:
    """The status a CSMS put in a reply (idTagInfo / idTokenInfo / status), or "-"."""
    for key in ("idTagInfo", "idTokenInfo"):
        info = reply.get(key)
        if isinstance(info, dict) and isinstance(info.get("status"), str):
            return str(info["status"])
    return str(reply["status"]) if isinstance(reply.get("status"), str) else "-"


# ---------------------------------------------------------------- the run

@dataclass
class Shared:
    """State shared by every charger task."""

    specs: list[ChargerSpec]
    phases: list[Phase]
    call_timeout_s: float
    setup: Tally = field(default_factory=Tally)
    teardown: Tally = field(default_factory=Tally)
    tallies: list[Tally] = field(default_factory=list)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)  # "Authorize Accepted"
    connected: int = 0
    connect_failed: int = 0
    setup_done: int = 0
    ready: trio.Event = field(default_factory=trio.Event)
    phase_index: int = -1
    phase_start: float = 0.0
    phase_end: float = 0.0
    phase_go: dict[int, trio.Event] = field(default_factory=dict)
    phase_done: list[trio.Event] = field(default_factory=list)
    all_done: trio.Event = field(default_factory=trio.Event)
    in_flight: int = 0
    in_phase: int = 0  # chargers still working on the current phase
    stopping: bool = False  # set just before the run cancels its charger tasks
    crashes: list[str] = field(default_factory=list)  # charger tasks that died of something unexpected
    finished: int = 0  # charger tasks over (teardown done, or failed)


async def timed_call(shared: Shared, charger: DemoCharger, tally: Tally, step: tuple[str, dict[str, Any]],
                     ) -> dict[str, Any] | None:
    """One CALL counted in `tally`: the reply, or None after a CALLERROR or timeout (counted)."""
    action, payload = step
    tally.sent += 1
    shared.in_flight += 1
    try:
        reply = await charger.call(action, payload)
    except ChargerCallFailed as exc:
        tally.callerrors[exc.code] += 1
        tally.note_error("CALLERROR", charger.charge_box_id, f"{action}: {exc}")
        return None
    except trio.TooSlowError:
        tally.timeouts += 1
        tally.note_error("timeout", charger.charge_box_id, f"{action}: no reply in {shared.call_timeout_s} s")
        return None
    finally:
        shared.in_flight -= 1
    tally.answered += 1
    return reply


class Stage:
    """Where one charger is: "connect" (holding a login slot), "session", "ready", "failed"."""

    def __init__(self) -> None:
        self.name = "connect"


async def guarded_charger(shared: Shared, index: int, id_tag: str, connect_limit: trio.CapacityLimiter) -> None:
    """run_charger; whatever else kills it (a library bug, a Cancelled leaking out of a
    WebSocket's own nursery) is recorded as a crash of that charger, not the end of the run."""
    try:
        await run_charger(shared, index, id_tag, connect_limit)
    except BaseException as exc:
        if shared.stopping or isinstance(exc, KeyboardInterrupt):
            raise
        shared.crashes.append(f"{shared.specs[index].charge_box_id}: {type(exc).__name__}: "
                              + "".join(traceback.format_exception(exc))[-1500:])


async def run_charger(shared: Shared, index: int, id_tag: str, connect_limit: trio.CapacityLimiter) -> None:
    """One charger: connect (at most `connect_limit` logins at once), set up its session, run
    every phase, stop its transaction. Failures are counted where they happen, never raised."""
    spec = shared.specs[index]
    stage = Stage()
    await connect_limit.acquire_on_behalf_of(stage)
    try:
        async with connect_demo_charger(spec.url, spec.charge_box_id, spec.password, ocpp_version=spec.version) as charger:
            connect_limit.release_on_behalf_of(stage)
            stage.name = "session"
            shared.connected += 1
            await charger_session(shared, charger, Session(spec.version, id_tag), index, stage)
    except (HandshakeError, ConnectionClosed, trio.BrokenResourceError, OSError, trio.TooSlowError) as exc:
        if stage.name == "connect":
            shared.connect_failed += 1
            connect_limit.release_on_behalf_of(stage)
            stage.name = "failed"
            shared.setup.note_error("connect", spec.charge_box_id, f"{type(exc).__name__}: {exc}")
        else:
            phase = shared.phase_index
            tally = shared.tallies[phase] if 0 <= phase < len(shared.tallies) else (
                shared.setup if phase < 0 else shared.teardown)
            tally.connection_lost += 1
            tally.note_error("connection lost", spec.charge_box_id, f"{type(exc).__name__}: {exc}")
    finally:
        if stage.name == "connect":  # cancelled while logging in
            connect_limit.release_on_behalf_of(stage)
        if stage.name != "ready":
            _setup_finished(shared)
        shared.finished += 1


async def charger_session(shared: Shared, charger: DemoCharger, session: Session, index: int,
                          stage: Stage) -> None:
    charger.timeout_s = shared.call_timeout_s
    for step in (session.boot, lambda: session.status("Available"), session.authorize, session.start,
                 lambda: session.status("Charging")):
        action, payload = step()
        reply = await timed_call(shared, charger, shared.setup, (action, payload))
        if reply is not None:
            status = reply_status(reply)
            if status != "-":
                shared.statuses[f"{action} {status}"] += 1
            if action in ("StartTransaction", "TransactionEvent"):
                session.started(reply)
    _setup_finished(shared)
    stage.name = "ready"
    number = 0
    while True:
        await _go(shared, number).wait()
        if number >= len(shared.phases):  # no more phases
            break
        phase = shared.phases[number]
        number += 1
        shared.in_phase += 1
        try:
            await run_phase(shared, charger, session, index, phase, shared.tallies[number - 1])
        finally:
            shared.in_phase -= 1
    await shared.all_done.wait()
    for action, payload in (session.stop(), session.status("Available")):
        reply = await timed_call(shared, charger, shared.teardown, (action, payload))
        if reply is not None and reply_status(reply) != "-":
            shared.statuses[f"{action} {reply_status(reply)}"] += 1


def _go(shared: Shared, number: int) -> trio.Event:
    return shared.phase_go.setdefault(number, trio.Event())


def _setup_finished(shared: Shared) -> None:
    shared.setup_done += 1
    if shared.setup_done >= len(shared.specs):
        shared.ready.set()


async def run_phase(shared: Shared, charger: DemoCharger, session: Session, index: int, phase: Phase,
                    tally: Tally) -> None:
    """This charger's share of one phase."""
    start, end = shared.phase_start, shared.phase_end
    if phase.rate is None:  # closed loop
        while trio.current_time() < end:
            sent_at = trio.current_time()
            tally.intended += 1
            reply = await timed_call(shared, charger, tally, session.meter())
            if reply is not None:
                _record(tally, sent_at, trio.current_time(), end)
        return
    period = len(shared.specs) / phase.rate
    intended = start + period * (index / len(shared.specs))  # staggered over one period
    give_up = end + shared.call_timeout_s  # a backlog older than this is left unsent (counted)
    while intended < end:
        tally.intended += 1
        await trio.sleep_until(intended)  # returns at once when behind schedule
        if trio.current_time() > give_up:
            tally.unsent += 1
            intended += period
            continue
        reply = await timed_call(shared, charger, tally, session.meter())
        if reply is not None:
            _record(tally, intended, trio.current_time(), end)
        intended += period


def _record(tally: Tally, since: float, replied_at: float, end: float) -> None:
    if len(tally.latencies_ms) < MAX_LATENCIES_PER_PHASE:
        tally.latencies_ms.append((replied_at - since) * 1000)
    if replied_at <= end:
        tally.answered_in_window += 1


PhaseHook = Callable[[str, int, Phase], Awaitable[None]]
Plan = Callable[[list[dict[str, Any]]], "Phase | None"]  # the results so far -> the next phase, None: done


def fixed_plan(phases: Sequence[Phase]) -> Plan:
    """The phases given, in order."""
    return lambda done: phases[len(done)] if len(done) < len(phases) else None


def sweep_plan(duration_s: float, fractions: Sequence[float]) -> Plan:
    """A closed loop phase (the maximum), then open loop phases at `fractions` of that maximum:
    offered loads from light to beyond saturation."""
    def plan(done: list[dict[str, Any]]) -> Phase | None:
        if not done:
            return Phase(None, duration_s)
        if len(done) > len(fractions):
            return None
        peak = max(float(done[0]["answered_per_s"]), 1.0)
        return Phase(round(peak * fractions[len(done) - 1], 1), duration_s)
    return plan


async def simulate(specs: list[ChargerSpec], phases: Sequence[Phase] | Plan, *, id_tag: str = DEFAULT_ID_TAG,
                   call_timeout_s: float = 30.0, connect_concurrency: int = 64, setup_timeout_s: float = 600.0,
                   progress: Callable[[str], None] | None = None, hook: PhaseHook | None = None) -> dict[str, Any]:
    """Run the chargers through setup, every phase and teardown; the result document.

    `phases`: a list, or a plan choosing each next phase from the results so far (sweep_plan).
    `hook("start"|"end", number, phase)` runs at each phase boundary (a benchmark samples its
    processes there); `progress` hears a one-line summary once a second."""
    plan = fixed_plan(phases) if isinstance(phases, Sequence) else phases
    shared = Shared(specs, [], call_timeout_s)
    wall_started = time.time()
    started = trio.current_time()
    phase_rows: list[dict[str, Any]] = []
    setup_s = teardown_s = 0.0
    completed = False
    async with trio.open_nursery() as nursery:
        limit = trio.CapacityLimiter(max(1, connect_concurrency))
        for index in range(len(specs)):
            nursery.start_soon(guarded_charger, shared, index, id_tag, limit)
        if progress is not None:
            nursery.start_soon(_progress_loop, shared, progress, started)
        with trio.move_on_after(setup_timeout_s):
            await shared.ready.wait()
        setup_s = trio.current_time() - started
        while shared.connected and len(shared.phases) < MAX_PHASES:  # nobody connected: no phases
            next_phase = plan(phase_rows)
            if next_phase is None:
                break
            phase, number = next_phase, len(shared.phases)
            shared.phases.append(phase)
            shared.tallies.append(Tally())
            shared.phase_index = number
            if hook is not None:
                await hook("start", number, phase)
            shared.phase_start = trio.current_time() + 0.05
            shared.phase_end = shared.phase_start + phase.duration_s
            cpu_before = _own_cpu_s()
            _go(shared, number).set()
            await trio.sleep_until(shared.phase_end)
            cpu_window = _own_cpu_s() - cpu_before
            if hook is not None:
                await hook("end", number, phase)
            # the CALLs intended inside the window, still owed (bounded: run_phase gives up a backlog)
            with trio.move_on_after(2 * call_timeout_s + 5):
                while shared.in_phase:
                    await trio.sleep(0.05)
            phase_rows.append(phase_result(phase, shared.tallies[number], len(specs), cpu_window))
        shared.phase_index = len(shared.phases)
        shared.all_done.set()
        _go(shared, len(shared.phases)).set()
        teardown_started = trio.current_time()
        with trio.move_on_after(2 * call_timeout_s + 5):
            while shared.finished < len(specs):
                await trio.sleep(0.05)
        teardown_s = trio.current_time() - teardown_started
        completed = True
        shared.stopping = True
        nursery.cancel_scope.cancel()
    versions = collections.Counter(s.version for s in specs)
    protocol_errors = (sum(sum(t.callerrors.values()) for t in [shared.setup, shared.teardown, *shared.tallies]))
    return {
        "tool": "devsen simulate",
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall_started)),
        "chargers": len(specs), "connected": shared.connected, "connect_failed": shared.connect_failed,
        "versions": dict(versions), "urls": sorted({s.url for s in specs}),
        "setup": {"seconds": round(setup_s, 2), **tally_counts(shared.setup)},
        "phases": phase_rows,
        "teardown": {"seconds": round(teardown_s, 2), **tally_counts(shared.teardown)},
        "reply_statuses": dict(sorted(shared.statuses.items())),
        "protocol_errors": protocol_errors,
        "completed": completed,  # False: the run was cancelled before its teardown ended
        "charger_crashes": len(shared.crashes), "crash_samples": shared.crashes[:3],
        "errors_total": shared.connect_failed + len(shared.crashes) + sum(t.errors for t in [shared.setup, shared.teardown, *shared.tallies]),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "notes": ("latency_ms: open loop from each message's intended send time (queueing included), closed loop "
                  "from the send; replies counted in answered_per_s arrived inside the window; protocol_errors "
                  "counts CALLERRORs; timeouts and lost connections are counted separately, never retried"),
    }


def tally_counts(tally: Tally) -> dict[str, Any]:
    return {"sent": tally.sent, "answered": tally.answered, "callerrors": dict(tally.callerrors),
            "timeouts": tally.timeouts, "connection_lost": tally.connection_lost, "unsent": tally.unsent,
            "error_samples": tally.error_samples}


def phase_result(phase: Phase, tally: Tally, chargers: int, generator_cpu_s: float) -> dict[str, Any]:
    latencies = sorted(tally.latencies_ms)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "phase": phase.name, "mode": "closed" if phase.rate is None else "open",
        "offered_per_s": None if phase.rate is None else phase.rate,
        "duration_s": phase.duration_s, "chargers": chargers,
        "intended": tally.intended,
        "answered_per_s": round(tally.answered_in_window / phase.duration_s, 1),
        "latency_ms": {"p50": ms(percentile(latencies, 0.50)), "p95": ms(percentile(latencies, 0.95)),
                       "p99": ms(percentile(latencies, 0.99)), "max": ms(latencies[-1] if latencies else None),
                       "samples": len(latencies)},
        "generator_cpu_s": round(generator_cpu_s, 2),
        **tally_counts(tally),
    }


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


async def _progress_loop(shared: Shared, progress: Callable[[str], None], started: float) -> None:
    while True:
        await trio.sleep(1.0)
        now = trio.current_time()
        if shared.phase_index < 0:
            tally, label = shared.setup, f"setup {shared.setup_done}/{len(shared.specs)} chargers ready"
        elif shared.phase_index < len(shared.phases):
            tally = shared.tallies[shared.phase_index]
            left = max(0.0, shared.phase_end - now)
            label = f"{shared.phases[shared.phase_index].name} ({left:.0f} s left)"
        else:
            tally, label = shared.teardown, "teardown"
        recent = sorted(tally.latencies_ms[-2000:])
        p50 = percentile(recent, 0.5)
        progress(f"[{now - started:6.1f} s] {label}: connected {shared.connected}, sent {tally.sent}, answered "
                 f"{tally.answered}, errors {tally.errors}, in flight {shared.in_flight}, p50 "
                 f"{'-' if p50 is None else f'{p50:.0f} ms'}")


# ---------------------------------------------------------------- command line

def charger_specs(urls: Sequence[str], credentials: Sequence[tuple[str, str]], version: str) -> list[ChargerSpec]:
    """Chargers spread round-robin over `urls`; `version` "1.6", "2.0.1" or "mixed" (alternating)."""
    if not urls:
        raise SimulateError("--url: give at least one CSMS WebSocket URL (ws://host:port)")
    for url in urls:
        if not url.startswith(("ws://", "wss://")):
            raise SimulateError(f"--url {url!r}: must start with ws:// or wss://")
    if version not in (*VERSIONS, "mixed"):
        raise SimulateError(f"--ocpp {version!r}: one of {', '.join(VERSIONS)}, mixed")
    if not 1 <= len(credentials) <= MAX_CHARGERS:
        raise SimulateError(f"--chargers: 1..{MAX_CHARGERS} chargers (got {len(credentials)})")
    return [ChargerSpec(cid, pw, urls[i % len(urls)], VERSIONS[i % 2] if version == "mixed" else version)
            for i, (cid, pw) in enumerate(credentials)]


def load_credentials(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(chargeBoxId, password) pairs from --credentials (TOML `ID = "password"`) or the formats."""
    if args.credentials:
        try:
            table = tomllib.loads(Path(args.credentials).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SimulateError(f"--credentials {args.credentials}: {exc}") from exc
        pairs = [(k, v) for k, v in table.items() if isinstance(v, str)]
        if len(pairs) != len(table):
            raise SimulateError(f"--credentials {args.credentials}: every entry must be ID = \"password\"")
        return pairs[:args.chargers] if args.chargers else pairs
    if not args.chargers:
        raise SimulateError("--chargers: how many chargers (with --id-format/--password-format), or --credentials")
    try:
        return [(args.id_format.format(i=i), args.password_format.format(i=i)) for i in range(args.chargers)]
    except (KeyError, IndexError, ValueError) as exc:
        raise SimulateError(f"--id-format/--password-format: use {{i}} for the charger's index ({exc})") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devsen simulate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", action="append", default=[], metavar="WS_URL",
                        help="a CSMS OCPP base URL (the chargeBoxId is appended); repeat for several nodes")
    parser.add_argument("--chargers", type=int, default=0, help="number of chargers")
    parser.add_argument("--credentials", help="TOML file of chargeBoxId = \"password\" lines")
    parser.add_argument("--id-format", default="SIM-CP-{i:05d}", help="chargeBoxId of charger i")
    parser.add_argument("--password-format", default="sim-password-{i:05d}", help="password of charger i")
    parser.add_argument("--ocpp", default="1.6", help="1.6, 2.0.1 or mixed")
    parser.add_argument("--id-tag", default=DEFAULT_ID_TAG, help="the idTag / idToken the chargers authorize")
    parser.add_argument("--rate", type=float, nargs="*", default=[], metavar="MSG_PER_S",
                        help="open loop phases: total meter-value messages per second")
    parser.add_argument("--closed", action="store_true", help="add a closed loop phase (the maximum)")
    parser.add_argument("--sweep", type=float, nargs="*", default=None, metavar="FRACTION",
                        help="closed loop first, then open loop at these fractions of its rate "
                             "(e.g. --sweep 0.25 0.5 1 1.25); instead of --rate/--closed")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--call-timeout", type=float, default=30.0, help="seconds to wait for each reply")
    parser.add_argument("--connect-concurrency", type=int, default=64, help="logins in progress at once")
    parser.add_argument("--json", action="store_true", help="print the result document (JSON) on stdout")
    parser.add_argument("--out", help="write the result document (JSON) to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def phases_from_args(args: argparse.Namespace) -> list[Phase] | Plan:
    if not 1 <= args.duration <= MAX_DURATION_S:
        raise SimulateError(f"--duration {args.duration}: 1..{MAX_DURATION_S:g} s")
    if not 0.1 <= args.call_timeout <= 600:
        raise SimulateError(f"--call-timeout {args.call_timeout}: 0.1..600 s")
    for rate in args.rate:
        if not 0 < rate <= MAX_RATE:
            raise SimulateError(f"--rate {rate}: 0 < rate <= {MAX_RATE:g} messages/s")
    if args.sweep is not None:
        if args.rate or args.closed or not 1 <= len(args.sweep) < MAX_PHASES:
            raise SimulateError(f"--sweep: 1..{MAX_PHASES - 1} fractions, without --rate/--closed")
        if not all(0 < f <= 100 for f in args.sweep):
            raise SimulateError("--sweep: fractions in (0, 100]")
        return sweep_plan(args.duration, args.sweep)
    phases = [Phase(r, args.duration) for r in args.rate] + ([Phase(None, args.duration)] if args.closed else [])
    if not phases:
        raise SimulateError("--rate R ... and/or --closed: give at least one phase")
    if len(phases) > MAX_PHASES:
        raise SimulateError(f"--rate: at most {MAX_PHASES} phases")
    return phases


def format_result(result: dict[str, Any]) -> str:
    """The result for people: one line per phase."""
    lines = [f"{result['connected']}/{result['chargers']} chargers connected ({result['versions']}), setup "
             f"{result['setup']['seconds']} s; protocol errors {result['protocol_errors']}, all errors "
             f"{result['errors_total']}",
             f"{'phase':<16}{'answered/s':>11}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'CALLERR':>8}{'timeouts':>9}"]
    for row in result["phases"]:
        lat = row["latency_ms"]
        lines.append(f"{row['phase']:<16}{row['answered_per_s']:>11}{lat['p50'] or '-':>9}{lat['p95'] or '-':>9}"
                     f"{lat['p99'] or '-':>9}{sum(row['callerrors'].values()):>8}{row['timeouts']:>9}")
    return "\n".join(lines)


def simulate_main(argv: list[str]) -> int:
    """`devsen simulate ...`; exit 0 when it ran with no errors, 1 when errors were counted, 2 on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        phases = phases_from_args(args)
        specs = charger_specs(args.url, load_credentials(args), args.ocpp)
        if not 1 <= args.connect_concurrency <= 10_000:
            raise SimulateError(f"--connect-concurrency {args.connect_concurrency}: 1..10000")
    except SimulateError as exc:
        print(f"devsen simulate: {exc}", file=sys.stderr)
        return 2

    def show(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = trio.run(lambda: simulate(specs, phases, id_tag=args.id_tag, call_timeout_s=args.call_timeout,
                                       connect_concurrency=args.connect_concurrency,
                                       progress=None if args.quiet else show))
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text if args.json else format_result(result))
    return 0 if result["errors_total"] == 0 and result["connect_failed"] == 0 else 1
