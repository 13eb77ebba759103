"""Sending the traffic: a closed loop of worker threads over keep-alive connections.

Each worker owns one ``http.client`` connection (a fresh one after any
error) and sends requests back to back until the shared count runs out, so
``concurrency`` is the number of requests in flight. Every request becomes
one ``Result``; nothing is aggregated here (see ``report``).
"""

from __future__ import annotations

import http.client
import itertools
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


def run_load(
    target: Target,
    n: int,
    *,
    concurrency: int = 10,
    method: str = "GET",
    timeout_s: float = 10.0,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    on_result: Callable[[Result], None] | None = None,
    stop: threading.Event | None = None,
) -> tuple[list[Result], float]:
    """Send ``n`` requests with ``concurrency`` workers; return the results and the wall time."""
    stop = stop or threading.Event()
    tickets = itertools.count()
    results: list[Result] = []
    results_lock = threading.Lock()  # guards results
    send_headers = {"User-Agent": "simplelb-traffic", **(headers or {})}
    started = time.perf_counter()

    def worker() -> None:
        conn: http.client.HTTPConnection | None = None
        while not stop.is_set() and next(tickets) < n:
            if conn is None:
                conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout_s)
            t0 = time.perf_counter()
            try:
                conn.request(method, target.path, body=body, headers=send_headers)
                response = conn.getresponse()
                response.read()
                result = Result(
                    t0 - started,
                    time.perf_counter() - t0,
                    response.status,
                    response.getheader("X-Backend") or response.getheader("X-Upstream"),
                    None,
                )
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                result = Result(t0 - started, time.perf_counter() - t0, None, None, classify(exc))
                conn.close()
                conn = None
            with results_lock:
                results.append(result)
            if on_result is not None:
                on_result(result)
        if conn is not None:
            conn.close()

    workers = [threading.Thread(target=worker, name=f"traffic-worker-{i}", daemon=True) for i in range(concurrency)]
    for thread in workers:
        thread.start()
    try:
        for thread in workers:
            thread.join()
    except KeyboardInterrupt:
        # Ctrl-C: let each worker finish the request it has in flight, then report what was sent.
        stop.set()
        for thread in workers:
            thread.join(timeout_s + 1)
    return results, time.perf_counter() - started
