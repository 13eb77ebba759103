"""The access log: one record per request, written without ever holding up a request.

``RequestRecord`` is what the handler learns about one request as it goes
(client, request line, status, bytes, durations, the backend and its
answer, attempts, request id). ``FORMATS`` turns it into a line:

* ``text`` -- the default without ``--access-log``: a short line through
  ``logging`` (logger ``simplelb.access``, level info), as before.
* ``combined`` -- Apache/nginx "combined" (so log analysers read it),
  followed by the backend, the request time and the backend's time in
  seconds, as nginx's ``$request_time $upstream_response_time``.
* ``json`` -- one object per line (field list in the README).

Both formats log a field's original bytes, never anything a reader could
take for a line break, a terminal escape or a field's end: header values
arrive as latin-1 text (one character per byte), which ``combined`` writes
with ``"`` and ``\\`` backslash-escaped and every byte below 0x20 or from
0x7F up as ``\\xHH`` (as nginx does), and ``json`` with JSON's escapes
(``ensure_ascii``: byte 0xFF is ``\\u00ff``, so a reader gets the bytes back
by encoding the string as latin-1). A line is ASCII either way.

``AccessLog`` owns the file (``--access-log PATH``, or ``-`` for stdout).
A request only formats its line and appends it to a bounded in-memory queue;
a named daemon thread writes the queue out in batches. When the queue is
full (a slow pipe, a stuck disk) or a write fails (a full disk), lines are
dropped and counted (``dropped``) -- the balancer never stalls on its log.
Each write is a batch of whole lines of at most ``PIPE_BUF`` bytes, and the
file is opened with ``O_APPEND``, so lines from several workers reach one
file whole, never interleaved mid-line; a pipe takes such a write whole or
not at all. ``encode_line`` keeps every line within that size as written,
escapes included: targets, user agents and referers are cut to
``MAX_FIELD`` characters, then, if the line is still too long, its longest
text fields to a common length in bytes (each cut marked ``...``).
``reopen()`` (SIGUSR1, logrotate's convention) makes the writer open the
path again before its next batch: no line is lost, the ones queued
meanwhile go to the new file.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import errno
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate

log = logging.getLogger(__name__)
text_log = logging.getLogger("simplelb.access")

PIPE_BUF = 4096  # POSIX: writes up to this size to a pipe are atomic; no line is longer, its newline included
MAX_FIELD = 1000  # characters kept of a target, user agent or referer, before escaping
CUT_MARK = "..."  # ends a field that was cut
MAX_QUEUED = 10_000  # lines waiting to be written; beyond, lines are dropped and counted


@dataclass
class RequestRecord:
    started: float  # time.monotonic() when the head started to arrive
    wall: float  # time.time() at the same moment
    client: str
    method: str = "-"
    target: str = "-"
    protocol: str = "-"
    status: int = 0  # 0: nothing was sent
    bytes_sent: int = 0  # heads (interim ones included) and body: all that went to the client
    body_bytes_sent: int = 0  # the body alone, as sent (chunk framing included), as nginx's $body_bytes_sent
    bytes_received: int = 0
    duration_s: float = 0.0
    backend: str | None = None
    backend_status: int | None = None
    backend_duration_s: float | None = None
    attempts: int = 0
    user_agent: str | None = None
    referer: str | None = None
    request_id: str | None = None
    aborted: bool = False  # the response started but was cut off


def format_json(r: RequestRecord) -> str:
    stamp = datetime.fromtimestamp(r.wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({
        "time": stamp, "client": r.client, "method": r.method, "target": r.target, "protocol": r.protocol,
        "status": r.status, "bytes_sent": r.bytes_sent, "body_bytes_sent": r.body_bytes_sent,
        "bytes_received": r.bytes_received, "duration_ms": round(r.duration_s * 1000, 3), "backend": r.backend,
        "backend_status": r.backend_status,
        "backend_duration_ms": None if r.backend_duration_s is None else round(r.backend_duration_s * 1000, 3),
        "attempts": r.attempts, "user_agent": r.user_agent, "referer": r.referer, "request_id": r.request_id,
    }, ensure_ascii=True)


# Apache's escapes for the quote and the backslash, nginx's \xHH for controls and
# every byte from 0x7F up: a raw TAB, NEL (U+0085, a line break to str.splitlines)
# or CSI (U+009B, a terminal escape) must never reach the file.
_COMBINED_ESCAPES = {
    **{byte: f"\\x{byte:02X}" for byte in (*range(0x20), *range(0x7F, 0x100))},
    ord("\\"): "\\\\",
    ord('"'): '\\"',
}


def escape_combined(text: str) -> str:
    """``text`` as a quoted field of the combined format holds it (without the quotes).

    Every field is latin-1 text: header values as parsed (a character a byte),
    targets, methods, backend names and addresses ASCII by their rules.
    """
    if text.isascii() and text.isprintable():  # the usual case, with no escape but these two
        return text.replace("\\", "\\\\").replace('"', '\\"')
    return text.translate(_COMBINED_ESCAPES)


def _quoted(text: str | None) -> str:
    if not text:
        return '"-"'
    return '"' + escape_combined(text) + '"'


def format_combined(r: RequestRecord) -> str:
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(r.wall))
    request_line = f"{r.method} {r.target} {r.protocol}" if r.method != "-" else "-"
    body = r.body_bytes_sent  # Apache's %b: the body alone, "-" for none
    backend_s = "-" if r.backend_duration_s is None else f"{r.backend_duration_s:.3f}"
    return (
        f'{r.client} - - [{stamp}] {_quoted(request_line)} {r.status or "-"} {body or "-"} '
        f'{_quoted(r.referer)} {_quoted(r.user_agent)} {_quoted(r.backend)} {r.duration_s:.3f} {backend_s}'
    )


def format_text(r: RequestRecord) -> str:
    status = f"{r.status} aborted" if r.aborted else (r.status or "aborted")
    return f"{r.client} {r.method} {r.target} {status} {r.backend or '-'} {r.duration_s * 1000:.1f}ms"


def _escape_json(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)[1:-1]


@dataclass(frozen=True)
class LineFormat:
    """A line format, and what ``encode_line`` needs to cut its fields to a size in bytes."""

    render: Callable[[RequestRecord], str]  # the record as one ASCII line (no newline)
    escape: Callable[[str], str]  # a text field as the line holds it: character by character
    fields: tuple[str, ...]  # the record's text fields in the line, which may be cut to fit


FORMATS = {
    "combined": LineFormat(format_combined, escape_combined, ("method", "target", "referer", "user_agent", "backend")),
    "json": LineFormat(format_json, _escape_json, ("method", "target", "user_agent", "referer", "backend", "request_id")),
}
_CAPPED = ("target", "user_agent", "referer")  # cut to MAX_FIELD characters first


def encode_line(record: RequestRecord, fmt: LineFormat) -> bytes:
    """``record`` as a line of at most ``PIPE_BUF`` bytes, its newline included: one whole write."""
    record = _capped(record)
    data = (fmt.render(record) + "\n").encode()
    if len(data) > PIPE_BUF:  # rare: many bytes escaped four or six times over, or a huge method
        data = (fmt.render(_fitted(record, fmt, len(data) - PIPE_BUF)) + "\n").encode()
    return data


def _capped(r: RequestRecord) -> RequestRecord:
    cut = {name: value[:MAX_FIELD] + CUT_MARK for name in _CAPPED
           if (value := getattr(r, name)) is not None and len(value) > MAX_FIELD}
    return dataclasses.replace(r, **cut) if cut else r


def _fitted(r: RequestRecord, fmt: LineFormat, excess: int) -> RequestRecord:
    """``r`` with its longest text fields cut to one size, so that its line is at least ``excess`` bytes shorter.

    One size for all (the most that saves enough) keeps the short fields whole
    and shares the room fairly among the long ones. A field's size is that of
    its escaped text, which is the sum of its characters' (escapes are per
    character), so a cut never splits an escape.
    """
    sizes = {name: len(fmt.escape(value)) for name in fmt.fields if (value := getattr(r, name))}
    limit = _common_limit(list(sizes.values()), excess)
    cut = {name: _cut_to(getattr(r, name), fmt.escape, limit) for name, size in sizes.items() if size > limit}
    return dataclasses.replace(r, **cut)


def _common_limit(sizes: list[int], excess: int) -> int:
    """The largest limit such that cutting every size above it down to it saves at least ``excess``."""
    low, high = 0, max(sizes, default=0)
    while low < high:
        mid = (low + high + 1) // 2
        if sum(size - mid for size in sizes if size > mid) >= excess:
            low = mid
        else:
            high = mid - 1
    return low


def _cut_to(text: str, escape: Callable[[str], str], limit: int) -> str:
    """The longest start of ``text``, marked as cut, whose escaped form is at most ``limit`` characters."""
    ends = list(accumulate(len(escape(char)) for char in text))
    return text[:bisect.bisect_right(ends, limit - len(CUT_MARK))] + CUT_MARK


class AccessLog:
    """The access-log file and its writer thread. ``write(record)`` never blocks."""

    def __init__(self, path: str, fmt: str):
        self.path = path
        self._format = FORMATS[fmt]
        self._lines: collections.deque[bytes] = collections.deque()  # each a line, newline included
        self._wake = threading.Event()  # set when lines wait or a reopen is asked
        self._stop = threading.Event()
        self._reopen = False
        self.dropped = 0
        self._fd = self._open()
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def _open(self) -> int:
        if self.path == "-":
            return os.dup(1)
        if os.path.exists(self.path) and stat.S_ISFIFO(os.stat(self.path).st_mode):
            # A pipe: never block on it. A write of at most PIPE_BUF is all or nothing, so
            # a full pipe refuses whole batches (dropped and counted), never half a line.
            try:
                return os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    raise OSError(errno.ENXIO, f"nothing reads the pipe {self.path}") from None
                raise
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, record: RequestRecord) -> None:
        if len(self._lines) >= MAX_QUEUED:
            self.dropped += 1
            return
        data = encode_line(record, self._format)
        if len(data) > PIPE_BUF:  # (only if its fixed fields alone were that long) never half a line
            self.dropped += 1
            return
        self._lines.append(data)
        if not self._wake.is_set():
            self._wake.set()

    def reopen(self) -> None:
        self._reopen = True
        self._wake.set()

    def stop(self) -> None:
        """Write what is queued (within a second), then close."""
        self._stop.set()
        self._wake.set()
        self._thread.join(1.0)

    def _run(self) -> None:
        while True:
            self._wake.wait(0.2)
            self._wake.clear()
            if self._reopen:
                self._reopen = False
                self._swap()
            self._flush()
            if self._stop.is_set():
                self._flush()
                os.close(self._fd)
                return

    def _swap(self) -> None:
        try:
            fd = self._open()
        except OSError as exc:
            log.error("cannot reopen access log %s, keeping the old file: %s", self.path, exc.strerror or exc)
            return
        old, self._fd = self._fd, fd
        os.close(old)

    def _flush(self) -> None:
        batch: list[bytes] = []
        size = 0
        while self._lines:
            line = self._lines.popleft()
            if batch and size + len(line) > PIPE_BUF:
                self._write(batch)
                batch, size = [], 0
            batch.append(line)
            size += len(line)
        if batch:
            self._write(batch)

    def _write(self, lines: list[bytes]) -> None:
        data = b"".join(lines)
        done = 0
        try:
            # A pipe takes a batch (at most PIPE_BUF) whole or refuses it; only a file can take
            # part of one (a disk filling up), and then its rest goes next, before any other line.
            while done < len(data):
                done += os.write(self._fd, data[done:])
        except OSError as exc:  # a full disk, a full or closed pipe: drop the rest of the batch, keep going
            if not self.dropped:  # said once, at the first loss
                log.error("access log %s: %s; dropping lines (counted)", self.path, exc.strerror or exc)
            self.dropped += len(lines) - data.count(b"\n", 0, done)
