"""Upgrades and tunnels: WebSocket through the balancer with the ``websockets`` client, two kinds of servers."""

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time

import pytest
import requests

websockets = pytest.importorskip("websockets")
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from .conftest import RawClient, read_then_reset, serve_forever_ok, start_lb_process, wait_for  # noqa: E402


def ws_url(lb, path="/ws") -> str:
    return lb.url.replace("http://", "ws://") + path


@pytest.fixture
def ws_lb(mock_servers, balancer):
    (mock,) = mock_servers(1)
    return balancer([mock], admin="127.0.0.1:0"), mock


def test_text_binary_and_a_1_mib_message_echo(ws_lb):
    lb, _ = ws_lb
    with connect(ws_url(lb), max_size=4 << 20) as ws:
        ws.send("héllo")
        assert ws.recv(timeout=5) == "héllo"
        ws.send(b"\x00\x01\xff")
        assert ws.recv(timeout=5) == b"\x00\x01\xff"
        big = bytes(range(256)) * 4096
        ws.send(big)
        assert ws.recv(timeout=10) == big


def test_a_thousand_messages_on_one_connection_and_ping_pong(ws_lb):
    lb, _ = ws_lb
    with connect(ws_url(lb)) as ws:
        for number in range(1000):
            ws.send(f"m{number}")
        assert [ws.recv(timeout=5) for _ in range(1000)] == [f"m{n}" for n in range(1000)]
        assert ws.ping(b"are you there").wait(5)


def test_the_close_handshake_in_both_directions(ws_lb):
    lb, _ = ws_lb
    with connect(ws_url(lb)) as ws:  # the client closes
        ws.send("bye")
        ws.recv(timeout=5)
        ws.close(code=1000, reason="done")
        assert ws.close_code == 1000
    with connect(ws_url(lb, "/ws?close_after=2")) as ws:  # the server closes
        ws.send("one")
        ws.send("two")
        assert [ws.recv(timeout=5), ws.recv(timeout=5)] == ["one", "two"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd.code == 1000 and closed.value.rcvd.reason == "close_after reached"


class WebsocketsServer:
    """The ``websockets`` library's own server as a backend, on an asyncio loop in a thread."""

    def __init__(self):
        self.ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _echo(self, connection):
        async for message in connection:
            await connection.send(message[::-1] if isinstance(message, str) else message)

    async def _health(self, connection, request):
        if request.path == "/health":
            return connection.respond(200, "ok\n")
        return None

    def _run(self):
        async def main():
            async with websockets.serve(self._echo, "127.0.0.1", 0, process_request=self._health,
                                        max_size=4 << 20) as server:
                self.port = server.sockets[0].getsockname()[1]
                self._stop = asyncio.Event()
                self.ready.set()
                await self._stop.wait()

        self._loop.run_until_complete(main())

    def start(self):
        self._thread.start()
        assert self.ready.wait(10)
        return self

    def stop(self):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def test_an_independent_websocket_server_behind_the_balancer(balancer):
    server = WebsocketsServer().start()
    try:
        lb = balancer(f"127.0.0.1:{server.port}")
        with connect(ws_url(lb, "/chat"), max_size=4 << 20) as ws:
            ws.send("stressed")
            assert ws.recv(timeout=5) == "desserts"
            ws.send(b"x" * (1 << 20))
            assert ws.recv(timeout=10) == b"x" * (1 << 20)
    finally:
        server.stop()


def test_a_hundred_tunnels_at_once(ws_lb):
    lb, _ = ws_lb

    async def one(number):
        async with websockets.connect(ws_url(lb)) as ws:
            await ws.send(f"tunnel {number}")
            return await asyncio.wait_for(ws.recv(), 10)

    async def all_of_them():
        return await asyncio.gather(*(one(n) for n in range(100)))

    assert asyncio.run(all_of_them()) == [f"tunnel {n}" for n in range(100)]


def test_tunnels_are_counted_and_shown(ws_lb):
    lb, _ = ws_lb

    def active() -> float:
        text = requests.get(lb.admin.url + "/metrics", timeout=5).text
        return float(next(line.split()[1] for line in text.splitlines() if line.startswith("simplelb_tunnels_active")))

    with contextlib.ExitStack() as stack:
        for _ in range(3):
            stack.enter_context(connect(ws_url(lb)))
        wait_for(lambda: active() == 3, what="three tunnels")
        assert requests.get(lb.admin.url + "/status", timeout=5).json()["tunnels"] == 3
    wait_for(lambda: active() == 0, what="no tunnel")


def test_a_backend_that_dies_mid_tunnel_closes_the_client_connection(ws_lb):
    lb, mock = ws_lb
    with connect(ws_url(lb)) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
        mock.crash()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)


def test_an_idle_tunnel_is_closed_after_the_tunnel_timeout(mock_servers, balancer):
    (mock,) = mock_servers(1)
    lb = balancer([mock], tunnel_timeout_s=0.5)
    with connect(ws_url(lb)) as ws:
        ws.send("still here")
        assert ws.recv(timeout=5) == "still here"
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert 0.4 < time.monotonic() - started < 3


