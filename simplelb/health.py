"""Active health checks: one thread that probes every backend on an interval.

Each round probes all backends at once (one short-lived daemon thread per
probe) and waits for them all, so a backend whose probe hangs costs its own
``timeout_s`` and never delays another backend's verdict. A probe is a plain
``GET <path>`` on a fresh connection that passes on a 2xx status line within
a total deadline; only the status line is read. Results go to
``Backend.record_probe``, which applies ``rise``/``fall``; changes are logged
with the probe result that caused them.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence

from .backend import Backend, HealthChange

log = logging.getLogger(__name__)


def probe(host: str, port: int, path: str, timeout_s: float) -> tuple[bool, str]:
    """Probe one backend; return (passed, what happened) within ``timeout_s`` in total."""
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            host_header = f"[{host}]" if ":" in host else host
            request = f"GET {path} HTTP/1.1\r\nHost: {host_header}:{port}\r\nUser-Agent: simplelb-health\r\nConnection: close\r\n\r\n"
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(request.encode("ascii"))
            received = b""
            while b"\n" not in received:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                data = sock.recv(1024)
                if not data:
                    return False, "connection closed before a status line"
                received += data
                if len(received) > 8192:
                    return False, "status line too long"
    except TimeoutError:
        return False, f"no answer within {timeout_s:g}s"
    except OSError as exc:
        return False, f"connection failed: {exc.strerror or exc}"
    status_line = received.split(b"\n", 1)[0].rstrip(b"\r")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return False, f"not an HTTP response: {status_line[:40]!r}"
    status = int(parts[1])
    return 200 <= status < 300, f"HTTP {status}"


class HealthChecker:
    """Owns the probing thread; ``start()`` probes at once, ``stop()`` ends it."""

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        path: str,
        interval_s: float,
        timeout_s: float,
        on_change: Callable[[HealthChange], None] | None = None,
        probe_fn: Callable[[str, int, str, float], tuple[bool, str]] = probe,
    ):
        self._backends = list(backends)
        self._path = path
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._on_change = on_change
        self._probe = probe_fn
        self._stopping = threading.Event()  # set by stop(); wakes the interval wait early
        self._thread: threading.Thread | None = None
        self.rounds = 0  # completed rounds, for tests and status

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="health-checker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            # A round in progress ends within one probe timeout.
            self._thread.join(self._timeout_s + 1)

    def _run(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            self.run_round()
            self._stopping.wait(max(0.0, self._interval_s - (time.monotonic() - started)))

    def run_round(self) -> None:
        """Probe every backend concurrently and record the results."""
        results: dict[Backend, tuple[bool, str]] = {}

        def probe_one(backend: Backend) -> None:
            results[backend] = self._probe(backend.host, backend.port, self._path, self._timeout_s)

        threads = [
            threading.Thread(target=probe_one, args=(b,), name=f"health-probe {b.address}", daemon=True)
            for b in self._backends
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + self._timeout_s + 0.5
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for backend in self._backends:
            ok, reason = results.get(backend, (False, f"no answer within {self._timeout_s:g}s"))
            change = backend.record_probe(ok, reason)
            if change is not None:
                self._report(change)
        self.rounds += 1

    def _report(self, change: HealthChange) -> None:
        if change.healthy:
            log.warning("backend %s is UP again (%s)", change.backend.address, change.reason)
        else:
            log.warning("backend %s is DOWN (%s)", change.backend.address, change.reason)
        if self._on_change is not None:
            self._on_change(change)
