"""How much ``traffic`` itself can send: one process against ``--processes N``, against nginx directly.

    python bench/traffic_capacity.py [--rounds 5] [--duration 4] [--concurrency 20] [--processes 2]

Starts one nginx backend answering ``ok`` (``bench/run.py``'s backends; the
project's mock servers when nginx is missing, which then measure themselves
more than traffic), and runs ``python -m traffic --url ... --duration D
--concurrency C --json`` with ``--processes 1`` and ``--processes N``,
interleaved (one of each per round, so drift on the shared machine hits both
alike). Reports the median requests/s of each and their ratio; issue 16 asks
for N = 2 to send at least 1.6 times what one process does.

The load generator, its children and nginx share this machine's cores: the
ratio says how much of the machine the extra processes turn into requests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, Bench  # noqa: E402 - bench/run.py starts the nginx backends

TARGET_RATIO = 1.6


def measure(port: int, processes: int, args) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "traffic", "--url", f"http://127.0.0.1:{port}/", "--duration", str(args.duration),
         "--concurrency", str(args.concurrency), "--processes", str(processes), "--timeout", "5", "--json"],
        capture_output=True, text=True, timeout=args.duration + 60, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if out.returncode != 0:
        raise SystemExit(f"bench: traffic failed: {out.stderr.strip()}")
    report = json.loads(out.stdout)
    return {"rps": report["throughput_rps"], "requests": report["requests"], "failed": report["failures"]["failed"],
            "p50_ms": report["latency_ms"]["p50"], "p99_ms": report["latency_ms"]["p99"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "traffic_capacity.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    bench = Bench(SimpleNamespace(rounds=args.rounds, duration=args.duration))
    runs: dict[int, list[dict]] = {1: [], args.processes: []}
    try:
        port = bench.start_backends()[0]
        measure(port, 1, SimpleNamespace(duration=1, concurrency=args.concurrency))  # warm up nginx and the caches
        for round_no in range(args.rounds):
            for processes in runs:
                runs[processes].append(measure(port, processes, args))
            print(f"round {round_no + 1}/{args.rounds}: "
                  + ", ".join(f"{p} process(es) {r[-1]['rps']:.0f} req/s" for p, r in runs.items()), file=sys.stderr)
    finally:
        bench.close()
    medians = {p: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for p, rows in runs.items()}
    ratio = medians[args.processes]["rps"] / medians[1]["rps"]
    # The two runs of one round share the machine's state; their ratio moves less than either figure.
    round_ratios = [n["rps"] / one["rps"] for one, n in zip(runs[1], runs[args.processes], strict=True)]
    print(f"\n{os.cpu_count()} cores, Python {sys.version.split()[0]}, backend: {bench.backend_kind}, "
          f"closed loop at concurrency {args.concurrency}, median of {args.rounds} rounds x {args.duration:g}s")
    print(f"{'processes':>9}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'failed':>8}")
    for processes, m in medians.items():
        print(f"{processes:>9}{m['rps']:>9.0f}{m['p50_ms']:>8.2f}{m['p99_ms']:>8.2f}{max(r['failed'] for r in runs[processes]):>8}")
    verdict = "meets" if ratio >= TARGET_RATIO else "misses"
    print(f"ratio {args.processes}/1: {ratio:.2f}x of the medians ({verdict} the {TARGET_RATIO}x of issue 16); "
          f"per round {', '.join(f'{r:.2f}' for r in round_ratios)} (median {statistics.median(round_ratios):.2f}x)")
    print(f"load average (1 min) before and after: {load_before:.1f}, {os.getloadavg()[0]:.1f}: other work on these "
          f"{os.cpu_count()} cores takes from the second process first")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rounds": args.rounds, "duration_s": args.duration,
                                           "concurrency": args.concurrency, "backend": bench.backend_kind,
                                           "runs": {str(p): r for p, r in runs.items()},
                                           "medians": {str(p): m for p, m in medians.items()}, "ratio": ratio,
                                           "round_ratios": round_ratios},
                                          indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
