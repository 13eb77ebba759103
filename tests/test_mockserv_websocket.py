"""The WebSocket echo on /ws, driven by the ``websockets`` package as the client."""

import base64
import email.message
import os
import socket

import pytest
import requests
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK
from websockets.sync.client import connect

from mockserv.websocket import HandshakeRefused, accept_key

from .conftest import wait_for

MIB = 1 << 20


def ws_connect(url: str, **kwargs):
    # proxy=None: never route a loopback test through a proxy named in the environment.
    return connect(url, proxy=None, open_timeout=5, close_timeout=5, max_size=2 * MIB, **kwargs)


def test_text_and_binary_are_echoed_by_the_server_that_was_asked(mock_servers):
    a, b = mock_servers(2)
    for server in (a, b):
        with ws_connect(server.ws_url) as ws:
            assert ws.response.headers["X-Backend"] == server.name
            ws.send("héllo")
            assert ws.recv(timeout=5) == "héllo"
            ws.send(b"\x00\xffbinary")
            assert ws.recv(timeout=5) == b"\x00\xffbinary"
            ws.send("")
            assert ws.recv(timeout=5) == ""


@pytest.mark.parametrize("message", [os.urandom(MIB), "ü" * (MIB // 2)], ids=["binary", "text"])
def test_one_mebibyte_message(mock_servers, message):
    (server,) = mock_servers(1)
    with ws_connect(server.ws_url) as ws:
        ws.send(message)
        assert ws.recv(timeout=10) == message


def test_a_fragmented_message_comes_back_whole(mock_servers):
    (server,) = mock_servers(1)
    with ws_connect(server.ws_url) as ws:
        ws.send(["frag", "ment", "ed"])
        assert ws.recv(timeout=5) == "fragmented"


def test_a_thousand_messages_on_one_connection(mock_servers):
    (server,) = mock_servers(1)
    with ws_connect(server.ws_url) as ws:
        for i in range(1000):
            ws.send(f"message {i}")
            assert ws.recv(timeout=5) == f"message {i}"
        for i in range(1000):  # and pipelined: all sent before any is read
            ws.send(i.to_bytes(2, "big"))
        assert [ws.recv(timeout=5) for _ in range(1000)] == [i.to_bytes(2, "big") for i in range(1000)]
    assert server.requests == 1  # one handshake, not a request per message


def test_ping_is_answered_with_pong(mock_servers):
    (server,) = mock_servers(1)
    with ws_connect(server.ws_url, ping_interval=None) as ws:
        assert ws.ping(b"are you there").wait(5)
        ws.send("still echoing")
        assert ws.recv(timeout=5) == "still echoing"


def test_client_initiated_close_is_answered(mock_servers):
    (server,) = mock_servers(1)
    with ws_connect(server.ws_url) as ws:
        wait_for(lambda: server.websockets == 1, 5, "the session to open")
        ws.close(code=1000, reason="done")
        assert ws.protocol.close_rcvd is not None, "the server did not answer our Close"
        assert ws.protocol.close_rcvd.code == 1000
    wait_for(lambda: server.websockets == 0, 5, "the server to end the session")


def test_server_initiated_close_after_n_messages(mock_servers):
    (server,) = mock_servers(1)
    with ws_connect(server.ws_url + "?close_after=2") as ws:
        ws.send("one")
        ws.send("two")
        assert [ws.recv(timeout=5), ws.recv(timeout=5)] == ["one", "two"]
        with pytest.raises(ConnectionClosedOK) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd.code == 1000
    assert closed.value.sent is not None and closed.value.sent.code == 1000  # we answered: handshake complete
    wait_for(lambda: server.websockets == 0, 5, "the server to end the session")


def test_crash_cuts_open_websockets_and_a_restart_serves_again(mock_servers):
    (server,) = mock_servers(1)
    with ws_connect(server.ws_url, ping_interval=None) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
        assert requests.post(server.url + "/_mock/crash", timeout=5).status_code == 200
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd is None  # cut, as if the process died: no Close frame
    server.start()
    with ws_connect(server.ws_url) as ws:
        ws.send("after")
        assert ws.recv(timeout=5) == "after"


def test_protocol_error_gets_close_1002(mock_servers):
    (server,) = mock_servers(1)
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101 ")
        sock.sendall(b"\x81\x02hi")  # a client frame without a mask (RFC 6455 §5.1)
        frame = sock.recv(4096)
        assert frame[0] == 0x88 and int.from_bytes(frame[2:4], "big") == 1002
        assert sock.recv(4096) == b""  # and the connection is closed


@pytest.mark.parametrize(
    "headers, status, header",
    [
        ({}, 426, ("Upgrade", "websocket")),
        ({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "8",
          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}, 426, ("Sec-WebSocket-Version", "13")),
        ({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}, 400, None),
        ({"Upgrade": "websocket", "Connection": "keep-alive", "Sec-WebSocket-Version": "13",
          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}, 400, None),
    ],
    ids=["plain-get", "version-8", "no-key", "no-connection-upgrade"],
)
def test_bad_handshakes_are_refused(mock_servers, headers, status, header):
    (server,) = mock_servers(1)
    response = requests.get(server.ws_url.replace("ws://", "http://"), headers=headers, timeout=5)
    assert response.status_code == status
    if header:
        assert response.headers[header[0]] == header[1]
    assert requests.get(server.url + "/", timeout=5).status_code == 200  # the server is fine


def _headers(**fields) -> email.message.Message:
    message = email.message.Message()
    for name, value in fields.items():
        message[name.replace("_", "-")] = value
    return message


def test_accept_key_follows_rfc_6455():
    # The worked example of RFC 6455 §1.3.
    headers = _headers(Host="server.example.com", Upgrade="WebSocket", Connection="keep-alive, Upgrade",
                       Sec_WebSocket_Key="dGhlIHNhbXBsZSBub25jZQ==", Sec_WebSocket_Version="13")
    assert accept_key("GET", "HTTP/1.1", headers) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    with pytest.raises(HandshakeRefused):
        accept_key("POST", "HTTP/1.1", headers)
    with pytest.raises(HandshakeRefused):
        accept_key("GET", "HTTP/1.0", headers)
    short = _headers(Host="h", Upgrade="websocket", Connection="Upgrade",
                     Sec_WebSocket_Key=base64.b64encode(b"too short").decode(), Sec_WebSocket_Version="13")
    with pytest.raises(HandshakeRefused):
        accept_key("GET", "HTTP/1.1", short)
