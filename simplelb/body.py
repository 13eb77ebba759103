"""Message bodies on the wire: reading one by its framing, and chunked coding.

``iter_body`` yields a body's data whatever its framing (``http1.Framing``):
a fixed length, chunked (trailers read and dropped, never merged into the
headers) or until the connection closes. It never reads past the body's end,
so the connection can carry the next message. ``check_chunked_prefix``
vets the start of a chunked request body that arrived with its head, and
``send_chunk`` frames outgoing data without copying large pieces.
"""

from __future__ import annotations

import re
import socket

from .http1 import Framing
from .sockio import COPY_CHUNK, SocketReader, sendall_parts

# A chunk-size line is hex digits plus optional extensions; nobody needs more.
MAX_CHUNK_LINE = 4096

# Whole chunks already received are passed on together, up to this many data bytes.
GATHER_LIMIT = 64 * 1024

_CHUNK_SIZE_RE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(;[^\r\n]*)?")
# A trailer field line (its CRLF, or bare LF as in heads, removed): a token, a colon, a value without controls.
_TRAILER_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*")


class BodyError(Exception):
    """A body ended early or its chunked framing was broken."""


def iter_body(reader: SocketReader, framing: Framing, scratch: bytearray | None = None):
    """Yield the body's data (framing removed) in pieces of at most ``COPY_CHUNK``.

    With ``scratch``, each piece is a view into it, valid until the next one
    (use it, or copy it, before asking for more). Raises ``BodyError`` if the
    body is cut short or malformed; socket errors (timeouts, resets) pass
    through for the caller to classify.
    """
    read = reader.read if scratch is None else (lambda limit: reader.read_into(scratch, limit))
    if framing.kind == "length":
        remaining = framing.length
        while remaining:
            data = read(min(remaining, COPY_CHUNK))
            if not data:
                raise BodyError(f"connection closed with {remaining} body bytes still to come")
            remaining -= len(data)
            yield data
    elif framing.kind == "chunked":
        yield from _iter_chunked(reader, read, scratch)
    elif framing.kind == "close":
        while data := read(COPY_CHUNK):
            yield data


def _iter_chunked(reader: SocketReader, read, scratch: bytearray | None):
    try:
        while True:
            if scratch is not None and (gathered := _gather(reader, scratch, 0)):
                yield memoryview(scratch)[:gathered]
                continue  # (at a chunk-size line again)
            size = _chunk_size(reader.readline(MAX_CHUNK_LINE))
            if size == 0:
                break
            yield from _chunk_data(reader, read, size, scratch)
        _skip_trailers(reader)
    except ValueError as exc:
        raise BodyError("chunk size line too long") from exc
    except EOFError as exc:
        raise BodyError(str(exc)) from exc


def _chunk_size(line: bytes) -> int:
    """The size a chunk-size line announces (its extensions dropped); ``BodyError`` if it is malformed."""
    match = _CHUNK_SIZE_RE.fullmatch(line[:-2]) if line.endswith(b"\r\n") else None  # (as the prefix check)
    if not match:
        raise BodyError(f"malformed chunk size line {line[:40]!r}")
    return int(match.group(1), 16)


def _chunk_data(reader: SocketReader, read, size: int, scratch: bytearray | None):
    """Yield one chunk's data as it arrives, then check its CRLF.

    With ``scratch``, a last piece whose CRLF is already buffered is not
    sent alone: the whole chunks buffered after it join it (``_gather``).
    Nothing waits for bytes that have not arrived, so a stream still flows
    chunk by chunk.
    """
    while size:
        data = read(min(size, COPY_CHUNK))
        if not data:
            raise BodyError("connection closed inside a chunk")
        size -= len(data)
        # (A wrong CRLF is left to ``_end_chunk``, after the data went on, as without gathering.)
        if not size and scratch is not None and reader.buffered().startswith(b"\r\n"):
            reader.discard(2)
            yield memoryview(scratch)[: _gather(reader, scratch, len(data))]  # (``read`` filled it from its start)
            return
        yield data
    _end_chunk(reader)


