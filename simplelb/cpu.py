"""One CPU per balancer process: all of its threads run on the same core.

A CPython process runs one thread at a time (the GIL), so its threads spread
over several cores buy nothing: they only hand the interpreter lock from core
to core, and every hand-off wakes a thread elsewhere (an inter-processor
interrupt, a cold cache). A busy balancer hands it over several times per
request -- at every ``recv`` and ``send`` -- and on the 2-core bench machine,
keeping one worker's threads on one core served 29-39% more requests per
second at concurrency 10 to 200, with a quarter less CPU per request
(bench/README.md). ``--cpu-affinity any`` leaves them where the system puts them.
Kernel work for the sockets still happens wherever the kernel does it, and
other processes still use the other cores: a worker per core (``--workers
auto``) is how a balancer uses them all.

``run_on_one_cpu`` is called by the command line's processes before they
start any thread (threads inherit the calling thread's CPU set): worker
``number`` of ``--workers`` takes the number-th CPU it may use, so workers
spread over the cores; a single process stays on the core it started on.
Under ``taskset`` the choice is made among the CPUs allowed; with one CPU
allowed, or where the system has no CPU affinity, nothing changes.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def run_on_one_cpu(number: int | None = None) -> int | None:
    """Keep this process's threads (those started from now on) on one CPU; return it, or None."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if len(allowed) < 2:
        return None
    if number is not None:
        cpu = allowed[(number - 1) % len(allowed)]
    else:
        cpu = _current_cpu()
        if cpu not in allowed:
            cpu = allowed[0]
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:
        log.debug("cannot keep to CPU %d: %s", cpu, exc)
        return None
    return cpu


def _current_cpu() -> int | None:
    """The CPU this thread last ran on (field 39 of /proc/self/stat), or None."""
    try:
        with open("/proc/thread-self/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[36])
    except (OSError, IndexError, ValueError):
        return None
