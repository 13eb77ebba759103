"""The client connections of a server: how many, and what each is doing.

Each connection is *idle* (waiting for a request to start, or in its TLS
handshake), *reading* (its request head is arriving) or *busy* (its request
is being forwarded). Two things need this:

* The ``--max-clients`` cap. A new connection at the cap closes the
  connection that has been idle longest (then the one reading its head the
  longest) instead of being refused, so a flood of idle or trickling sockets
  cannot lock out a client with a real request. Only when every connection is
  busy is the newcomer refused with a 503.
* Shutdown. Idle connections are closed at once; busy ones get the grace
  period (``wait_quiet``), then are cut, and their threads get a moment to
  end and log them (``wait_closed``).
"""

from __future__ import annotations

import socket
import threading
import time

IDLE, READING, BUSY = "idle", "reading", "busy"


def shutdown(sock: socket.socket) -> None:
    """Close both directions, which wakes a thread blocked on the socket; errors mean it is gone already."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class ConnectionTracker:
    def __init__(self, max_clients: int = 1024) -> None:
        self.max_clients = max_clients
        self._lock = threading.Lock()  # guards _state and closing
        self._quiet = threading.Condition(self._lock)  # signalled when a connection stops being busy, or ends
        self._state: dict[socket.socket, tuple[str, float]] = {}  # socket -> (state, since)
        self.closing = False

    def open(self, sock: socket.socket) -> bool:
        """Register a new connection; False means refuse it (closing, or every connection busy)."""
        victim = None
        with self._lock:
            if self.closing:
                return False
            if len(self._state) >= self.max_clients:
                victim = self._oldest(IDLE) or self._oldest(READING)
                if victim is None:
                    return False
                del self._state[victim]
            self._state[sock] = (IDLE, time.monotonic())
        if victim is not None:
            shutdown(victim)
        return True

    def _oldest(self, state: str) -> socket.socket | None:
        # Caller holds the lock.
        candidates = [(since, sock) for sock, (s, since) in self._state.items() if s == state]
        return min(candidates, key=lambda item: item[0])[1] if candidates else None

    def idle(self, sock: socket.socket) -> bool:
        """Mark ``sock`` as waiting for a request; False means it should close (shutdown, or evicted)."""
        with self._lock:
            if sock not in self._state:
                return False
            if self.closing:
                del self._state[sock]
                self._quiet.notify_all()
                return False
            self._state[sock] = (IDLE, time.monotonic())
            # (No notify: only wait_quiet waits, and only once closing is set, handled above.)
            return True

    def reading(self, sock: socket.socket) -> None:
        with self._lock:
            if sock in self._state:
                self._state[sock] = (READING, time.monotonic())

    def busy(self, sock: socket.socket) -> None:
        with self._lock:
            if sock in self._state:
                self._state[sock] = (BUSY, time.monotonic())

    def replace(self, old: socket.socket, new: socket.socket) -> None:
        """The connection is now ``new`` (a TLS socket over ``old``): closing it must reach the new one."""
        with self._lock:
            if old in self._state:
                self._state[new] = self._state.pop(old)

    def remove(self, sock: socket.socket) -> None:
        with self._lock:
            self._state.pop(sock, None)
            self._quiet.notify_all()

    def close_idle(self) -> None:
        """Start closing: no new connections, and the idle ones go now."""
        with self._lock:
            self.closing = True
            idle = [sock for sock, (state, _) in self._state.items() if state == IDLE]
        for sock in idle:
            shutdown(sock)

    def wait_quiet(self, timeout_s: float) -> bool:
        """Wait until no request is being read or forwarded; False if the timeout came first."""
        with self._lock:
            return self._quiet.wait_for(
                lambda: all(state == IDLE for state, _ in self._state.values()), timeout_s
            )

    def wait_closed(self, timeout_s: float) -> bool:
        """Wait until every connection has ended (its thread done with it); False if the timeout came first."""
        with self._lock:
            return self._quiet.wait_for(lambda: not self._state, timeout_s)

    def close_all(self) -> None:
        with self._lock:
            socks = list(self._state)
        for sock in socks:
            shutdown(sock)

    def counts(self) -> dict[str, int]:
        """Open connections by state."""
        counts = {IDLE: 0, READING: 0, BUSY: 0}
        with self._lock:
            for state, _ in self._state.values():
                counts[state] += 1
        return counts

    @property
    def in_flight(self) -> int:
        with self._lock:
            return sum(state == BUSY for state, _ in self._state.values())
