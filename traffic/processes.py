"""``--processes N``: one run sent from N processes, its results gathered whole.

One Python process sends a few thousand requests a second before its
interpreter lock is the limit. Here the same ``runner.Job`` goes to N
processes, each sending its shard (``runner.Shard``: requests ``k, k + N,
...``, with its part of the concurrency), so together they send exactly what
one process would.

Theory of operation:

1. Start N processes (``spawn``: nothing of this process's threads or state is
   copied). Each imports ``traffic``, says it is ready, and waits.
2. Pick a start time a moment ahead and send it to all: they begin together,
   on the same clock (``perf_counter`` is the system's monotonic clock, the
   same in every process), so their results share one time axis.
3. Each sends back *every* result, not a summary. Histograms, the timeline
   and per-backend figures are then built from all of them in this process,
   so merging is exact: the report is the one one process would have made
   from the same results.
4. Stopping: ``stop`` (Ctrl-C or SIGTERM here) sets a shared flag; each
   process stops as the runner does (``STOP_GRACE_S``) and sends back what it
   has. Ctrl-C itself is ignored in the children, so the report comes from
   this process alone. A SIGTERM sent to a child (to the whole process group,
   say, by a service manager) stops that child the same way: it sends back
   what it has, rather than dying with it. A process that is still waiting for
   the start when the run is stopped leaves at once; one that does not answer
   in time is killed. No process is left behind.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.resource_tracker
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait

from .outcome import Result, is_failed
from .runner import STOP_GRACE_S, Job, Shard

READY_TIMEOUT_S = 30.0  # starting an interpreter and importing traffic, on a busy machine
START_MARGIN_S = 0.05  # between sending the start time and the start itself
GATHER_TIMEOUT_S = 5.0  # after the stop, for the results to come back
EXIT_TIMEOUT_S = 1.0  # after the results (or the stop), for every process to exit, all together
POLL_S = 0.05  # how often a process looks at the shared stop while it waits
# Ignored in a child as it starts (see run_in_processes), then handled: Ctrl-C stays ignored, SIGTERM stops it.
CHILD_SIGNALS = (signal.SIGINT, signal.SIGTERM)

Counters = Callable[[], tuple[int, int]]


def run_in_processes(job: Job, count: int, stop: threading.Event,
                     on_start: Callable[[float, Counters], None] | None = None) -> tuple[list[Result], float]:
    """Run ``job`` from ``count`` processes; all results (on one clock) and the wall time of the longest shard.

    ``on_start`` is given the common start (a ``perf_counter`` value, the results' t = 0) and a function
    returning (done, failed) so far, for a progress line.
    """
    context = multiprocessing.get_context("spawn")
    # A plain shared byte, polled: a multiprocessing.Event's set() waits for every process that was
    # waiting on it to wake, and hangs for ever on one that exited while waiting.
    shared_stop = context.RawValue("b", 0)
    tallies = context.Array("q", 2 * count, lock=False)  # done, failed per process; each writes its own
    pipes, children = [], []
    try:
        for index in range(count):
            ours, theirs = context.Pipe()
            child = context.Process(target=_child, args=(job, Shard(index, count), theirs, shared_stop, tallies),
                                    name=f"traffic-{index}", daemon=True)
            _start_ignoring_signals(child)
            theirs.close()
            pipes.append(ours)
            children.append(child)
        if not _wait_ready(pipes, stop):
            return [], 0.0  # stopped before anything was sent
        start_at = time.perf_counter() + START_MARGIN_S
        for pipe in pipes:
            pipe.send(start_at)
        if on_start is not None:
            on_start(start_at, lambda: (sum(tallies[0::2]), sum(tallies[1::2])))
        return _gather(pipes, stop, shared_stop, start_at)
    finally:
        shared_stop.value = 1
        # One deadline for all: a process still waiting for the start sees the stop within POLL_S.
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        for child in children:
            child.join(max(0.0, deadline - time.monotonic()))
        for child in children:
            if child.is_alive():
                child.kill()  # (SIGTERM would only ask it to stop, which it was asked already)
                child.join(1.0)


def _start_ignoring_signals(child) -> None:
    """Start ``child`` with SIGINT and SIGTERM ignored, which it keeps through exec.

    A Ctrl-C or SIGTERM sent to the whole process group while the child imports would otherwise be
    a traceback there, or kill it before it could report; ``_child`` handles them once it can. (A
    blocked mask alone would not do: multiprocessing unblocks both as it starts its resource
    tracker.) Only the main thread may set handlers. Here, meanwhile, the two are also blocked: one
    that comes in the meantime is kept pending (Linux keeps a blocked signal even while it is
    ignored) and reaches our own handler once it is back.
    """
    if threading.current_thread() is not threading.main_thread():
        child.start()
        return
    multiprocessing.resource_tracker.ensure_running()  # (starting it later would unblock them here)
    signal.pthread_sigmask(signal.SIG_BLOCK, CHILD_SIGNALS)
    ours = {sig: signal.signal(sig, signal.SIG_IGN) for sig in CHILD_SIGNALS}
    try:
        child.start()
    finally:
        for sig, handler in ours.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, CHILD_SIGNALS)


def _wait_ready(pipes: list, stop: threading.Event) -> bool:
    """True when every process is ready; False if ``stop`` came first. ``OSError`` if one cannot start."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    waiting = list(pipes)
    while waiting:
        if stop.is_set():
            return False
        if time.monotonic() > deadline:
            raise OSError(f"the traffic processes did not start within {READY_TIMEOUT_S:g}s")
        for pipe in wait(waiting, timeout=0.1):
            try:
                ready = pipe.recv() == "ready"
            except EOFError:
                ready = False
            if not ready:
                raise OSError("a traffic process failed to start")
            waiting.remove(pipe)
    return True


def _gather(pipes: list, stop: threading.Event, shared_stop, start_at: float) -> tuple[list[Result], float]:
    results: list[Result] = []
    elapsed = 0.0
    waiting = list(pipes)
    deadline = None
    while waiting:
        if stop.is_set():
            shared_stop.value = 1
            deadline = deadline or time.monotonic() + STOP_GRACE_S + GATHER_TIMEOUT_S
        if deadline is not None and time.monotonic() > deadline:
            break  # the report is made from the processes that answered
        for pipe in wait(waiting, timeout=0.05):
            waiting.remove(pipe)
            try:
                rows, shard_elapsed = pipe.recv()
            except EOFError:
                continue  # the process died; what it sent is lost, the rest is reported
            results.extend(Result(*row) for row in rows)
            elapsed = max(elapsed, shard_elapsed)
    results.sort(key=lambda r: r.started_s)
    return results, elapsed


def _child(job: Job, shard: Shard, pipe, shared_stop, tallies) -> None:
    """One process: wait for the start time, send this shard, send back every result as a tuple."""
    terminated: list[int] = []  # SIGTERM came; the handler takes no lock (see terminal.stop_on_signals)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop, and reports
    signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, CHILD_SIGNALS)
    stop = threading.Event()
    parent = multiprocessing.parent_process()

    def watch() -> None:
        while not shared_stop.value and not terminated:
            if parent is not None and not parent.is_alive():
                break  # the parent was killed: stop rather than load a server for nobody
            time.sleep(POLL_S)
        stop.set()

    threading.Thread(target=watch, name="traffic-stop-watch", daemon=True).start()
    pipe.send("ready")
    while not pipe.poll(POLL_S):
        if stop.is_set():
            return  # stopped before the start: nothing was sent, nothing to send back
    try:
        start_at = pipe.recv()
    except EOFError:
        return  # the parent is gone
    lock = threading.Lock()  # guards this process's tallies (several workers add to them)
    done, failed = 2 * shard.index, 2 * shard.index + 1

    def count(result: Result) -> None:
        with lock:
            tallies[done] += 1
            tallies[failed] += is_failed(result)

    if stop.wait(max(0.0, start_at - time.perf_counter())):
        return
    results, elapsed = job.run(stop=stop, on_result=count, start_at=start_at, shard=shard)
    rows = [(r.started_s, r.latency_s, r.status, r.backend, r.error, r.lag_s, r.reconnected, r.target)
            for r in results]
    try:
        pipe.send((rows, elapsed))  # (from start_at: the job's phase begins there)
    except (BrokenPipeError, OSError):
        pass  # the parent is gone
