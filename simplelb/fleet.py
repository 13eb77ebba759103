"""``--workers N``: N balancer processes on one port, started, fed and watched by one parent.

Python runs one thread at a time per process, so a second core needs a
second process. The ``Supervisor`` (the parent):

* checks the port is free (a plain bind, without ``SO_REUSEPORT``: another
  balancer already there is "address in use", exit 2), then holds it with a
  bound ``SO_REUSEPORT`` socket of its own that never listens, and binds one
  listening socket per worker (the kernel spreads new connections across
  them). ``SO_REUSEADDR`` lets a restart bind at once despite old
  connections in TIME_WAIT.
* starts each worker as a fresh interpreter (``python -m simplelb.worker``,
  no fork of a threaded process) with its socket and a control channel, and
  sends it the configuration. A worker that fails to start at the beginning
  ends the run (exit 2); one that dies later is logged and replaced (after a
  pause if it had just started); its counts stay in the sums from the moment
  its channel closes. The workers exit when the parent dies (see ``worker``).
* serves the one admin listener, through ``FleetControl``: a change or a
  reload is validated once here and sent to every worker; ``/status`` sums
  what every worker reports.
* on SIGINT/SIGTERM turns ``/readyz`` to 503, tells every worker to drain,
  waits for them (killing stragglers after the grace period) and exits 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time

from .channel import Channel, ChannelClosed, Requests
from .config import Config
from .discovery import shared_secret
from .errors import ConfigError, ListenError
from .fleetcontrol import FleetControl
from .redirect import RedirectServer
from .service import Signals, StartInterrupted, print_banner
from .sockio import take_ipv4_too
from .specs import bracket

log = logging.getLogger(__name__)

# A worker that dies within this many seconds of starting counts as failing to start.
QUICK_DEATH_S = 2.0
# How long the parent waits for a new worker to be listening.
READY_TIMEOUT_S = 15.0
# How often the parent refreshes what each worker reports.
STATS_EVERY_S = 1.0
# A serving worker that says nothing for this long (stopped, deadlocked) is killed and replaced:
# the kernel keeps handing it connections that nobody answers. It is asked for stats every second.
SILENT_LIMIT_S = 10.0
# A send to a worker that does not read for this long fails (the parent must never block on one).
SEND_TIMEOUT_S = 2.0


def _socket(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    take_ipv4_too(sock, host)
    return sock


class WorkerFailed(Exception):
    """A worker could not be started; the message says which."""


class WorkerHandle:
    """One worker process, its channel, and what it last told us."""

    def __init__(self, number: int, proc: subprocess.Popen, channel: Channel, on_gone):
        self.number = number
        self.proc = proc
        self.pid = proc.pid
        self.channel = channel
        self.requests = Requests(channel)
        self.started = time.monotonic()
        self.ready = threading.Event()
        self.gone = threading.Event()  # its channel closed: it exited (or is about to)
        self.generation = 0  # the fleet generation it last confirmed
        self.stats: dict | None = None  # its last report
        self.retired = False  # its counters moved to the fleet's totals (FleetControl.retire)
        self.last_heard = time.monotonic()  # when it last sent anything
        self._on_gone = on_gone
        threading.Thread(target=self._read, name=f"worker-{number}-channel", daemon=True).start()

    def _read(self) -> None:
        while (message := self.channel.receive()) is not None:
            self.last_heard = time.monotonic()
            if self.requests.answered(message):
                continue
            if message.get("ok") and "generation" in message:  # an apply confirmed after its wait ran out
                self.generation = max(self.generation, message["generation"])
            elif message.get("event") == "ready":
                self.ready.set()
            elif message.get("event") == "stats":
                self.stats = message["stats"]
        self.requests.fail_all()
        self.gone.set()
        self._on_gone(self)  # at once: its counts must not drop out of the sums until the next watch round

    def wait_ready(self, timeout_s: float, signals: Signals) -> bool:
        """True once it serves; False if it exited first, did not make it in time, or we are told to stop."""
        deadline = time.monotonic() + timeout_s
        while not self.ready.is_set() and not self.gone.is_set() and time.monotonic() < deadline:
            signals.wait(0.05)  # acts on a signal now: a Ctrl-C while workers start must not wait for them
            if signals.stop.is_set():
                return False
        return self.ready.is_set()

    def ask(self, message: dict, timeout_s: float = 1.0) -> dict:
        return self.requests.ask(message, timeout_s)

    def silent(self) -> bool:
        """Serving, alive, and not a word for ``SILENT_LIMIT_S`` (a starting worker is not asked yet)."""
        return (self.ready.is_set() and self.proc.poll() is None
                and time.monotonic() - self.last_heard > SILENT_LIMIT_S)


class Supervisor:
    def __init__(self, config: Config, source=None):
        self.config = config
        self.workers: dict[int, WorkerHandle] = {}  # number -> worker
        self._lock = threading.Lock()  # guards workers
        self._secret = b""  # one for every worker: read (from etcd, maybe) when run() starts
        self.control = FleetControl(self, source, config)
        self.signals = Signals()
        self.port = 0

    def live_workers(self) -> list[WorkerHandle]:
        with self._lock:
            return [w for w in self.workers.values() if w.proc.poll() is None]

    def all_workers(self) -> list[WorkerHandle]:
        """The current worker of each number, alive or not yet replaced."""
        with self._lock:
            return list(self.workers.values())

    def _reserve(self) -> socket.socket:
        host, port = self.config.listener.host, self.config.listener.port
        try:
            with _socket(host) as probe:  # no SO_REUSEPORT: fails if anyone listens there
                probe.bind((host, port))
                port = probe.getsockname()[1]
            reservation = _socket(host)
            reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            reservation.bind((host, port))
        except OSError as exc:
            raise ListenError(f"cannot listen on {bracket(host)}:{port}", exc) from None
        self.port = port
        return reservation

    def run(self) -> int:
        reservation = self._reserve()
        self.signals.install()
        admin = redirect = None
        interrupted = False
        listener = self.config.listener
        try:
            try:
                with self.signals.starting():
                    self._secret = shared_secret(self.config) or secrets.token_bytes(32)
                    self.control.start()  # discovery first: the workers start with what it found
            except StartInterrupted as exc:
                log.info("%s while starting: stopping", exc)
                interrupted = True  # (no worker yet: the stop below need not wait for discovery's lookups)
                return 0
            for number in range(1, listener.workers + 1):
                if not self._spawn(number).wait_ready(READY_TIMEOUT_S, self.signals):
                    if self.signals.stop.is_set():
                        return 0  # stopped while starting: the workers started so far drain below
                    raise WorkerFailed(f"worker {number} did not start (its log says why)")
            if listener.admin is not None:
                from .admin import AdminServer

                admin = AdminServer(listener.admin, self.control).start()
            if listener.redirect_http is not None:
                redirect = RedirectServer(listener.host, listener.redirect_http, self.port).start()
            self._banner(admin, redirect)
            self._watch()
        finally:
            self.control.shutting_down = True
            self.control.stop(wait=not interrupted)
            self._drain()
            for server in (admin, redirect):
                if server is not None:
                    server.stop()
            reservation.close()
        return 0

    def _banner(self, admin, redirect) -> None:
        # Every worker is listening by now: the banner is a promise that the port answers.
        listener = self.config.listener
        url = f"{'https' if listener.tls else 'http'}://{bracket(listener.host)}:{self.port}"
        print_banner(url, self.control.current()[1], redirect, admin, listener.workers)

    def _spawn(self, number: int) -> WorkerHandle:
        """Start worker ``number`` and send it the configuration (``wait_ready`` says when it serves)."""
        listener = self.config.listener
        sock = _socket(listener.host)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((listener.host, self.port))  # the worker listens once it can serve (worker.run says why)
        ours, theirs = socket.socketpair()
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "simplelb.worker", "--listen-fd", str(sock.fileno()),
                 "--control-fd", str(theirs.fileno()), "--number", str(number)],
                pass_fds=(sock.fileno(), theirs.fileno()), stdin=subprocess.DEVNULL, env=env,
            )
        finally:
            sock.close()
            theirs.close()
        worker = WorkerHandle(number, proc, Channel(ours, SEND_TIMEOUT_S), self.control.retire)
        # Held: no change may reach the worker before its first message, nor be sent between the two.
        with self.control.held() as (generation, cluster, tls):
            with self._lock:
                self.workers[number] = worker
            try:
                worker.channel.send({"listener": _listener_dict(self.config, tls), "cluster": cluster.to_dict(),
                                     "generation": generation, "secret": self._secret.hex()})
            except ChannelClosed:
                pass
            worker.generation = generation
        return worker

    def _watch(self) -> None:
        last_stats = 0.0
        while not self.signals.stop.is_set():
            self.signals.wait()
            if self.signals.reopen.is_set():
                self.signals.reopen.clear()
                for worker in self.live_workers():  # each worker writes the access log itself
                    if worker.ready.is_set():  # (before that, it has no handler for the signal yet)
                        _signal(worker.pid, signal.SIGUSR1)
            if self.signals.reload.is_set():
                self.signals.reload.clear()
                try:
                    self.control.reload()
                except ConfigError:
                    pass  # logged and counted; the running configuration stays
                except Exception:  # a bug: logged; the fleet goes on serving rather than drain and exit
                    log.exception("reload failed unexpectedly")
            for worker in list(self.workers.values()):
                if worker.silent():
                    log.error("worker %d (pid %d) has not answered for %gs; killing it", worker.number, worker.pid,
                              SILENT_LIMIT_S)
                    worker.proc.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):  # then replaced at a later round
                        worker.proc.wait(5)
                if worker.proc.poll() is not None and not self.signals.stop.is_set():
                    self._replace(worker)
            if time.monotonic() - last_stats >= STATS_EVERY_S:
                last_stats = time.monotonic()
                self.control.refresh()

    def _replace(self, worker: WorkerHandle) -> None:
        status = worker.proc.returncode
        how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"
        log.warning("worker %d (pid %d) died (%s); starting a new one", worker.number, worker.pid, how)
        self.control.retire(worker)
        if time.monotonic() - worker.started < QUICK_DEATH_S:
            self.signals.wait(1.0)  # a worker that dies at once must not make us spin
        worker.channel.close()
        if not self.signals.stop.is_set():
            self._spawn(worker.number)  # its readiness is not awaited: the watch goes on meanwhile

    def _drain(self) -> None:
        workers = self.live_workers()
        log.info("stopping %d workers", len(workers))
        for worker in workers:
            _signal(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.listener.grace_period_s + 5
        for worker in workers:
            try:
                worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d (pid %d) did not stop in time; killing it", worker.number, worker.pid)
                worker.proc.kill()
                worker.proc.wait()
        for worker in workers:
            worker.channel.close()


def _listener_dict(config: Config, tls: tuple | None) -> dict:
    from dataclasses import asdict

    # A worker serves the port it is given and has no admin listener of its own.
    # The redirect listener, like the admin one, is the parent's. ``tls``: the certificate files in
    # force, which a reload may have changed since the start.
    return {**asdict(config.listener), "workers": 1, "admin": None, "admin_token_file": None, "redirect_http": None,
            "tls": tls}


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
