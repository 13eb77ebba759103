"""One ``--workers`` process: ``python -m simplelb.worker``, started and fed by the parent.

The parent passes two file descriptors: the listening socket it bound for
this worker (``SO_REUSEPORT``: the kernel spreads connections across the
workers) and this worker's end of the control channel. The first message on
the channel is the configuration (with the fleet's generation and the shared
sticky-cookie secret); later ones apply new generations or ask for stats.

The worker stops -- draining like a single balancer -- on SIGTERM (the
parent's shutdown), or when the channel reaches EOF: the parent died, and a
worker must not serve on without it (``PR_SET_PDEATHSIG`` says the same to
the kernel, where there is one). SIGINT is the parent's to handle (Ctrl-C
reaches the whole process group); SIGHUP is the parent's too (it reloads
and tells every worker).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import sys
import threading

from .channel import Channel, ChannelClosed
from .config import Config, cluster_from_dict, listener_from_dict
from .cpu import run_on_one_cpu
from .errors import ConfigError
from .service import Signals
from .tls import load_certificates

log = logging.getLogger("simplelb.worker")

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to send us SIGTERM when the parent dies (the channel's EOF says it too)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class WorkerLink:
    """This worker's side of the control channel, served on a named daemon thread."""

    def __init__(self, channel: Channel, balancer, generation: int, signals: Signals):
        self.channel = channel
        self.balancer = balancer
        self.generation = generation  # the fleet generation this worker runs
        self._signals = signals

    def start(self) -> None:
        threading.Thread(target=self._serve, name="worker-control", daemon=True).start()

    def stats(self) -> dict:
        return {"pid": os.getpid(), "generation": self.generation, **self.balancer.snapshot()}

    def _serve(self) -> None:
        while (message := self.channel.receive()) is not None:
            try:
                self.channel.send({"id": message.get("id"), **self._answer(message)})
            except ChannelClosed:
                break
        if not self._signals.stop.is_set():
            log.warning("the parent is gone; stopping")
            self._signals.request_stop()

    def _answer(self, message: dict) -> dict:
        op = message.get("op")
        if op == "apply":
            try:
                self.balancer.cluster.update(cluster_from_dict(message["cluster"]))
                if message.get("tls") and self.balancer.tls is not None:
                    self.balancer.tls.install(load_certificates(tuple(map(tuple, message["tls"]))))
            except ConfigError as exc:  # the parent validated it; say so rather than die
                return {"ok": False, "error": str(exc)}
            except Exception as exc:  # a bug: say so, and let the parent replace this worker
                log.exception("applying generation %s failed", message.get("generation"))
                return {"ok": False, "error": f"{exc.__class__.__name__}: {exc}"}
            self.generation = message["generation"]
            return {"ok": True, "generation": self.generation}
        if op == "stats":
            return {"ok": True, "stats": self.stats()}
        return {"ok": False, "error": f"unknown op {op!r}"}


def run(listen_fd: int, control_fd: int, number: int) -> int:
    from .server import LoadBalancer

    channel = Channel(socket.socket(fileno=control_fd))
    first = channel.receive()
    if first is None:
        return 1
    try:
        # Files named by the configuration (a CA, certificates) are read again here: one broken since
        # the parent checked it stops this worker with one line, and the parent says so and retries.
        config = Config(listener_from_dict(first["listener"]), cluster_from_dict(first["cluster"]))
    except ConfigError as exc:
        print(f"simplelb: worker {number} cannot start: {exc}", file=sys.stderr, flush=True)
        return 1
    if config.listener.cpu_affinity == "one":
        run_on_one_cpu(number)  # before any thread starts: workers spread over the cores (cpu.py)
    logging.basicConfig(
        level=getattr(logging, config.listener.log_level.upper()),
        format=f"%(asctime)s %(levelname)-7s worker {number} %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    signals = Signals()
    for signum in (signal.SIGINT, signal.SIGQUIT):  # a terminal sends them to the group: the parent's to act on
        signal.signal(signum, signal.SIG_IGN)
    # SIGUSR1 is passed on by the parent (each worker writes the access log itself).
    signals.install({signal.SIGTERM: "stop", signal.SIGUSR1: "reopen"},
                    ignored=(signal.SIGHUP, signal.SIGUSR2, signal.SIGALRM),
                    ignored_hint="signal the parent, which tells every worker")
    listen_socket = socket.socket(fileno=listen_fd)
    try:
        balancer = LoadBalancer(config, listen_socket=listen_socket, sticky_secret=bytes.fromhex(first["secret"]),
                                admin=False, discover=False)
    except ConfigError as exc:  # (its certificate files, read here again)
        log.error("worker %d cannot start: %s", number, exc)
        return 1
    link = WorkerLink(channel, balancer, first["generation"], signals)
    # Listening joins the port's SO_REUSEPORT group: the kernel then hands this worker its share of
    # new connections. Only now, so a worker that cannot start never takes (and resets) any.
    listen_socket.listen(1024)
    balancer.start()
    channel.send({"event": "ready", "pid": os.getpid()})
    link.start()
    while not signals.stop.is_set():  # (set by SIGTERM, or by the link at the channel's EOF)
        signals.wait()
        if signals.reopen.is_set():
            signals.reopen.clear()
            balancer.reopen_logs()
    balancer.stop()
    try:
        channel.send({"event": "stats", "stats": link.stats()})  # the last word: counters up to now
    except ChannelClosed:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    _die_with_parent()
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until the access log is open: a reopen must not kill us
    parser = argparse.ArgumentParser(prog="simplelb.worker", description="a worker of simplelb --workers (internal)")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--number", type=int, required=True)
    args = parser.parse_args(argv)
    return run(args.listen_fd, args.control_fd, args.number)


if __name__ == "__main__":
    sys.exit(main())
