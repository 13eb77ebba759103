"""TLS: termination with SNI and reload, checked with requests, httpx and openssl; HTTPS backends, verified."""

import contextlib
import logging
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import requests
from cryptography import x509

from mockserv import MockServer
from simplelb.errors import ConfigError
from simplelb.tls import load_certificates

from .conftest import (
    JSON,
    RawClient,
    dripped_until_closed,
    holding,
    run_cli,
    serve_forever_ok,
    start_lb_process,
    wait_for,
)

trustme = pytest.importorskip("trustme")
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


@pytest.fixture
def pki(tmp_path):
    """A CA, and certificate files issued by it."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    def issue(name: str, *names: str) -> tuple[str, str]:
        cert = ca.issue_cert(name, *names)
        cert_file, key_file = tmp_path / f"{name.replace('*', 'star')}.crt", tmp_path / f"{name.replace('*', 'star')}.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(str(cert_file), append=True)
        cert.private_key_pem.write_to_path(str(key_file))
        return str(cert_file), str(key_file)

    return ca, str(ca_file), issue


def served_names(port: int, server_name: str | None, ca_file: str) -> list[str]:
    """The DNS names of the certificate the balancer shows for ``server_name`` (None: no SNI)."""
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    certificate = x509.load_der_x509_certificate(der)
    return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)


@pytest.fixture
def tls_lb(pki, mock_servers, balancer):
    ca, ca_file, issue = pki
    cert, key = issue("localhost", "127.0.0.1")
    (mock,) = mock_servers(1)
    lb = balancer([mock], tls_cert=cert, tls_key=key, admin="127.0.0.1:0", client_header_timeout_s=2)
    return lb, ca_file, mock


def test_https_end_to_end_with_requests_and_httpx(tls_lb, scripted, balancer, pki):
    lb, ca_file, mock = tls_lb
    assert lb.url.startswith("https://127.0.0.1:")
    response = requests.get(lb.url + "/hello", verify=ca_file, timeout=5)
    assert response.status_code == 200 and response.json()["path"] == "/hello"
    with httpx.Client(verify=ssl.create_default_context(cafile=ca_file)) as client:
        assert client.post(lb.url + "/post", content=b"x" * 100_000).json()["body_bytes"] == 100_000
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(lb.url, timeout=5)  # not trusted without the CA
    backend = scripted(serve_forever_ok)
    lb2 = balancer([backend], tls_cert=lb.config.listener.tls[0][0], tls_key=lb.config.listener.tls[0][1])
    requests.get(lb2.url, verify=ca_file, timeout=5)
    assert ("X-Forwarded-Proto", "https") in backend.received[0].headers


@needs_openssl
def test_openssl_s_client_sees_tls13_alpn_and_resumes_a_session(tls_lb, tmp_path):
    lb, ca_file, _ = tls_lb

    def s_client(*args: str) -> str:
        result = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{lb.port}", "-servername", "localhost",
             "-CAfile", ca_file, "-ign_eof", *args],
            input=b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", capture_output=True, timeout=20)
        return result.stdout.decode(errors="replace")

    session = tmp_path / "session.pem"
    first = s_client("-alpn", "http/1.1", "-sess_out", str(session))
    assert "Verify return code: 0 (ok)" in first and "ALPN protocol: http/1.1" in first and "TLSv1.3" in first
    assert "HTTP/1.1 200" in first
    second = s_client("-sess_in", str(session))
    assert "Reused, TLSv1.3" in second and "HTTP/1.1 200" in second
    h2_only = s_client("-alpn", "h2")  # not offered: no ALPN, and no hang
    assert "No ALPN negotiated" in h2_only
    old = s_client("-tls1_1")
    assert "HTTP/1.1 200" not in old  # TLS 1.2 and 1.3 only


@needs_openssl
def test_a_server_name_that_is_not_ascii_is_refused_without_a_traceback(pki, mock_servers, balancer, monkeypatch):
    # The ssl module fails to decode such an SNI before our callback and reports it as unraisable:
    # a traceback on stderr for every such ClientHello.
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    ca, ca_file, issue = pki
    cert, key = issue("localhost", "127.0.0.1")
    lb = balancer(mock_servers(1), tls_cert=cert, tls_key=key)
    result = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{lb.port}", "-servername", "ünï.example"],
                            input=b"", capture_output=True, timeout=20)
    assert b"alert internal error" in result.stderr  # refused, as nginx refuses a server name it rejects
    assert reported == []
    assert requests.get(lb.url, verify=ca_file, timeout=5).status_code == 200


def test_sni_chooses_among_three_certificates_and_a_wildcard(pki, mock_servers, balancer):
    ca, ca_file, issue = pki
    pairs = (issue("first.example"), issue("second.example"), issue("*.wild.example"))
    (mock,) = mock_servers(1)
    lb = balancer([mock], tls_cert=pairs[0][0], tls_key=pairs[0][1])
    lb.stop(grace_s=1)
    from simplelb import Config, LoadBalancer

    lb = LoadBalancer(Config.of(backends=mock.address, port=0, health_interval_s=60, tls=pairs)).start()
    try:
        assert served_names(lb.port, "second.example", ca_file) == ["second.example"]
        assert served_names(lb.port, "first.example", ca_file) == ["first.example"]
        assert served_names(lb.port, "api.wild.example", ca_file) == ["*.wild.example"]
        assert served_names(lb.port, "deep.api.wild.example", ca_file) == ["first.example"]  # one label only
        assert served_names(lb.port, "unknown.example", ca_file) == ["first.example"]
        assert served_names(lb.port, None, ca_file) == ["first.example"]  # no SNI: the first
    finally:
        lb.stop(grace_s=1)


def test_reload_swaps_certificates_and_a_bad_pair_keeps_the_old(pki, mock_servers, tmp_path, process):
    ca, ca_file, issue = pki
    cert, key = issue("localhost", "127.0.0.1")
    (mock,) = mock_servers(1)
    config = tmp_path / "lb.toml"
    config.write_text(f'backends = "{mock.address}"\nadmin = "127.0.0.1:0"\n\n[[tls]]\ncert = "{cert}"\nkey = "{key}"\n')
    proc, url, admin = start_lb_process(process, "--config", str(config), admin=True)
    port = int(url.rsplit(":", 1)[1])
    kept = requests.Session()
    assert kept.get(url, verify=ca_file, timeout=5).status_code == 200  # a keep-alive connection, kept open
    new_ca = trustme.CA()
    new_ca_file = tmp_path / "new-ca.pem"
    new_ca.cert_pem.write_to_path(str(new_ca_file))
    new = new_ca.issue_cert("localhost", "127.0.0.1", "fresh.example")
    new.cert_chain_pems[0].write_to_path(cert)
    new.private_key_pem.write_to_path(key)
    assert requests.post(admin + "/reload", headers=JSON, timeout=5).status_code == 200
    assert served_names(port, "localhost", str(new_ca_file)) == ["localhost", "fresh.example"]
    assert kept.get(url, verify=ca_file, timeout=5).status_code == 200  # the open connection kept going
    trustme.CA().issue_cert("localhost").private_key_pem.write_to_path(key)  # a key that does not match
    bad = requests.post(admin + "/reload", headers=JSON, timeout=5)
    assert bad.status_code == 400 and "does not match" in bad.json()["error"]
    assert served_names(port, "localhost", str(new_ca_file)) == ["localhost", "fresh.example"]
    kept.close()
    proc.proc.terminate()
    assert proc.wait() == 0


def test_plain_http_and_garbage_on_the_tls_port(tls_lb, caplog):
    lb, _, _ = tls_lb
    plain = RawClient(lb.port)
    response = plain.request(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert response.status == 400 and b"plain HTTP was sent to the HTTPS port" in response.body
    assert plain.is_closed()
    garbage = RawClient(lb.port)
    garbage.send(b"\x00\x01\x02 not tls at all")
    assert garbage.is_closed()
    assert "Traceback" not in caplog.text


def test_a_client_that_resets_after_the_start_of_its_handshake_leaves_no_traceback(tls_lb, caplog):
    # Reset before the handshake starts, with bytes unread: wrapping the socket raised an SSLError
    # ("Closed before TLS handshake with data in recv buffer") that reached the server's error log.
    lb, ca_file, _ = tls_lb
    caplog.set_level(logging.DEBUG, logger="simplelb.handler")
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", lb.port))
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00")  # the start of a ClientHello
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # with a reset

    def ended() -> int:  # each connection ends in one line: a failed handshake, or an unexpected error
        return sum(r.message.startswith("client 127.0.0.1:") or "unexpected error" in r.message for r in caplog.records)

    wait_for(lambda: ended() == 20, what="twenty connections to end")
    assert "unexpected error" not in caplog.text and "Traceback" not in caplog.text
    assert requests.get(lb.url, verify=ca_file, timeout=5).status_code == 200


def test_silent_clients_block_nobody_and_are_closed_at_the_deadline(tls_lb):
    lb, ca_file, _ = tls_lb
    silent = [socket.create_connection(("127.0.0.1", lb.port)) for _ in range(100)]
    half = socket.create_connection(("127.0.0.1", lb.port))
    half.sendall(b"\x16\x03\x01")  # the start of a handshake, and then nothing
    try:
        with requests.Session() as session:
            session.get(lb.url, verify=ca_file, timeout=5)  # the first connection and handshake
            times = []
            for _ in range(3):
                started = time.monotonic()
                assert session.get(lb.url, verify=ca_file, timeout=5).status_code == 200
                times.append(time.monotonic() - started)
        assert min(times) < 0.1, times
        half.settimeout(5)
        started = time.monotonic()
        assert half.recv(100) == b""  # closed at --client-header-timeout (2 s)
        assert time.monotonic() - started < 4
    finally:
        for sock in [*silent, half]:
            sock.close()


def test_redirect_listener_sends_308_to_https(pki, mock_servers, balancer):
    ca, ca_file, issue = pki
    cert, key = issue("localhost")
    (mock,) = mock_servers(1)
    lb = balancer([mock], tls_cert=cert, tls_key=key, redirect_http=0)
    plain = f"http://127.0.0.1:{lb.redirect.port}"
    response = requests.post(plain + "/a/b?c=1", data=b"kept", headers={"Host": "shop.example"},
                             allow_redirects=False, timeout=5)
    assert response.status_code == 308
    assert response.headers["Location"] == f"https://shop.example:{lb.port}/a/b?c=1"
    with_port = requests.get(plain + "/", headers={"Host": "shop.example:8080"}, allow_redirects=False, timeout=5)
    assert with_port.headers["Location"] == f"https://shop.example:{lb.port}/"
    assert RawClient(lb.redirect.port).request(b"GET / HTTP/1.0\r\n\r\n").status == 400  # no Host
    assert RawClient(lb.redirect.port).request(b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n").status == 400  # no host in it
    absolute = RawClient(lb.redirect.port).request(b"GET http://shop.example/x?y HTTP/1.1\r\nHost: a\r\n\r\n")
    assert absolute.header("Location") == f"https://shop.example:{lb.port}/x?y"  # RFC 9112 3.2.2
    secure = RawClient(lb.redirect.port).request(b"GET https://shop.example/x?y HTTP/1.1\r\nHost: a\r\n\r\n")
    assert secure.header("Location") == f"https://shop.example:{lb.port}/x?y"  # (it went to https://a/)


def test_the_redirect_listener_says_whether_it_keeps_the_connection(pki, mock_servers, balancer):
    # An HTTP/1.0 keep-alive client (ab -k) got no "Connection: keep-alive", took the answer to end at
    # the close, and waited the listener's 10 s for it; a connection closed for an unread body said
    # nothing of it either.
    ca, ca_file, issue = pki
    cert, key = issue("localhost")
    lb = balancer(mock_servers(1), tls_cert=cert, tls_key=key, redirect_http=0)
    client = RawClient(lb.redirect.port)
    for _ in range(2):
        response = client.request(b"GET /a HTTP/1.0\r\nHost: shop.example\r\nConnection: keep-alive\r\n\r\n")
        assert response.status == 308 and response.header("Connection") == "keep-alive"
    with_body = RawClient(lb.redirect.port).request(b"POST /a HTTP/1.1\r\nHost: shop.example\r\n"
                                                     b"Content-Length: 4\r\n\r\nbody")
    assert with_body.status == 308 and with_body.header("Connection") == "close"
    plain = RawClient(lb.redirect.port).request(b"GET /a HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    assert plain.status == 308 and plain.header("Connection") is None  # HTTP/1.1: kept, as the default is


def test_a_redirect_target_with_control_characters_is_400_and_logged_escaped(pki, mock_servers, balancer, caplog):
    # http.server takes such a request line: its bytes went raw into the Location field (a control
    # character in a header), and raw into the debug log (where they drove the terminal showing it).
    ca, ca_file, issue = pki
    cert, key = issue("localhost")
    lb = balancer(mock_servers(1), tls_cert=cert, tls_key=key, redirect_http=0)
    caplog.set_level(logging.DEBUG, logger="simplelb.redirect")
    client = RawClient(lb.redirect.port)
    for target in (b"/\x1b[2J\x00", b"/caf\xe9"):  # (the traffic port refuses both: visible ASCII only)
        assert client.request(b"GET %b HTTP/1.1\r\nHost: a\r\n\r\n" % target).status == 400
    wait_for(lambda: caplog.text.count(" 400 ") == 2, what="the requests logged")
    assert "\x1b" not in caplog.text and "\x00" not in caplog.text
    assert "GET /\\x1b[2J\\x00 HTTP/1.1" in caplog.text


def test_a_redirect_head_dripped_slowly_is_cut_off_at_the_deadline(pki, mock_servers, balancer, monkeypatch):
    from simplelb import redirect

    monkeypatch.setattr(redirect, "HEAD_DEADLINE_S", 0.5)
    ca, ca_file, issue = pki
    cert, key = issue("localhost")
    lb = balancer(mock_servers(1), tls_cert=cert, tls_key=key, redirect_http=0)
    # (It used to be held for as long as the client dripped.)
    assert dripped_until_closed(lb.redirect.port, b"GET / HTTP/1.1\r\n", b"X-Drip: 1\r\n") < 3


def test_a_bad_certificate_pair_at_start_is_one_line(pki):
    ca, ca_file, issue = pki
    cert, _ = issue("a.example")
    _, other_key = issue("b.example")
    result = run_cli("-m", "simplelb", "--backends", "127.0.0.1:9", "--tls-cert", cert, "--tls-key", other_key)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "the key does not match the certificate" in result.stderr
    only = run_cli("-m", "simplelb", "--backends", "127.0.0.1:9", "--tls-cert", cert)
    assert only.returncode == 2 and "--tls-cert and --tls-key go together" in only.stderr


def test_an_encrypted_key_is_refused_at_once_and_never_asks_for_its_passphrase(pki, tmp_path):
    # OpenSSL asked for the passphrase on the terminal and waited there: at start, or in a reload
    # (SIGHUP, /reload) with the change lock held and signals unanswered.
    from cryptography.hazmat.primitives import serialization

    ca, ca_file, issue = pki
    cert, key = issue("localhost")
    plain = serialization.load_pem_private_key(open(key, "rb").read(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(plain.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.BestAvailableEncryption(b"secret")))
    result = subprocess.run(  # (a session of its own: a terminal of ours is not its terminal)
        [sys.executable, "-m", "simplelb", "--backends", "127.0.0.1:9", "--tls-cert", cert,
         "--tls-key", str(encrypted), "--check"],
        capture_output=True, text=True, timeout=20, start_new_session=True, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"key {encrypted} is encrypted" in result.stderr and "pass phrase" not in result.stderr + result.stdout


@pytest.mark.parametrize("broken", ["cert", "key"])
def test_a_file_that_is_not_pem_is_named_with_what_it_lacks(pki, tmp_path, broken):
    ca, ca_file, issue = pki
    cert, key = issue("localhost")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM at all\n")
    pair = (str(garbage), key) if broken == "cert" else (cert, str(garbage))
    with pytest.raises(ConfigError) as refused:
        load_certificates((pair,))
    # (OpenSSL says "PEM lib" for either, and the message named both files.)
    expected = f"certificate {garbage}: no PEM certificate in it" if broken == "cert" else f"key {garbage}: no PEM private key in it"
    assert str(refused.value) == expected


# --- HTTPS backends ----------------------------------------------------------------------


@pytest.fixture
def https_backend(pki):
    started = []

    def make(name: str, ca=None):
        authority = ca or pki[0]
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        authority.issue_cert(name).configure_cert(context)
        server = MockServer(f"secure-{len(started) + 1}", ssl_context=context).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def test_a_reload_reads_the_backend_ca_file_again(pki, https_backend, balancer, tmp_path):
    ca, _, _ = pki
    renewed = trustme.CA()
    server = https_backend("127.0.0.1", renewed)  # signed by a CA the file does not hold yet
    ca_path = tmp_path / "backends-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    lb = balancer(f"https://127.0.0.1:{server.port}", backend_ca=str(ca_path), retries=0, health_interval_s=0.2)
    assert requests.get(lb.url, timeout=5).status_code in (502, 503)
    renewed.cert_pem.write_to_path(str(ca_path))  # the file rewritten in place, under the same name
    lb.control.reload()
    wait_for(lambda: requests.get(lb.url, timeout=5).status_code == 200, what="the backend trusted after the reload")


def test_an_https_backend_with_a_good_certificate_is_pooled_and_probed(pki, https_backend, balancer):
    ca, ca_file, _ = pki
    server = https_backend("127.0.0.1")
    lb = balancer(f"https://127.0.0.1:{server.port}", backend_ca=ca_file, health_interval_s=0.2, admin="127.0.0.1:0")
    with requests.Session() as session:
        assert [session.get(lb.url + f"/{n}", timeout=5).json()["name"] for n in range(3)] == [server.name] * 3
    def entry() -> dict:
        (backend,) = requests.get(lb.admin.url + "/backends", timeout=5).json()
        return backend

    # (The first probe may still be under way on a loaded machine: its verdict is awaited, not assumed.)
    wait_for(lambda: entry()["last_probe"] == "HTTP 200", what="a passed probe over TLS")
    assert entry()["address"] == f"https://127.0.0.1:{server.port}" and entry()["state"] == "up"


@pytest.mark.parametrize("case", ["wrong name", "unknown CA"])
def test_an_https_backend_that_fails_verification_is_502_and_a_failure(pki, https_backend, balancer, caplog, case):
    ca, ca_file, _ = pki
    server = https_backend("elsewhere.example") if case == "wrong name" else https_backend("127.0.0.1", trustme.CA())
    lb = balancer(f"https://127.0.0.1:{server.port}", backend_ca=ca_file, retries=0, admin="127.0.0.1:0")
    with caplog.at_level("WARNING"):
        response = requests.get(lb.url, timeout=5)
    assert response.status_code == 502
    expected = "address mismatch" if case == "wrong name" else "unable to get local issuer certificate"
    assert response.text == "502 Bad Gateway: could not connect to the backend (TLS certificate not accepted)\n"
    assert expected in caplog.text  # the particulars, which may name the backend's address, are logged only
    metrics = requests.get(lb.admin.url + "/metrics", timeout=5).text
    assert 'reason="connect"} 1.0' in metrics
    wait_for(lambda: "TLS certificate not accepted" in lb.control.status()["backends"][0]["last_probe"],
             what="the probe to say so too")


def test_backend_tls_insecure_accepts_any_certificate_and_says_so(pki, https_backend, balancer, caplog):
    server = https_backend("127.0.0.1", trustme.CA())
    with caplog.at_level("WARNING"):
        lb = balancer(f"https://127.0.0.1:{server.port}", backend_tls_insecure=True)
    assert "NOT verified" in caplog.text
    assert requests.get(lb.url, timeout=5).json()["name"] == server.name


def test_a_connection_reused_across_requests_to_an_https_backend(pki, balancer):
    ca, ca_file, _ = pki
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    accepted = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve():
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            accepted.append(raw)
            threading.Thread(target=_answer_all, args=(context.wrap_socket(raw, server_side=True),), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        lb = balancer(f"https://127.0.0.1:{listener.getsockname()[1]}", backend_ca=ca_file)
        wait_for(lambda: len(accepted) >= 1, what="the start-up probe")
        probes = len(accepted)
        with requests.Session() as session:
            assert all(session.get(lb.url, timeout=5).text == "ok" for _ in range(5))
        assert len(accepted) == probes + 1  # five requests, one pooled TLS connection
    finally:
        listener.close()


def _answer_all(tls: ssl.SSLSocket) -> None:
    reader = tls.makefile("rb")
    try:
        while (line := reader.readline()) and line.strip():
            is_probe = b"/health" in line
            while reader.readline() not in (b"\r\n", b""):
                pass
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + (b"Connection: close\r\n" if is_probe else b"")
                        + b"\r\nok")
            if is_probe:
                return
    except OSError:
        pass
    finally:
        tls.close()


def test_two_workers_serve_tls_and_both_take_new_certificates_on_sighup(pki, mock_servers, tmp_path, process):
    import signal

    ca, ca_file, issue = pki
    cert, key = issue("localhost", "127.0.0.1")
    (mock,) = mock_servers(1)
    proc, url, admin = start_lb_process(process, "--backends", mock.address, "--tls-cert", cert, "--tls-key", key,
                                        "--workers", "2", "--admin", "127.0.0.1:0")
    port = int(url.rsplit(":", 1)[1])
    assert all(requests.get(url, verify=ca_file, timeout=5).status_code == 200 for _ in range(6))
    fresh = ca.issue_cert("localhost", "127.0.0.1", "rotated.example")
    fresh.cert_chain_pems[0].write_to_path(cert)
    fresh.private_key_pem.write_to_path(key)
    proc.proc.send_signal(signal.SIGHUP)
    # (The generation is the parent's as soon as it sends it; "applied" once every worker runs it.)
    wait_for(lambda: (lambda s: s["generation"] == 2 and s["applied"])(requests.get(admin + "/status", timeout=5).json()),
             what="the reload in every worker")
    # New connections land on either worker: every one shows the new certificate.
    assert all("rotated.example" in served_names(port, "localhost", ca_file) for _ in range(12))
    proc.proc.terminate()
    assert proc.wait(30) == 0


def test_two_workers_serve_https_backends_given_by_address_alone(pki, https_backend, process):
    import signal

    _, ca_file, _ = pki
    first, second = https_backend("127.0.0.1"), https_backend("127.0.0.1")
    # Named by their address, https://127.0.0.1:PORT: each worker reads that back as the default name.
    proc, url, admin = start_lb_process(process, "--backends", f"https://127.0.0.1:{first.port}",
                                        "--backend-ca", ca_file, "--workers", "2", "--admin", "127.0.0.1:0")
    assert all(requests.get(url, timeout=5).status_code == 200 for _ in range(6))
    added = requests.post(admin + "/backends", json={"address": f"https://127.0.0.1:{second.port}"}, timeout=5)
    assert added.status_code == 201, added.text
    assert added.json()["name"] == f"https://127.0.0.1:{second.port}"
    wait_for(lambda: requests.get(admin + "/status", timeout=5).json()["applied"], what="the change in every worker")
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0 and "Traceback" not in proc.stderr


def test_a_replaced_worker_serves_the_certificate_a_reload_named(pki, mock_servers, tmp_path, process):
    import signal

    ca, ca_file, issue = pki
    old_cert, old_key = issue("localhost", "127.0.0.1")
    new_cert, new_key = issue("127.0.0.1", "renamed.example")  # other files, named by the reloaded file
    (mock,) = mock_servers(1)
    config = tmp_path / "lb.toml"
    text = f'backends = "{mock.address}"\nworkers = 2\nadmin = "127.0.0.1:0"\ntls-cert = "{{}}"\ntls-key = "{{}}"\n'
    config.write_text(text.format(old_cert, old_key))
    proc, url, admin = start_lb_process(process, "--config", str(config), admin=True)
    port = int(url.rsplit(":", 1)[1])
    config.write_text(text.format(new_cert, new_key))
    proc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: requests.get(admin + "/status", timeout=5).json()["generation"] == 2, what="the reload")
    victim = requests.get(admin + "/status", timeout=5).json()["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in [w["pid"] for w in requests.get(admin + "/status", timeout=5).json()["workers"]]
             and requests.get(admin + "/status", timeout=5).json()["applied"], what="a replacement worker")
    # Both workers, the replacement too, show the reloaded certificate, never the first one.
    assert all("renamed.example" in served_names(port, "127.0.0.1", ca_file) for _ in range(12))
    proc.proc.terminate()
    assert proc.wait(30) == 0


def test_a_worker_that_cannot_start_says_why_in_a_line_and_the_fleet_says_it_is_short(pki, mock_servers, tmp_path,
                                                                                      process):
    import signal

    _, ca_file, _ = pki
    ca_copy = tmp_path / "backend-ca.pem"
    ca_copy.write_bytes(open(ca_file, "rb").read())
    (mock,) = mock_servers(1)
    proc, url, admin = start_lb_process(process, "--backends", mock.address, "--backend-ca", str(ca_copy),
                                        "--workers", "2", "--admin", "127.0.0.1:0")
    ca_copy.write_text("garbage\n")  # broken after the start: a replacement reads it again
    victim = requests.get(admin + "/status", timeout=5).json()["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    proc.wait_for_output("cannot start", 10)
    status = requests.get(admin + "/status", timeout=5).json()
    assert len(status["workers"]) == 1 and status["applied"] is False  # one short of the two asked for
    # The other serves every request meanwhile: a worker that cannot start never takes a connection.
    assert all(requests.get(url, timeout=5).status_code == 200 for _ in range(30))
    ca_copy.write_bytes(open(ca_file, "rb").read())
    wait_for(lambda: requests.get(admin + "/status", timeout=5).json()["applied"], 15, "the replacement to start")
    assert "Traceback" not in proc.stderr
    proc.proc.terminate()
    assert proc.wait(30) == 0


def test_a_tunnel_half_closed_over_tls_keeps_the_other_direction_intact(pki, scripted, balancer):
    def script(conn):
        if conn.read_request().target != "/ws":  # a health probe
            conn.respond()
            return
        conn.send(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nBYE")
        conn.sock.shutdown(socket.SHUT_WR)  # done talking; still listening
        received = b""
        while data := conn.sock.recv(4096):
            received += data
        conn.backend.after_half_close = received

    backend = scripted(script)
    ca, ca_file, issue = pki
    cert, key = issue("localhost", "127.0.0.1")
    lb = balancer([backend], tls_cert=cert, tls_key=key, health_interval_s=60)
    context = ssl.create_default_context(cafile=ca_file)
    context.options |= ssl.OP_IGNORE_UNEXPECTED_EOF  # the half-close arrives as a TCP FIN
    with context.wrap_socket(socket.create_connection(("127.0.0.1", lb.port), timeout=5),
                             server_hostname="localhost") as client:
        client.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        answer = b""
        while data := client.recv(4096):
            answer += data
        assert answer.endswith(b"\r\n\r\nBYE")
        client.sendall(b"FIRST;")
        client.sendall(b"SECOND;")
    # The balancer used to drop its TLS state with the half-close and pass on raw TLS records.
    wait_for(lambda: hasattr(backend, "after_half_close"), what="the client's bytes and EOF at the backend")
    assert backend.after_half_close == b"FIRST;SECOND;"


def test_a_tls_client_over_max_clients_is_closed_not_sent_plain_text(pki, scripted, balancer):
    release = threading.Event()

    ca, ca_file, issue = pki
    cert, key = issue("localhost", "127.0.0.1")
    lb = balancer([scripted(holding(release, "/slow"))], tls_cert=cert, tls_key=key, max_clients=2, health_interval_s=60)
    context = ssl.create_default_context(cafile=ca_file)
    busy = [context.wrap_socket(socket.create_connection(("127.0.0.1", lb.port), timeout=5),
                                server_hostname="localhost") for _ in range(2)]
    try:
        for sock in busy:  # both connections forwarding: nothing to evict
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: lb.snapshot()["connections"]["busy"] == 2, what="two busy connections")
        with pytest.raises(OSError) as refused:
            with context.wrap_socket(socket.create_connection(("127.0.0.1", lb.port), timeout=5),
                                     server_hostname="localhost") as third:
                third.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert third.recv(100) == b""
                raise ConnectionResetError("closed")  # (closed after the handshake: refused too)
        # A plain "HTTP/1.1 503" in reply to a ClientHello reads as a bad TLS record.
        assert "WRONG_VERSION_NUMBER" not in str(refused.value) and "wrong version number" not in str(refused.value)
    finally:
        release.set()
        for sock in busy:
            sock.close()


def test_a_connection_still_in_its_handshake_does_not_hold_up_a_stop(pki, mock_servers, balancer):
    ca, ca_file, issue = pki
    cert, key = issue("localhost")
    lb = balancer(mock_servers(1), tls_cert=cert, tls_key=key)
    with socket.create_connection(("127.0.0.1", lb.port), timeout=5):  # and no ClientHello
        wait_for(lambda: sum(lb.snapshot()["connections"].values()) == 1, what="the connection to be taken")
        started = time.monotonic()
        lb.stop(grace_s=5)
        # It has asked nothing, as an idle keep-alive connection has not: closed at once, as those are.
        assert time.monotonic() - started < 2


def test_a_closed_tls_connection_ends_with_close_notify(tls_lb):
    lb, ca_file, _ = tls_lb
    context = ssl.create_default_context(cafile=ca_file)
    with context.wrap_socket(socket.create_connection(("127.0.0.1", lb.port), timeout=5),
                             server_hostname="localhost", suppress_ragged_eofs=False) as client:  # strict
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while data := client.recv(4096):  # SSLEOFError here if the balancer just closed the socket
            answer += data
    assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer


def test_bytes_past_a_response_in_the_same_tls_record_never_reach_the_next_client(pki, balancer):
    # Over TLS, what follows a response in its record is decrypted into the socket, where a check of
    # the raw socket does not see it: reused, the connection would hand "INJECT" to the next client.
    ca, ca_file, _ = pki
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    listener = socket.create_server(("127.0.0.1", 0))
    connections = []

    def serve(sock):
        with sock, sock.makefile("rb") as stream:
            while request_line := stream.readline():
                while stream.readline() not in (b"\r\n", b""):
                    pass  # the rest of the head
                if b" /poison " in request_line:  # the head, then one record: its body and a response unasked
                    sock.sendall(b"HTTP/1.1 200 X\r\nContent-Length: 2\r\n\r\n")
                    sock.sendall(b"okHTTP/1.1 200 X\r\nContent-Length: 6\r\n\r\nINJECT")
                else:
                    sock.sendall(b"HTTP/1.1 200 X\r\nContent-Length: 6\r\n\r\nnormal")

    def accept():
        with contextlib.suppress(OSError):
            while True:
                sock = context.wrap_socket(listener.accept()[0], server_side=True)
                connections.append(sock)
                threading.Thread(target=serve, args=(sock,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        lb = balancer(f"https://127.0.0.1:{listener.getsockname()[1]}", backend_ca=ca_file, retries=0)
        assert requests.get(lb.url + "/poison", timeout=5).text == "ok"
        assert requests.get(lb.url + "/victim", timeout=5).text == "normal"
    finally:
        listener.close()
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.close()
