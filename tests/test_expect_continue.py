"""Expect: 100-continue with a streamed body: the backend's early answer reaches the client before its body.

The balancer sends the head, waits up to ``EXPECT_CONTINUE_S`` for the
backend's 100 Continue or final answer (as Go's transport does), and only
then answers the client's expectation and streams the body. A final answer
that comes first is relayed without a 100, the body is never read, and both
connections close after it.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from simplelb import attempt
from simplelb.http1 import parse_request_head

from .conftest import ScriptedConnection, serve_forever_ok, wait_for

BODY_BYTES = 200_000  # larger than --retry-body-limit's default: streamed, not kept for a retry


def refusing(status: int):
    """A backend that answers ``status`` to the head alone, then counts the body bytes that still come until the close.

    It neither reads the body before answering nor closes after: a client
    that sent its body anyway would wait on it. ``backend.body_bytes`` and
    the ``closed`` event tell what it received once the balancer let go.
    """
    def script(conn: ScriptedConnection) -> None:
        raw = conn.reader.read_head(1 << 20)
        if raw is None:
            return
        head = parse_request_head(raw)
        if head.target == "/health":
            conn.respond(200, b"ok", [("Connection", "close")])
            return
        conn.backend.heads.append(head)
        conn.respond(status, b"refused\n")
        received = conn.reader.pending
        while data := conn.reader.read(65536):
            received += len(data)
        conn.backend.body_bytes = received
        conn.backend.event("closed").set()
    return script


def _backend(scripted, script):
    backend = scripted(script)
    backend.heads, backend.body_bytes = [], None
    return backend


def _log_record(path) -> dict:
    wait_for(lambda: path.exists() and path.read_text().strip(), what="the access log line")
    return json.loads(path.read_text().splitlines()[0])


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("status", [417, 413])
def test_curl_hears_the_early_refusal_without_sending_its_body(scripted, balancer, tmp_path, status):
    backend = _backend(scripted, refusing(status))
    log = tmp_path / "access.json"
    lb = balancer([backend], access_log=str(log), access_log_format="json", read_timeout_s=30)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"x" * BODY_BYTES)
    # curl would send the body after --expect100-timeout without an answer: 10 s, so that only the
    # early refusal can stop it on a slow machine, and the 30 s read timeout is never what ends it.
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_upload}", "--expect100-timeout", "10",
         "-H", "Expect: 100-continue", "--data-binary", f"@{upload}", f"http://127.0.0.1:{lb.port}/upload"],
        capture_output=True, text=True, timeout=20,
    )
    assert out.stdout.split() == [str(status), "0"]  # the refusal, and not one body byte uploaded
    wait_for(backend.event("closed").is_set, what="the balancer to close the backend connection")
    assert backend.body_bytes == 0
    assert [h.values("expect") for h in backend.heads] == [["100-continue"]]
    record = _log_record(log)
    assert (record["status"], record["backend_status"]) == (status, status)
    assert record["bytes_received"] < 1000  # the head alone: the body was never read


def test_raw_client_sending_only_the_head_gets_the_early_answer_and_a_close(scripted, balancer, raw_client):
    backend = _backend(scripted, refusing(413))
    lb = balancer([backend], read_timeout_s=30)
    client = raw_client(lb.port)
    client.send(b"POST /upload HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % BODY_BYTES)
    response = client.read_response("POST")
    assert response.status == 413  # the first thing sent: no 100 Continue before it
    assert (response.body, response.header("Connection")) == (b"refused\n", "close")
    assert client.is_closed()  # its unread body must not be read as a next request
    wait_for(backend.event("closed").is_set, what="the balancer to close the backend connection")
    assert backend.body_bytes == 0


def test_backend_continue_lets_the_body_through_with_one_100(scripted, balancer, raw_client):
    def continuing(conn: ScriptedConnection) -> None:
        while (raw := conn.reader.read_head(1 << 20)) is not None:
            head = parse_request_head(raw)
            if head.target == "/health":
                conn.respond(200, b"ok", [("Connection", "close")])
                return
            conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")  # as a Go or nginx server does when the body is read
            body = conn.reader.read_exact(int(head.values("content-length")[0]))
            conn.respond(200, b"got %d" % len(body))

    lb = balancer([scripted(continuing)], read_timeout_s=30)
    client = raw_client(lb.port)
    client.send(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % BODY_BYTES)
    assert client.read_response().status == 100
    client.send(b"y" * BODY_BYTES)
    response = client.read_response("POST")
    assert (response.status, response.body) == (200, b"got %d" % BODY_BYTES)  # the backend's own 100 is not relayed
    # The connection stays in step and open: a second request on it is answered.
    client.send(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert client.read_response().status == 100
    client.send(b"abc")
    assert client.read_response("POST").body == b"got 3"


@pytest.mark.parametrize("request_head", [
    # HTTP/1.0 knows no 100 Continue (RFC 9110 §10.1.1): its body follows the head at once.
    b"POST / HTTP/1.0\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
])
def test_without_an_expectation_the_body_is_sent_without_waiting(scripted, balancer, raw_client, monkeypatch,
                                                                 request_head):
    # A wait for the backend's 100 would now last a minute, past the client's 10 s: only no wait at all passes.
    monkeypatch.setattr(attempt, "EXPECT_CONTINUE_S", 60.0)
    backend = scripted(serve_forever_ok)  # (it never says 100 Continue)
    lb = balancer([backend], read_timeout_s=30)
    client = raw_client(lb.port, timeout_s=10)
    response = client.request(request_head + b"hello", "POST")
    assert response.status == 200
    assert backend.received[0].body == b"hello"


def test_backend_that_ignores_expect_gets_the_body_after_the_wait(scripted, balancer, raw_client, monkeypatch):
    monkeypatch.setattr(attempt, "EXPECT_CONTINUE_S", 0.05)  # (a short wait: the test shows its end, not its length)
    backend = scripted(serve_forever_ok)
    lb = balancer([backend], read_timeout_s=30)
    client = raw_client(lb.port)
    client.send(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    assert client.read_response().status == 100
    client.send(b"data")
    assert client.read_response("POST").status == 200
    assert backend.received[0].body == b"data"