def test_sigterm_gives_tunnels_the_grace_period_then_closes_them(process, mock_servers):
    (mock,) = mock_servers(1)
    proc, url, _ = start_lb_process(process, "--backends", mock.address, "--grace-period", "0.5")
    with connect(url.replace("http://", "ws://") + "/ws") as ws:
        ws.send("x")
        ws.recv(timeout=5)
        proc.proc.send_signal(signal.SIGTERM)
        ws.send("still open during the grace period")
        assert ws.recv(timeout=5) == "still open during the grace period"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    assert proc.wait() == 0 and "Traceback" not in proc.stderr
    assert "GET /ws 101" in proc.stderr  # logged before the process ended


# --- raw sockets: the rules ------------------------------------------------------------


UPGRADE = b"GET /chat HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


def switching(upgrade: str | None):
    def script(conn):
        request = conn.read_request()
        if request is None:  # a health probe
            return
        conn.backend.event("request").set()
        conn.backend.received_upgrade = dict((k.lower(), v) for k, v in request.headers).get("upgrade")
        head = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
        head += f"Upgrade: {upgrade}\r\n" if upgrade else ""
        conn.send((head + "\r\n").encode() + b"early")  # and a first frame with the 101
        while data := conn.sock.recv(4096):  # then echo, upper-cased, until the client half-closes
            conn.send(data.upper())
        conn.send(b"|after the client's half-close")
        conn.sock.shutdown(socket.SHUT_WR)

    return script


def test_a_raw_tunnel_passes_early_bytes_and_half_closes(scripted, balancer):
    backend = scripted(switching("websocket"))
    lb = balancer([backend])
    client = RawClient(lb.port)
    response = client.request(UPGRADE)
    assert response.status == 101 and response.header("Upgrade") == "websocket"
    assert backend.received_upgrade == "websocket"
    client.send(b"hello")
    received = b""
    client.sock.shutdown(socket.SHUT_WR)  # half-close: the backend still answers
    while data := client.reader.read(4096):
        received += data
    assert received == b"earlyHELLO|after the client's half-close"


def test_tunnels_cut_at_the_end_of_the_grace_period_are_closed_both_ways_and_logged(scripted, balancer, caplog):
    # The client side was closed, but the backend side of a tunnel whose backend keeps its half open
    # was left to --tunnel-timeout, and the stop returned (and the process exited) before the
    # tunnel's access-log line: most tunnels cut by a SIGTERM were never logged.
    def silent_after_101(conn):
        if conn.read_request() is None:
            return
        conn.send(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        while conn.sock.recv(4096):  # read to the end, and never close our half
            pass
        conn.backend.event("backend closed").wait(10)

    backend = scripted(silent_after_101)
    lb = balancer([backend], tunnel_timeout_s=60)
    caplog.set_level(logging.INFO, logger="simplelb.access")
    clients = [RawClient(lb.port) for _ in range(3)]
    for client in clients:
        assert client.request(UPGRADE).status == 101
    wait_for(lambda: lb.tunnels.value == 3, what="three tunnels")
    started = time.monotonic()
    assert lb.stop(grace_s=0.2) is False
    assert time.monotonic() - started < 5
    assert caplog.text.count("GET /chat 101") == 3  # each one logged before the stop returned
    for client in clients:
        assert client.is_closed()


@pytest.mark.parametrize("upgrade", [None, "h2c"])
def test_a_101_not_asked_for_or_to_another_protocol_is_502(scripted, balancer, upgrade):
    lb = balancer([scripted(switching(upgrade))])
    assert RawClient(lb.port).request(UPGRADE).status == 502
    plain = RawClient(lb.port).request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")  # no upgrade asked for at all
    assert plain.status == 502


def test_an_upgrade_request_answered_normally_is_relayed(scripted, balancer):
    backend = scripted(serve_forever_ok)
    lb = balancer([backend])
    client = RawClient(lb.port)
    assert client.request(UPGRADE).status == 200
    assert client.request(b"GET /again HTTP/1.1\r\nHost: h\r\n\r\n").status == 200  # still plain HTTP


def test_h2c_is_never_offered_to_a_backend(scripted, balancer):
    backend = scripted(serve_forever_ok)
    lb = balancer([backend])
    RawClient(lb.port).request(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                               b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
    names = [k.lower() for k, _ in backend.received[0].headers]
    assert "upgrade" not in names and "http2-settings" not in names and "connection" not in names


def test_an_upgrade_that_reached_a_backend_is_never_retried(scripted, balancer):
    bad, good = scripted(read_then_reset), scripted(switching("websocket"))
    lb = balancer([bad, good], algorithm="round-robin", eject_after=0)
    assert RawClient(lb.port).request(UPGRADE).status == 502
    assert not good.event("request").is_set()


def test_tunnels_count_against_max_clients(mock_servers, balancer):
    (mock,) = mock_servers(1)
    lb = balancer([mock], max_clients=2)
    with connect(ws_url(lb)) as first, connect(ws_url(lb)) as second:
        first.send("a")
        second.send("b")
        assert (first.recv(timeout=5), second.recv(timeout=5)) == ("a", "b")
        # Both connections are busy tunnels (never evicted like idle ones): a third client is refused.
        refused = RawClient(lb.port).request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert refused.status == 503 and b"too many client connections" in refused.body
    wait_for(lambda: requests.get(lb.url, timeout=5).status_code == 200, what="room again once the tunnels closed")
