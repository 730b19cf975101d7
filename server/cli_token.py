"""``sluice token``: manage the tokens file a server reads with ``sluice serve --tokens FILE``.

    sluice token create NAME --scopes infer,metadata --tokens FILE [--rate R [--burst B]]
    sluice token list --tokens FILE [--json]
    sluice token revoke NAME --tokens FILE
    sluice token cert COMMON_NAME --scopes infer --tokens FILE [--rate R [--burst B]]

``create`` prints the new token once (only its salted hash is written); a running server picks
up every change within seconds (it watches the file).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path
from typing import Any

from sluice.server.auth import tokens
from sluice.server.auth.tokens import SCOPES, TokenFileError
from sluice.server.auth.verifier import TokenVerifier
from sluice.server.metrics_http import MetricsCheck, metrics_auth


def _scopes(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def add_token_command(sub: Any) -> None:
    token = sub.add_parser(
        "token", help="create, list or revoke bearer tokens (sluice serve --tokens FILE)",
        description="Manage the tokens file: bearer tokens (stored as salted scrypt hashes) and "
        "mTLS certificate common names, each with scopes "
        f"({', '.join(SCOPES)}) and an optional request quota.",
    )
    verbs = token.add_subparsers(dest="token_command", required=True, metavar="VERB")
    create = verbs.add_parser("create", help="add a token and print it once")
    create.add_argument("name", help="who the token is for (audit lines name it)")
    cert = verbs.add_parser("cert", help="grant scopes to mTLS clients by certificate common name")
    cert.add_argument("name", metavar="COMMON_NAME")
    for verb in (create, cert):
        verb.add_argument("--scopes", type=_scopes, required=True,
                          help=f"comma-separated, from {', '.join(SCOPES)}")
        verb.add_argument("--rate", type=float, default=None, metavar="PER_SECOND",
                          help="request quota: requests per second on average (default: none)")
        verb.add_argument("--burst", type=int, default=None, metavar="N",
                          help="request quota: requests at once (default: one second's worth)")
    listing = verbs.add_parser("list", help="names, scopes and quotas (never a secret)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    revoke = verbs.add_parser("revoke", help="remove a token or certificate mapping by name")
    revoke.add_argument("name")
    for verb in (create, cert, listing, revoke):
        verb.add_argument("--tokens", type=Path, required=True, metavar="FILE",
                          help="the tokens file (created by the first create)")


def run_token(args: argparse.Namespace) -> int:
    try:
        if args.token_command in ("create", "cert"):
            quota = tokens.make_quota(args.rate, args.burst)
            if args.token_command == "cert":
                tokens.map_certificate(args.tokens, args.name, args.scopes, quota)
                print(f"certificate '{args.name}': scopes {','.join(sorted(args.scopes))}")
                return 0
            secret = tokens.create_token(args.tokens, args.name, args.scopes, quota)
            print(secret)
            print(f"(token '{args.name}', scopes {','.join(sorted(args.scopes))}; shown once: "
                  "only its hash is kept)", file=sys.stderr)
            return 0
        if args.token_command == "revoke":
            tokens.revoke(args.tokens, args.name)
            print(f"revoked '{args.name}'")
            return 0
        return _list(tokens.read(args.tokens), args.json)
    except TokenFileError as exc:
        print(f"sluice token {args.token_command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sluice token {args.token_command}: {args.tokens}: {exc.strerror}",
              file=sys.stderr)
        return 1


def _list(file: tokens.TokenFile, as_json: bool) -> int:
    rows = [{"kind": "token", "name": t.name, "scopes": sorted(t.scopes), "created": t.created,
             "rate_per_s": t.quota.rate_per_s if t.quota else None,
             "burst": t.quota.burst if t.quota else None} for t in file.tokens]
    rows += [{"kind": "certificate", "name": c.common_name, "scopes": sorted(c.scopes),
              "created": "", "rate_per_s": c.quota.rate_per_s if c.quota else None,
              "burst": c.quota.burst if c.quota else None} for c in file.certificates]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max([len("name"), *(len(r["name"]) for r in rows)]) + 2
    print(f"{'kind':<13}{'name':<{width}}{'scopes':<28}{'quota':<22}created")
    for r in rows:
        quota = "-" if r["rate_per_s"] is None else f"{r['rate_per_s']:g}/s burst {r['burst']}"
        print(f"{r['kind']:<13}{r['name']:<{width}}{','.join(r['scopes']):<28}{quota:<22}"
              f"{r['created']}")
    return 0


def supervisor_access(path: Path | None) -> tuple[MetricsCheck | None, str | None]:
    """For ``serve --workers N --tokens FILE``: who may read the merged /metrics, and a fresh
    random credential the supervisor scrapes its workers with; (None, None) without tokens.
    Raises TokenFileError or OSError when the file is unusable."""
    if path is None:
        return None, None
    return metrics_auth(TokenVerifier(path)), secrets.token_urlsafe(32)
