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
from .runner import Result, run_load

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


def run_demo(n: int = 900, concurrency: int = 10, say: Callable[[str], None] = print,
             stop: threading.Event | None = None) -> dict:
    stop = stop or threading.Event()
    rig = start_rig(3, health_interval_s=HEALTH_INTERVAL_S)
    victim = rig.names[1]
    target = parse_target(rig.url)
    phase_sizes = iter([n // 3 + (i < n % 3) for i in range(3)])
    phases: list[dict] = []
    all_results: list[Result] = []
    events: list[tuple[float, str]] = []
    sending_s = [0.0]  # time spent sending, without the waits for the health checker
    clock_start = time.perf_counter()

    def event(label: str) -> None:
        events.append((round(time.perf_counter() - clock_start, 3), label))

    def phase(title: str) -> None:
        per_phase = max(1, next(phase_sizes))
        say(f"-> {title}: sending {per_phase} requests")
        results, elapsed = run_load(target, per_phase, concurrency=concurrency, start_at=clock_start, stop=stop)
        summary = summarize(results, elapsed, url=rig.url, concurrency=concurrency)
        phases.append({"phase": title, **summary})
        all_results.extend(results)
        sending_s[0] += elapsed
        say("\n".join(distribution_lines(summary["backends"])))

    def turn(state: str, happened: str, told: str) -> None:
        say(f"\n-> marking {victim} {state} (POST {rig.mocks[victim].url}/_mock/health '{state}')")
        rig.control(victim, "/_mock/health", state)
        event(f"{victim} marked {state}")
        took = _wait(lambda: rig.available(victim) == (state == "up"), HEALTH_WAIT_S, stop)
        if not stop.is_set():
            event(f"{victim} {happened}")
            say(f"   the health checker {told.format(victim)} after {took:.2f}s")

    steps = [
        lambda: phase("phase 1, all backends up"),
        lambda: turn("down", "taken out", "took {} out"),
        lambda: phase(f"phase 2, {victim} down"),
        lambda: turn("up", "back", "brought {} back"),
        lambda: phase(f"phase 3, {victim} back"),
    ]
    try:
        say(f"mock backends: {', '.join(f'{name} ({m.address})' for name, m in rig.mocks.items())}")
        say(f"balancer: {rig.url}, round-robin, health checks every {HEALTH_INTERVAL_S:g}s")
        say(f"watch it live: {rig.status_page} (the balancer's status page)\n")
        for step in steps:
            if stop.is_set():
                break
            step()
    finally:
        rig.stop(grace_s=0.2 if stop.is_set() else 2)
    return {"phases": phases, "events": events, "backends": rig.names, "results": all_results,
            "elapsed_s": sending_s[0], "url": rig.url}
