"""How every client command reaches the server: ``--url``; for a server that speaks TLS,
``--tls-ca`` (and ``--tls-cert``/``--tls-key`` when it asks for a client certificate); for a
server with ``--tokens``, ``--token`` (else ``$SLUICE_TOKEN``, which the clients read).

Each flag may stand at the top level or after the verb (the value given last wins), so
``sluice --tls-ca ca.pem deploy m status`` and ``sluice deploy m status --tls-ca ca.pem`` are
the same. A command names the server with ``Client(args.url, **connection(args))``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_TARGET = "127.0.0.1:8001"
_TLS_FLAGS = (
    ("--tls-ca", "tls_ca", "PEM certificates to trust the server's certificate by (TLS); "
     "without it, and without --tls-cert, the connection is plaintext"),
    ("--tls-cert", "tls_cert", "this client's PEM certificate, for a server that asks for "
     "one (mTLS; with --tls-key)"),
    ("--tls-key", "tls_key", "the private key of --tls-cert"),
)


class ConnectionFlagError(Exception):
    """The TLS flags cannot be used as given; the message names the flag."""


class _Url(argparse.Action):
    """``--url``, also noting that it was given (``url_given``): ``sluice batch`` runs in this
    process unless a server is named, and a default cannot say whether it was."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        namespace.url = values
        namespace.url_given = True


def add_connection_flags(parser: argparse.ArgumentParser, *, top_level: bool = False) -> None:
    """``--url`` and the client TLS flags on ``parser`` (SUPPRESS keeps a level where a flag is
    absent from resetting it); ``top_level`` also sets their defaults."""
    parser.add_argument("--url", action=_Url, default=argparse.SUPPRESS,
                        help=f"server to call (default $SLUICE_URL, else {DEFAULT_TARGET})")
    parser.add_argument("--token", default=argparse.SUPPRESS,  # authz
                        help="bearer token for a server with --tokens (default $SLUICE_TOKEN)")
    for flag, dest, text in _TLS_FLAGS:
        parser.add_argument(flag, dest=dest, type=Path, default=argparse.SUPPRESS,
                            metavar="FILE", help=text)
    if top_level:
        parser.set_defaults(token=None, url_given=False,
                            **{dest: None for _flag, dest, _text in _TLS_FLAGS})


def connection(args: argparse.Namespace | Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments every client takes for the server ``args`` names: ``token`` (None:
    the clients read $SLUICE_TOKEN) and ``credentials`` when a TLS flag is given. Raises
    ConnectionFlagError naming a flag that cannot be used."""
    values = args if isinstance(args, Mapping) else vars(args)
    token = {"token": values.get("token")}
    ca, cert, key = (values.get(dest) for _flag, dest, _text in _TLS_FLAGS)
    if ca is None and cert is None and key is None:
        return token
    if (cert is None) != (key is None):
        raise ConnectionFlagError("--tls-cert and --tls-key go together (a client certificate "
                                  "and its key)")
    from sluice.clients.tls import tls_credentials

    pem: dict[str, bytes | None] = {}
    for flag, dest, _text in _TLS_FLAGS:
        path = values.get(dest)
        try:
            pem[dest] = None if path is None else Path(path).read_bytes()
        except OSError as exc:
            raise ConnectionFlagError(f"{flag} {path}: cannot read it "
                                      f"({exc.strerror or exc})") from None
    return {**token,
            "credentials": tls_credentials(pem["tls_ca"], pem["tls_cert"], pem["tls_key"])}
