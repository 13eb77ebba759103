"""One balancer process, run until a signal: the signal handling of ``python -m simplelb``.

* SIGINT, SIGTERM, SIGQUIT: ``/readyz`` turns 503 at once, then the
  balancer stops accepting and drains (``--grace-period``) and the process
  exits 0.
* SIGHUP: reload the configuration (file and flags); never fatal.
* SIGUSR1: reopen the access log (after logrotate moved it).
* SIGUSR2, SIGALRM: logged and ignored, rather than ending the process.

Handlers only record the signal (``Signals`` says why); the main thread does the work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
from collections.abc import Callable

from .config import Config
from .cpu import run_on_one_cpu
from .errors import ConfigError
from .specs import describe

log = logging.getLogger("simplelb")


class StartInterrupted(BaseException):
    """A stop signal came while the process was starting: nothing serves yet, so nothing is drained.

    A ``BaseException``, as ``KeyboardInterrupt`` is: raised wherever the main thread is, it must
    not be caught by the ``except Exception`` that keeps a start-up step going.
    """


class Signals:
    """What the process was asked to do by signals: recorded by the handlers, acted on in ``wait()``.

    A handler runs in the main thread between two of its bytecodes -- perhaps
    while that thread holds a lock: inside ``Event.wait``, or inside the
    handler itself when a second signal comes (two SIGHUPs in a row; a dying
    ``--workers`` parent's SIGTERM to its workers, which comes once per thread
    it had). A handler that takes a lock (``Event.set``, logging, a file's)
    can then wait for ever on its own thread. So the handlers here take none:
    they append the signal to a list and write a byte to a pipe that
    ``wait()`` selects on, and ``wait()`` -- ordinary code in the main
    thread -- sets the events and logs.
    """

    # Stop: /readyz turns 503, then drain. SIGQUIT is nginx's graceful stop.
    PROCESS = {signal.SIGINT: "stop", signal.SIGTERM: "stop", signal.SIGQUIT: "stop",
               signal.SIGHUP: "reload", signal.SIGUSR1: "reopen"}
    # Not ours to act on, but not fatal either (their default would end the process without a word).
    IGNORED = (signal.SIGUSR2, signal.SIGALRM)

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.reopen = threading.Event()
        self._actions: dict[int, str] = {}
        self._ignored_hint = ""
        self._received: list[int] = []  # appended by the handlers, taken by wait()
        self._starting = False  # within starting(): a stop signal raises StartInterrupted
        self._wake_r, self._wake_w = os.pipe()  # (open for the life of the process, as the handlers are)
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def install(self, actions: dict[int, str] | None = None, ignored=IGNORED,
                ignored_hint: str = "SIGHUP reloads, SIGUSR1 reopens the access log, SIGTERM stops") -> None:
        """Handle ``actions`` (signal -> "stop", "reload" or "reopen"), and log and ignore ``ignored``."""
        self._actions = dict(self.PROCESS if actions is None else actions)
        self._ignored_hint = ignored_hint
        for signum in (*self._actions, *ignored):
            signal.signal(signum, self._record)

    def _record(self, signum, frame) -> None:
        self._received.append(signum)
        self._wake()
        if self._starting and self._actions.get(signum) == "stop":
            self._starting = False
            raise StartInterrupted(signal.Signals(signum).name)

    @contextlib.contextmanager
    def starting(self):
        """Within it a stop signal interrupts at once, wherever the main thread waits.

        Start-up waits on etcd and DNS (the shared secret, the first lists) for up to
        seconds each; a stop asked for meanwhile must not wait for them all to end.
        """
        self._starting = True
        try:
            yield
        finally:
            self._starting = False

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"s")
        except OSError:  # full: wait() returns at once anyway
            pass

    def request_stop(self) -> None:
        """Stop, asked by another thread (not a handler): ``wait()`` returns at once."""
        self.stop.set()
        self._wake()

    def wait(self, timeout_s: float = 0.5) -> None:
        """Wait up to ``timeout_s``, less if a signal comes, then act on the signals received."""
        if not self._received:
            select.select([self._wake_r], [], [], timeout_s)
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        while self._received:
            signum = self._received.pop(0)
            action = self._actions.get(signum)
            if action == "stop":
                if not self.stop.is_set():
                    log.info("%s: stopping", signal.Signals(signum).name)
                self.stop.set()
            elif action is not None:
                getattr(self, action).set()
            else:
                log.warning("%s ignored (%s)", signal.Signals(signum).name, self._ignored_hint)


def print_banner(url: str, cluster, redirect, admin, workers: int = 1) -> None:
    """The start-up lines, on stdout whatever the log level: scripts read the ports from them."""
    more = f", {workers} workers" if workers > 1 else ""
    print(f"simplelb: listening on {url}, {cluster.algorithm} over {describe(cluster.backends, cluster.source_urls)}"
          f"{more}", flush=True)
    if redirect is not None:
        print(f"simplelb: redirecting http on port {redirect.port} to {url}", flush=True)
    if admin is not None:
        print(f"simplelb: admin on {admin.url} (status page: {admin.url}/)", flush=True)


def serve(config: Config, source=None, *, banner: bool = True, listen_socket=None, sticky_secret=None,
          on_ready: Callable[[], None] | None = None) -> int:
    """Run one balancer in this process until SIGINT or SIGTERM, then drain it."""
    from .server import LoadBalancer  # after logging is set up

    if config.listener.cpu_affinity == "one":
        run_on_one_cpu()  # before any thread starts: they all inherit it (cpu.py says why)
    signals = Signals()
    signals.install()
    try:
        with signals.starting():
            balancer = LoadBalancer(config, source=source, listen_socket=listen_socket, sticky_secret=sticky_secret)
            balancer.start()
    except StartInterrupted as exc:
        # Nothing serves yet, and every thread started is a daemon: exit now, without waiting for a
        # discovery lookup in flight to end, as a stop would.
        log.info("%s while starting: stopping", exc)
        return 0
    if on_ready is not None:
        on_ready()
    if banner:
        print_banner(balancer.url, balancer.cluster.view.config, balancer.redirect, balancer.admin)
    while not signals.stop.is_set():
        signals.wait()
        if signals.reopen.is_set():
            signals.reopen.clear()
            balancer.reopen_logs()
        if signals.reload.is_set():
            signals.reload.clear()
            try:
                balancer.control.reload()
            except ConfigError:
                pass  # logged and counted by reload(); the old configuration keeps serving
            except Exception:  # a bug: logged; the balancer goes on serving rather than die mid-signal
                log.exception("reload failed unexpectedly")
    balancer.control.shutting_down = True
    log.info("shutting down: draining in-flight requests (up to %gs)", config.listener.grace_period_s)
    balancer.stop()
    log.info("stopped")
    return 0
