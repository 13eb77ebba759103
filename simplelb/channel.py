"""The control channel between the ``--workers`` parent and a worker: JSON lines over a socket pair.

Each message is one JSON object on one line. The parent sends requests with
an ``id`` (``apply`` a configuration generation, report ``stats``); the
worker answers each with the same ``id``, and on its own sends ``ready``
once it serves and a last ``stats`` before it exits. When the parent dies
the worker's end reads EOF, and the worker stops: no worker outlives its
parent.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from typing import Any


class ChannelClosed(Exception):
    """The other end is gone (or did not answer in time)."""


class Channel:
    """``send_timeout_s``: a send that cannot finish in that time (the other end stopped reading)
    fails, and so does every later one: part of a line may be on the wire."""

    def __init__(self, sock: socket.socket, send_timeout_s: float | None = None):
        self.sock = sock
        self._reader = sock.makefile("rb")
        self._sending = threading.Lock()  # one message on the wire at a time; guards _broken
        self._broken: str | None = None
        if send_timeout_s is not None:
            # In the kernel, for sends only: a Python-level timeout would also end the reader's wait.
            seconds = int(send_timeout_s)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                            struct.pack("ll", seconds, int((send_timeout_s - seconds) * 1e6)))

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        with self._sending:
            if self._broken is not None:
                raise ChannelClosed(self._broken)
            try:
                self.sock.sendall(data)
            except BlockingIOError:
                self._broken = "the other end stopped reading"
                raise ChannelClosed(self._broken) from None
            except OSError as exc:
                raise ChannelClosed(str(exc)) from None

    def receive(self) -> dict[str, Any] | None:
        """The next message, or None at EOF."""
        try:
            line = self._reader.readline()
        except (OSError, ValueError):
            return None
        if not line:
            return None
        return json.loads(line)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._reader.close()
        self.sock.close()


class Requests:
    """The parent's side: requests with ids, answered by the worker on the reader thread."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self._lock = threading.Lock()  # guards _next and _waiting
        self._next = 0
        self._waiting: dict[int, tuple[threading.Event, list]] = {}

    def ask(self, message: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        with self._lock:
            self._next += 1
            ident = self._next
            answered, slot = threading.Event(), []
            self._waiting[ident] = (answered, slot)
        try:
            self.channel.send({**message, "id": ident})
            if not answered.wait(timeout_s):
                raise ChannelClosed(f"no answer to {message.get('op')!r} within {timeout_s:g}s")
        finally:
            with self._lock:
                self._waiting.pop(ident, None)
        if not slot:
            raise ChannelClosed("the worker went away")
        return slot[0]

    def answered(self, message: dict[str, Any]) -> bool:
        """Deliver an answer to its waiter; False if the message answers nothing."""
        with self._lock:
            waiter = self._waiting.get(message.get("id"))
        if waiter is None:
            return False
        waiter[1].append(message)
        waiter[0].set()
        return True

    def fail_all(self) -> None:
        with self._lock:
            waiters = list(self._waiting.values())
        for answered, _ in waiters:
            answered.set()
