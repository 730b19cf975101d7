"""``sluice repo index | load MODEL | unload MODEL``: the model repository of a running server,
through RepositoryIndex, RepositoryModelLoad and RepositoryModelUnload (``clients.Client``).

``index`` prints one row per model version (name, version, state, reason), ``load`` and
``unload`` one line. Errors are one line: exit status 1 when the server refuses (no such model,
a load that fails), 2 for a usage error found before any call (a malformed model name). Loads
and unloads are not audited, so no command here takes ``--reason`` or ``--caller``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from sluice.server.cli_connect import connection  # transport security (issue 14)

#: Seconds a load or unload may take before the command gives up (a load builds and warms
#: every version; the server finishes it anyway).
LOAD_TIMEOUT_S = 300.0


def add_repo_command(sub: Any, add_url: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``sluice repo ...`` on the top-level subparsers ``sub``."""
    repo = sub.add_parser(
        "repo", help="list, load and unload the models of a running server",
        description="The model repository of a running server: which model versions it serves "
        "(index), and loading (or reloading) and unloading a model. Under --workers N a load or "
        "unload reaches one worker.",
    )
    add_url(repo)
    action = repo.add_subparsers(dest="repo_action", required=True, metavar="ACTION")
    index = action.add_parser("index", help="every model version: state and reason")
    add_url(index)
    index.add_argument("--ready", action="store_true", help="only the versions being served")
    index.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for name, what in (("load", "load, or reload, every version its version_policy selects"),
                       ("unload", "stop serving every version (in-flight requests finish)")):
        change = action.add_parser(name, help=what)
        add_url(change)
        change.add_argument("model")
        change.add_argument("--timeout", type=float, default=LOAD_TIMEOUT_S, metavar="SECONDS",
                            help=f"give up waiting after this long (default {LOAD_TIMEOUT_S:g})")


def run_repo(args: argparse.Namespace) -> int:
    from sluice.clients import Client, SluiceClientError
    from sluice.server.config.model import check_model_name
    from sluice.server.errors import SluiceError

    if args.repo_action != "index":
        try:
            check_model_name(args.model)
        except SluiceError as exc:
            print(f"sluice repo {args.repo_action}: {exc.message}", file=sys.stderr)
            return 2
    try:
        with Client(args.url, **connection(args)) as client:
            if args.repo_action == "index":
                rows = client.repository_index(ready_only=args.ready, timeout=10.0)
            elif args.repo_action == "load":
                client.load_model(args.model, timeout=args.timeout)
                rows = client.repository_index(ready_only=True, timeout=10.0)
            else:
                client.unload_model(args.model, timeout=args.timeout)
    except SluiceClientError as exc:
        print(f"sluice repo {args.repo_action}: {exc}", file=sys.stderr)
        return 1
    if args.repo_action == "unload":
        print(f"model '{args.model}' unloaded")
    elif args.repo_action == "load":
        versions = [row["version"] for row in rows if row["name"] == args.model]
        print(f"model '{args.model}' loaded: version{'s' if len(versions) > 1 else ''} "
              f"{', '.join(versions)} ready")
    elif args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(index_table(rows))
    return 0


def index_table(rows: list[dict[str, str]]) -> str:
    """Columns model, version, state, reason, each as wide as its longest entry."""
    columns = ("name", "version", "state", "reason")
    header = {"name": "model", "version": "version", "state": "state", "reason": "reason"}
    widths = {c: max([len(header[c]), *(len(row[c]) for row in rows)]) for c in columns[:-1]}
    lines = []
    for row in [header, *rows]:
        cells = [f"{row[c] or '-':<{widths[c]}}" for c in columns[:-1]]
        lines.append("  ".join([*cells, row["reason"]]).rstrip())
    return "\n".join(lines)
