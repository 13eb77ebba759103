"""Terminal manners: a progress line, output that a closed pipe cannot break, and Ctrl-C.

* ``Progress`` redraws one line on stderr when it is a terminal, and is
  silent otherwise.
* ``Console`` writes the report; when the reader has gone (``traffic ... |
  head``) it stops writing, quietly: no ``BrokenPipeError`` traceback.
* ``stop_on_signals`` turns the first Ctrl-C (SIGINT) or SIGTERM into a set
  ``stop`` event, which every loop, scenario, comparison and child process
  watches: the run stops within a second and the report of what was done is
  printed. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .outcome import Result, is_failed


class Progress:
    """A progress line on a terminal (stderr), redrawn in place; silent when not a TTY."""

    def __init__(self, total: int | None, stream=None):
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.done = 0
        self.failed = 0
        self._lock = threading.Lock()  # guards done and failed
        self._stopping = threading.Event()

    def update(self, result: Result) -> None:
        with self._lock:
            self.done += 1
            self.failed += is_failed(result)
            done, failed = self.done, self.failed
        if self.enabled and (done % 25 == 0 or done == self.total):
            self._draw(done, failed)

    def watch(self, counters: Callable[[], tuple[int, int]]) -> None:
        """Redraw from ``counters()`` (done, failed) a few times a second: for ``--processes``."""
        def loop() -> None:
            while not self._stopping.wait(0.2):
                self._draw(*counters())

        if self.enabled:
            threading.Thread(target=loop, name="traffic-progress", daemon=True).start()

    def _draw(self, done: int, failed: int) -> None:
        if self.total:
            filled = min(30, round(30 * done / self.total))
            line = f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total}  failed {failed}"
        else:
            line = f"\rsent {done}  failed {failed}"
        try:
            self.stream.write(line)
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False

    def finish(self) -> None:
        self._stopping.set()
        if self.enabled:
            self._draw_blank()

    def _draw_blank(self) -> None:
        try:
            self.stream.write("\r" + " " * 70 + "\r")
            self.stream.flush()
        except (OSError, ValueError):
            pass


class Console:
    """Where the report goes. With ``--json``, notes go to stderr so stdout stays one JSON document."""

    def __init__(self, notes_to_stderr: bool):
        self.notes_to_stderr = notes_to_stderr
        self.closed = False

    def out(self, text: str) -> None:
        """The report itself, on stdout."""
        if self.closed:
            return
        try:
            print(text, flush=True)
        except BrokenPipeError:
            # The reader went away (| head). Point stdout at /dev/null so that
            # the interpreter's own flush at exit does not fail again.
            self.closed = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)

    def say(self, text: str) -> None:
        """Notes along the way: stdout, or stderr with --json."""
        if self.notes_to_stderr:
            self.err(text)
        else:
            self.out(text)

    @staticmethod
    def err(text: str) -> None:
        try:
            print(text, file=sys.stderr, flush=True)
        except (BrokenPipeError, ValueError):
            pass


@contextmanager
def stop_on_signals(stop: threading.Event, console: Console) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM set ``stop``; a second SIGINT raises ``KeyboardInterrupt`` at once.

    The handler takes no lock: it runs in the main thread between two
    bytecodes, perhaps while that thread holds the very lock ``stop.set()``
    or a print would take (inside ``Event.wait``), and would wait for ever.
    It writes a byte to a pipe instead; a watcher thread sets ``stop`` and
    says so.
    """
    read_fd, write_fd = os.pipe()
    received: list[int] = []

    def handler(signum: int, frame) -> None:
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)
        try:
            os.write(write_fd, b"s")
        except OSError:
            pass

    def watch() -> None:
        # Signals sent to the process go to a thread that does not block them. This one blocks them,
        # so they always reach the main thread, and wait there while it blocks them too: else one
        # came here while --processes briefly ignores them to start a child, and was lost.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        if os.read(read_fd, 1):  # (b"": the block ended without a signal)
            stop.set()
            console.err("\ntraffic: stopping; reporting what was done (Ctrl-C again to quit at once)")

    watcher = threading.Thread(target=watch, name="traffic-signals", daemon=True)
    watcher.start()
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        os.close(write_fd)  # ends the watcher's read, if no signal did
        watcher.join(5)
        os.close(read_fd)
