"""run_on_one_cpu: a balancer process keeps its threads on one CPU (tried in a child: it would pin pytest)."""

import json
import os
import subprocess
import sys

import pytest

CHILD = """
import json, os, sys, threading
from simplelb.cpu import run_on_one_cpu
chosen = run_on_one_cpu(int(sys.argv[1]) if len(sys.argv) > 1 else None)
seen = []
thread = threading.Thread(target=lambda: seen.append(sorted(os.sched_getaffinity(0))))
thread.start(); thread.join()
print(json.dumps({"chosen": chosen, "main": sorted(os.sched_getaffinity(0)), "thread": seen[0]}))
"""


def child(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True, timeout=30)
    return json.loads(out.stdout)


needs_two = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: nothing to choose")


@needs_two
def test_a_single_process_and_its_threads_stay_on_one_cpu():
    got = child()
    assert got["main"] == got["thread"] == [got["chosen"]]


@needs_two
def test_workers_take_the_cpus_in_turn():
    allowed = sorted(os.sched_getaffinity(0))
    assert [child(str(n))["chosen"] for n in (1, 2, len(allowed) + 1)] == [allowed[0], allowed[1], allowed[0]]
