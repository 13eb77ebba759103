"""Scenarios: phases of traffic and events against mock servers, described in TOML.

A scenario runs self-contained: it starts its own mock servers (``mock-1``
... ``mock-N``) and a balancer in front of them, sends each phase's traffic
in turn on one clock, and fires each event at its time through the mock
servers' control endpoints -- the same ones a user would ``curl``. Example::

    description = "One backend turns slow for a while"
    servers = 3                 # mock servers to start
    latency_ms = "1-3"          # their base latency
    algorithm = "round-robin"   # the balancer's --algorithm
    health_interval = 0.25      # the balancer's --health-interval (seconds)
    eject_time = 10             # the balancer's --eject-time (seconds)

    [[phase]]
    name = "steady"
    duration = 4                # seconds
    rate = 200                  # open loop, requests/s ... or: concurrency = 10

    [[event]]
    at = 1.5                    # seconds since the start
    server = "mock-2"
    action = "latency"          # down, up, crash, restart, latency, error-rate
    value = "150"               # for latency (ms or LOW-HIGH) and error-rate (0..1)

Every mistake is a ``ScenarioError`` whose one-line message names the file,
the table and the field.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mockserv import parse_error_rate, parse_latency
from mockserv.server import BehaviourError
from simplelb.configfile import parse_toml

from .request import TOKEN, TargetError, parse_target, read_text, request_path
from .rig import Rig, algorithm_names, start_rig
from .runner import run_load, run_open_loop

ACTIONS = ("down", "up", "crash", "restart", "latency", "error-rate")
_TOP_KEYS = {"description", "servers", "latency_ms", "algorithm", "health_interval", "eject_time", "phase", "event"}
_PHASE_KEYS = {"name", "duration", "rate", "concurrency", "path", "method"}
_EVENT_KEYS = {"at", "server", "action", "value"}


class ScenarioError(ValueError):
    """The scenario file is not valid; the message says where and why."""


@dataclass(frozen=True)
class Phase:
    name: str
    duration_s: float
    rate: float | None = None  # open loop
    concurrency: int | None = None  # closed loop
    path: str = "/"
    method: str = "GET"


@dataclass(frozen=True)
class Event:
    at_s: float
    server: str
    action: str
    value: str | None = None

    @property
    def label(self) -> str:
        return f"{self.server} {self.action}" + (f" {self.value}" if self.value is not None else "")


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    servers: int
    latency_ms: tuple[float, float]
    algorithm: str
    health_interval_s: float
    eject_time_s: float
    phases: tuple[Phase, ...]
    events: tuple[Event, ...] = field(default=())

    @property
    def duration_s(self) -> float:
        return sum(p.duration_s for p in self.phases)


def _number(where: str, key: str, value: Any, *, integer: bool = False, low: float = 0, high: float = 1e9) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not low <= value <= high:
        kind = "a whole number" if integer else "a number"
        raise ScenarioError(f"{where}: '{key}' must be {kind} from {low:g} to {high:g}, not {value!r}")
    return value


def _unknown(where: str, table: dict, allowed: set[str]) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise ScenarioError(f"{where}: unknown field '{extra[0]}' (known: {', '.join(sorted(allowed))})")


def _table(where: str, table: Any, allowed: set[str]) -> dict:
    if not isinstance(table, dict):
        raise ScenarioError(f"{where}: must be a table")
    _unknown(where, table, allowed)
    return table


def _phase(where: str, number: int, table: dict) -> Phase:
    if "duration" not in table:
        raise ScenarioError(f"{where}: 'duration' (seconds) is required")
    duration = _number(where, "duration", table["duration"], low=0.1, high=3600)
    rate = table.get("rate")
    concurrency = table.get("concurrency")
    if (rate is None) == (concurrency is None):
        raise ScenarioError(f"{where}: give exactly one of 'rate' (open loop) or 'concurrency' (closed loop)")
    if rate is not None:
        rate = _number(where, "rate", rate, low=0.1, high=100_000)
    if concurrency is not None:
        concurrency = _number(where, "concurrency", concurrency, integer=True, low=1, high=1000)
    path = table.get("path", "/")
    try:
        path = request_path(path if isinstance(path, str) else "")
    except TargetError:
        raise ScenarioError(f"{where}: 'path' must start with / and contain no spaces or controls, not {path!r}") from None
    method = table.get("method", "GET")
    if not isinstance(method, str) or not TOKEN.fullmatch(method):
        raise ScenarioError(f"{where}: 'method' must be an HTTP method, not {method!r}")
    return Phase(str(table.get("name", f"phase {number}")), duration, rate, concurrency, path, method.upper())


def _event(where: str, table: dict, names: list[str], total_s: float) -> Event:
    at = _number(where, "at", table.get("at"), low=0, high=total_s)
    server = table.get("server")
    if server not in names:
        raise ScenarioError(f"{where}: 'server' must be one of {', '.join(names)}, not {server!r}")
    action = table.get("action")
    if action not in ACTIONS:
        raise ScenarioError(f"{where}: 'action' must be one of {', '.join(ACTIONS)}, not {action!r}")
    value = table.get("value")
    if action in ("latency", "error-rate"):
        if value is None:
            raise ScenarioError(f"{where}: 'value' is required for {action}")
        try:
            (parse_latency if action == "latency" else parse_error_rate)(str(value))
        except BehaviourError as exc:
            raise ScenarioError(f"{where}: 'value': {exc}") from None
        value = str(value)
    elif value is not None:
        raise ScenarioError(f"{where}: 'value' is only for latency and error-rate")
    return Event(float(at), server, action, value)


def parse_scenario(text: str, source: str = "scenario") -> Scenario:
    try:
        data = parse_toml(text)
    except ValueError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from None
    _unknown(source, data, _TOP_KEYS)
    servers = _number(source, "servers", data.get("servers", 3), integer=True, low=1, high=20)
    try:
        latency = parse_latency(str(data.get("latency_ms", "1-3")))
    except BehaviourError as exc:
        raise ScenarioError(f"{source}: 'latency_ms': {exc}") from None
    algorithm = data.get("algorithm", "round-robin")
    if algorithm not in algorithm_names():
        raise ScenarioError(f"{source}: 'algorithm' must be one of {', '.join(algorithm_names())}, not {algorithm!r}")
    health_interval = _number(source, "health_interval", data.get("health_interval", 0.25), low=0.05, high=60)
    eject_time = _number(source, "eject_time", data.get("eject_time", 10), low=0.1, high=300)
    raw_phases = data.get("phase")
    if not isinstance(raw_phases, list) or not raw_phases:
        raise ScenarioError(f"{source}: needs at least one [[phase]]")
    phases = [_phase(f"{source}: phase {n}", n, _table(f"{source}: phase {n}", table, _PHASE_KEYS))
              for n, table in enumerate(raw_phases, 1)]
    total = sum(p.duration_s for p in phases)
    names = [f"mock-{i + 1}" for i in range(servers)]
    events = sorted((_event(f"{source}: event {n}", _table(f"{source}: event {n}", table, _EVENT_KEYS), names, total)
                     for n, table in enumerate(data.get("event", []), 1)), key=lambda e: e.at_s)
    return Scenario(
        Path(source).stem, str(data.get("description", "")), servers, latency, algorithm, float(health_interval),
        float(eject_time), tuple(phases), tuple(events),
    )


def load_scenario(path: str) -> Scenario:
    return parse_scenario(read_text(path, "scenario", ScenarioError), path)


def find_scenario(name: str) -> str:
    """A path as given, or the bundled scenario of that name (``rolling-restart``)."""
    if not name.endswith(".toml") and bundled(name).exists():
        return str(bundled(name))
    return name


def bundled(name: str) -> Path:
    """A scenario shipped with the package, by file name without .toml."""
    return Path(__file__).with_name("scenarios") / f"{name}.toml"


def apply_event(event: Event, rig: Rig) -> None:
    """Carry out one event through the server's control endpoints (or, for restart, by starting it again)."""
    if event.action in ("down", "up"):
        rig.control(event.server, "/_mock/health", event.action)
    elif event.action == "latency":
        rig.control(event.server, f"/_mock/latency?ms={event.value}")
    elif event.action == "error-rate":
        rig.control(event.server, f"/_mock/error-rate?p={event.value}")
    elif event.action == "crash":
        if rig.running(event.server):
            rig.control(event.server, "/_mock/crash")
    elif event.action == "restart":
        rig.restart(event.server)


