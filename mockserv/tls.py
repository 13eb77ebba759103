"""HTTPS for ``mockserv --tls``: a CA made at start, the server certificate it signs, the context.

Nothing is read from disk and nothing needs to be installed: at start a
fresh certificate authority (an EC P-256 key that never leaves memory) signs
one server certificate for ``localhost``, ``127.0.0.1`` and ``::1`` (and the
listening host, if it is another name or address). Every server of the
process shares that certificate. The CA certificate is written to a file
whose path is printed, so a client can trust it (``curl --cacert``,
``requests.get(url, verify=path)``) and nothing else, and fresh keys each
run mean a leaked file trusts nothing for long.

The certificates satisfy strict verifiers (Python 3.13's
``VERIFY_X509_STRICT``, OpenSSL's defaults): the CA is marked critical as a
CA, the server certificate is for server authentication only, and both carry
key identifiers. The server context speaks TLS 1.2 and 1.3, offers ALPN
``http/1.1`` only, and issues no TLS 1.3 session tickets (see ``_server_context``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
VALID_DAYS = 30  # long enough for any test run; a new CA is made at every start anyway
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def certificate_names(host: str) -> list[str]:
    """The names the server certificate is for: the defaults, plus ``host`` if it is a specific one."""
    names = list(DEFAULT_NAMES)
    if host not in WILDCARD_HOSTS and host not in names:
        names.append(host)
    return names


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


class CertificateAuthority:
    """A throw-away CA that signs server certificates."""

    def __init__(self, common_name: str = "mockserv test CA"):
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        public = self._key.public_key()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate a little clock skew
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, names: Iterable[str]) -> tuple[bytes, bytes]:
        """A server certificate for ``names`` (host names or IP addresses): (cert PEM, key PEM)."""
        names = list(names)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return certificate.public_bytes(serialization.Encoding.PEM), key_pem


class MockTls:
    """The TLS material of one mockserv process: a CA, its file, and the servers' context.

    ``ca_file``: where to write the CA certificate; by default a file in a
    private temporary directory that ``close()`` removes.
    """

    def __init__(self, names: Iterable[str] = DEFAULT_NAMES, ca_file: str | os.PathLike | None = None):
        self.names = list(names)
        self._workdir = Path(tempfile.mkdtemp(prefix="mockserv-tls-"))  # mode 0700: the key passes through it
        try:
            self.ca = CertificateAuthority()
            self.ca_file = Path(ca_file) if ca_file else self._workdir / "mockserv-ca.pem"
            self.ca_file.write_bytes(self.ca.pem)
            self.context = self._server_context(*self.ca.issue(self.names))
        except BaseException:
            self.close()
            raise

    def _server_context(self, cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        # No TLS 1.3 session tickets. OpenSSL sends them after the handshake, unasked, and a client
        # that reads on one thread while it writes on another (websockets' sync client: its reader
        # thread wakes on the tickets while the caller sends the upgrade request) has its SSL object
        # mid post-handshake processing as it writes: the request's SSL_write "succeeds" and nothing
        # reaches the wire, so both ends wait on each other for ever (a rare hang of test_wss_echo).
        # Nobody resumes sessions with a server whose certificate is new at every start anyway.
        context.num_tickets = 0
        cert_file, key_file = self._workdir / "server.pem", self._workdir / "server.key"
        cert_file.write_bytes(cert_pem)
        key_file.touch(mode=0o600)
        key_file.write_bytes(key_pem)
        try:
            context.load_cert_chain(cert_file, key_file)  # the ssl module loads keys from files only
        finally:
            key_file.unlink()
            cert_file.unlink()
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA only (for Python callers and tests)."""
        return ssl.create_default_context(cadata=self.ca.pem.decode("ascii"))

    def close(self) -> None:
        """Remove the temporary directory (and the CA file, if it was written there)."""
        shutil.rmtree(self._workdir, ignore_errors=True)
