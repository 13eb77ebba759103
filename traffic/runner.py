"""Sending the traffic: closed loop or open loop, over keep-alive connections.

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

Each worker owns one ``http.client`` connection (a fresh one after any
error). Every request becomes one ``Result``; nothing is aggregated here.
"""

from __future__ import annotations

import http.client
import itertools
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit


class TargetError(ValueError):
    """The target URL is not usable; the message is fit to show a user."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str  # request-target sent on the wire

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"


def parse_target(url: str, path: str | None = None) -> Target:
    """``http://host:port`` plus an optional path (which replaces the URL's own)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise TargetError(f"--url must look like http://host:port, not {url!r}")
    try:
        port = parts.port or 80
    except ValueError:
        raise TargetError(f"--url has an invalid port: {url!r}") from None
    target = path if path is not None else (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not target.startswith("/") or any(c in target for c in " \t\r\n"):
        raise TargetError(f"--path must start with / and contain no spaces, not {target!r}")
    return Target(parts.hostname, port, target)


@dataclass(frozen=True)
class Result:
    """One request: when it started (seconds since the run began), how long it took, and how it ended."""

    started_s: float
    latency_s: float
    status: int | None  # None when no response arrived
    backend: str | None  # from X-Backend, else X-Upstream
    error: str | None  # a short kind, e.g. "connection refused", "timeout"
    lag_s: float = 0.0  # open loop: how late the request was sent after its scheduled time


def check_reachable(target: Target, timeout_s: float) -> None:
    """Raise ``TargetError`` with a one-line reason if nothing accepts connections at the target."""
    try:
        socket.create_connection((target.host, target.port), timeout=timeout_s).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc)).lower()
        raise TargetError(f"cannot connect to http://{target.host}:{target.port}: {reason}") from None


def classify(exc: BaseException) -> str:
    """A short, stable name for what went wrong with a request."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, http.client.IncompleteRead):
        return "truncated body"
    if isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
        return "connection closed"
    if isinstance(exc, http.client.HTTPException):
        return "protocol error"
    if isinstance(exc, OSError):
        return (exc.strerror or exc.__class__.__name__).lower()
    return exc.__class__.__name__


class Sender:
    """One worker's keep-alive connection: send a request, return a ``Result``."""

    def __init__(self, target: Target, method: str, timeout_s: float, body: bytes | None, headers: dict[str, str]):
        self.target = target
        self.method = method
        self.timeout_s = timeout_s
        self.body = body
        self.headers = headers
        self._conn: http.client.HTTPConnection | None = None

    def send(self, started_s: float, t0: float, lag_s: float = 0.0) -> Result:
        """Send one request; latency counts from ``t0`` (a ``perf_counter`` value)."""
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.target.host, self.target.port, timeout=self.timeout_s)
        try:
            self._conn.request(self.method, self.target.path, body=self.body, headers=self.headers)
            response = self._conn.getresponse()
            response.read()
            result = Result(
                started_s, time.perf_counter() - t0, response.status,
                response.getheader("X-Backend") or response.getheader("X-Upstream"), None, lag_s,
            )
            if response.will_close:
                self.close()
        except (OSError, http.client.HTTPException) as exc:
            result = Result(started_s, time.perf_counter() - t0, None, None, classify(exc), lag_s)
            self.close()
        return result

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _join(threads: list[threading.Thread], stop: threading.Event, grace_s: float) -> None:
    try:
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        # Ctrl-C: let each worker finish the request it has in flight, then report what was sent.
        stop.set()
        for thread in threads:
            thread.join(grace_s)


def run_load(
    target: Target,
    n: int | None,
    *,
    concurrency: int = 10,
    method: str = "GET",
    timeout_s: float = 10.0,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    duration_s: float | None = None,
    on_result: Callable[[Result], None] | None = None,
    stop: threading.Event | None = None,
    start_at: float | None = None,
) -> tuple[list[Result], float]:
    """Closed loop: ``n`` requests (or for ``duration_s``) with ``concurrency`` workers; results and wall time.

    ``start_at`` (a ``perf_counter`` value) lets phases of a scenario share one clock.
    """
    stop = stop or threading.Event()
    tickets = itertools.count()
    results: list[Result] = []
    results_lock = threading.Lock()  # guards results
    send_headers = {"User-Agent": "simplelb-traffic", **(headers or {})}
    phase_start = time.perf_counter()
    started = start_at if start_at is not None else phase_start
    ends_at = phase_start + duration_s if duration_s else None

    def worker() -> None:
        sender = Sender(target, method, timeout_s, body, send_headers)
        while not stop.is_set() and (n is None or next(tickets) < n):
            t0 = time.perf_counter()
            if ends_at is not None and t0 >= ends_at:
                break
            result = sender.send(t0 - started, t0)
            with results_lock:
                results.append(result)
            if on_result is not None:
                on_result(result)
        sender.close()

    workers = [threading.Thread(target=worker, name=f"traffic-worker-{i}", daemon=True) for i in range(concurrency)]
    for thread in workers:
        thread.start()
    _join(workers, stop, timeout_s + 1)
    return results, time.perf_counter() - phase_start


def run_open_loop(
    target: Target,
    rate: float,
    *,
    n: int | None = None,
    duration_s: float | None = None,
    max_in_flight: int = 512,
    method: str = "GET",
    timeout_s: float = 10.0,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    on_result: Callable[[Result], None] | None = None,
    stop: threading.Event | None = None,
    start_at: float | None = None,
) -> tuple[list[Result], float]:
    """Open loop: requests scheduled at ``rate``/s for ``n`` requests or ``duration_s``; results and wall time.

    ``start_at`` (a ``perf_counter`` value) lets phases of a scenario share one clock.
    """
    if n is None:
        n = max(1, int(rate * (duration_s or 1.0)))
    stop = stop or threading.Event()
    started = start_at if start_at is not None else time.perf_counter()
    schedule = time.perf_counter()  # this phase's own start
    results: list[Result] = []
    lock = threading.Lock()  # guards results, idle and workers
    due: queue.SimpleQueue = queue.SimpleQueue()
    idle = [0]
    workers: list[threading.Thread] = []
    send_headers = {"User-Agent": "simplelb-traffic", **(headers or {})}

    def worker() -> None:
        sender = Sender(target, method, timeout_s, body, send_headers)
        while True:
            with lock:
                idle[0] += 1
            scheduled = due.get()
            with lock:
                idle[0] -= 1
            if scheduled is None:
                break
            now = time.perf_counter()
            result = sender.send(scheduled - started, scheduled, lag_s=now - scheduled)
            with lock:
                results.append(result)
            if on_result is not None:
                on_result(result)
        sender.close()

    def add_worker() -> None:
        thread = threading.Thread(target=worker, name=f"traffic-open-{len(workers)}", daemon=True)
        workers.append(thread)
        thread.start()

    try:
        for i in range(n):
            if stop.is_set():
                break
            scheduled = schedule + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            with lock:
                need_worker = idle[0] == 0 and len(workers) < max_in_flight
            if need_worker:
                add_worker()
            due.put(scheduled)
    except KeyboardInterrupt:
        stop.set()
    for _ in workers:
        due.put(None)
    _join(workers, stop, timeout_s + 1)
    return results, time.perf_counter() - schedule