def run_scenario(scenario: Scenario, *, say=print, timeout_s: float = 10.0, stop: threading.Event | None = None,
                 algorithm: str | None = None) -> dict:
    """Run every phase and event (with ``algorithm`` instead of the file's if given); return what happened."""
    stop = stop or threading.Event()
    rig = start_rig(scenario.servers, latency_ms=scenario.latency_ms, algorithm=algorithm or scenario.algorithm,
                    health_interval_s=scenario.health_interval_s, eject_time_s=scenario.eject_time_s)
    fired: list[tuple[float, str]] = []
    results = []
    halt = threading.Event()  # this run is over (``stop`` may be shared with other runs: it is not set here)
    start = time.perf_counter()

    def fire_events() -> None:
        for event in scenario.events:
            if halt.wait(max(0.0, start + event.at_s - time.perf_counter())):
                return
            try:
                apply_event(event, rig)
            except OSError as exc:
                say(f"   event {event.label} failed: {exc}")
            fired.append((round(time.perf_counter() - start, 3), event.label))
            say(f"   t={time.perf_counter() - start:5.2f}s  {event.label}")

    events_thread = threading.Thread(target=fire_events, name="scenario-events", daemon=True)
    events_thread.start()
    try:
        phase_at = start  # each phase begins on the timetable the events keep, not when the last answer came
        for phase in scenario.phases:
            if stop.is_set():
                break
            target = parse_target(rig.url, phase.path, method=phase.method)
            shape = f"{phase.rate:g} req/s" if phase.rate else f"concurrency {phase.concurrency}"
            say(f"-> {phase.name}: {phase.duration_s:g}s at {shape}")
            options = {"duration_s": phase.duration_s, "timeout_s": timeout_s, "stop": stop, "start_at": start,
                       "phase_at": phase_at}
            phase_at += phase.duration_s
            if phase.rate:
                got, _ = run_open_loop(target, phase.rate, **options)
            else:
                got, _ = run_load(target, None, concurrency=phase.concurrency, **options)
            results.extend(got)
    finally:
        halt.set()
        events_thread.join(5)
        rig.stop(grace_s=0.2 if stop.is_set() else 2)  # after Ctrl-C, what is in flight is not waited for
    return {"results": results, "elapsed_s": time.perf_counter() - start, "events": fired,
            "backends": rig.names, "url": rig.url}
