"""Property-based fuzzing of the front end: random and mutated request bytes.

Whatever arrives, the balancer answers with well-formed responses or closes
the connection -- it never crashes, hangs, or forwards something it did not
accept: every request the backend saw has exactly one response that came
from it (``X-Upstream``).
"""

import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mockserv import MockServer
from simplelb import Config, LoadBalancer
from simplelb.body import iter_body
from simplelb.http1 import parse_response_head, response_framing
from simplelb.sockio import SocketReader

from .conftest import ScriptedBackend, serve_forever_ok
from .mutations import mutated

VALID = [
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a?b=c HTTP/1.0\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"PUT /p HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /second HTTP/1.1\r\nHost: h\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
]
ALPHABET = b"\r\n\x00 \t:;,-=+0123456789abcdefABCDEFxHT/P.?#%\x7f\xff"


def mutated_requests():
    return mutated(VALID, ALPHABET, max_edits=6, max_copy=40)


@pytest.fixture(scope="module")
def target():
    backend = ScriptedBackend(serve_forever_ok).start()
    lb = LoadBalancer(Config.of(
        backends=backend.address, port=0, health_interval_s=60, client_header_timeout_s=2,
        keepalive_timeout_s=2, max_url_bytes=1024, max_header_bytes=4096, retries=0, backend_header="X-Upstream",
    )).start()
    yield lb, backend
    lb.stop(grace_s=1)
    backend.stop()


def exchange(port: int, data: bytes) -> list:
    """Send ``data``, half-close, and read every response until the balancer closes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the balancer may close before taking all of a bad request
        reader = SocketReader(sock)
        responses = []
        while True:
            try:
                raw = reader.read_head(1 << 16)
            except (ConnectionResetError, EOFError):
                break
            if raw is None:
                break
            head = parse_response_head(raw)
            if head.status >= 200:
                try:
                    for _ in iter_body(reader, response_framing("HEAD" if b"HEAD" in data[:5] else "GET", head)):
                        pass
                except ConnectionResetError:
                    pass
            responses.append(head)
        return responses
    finally:
        sock.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(mutated_requests(), st.binary(max_size=200)))
def test_front_end_answers_or_closes_and_never_forwards_what_it_refused(target, data):
    lb, backend = target
    before = len(backend.received)
    responses = exchange(lb.port, data)  # a hang would raise TimeoutError here (5 s socket timeout)
    forwarded = len(backend.received) - before
    answered_by_backend = sum(
        1 for head in responses if head.status >= 200 and any(k == "X-Upstream" for k, _ in head.headers)
    )
    assert forwarded == answered_by_backend
    for head in responses:
        assert 100 <= head.status <= 599


def test_balancer_survives_the_fuzzing(target):
    lb, _ = target
    assert exchange(lb.port, VALID[0])[0].status == 200


def test_mock_servers_survive_garbage():
    server = MockServer("fuzzed").start()
    try:
        exchange(server.port, b"\x00\xff garbage\r\n\r\n")
        assert exchange(server.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")[0].status == 200
    finally:
        server.stop()
