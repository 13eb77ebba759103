"""mockserv on IPv6 loopback: URLs bracketed, HTTP, WebSocket, TLS and the command line."""

import signal

import pytest
import requests
from websockets.sync.client import connect

from mockserv import MockServer
from mockserv.tls import MockTls, certificate_names

from .conftest import needs_ipv6

pytestmark = needs_ipv6


@pytest.fixture
def v6_server():
    server = MockServer("v6", host="::1").start()
    yield server
    server.stop()


def test_urls_are_bracketed(v6_server):
    assert v6_server.address == f"[::1]:{v6_server.port}"
    assert v6_server.url == f"http://[::1]:{v6_server.port}"
    assert v6_server.ws_url == f"ws://[::1]:{v6_server.port}/ws"


def test_http_and_websocket_over_ipv6(v6_server):
    response = requests.get(v6_server.url + "/six", timeout=5)
    assert response.json()["name"] == "v6" and response.json()["path"] == "/six"
    with connect(v6_server.ws_url, proxy=None, open_timeout=5) as ws:
        ws.send("over ::1")
        assert ws.recv(timeout=5) == "over ::1"
    with pytest.raises(requests.ConnectionError):  # not listening on IPv4
        requests.get(f"http://127.0.0.1:{v6_server.port}/", timeout=2)


def test_tls_certificate_covers_ipv6_loopback():
    tls = MockTls(certificate_names("::1"))
    server = MockServer("v6s", host="::1", ssl_context=tls.context).start()
    try:
        assert requests.get(server.url + "/health", verify=str(tls.ca_file), timeout=5).status_code == 200
    finally:
        server.stop()
        tls.close()


def test_cli_host_ipv6(process):
    proc = process("-m", "mockserv", "2", "--host", "::1", "--base-port", "0")
    control_url = proc.wait_for_output("control:").split()[1]
    addresses = proc.wait_for_output("backends:").split()[1].split(",")
    assert control_url.startswith("http://[::1]:")
    for i, address in enumerate(addresses, 1):
        assert address.startswith("[::1]:")
        assert requests.get(f"http://{address}/", timeout=5).json()["name"] == f"mock-{i}"
    assert len(requests.get(control_url, timeout=5).json()["servers"]) == 2
    proc.proc.send_signal(signal.SIGINT)
    assert proc.wait() == 0
