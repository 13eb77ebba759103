"""Active health checks: one thread that probes every backend on an interval.

Each round probes all backends at once (one short-lived daemon thread per
probe) and records each result as it comes, so a backend whose probe hangs
costs its own ``timeout_s`` and never delays another backend's verdict. A probe is a plain
``GET <path>`` on a fresh connection that passes on a 2xx status line within
a total deadline; only the status line is read. Results go to
``Backend.record_probe``, which applies ``rise``/``fall``; changes are logged
with the probe result that caused them.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .specs import bracket

if TYPE_CHECKING:
    from .backend import Backend
    from .config import ClusterConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthChange:
    """A backend went up or down (``Backend.record_probe``); ``reason`` is the probe result that tipped it."""

    backend: Backend
    healthy: bool
    reason: str


def probe(host: str, port: int, path: str, timeout_s: float, tls: ssl.SSLContext | None = None) -> tuple[bool, str]:
    """Probe one backend (over TLS with ``tls``); return (passed, what happened) within ``timeout_s`` in total."""
    deadline = time.monotonic() + timeout_s
    try:
        with _connect(host, port, timeout_s, tls) as sock:
            request = f"GET {path} HTTP/1.1\r\nHost: {bracket(host)}:{port}\r\nUser-Agent: simplelb-health\r\nConnection: close\r\n\r\n"
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
    except ssl.SSLCertVerificationError as exc:
        return False, f"TLS certificate not accepted: {exc.verify_message or exc.reason}"
    except ssl.SSLError as exc:
        return False, f"TLS failed: {exc.reason or exc}"
    except OSError as exc:
        return False, f"connection failed: {exc.strerror or exc}"
    status_line = received.split(b"\n", 1)[0].rstrip(b"\r")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit() or len(parts[1]) != 3:
        return False, f"not an HTTP response: {status_line[:40]!r}"
    status = int(parts[1])
    return 200 <= status < 300, f"HTTP {status}"


def _connect(host: str, port: int, timeout_s: float, tls: ssl.SSLContext | None) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout_s)
    if tls is None:
        return sock
    try:
        return tls.wrap_socket(sock, server_hostname=host)  # the handshake, within the socket's timeout
    except BaseException:
        sock.close()
        raise


class HealthChecker:
    """Owns the probing thread; ``start()`` probes at once, ``stop()`` ends it.

    ``current()`` gives the settings in force and the backends to probe; it
    is read at every round, so a reload changes the path, interval and
    timeout at once. ``check_soon(backends)`` probes those now, off the
    regular schedule (a backend added at runtime waits for its first pass).
    """

    def __init__(
        self,
        current: Callable[[], tuple[ClusterConfig, Sequence[Backend]]],
        *,
        probe_fn: Callable[..., tuple[bool, str]] = probe,
    ):
        self._current = current
        self._probe = probe_fn
        self._stopping = threading.Event()  # set by stop()
        self._wake = threading.Event()  # set to re-read the schedule or probe the urgent ones
        self._lock = threading.Lock()  # guards _soon
        self._soon: list[Backend] = []
        self._thread: threading.Thread | None = None
        self.rounds = 0  # completed regular rounds

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="health-checker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            # A round in progress ends within one probe timeout.
            self._thread.join(self._current()[0].health_timeout_s + 1)

    def check_soon(self, backends: Sequence[Backend]) -> None:
        with self._lock:
            self._soon.extend(backends)
        self._wake.set()

    def nudge(self) -> None:
        """The settings may have changed: re-read the schedule."""
        self._wake.set()

    def _run(self) -> None:
        last_round = None
        while not self._stopping.is_set():
            with self._lock:
                soon, self._soon = self._soon, []
            if soon:
                self.run_round(soon)
                continue
            config, backends = self._current()
            now = time.monotonic()
            if last_round is None or now >= last_round + config.health_interval_s:
                last_round = now
                self.run_round(backends)
                self.rounds += 1
                continue
            self._wake.wait(last_round + config.health_interval_s - now)
            self._wake.clear()

    def run_round(self, backends: Sequence[Backend]) -> None:
        """Probe ``backends`` concurrently and record the results."""
        config = self._current()[0]
        backends = [b for b in dict.fromkeys(backends) if b.probed]
        results: queue.SimpleQueue[tuple[Backend, bool, str]] = queue.SimpleQueue()

        def probe_one(backend: Backend) -> None:
            tls = backend.pool.tls if backend.pool is not None else None
            try:
                ok, reason = self._probe(backend.spec.host, backend.spec.port, config.health_path,
                                         config.health_timeout_s, tls)
            except Exception as exc:  # a bug, not the backend's fault: say so, and count it as a failure
                log.exception("probing %s failed", backend.name)
                ok, reason = False, f"probe failed: {exc}"
            results.put((backend, ok, reason))

        for backend in backends:
            threading.Thread(target=probe_one, args=(backend,), name=f"health-probe {backend.name}",
                             daemon=True).start()
        deadline = time.monotonic() + config.health_timeout_s + 0.5
        waiting = set(backends)
        while waiting:
            try:
                backend, ok, reason = results.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            waiting.discard(backend)
            self._record(backend, ok, reason)
        for backend in (b for b in backends if b in waiting):  # (a later answer is dropped with its round)
            self._record(backend, False, f"no answer within {config.health_timeout_s:g}s")

    def _record(self, backend: Backend, ok: bool, reason: str) -> None:
        if not backend.probed:
            return  # put in maintenance or removed while the probe ran
        change = backend.record_probe(ok, reason)
        if change is not None:
            self._report(change)

    @staticmethod
    def _report(change: HealthChange) -> None:
        backend = change.backend
        label = backend.name if backend.name == backend.address else f"{backend.name} ({backend.address})"
        if change.healthy:
            log.warning("backend %s is UP (%s)", label, change.reason)
        else:
            log.warning("backend %s is DOWN (%s)", label, change.reason)
