"""A client that gives up while its backend is slow: 499 in the log, and the backend's connection closed."""

import hashlib
import json
import socket
import ssl
import threading
import time

import httpx
import pytest

from simplelb import upstream
from simplelb.sockio import SocketReader

from .conftest import RawClient, ScriptedConnection, wait_for


def _until_closed(closed: dict, answer_after_s: float | None = None):
    """A script that reads one request, then answers after ``answer_after_s`` (never: None), noting when it saw EOF."""
    def script(conn) -> None:
        if conn.read_request() is None:
            return
        conn.sock.settimeout(answer_after_s if answer_after_s is not None else 20)
        try:
            if conn.sock.recv(1) == b"":  # the balancer closed its connection to us
                closed["at"] = time.monotonic()
        except TimeoutError:
            if answer_after_s is not None:
                conn.respond(200, b"late but here")
        closed.setdefault("done", threading.Event()).set()
    return script


def test_a_client_that_gives_up_is_logged_499_and_its_backend_connection_closed(scripted, balancer, tmp_path):
    closed: dict = {}
    backend = scripted(_until_closed(closed))
    log = tmp_path / "access.json"
    lb = balancer([backend], access_log=str(log), access_log_format="json", read_timeout_s=30)
    client = RawClient(lb.port)
    client.send(b"GET /report HTTP/1.1\r\nHost: h\r\n\r\n")
    wait_for(lambda: len(backend.received) == 1, what="the request at the backend")
    gave_up = time.monotonic()
    client.close()
    wait_for(lambda: "at" in closed, timeout_s=10, what="the backend's connection closed")
    assert closed["at"] - gave_up < 5  # within a few checks, not the 30 s read timeout
    wait_for(lambda: log.exists() and log.read_text().strip(), what="the access log line")
    record = json.loads(log.read_text().splitlines()[0])
    assert (record["target"], record["status"], record["backend"], record["backend_status"]) == (
        "/report", 499, backend.address, None)


