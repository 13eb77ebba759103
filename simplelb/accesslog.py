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
file whole, never interleaved mid-line (long fields are cut to keep a line
under that size). ``reopen()`` (SIGUSR1, logrotate's convention) makes the
writer open the path again before its next batch: no line is lost, the ones
queued meanwhile go to the new file.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

log = logging.getLogger(__name__)
text_log = logging.getLogger("simplelb.access")

PIPE_BUF = 4096  # POSIX: writes up to this size to a pipe are atomic
MAX_FIELD = 1000  # characters kept of a target, user agent or referer (keeps a line whole in one write)
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
    bytes_sent: int = 0
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


def _cut(text: str | None) -> str | None:
    return text if text is None or len(text) <= MAX_FIELD else text[:MAX_FIELD] + "..."


def format_json(r: RequestRecord) -> str:
    stamp = datetime.fromtimestamp(r.wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({
        "time": stamp, "client": r.client, "method": r.method, "target": _cut(r.target), "protocol": r.protocol,
        "status": r.status, "bytes_sent": r.bytes_sent, "bytes_received": r.bytes_received,
        "duration_ms": round(r.duration_s * 1000, 3), "backend": r.backend, "backend_status": r.backend_status,
        "backend_duration_ms": None if r.backend_duration_s is None else round(r.backend_duration_s * 1000, 3),
        "attempts": r.attempts, "user_agent": _cut(r.user_agent), "referer": _cut(r.referer),
        "request_id": r.request_id,
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
    return '"' + escape_combined(_cut(text)) + '"'


def format_combined(r: RequestRecord) -> str:
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(r.wall))
    request_line = f"{r.method} {_cut(r.target)} {r.protocol}" if r.method != "-" else "-"
    body = r.bytes_sent  # combined's %b is the body; we count what was sent, head included
    backend_s = "-" if r.backend_duration_s is None else f"{r.backend_duration_s:.3f}"
    return (
        f'{r.client} - - [{stamp}] {_quoted(request_line)} {r.status or "-"} {body or "-"} '
        f'{_quoted(r.referer)} {_quoted(r.user_agent)} {_quoted(r.backend)} {r.duration_s:.3f} {backend_s}'
    )


def format_text(r: RequestRecord) -> str:
    status = f"{r.status} aborted" if r.aborted else (r.status or "aborted")
    return f"{r.client} {r.method} {r.target} {status} {r.backend or '-'} {r.duration_s * 1000:.1f}ms"


FORMATS = {"combined": format_combined, "json": format_json}


class AccessLog:
    """The access-log file and its writer thread. ``write(record)`` never blocks."""

    def __init__(self, path: str, fmt: str):
        self.path = path
        self._format = FORMATS[fmt]
        self._lines: collections.deque[str] = collections.deque()
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
        self._lines.append(self._format(record) + "\n")
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
        batch: list[str] = []
        size = 0
        while self._lines:
            line = self._lines.popleft()
            data_size = len(line)
            if batch and size + data_size > PIPE_BUF:
                self._write(batch)
                batch, size = [], 0
            batch.append(line)
            size += data_size
        if batch:
            self._write(batch)

    def _write(self, lines: list[str]) -> None:
        data = "".join(lines).encode("utf-8", "replace")
        try:
            written = os.write(self._fd, data)
        except OSError as exc:  # a full disk, a full or closed pipe: drop the batch, keep going
            if not self.dropped:  # said once, at the first loss
                log.error("access log %s: %s; dropping lines (counted)", self.path, exc.strerror or exc)
            self.dropped += len(lines)
            return
        if written < len(data):  # only where a write is not atomic anyway (a full pipe, a huge line)
            self.dropped += 1
