"""``python -m traffic --compare ALG1,ALG2``: the same traffic against each algorithm.

For each algorithm in turn, starts fresh mock backends (three, one of them
slow with ``--slow-backend MS``) and a balancer using that algorithm, sends
the same traffic, and collects the report. The result is one table: where
the traffic went, latency, errors and throughput per algorithm.
"""

from __future__ import annotations

from collections.abc import Callable

from mockserv import MockServer
from simplelb import Config, LoadBalancer

from .report import summarize
from .runner import Target, run_load

BACKEND_COUNT = 3
BASE_LATENCY_MS = (1.0, 3.0)  # like a quick real service, so latency differences show


def run_compare(
    algorithms: list[str],
    n: int,
    concurrency: int,
    *,
    slow_backend_ms: float | None = None,
    say: Callable[[str], None] = print,
) -> dict:
    rows = {}
    for algorithm in algorithms:
        mocks = [
            MockServer(f"mock-{i + 1}", latency_ms=BASE_LATENCY_MS, seed=i).start() for i in range(BACKEND_COUNT)
        ]
        if slow_backend_ms is not None:
            mocks[-1].behaviour.set(latency_ms=(slow_backend_ms, slow_backend_ms))
        balancer = LoadBalancer(Config.of(backends=",".join(m.address for m in mocks), port=0, algorithm=algorithm))
        balancer.start()
        try:
            say(f"-> {algorithm}: {n} requests, concurrency {concurrency}")
            results, elapsed = run_load(Target("127.0.0.1", balancer.port, "/"), n, concurrency=concurrency)
        finally:
            balancer.stop(grace_s=2)
            for mock in mocks:
                mock.stop()
        rows[algorithm] = summarize(results, elapsed, url=balancer.url + "/", concurrency=concurrency)
    names = [f"mock-{i + 1}" for i in range(BACKEND_COUNT)]
    return {"slow_backend": names[-1] if slow_backend_ms is not None else None,
            "slow_backend_ms": slow_backend_ms, "backends": names, "algorithms": rows}


def format_comparison(comparison: dict) -> str:
    names = comparison["backends"]
    slow = comparison["slow_backend"]
    header = f"{'algorithm':<18}" + "".join(f"{name + ('*' if name == slow else ''):>8}" for name in names)
    header += f"{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'req/s':>8}"
    lines = [header]
    for algorithm, summary in comparison["algorithms"].items():
        shares = "".join(
            f"{summary['backends'].get(name, {'share': 0})['share'] * 100:>7.1f}%" for name in names
        )
        errors = sum(summary["errors"].values()) + sum(
            count for code, count in summary["status_codes"].items() if not code.startswith("2")
        )
        lines.append(
            f"{algorithm:<18}{shares}{summary['latency_ms']['p50']:>9.2f}{summary['latency_ms']['p99']:>9.2f}"
            f"{errors:>8}{summary['throughput_rps']:>8.0f}"
        )
    if slow:
        lines.append(f"* {slow} answers in {comparison['slow_backend_ms']:g} ms; the others in "
                     f"{BASE_LATENCY_MS[0]:g}-{BASE_LATENCY_MS[1]:g} ms")
    lines.append("hash hashes the client address by default: one client, one backend.")
    return "\n".join(lines)
