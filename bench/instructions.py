"""Instructions per proxied request: a figure that does not move with the machine's load.

    python bench/instructions.py [--baseline DIR] [--requests 1000]

On the shared 2-core machine, requests/s and CPU time move by ±15% from one
run to the next, which hides a change worth 3%. ``valgrind --tool=callgrind``
counts the instructions the balancer executes, whatever else the machine is
doing. Each tree's balancer (one worker, health probes every 600 s so none
falls inside the count) serves two runs of keep-alive GETs from one client
connection, 200 and 200 + ``--requests``; the difference divided by
``--requests`` is the cost of one request, start-up and shutdown cancelled
out. Backends are the nginx servers of ``bench/run.py`` (mockserv without
nginx). Needs valgrind (Debian's ``valgrind``); takes about a minute and a
half per tree.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import ROOT, Bench, free_port, wait_port  # noqa: E402
from probes import keepalive_client  # noqa: E402

WARMUP = 200  # requests in the short run; the long run has --requests more


def instructions(tree: Path, backends: list[int], count: int) -> int:
    """Instructions the balancer from ``tree`` executed, start to exit, serving ``count`` requests."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", os.path.realpath(sys.executable),
             "-m", "simplelb", "--backends", ",".join(f"127.0.0.1:{p}" for p in backends), "--port", str(port),
             "--log-level", "warning", "--health-interval", "600", "--cpu-affinity", "any"],
            cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(port, "the balancer under valgrind", timeout_s=120)  # (valgrind starts slowly)
            keepalive_client(port, count)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
        match = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
        if not match:
            raise SystemExit(f"bench: no instruction count from callgrind for {tree}")
        return int(match.group(1))


def per_request(tree: Path, backends: list[int], requests: int) -> float:
    short = instructions(tree, backends, WARMUP)
    long = instructions(tree, backends, WARMUP + requests)
    return (long - short) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="a source tree of an earlier simplelb, counted alongside")
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("bench: valgrind is not installed (apt-get install valgrind)")
    bench = Bench(types.SimpleNamespace(duration=0))
    try:
        backends = bench.start_backends()
        trees = [("simplelb", ROOT)] + ([("before", args.baseline.resolve())] if args.baseline else [])
        counts = {name: per_request(tree, backends, args.requests) for name, tree in trees}
    finally:
        bench.close()
    print(f"instructions per keep-alive GET ({bench.backend_kind} backends, {args.requests} requests):")
    for name, count in counts.items():
        print(f"  {name:10s} {count:12,.0f}")
    if "before" in counts:
        print(f"  change     {100 * (counts['simplelb'] / counts['before'] - 1):+11.1f}%")


if __name__ == "__main__":
    main()
