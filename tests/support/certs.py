"""Throwaway certificate authorities and certificates, made at test time (never committed).

    ca = CertificateAuthority.create(tmp_path / "ca", "test CA")
    server = ca.issue("server")                  # for 127.0.0.1, ::1 and localhost
    client = ca.issue("alice", client=True)      # a client certificate (mTLS)
    server.cert, server.key, ca.cert             # PEM files under the CA's directory

Keys are ECDSA P-256 (fast to make; gRPC and OpenSSL take them). Each certificate gets a
random serial (``Issued.serial``) so a test can tell which certificate a server presented
(:func:`presented_serial`). Uses the ``cryptography`` package (the ``test`` extra).
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, *, private: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


@dataclass(frozen=True)
class Issued:
    """A certificate and its key as PEM files, and its serial number."""

    cert: Path
    key: Path
    serial: int


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA whose certificate is ``cert`` (PEM), issuing into ``directory``."""

    directory: Path
    cert: Path
    _key: ec.EllipticCurvePrivateKey
    _certificate: x509.Certificate

    @classmethod
    def create(cls, directory: Path, name: str = "Sluice test CA") -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256())
        )
        cert = _write(directory / "ca.pem", certificate.public_bytes(serialization.Encoding.PEM))
        return cls(directory, cert, key, certificate)

    def issue(
        self, name: str, *, client: bool = False, hosts: tuple[str, ...] = LOOPBACK_NAMES,
        file_stem: str | None = None,
    ) -> Issued:
        """A certificate for ``name`` (its common name) signed by this CA: a server's for
        ``hosts`` (subject alternative names), or with ``client`` a client's. Written as
        ``<file_stem or name>.pem`` and ``.key`` (mode 0600) in the CA's directory."""
        key = ec.generate_private_key(ec.SECP256R1())
        serial = secrets.randbits(63) | 1
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._certificate.subject).public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if not client:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        stem = file_stem or name
        return Issued(
            _write(self.directory / f"{stem}.pem",
                   certificate.public_bytes(serialization.Encoding.PEM)),
            _write(self.directory / f"{stem}.key", _key_pem(key), private=True),
            serial,
        )


def presented_serial(
    address: str, ca: Path, client: Issued | None = None, timeout_s: float = 10.0
) -> int:
    """The serial number of the certificate the TLS server at ``address`` (HOST:PORT) presents
    to a new connection, checked against ``ca`` (offering ``client``'s certificate when given).
    A fresh TCP connection each time: no channel or session is reused."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as raw, \
            context.wrap_socket(raw, server_hostname=host.strip("[]")) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def session_accepted(address: str, ca: Path, client: Issued | None = None,
                     timeout_s: float = 10.0) -> bool:
    """Whether the gRPC server at ``address`` accepts a new TLS session from a client offering
    ``client``'s certificate (None: none): it answers the HTTP/2 preface with its SETTINGS.
    A refusal shows as an alert or a closed connection, during the handshake or (TLS 1.3, where
    the server checks the client's certificate after the client finished) at the first read."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as raw, \
                context.wrap_socket(raw, server_hostname=host.strip("[]")) as tls:
            # the HTTP/2 client preface, then an empty SETTINGS frame
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            return len(tls.recv(9)) > 0
    except (ssl.SSLError, ConnectionError):
        return False
