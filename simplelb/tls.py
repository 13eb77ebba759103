"""TLS: the certificates the front end serves, chosen by SNI, and the handshake, off the accept thread.

``Certificates`` is what is in force: one ``ssl.SSLContext`` per certificate
(TLS 1.2 and 1.3 only, the ``ssl`` module's secure defaults for ciphers, ALPN
offering ``http/1.1`` only, session tickets on so a returning client skips
the full handshake). A client's SNI picks the certificate: an exact name
first, then a ``*.`` wildcard one label deep, else the first certificate; a
client without SNI gets the first. A reload builds a whole new set from the
files with ``load_certificates`` (a mismatched or unreadable pair is a
``ConfigError``, and nothing changes) and ``TLSFrontEnd.install`` swaps it in
one assignment: new handshakes use it, open connections keep theirs.

``TLSFrontEnd.accept`` runs on the connection's own thread, never the one
that accepts connections, with a total deadline (``--client-header-timeout``):
a client that connects and says nothing, or sends a byte a second, delays
nobody else and is closed when the deadline passes. A plain HTTP request on
the TLS port gets a plain ``400`` saying so (as nginx does); anything else
that is not a TLS handshake is closed, and so is a ClientHello whose server
name is not ASCII (with an ``internal_error`` alert, as nginx's), quietly.

``backend_context`` is the client side: how backends given as
``https://host:port`` are verified (system CAs or ``--backend-ca``; SNI and
the host name checked), or not (``--backend-tls-insecure``).
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import sys
import time
import traceback
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from .errors import ConfigError
from .files import read_regular
from .sockio import PartedSSLSocket

log = logging.getLogger(__name__)

_PLAIN_HTTP_BODY = b"400 Bad Request: plain HTTP was sent to the HTTPS port\n"
PLAIN_HTTP_ON_TLS = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
    b"Connection: close\r\n\r\n%b" % (len(_PLAIN_HTTP_BODY), _PLAIN_HTTP_BODY)
)
TLS_HANDSHAKE_RECORD = 0x16  # the first byte of a TLS ClientHello


class HandshakeFailed(Exception):
    """The client did not complete a TLS handshake (timed out, spoke plain HTTP, sent garbage)."""


class _KeyHasPassphrase(Exception):
    """The private key is encrypted: OpenSSL asked for its passphrase."""


def _refuse_passphrase() -> bytes:
    # Without a password callback OpenSSL asks for the passphrase on the terminal ("Enter PEM pass
    # phrase:"), and waits: at start, or in the middle of a reload, with signals unanswered meanwhile.
    raise _KeyHasPassphrase


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for one certificate chain and key; ``ConfigError`` saying why it is unusable."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key, password=_refuse_passphrase)
    except _KeyHasPassphrase:
        raise ConfigError(f"key {key} is encrypted: simplelb takes no passphrase, give it the key without one "
                          f"(openssl pkey -in {key} -out PLAIN.key)") from None
    except FileNotFoundError as exc:
        raise ConfigError(f"cannot read {exc.filename}: no such file") from None
    except ssl.SSLError as exc:
        raise ConfigError(_unusable_pair(cert, key, exc)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {cert} or {key}: {exc.strerror or exc}") from None
    return context


def _unusable_pair(cert: str, key: str, exc: ssl.SSLError) -> str:
    """Which file is wrong, and how: OpenSSL says only "PEM lib" for either file that is not PEM."""
    if "KEY_VALUES_MISMATCH" in str(exc):
        return f"certificate {cert} with key {key}: the key does not match the certificate"
    try:
        x509.load_pem_x509_certificates(read_regular(cert))
    except (ValueError, OSError):
        return f"certificate {cert}: no PEM certificate in it"
    if exc.reason == "PEM lib" or "PEM" in str(exc):
        return f"key {key}: no PEM private key in it"
    return f"certificate {cert} with key {key}: {exc.reason or exc}"


def certificate_names(cert: str) -> list[str]:
    """The DNS names (and IP addresses) the first certificate in ``cert`` is for, lower-cased."""
    certificate = x509.load_pem_x509_certificate(read_regular(cert))
    names = []
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += [n.lower() for n in san.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names += [a.value.lower() for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return names


@dataclass(frozen=True)
class Certificates:
    """The certificates in force: contexts in order, and the names each is for."""

    contexts: tuple[ssl.SSLContext, ...]
    names: tuple[tuple[str, ...], ...]

    def choose(self, server_name: str | None) -> ssl.SSLContext:
        """SNI: an exact name, then a wildcard, else the first certificate."""
        if server_name:
            wanted = server_name.lower().rstrip(".")
            for context, names in zip(self.contexts, self.names, strict=True):
                if wanted in names:
                    return context
            parent = wanted.partition(".")[2]
            for context, names in zip(self.contexts, self.names, strict=True):
                if parent and f"*.{parent}" in names:
                    return context
        return self.contexts[0]


def load_certificates(pairs: tuple[tuple[str, str], ...]) -> Certificates:
    """Every (certificate, key) pair loaded and checked; one ``ConfigError`` listing every problem."""
    contexts, names, errors = [], [], []
    for cert, key in pairs:
        try:
            contexts.append(server_context(cert, key))
            names.append(tuple(certificate_names(cert)))
        except (ConfigError, ValueError) as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError(errors[0], errors)
    return Certificates(tuple(contexts), tuple(names))


def _is_undecodable_server_name(unraisable) -> bool:
    """Whether an unraisable exception is the ``ssl`` module failing to decode a client's SNI as ASCII."""
    exc = unraisable.exc_value
    frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
    return (isinstance(exc, UnicodeDecodeError) and isinstance(unraisable.object, bytes)
            and bool(frames) and frames[-1].name == "do_handshake" and frames[-1].filename == ssl.__file__)


