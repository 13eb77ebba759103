"""A discovery source: one running source of backends, on its own thread, and its status.

``Source`` is what ``dnsdiscovery.DnsSource`` and ``etcddiscovery.EtcdSource``
build on. It owns the source's named daemon thread (started again after an
unexpected error, so a bug neither passes silently nor ends discovery), the
``stopping`` and ``answered`` events, and the status ``/status`` shows: up or
stale since when, how many backends, the last error. A source sends COMPLETE
lists through ``found()`` to the ``publish`` callable it was given (the
``Discovery`` watcher's channel), and never touches the cluster; when an
attempt fails it calls ``failed()`` and sends nothing, so its last list stands.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from .specs import BackendSpec

# Logged as discovery, as before this class had a module of its own: log filters and %(name)s see no change.
log = logging.getLogger("simplelb.discovery")

# Seconds before a source that failed with an unexpected error (a bug) runs again.
RESTART_S = 5.0

Specs = tuple[BackendSpec, ...]


class Source:
    """One discovery source on a named daemon thread; sends complete lists to ``publish``.

    A subclass implements ``run()``, which loops until ``stopping`` is set,
    calling ``found(specs)`` with each complete list and ``failed(reason)``
    when an attempt fails. ``identity`` says what makes two sources the same
    (a reload keeps a source whose identity stays).
    """

    def __init__(self, url: str, identity: tuple, publish: Callable[[Source, Specs], None]):
        self.url = url
        self.identity = identity
        self._publish = publish
        self.stopping = threading.Event()
        self.answered = threading.Event()  # set at the first outcome, good or bad
        self._lock = threading.Lock()  # guards the status fields below
        self._up = False
        self._stale_since: float | None = None  # wall-clock time of the first failure in a row
        self._stale_from = 0.0  # the same moment on the monotonic clock: how long, whatever the wall clock does
        self._count = 0
        self._last_error: str | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Source:
        self._thread = threading.Thread(target=self._run, name=f"discovery {self.url}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.run()
                return
            except Exception:  # a bug must not pass silently, nor end discovery: the last list stands
                log.exception("discovery source %s failed; starting it again in %gs", self.url, RESTART_S)
                self.failed(f"an internal error (see the log); starting again in {RESTART_S:g}s")
                self.stopping.wait(RESTART_S)

    def run(self) -> None:
        raise NotImplementedError

    def interrupt(self) -> None:
        """Wake ``run()`` from a blocking wait (a subclass's watch); ``stopping`` is set already."""

    def stop(self) -> None:
        """Tell the thread to end; it does once its lookup or call in flight ends. ``join()`` waits for that."""
        self.stopping.set()
        self.interrupt()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def found(self, specs: Specs) -> None:
        with self._lock:
            if not self._up:
                log.info("discovery %s: %d backends%s", self.url, len(specs),
                         " (up again)" if self._stale_since is not None else "")
            self._up, self._stale_since, self._last_error, self._count = True, None, None, len(specs)
        self._publish(self, tuple(specs))
        self.answered.set()

    def failed(self, reason: str) -> None:
        with self._lock:
            first = self._stale_since is None
            self._up, self._last_error = False, reason
            if first:
                self._stale_since, self._stale_from = time.time(), time.monotonic()
        (log.warning if first else log.debug)("discovery %s: %s; keeping the last %d backends",
                                              self.url, reason, self._count)
        self.answered.set()

    def status(self) -> dict:
        with self._lock:
            stale = self._stale_since
            return {
                "source": self.url,
                "up": self._up,
                "stale_since": datetime.fromtimestamp(stale, UTC).isoformat(timespec="seconds") if stale else None,
                "stale_for_s": int(time.monotonic() - self._stale_from) if stale else None,
                "backends": self._count,
                "last_error": self._last_error,
            }
