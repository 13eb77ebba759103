"""Sockets: buffered reading with the unread bytes in view, reused copy buffers, vectored sends.

``SocketReader`` reads heads with a total deadline and hands out body pieces
as they arrive, either as fresh ``bytes`` or (``read_into``) as views of a
buffer borrowed from ``SCRATCH``, so a body of any size passes through the
same few buffers. ``sendall_parts`` sends several buffers in one system call
(``sendmsg``) without joining them.

Timeouts. A Python socket with a timeout calls ``poll()`` before every
``recv`` and ``send``: two system calls where one would do. A reader made
with ``kernel_timeouts=True`` keeps its socket blocking and hands the limits
to the kernel instead (``SO_RCVTIMEO``, ``SO_SNDTIMEO``): the one ``recv``
or ``send`` waits at most that long and fails with ``EAGAIN``, which the
reader turns into the ``TimeoutError`` a Python timeout would have raised.
TLS sockets keep Python's timeouts: the ``ssl`` module retries a blocking
socket's ``EAGAIN`` forever, so a kernel limit would never fire. Either way
the reader remembers what is set, so a limit costs a system call only when
it changes. A receive limit can be waited out in parts, with a check
between them (``every_s``, ``between_parts``): a backend's long silence then
notices a client that left, while a prompt answer costs nothing more. A TLS
socket can do so when it is a ``PartedSSLSocket`` (what ``wrap_socket``
makes for a context whose ``sslsocket_class`` it is), whose one timeout,
both directions', is then a part: the reader retries its receives, the
socket its sends, so a send may still wait the whole limit.
"""

from __future__ import annotations

import math
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

# Bodies are copied in pieces of at most this size: large enough that a big
# download costs few system calls, small enough that memory stays flat.
COPY_CHUNK = 256 * 1024

_LINE_END_BYTES = (b"\r", b"\n")


def _head_end(buf: bytearray, start: int) -> int:
    """Where the first empty line (``\\r?\\n\\r?\\n``) at or after ``start`` ends; 0 if there is none.

    Two ``find`` calls instead of a regular expression: the first LF followed
    by an LF, or by CRLF, ends the head.
    """
    bare = buf.find(b"\n\n", start)
    crlf = buf.find(b"\n\r\n", start, bare + 1 if bare >= 0 else len(buf))
    if crlf >= 0:
        return crlf + 3
    return bare + 2 if bare >= 0 else 0


