"""End to end: a real balancer in front of real (and misbehaving) backends."""

import contextlib
import socket
import threading
import time

import pytest
import requests

from .conftest import free_port, read_then_reset, serve_forever_ok, state, wait_for

# --- faithful forwarding ---------------------------------------------------------


def test_backend_receives_exactly_what_the_client_sent(scripted, balancer, raw_client):
    backend = scripted(serve_forever_ok)
    lb = balancer([backend])
    client = raw_client(lb.port)
    body = b"\x00\x01binary body\xff" * 10
    client.send(
        b"PUT /a//b/../c?q=%%2f&x=1+2#frag HTTP/1.1\r\n"
        b"Host: example.test\r\n"
        b"X-Dup: one\r\n"
        b"Accept: */*\r\n"
        b"x-dup: two\r\n"
        b"Connection: keep-alive, X-Hop\r\n"
        b"X-Hop: private\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"X-Forwarded-For: 203.0.113.9\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    assert client.read_response().status == 200
    (got,) = backend.received
    assert got.method == "PUT"
    assert got.target == "/a//b/../c?q=%2f&x=1+2#frag"
    assert got.headers == [
        ("Host", "example.test"),
        ("X-Dup", "one"),
        ("Accept", "*/*"),
        ("x-dup", "two"),
        ("Content-Length", str(len(body))),
        ("X-Forwarded-For", "203.0.113.9, 127.0.0.1"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "example.test"),
    ]
    assert got.body == body


def test_client_receives_exactly_what_the_backend_sent(scripted, balancer, raw_client):
    gzip_bytes = bytes(range(256)) * 4  # opaque bytes: must not be decoded or altered

    def script(conn):
        conn.read_request()
        conn.respond(
            201,
            gzip_bytes,
            [
                ("Set-Cookie", "a=1"),
                ("Content-Encoding", "gzip"),
                ("Set-Cookie", "b=2"),
                ("X-Odd", "v  with  spaces"),
                ("Keep-Alive", "timeout=99"),
                ("Content-Length", str(len(gzip_bytes))),
            ],
        )

    backend = scripted(script)
    lb = balancer([backend])
    response = raw_client(lb.port).request(b"GET / HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\n\r\n")
    assert response.status == 201
    assert response.headers == [
        ("Set-Cookie", "a=1"),
        ("Content-Encoding", "gzip"),
        ("Set-Cookie", "b=2"),
        ("X-Odd", "v  with  spaces"),
        ("Content-Length", str(len(gzip_bytes))),
    ]  # and nothing added: no header telling the client which backend answered
    assert response.body == gzip_bytes


def test_redirects_are_passed_back_not_followed(scripted, balancer):
    def script(conn):
        while conn.read_request() is not None:
            conn.respond(302, b"", [("Location", "http://127.0.0.1:1/elsewhere")])

    backend = scripted(script)
    lb = balancer([backend])
    response = requests.get(lb.url + "/", allow_redirects=False, timeout=5)
    assert response.status_code == 302
    assert response.headers["Location"] == "http://127.0.0.1:1/elsewhere"
    assert len(backend.received) == 1


def test_no_state_passes_between_clients(scripted, balancer):
    def script(conn):
        while conn.read_request() is not None:
            conn.respond(200, b"ok", [("Set-Cookie", "session=abc")])

    backend = scripted(script)
    lb = balancer([backend])
    requests.get(lb.url + "/first", timeout=5)
    requests.get(lb.url + "/second", timeout=5)  # a different client connection
    assert [h for h in backend.received[1].headers if h[0].lower() == "cookie"] == []


def test_absolute_form_target_goes_to_the_pool_as_its_path(scripted, balancer, raw_client):
    backend = scripted(serve_forever_ok)
    lb = balancer([backend])
    response = raw_client(lb.port).request(b"GET http://other-host.test:9999/p?q=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 200
    assert backend.received[0].target == "/p?q=1"
    assert ("Host", "other-host.test:9999") in backend.received[0].headers


def test_connect_is_refused_and_not_forwarded(scripted, balancer, raw_client):
    backend = scripted(serve_forever_ok)
    lb = balancer([backend])
    response = raw_client(lb.port).request(b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n")
    assert response.status == 405
    assert backend.received == []


def test_malformed_request_gets_400_with_a_reason_and_is_not_forwarded(scripted, balancer, raw_client):
    backend = scripted(serve_forever_ok)
    lb = balancer([backend])
    client = raw_client(lb.port)
    response = client.request(b"GET / HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n")
    assert response.status == 400
    assert b"malformed header" in response.body
    assert client.is_closed()
    assert backend.received == []


def test_http11_request_without_host_is_400(scripted, balancer, raw_client):
    backend = scripted(serve_forever_ok)
    lb = balancer([backend])
    assert raw_client(lb.port).request(b"GET / HTTP/1.1\r\n\r\n").status == 400
    assert backend.received == []


def test_http10_request_without_host_gets_one_for_the_backend(scripted, balancer, raw_client):
    backend = scripted(serve_forever_ok)
    lb = balancer([backend])
    client = raw_client(lb.port)
    response = client.request(b"GET / HTTP/1.0\r\n\r\n")
    assert response.status == 200
    assert response.header("Connection") == "close"
    assert ("Host", backend.address) in backend.received[0].headers


# --- connections and bodies ----------------------------------------------------


def test_keep_alive_on_both_sides(scripted, balancer, raw_client):
    backend = scripted(serve_forever_ok)
    lb = balancer([backend])
    client = raw_client(lb.port)
    for i in range(5):
        response = client.request(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i)
        assert response.status == 200 and response.body == b"ok"
    assert len(backend.received) == 5
    assert backend.connections == 1  # the pooled backend connection was reused


def test_chunked_request_body_arrives_whole(scripted, balancer, raw_client):
    backend = scripted(serve_forever_ok)
    lb = balancer([backend])
    client = raw_client(lb.port)
    response = client.request(
        b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1;ext=x\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: dropped\r\n\r\n"
    )
    assert response.status == 200
    got = backend.received[0]
    assert got.body == b"hello world"
    assert ("Transfer-Encoding", "chunked") in got.headers
    assert not any(k == "X-Trailer" for k, _ in got.headers)
    # The connection is still in step: a second request works.
    assert client.request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").status == 200


def test_expect_100_continue(scripted, balancer, raw_client):
    backend = scripted(serve_forever_ok)
    lb = balancer([backend])
    client = raw_client(lb.port)
    client.send(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    interim = client.read_response()
    assert interim.status == 100
    client.send(b"data")
    response = client.read_response()
    assert response.status == 200
    assert backend.received[0].body == b"data"


def test_head_204_and_304_have_no_body_and_keep_the_connection_in_step(scripted, balancer, raw_client):
    def script(conn):
        while (got := conn.read_request()) is not None:
            status = {"/204": 204, "/304": 304}.get(got.target, 200)
            # Content-Length on HEAD/304 describes the representation, not this message.
            conn.send(b"HTTP/1.1 %d X\r\nContent-Length: 50\r\n\r\n" % status if status != 204 else b"HTTP/1.1 204 X\r\n\r\n")
            if status == 200 and got.method != "HEAD":
                conn.send(b"x" * 50)

    backend = scripted(script)
    lb = balancer([backend])
    client = raw_client(lb.port)
    head = client.request(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", method="HEAD")
    assert (head.status, head.header("Content-Length"), head.body) == (200, "50", b"")
    for path, status in ((b"/204", 204), (b"/304", 304)):
        response = client.request(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path)
        assert (response.status, response.body) == (status, b"")
    full = client.request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert full.body == b"x" * 50


def test_close_delimited_response_is_rechunked_for_http11_clients(scripted, balancer, raw_client):
    def script(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        conn.sock.close()

    backend = scripted(script)
    lb = balancer([backend])
    client = raw_client(lb.port)
    response = client.request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert response.header("Transfer-Encoding") == "chunked"
    assert response.body == b"until the end" and response.complete


def test_large_bodies_stream_both_ways(scripted, balancer):
    size = 32 * 1024 * 1024

    def script(conn):
        got = conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        piece = b"z" * (1 << 20)
        for _ in range(size // len(piece)):
            conn.send(piece)
        assert len(got.body) == size

    backend = scripted(script)
    lb = balancer([backend])
    upload = (b"u" * (1 << 20) for _ in range(size // (1 << 20)))
    response = requests.post(lb.url + "/big", data=upload, stream=True, timeout=30)
    received = sum(len(chunk) for chunk in response.iter_content(1 << 20))
    assert received == size
    assert len(backend.received[0].body) == size


def test_slow_response_is_streamed_as_it_arrives(scripted, balancer, raw_client):
    def script(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        conn.backend.event("first seen").wait(10)  # finish only once the client has the first part
        conn.send(b"4\r\nlast\r\n0\r\n\r\n")

    backend = scripted(script)
    lb = balancer([backend])
    client = raw_client(lb.port, timeout_s=5)
    client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert client.reader.read_head(65536).startswith(b"HTTP/1.1 200")
    # If the balancer buffered, this read would time out: the backend is waiting for us.
    assert client.reader.readline(100) == b"5\r\n"
    assert client.reader.read_exact(7) == b"first\r\n"
    backend.event("first seen").set()
    assert client.reader.readline(100) == b"4\r\n"


# --- failures --------------------------------------------------------------------


def test_refused_connection_fails_over_to_the_next_backend(scripted, balancer):
    good = scripted(serve_forever_ok)
    lb = balancer([f"127.0.0.1:{free_port()}", good.address], backend_header="X-Upstream")
    for _ in range(6):
        response = requests.post(lb.url + "/", data=b"not idempotent", timeout=5)
        assert response.status_code == 200
        assert response.headers["X-Upstream"] == good.address
    assert len(good.received) == 6


def test_all_backends_refusing_is_502_naming_no_backend_to_the_client_but_one_in_the_log(balancer, caplog):
    addresses = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    lb = balancer(addresses)
    response = requests.get(lb.url + "/", timeout=5)
    assert response.status_code == 502
    assert response.text == "502 Bad Gateway: could not connect to the backend (connection refused)\n"
    assert not any(address in response.text for address in addresses)
    logged = caplog.text  # the operator is told which one failed last, and how
    assert any(f"GET /: 502 could not connect to the backend (connection refused) (backend {address})\n" in logged
               for address in addresses), logged


def test_an_error_answer_to_head_has_no_body_and_the_connection_goes_on(balancer, raw_client):
    lb = balancer([f"127.0.0.1:{free_port()}"], retries=0)
    client = raw_client(lb.port)
    client.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    head = client.read_response("HEAD")
    assert head.status == 502 and head.body == b"" and int(head.header("Content-Length")) > 0
    after = client.read_response()  # read where the HEAD's answer ended: a body there would be read here
    assert after.status == 502 and after.body.startswith(b"502 Bad Gateway: could not connect to the backend")


def test_an_error_answer_to_an_http10_keep_alive_request_says_keep_alive(balancer, raw_client):
    # As a relayed answer does: an HTTP/1.0 client (ab -k) takes a response without it to end at the
    # close, and waited for one that came only at --keepalive-timeout.
    lb = balancer([f"127.0.0.1:{free_port()}"], retries=0)
    client = raw_client(lb.port)
    for _ in range(2):
        response = client.request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert response.status == 502 and response.header("Connection") == "keep-alive"
    closing = client.request(b"GET / HTTP/1.0\r\n\r\n")
    assert closing.status == 502 and closing.header("Connection") == "close" and client.is_closed()


def test_post_is_never_resent_after_the_backend_failed(scripted, balancer):

    first = scripted(read_then_reset)
    second = scripted(read_then_reset)
    lb = balancer([first, second])
    response = requests.post(lb.url + "/pay", data=b"once", timeout=5)
    assert response.status_code == 502
    assert response.text == "502 Bad Gateway: the backend closed the connection without answering\n"
    assert len(first.received) + len(second.received) == 1


def test_hanging_backend_is_504(scripted, balancer):
    def hang(conn):
        conn.read_request()
        conn.backend.event("release").wait(10)

    backend = scripted(hang)
    lb = balancer([backend], read_timeout_s=0.3)
    response = requests.get(lb.url + "/", timeout=10)
    assert response.status_code == 504
    assert response.text == "504 Gateway Timeout: the backend did not answer within 0.3s\n"


def test_garbage_from_the_backend_is_502(scripted, balancer):
    def garbage(conn):
        conn.read_request()
        conn.send(b"SSH-2.0-OpenSSH_9.0\r\n\r\n")

    backend = scripted(garbage)
    lb = balancer([backend])
    response = requests.get(lb.url + "/", timeout=5)
    assert response.status_code == 502
    assert "malformed status line" in response.text


def test_backend_dying_mid_body_closes_the_client_connection(scripted, balancer, raw_client):
    def die(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 400)
        conn.sock.close()

    backend = scripted(die)
    lb = balancer([backend])
    client = raw_client(lb.port)
    response = client.request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert response.status == 200
    assert not response.complete  # a truncated body must never look complete
    assert len(response.body) == 400


def test_backend_dying_mid_chunked_body_never_sends_the_last_chunk(scripted, balancer, raw_client):
    def die(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        conn.sock.close()

    backend = scripted(die)
    lb = balancer([backend])
    response = raw_client(lb.port).request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert response.body == b"hello" and not response.complete


def test_an_http10_client_is_reset_when_its_response_is_cut_off(scripted, balancer):
    # An HTTP/1.0 client learns a body's end only from the close: after a plain close, a cut body
    # would look whole. A reset says it is not.
    def die(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n" + b"x" * 100)
        conn.sock.close()

    lb = balancer([scripted(die)])
    client = socket.create_connection(("127.0.0.1", lb.port), timeout=5)
    client.sendall(b"GET / HTTP/1.0\r\n\r\n")
    with pytest.raises(ConnectionResetError):
        while client.recv(65536):
            pass
    client.close()


def test_no_healthy_backend_is_an_immediate_503_with_retry_after(mock_servers, balancer):
    (mock,) = mock_servers(1)
    lb = balancer([mock], health_interval_s=0.05, health_timeout_s=0.05, fall=1)
    requests.post(mock.url + "/_mock/health", data="down", timeout=5)
    wait_for(lambda: state(lb, 0) == "down", what="backend marked down")
    response = requests.get(lb.url + "/", timeout=5)
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert "no healthy backend" in response.text
    assert mock.requests == 0


def test_dead_pooled_connections_do_not_surface_as_errors(scripted, balancer):
    def one_request_per_connection(conn):
        # Answers as if keeping the connection alive, then closes it: the pooled
        # connection the balancer holds is dead by the next request.
        if conn.read_request() is not None:
            conn.respond()
        conn.sock.close()

    backend = scripted(one_request_per_connection)
    lb = balancer([backend])
    session = requests.Session()
    statuses = [session.get(lb.url + f"/{i}", timeout=5).status_code for i in range(30)]
    assert statuses == [200] * 30


def test_a_post_finds_a_fresh_connection_when_the_backend_closed_the_pooled_one(scripted, balancer):
    def one_request_per_connection(conn):
        if conn.read_request() is not None:
            conn.respond()
        conn.sock.close()

    lb = balancer([scripted(one_request_per_connection)])
    with requests.Session() as session:
        for i in range(5):
            assert session.post(lb.url + f"/{i}", data=b"x" * 10, timeout=5).status_code == 200
            time.sleep(0.1)  # the backend's FIN has arrived: the pool's check on taking it sees it


def test_a_large_kept_body_is_sent_again_on_a_fresh_connection_when_the_pooled_one_died(scripted, balancer):
    # The pooled connection dies as the next request goes out (the backend's keep-alive timeout
    # fired just then): it reads the head, then closes, and the body's send fails. A body kept for
    # retries can be sent again whole on a fresh connection, as a small one is.
    def closes_at_the_second_request(conn):
        if conn.read_request() is not None:
            conn.respond()
        received = b""
        while b"\r\n\r\n" not in received and (data := conn.sock.recv(65536)):
            received += data

    backend = scripted(closes_at_the_second_request)
    lb = balancer([backend], retries=0, retry_body_limit_bytes=8 << 20)
    body = b"y" * (4 << 20)
    with requests.Session() as session:
        assert session.put(lb.url + "/first", data=body, timeout=10).status_code == 200
        assert session.put(lb.url + "/second", data=body, timeout=10).status_code == 200
    assert [(r.target, len(r.body)) for r in backend.received] == [("/first", len(body)), ("/second", len(body))]


def test_bytes_a_backend_sends_unasked_on_an_idle_connection_are_never_an_answer(scripted, balancer):
    def answer_then_babble(conn):
        # A correct answer, then a whole unsolicited response on the idle connection: a
        # balancer that reused it would hand "stray" to the next client as its answer.
        while (request := conn.read_request()) is not None:
            conn.respond(200, request.target.encode())
            conn.send(b"HTTP/1.1 200 X\r\nContent-Length: 5\r\n\r\nstray")
            conn.backend.event("babbled").set()

    backend = scripted(answer_then_babble)
    lb = balancer([backend])
    with requests.Session() as session:
        for i in range(4):
            backend.event("babbled").clear()
            assert session.get(lb.url + f"/{i}", timeout=5).text == f"/{i}"
            assert backend.event("babbled").wait(5)
    assert backend.connections == 4  # each babbling connection was dropped, never reused


def test_a_connection_whose_request_body_did_not_go_out_whole_is_never_reused(scripted, balancer):
    # The backend answers at once and stops reading a large body, so the send gives up part-way.
    # That backend is mid-body: a request sent next on the same connection would be read as body
    # bytes (lost, or smuggled in as a request of the client's making).
    carried = []  # all each connection received, once the test lets the backend read on

    def answer_then_stop_reading(conn):
        received = b""
        while b"\r\n\r\n" not in received:
            if not (data := conn.sock.recv(65536)):
                return
            received += data
        conn.send(b"HTTP/1.1 200 X\r\nContent-Length: 2\r\n\r\nok")
        conn.backend.event("read on").wait(10)
        conn.sock.settimeout(1)
        with contextlib.suppress(OSError):
            while data := conn.sock.recv(1 << 20):
                received += data
        carried.append(received)

    backend = scripted(answer_then_stop_reading)
    lb = balancer([backend], read_timeout_s=0.3, retries=0)
    uploader = socket.create_connection(("127.0.0.1", lb.port))
    upload = b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 20000000\r\n\r\n" + b"A" * 20_000_000
    threading.Thread(target=send_until_closed, args=(uploader, upload), daemon=True).start()
    uploader.settimeout(10)
    assert uploader.recv(100).startswith(b"HTTP/1.1 200")
    wait_for(lambda: lb.control.status()["backends"][0]["in_flight"] == 0, what="the upload's attempt to end")
    after = requests.post(lb.url + "/next", data=b"xyz", timeout=10)
    assert after.status_code == 200 and after.text == "ok"
    backend.event("read on").set()
    wait_for(lambda: len(carried) == 2, what="both connections to end")
    (upload_connection,) = [data for data in carried if b"POST /up" in data]
    assert b"/next" not in upload_connection
    uploader.close()


def send_until_closed(sock, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the balancer closes the connection once it answered
        sock.sendall(data)


def test_client_disconnecting_mid_response_does_not_disturb_the_balancer(scripted, balancer, raw_client):
    def big_or_small(conn):
        while (got := conn.read_request()) is not None:
            if got.target == "/small":
                conn.respond()
                continue
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (64 << 20))
            try:
                for _ in range(64):
                    conn.send(b"x" * (1 << 20))
            except OSError:
                return

    backend = scripted(big_or_small)
    lb = balancer([backend])
    client = raw_client(lb.port)
    client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    client.reader.read_head(65536)
    client.close()
    wait_for(lambda: lb.backends[0].in_flight == 0, what="the aborted request to end")
    # The same balancer is fine and serves the next client, through the same backend.
    assert requests.get(lb.url + "/small", timeout=5).text == "ok"
    # The aborted connection's thread logs the request and closes just after its backend attempt ends.
    wait_for(lambda: lb.connections.in_flight == 0, what="the aborted connection to close")
    assert lb.backends[0].status()["failures"] == 0  # the client left: not the backend's fault


def test_concurrent_clients_are_all_served(mock_servers, balancer):
    mocks = mock_servers(3)
    lb = balancer(mocks)
    statuses = []
    lock = threading.Lock()

    def client():
        with requests.Session() as session:
            for _ in range(20):
                code = session.get(lb.url + "/", timeout=10).status_code
                with lock:
                    statuses.append(code)

    threads = [threading.Thread(target=client) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses == [200] * 200
    assert sorted(m.requests for m in mocks) == [66, 67, 67]