def test_a_half_closed_client_also_counts_as_gone(scripted, balancer):
    closed: dict = {}
    backend = scripted(_until_closed(closed))
    lb = balancer([backend], read_timeout_s=30)
    with socket.create_connection(("127.0.0.1", lb.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        wait_for(lambda: len(backend.received) == 1, what="the request at the backend")
        sock.shutdown(socket.SHUT_WR)  # as nginx and Go's server read it: the client is not waiting any more
        wait_for(lambda: "at" in closed, timeout_s=10, what="the backend's connection closed")
        sock.settimeout(5)
        assert sock.recv(100) == b""  # and it is not answered


def test_a_client_that_waits_gets_a_slow_answer_over_several_checks(scripted, balancer):
    closed: dict = {}
    backend = scripted(_until_closed(closed, answer_after_s=2.5))
    lb = balancer([backend], read_timeout_s=30)
    response = httpx.get(lb.url + "/slow", timeout=20)
    assert (response.status_code, response.text) == (200, "late but here")
    assert "at" not in closed


def test_the_read_timeout_still_counts_the_whole_wait(scripted, balancer):
    closed: dict = {}
    backend = scripted(_until_closed(closed))
    lb = balancer([backend], read_timeout_s=2.5, retries=0)
    started = time.monotonic()
    response = httpx.get(lb.url + "/stuck", timeout=20)
    waited = time.monotonic() - started
    assert response.status_code == 504
    assert 2.4 <= waited < 10  # three checks of the client on the way, not a timeout at the first


def _answers_after(delay_s: float, closed: dict):
    """A script answering each request ``delay_s`` after it came (a slow backend), noting an EOF while it waits."""
    def script(conn) -> None:
        while (request := conn.read_request()) is not None:
            conn.sock.settimeout(delay_s)
            try:
                if conn.sock.recv(1) == b"":
                    closed["at"] = time.monotonic()
                    return
            except TimeoutError:
                pass
            conn.respond(200, request.target.encode())
    return script


@pytest.mark.parametrize("pipelined, half_close", [("after", False), ("after", True), ("together", True)])
def test_a_client_that_pipelined_its_next_request_still_waits_for_the_answers(
        scripted, balancer, monkeypatch, pipelined, half_close):
    # The next request waits in the socket ("after": sent while the first was at the backend), or was
    # read with the first ("together"). Shutting its sending side down then says "that is all I ask",
    # not "I gave up": it still reads both answers (HTTP/1.1 pipelining; Go's server reads it so).
    monkeypatch.setattr(upstream, "CLIENT_CHECK_S", 0.1)  # several checks during each slow answer
    closed: dict = {}
    backend = scripted(_answers_after(0.6, closed))
    lb = balancer([backend], read_timeout_s=30)
    client = RawClient(lb.port)
    first, second = b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n", b"GET /second HTTP/1.1\r\nHost: h\r\n\r\n"
    if pipelined == "together":
        client.send(first + second)
    else:
        client.send(first)
        wait_for(lambda: len(backend.received) == 1, what="the first request at the backend")
        client.send(second)
    if half_close:
        client.sock.shutdown(socket.SHUT_WR)
    answers = [client.read_response(), client.read_response()]
    assert [(a.status, a.body) for a in answers] == [(200, b"/first"), (200, b"/second")]
    assert "at" not in closed
    client.close()


def test_a_body_cut_off_because_the_client_half_closed_never_looks_whole(scripted, balancer, monkeypatch):
    # An HTTP/1.0 client that shut its sending side down (as nc -N or socat do) is taken for gone when
    # the backend stalls mid-body; it may still be reading, and learns the body's end from the close:
    # a plain close after half the body would look like all of it.
    monkeypatch.setattr(upstream, "CLIENT_CHECK_S", 0.1)
    closed: dict = {}

    def stalls_mid_body(conn) -> None:
        if conn.read_request() is None:
            return
        conn.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nfirst half, ")
        conn.sock.settimeout(10)
        try:
            if conn.sock.recv(1) == b"":
                closed["at"] = time.monotonic()
        except TimeoutError:
            conn.send(b"second half")

    backend = scripted(stalls_mid_body)
    lb = balancer([backend], read_timeout_s=30)
    with socket.create_connection(("127.0.0.1", lb.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        received = b""
        with pytest.raises(ConnectionResetError):
            while data := sock.recv(65536):
                received += data
    assert received.endswith(b"\r\n\r\nfirst half, ")
    wait_for(lambda: "at" in closed, what="the backend's connection closed")


# --- https:// backends: their sockets keep Python timeouts, waited out in parts too ------------------------------


@pytest.fixture
def https_scripted(scripted, tmp_path):
    """``scripted`` backends speaking TLS (the script gets the TLS connection); and the CA file that trusts them."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ca_file = tmp_path / "backend-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)

    def make(script):
        def over_tls(conn) -> None:
            tls = context.wrap_socket(conn.sock, server_side=True)
            script(ScriptedConnection(tls, SocketReader(tls), conn.backend))
        backend = scripted(over_tls)
        return backend, f"https://{backend.address}"

    return make, str(ca_file)


def test_an_https_backend_is_closed_too_when_its_client_gives_up(https_scripted, balancer, tmp_path, monkeypatch):
    monkeypatch.setattr(upstream, "CLIENT_CHECK_S", 0.2)
    make, ca_file = https_scripted
    closed: dict = {}
    backend, url = make(_until_closed(closed))
    log = tmp_path / "access.json"
    lb = balancer(url, backend_ca=ca_file, access_log=str(log), access_log_format="json", read_timeout_s=30)
    client = RawClient(lb.port)
    client.send(b"GET /report HTTP/1.1\r\nHost: h\r\n\r\n")
    wait_for(lambda: len(backend.received) == 1, what="the request at the backend")
    client.close()
    wait_for(lambda: "at" in closed, timeout_s=10, what="the backend's connection closed")
    wait_for(lambda: log.exists() and log.read_text().strip(), what="the access log line")
    assert json.loads(log.read_text().splitlines()[0])["status"] == 499


def test_an_https_backend_still_has_the_whole_read_timeout(https_scripted, balancer, monkeypatch):
    monkeypatch.setattr(upstream, "CLIENT_CHECK_S", 0.2)
    make, ca_file = https_scripted
    backend, url = make(_until_closed({}))
    lb = balancer(url, backend_ca=ca_file, read_timeout_s=1.5, retries=0)
    started = time.monotonic()
    response = httpx.get(lb.url + "/stuck", timeout=20)
    assert response.status_code == 504
    assert 1.4 <= time.monotonic() - started < 10  # the whole silence, not one part of it


def test_a_send_to_an_https_backend_still_waits_the_whole_read_timeout(https_scripted, balancer, monkeypatch):
    # The TLS socket's one timeout is a part of the limit now: a send to a backend that stops reading
    # for several parts (but less than --read-timeout) must still go through, whole.
    monkeypatch.setattr(upstream, "CLIENT_CHECK_S", 0.2)
    make, ca_file = https_scripted
    body = bytes(range(256)) * (64 * 1024)  # 16 MiB: more than the sockets between us hold

    def reads_late(conn) -> None:
        conn.reader.read_head(1 << 20)
        time.sleep(1.5)  # (the backend's own pause, the thing under test: not a wait for a condition)
        received = conn.reader.read_exact(len(body))
        conn.respond(200, hashlib.sha256(received).hexdigest().encode())

    backend, url = make(reads_late)
    lb = balancer(url, backend_ca=ca_file, read_timeout_s=10, retries=0)
    response = httpx.post(lb.url + "/upload", content=body, timeout=30)
    assert (response.status_code, response.text) == (200, hashlib.sha256(body).hexdigest())
