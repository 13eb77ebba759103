import socket
import threading
import time

import pytest

from simplelb.body import BodyError, chunk, iter_body
from simplelb.errors import BadGateway, BadRequest
from simplelb.http1 import (
    CHUNKED,
    NO_BODY,
    UNTIL_CLOSE,
    Framing,
    ResponseHead,
    parse_request_head,
    parse_response_head,
    request_framing,
    response_framing,
)
from simplelb.sockio import HeadTooLarge, SocketReader


def reader_with(data: bytes) -> SocketReader:
    """A reader whose peer sends ``data`` (from a thread, so any size fits) and closes."""
    ours, theirs = socket.socketpair()

    def send():
        with theirs:
            try:
                theirs.sendall(data)
            except OSError:
                pass  # the test stopped reading early

    threading.Thread(target=send, daemon=True).start()
    ours.settimeout(5)
    return SocketReader(ours)


# --- heads ---------------------------------------------------------------------


def test_request_head_keeps_target_order_and_duplicates():
    head = parse_request_head(
        b"GET /a//b/../c?x=%2f HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\nCookie: k=v\r\n\r\n"
    )
    assert head.method == "GET"
    assert head.target == "/a//b/../c?x=%2f"
    assert head.version == (1, 1)
    assert head.headers == [("Host", "h"), ("X-A", "1"), ("x-a", "2"), ("Cookie", "k=v")]


def test_header_values_are_trimmed_but_inner_whitespace_kept():
    head = parse_request_head(b"GET / HTTP/1.1\r\nHost:h\r\nX: \t a  b \t\r\n\r\n")
    assert head.headers == [("Host", "h"), ("X", "a  b")]


def test_bare_lf_line_endings_are_accepted():
    head = parse_request_head(b"GET / HTTP/1.0\nHost: h\n\n")
    assert head.headers == [("Host", "h")]


