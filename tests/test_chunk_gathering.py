"""Chunked bodies: tiny chunks already received travel together; a slow stream still flows chunk by chunk.

A chunk boundary means nothing to HTTP (RFC 9112 §7.1), so whole chunks the
balancer has already received are passed on as one, to spare a system call
each; nothing waits for a chunk that has not arrived yet.
"""

from __future__ import annotations

import socket
import threading

import pytest

from simplelb.body import BodyError, iter_body
from simplelb.http1 import Framing
from simplelb.sockio import SocketReader

from .conftest import RawClient

TINY_COUNT = 5000
TINY_BODY = bytes(b"abcdefghij"[i % 10] for i in range(TINY_COUNT))
TINY_CHUNKED = b"".join(b"1\r\n%b\r\n" % TINY_BODY[i : i + 1] for i in range(TINY_COUNT)) + b"0\r\n\r\n"


def read_chunks(reader: SocketReader) -> list[bytes]:
    """A chunked body's chunks as they were framed on the wire (after its head was read)."""
    chunks = []
    while size := int(reader.readline(100)[:-2], 16):
        chunks.append(reader.read_exact(size))
        assert reader.read_exact(2) == b"\r\n"
    assert reader.readline(100) == b"\r\n"
    return chunks


def read_chunk(reader: SocketReader) -> bytes:
    """One chunk's data, as framed on the wire."""
    data = reader.read_exact(int(reader.readline(100)[:-2], 16))
    assert reader.read_exact(2) == b"\r\n"
    return data


def tiny_chunks_response(conn) -> None:
    """Answer every request with TINY_COUNT one-byte chunks, sent all at once."""
    while conn.read_request() is not None:
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + TINY_CHUNKED)


def test_tiny_chunks_received_together_reach_the_client_intact_in_far_fewer_chunks(scripted, balancer):
    lb = balancer([scripted(tiny_chunks_response)])
    client = RawClient(lb.port)
    client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert client.reader.read_head(1 << 20).startswith(b"HTTP/1.1 200")
    chunks = read_chunks(client.reader)
    assert b"".join(chunks) == TINY_BODY
    assert len(chunks) < TINY_COUNT // 10  # (arrived together, so passed on together)
    # The connection is still good for another response.
    assert client.request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").body == TINY_BODY


def test_a_request_body_of_tiny_chunks_reaches_the_backend_intact_in_far_fewer_chunks(scripted, balancer):
    seen: list[list[bytes]] = []

    def script(conn):
        if conn.reader.read_head(1 << 20) is None:
            return
        seen.append(read_chunks(conn.reader))
        conn.respond(200, b"ok")

    lb = balancer([scripted(script)])
    client = RawClient(lb.port)
    head = b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert client.request(head + TINY_CHUNKED).status == 200
    assert b"".join(seen[0]) == TINY_BODY
    assert len(seen[0]) < TINY_COUNT // 10


def test_a_slow_stream_reaches_the_client_chunk_by_chunk(scripted, balancer):
    """Each part is sent only once the client has read the one before: gathering must never wait for more.

    The second part even ends in the middle of the framing (a chunk's data
    without its CRLF): its data still goes on at once.
    """
    parts = [b"6\r\nfirst\n\r\n", b"7\r\nsecond\n", b"\r\n6\r\nthird\n\r\n"]

    def script(conn):
        conn.reader.read_head(1 << 20)
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for number, part in enumerate(parts):
            conn.send(part)
            conn.backend.event(f"read {number}").wait(10)
        conn.send(b"0\r\n\r\n")

    backend = scripted(script)
    lb = balancer([backend])
    client = RawClient(lb.port)
    client.send(b"GET /events HTTP/1.1\r\nHost: h\r\n\r\n")
    assert client.reader.read_head(1 << 20).startswith(b"HTTP/1.1 200")
    for number, expected in enumerate([b"first\n", b"second\n", b"third\n"]):
        assert read_chunk(client.reader) == expected  # (before the backend sends any more)
        backend.event(f"read {number}").set()
    assert client.reader.readline(100) == b"0\r\n"


def read_body(wire: bytes, scratch: bytearray | None) -> tuple[bytes, str | None]:
    """A chunked body read from a socket that carries ``wire``: its data, and the framing error if any."""
    ours, theirs = socket.socketpair()
    sender = threading.Thread(target=lambda: (theirs.sendall(wire), theirs.shutdown(socket.SHUT_WR)))
    sender.start()
    data, error = bytearray(), None
    try:
        for piece in iter_body(SocketReader(ours), Framing("chunked"), scratch):
            data += piece
    except BodyError as exc:
        error = str(exc)
    sender.join()
    ours.close()
    theirs.close()
    return bytes(data), error


MIXED = b"1\r\na\r\n3;ext=1\r\nbcd\r\n11170\r\n" + b"e" * 0x11170 + b"\r\n2\r\nfg\r\n" + b"1\r\nh\r\n" * 300


@pytest.mark.parametrize(
    "wire",
    [
        MIXED + b"0\r\nX-Trailer: 1\r\n\r\n",
        MIXED + b"1\r\nxY\r\n0\r\n\r\n",  # data not followed by CRLF, among gathered chunks
        MIXED + b"zz\r\nx\r\n0\r\n\r\n",  # a malformed size line
        MIXED + b"1\nx\r\n0\r\n\r\n",  # a bare LF ending a size line
        MIXED + b"1" * 5000,  # a size line too long
        MIXED + b"0\r\nbad trailer\r\n\r\n",
        MIXED + b"5\r\nab",  # cut inside a chunk
        MIXED,  # cut before the last chunk
    ],
    ids=["trailer", "no CRLF after data", "bad size line", "bare LF", "long size line", "bad trailer", "cut in chunk", "cut"],
)
def test_gathering_keeps_the_data_and_the_framing_errors_of_chunk_by_chunk_reading(wire):
    assert read_body(wire, bytearray(256 * 1024)) == read_body(wire, None)
