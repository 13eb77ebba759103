"""Sending the traffic: closed loop, open loop, or a recorded schedule; every request one ``Result``.

* Closed loop (``run_load``): ``concurrency`` workers, each sending its next
  request when the previous answer is in, until ``n`` requests are sent or
  ``duration_s`` is over. Like wrk and hey.
* Open loop (``run_open_loop``): requests are *scheduled* at ``rate`` per
  second, whether or not earlier ones have been answered (like vegeta or
  wrk2). A pool of workers, grown on demand up to ``max_in_flight``, sends each
  at its scheduled time. Latency is measured from the scheduled time, not
  from when a worker got round to it, so a stalled server shows as latency
  instead of hiding behind the requests it kept from being sent
  (coordinated omission). ``Result.lag_s`` records how late each send was:
  the generator's own accuracy.
* A schedule (``run_schedule``): the open loop with each request at its own
  offset, for ``--replay``.

**Stopping.** Every loop takes a ``stop`` event (set by Ctrl-C, or by the
caller). Once it is set no new request is sent; requests in flight get
``STOP_GRACE_S`` to finish, and the results so far are returned. The workers
are daemon threads: one blocked on a stalled server is left behind and dies
with the process, so it cannot hold up the report.

**Shards** (``--processes``). Shard ``k`` of ``N`` sends requests number
``k, k + N, k + 2N, ...`` of the run, with its share of the concurrency, so N
processes together send as many requests as one process would, on the same
schedule. Each walks the mix in order on its own (``Shard.first``): shard
``k`` takes the next of *its* block of the run's picks, the block after the
earlier shards' shares. Together they pick exactly what one process would
pick, and each process's own sequence is mixed. (Picking ``mix.pick`` of the
request number instead would give each process every ``N``-th pick: with two
targets of weight 1 and two processes, each process would send to one target
only, and a fast one's process would finish first.)

Each worker owns a ``Sender`` (``sender.py``). Nothing is aggregated here.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .outcome import UNANSWERED, Result
from .request import Mix, Target, TargetError, parse_target
from .sender import Sender, Tls, check_reachable, classify

__all__ = ["Job", "Result", "Shard", "Target", "TargetError", "check_reachable", "classify", "parse_target",
           "run_load", "run_open_loop", "run_schedule"]

STOP_GRACE_S = 0.5  # after a stop, how long requests in flight may take before the report is made
MAX_IN_FLIGHT = 512  # open loop: the default cap on requests in flight (and on worker threads)


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def share(self, total: int) -> int:
        """This shard's part of ``total`` (requests, concurrency): the parts add up to it exactly."""
        return total // self.count + (self.index < total % self.count)

    def ticket(self, local: int) -> int:
        """The run-wide number of this shard's ``local``-th request."""
        return self.index + local * self.count

    def first(self, total: int | None) -> int:
        """Where this shard's walk through the mix begins: its ``local``-th request gets pick ``first + local``.

        With a known ``total``, after the earlier shards' shares of it: the shards' blocks of picks
        together are picks 0 to ``total - 1``, exactly what one process would pick. With none (a
        ``--duration`` run), the shard's index, so that the processes do not all start on one target.
        """
        if total is None:
            return self.index
        return self.index * (total // self.count) + min(self.index, total % self.count)


WHOLE = Shard()
OnResult = Callable[[Result], None] | None


class _Collector:
    """The results of one loop, appended from many workers, and the requests still in flight.

    A request still unanswered when the loop is closed (a stop, a Ctrl-C) is a result too: a failure
    of its own kind, with the time it had waited. Left out, a stalled server would report nothing
    failed, and the fast answers alone would make the latency.
    """

    def __init__(self, on_result: OnResult):
        self.on_result = on_result
        self._results: list[Result] = []
        self._in_flight: dict[int, tuple] = {}  # worker thread -> what it sent, and when
        self._closed = False
        self._lock = threading.Lock()  # guards the three above

    def send(self, sender: Sender, target: Target, started_s: float, t0: float, lag_s: float = 0.0) -> None:
        worker = threading.get_ident()
        with self._lock:
            self._in_flight[worker] = (target, started_s, t0, lag_s)
        result = sender.send(target, started_s, t0, lag_s=lag_s)
        with self._lock:
            self._in_flight.pop(worker, None)
            if self._closed:
                return  # counted as unanswered already
            self._results.append(result)
        if self.on_result is not None:
            self.on_result(result)

    def close(self) -> list[Result]:
        """Every result, those still in flight as unanswered; what comes in later is not counted."""
        now = time.perf_counter()
        with self._lock:
            self._closed = True
            unanswered = [Result(started_s, now - t0, None, None, UNANSWERED, lag_s, False, target)
                          for target, started_s, t0, lag_s in self._in_flight.values()]
            self._results.extend(unanswered)
            return list(self._results)


def _mix(source: Target | Mix) -> Mix:
    return source if isinstance(source, Mix) else Mix([source])


def _tls_context(tls: Tls | None, targets: Iterable[Target]):
    """An ``SSLContext`` only when something is sent over https: making one loads the CA store (milliseconds)."""
    return tls.context() if tls and any(t.scheme == "https" for t in targets) else None


def _wait(threads: Sequence[threading.Thread], stop: threading.Event) -> None:
    """Wait for ``threads``; once ``stop`` is set, give them ``STOP_GRACE_S`` more, then leave them behind."""
    deadline = None
    for thread in threads:
        while thread.is_alive():
            try:
                if deadline is None and stop.is_set():
                    deadline = time.monotonic() + STOP_GRACE_S
                remaining = 0.1 if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return
                thread.join(min(0.1, remaining))
            except KeyboardInterrupt:
                stop.set()  # a caller that installed no SIGINT handler of its own


def _sleep_until(when: float, stop: threading.Event) -> bool:
    """Sleep until ``when`` (``perf_counter``); True if ``stop`` was set instead."""
    delay = when - time.perf_counter()
    if delay > 0.05:
        return stop.wait(delay)  # a long wait (a quiet stretch of a replayed log) listens for the stop
    if delay > 0:
        time.sleep(delay)  # a short one keeps precise time
    return stop.is_set()


def run_load(
    source: Target | Mix,
    n: int | None,
    *,
    concurrency: int = 10,
    timeout_s: float = 10.0,
    duration_s: float | None = None,
    on_result: OnResult = None,
    stop: threading.Event | None = None,
    start_at: float | None = None,
    phase_at: float | None = None,
    tls: Tls | None = None,
    shard: Shard = WHOLE,
) -> tuple[list[Result], float]:
    """Closed loop: ``n`` requests (or for ``duration_s``) with ``concurrency`` workers; results and wall time.

    ``start_at`` (a ``perf_counter`` value) lets phases of a scenario, or processes, share one clock.
    ``phase_at`` (the same clock) is when this phase is due to begin, if not now: a scenario's phases
    keep to its timetable although each waits for its last answers before the next begins.
    """
    mix, stop = _mix(source), stop or threading.Event()
    context = _tls_context(tls, mix.targets)
    mine = shard.share(n) if n is not None else None
    first = shard.first(n)
    tickets = itertools.count()
    collector = _Collector(on_result)
    phase_start = time.perf_counter() if phase_at is None else phase_at
    started = start_at if start_at is not None else phase_start
    ends_at = phase_start + duration_s if duration_s else None

    def worker() -> None:
        sender = Sender(timeout_s, context)
        while not stop.is_set():
            local = next(tickets)
            t0 = time.perf_counter()
            if (mine is not None and local >= mine) or (ends_at is not None and t0 >= ends_at):
                break
            collector.send(sender, mix.pick(first + local), t0 - started, t0)
        sender.close()

    workers = [threading.Thread(target=worker, name=f"traffic-worker-{i}", daemon=True)
               for i in range(max(1, shard.share(concurrency)))]
    for thread in workers:
        thread.start()
    _wait(workers, stop)
    return collector.close(), time.perf_counter() - phase_start


def run_open_loop(
    source: Target | Mix,
    rate: float,
    *,
    n: int | None = None,
    duration_s: float | None = None,
    max_in_flight: int = MAX_IN_FLIGHT,
    shard: Shard = WHOLE,
    **options,
) -> tuple[list[Result], float]:
    """Open loop: requests scheduled at ``rate``/s for ``n`` requests or ``duration_s``; results and wall time.

    ``options``: ``timeout_s``, ``on_result``, ``stop``, ``start_at``, ``phase_at``, ``tls`` as for ``run_load``.
    """
    mix = _mix(source)
    total = n if n is not None else max(1, int(rate * (duration_s or 1.0)))
    first = shard.first(total)
    items = ((i / rate, mix.pick(first + local)) for local, i in enumerate(range(shard.index, total, shard.count)))
    # The run lasts until the next request would be due (or for its duration), not only until the last
    # was sent: 6 requests at 2/s take 3 s, and their rate is 2/s, not 6 in 2.5 s.
    ends_s = duration_s if n is None and duration_s else total / rate
    return _run_scheduled(items, max(1, shard.share(max_in_flight)), targets=mix.targets, ends_s=ends_s, **options)


def run_schedule(
    schedule: Sequence[tuple[float, Target]],
    *,
    max_in_flight: int = MAX_IN_FLIGHT,
    shard: Shard = WHOLE,
    **options,
) -> tuple[list[Result], float]:
    """Each request at its own offset (seconds from the start): ``--replay``. ``options`` as for ``run_open_loop``."""
    items = (schedule[i] for i in range(shard.index, len(schedule), shard.count))
    targets = {id(target): target for _, target in schedule}.values()
    return _run_scheduled(items, max(1, shard.share(max_in_flight)), targets=targets, **options)


def _run_scheduled(
    items: Iterable[tuple[float, Target]],
    max_in_flight: int,
    *,
    targets: Iterable[Target] = (),
    ends_s: float = 0.0,
    timeout_s: float = 10.0,
    on_result: OnResult = None,
    stop: threading.Event | None = None,
    start_at: float | None = None,
    phase_at: float | None = None,
    tls: Tls | None = None,
) -> tuple[list[Result], float]:
    stop = stop or threading.Event()
    context = _tls_context(tls, targets)
    schedule = time.perf_counter() if phase_at is None else phase_at  # this phase's own start
    started = start_at if start_at is not None else schedule
    collector = _Collector(on_result)
    due: queue.SimpleQueue = queue.SimpleQueue()
    # Free senders minus sends already handed to them. Counted when a send is queued, not when a
    # sender wakes: a burst of sends due at once must not all go to the one sender that is free.
    free = [0]
    workers: list[threading.Thread] = []
    lock = threading.Lock()  # guards free

    def worker() -> None:
        sender = Sender(timeout_s, context)
        while (item := due.get()) is not None and not stop.is_set():
            scheduled, target = item
            now = time.perf_counter()
            collector.send(sender, target, scheduled - started, scheduled, lag_s=now - scheduled)
            with lock:
                free[0] += 1
        sender.close()

    for offset, target in items:
        scheduled = schedule + offset
        if _sleep_until(scheduled, stop):
            break
        with lock:
            need_worker = free[0] <= 0 and len(workers) < max_in_flight
            if not need_worker:
                free[0] -= 1  # a free sender takes it, or (at the cap) it waits for the next one
        if need_worker:
            workers.append(threading.Thread(target=worker, name=f"traffic-open-{len(workers)}", daemon=True))
            workers[-1].start()
        due.put((scheduled, target))
    for _ in workers:
        due.put(None)
    _wait(workers, stop)
    elapsed = time.perf_counter() - schedule
    # ``ends_s``: the end of the schedule (seconds from its start), which a run that was not stopped lasted.
    return collector.close(), elapsed if stop.is_set() else max(elapsed, ends_s)


@dataclass(frozen=True)
class Job:
    """A whole run, picklable, so that ``--processes`` can hand the same one to each process."""

    mix: Mix | None = None
    n: int | None = None
    duration_s: float | None = None
    rate: float | None = None  # open loop
    concurrency: int = 10  # closed loop: workers; open loop: the cap on requests in flight
    timeout_s: float = 10.0
    tls: Tls | None = None
    schedule: tuple[tuple[float, Target], ...] | None = None  # --replay

    def run(self, *, stop: threading.Event, on_result: OnResult = None, start_at: float | None = None,
            shard: Shard = WHOLE) -> tuple[list[Result], float]:
        # ``phase_at``: the schedule (and a closed loop's duration) runs from the common start, not from
        # when this process woke up for it, so a late wake-up shows as send lag, as in one process.
        options = {"timeout_s": self.timeout_s, "on_result": on_result, "stop": stop, "start_at": start_at,
                   "phase_at": start_at, "tls": self.tls, "shard": shard}
        if self.schedule is not None:
            return run_schedule(self.schedule, max_in_flight=self.concurrency, **options)
        if self.rate:
            return run_open_loop(self.mix, self.rate, n=self.n, duration_s=self.duration_s,
                                 max_in_flight=self.concurrency, **options)
        return run_load(self.mix, self.n, concurrency=self.concurrency, duration_s=self.duration_s, **options)

    @property
    def planned(self) -> int | None:
        """How many requests the run will send, when that is known in advance (for the progress bar)."""
        if self.schedule is not None:
            return len(self.schedule)
        if self.n is not None:
            return self.n
        return int(self.rate * self.duration_s) if self.rate and self.duration_s else None
