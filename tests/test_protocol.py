"""Protocol fidelity: 1xx responses, transfer codings, which fields cross, early-malformed bodies."""

import shutil
import subprocess
import time

import httpx
import pytest

from .conftest import RawClient, serve_forever_ok, wait_for


def interim_then_ok(*interims: bytes):
    def script(conn):
        while conn.read_request() is not None:
            for interim in interims:
                conn.send(interim)
            conn.respond(200, b"final")

    return script


EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\nLink: </app.js>; rel=preload\r\n\r\n"


def test_103_early_hints_are_relayed_with_their_links(scripted, balancer):
    lb = balancer([scripted(interim_then_ok(b"HTTP/1.1 102 Processing\r\n\r\n", EARLY_HINTS, EARLY_HINTS))])
    client = RawClient(lb.port)
    client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    first, second, third = client.read_response(), client.read_response(), client.read_response()
    assert (first.status, second.status, third.status) == (102, 103, 103)
    assert [v for k, v in second.headers if k == "Link"] == ["</style.css>; rel=preload; as=style", "</app.js>; rel=preload"]
    final = client.read_response()
    assert final.status == 200 and final.body == b"final"


def test_httpx_gets_the_final_response_after_early_hints(scripted, balancer):
    lb = balancer([scripted(interim_then_ok(EARLY_HINTS))])
    with httpx.Client() as client:
        response = client.get(lb.url + "/page")
    assert response.status_code == 200 and response.text == "final"


def test_an_http10_client_gets_no_interim_response(scripted, balancer):
    lb = balancer([scripted(interim_then_ok(EARLY_HINTS))])
    response = RawClient(lb.port).request(b"GET / HTTP/1.0\r\n\r\n")
    assert response.status == 200 and response.body == b"final"


def test_a_backend_that_sends_only_interim_responses_gets_the_read_timeout(scripted, balancer):
    def stalls(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 102 Processing\r\n\r\n")
        conn.backend.event("never").wait(5)

    lb = balancer([scripted(stalls)], read_timeout_s=0.3, retries=0)
    client = RawClient(lb.port)
    client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    started = time.monotonic()
    assert client.read_response().status == 102
    assert client.read_response().status == 504
    assert time.monotonic() - started < 2


def test_a_backend_that_closes_after_early_hints_is_not_sent_the_request_again(scripted, balancer):
    # The pooled connection answered (a 103 reached the client): it was alive, so its close is the
    # backend's failure, not a stale connection to replace. Sending the PUT again would run it twice.
    def hints_then_close_on_the_second_request(conn):
        if conn.read_request() is not None:
            conn.respond()
        if conn.read_request() is not None:
            conn.send(EARLY_HINTS)

    backend = scripted(hints_then_close_on_the_second_request)
    lb = balancer([backend], retries=0)
    client = RawClient(lb.port)
    assert client.request(b"GET /warm HTTP/1.1\r\nHost: h\r\n\r\n").status == 200
    client.send(b"PUT /once HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\ndata")
    assert client.read_response().status == 103
    assert client.read_response().status == 502
    assert [r.target for r in backend.received] == ["/warm", "/once"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_with_expect_100_continue_never_waits_its_fallback(scripted, balancer, tmp_path):
    body = tmp_path / "body.bin"
    body.write_bytes(b"z" * (2 << 20))
    backend = scripted(serve_forever_ok)
    lb = balancer([backend])
    started = time.monotonic()
    result = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Expect: 100-continue",
                             "--expect100-timeout", "5", "-T", str(body), lb.url + "/upload"],
                            capture_output=True, text=True, timeout=20)
    assert result.stdout == "200"
    assert time.monotonic() - started < 2  # with a missing 100 curl would wait its 5 s
    assert len(backend.received[0].body) == 2 << 20


@pytest.mark.parametrize("coding", [b"gzip", b"gzip, chunked", b"deflate"])
def test_a_transfer_coding_we_cannot_relay_is_502(scripted, balancer, coding):
    def coded(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding + b"\r\n\r\n\x1f\x8b coded bytes")
        conn.sock.close()

    lb = balancer([scripted(coded)], retries=0)
    response = RawClient(lb.port).request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert response.status == 502 and b"transfer coding" in response.body


def test_underscored_fields_are_dropped_unless_allowed(scripted, balancer):
    backend = scripted(serve_forever_ok)
    request = b"GET / HTTP/1.1\r\nHost: h\r\nX_Forwarded_For: 6.6.6.6\r\nX_Token: t\r\nX-Token: u\r\n\r\n"
    RawClient(balancer([backend]).port).request(request)
    names = [k for k, _ in backend.received[-1].headers]
    assert "X_Forwarded_For" not in names and "X_Token" not in names and "X-Token" in names
    RawClient(balancer([backend], allow_underscore_headers=True).port).request(request)
    assert ("X_Token", "t") in backend.received[-1].headers


def test_proxy_authorization_and_authenticate_go_end_to_end(scripted, balancer):
    def challenge(conn):
        while conn.read_request() is not None:
            conn.respond(407, b"who?", [("Proxy-Authenticate", 'Basic realm="inner"')])

    backend = scripted(challenge)
    response = RawClient(balancer([backend]).port).request(
        b"GET / HTTP/1.1\r\nHost: h\r\nProxy-Authorization: Basic dTpw\r\n\r\n")
    assert ("Proxy-Authorization", "Basic dTpw") in backend.received[0].headers
    assert response.status == 407 and response.header("Proxy-Authenticate") == 'Basic realm="inner"'


@pytest.mark.parametrize("body", [
    b"5\r\nhello\r\nZZ\r\n",  # a size that is not hex
    b"5\r\nhelloXX0\r\n\r\n",  # no CRLF after the data
    b"5;" + b"e" * 5000,  # an endless size line
])
def test_a_malformed_chunked_body_sent_with_its_head_never_reaches_a_backend(scripted, balancer, body):
    backend = scripted(serve_forever_ok)
    lb = balancer([backend], health_interval_s=60)
    wait_for(lambda: backend.accepted == 1, what="the start-up probe")
    accepted = backend.accepted
    client = RawClient(lb.port)
    response = client.request(b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert response.status == 400 and b"chunked" in response.body
    assert client.is_closed()
    assert backend.accepted == accepted and backend.received == []
