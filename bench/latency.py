"""Latency and throughput through simplelb versus straight to the same backends.

    python bench/latency.py [--rounds 5] [--n 2000] [--concurrency 1,10,50] [--json out.json]

Starts mock backends (``python -m mockserv``) and the balancer
(``python -m simplelb``) as separate processes, so the load generator does
not share an interpreter with either, then sends the same closed-loop traffic
(the project's own ``traffic`` runner) directly to one backend and through the
balancer, interleaved, for several rounds. Prints the median of the rounds
for p50, p99 and requests/s, and the balancer/direct ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from traffic.report import summarize  # noqa: E402
from traffic.runner import Target, run_load  # noqa: E402


def start(args: list[str], pattern: str) -> tuple[subprocess.Popen, re.Match]:
    """Start ``python -m ...`` and wait for a stdout line matching ``pattern``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(pattern, line)
        if match:
            return proc, match
    proc.kill()
    raise SystemExit(f"bench: {' '.join(args)} did not start")


def measure(target: Target, n: int, concurrency: int) -> dict:
    run_load(target, min(200, n), concurrency=concurrency)  # warm connections and code paths
    results, elapsed = run_load(target, n, concurrency=concurrency)
    summary = summarize(results, elapsed)
    errors = sum(summary["errors"].values()) + sum(c for s, c in summary["status_codes"].items() if s != "200")
    return {"rps": summary["throughput_rps"], "p50_ms": summary["latency_ms"]["p50"],
            "p99_ms": summary["latency_ms"]["p99"], "errors": errors}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=2000, help="requests per measurement")
    parser.add_argument("--concurrency", default="1,10,50")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    mocks, match = start(["-m", "mockserv", "2", "--base-port", "0", "--log-level", "error"], r"backends: (\S+)")
    backends = match.group(1)
    balancer, match = start(
        ["-m", "simplelb", "--backends", backends, "--port", "0", "--log-level", "warning"],
        r"listening on http://([\d.]+):(\d+)",
    )
    host, port = match.group(1), int(match.group(2))
    direct_host, direct_port = backends.split(",")[0].rsplit(":", 1)
    targets = {"direct": Target(direct_host, int(direct_port), "/"), "simplelb": Target(host, port, "/")}
    rows: dict[tuple[str, int], list[dict]] = {}
    try:
        for round_no in range(args.rounds):
            for concurrency in levels:
                for name, target in targets.items():  # interleaved, so drift hits both alike
                    rows.setdefault((name, concurrency), []).append(measure(target, args.n, concurrency))
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        balancer.terminate()
        mocks.terminate()
        balancer.wait(15)
        mocks.wait(15)

    medians = {
        f"{name}@{c}": {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms", "errors")}
        for (name, c), runs in rows.items()
    }
    print(f"\nmedian of {args.rounds} rounds, {args.n} requests each, Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(f"{'target':<10} {'conc':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for concurrency in levels:
        for name in targets:
            m = medians[f"{name}@{concurrency}"]
            print(f"{name:<10} {concurrency:>5} {m['rps']:>9.0f} {m['p50_ms']:>8.3f} {m['p99_ms']:>8.3f} {m['errors']:>7.0f}")
        lb, direct = medians[f"simplelb@{concurrency}"], medians[f"direct@{concurrency}"]
        print(f"{'ratio':<10} {concurrency:>5} {lb['rps'] / direct['rps']:>9.2f}x"
              f"  added p50 {lb['p50_ms'] - direct['p50_ms']:.3f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": args.rounds, "n": args.n, "medians": medians}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
