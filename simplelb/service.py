"""One balancer process, run until a signal: the signal handling of ``python -m simplelb``.

* SIGINT, SIGTERM, SIGQUIT: ``/readyz`` turns 503 at once, then the
  balancer stops accepting and drains (``--grace-period``) and the process
  exits 0.
* SIGHUP: reload the configuration (file and flags); never fatal.
* SIGUSR1: reopen the access log (after logrotate moved it).
* SIGUSR2, SIGALRM: logged and ignored, rather than ending the process.

Handlers only set flags (and log a line); the main thread does the work.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from .config import Config
from .cpu import run_on_one_cpu
from .errors import ConfigError
from .specs import describe

log = logging.getLogger("simplelb")


class Signals:
    """What the process was asked to do, set from signal handlers, read by the main loop."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.reopen = threading.Event()
        self.wake = threading.Event()  # set with any of the above

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):  # SIGQUIT: nginx's graceful stop
            signal.signal(signum, self._stop)
        signal.signal(signal.SIGHUP, lambda *_: self._set(self.reload))
        signal.signal(signal.SIGUSR1, lambda *_: self._set(self.reopen))
        # Not ours to act on, but not fatal either (their default would end the process without a word).
        for signum in (signal.SIGUSR2, signal.SIGALRM):
            signal.signal(signum, _ignored)

    def _stop(self, signum, frame) -> None:
        if not self.stop.is_set():
            log.info("%s: stopping", signal.Signals(signum).name)
        self._set(self.stop)

    def _set(self, event: threading.Event) -> None:
        event.set()
        self.wake.set()

    def wait(self) -> None:
        # Event.wait with a timeout keeps the main thread responsive to signals.
        self.wake.wait(0.5)
        self.wake.clear()


def print_banner(url: str, cluster, redirect, admin, workers: int = 1) -> None:
    """The start-up lines, on stdout whatever the log level: scripts read the ports from them."""
    more = f", {workers} workers" if workers > 1 else ""
    print(f"simplelb: listening on {url}, {cluster.algorithm} over {describe(cluster.backends, cluster.source_urls)}"
          f"{more}", flush=True)
    if redirect is not None:
        print(f"simplelb: redirecting http on port {redirect.port} to {url}", flush=True)
    if admin is not None:
        print(f"simplelb: admin on {admin.url} (status page: {admin.url}/)", flush=True)


def _ignored(signum, frame) -> None:
    log.warning("%s ignored (SIGHUP reloads, SIGUSR1 reopens the access log, SIGTERM stops)",
                signal.Signals(signum).name)


def serve(config: Config, source=None, *, banner: bool = True, listen_socket=None, sticky_secret=None,
          on_ready: Callable[[], None] | None = None) -> int:
    """Run one balancer in this process until SIGINT or SIGTERM, then drain it."""
    from .server import LoadBalancer  # after logging is set up

    if config.listener.cpu_affinity == "one":
        run_on_one_cpu()  # before any thread starts: they all inherit it (cpu.py says why)
    signals = Signals()
    signals.install()
    balancer = LoadBalancer(config, source=source, listen_socket=listen_socket, sticky_secret=sticky_secret)
    balancer.start()
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
