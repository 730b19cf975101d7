"""Transport security settings: the certificate files a server is given (``TlsFiles``), what
they hold once read and checked (``TlsMaterial``), and the rule for which addresses may be bound
without TLS (``check_bind``). Pure settings code: the standard ``ssl`` module checks the files;
the gRPC credentials are built from them in :mod:`sluice.server.protocol.tls`.

Promises:

* ``load_tls`` reads every file once, checks it with OpenSSL (the key belongs to the
  certificate, the client CA is PEM certificates) and re-reads the files to make sure they did
  not change in between; a failure is a :class:`TlsError` naming the flag and the file and what
  is wrong, never half-loaded material.
* The HTTP context it builds (for ``/metrics``) speaks TLS 1.2 or newer and, with a client CA,
  refuses a client without a certificate that CA signed at the handshake, as gRPC does.
* Encrypted private keys are refused (no prompt on a terminal, no password in a flag).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path


class TlsError(Exception):
    """Certificate files that cannot be served; the message names the flag and the file."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the server's certificate material lives (read at start and again on SIGHUP)."""

    #: PEM certificate chain, the server's own certificate first (``--tls-cert``).
    cert: Path
    #: PEM private key of that certificate, unencrypted (``--tls-key``).
    key: Path
    #: PEM certificates of the CA(s) that sign client certificates (``--tls-client-ca``); set,
    #: a client must present a certificate they signed (mTLS). None: no client certificates.
    client_ca: Path | None = None


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The contents of one checked reading of :class:`TlsFiles`."""

    cert_chain: bytes
    key: bytes
    client_ca: bytes | None
    #: A server-side context holding the same files, for HTTP endpoints (``/metrics``).
    http_context: ssl.SSLContext


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None


def _no_password() -> bytes:
    raise TlsError("encrypted")


def _context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert, files.key, password=_no_password)
    except TlsError:
        raise TlsError(f"--tls-key {files.key}: the key is encrypted; give an unencrypted "
                       "key (readable by the server's user only)") from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise TlsError(f"--tls-key {files.key} is not the key of --tls-cert "
                           f"{files.cert}") from None
        raise TlsError(f"--tls-cert {files.cert} / --tls-key {files.key}: not a PEM "
                       f"certificate chain and its key ({exc.reason or exc})") from None
    if files.client_ca is not None:
        try:
            context.load_verify_locations(cafile=files.client_ca)
        except ssl.SSLError as exc:
            raise TlsError(f"--tls-client-ca {files.client_ca}: not PEM CA certificates "
                           f"({exc.reason or exc})") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def load_tls(files: TlsFiles) -> TlsMaterial:
    """Read and check ``files`` (blocking: call it on a thread from a loop). Raises TlsError."""
    first = _snapshot(files)
    context = _context(files)
    if _snapshot(files) != first:  # replaced while we read: what we checked may not be it
        raise TlsError(f"--tls-cert {files.cert}: the certificate files changed while they "
                       "were read; send SIGHUP again once they are in place")
    cert, key, client_ca = first
    return TlsMaterial(cert, key, client_ca, context)


def _snapshot(files: TlsFiles) -> tuple[bytes, bytes, bytes | None]:
    client_ca = None if files.client_ca is None else _read(files.client_ca, "--tls-client-ca")
    return _read(files.cert, "--tls-cert"), _read(files.key, "--tls-key"), client_ca


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address (127.0.0.0/8, ::1). An
    empty host, a wildcard (0.0.0.0, ::) and a name that does not resolve are not."""
    host = host.strip("[]")
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass  # a name
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos
    )


class BindRefused(Exception):
    """A plaintext listener on an address other machines can reach, without ``--insecure``."""


def check_bind(hosts: list[str], *, tls: bool, insecure: bool) -> str | None:
    """The bind rule of ``sluice serve``: plaintext only on loopback unless ``insecure``.

    Returns None when all is well, the warning to log when ``insecure`` lets a plaintext
    listener reach beyond this machine, and raises BindRefused (its message says which flags
    fix it) when nothing allows it."""
    if tls:
        return None
    exposed = [host or "(all addresses)" for host in dict.fromkeys(hosts) if not is_loopback(host)]
    if not exposed:
        return None
    where = ", ".join(exposed)
    if not insecure:
        raise BindRefused(
            f"refusing to serve plaintext on {where}, which other machines can reach: give "
            "--tls-cert and --tls-key (and --tls-client-ca for client certificates), or "
            "--insecure to serve without TLS anyway (e.g. behind a mesh that encrypts)")
    return (f"serving plaintext gRPC and /metrics on {where} (--insecure): anyone who can "
            "reach this address can read and change what is served")