def test_latin1_values_round_trip_byte_for_byte():
    head = parse_request_head(b"GET / HTTP/1.1\r\nX: caf\xe9\r\n\r\n")
    assert head.headers[0][1].encode("latin-1") == b"caf\xe9"


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"GET /\r\n\r\n", 400),  # HTTP/0.9 style
        (b"GET  / HTTP/1.1\r\n\r\n", 400),  # two spaces
        (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\n\r\n", 400),
        (b"GET /\x7f HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET / HTTP/1.2\r\n\r\n", 505),
        (b"GET / HTTX/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400),  # whitespace before colon
        (b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", 400),  # obs-fold
        (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n: empty-name\r\n\r\n", 400),
    ],
)
def test_malformed_request_heads_are_refused(raw, status):
    with pytest.raises(BadRequest) as info:
        parse_request_head(raw)
    assert info.value.status == status


def test_too_many_headers_is_431():
    raw = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n"
    with pytest.raises(BadRequest) as info:
        parse_request_head(raw, max_headers=100)
    assert info.value.status == 431


def test_response_head():
    head = parse_response_head(b"HTTP/1.1 404 Not Found\r\nA: 1\r\nA: 2\r\n\r\n")
    assert (head.status, head.reason, head.headers) == (404, "Not Found", [("A", "1"), ("A", "2")])
    assert parse_response_head(b"HTTP/1.0 200\r\n\r\n").reason == ""


@pytest.mark.parametrize(
    "raw",
    [b"garbage\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n", b"HTTP/1.1 099 X\r\n\r\n", b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n"],
)
def test_malformed_response_heads_are_bad_gateway(raw):
    with pytest.raises(BadGateway):
        parse_response_head(raw)


# --- framing --------------------------------------------------------------------


def request(headers: bytes, version: bytes = b"1.1"):
    return parse_request_head(b"POST / HTTP/" + version + b"\r\nHost: h\r\n" + headers + b"\r\n")


def test_request_framing_rules():
    assert request(b"") == request(b"") and request_framing(request(b"")) is NO_BODY
    assert request_framing(request(b"Content-Length: 5\r\n")) == Framing("length", 5)
    assert request_framing(request(b"Content-Length: 0\r\n")) is NO_BODY
    assert request_framing(request(b"Content-Length: 5\r\nContent-Length: 5\r\n")) == Framing("length", 5)
    assert request_framing(request(b"Content-Length: 5, 5\r\n")) == Framing("length", 5)
    assert request_framing(request(b"Transfer-Encoding: chunked\r\n")) is CHUNKED
    assert request_framing(request(b"Transfer-Encoding: Chunked\r\n")) is CHUNKED


@pytest.mark.parametrize(
    "headers, version, status",
    [
        (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"1.1", 400),
        (b"Content-Length: 5\r\nContent-Length: 6\r\n", b"1.1", 400),
        (b"Content-Length: 5, 6\r\n", b"1.1", 400),
        (b"Content-Length: +5\r\n", b"1.1", 400),
        (b"Content-Length: 0x5\r\n", b"1.1", 400),
        (b"Content-Length: \xd9\xa5\r\n", b"1.1", 400),  # a non-ASCII digit
        (b"Transfer-Encoding: gzip\r\n", b"1.1", 501),
        (b"Transfer-Encoding: gzip, chunked\r\n", b"1.1", 501),
        (b"Transfer-Encoding: chunked, gzip\r\n", b"1.1", 400),
        (b"Transfer-Encoding: chunked, chunked\r\n", b"1.1", 400),
        (b"Transfer-Encoding: chunked\r\n", b"1.0", 400),
    ],
)
def test_ambiguous_request_framing_is_refused(headers, version, status):
    with pytest.raises(BadRequest) as info:
        request_framing(request(headers, version))
    assert info.value.status == status


def response(status: int, headers: list[tuple[str, str]]):
    return ResponseHead((1, 1), status, "", headers)


def test_response_framing_rules():
    assert response_framing("HEAD", response(200, [("Content-Length", "10")])) is NO_BODY
    for status in (100, 204, 304):
        assert response_framing("GET", response(status, [("Content-Length", "10")])) is NO_BODY
    assert response_framing("GET", response(200, [("Transfer-Encoding", "chunked")])) is CHUNKED
    assert response_framing("GET", response(200, [("Content-Length", "7")])) == Framing("length", 7)
    assert response_framing("GET", response(200, [])) is UNTIL_CLOSE


@pytest.mark.parametrize(
    "headers",
    [
        [("Transfer-Encoding", "chunked"), ("Content-Length", "3")],
        [("Content-Length", "3"), ("Content-Length", "4")],
        [("Content-Length", "-1")],
        [("Transfer-Encoding", "chunked, gzip")],
        [("Transfer-Encoding", "gzip")],  # a coding we would pass on as plain bytes: refused
        [("Transfer-Encoding", "gzip, chunked")],
    ],
)
def test_conflicting_response_framing_is_bad_gateway(headers):
    with pytest.raises(BadGateway):
        response_framing("GET", response(200, headers))


# --- reading --------------------------------------------------------------------


def test_read_head_skips_leading_empty_lines_and_keeps_the_rest():
    reader = reader_with(b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\nBODY")
    assert reader.read_head(1024) == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    assert reader.pending == 4
    assert reader.read() == b"BODY"


def test_read_head_eof_cases():
    assert reader_with(b"").read_head(1024) is None
    with pytest.raises(EOFError):
        reader_with(b"GET / HTTP/1.1\r\nHost").read_head(1024)


def test_read_head_limit_tells_request_line_from_headers():
    with pytest.raises(HeadTooLarge) as info:
        reader_with(b"GET /" + b"a" * 2000).read_head(1024)
    assert info.value.start_line
    with pytest.raises(HeadTooLarge) as info:
        reader_with(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 400).read_head(1024)
    assert not info.value.start_line
    with pytest.raises(HeadTooLarge) as info:
        reader_with(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n\r\n").read_head(1024, max_first_line=100)
    assert info.value.start_line
    with pytest.raises(HeadTooLarge) as info:  # too long, and not even ended yet
        reader_with(b"GET /" + b"a" * 200).read_head(1024, max_first_line=100)
    assert info.value.start_line
    assert reader_with(b"GET /" + b"a" * 50 + b" HTTP/1.1\r\n\r\n").read_head(1024, max_first_line=100)


def test_read_head_deadline_is_total_not_per_read():
    ours, theirs = socket.socketpair()
    stop = threading.Event()

    def drip():
        for byte in b"GET / HTTP/1.1\r\nX: " + b"y" * 1000:
            if stop.wait(0.02):
                return
            try:
                theirs.send(bytes([byte]))
            except OSError:
                return

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        SocketReader(ours).read_head(1 << 16, deadline=time.monotonic() + 0.3)
    assert time.monotonic() - started < 2  # a per-read timeout would never fire while bytes drip in
    stop.set()
    thread.join()
    ours.close()
    theirs.close()


def test_length_body_cut_short_is_an_error():
    with pytest.raises(BodyError):
        list(iter_body(reader_with(b"abc"), Framing("length", 5)))


def test_chunked_body_decodes_and_drops_trailers():
    data = chunk(b"hello ") + b"6;ext=1\r\nworld!\r\n" + b"0\r\nX-Trailer: t\r\n\r\nNEXT"
    reader = reader_with(data)
    assert b"".join(iter_body(reader, CHUNKED)) == b"hello world!"
    assert reader.read() == b"NEXT"


@pytest.mark.parametrize(
    "data",
    [
        b"5\r\nhelloX\r\n0\r\n\r\n",  # data not followed by CRLF
        b"g\r\nhello\r\n0\r\n\r\n",  # size not hex
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",  # bare LF after size
        b"5;" + b"e" * 5000 + b"\r\nhello\r\n0\r\n\r\n",  # oversized extension
        b"5\r\nhel",  # cut short
        b"10000000000000000\r\n",  # size overflow
        b"5\r\r\nhello\r\n0\r\n\r\n",  # CR CR LF: refused when it came with the head, so here too
        b"5\r\nhello\r\n0\r\nno colon\r\n\r\n",  # a trailer that is no field line
        b"5\r\nhello\r\n0\r\nX-T: a\x00b\r\n\r\n",  # a control in a trailer's value
    ],
    ids=["no-crlf", "not-hex", "negative", "0x", "leading-space", "bare-lf", "long-ext", "short", "overflow",
         "cr-cr-lf", "trailer-no-colon", "trailer-control"],
)
def test_malformed_chunked_bodies_are_errors(data):
    with pytest.raises(BodyError):
        list(iter_body(reader_with(data), CHUNKED))


def test_until_close_body_reads_to_eof():
    assert b"".join(iter_body(reader_with(b"x" * 300_000), UNTIL_CLOSE)) == b"x" * 300_000
