"""mockserv --tls: HTTPS and wss verified against the CA made at start, by real clients."""

import shutil
import signal
import socket
import ssl
import subprocess
import time

import httpx
import pytest
import requests
import trustme
from cryptography import x509
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

from mockserv import MockServer
from mockserv.tls import MockTls, certificate_names


@pytest.fixture(scope="module")
def tls():
    material = MockTls(certificate_names("127.0.0.1"))
    yield material
    material.close()


@pytest.fixture
def tls_server(tls):
    server = MockServer("secure-1", ssl_context=tls.context).start()
    yield server
    server.stop()


def test_requests_verifies_against_the_ca_file(tls, tls_server):
    assert tls_server.url.startswith("https://")
    response = requests.get(tls_server.url + "/hello", verify=str(tls.ca_file), timeout=5)
    assert response.status_code == 200 and response.json()["name"] == "secure-1"
    # By name too: the certificate is for localhost as well as the addresses.
    response = requests.get(f"https://localhost:{tls_server.port}/health", verify=str(tls.ca_file), timeout=5)
    assert response.status_code == 200


def test_a_client_without_the_ca_refuses_the_certificate(tls_server):
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(tls_server.url + "/", timeout=5)  # the system CAs only
    other_ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    other_ca.configure_trust(context)
    with pytest.raises(httpx.ConnectError):
        httpx.get(tls_server.url + "/", verify=context, timeout=5)


def test_httpx_with_strict_verification(tls, tls_server):
    context = ssl.create_default_context(cafile=str(tls.ca_file))
    context.verify_flags |= ssl.VERIFY_X509_STRICT  # the default from Python 3.13 on
    with httpx.Client(verify=context, timeout=5) as client:
        for _ in range(3):  # keep-alive over TLS
            response = client.post(tls_server.url + "/x", content=b"abc")
            assert response.status_code == 200 and response.json()["body_bytes"] == 3
            assert response.http_version == "HTTP/1.1"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_s_client_verifies_name_and_address(tls, tls_server):
    request = f"GET /health HTTP/1.1\r\nHost: localhost:{tls_server.port}\r\nConnection: close\r\n\r\n"
    for check in (["-verify_hostname", "localhost"], ["-verify_ip", "127.0.0.1"]):
        result = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{tls_server.port}", "-servername", "localhost",
             "-CAfile", str(tls.ca_file), "-verify_return_error", "-ign_eof", *check],
            input=request, capture_output=True, text=True, timeout=20,
        )
        assert "Verify return code: 0 (ok)" in result.stdout, result.stdout + result.stderr
        assert "HTTP/1.1 200 OK" in result.stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_with_cacert(tls, tls_server):
    result = subprocess.run(["curl", "-sS", "--noproxy", "*", "--cacert", str(tls.ca_file),
                             f"https://localhost:{tls_server.port}/health"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert '"status": "up"' in result.stdout


def test_wss_echo(tls, tls_server):
    assert tls_server.ws_url.startswith("wss://")
    with connect(tls_server.ws_url, ssl=tls.client_context(), proxy=None, open_timeout=5, max_size=None) as ws:
        ws.send("over tls")
        assert ws.recv(timeout=5) == "over tls"
        ws.send(b"\x01" * (1 << 20))
        assert ws.recv(timeout=10) == b"\x01" * (1 << 20)


def test_no_tls13_session_tickets_arrive_unasked(tls, tls_server):
    # A ticket sent after the handshake can meet a client writing on another thread mid-processing
    # (websockets' sync client), and its request is lost: test_wss_echo hung now and then.
    raw = socket.create_connection(("127.0.0.1", tls_server.port), timeout=5)
    with tls.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        assert sock.version() == "TLSv1.3"
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):  # tickets, if any, come before the answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert not sock.session.has_ticket


def test_the_certificate_is_for_the_loopback_names_only(tls):
    cert_pem, _ = tls.ca.issue(tls.names)
    san = x509.load_pem_x509_certificate(cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    names = san.value.get_values_for_type(x509.DNSName) + [str(a) for a in san.value.get_values_for_type(x509.IPAddress)]
    assert sorted(names) == sorted(["localhost", "127.0.0.1", "::1"])
    ca = x509.load_pem_x509_certificate(tls.ca_file.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True


def test_silent_and_plain_http_clients_block_no_one(tls, tls_server):
    silent = [socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) for _ in range(20)]
    plain = socket.create_connection(("127.0.0.1", tls_server.port), timeout=5)
    try:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        try:
            while chunk := plain.recv(4096):  # a timeout here fails the test: it must be closed
                answer += chunk
        except ConnectionResetError:
            pass  # closed with our request unread: a reset is a close too
        assert not answer.startswith(b"HTTP/")  # at most a TLS alert
        started = time.monotonic()
        assert requests.get(tls_server.url + "/", verify=str(tls.ca_file), timeout=5).status_code == 200
        assert time.monotonic() - started < 1.0
    finally:
        plain.close()
        for sock in silent:
            sock.close()


def test_cli_tls_prints_the_ca_file_and_serves_https(process, tmp_path):
    ca_file = tmp_path / "ca.pem"
    proc = process("-m", "mockserv", "2", "--base-port", "0", "--tls", "--tls-ca-file", str(ca_file))
    assert str(ca_file) in proc.wait_for_output("CA certificate")
    backends = proc.wait_for_output("backends:").split()[1].split(",")
    assert all(b.startswith("https://127.0.0.1:") for b in backends)  # as --backends takes them: pasted, they work
    for i, backend in enumerate(backends, 1):
        response = requests.get(f"{backend}/", verify=str(ca_file), timeout=5)
        assert response.json()["name"] == f"mock-{i}"
    proc.proc.send_signal(signal.SIGINT)
    assert proc.wait() == 0
    assert "Traceback" not in proc.stderr


def test_crash_cuts_tls_connections_in_every_state(tls, capfd):
    server = MockServer("secure-crash", ssl_context=tls.context).start()
    session = requests.Session()
    try:
        assert session.get(server.url + "/", verify=str(tls.ca_file), timeout=5).status_code == 200  # kept alive
        with connect(server.ws_url, ssl=tls.client_context(), proxy=None, open_timeout=5, ping_interval=None) as ws, \
                socket.create_connection(("127.0.0.1", server.port), timeout=5) as handshaking:  # never says hello
            ws.send("x")
            assert ws.recv(timeout=5) == "x"
            started = time.monotonic()
            server.crash()
            with pytest.raises(ConnectionClosedError):
                ws.recv(timeout=5)
            try:
                cut = handshaking.recv(16) == b""  # cut mid-handshake too, not left to its timeout
            except ConnectionResetError:
                cut = True  # still in the listener's queue when it closed: reset, as cut
            assert cut
            assert time.monotonic() - started < 2
    finally:
        server.stop()
        session.close()
    assert "Traceback" not in capfd.readouterr().err
