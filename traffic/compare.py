"""``python -m traffic --compare ALG1,ALG2``: the same traffic against each algorithm.

For each algorithm in turn, fresh mock backends and a balancer using it
(``rig.py``) get the same traffic, from one of three sources:

* steady: ``--n`` requests at ``--concurrency`` to three mock backends, one of
  them slow with ``--slow-backend MS``;
* a scenario (``--scenario FILE``): its phases and events, its servers, with
  each algorithm in place of the file's;
* a replayed access log (``--replay LOG``): the recorded requests with their
  spacing, to three mock backends (one slow with ``--slow-backend``): what
  would each algorithm have done with this traffic?

The result is one table per measure (latency and failures, share of
traffic) with a row per algorithm, plus each algorithm's timeline for the
HTML report's charts. Ctrl-C (``stop``) ends it with the algorithms done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from .outcome import HTTP_5XX, TRANSPORT
from .replay import Entry, schedule
from .report import summarize
from .request import parse_target
from .rig import BASE_LATENCY_MS, start_rig
from .runner import run_load, run_schedule
from .scenario import Scenario, run_scenario
from .timeline import bucket_width, build_timeline, span_of

BACKEND_COUNT = 3


@dataclass(frozen=True)
class Source:
    """What each algorithm gets: steady load, a scenario, or a replayed log."""

    n: int = 1000
    concurrency: int = 10
    slow_backend_ms: float | None = None
    scenario: Scenario | None = None
    replay: list[Entry] | None = None
    speed: float = 1.0
    timeout_s: float = 10.0

    @property
    def label(self) -> str:
        if self.scenario:
            return f"scenario {self.scenario.name}"
        if self.replay is not None:
            return f"{len(self.replay)} replayed requests" + (f" at {self.speed:g}x" if self.speed != 1 else "")
        return f"{self.n} requests at concurrency {self.concurrency}"


def _run_one(algorithm: str, source: Source, say: Callable[[str], None], stop: threading.Event) -> dict:
    if source.scenario:
        run = run_scenario(source.scenario, algorithm=algorithm, say=say, timeout_s=source.timeout_s, stop=stop)
        return {**run, "concurrency": 0}
    rig = start_rig(BACKEND_COUNT, slow_ms=source.slow_backend_ms, algorithm=algorithm)
    try:
        target = parse_target(rig.url)
        if source.replay is not None:
            results, elapsed = run_schedule(schedule(source.replay, target, source.speed), stop=stop,
                                            max_in_flight=source.concurrency, timeout_s=source.timeout_s)
        else:
            results, elapsed = run_load(target, source.n, concurrency=source.concurrency, stop=stop,
                                        timeout_s=source.timeout_s)
    finally:
        rig.stop(grace_s=0.2 if stop.is_set() else 2)
    return {"results": results, "elapsed_s": elapsed, "events": [], "backends": rig.names, "url": rig.url,
            "concurrency": 0 if source.replay is not None else source.concurrency}


def run_compare(algorithms: list[str], source: Source, *, say: Callable[[str], None] = print,
                stop: threading.Event | None = None) -> dict:
    stop = stop or threading.Event()
    runs = {}
    for algorithm in algorithms:
        if stop.is_set():
            break
        say(f"-> {algorithm}: {source.label}")
        runs[algorithm] = _run_one(algorithm, source, say, stop)
    width = bucket_width(max((max(run["elapsed_s"], span_of(run["results"])) for run in runs.values()), default=0.0))
    names = next(iter(runs.values()))["backends"] if runs else []
    slow = names[-1] if source.slow_backend_ms is not None and not source.scenario and names else None
    return {
        "source": source.label,
        "slow_backend": slow,
        "slow_backend_ms": source.slow_backend_ms if slow else None,
        "backends": names,
        "algorithms": {
            algorithm: summarize(run["results"], run["elapsed_s"], url=run["url"], concurrency=run["concurrency"])
            for algorithm, run in runs.items()
        },
        "timelines": {algorithm: build_timeline(run["results"], width) for algorithm, run in runs.items()},
        "events": {algorithm: run["events"] for algorithm, run in runs.items()},
    }


def format_comparison(comparison: dict) -> str:
    names = comparison["backends"]
    slow = comparison["slow_backend"]
    rows = comparison["algorithms"]
    lines = [f"Compared on {comparison['source']}", "",
             f"{'algorithm':<18}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}{'=trans':>8}{'+5xx':>6}{'req/s':>9}"]
    for algorithm, summary in rows.items():
        failures = summary["failures"]
        lines.append(f"{algorithm:<18}{summary['latency_ms']['p50']:>9.2f}{summary['latency_ms']['p99']:>9.2f}"
                     f"{failures['failed']:>8}{failures[TRANSPORT]:>8}{failures[HTTP_5XX]:>6}"
                     f"{summary['throughput_rps']:>9.0f}")
    lines += ["", "Share of the answered requests per backend"]
    for start in range(0, len(names), 7):  # seven backend columns fit in 80
        chunk = names[start:start + 7]
        lines.append(f"{'algorithm':<18}" + "".join(f"{name[-7:] + ('*' if name == slow else ''):>8}" for name in chunk))
        for algorithm, summary in rows.items():
            shares = "".join(f"{summary['backends'].get(name, {'share': 0})['share'] * 100:>7.1f}%" for name in chunk)
            lines.append(f"{algorithm:<18}{shares}")
    if slow:
        lines.append(f"* {slow} answers in {comparison['slow_backend_ms']:g} ms; the others in "
                     f"{BASE_LATENCY_MS[0]:g}-{BASE_LATENCY_MS[1]:g} ms")
    if "hash" in rows:
        lines.append("hash hashes the client address by default: one client, one backend.")
    return "\n".join(lines)
