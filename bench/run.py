"""The side-by-side benchmark: simplelb against direct access, HAProxy and nginx, interleaved.

    python bench/run.py [--rounds 3] [--duration 3] [--concurrency 1,10,50,200] [--baseline DIR]
                        [--parts matrix,floor,counting,syscalls,idle,busy,bodies,tls] [--json bench/results/latest.json]

Backends are two nginx servers answering ``ok`` (the project's mock servers
if nginx is not installed). Targets, each measured in every round, one after
the other, so drift on a shared machine hits them all alike:

* ``direct``      -- the first backend itself, the ceiling;
* ``simplelb``    -- one worker process; ``simplelb-w2`` -- ``--workers 2``;
* ``haproxy`` and ``nginx`` as proxies to the same backends, when installed;
* ``floor`` -- ``bench/floor.py``, a bare thread-per-connection proxy in
  CPython: what the design costs before any of simplelb's own work;
* ``before`` and ``before-w2`` -- with ``--baseline DIR``, the simplelb of
  another source tree (an earlier commit: ``git archive <rev> simplelb | tar -x -C DIR``);
* ``simplelb-admin`` -- one worker with ``--admin`` while a scraper reads
  ``/metrics`` every second, at concurrency 10 and 50 only: against
  ``simplelb``, the cost of counting.

For each target and concurrency (``wrk``): requests/s, p50, p99, socket
errors, non-2xx, the proxy's CPU time per request (its processes' own
counters) and peak RSS, as the median of the rounds. Then: system calls per
request (``strace -c -f``, a fixed number of keep-alive requests), a new
client's first response while 1,500 idle keep-alive connections are open and
while 200 busy ones are served, 10 MiB / 300 MiB bodies through simplelb,
and HTTPS -- keep-alive throughput and new handshakes per second -- of
simplelb against HAProxy terminating TLS with the same certificate. Last, the
targets of issue 18 (and the counting cost of issue 12), met or not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import ROOT, Bench  # noqa: E402,F401 - Bench is imported from here by traffic_capacity.py
from probes import Scraper, bodies, busy_new_connection_wait, idle_first_response, syscalls_per_request  # noqa: E402
from report import print_report  # noqa: E402

PARTS = ("matrix", "floor", "counting", "syscalls", "idle", "busy", "bodies", "tls")
COUNTING_LEVELS = (10, 50)  # where the cost of counting is measured (simplelb-admin against simplelb)
TLS_LEVEL = 10  # concurrency of the HTTPS measurements


def median_row(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float)) and runs[0][k] is not None]
    row = {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}
    for k in ("socket_errors", "non_2xx"):
        if k in row:
            row[k] = max(r[k] for r in runs)  # the worst round, not the median: errors must be zero
    return row


def start(bench: Bench, args) -> None:
    bench.start_backends()
    bench.targets["direct"] = (bench.backends[0], None)
    bench.start_simplelb("simplelb", 1)
    bench.start_simplelb("simplelb-w2", 2)
    if args.baseline:
        bench.start_simplelb("before", 1, root=Path(args.baseline))
        bench.start_simplelb("before-w2", 2, root=Path(args.baseline))
    bench.start_haproxy()
    bench.start_nginx()
    if "floor" in args.parts:
        bench.start_floor()
    if "counting" in args.parts:
        bench.start_simplelb("simplelb-admin", 1, admin=True)
    if "tls" in args.parts:
        bench.start_simplelb("simplelb-tls", 1, tls=True)
        bench.start_simplelb("simplelb-tls-w2", 2, tls=True)
        bench.start_haproxy("haproxy-tls", tls=True)
    bench.wait_targets()


def run_rounds(bench: Bench, args, levels: list[int]) -> dict:
    """Every (target, concurrency) once per round, interleaved; the median row of each."""
    runs: dict[str, list[dict]] = {}
    plain = [n for n in bench.targets if n != "simplelb-admin" and "tls" not in n]
    tls_targets = [n for n in bench.targets if "tls" in n]
    for round_no in range(args.rounds):
        for concurrency in levels:
            counting = "counting" in args.parts and concurrency in COUNTING_LEVELS
            names = plain if "matrix" in args.parts else ["simplelb"] if counting else []
            for name in names:
                runs.setdefault(f"{name}@{concurrency}", []).append(bench.measure(name, concurrency))
            if counting:
                with Scraper(bench.admin_ports["simplelb-admin"]) as scraper:
                    row = bench.measure("simplelb-admin", concurrency)
                row["scrapes"], row["scrape_failures"] = scraper.scrapes, scraper.failures
                runs.setdefault(f"simplelb-admin@{concurrency}", []).append(row)
        for name in tls_targets:
            runs.setdefault(f"{name}@keepalive", []).append(bench.measure(name, TLS_LEVEL, scheme="https"))
            runs.setdefault(f"{name}@handshake", []).append(
                bench.measure(name, TLS_LEVEL, scheme="https", close=True))
        print(f"round {round_no + 1}/{args.rounds} done (load average {os.getloadavg()[0]:.2f})", file=sys.stderr)
    return {key: median_row(rows) for key, rows in runs.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=3, help="seconds per measurement")
    parser.add_argument("--concurrency", default="1,10,50,200")
    parser.add_argument("--baseline", help="a source tree of an earlier simplelb, measured alongside as 'before'")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"what to measure, of {','.join(PARTS)}")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.json"))
    args = parser.parse_args()
    args.parts = set(args.parts.split(","))
    if unknown := args.parts - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict = {"rounds": args.rounds, "duration_s": args.duration, "cores": os.cpu_count(),
                     "python": sys.version.split()[0], "load_average_before": os.getloadavg()[0]}
    bench = Bench(args)
    try:
        start(bench, args)
        results["table"] = run_rounds(bench, args, levels)
        lbs = [n for n in ("simplelb", "simplelb-w2", "before", "before-w2", "haproxy", "nginx") if n in bench.targets]
        if "syscalls" in args.parts:
            results["syscalls"] = {f"{name}@{c}": syscalls_per_request(bench, name, c)
                                   for name in ("simplelb", "before", "floor", "haproxy") if name in bench.targets
                                   for c in (1, 10)}
        if "idle" in args.parts:
            results["idle_first_response"] = {name: idle_first_response(bench, name) for name in lbs}
        if "busy" in args.parts:
            results["busy_new_connection"] = {name: busy_new_connection_wait(bench, name) for name in lbs}
        if "bodies" in args.parts:
            # direct: what the machine does without a proxy; before: the baseline tree.
            results["bodies"] = [row for name in ("direct", "simplelb", "before") if name in bench.targets
                                 for row in bodies(bench, name)]
    except SystemExit:
        bench.close(show_logs=True)
        raise
    finally:
        bench.close()
    results["backends"] = bench.backend_kind
    results["load"] = "wrk" if shutil.which("wrk") else "traffic (the project's client)"
    results["load_average_after"] = os.getloadavg()[0]
    print_report(results, levels)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