def _quiet_undecodable_server_names() -> None:
    """Keep a client's non-ASCII server name (SNI) out of the error output: it is the client's mistake.

    The ``ssl`` module decodes the name as ASCII before our SNI callback runs; when that fails it
    refuses the handshake (an ``internal_error`` alert, as nginx answers a server name it rejects)
    and reports the ``UnicodeDecodeError`` through ``sys.unraisablehook``: a traceback on stderr for
    every such ClientHello. The hook is wrapped, not replaced, and only while it is not ours already
    (a test runner may have put its own in place since).
    """
    previous = sys.unraisablehook
    if getattr(previous, "simplelb_sni", False):
        return

    def hook(unraisable) -> None:
        if _is_undecodable_server_name(unraisable):
            log.debug("TLS handshake refused: the client's server name (SNI) is not ASCII: %r",
                      unraisable.object[:100])
            return
        previous(unraisable)

    hook.simplelb_sni = True
    sys.unraisablehook = hook


class TLSFrontEnd:
    def __init__(self, pairs: tuple[tuple[str, str], ...]):
        self._certificates = load_certificates(pairs)
        _quiet_undecodable_server_names()
        # The context every handshake starts with; its SNI callback switches to the chosen one.
        self._entry = self._entry_context()

    def _entry_context(self) -> ssl.SSLContext:
        entry = self._certificates.contexts[0]
        entry.sni_callback = self._on_sni
        return entry

    def _on_sni(self, tls: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        chosen = self._certificates.choose(server_name)
        if chosen is not context:
            tls.context = chosen

    def install(self, certificates: Certificates) -> None:
        """New handshakes use ``certificates`` (from ``load_certificates``); open connections keep theirs."""
        self._certificates = certificates
        self._entry = self._entry_context()

    def accept(self, sock: socket.socket, deadline: float, on_wrapped=None) -> ssl.SSLSocket:
        """The TLS side of a new connection, handshake done before ``deadline``; ``HandshakeFailed`` if not.

        ``on_wrapped(tls_socket)`` is called as soon as the socket is wrapped,
        before the handshake, so the owner can close it while it waits.
        """
        first = _peek(sock, deadline)
        if first is None:
            raise HandshakeFailed("the client closed before a TLS handshake")
        if first[0] != TLS_HANDSHAKE_RECORD:
            if first[:1].isalpha():
                sock.sendall(PLAIN_HTTP_ON_TLS)
                raise HandshakeFailed("plain HTTP on the TLS port")
            raise HandshakeFailed("not a TLS handshake")
        try:
            tls = self._entry.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as exc:  # (ssl.SSLError too) reset already: "Closed before TLS handshake with data"
            raise HandshakeFailed(f"connection failed before the TLS handshake: {exc}") from None
        if on_wrapped is not None:
            on_wrapped(tls)
        tls.setblocking(False)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                _wait(tls, deadline, readable=True)
            except ssl.SSLWantWriteError:
                _wait(tls, deadline, readable=False)
            except (ssl.SSLError, OSError) as exc:
                raise HandshakeFailed(f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}") from None
        tls.setblocking(True)
        return tls


def _wait(sock: socket.socket, deadline: float, *, readable: bool) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise HandshakeFailed("TLS handshake not completed in time")
    ready = select.select([sock], [], [], remaining) if readable else select.select([], [sock], [], remaining)
    if not any(ready):
        raise HandshakeFailed("TLS handshake not completed in time")


def _peek(sock: socket.socket, deadline: float) -> bytes | None:
    """The first byte the client sent, without taking it; None if it closed."""
    _wait(sock, deadline, readable=True)
    try:
        data = sock.recv(1, socket.MSG_PEEK)
    except OSError as exc:
        raise HandshakeFailed(f"connection failed: {exc}") from None
    return data or None


def backend_context(ca_file: str | None, insecure: bool) -> ssl.SSLContext:
    """How HTTPS backends are verified: system CAs or ``ca_file``, host names checked; or not at all."""
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["http/1.1"])
    context.sslsocket_class = PartedSSLSocket  # a backend's silence is waited out in parts (a client that left is noticed)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
