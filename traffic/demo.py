"""``python -m traffic --demo``: the whole product in one command.

Starts three mock backends and a balancer in this process on free ports
(``rig.py``), then sends traffic in three phases: all backends up; one marked
down through its control endpoint (the balancer's health checker takes it
out); the same one brought back. Each phase's distribution shows where the
traffic went. Ctrl-C (``stop``) ends it early with what was done.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .report import distribution_lines, summarize
from .request import parse_target
from .rig import start_rig
from .runner import Result, run_load, run_open_loop

HEALTH_WAIT_S = 15.0
HEALTH_INTERVAL_S = 0.25  # quick enough to watch; the balancer's default is 2 s


def _wait(condition: Callable[[], bool], timeout_s: float, stop: threading.Event) -> float:
    """Wait for ``condition`` (or ``stop``); return the seconds it took, or raise ``TimeoutError``."""
    start = time.monotonic()
    while not condition() and not stop.is_set():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError("the balancer did not react in time")
        stop.wait(0.02)
    return time.monotonic() - start


class _Demo:
    """One run of the demo: its rig, its phases so far, and what was sent."""

    def __init__(self, n: int, concurrency: int, say, stop: threading.Event, duration_s, rate):
        self.concurrency, self.say, self.stop = concurrency, say, stop
        self.duration_s, self.rate = duration_s, rate
        self.rig = start_rig(3, health_interval_s=HEALTH_INTERVAL_S)
        self.victim = self.rig.names[1]
        self.target = parse_target(self.rig.url)
        self.phase_sizes = iter([n // 3 + (i < n % 3) for i in range(3)])
        self.phases: list[dict] = []
        self.results: list[Result] = []
        self.events: list[tuple[float, str]] = []
        self.sending_s = 0.0  # time spent sending, without the waits for the health checker
        self.clock_start = time.perf_counter()

    def event(self, label: str) -> None:
        self.events.append((round(time.perf_counter() - self.clock_start, 3), label))

    def phase(self, title: str) -> None:
        options = {"start_at": self.clock_start, "stop": self.stop}
        if self.duration_s is None:
            count = next(self.phase_sizes)
            self.say(f"-> {title}: sending {count} requests" + (f" at {self.rate:g}/s" if self.rate else ""))
            if self.rate:
                results, elapsed = run_open_loop(self.target, self.rate, n=count, **options)
            else:
                results, elapsed = run_load(self.target, count, concurrency=self.concurrency, **options)
        else:
            span = self.duration_s / 3
            self.say(f"-> {title}: sending for {span:g}s" + (f" at {self.rate:g}/s" if self.rate else ""))
            if self.rate:
                results, elapsed = run_open_loop(self.target, self.rate, duration_s=span, **options)
            else:
                results, elapsed = run_load(self.target, None, concurrency=self.concurrency, duration_s=span,
                                            **options)
        summary = summarize(results, elapsed, url=self.rig.url, concurrency=self.concurrency, rate=self.rate)
        self.phases.append({"phase": title, **summary})
        self.results.extend(results)
        self.sending_s += elapsed
        self.say("\n".join(distribution_lines(summary["backends"])))

    def turn(self, state: str, happened: str, told: str) -> None:
        rig, victim = self.rig, self.victim
        self.say(f"\n-> marking {victim} {state} (POST {rig.mocks[victim].url}/_mock/health '{state}')")
        rig.control(victim, "/_mock/health", state)
        self.event(f"{victim} marked {state}")
        took = _wait(lambda: rig.available(victim) == (state == "up"), HEALTH_WAIT_S, self.stop)
        if not self.stop.is_set():
            self.event(f"{victim} {happened}")
            self.say(f"   the health checker {told.format(victim)} after {took:.2f}s")

    def run(self) -> dict:
        victim, rig = self.victim, self.rig
        steps = [
            lambda: self.phase("phase 1, all backends up"),
            lambda: self.turn("down", "taken out", "took {} out"),
            lambda: self.phase(f"phase 2, {victim} down"),
            lambda: self.turn("up", "back", "brought {} back"),
            lambda: self.phase(f"phase 3, {victim} back"),
        ]
        try:
            self.say(f"mock backends: {', '.join(f'{name} ({m.address})' for name, m in rig.mocks.items())}")
            self.say(f"balancer: {rig.url}, round-robin, health checks every {HEALTH_INTERVAL_S:g}s")
            self.say(f"watch it live: {rig.status_page} (the balancer's status page)\n")
            for step in steps:
                if self.stop.is_set():
                    break
                step()
        finally:
            rig.stop(grace_s=0.2 if self.stop.is_set() else 2)
        return {"phases": self.phases, "events": self.events, "backends": rig.names, "results": self.results,
                "elapsed_s": self.sending_s, "url": rig.url}


def run_demo(n: int = 900, concurrency: int = 10, say: Callable[[str], None] = print,
             stop: threading.Event | None = None, duration_s: float | None = None, rate: float | None = None) -> dict:
    """The demo; with ``duration_s`` (and ``rate``) its three phases last that long, to watch it live."""
    return _Demo(n, concurrency, say, stop or threading.Event(), duration_s, rate).run()