def _end_chunk(reader: SocketReader) -> None:
    if reader.read_exact(2) != b"\r\n":
        raise BodyError("chunk data not followed by CRLF")


def _gather(reader: SocketReader, scratch: bytearray, filled: int) -> int:
    """Copy the data of the whole chunks already buffered to ``scratch[filled:]``; return where it ends.

    Chunk boundaries mean nothing (RFC 9112 §7.1), but a send per tiny
    chunk costs a system call each: what is already here goes on as one
    piece, up to ``GATHER_LIMIT``. Only complete, well-formed, non-final
    chunks are taken, with no system call; anything else (a malformed line,
    a chunk not all here, the last chunk) is left to the ordinary path, so
    the framing checks and their errors stay what they are.
    """
    buf = reader.buffered()
    limit = min(GATHER_LIMIT, len(scratch))
    pos = 0
    with memoryview(buf) as source:  # (released before ``discard`` resizes the buffer)
        while filled < limit:
            end = buf.find(b"\n", pos, pos + MAX_CHUNK_LINE + 1)
            if end <= pos or buf[end - 1] != 13:
                break
            match = _CHUNK_SIZE_RE.fullmatch(buf, pos, end - 1)
            if not match:
                break
            size, start = int(match.group(1), 16), end + 1
            if not size or filled + size > limit or buf[start + size : start + size + 2] != b"\r\n":
                break
            scratch[filled : filled + size] = source[start : start + size]
            filled += size
            pos = start + size + 2
    if pos:
        reader.discard(pos)
    return filled


def _skip_trailers(reader: SocketReader) -> None:
    """Read the trailer section and drop it: never merged into the headers."""
    total = 0
    while (line := reader.readline(MAX_CHUNK_LINE)) not in (b"\r\n", b"\n"):
        if not _TRAILER_RE.fullmatch(line[:-2] if line.endswith(b"\r\n") else line[:-1]):
            raise BodyError(f"malformed trailer line {line[:40]!r}")
        total += len(line)
        if total > 64 * 1024:
            raise BodyError("trailer section too large")


def check_chunked_prefix(data: bytes) -> str | None:
    """The first framing error in the start of a chunked body, or None if it is valid as far as it goes.

    For a request whose first body bytes came with its head: a malformed
    body is refused before any backend sees the head (RFC 9112 §7.1).
    """
    pos = 0
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            return "chunk size line too long" if len(data) - pos > MAX_CHUNK_LINE else None
        line = data[pos : end + 1]
        match = _CHUNK_SIZE_RE.fullmatch(line[:-2]) if line.endswith(b"\r\n") else None
        if not match:
            return f"malformed chunk size line {line[:40]!r}"
        size = int(match.group(1), 16)
        pos = end + 1
        if size == 0:
            return None  # the trailer section is checked as it streams
        if len(data) < pos + size + 2:
            return None
        if data[pos + size : pos + size + 2] != b"\r\n":
            return "chunk data not followed by CRLF"
        pos += size + 2


def chunk(data: bytes) -> bytes:
    """Frame ``data`` as one chunk (RFC 9112 §7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


# Below this a chunk is framed by copying it; above, it is sent from where it lies.
_COPY_BELOW = 16 * 1024


def send_chunk(sock: socket.socket, data) -> int:
    """Send ``data`` as one chunk, in one system call where the socket allows; return the bytes sent."""
    if len(data) < _COPY_BELOW:
        framed = chunk(data)
        sock.sendall(framed)
        return len(framed)
    parts = [b"%x\r\n" % len(data), data, b"\r\n"]
    sendall_parts(sock, parts)
    return sum(len(p) for p in parts)


LAST_CHUNK = b"0\r\n\r\n"