class SocketReader:
    """Buffered reading from a socket, with the unread bytes visible.

    ``read``/``readline`` return at most what one ``recv`` brings, so data is
    passed on as soon as it arrives (a slow response streams, it does not wait
    for a full buffer). EOF is ``b""``.
    """

    def __init__(self, sock: socket.socket, *, kernel_timeouts: bool = False):
        self.sock = sock
        self._buf = bytearray()
        self._kernel = kernel_timeouts and not isinstance(sock, ssl.SSLSocket)
        self._parted = isinstance(sock, PartedSSLSocket)  # (a TLS socket that can wait its limits out in parts)
        if self._kernel and sock.gettimeout() is not None:
            sock.settimeout(None)  # blocking: the kernel's limits apply, and no poll() precedes a call
        # The limits in force (-1: not known, so the first setting is always made).
        self._recv_s = self._send_s = -1.0
        # A receive limit waited out in parts (``recv_timeout``): how many, and what runs between them.
        self._parts = 1
        self.between_parts: Callable[[], None] | None = None

    def recv_timeout(self, seconds: float, *, every_s: float | None = None) -> None:
        """Limit each receive to ``seconds`` from now on; a system call only when the limit changes.

        ``every_s`` (kernel limits, or a ``PartedSSLSocket``): wait the limit
        out in equal parts of at most that long, calling ``between_parts``
        after each part that brought nothing -- a way to notice something else
        (the client leaving) during a long wait, at no cost to a receive that
        is answered sooner.
        """
        parts = max(1, math.ceil(seconds / every_s - 1e-9)) if every_s and (self._kernel or self._parted) else 1
        if seconds != self._recv_s or parts != self._parts:
            if self._kernel:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(seconds / parts))
            else:
                self.sock.settimeout(seconds / parts)
                if parts > 1:
                    self.sock.send_parts = parts  # (its sends wait the parts out too)
                self._send_s = seconds  # a Python timeout serves both directions
            self._recv_s, self._parts = seconds, parts

    def send_timeout(self, seconds: float) -> None:
        """Limit each send to ``seconds`` from now on; a system call only when the limit changes."""
        if seconds != self._send_s:
            if self._kernel:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(seconds))
            else:
                self.sock.settimeout(seconds)
                self._recv_s, self._parts = seconds, 1
            self._send_s = seconds

    def has_head(self) -> bool:
        """Whether a whole head (not starting with an empty line) is already buffered: no wait to read it."""
        return self._buf[:1] not in _LINE_END_BYTES and _head_end(self._buf, 0) > 0

    @property
    def pending(self) -> int:
        """How many received bytes nobody has read yet."""
        return len(self._buf)

    def peek(self) -> bytes:
        """The received bytes nobody has read yet, left in place."""
        return bytes(self._buf)

    def buffered(self) -> bytearray:
        """The received bytes nobody has read yet, in place: to parse without copying, then ``discard``.

        Valid until the next read; hold no view of it across one (a resize would fail).
        """
        return self._buf

    def discard(self, count: int) -> None:
        """Drop the first ``count`` unread bytes (already parsed from ``buffered``)."""
        del self._buf[:count]

    def take(self, limit: int) -> bytes:
        """Remove and return up to ``limit`` of the received bytes nobody has read yet (no system call)."""
        data = bytes(self._buf[:limit])
        del self._buf[:limit]
        return data

    def take_pending(self) -> bytes:
        """Remove and return the received bytes nobody has read yet."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def fill(self, size: int = 65536) -> bool:
        """One ``recv`` into the buffer; False at EOF. Socket errors and timeouts pass through."""
        return self._fill(size)

    def _fill(self, size: int = COPY_CHUNK) -> bool:
        try:
            data = self.sock.recv(size)
        except _PART_RAN_OUT:  # SO_RCVTIMEO ran out (a blocking socket fails only so with EAGAIN), or a TLS timeout
            data = self._wait_out(self.sock.recv, size)
        if not data:
            return False
        self._buf += data
        return True

    def read(self, limit: int = COPY_CHUNK) -> bytes:
        if self._buf:
            data = bytes(self._buf[:limit])
            del self._buf[:limit]
            return data
        try:
            return self.sock.recv(limit)
        except _PART_RAN_OUT:
            return self._wait_out(self.sock.recv, limit)

    def read_into(self, scratch: bytearray, limit: int = COPY_CHUNK) -> memoryview:
        """Like ``read``, into ``scratch``: the view is valid until the next read into it."""
        view = memoryview(scratch)
        limit = min(limit, len(scratch))
        if self._buf:
            count = min(len(self._buf), limit)
            view[:count] = self._buf[:count]
            del self._buf[:count]
            return view[:count]
        try:
            return view[: self.sock.recv_into(scratch, limit)]
        except _PART_RAN_OUT:
            return view[: self._wait_out(self.sock.recv_into, scratch, limit)]

    def _wait_out(self, receive, *args):
        """The rest of a receive whose first part of the limit ran out: the remaining parts, then ``TimeoutError``."""
        for _ in range(self._parts - 1):
            if self.between_parts is not None:
                self.between_parts()
            try:
                return receive(*args)
            except _PART_RAN_OUT:
                continue
        raise TimeoutError("timed out")

    def read_exact(self, n: int) -> bytes:
        """Read exactly ``n`` bytes or raise ``EOFError``."""
        while len(self._buf) < n:
            if not self._fill():
                raise EOFError(f"connection closed with {n - len(self._buf)} of {n} bytes unread")
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def readline(self, limit: int) -> bytes:
        """Read one line including its LF; raise ``ValueError`` past ``limit`` bytes, ``EOFError`` at EOF."""
        start = 0
        while True:
            end = self._buf.find(b"\n", start, limit + 1)
            if end >= 0:
                line = bytes(self._buf[: end + 1])
                del self._buf[: end + 1]
                return line
            if len(self._buf) > limit:
                raise ValueError("line too long")
            start = len(self._buf)
            if not self._fill():
                raise EOFError("connection closed in the middle of a line")

    def read_head(self, max_bytes: int, deadline: float | None = None, max_first_line: int | None = None) -> bytes | None:
        """Read a message head up to and including its empty line.

        Returns ``None`` on a clean EOF before any byte (the peer simply closed
        an idle connection). Raises ``HeadTooLarge`` past ``max_bytes`` or
        when the start line runs past ``max_first_line``,
        ``EOFError`` on EOF mid-head, ``TimeoutError`` once ``deadline`` (a
        ``time.monotonic()`` value, a total budget rather than a per-read one)
        has passed.
        """
        searched = 0
        while True:
            if self._buf:  # (empty, e.g. before a backend's answer is read: nothing to search yet)
                # RFC 9112 §2.2: empty lines before a request line are ignored.
                while self._buf[:1] in _LINE_END_BYTES and (self._buf.startswith(b"\r\n") or self._buf.startswith(b"\n")):
                    del self._buf[: 2 if self._buf[0] == 13 else 1]
                found = _head_end(self._buf, max(0, searched - 3))
                end = found if found else len(self._buf)
                first_line_end = self._buf.find(b"\n", 0, end)
                if max_first_line is not None and (  # (the line without its CR LF, as with a bare LF)
                    first_line_end - (self._buf[first_line_end - 1] == 13) > max_first_line if first_line_end > 0
                    else first_line_end < 0 and end > max_first_line + 1
                ):
                    raise HeadTooLarge(end, start_line=True)
                if end > max_bytes:
                    raise HeadTooLarge(end, start_line=first_line_end < 0)
                if found:
                    head = bytes(self._buf[:end])
                    del self._buf[:end]
                    return head
                searched = len(self._buf)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("message head not received in time")
                self.recv_timeout(remaining)
            if not self._fill(65536):
                if not self._buf:
                    return None
                raise EOFError("connection closed in the middle of a message head")


# How a receive says its limit (or a part of it) ran out: EAGAIN under SO_RCVTIMEO, or a Python timeout.
_PART_RAN_OUT = (BlockingIOError, TimeoutError)


class PartedSSLSocket(ssl.SSLSocket):
    """A TLS socket whose timeout can be a part of the limit (``SocketReader.recv_timeout`` ``every_s``).

    A Python timeout serves both directions: set to a part, a send that runs
    out of it is tried again here, ``send_parts`` times in all, so it may
    still wait the whole limit, as before. (OpenSSL wants a write that ran
    out called again with the same bytes: it is.) A receive is tried again by
    the reader, with its check between parts. ``settimeout`` from anyone else
    (a tunnel) is one part again.
    """

    send_parts = 1

    def settimeout(self, value: float | None) -> None:
        self.send_parts = 1
        super().settimeout(value)

    def send(self, data, flags: int = 0) -> int:
        for _ in range(self.send_parts - 1):
            try:
                return super().send(data, flags)
            except TimeoutError:
                continue
        return super().send(data, flags)


def _timeval(seconds: float) -> bytes:
    """A ``struct timeval`` for SO_RCVTIMEO/SO_SNDTIMEO; never all zero, which would mean no limit."""
    whole = int(seconds)
    micros = int((seconds - whole) * 1_000_000)
    if whole == 0 and micros == 0:
        micros = 1
    return struct.pack("@ll", whole, micros)


class HeadTooLarge(Exception):
    """A head grew past its limit; ``start_line`` says the start line alone was too long."""

    def __init__(self, size: int, *, start_line: bool):
        super().__init__(f"message head larger than the limit ({size} bytes read)")
        self.start_line = start_line


class ScratchBuffers:
    """Copy buffers lent to one body at a time and reused, so memory stays flat.

    A fresh 256 KiB ``bytes`` per piece, from threads in several malloc
    arenas, fragments the heap: a soak of 1 MiB bodies grew the process
    without bound. A body borrows one buffer, reads into it (``recv_into``)
    and sends from a view of it; at most ``keep`` idle ones are kept.
    """

    def __init__(self, size: int = COPY_CHUNK, keep: int = 32):
        self.size = size
        self.keep = keep
        self._lock = threading.Lock()  # guards _free
        self._free: list[bytearray] = []

    @contextmanager
    def borrow(self):
        with self._lock:
            buffer = self._free.pop() if self._free else bytearray(self.size)
        try:
            yield buffer
        finally:
            with self._lock:
                if len(self._free) < self.keep:
                    self._free.append(buffer)


SCRATCH = ScratchBuffers()


def sendall_parts(sock: socket.socket, parts: list) -> None:
    """``sendall`` of several buffers without joining them (``sendmsg``; one by one where not available)."""
    if isinstance(sock, ssl.SSLSocket):  # (it has sendmsg, which raises NotImplementedError)
        for part in parts:
            sock.sendall(part)
        return
    views = [memoryview(part).cast("B") for part in parts]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


def take_ipv4_too(sock: socket.socket, host: str) -> None:
    """On ``::`` (every address), accept IPv4 connections too where the system allows (dual stack)."""
    if sock.family == socket.AF_INET6 and host == "::":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
