"""``python -m traffic --demo``: the whole product in one command.

Starts three mock backends and a balancer in this process on free ports,
then sends traffic in three phases: all backends up; one marked down through
its control endpoint (the balancer's health checker takes it out); the same
one brought back. Each phase's distribution shows where the traffic went.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mockserv import MockServer
from simplelb import Config, LoadBalancer

from .report import distribution_lines, format_report, summarize
from .runner import Result, Target, run_load
from .scenario import control

HEALTH_WAIT_S = 15.0


def _wait(condition: Callable[[], bool], timeout_s: float) -> float:
    """Wait for ``condition``; return the seconds it took, or raise ``TimeoutError``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError("the balancer did not react in time")
        time.sleep(0.02)
    return time.monotonic() - start


def run_demo(n: int = 900, concurrency: int = 10, say: Callable[[str], None] = print) -> dict:
    mocks = [MockServer(f"mock-{i}", latency_ms=(1, 3), seed=i).start() for i in (1, 2, 3)]
    config = Config.of(
        backends=",".join(m.address for m in mocks),
        port=0,
        health_interval_s=0.25,  # quick enough to watch; the default is 2 s
        health_timeout_s=0.2,
        rise=2,
        fall=2,
    )
    balancer = LoadBalancer(config).start()
    victim, victim_backend = mocks[1], balancer.backends[1]
    target = Target("127.0.0.1", balancer.port, "/")
    phase_sizes = iter([n // 3 + (i < n % 3) for i in range(3)])
    phases: list[dict] = []
    all_results: list[Result] = []
    events: list[tuple[float, str]] = []
    total_s = 0.0
    clock_start = time.perf_counter()

    def event(label: str) -> None:
        events.append((round(time.perf_counter() - clock_start, 3), label))

    def phase(title: str) -> None:
        nonlocal total_s
        per_phase = max(1, next(phase_sizes))
        say(f"-> {title}: sending {per_phase} requests")
        results, elapsed = run_load(target, per_phase, concurrency=concurrency, start_at=clock_start)
        summary = summarize(results, elapsed, url=balancer.url + "/", concurrency=concurrency)
        phases.append({"phase": title, **summary})
        all_results.extend(results)
        total_s += elapsed
        say("\n".join(distribution_lines(summary["backends"])))

    try:
        say(f"mock backends: {', '.join(f'{m.name} ({m.address})' for m in mocks)}")
        say(f"balancer: {balancer.url}, round-robin, health checks every {config.cluster.health_interval_s:g}s\n")
        phase("phase 1, all backends up")
        say(f"\n-> marking {victim.name} down (POST {victim.url}/_mock/health 'down')")
        control(victim, "/_mock/health", "down")
        event(f"{victim.name} marked down")
        took = _wait(lambda: not victim_backend.healthy, HEALTH_WAIT_S)
        event(f"{victim.name} taken out")
        say(f"   the health checker took {victim.name} out after {took:.2f}s")
        phase(f"phase 2, {victim.name} down")
        say(f"\n-> bringing {victim.name} back (POST {victim.url}/_mock/health 'up')")
        control(victim, "/_mock/health", "up")
        event(f"{victim.name} marked up")
        took = _wait(lambda: victim_backend.healthy, HEALTH_WAIT_S)
        event(f"{victim.name} back")
        say(f"   the health checker brought {victim.name} back after {took:.2f}s")
        phase(f"phase 3, {victim.name} back")
    finally:
        balancer.stop(grace_s=2)
        for mock in mocks:
            mock.stop()
    overall = summarize(all_results, total_s, url=balancer.url + "/", concurrency=concurrency)
    say("\nOverall\n" + format_report(overall))
    return {"phases": phases, "overall": overall, "events": events, "backends": [m.name for m in mocks],
            "results": all_results}
