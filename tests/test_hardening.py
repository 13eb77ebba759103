"""The front end is strict: exact bytes over raw sockets, and what the backend did (not) receive.

Each case asserts the status, whether the connection was closed, what the
backend received, and that the balancer still serves the next client.
"""

import select
import socket
import threading
import time

import pytest
import requests

from .conftest import serve_forever_ok, wait_for


@pytest.fixture
def setup(scripted, balancer, raw_client):
    backend = scripted(serve_forever_ok)

    def make(**options):
        lb = balancer([backend], **options)
        return lb, backend

    return make


def rejected(lb, backend, raw_client, data: bytes, status: int, *, closed: bool = True, method: str = "GET"):
    client = raw_client(lb.port)
    client.send(data)
    response = client.read_response(method)
    assert response.status == status, response.body
    assert response.body, "every error response says what went wrong"
    if closed:
        assert client.is_closed(), "the connection must be closed after this error"
    assert backend.received == [], "nothing may be forwarded"
    # The balancer still serves the next client.
    assert requests.get(lb.url + "/next", timeout=5).status_code == 200
    return response


FRAMING_CASES = {
    "cl-and-te": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "te-and-cl": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    "differing-cl": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    "differing-cl-list": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\nhello!", 400),
    "cl-plus": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello", 400),
    "cl-hex": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\nhello", 400),
    "cl-negative": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
    "cl-empty": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\n", 400),
    "te-gzip": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    "te-chunked-then-gzip": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    "te-chunked-twice": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    "te-xchunked": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n", 501),
    "te-in-http10": (b"POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "te-space-before-colon": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
}


@pytest.mark.parametrize("data, status", FRAMING_CASES.values(), ids=FRAMING_CASES.keys())
def test_ambiguous_framing_is_refused(setup, raw_client, data, status):
    lb, backend = setup()
    rejected(lb, backend, raw_client, data, status)


CHUNK_CASES = {
    "size-not-hex": b"zz\r\nhello\r\n0\r\n\r\n",
    "missing-crlf-after-data": b"5\r\nhelloXX0\r\n\r\n",
    "oversized-extension": b"5;" + b"x" * 5000 + b"\r\nhello\r\n0\r\n\r\n",
    "size-with-leading-space": b" 5\r\nhello\r\n0\r\n\r\n",
    "size-overflow": b"fffffffffffffffffff\r\n",
}


@pytest.mark.parametrize("body", CHUNK_CASES.values(), ids=CHUNK_CASES.keys())
def test_malformed_chunked_body_is_400_and_never_completes_at_the_backend(setup, raw_client, body):
    lb, backend = setup()
    # A smuggled second request hides after the bad chunk; it must never be seen.
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
    rejected(lb, backend, raw_client,
             b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + body + smuggled, 400)


HEADER_CASES = {
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost: h\r\nX-A : 1\r\n\r\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n  continued\r\n\r\n", 400),
    "nul-in-value": (b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n", 400),
    "bare-cr-in-value": (b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n", 400),
    "nul-in-name": (b"GET / HTTP/1.1\r\nHost: h\r\nX\x00A: 1\r\n\r\n", 400),
    "bare-cr-line-end": (b"GET / HTTP/1.1\rHost: h\r\n\r\n", 400),
    "malformed-request-line": (b"GET /\r\n\r\n", 400),
    "tab-in-request-line": (b"GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    "unsupported-version": (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    "http-3": (b"GET / HTTP/3.0\r\nHost: h\r\n\r\n", 505),
    "no-host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two-hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "bad-host": (b"GET / HTTP/1.1\r\nHost: a b/c\r\n\r\n", 400),
}


@pytest.mark.parametrize("data, status", HEADER_CASES.values(), ids=HEADER_CASES.keys())
def test_bad_header_syntax_is_refused(setup, raw_client, data, status):
    lb, backend = setup()
    rejected(lb, backend, raw_client, data, status)


TARGET_CASES = {
    "authority-form": b"GET example.com:80 HTTP/1.1\r\nHost: example.com\r\n\r\n",
    "asterisk-with-get": b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
    "other-scheme": b"GET ftp://example.com/x HTTP/1.1\r\nHost: h\r\n\r\n",
    "userinfo": b"GET http://user@example.com/x HTTP/1.1\r\nHost: h\r\n\r\n",
    "relative": b"GET x/y HTTP/1.1\r\nHost: h\r\n\r\n",
    # The authority becomes the Host: what a Host field may not hold, it may not either.
    "authority-with-backslash": b"GET http://good.example\\evil.example/x HTTP/1.1\r\nHost: h\r\n\r\n",
    "authority-with-markup": b'GET http://a<b>"c:1:2/x HTTP/1.1\r\nHost: h\r\n\r\n',
    "fragment-in-authority": b"GET http://example.com#frag/x HTTP/1.1\r\nHost: h\r\n\r\n",
}


@pytest.mark.parametrize("data", TARGET_CASES.values(), ids=TARGET_CASES.keys())
def test_targets_that_are_not_paths_are_400(setup, raw_client, data):
    lb, backend = setup()
    rejected(lb, backend, raw_client, data, 400)


def test_connect_is_405(setup, raw_client):
    lb, backend = setup()
    rejected(lb, backend, raw_client, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405,
             closed=False)


def test_options_asterisk_is_forwarded_as_is(setup, raw_client):
    lb, backend = setup()
    assert raw_client(lb.port).request(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n").status == 200


def test_options_for_a_whole_server_in_absolute_form_is_forwarded_as_asterisk(setup, raw_client):
    lb, backend = setup()
    assert raw_client(lb.port).request(b"OPTIONS http://example.com HTTP/1.1\r\nHost: h\r\n\r\n").status == 200
    assert backend.received[0].target == "*"  # RFC 9112 3.2.4, not "/"
    assert ("Host", "example.com") in backend.received[0].headers
    assert backend.received[0].target == "*"


def test_absolute_form_never_connects_to_the_named_host(setup, raw_client):
    lb, backend = setup(backend_header="X-Upstream")
    response = raw_client(lb.port).request(b"GET http://127.0.0.1:1/x?y HTTP/1.1\r\nHost: h\r\n\r\n")
    assert response.status == 200 and response.header("X-Upstream") == backend.address
    assert backend.received[0].target == "/x?y"


# --- limits ---------------------------------------------------------------------------------


def test_long_request_target_is_414(setup, raw_client):
    lb, backend = setup(max_url_bytes=1024)
    rejected(lb, backend, raw_client, b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414)


def test_long_request_target_is_414_even_before_it_ends(setup, raw_client):
    lb, backend = setup(max_url_bytes=1024)
    client = raw_client(lb.port)
    client.send(b"GET /" + b"a" * 3000)  # no end of line yet, and more to come
    assert client.read_response().status == 414
    assert client.is_closed()


def test_large_header_section_is_431(setup, raw_client):
    lb, backend = setup(max_header_bytes=4096, max_url_bytes=1024)
    rejected(lb, backend, raw_client, b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-Pad: " + b"p" * 5000 + b"\r\n\r\n", 431)


def test_too_many_headers_is_431(setup, raw_client):
    lb, backend = setup()
    many = b"".join(b"X-%d: v\r\n" % i for i in range(101))
    rejected(lb, backend, raw_client, b"GET / HTTP/1.1\r\nHost: h\r\n" + many + b"\r\n", 431)


def test_large_body_is_413_before_any_backend_and_without_100_continue(setup, raw_client):
    lb, backend = setup(max_body_bytes=1000)
    response = rejected(
        lb, backend, raw_client,
        b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1001\r\n\r\n", 413,
    )
    assert response.status == 413  # the first thing sent: no 100 Continue before it


def test_large_chunked_body_is_413(setup, raw_client):
    lb, backend = setup(max_body_bytes=1000)
    chunks = b"".join(b"100\r\n" + b"c" * 256 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
    rejected(lb, backend, raw_client,
             b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks, 413)


def test_body_within_the_limit_passes(setup, raw_client):
    lb, backend = setup(max_body_bytes=1000)
    response = raw_client(lb.port).request(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n" + b"b" * 1000)
    assert response.status == 200 and backend.received[0].body == b"b" * 1000


def test_connection_header_cannot_strip_content_length(setup, raw_client):
    lb, backend = setup()
    client = raw_client(lb.port)
    hidden = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
    response = client.request(
        b"POST / HTTP/1.1\r\nHost: h\r\nConnection: Content-Length\r\nContent-Length: %d\r\n\r\n" % len(hidden)
        + hidden
    )
    assert response.status == 200
    assert [r.target for r in backend.received] == ["/"]
    assert ("Content-Length", str(len(hidden))) in backend.received[0].headers


def test_duplicate_identical_content_length_reaches_the_backend_as_one(setup, raw_client):
    lb, backend = setup()
    response = raw_client(lb.port).request(
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"
    )
    assert response.status == 200
    assert [v for k, v in backend.received[0].headers if k.lower() == "content-length"] == ["3"]


# --- slow and idle clients --------------------------------------------------------------------


def test_slow_header_drip_gets_408_at_the_total_deadline(setup, raw_client):
    lb, backend = setup(client_header_timeout_s=0.5)
    client = raw_client(lb.port)
    started = time.monotonic()
    client.send(b"GET / HTTP/1.1\r\n")
    for i in range(100):  # one header line every 50 ms: each read is quick, the whole is not
        try:
            client.send(b"X-%d: v\r\n" % i)
        except OSError:
            break
        if select.select([client.sock], [], [], 0.05)[0]:
            break  # the balancer answered
    response = client.read_response()
    assert response.status == 408
    assert time.monotonic() - started < 3
    assert client.is_closed()
    assert backend.received == []


def test_idle_keepalive_connection_is_closed(setup, raw_client):
    lb, backend = setup(keepalive_timeout_s=0.3)
    client = raw_client(lb.port)
    assert client.request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").status == 200
    assert client.is_closed(timeout_s=5)


def test_a_new_connection_that_says_nothing_is_closed_at_the_head_timeout(setup, raw_client):
    # Its first request must begin within --client-header-timeout, not --keepalive-timeout.
    lb, backend = setup(client_header_timeout_s=0.5, keepalive_timeout_s=60)
    silent = raw_client(lb.port)
    started = time.monotonic()
    assert silent.is_closed(timeout_s=5)
    assert time.monotonic() - started < 3  # the head's 0.5 s, not the keep-alive's 60


def test_a_kept_alive_connection_may_idle_longer_than_the_head_timeout(setup, raw_client):
    lb, backend = setup(client_header_timeout_s=0.3, keepalive_timeout_s=60)
    client = raw_client(lb.port)
    assert client.request(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n").status == 200
    assert not client.is_closed(timeout_s=1.0)  # idle three head timeouts, and still open
    assert client.request(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n").status == 200


def test_idle_flood_cannot_lock_out_a_real_client(setup):
    lb, backend = setup(max_clients=10)
    idle = [socket.create_connection(("127.0.0.1", lb.port)) for _ in range(30)]
    try:
        started = time.monotonic()
        assert requests.get(lb.url + "/real", timeout=5).status_code == 200
        assert time.monotonic() - started < 2
        wait_for(lambda: sum(lb.connections.counts().values()) <= 10, what="the cap to hold")
    finally:
        for sock in idle:
            sock.close()


def test_client_that_stops_reading_is_cut_off(scripted, balancer, raw_client):
    finished = threading.Event()

    def huge(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 30))
        try:
            for _ in range(1024):
                conn.send(b"x" * (1 << 20))
        except OSError:
            finished.set()  # the balancer stopped taking the body: it gave up on the client

    backend = scripted(huge)
    lb = balancer([backend], send_timeout_s=0.5)
    client = raw_client(lb.port)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")  # and never read
    assert finished.wait(15)
    wait_for(lambda: lb.backends[0].in_flight == 0, what="the request to end")


# --- bad backend responses ----------------------------------------------------------------------

BAD_RESPONSES = {
    "malformed-status": b"HTTP/1.1 OK\r\nContent-Length: 0\r\n\r\n",
    "status-not-3-digits": b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
    "cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "differing-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "huge-head": b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 70000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("answer", BAD_RESPONSES.values(), ids=BAD_RESPONSES.keys())
def test_bad_backend_response_is_502_and_the_connection_is_not_reused(scripted, balancer, answer):
    served = []

    def script(conn):
        while (got := conn.read_request()) is not None:
            served.append(got.target)
            if got.target == "/bad":
                conn.send(answer)
            else:
                conn.respond()

    backend = scripted(script)
    lb = balancer([backend], retries=0)
    with requests.Session() as session:
        assert session.get(lb.url + "/good", timeout=5).status_code == 200
        response = session.get(lb.url + "/bad", timeout=5)
        assert response.status_code == 502 and response.text
        assert session.get(lb.url + "/after", timeout=5).status_code == 200
    assert served == ["/good", "/bad", "/after"]
    assert backend.connections == 2  # the connection that carried the bad answer was discarded


@pytest.mark.parametrize("method", ["POST", "PUT"])  # streamed to the backend as it comes; kept for a retry
def test_a_client_that_stops_sending_its_body_gets_408_and_the_backend_no_request(setup, raw_client, method):
    lb, backend = setup(client_body_timeout_s=0.5)
    client = raw_client(lb.port)
    client.send(f"{method} /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nab".encode())
    response = client.read_response()  # then it waits: it is still there, and is answered, as nginx does
    assert response.status == 408 and b"request body not received within 0.5s" in response.body
    assert client.is_closed()
    assert backend.received == []  # (a streamed body reached it in part: it never saw the request complete)


BODILESS_ANSWERS = {  # (method, the backend's head, the client's Content-Length fields or 502)
    "head-list": ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", ["5"]),
    "head-conflicting": ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 12, 34\r\nContent-Length: abc\r\n\r\n", 502),
    "not-modified": ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n", ["7"]),
    "no-content": ("GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", []),  # RFC 9110 8.6
}


@pytest.mark.parametrize("method, answer, lengths", BODILESS_ANSWERS.values(), ids=BODILESS_ANSWERS.keys())
def test_a_bodiless_answers_content_length_is_checked_and_made_plain(scripted, balancer, raw_client, method, answer,
                                                                      lengths):
    def script(conn):
        while conn.read_request() is not None:
            conn.send(answer)

    lb = balancer([scripted(script)], retries=0)
    client = raw_client(lb.port)
    client.send(f"{method} / HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    response = client.read_response(method)
    if lengths == 502:  # as the same head answering a GET is
        assert response.status == 502
    else:
        assert response.status < 500 and response.body == b""
        assert [v for k, v in response.headers if k.lower() == "content-length"] == lengths


def test_a_request_content_length_of_0_0_reaches_the_backend_as_one_plain_0(setup, raw_client):
    lb, backend = setup()
    response = raw_client(lb.port).request(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0, 0\r\n\r\n")
    assert response.status == 200
    assert [v for k, v in backend.received[0].headers if k.lower() == "content-length"] == ["0"]


@pytest.mark.parametrize("end", [b"\r\n", b"\n"])
def test_max_url_is_the_request_lines_length_without_its_line_end(setup, raw_client, end):
    lb, backend = setup(max_url_bytes=100)
    for length, status in ((100, 200), (101, 414)):
        line = b"GET /" + b"a" * (length - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
        assert len(line) == length
        response = raw_client(lb.port).request(line + end + b"Host: h" + end + end)
        assert response.status == status, (length, end)
