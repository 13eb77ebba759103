"""Signals (``service.Signals``): handlers that take no lock, and a wait that a signal ends at once.

Each case runs in a process of its own: signal handlers are the main thread's,
and a hang there is ended by ``run_cli``'s timeout (SIGKILL), not by a signal.
"""

import signal
import socket
import time

import pytest

from .conftest import run_cli

# raise_again_inside(signum, handler): raises ``signum`` once, and one more of it at each line its
# handler (the code object ``handler``), or anything the handler calls, runs -- as when a dying
# --workers parent sends SIGTERM once per thread it had, or two SIGHUPs come in a row. A handler
# that took a lock (Event.set, logging, a print) would wait on its own thread for ever. Returns
# how many lines saw one more.
RAISE_AGAIN_INSIDE = """
import signal, sys
def raise_again_inside(signum, handler):
    seen = set()
    def again(frame, event, arg):
        if event == "line" and (frame.f_code, frame.f_lineno) not in seen:
            seen.add((frame.f_code, frame.f_lineno))
            signal.raise_signal(signum)
        return again
    def calls(frame, event, arg):
        outer = frame
        while outer is not None and outer.f_code is not handler:
            outer = outer.f_back
        return again if outer is not None else None
    sys.settrace(calls)
    signal.raise_signal(signum)
    sys.settrace(None)
    return len(seen)
"""

AGAIN_INSIDE_THE_HANDLER = RAISE_AGAIN_INSIDE + """
from simplelb.service import Signals
signals = Signals()
signals.install({actions})
signum = signal.{name}
lines = raise_again_inside(signum, signal.getsignal(signum).__func__.__code__)
signals.wait(0)
print(lines, signals.stop.is_set(), signals.reload.is_set(), signals.reopen.is_set())
"""

WORKER = "{signal.SIGTERM: 'stop', signal.SIGUSR1: 'reopen'}"


@pytest.mark.parametrize(
    "name, actions, expected",
    [
        ("SIGTERM", "", ["True", "False", "False"]),
        ("SIGHUP", "", ["False", "True", "False"]),
        ("SIGUSR1", "", ["False", "False", "True"]),
        ("SIGTERM", WORKER, ["True", "False", "False"]),
        ("SIGUSR1", WORKER, ["False", "False", "True"]),
    ],
)
def test_a_signal_that_comes_again_inside_its_handler_is_acted_on(name, actions, expected):
    result = run_cli("-c", AGAIN_INSIDE_THE_HANDLER.format(actions=actions, name=name), timeout_s=20)
    assert result.returncode == 0, result.stderr
    lines, *events = result.stdout.split()
    assert int(lines) >= 2  # the handler ran, and was interrupted inside
    assert events == expected


def test_a_signal_ends_the_wait_at_once():
    code = """
import os, signal, threading, time
from simplelb.service import Signals
signals = Signals()
signals.install()
started = time.monotonic()
threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGHUP)).start()
while not signals.reload.is_set() and time.monotonic() - started < 30:
    signals.wait(30)
print(time.monotonic() - started)
"""
    result = run_cli("-c", code, timeout_s=60)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 10  # not the 30 s the wait would last without the signal


def test_traffic_stops_on_a_sigterm_that_comes_again_inside_its_handler():
    code = RAISE_AGAIN_INSIDE + """
import threading
from traffic.terminal import Console, stop_on_signals
stop = threading.Event()
with stop_on_signals(stop, Console(notes_to_stderr=False)):
    lines = raise_again_inside(signal.SIGTERM, signal.getsignal(signal.SIGTERM).__code__)
    stopped = stop.wait(10)
print(lines, stopped)
"""
    result = run_cli("-c", code, timeout_s=20)
    assert result.returncode == 0, result.stderr
    lines, stopped = result.stdout.split()
    assert int(lines) >= 2 and stopped == "True"
    assert "traffic: stopping" in result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_stop_while_start_up_waits_on_etcd_is_acted_on_at_once(process, workers):
    # etcd accepts and never answers: reading the shared secret and the first list would take
    # about ten seconds in all; SIGINT meanwhile ends the process at once, without a traceback.
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        proc = process("-m", "simplelb", "--port", "0", "--workers", workers, "--log-level", "info",
                       "--discovery", f"etcd://127.0.0.1:{silent.getsockname()[1]}/app")
        proc.wait_for_output("cannot read the shared sticky-cookie secret", 10)  # waiting on etcd now
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGINT)
        assert proc.proc.wait(10) == 0
        assert time.monotonic() - started < 5  # (it waited out every attempt, about 12 s)
        proc.wait_for_output("SIGINT while starting: stopping", 5)
        assert "Traceback" not in proc.stderr
    finally:
        silent.close()
