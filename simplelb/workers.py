"""``--workers N``: N balancer processes sharing one listening port.

Python runs one thread at a time per process, so a second core needs a
second process. The ``Supervisor`` (the parent) reserves the port, forks N
workers that each bind it with ``SO_REUSEPORT`` (the kernel spreads new
connections across them) and run a complete balancer -- their own health
checks, pools and counters -- and then only watches:

* a worker that dies is logged and replaced (after a pause if workers die
  right after starting, so a broken setup does not spin);
* SIGINT or SIGTERM to the parent is passed to every worker, which drains
  as a single balancer does; the parent waits for them, kills stragglers
  after the grace period, and exits 0.

The parent starts no threads, so forking it is safe.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import select
import signal
import socket
import sys
import time

from .config import Config

log = logging.getLogger(__name__)

# A worker that dies within this many seconds of starting counts as failing to start.
QUICK_DEATH_S = 2.0
# How long the parent waits for a new worker to be listening.
READY_TIMEOUT_S = 10.0


class Supervisor:
    def __init__(self, config: Config):
        self.config = config
        self.workers: dict[int, int] = {}  # pid -> worker number
        self._stopping = False

    def _reserve_port(self) -> tuple[socket.socket, int]:
        """Bind (without listening) to learn the port when 0 was asked for, and to fail early if taken."""
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.config.host, self.config.port))
        return sock, sock.getsockname()[1]

    def run(self) -> int:
        reservation, port = self._reserve_port()
        secret = self.config.sticky_secret or secrets.token_bytes(32)
        worker_config = dataclasses.replace(
            self.config, port=port, reuse_port=True, sticky_secret=secret, workers=1
        )
        # A bound socket that does not listen takes no connections, but an
        # unrelated process can no longer grab the port between our workers.
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGTERM, self._stop)
        for number in range(self.config.workers):
            self._spawn(worker_config, number)
        # Every worker is listening by now: the banner is a promise that the port answers.
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        from .cli import describe_backends

        print(
            f"simplelb: listening on http://{host}:{port}, {self.config.algorithm} over "
            f"{describe_backends(self.config)}, {self.config.workers} workers",
            flush=True,
        )
        started = {pid: time.monotonic() for pid in self.workers}
        while not self._stopping:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid and pid in self.workers:
                number = self.workers.pop(pid)
                lived = time.monotonic() - started.pop(pid, 0.0)
                if self._stopping:
                    break
                log.warning("worker %d (pid %d) died (%s); starting a new one", number, pid, _describe(status))
                if lived < QUICK_DEATH_S:
                    time.sleep(1.0)
                new_pid = self._spawn(worker_config, number)
                started[new_pid] = time.monotonic()
                continue
            time.sleep(0.2)
        self._drain()
        reservation.close()
        return 0

    def _spawn(self, config: Config, number: int) -> int:
        """Fork a worker and wait (up to READY_TIMEOUT_S) until it is listening."""
        ready_read, ready_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            os.close(ready_read)
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                from .cli import serve

                code = serve(config, banner=False, on_ready=lambda: os.write(ready_write, b"1"))
            except BaseException:
                log.exception("worker %d failed", number)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(ready_write)
        try:
            readable, _, _ = select.select([ready_read], [], [], READY_TIMEOUT_S)
            if not readable or not os.read(ready_read, 1):
                log.warning("worker %d (pid %d) did not report ready", number, pid)
        finally:
            os.close(ready_read)
        self.workers[pid] = number
        return pid

    def _stop(self, signum, frame) -> None:
        self._stopping = True

    def _drain(self) -> None:
        log.info("stopping %d workers", len(self.workers))
        for pid in self.workers:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.grace_period_s + 5
        while self.workers and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self.workers.pop(pid, None)
            else:
                time.sleep(0.05)
        for pid in self.workers:
            log.warning("worker pid %d did not stop in time; killing it", pid)
            _signal(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
