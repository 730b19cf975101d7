"""``sluice deploy MODEL ...`` and ``sluice shadow report MODEL``: the Admin service from the
command line (parsing and running; :mod:`sluice.server.cli` registers them)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from sluice.server.cli_connect import connection  # transport security (issue 14)


def add_admin_commands(sub: Any, add_url: Callable[[argparse.ArgumentParser], None]) -> None:
    """``sluice deploy MODEL ...`` and ``sluice shadow report MODEL`` (the Admin service)."""
    reading = argparse.ArgumentParser(add_help=False)  # options of the commands that only read
    add_url(reading)
    reading.add_argument("--json", action="store_true", help="print JSON instead of text")
    common = argparse.ArgumentParser(add_help=False, parents=[reading])  # ... and that change
    common.add_argument("--caller", default=None,
                        help="identity for the audit log (default: your user name)")
    common.add_argument("--reason", default="", help="why, recorded in the audit log")

    deploy = sub.add_parser(
        "deploy", help="show or change how a model's versions take traffic",
        description="Aliases, weighted routes, blue-green switch, rollback, shadow and canary "
        "for MODEL on a running server. Every change prints the new deployment.",
    )
    add_url(deploy)
    deploy.add_argument("model")
    action = deploy.add_subparsers(dest="action", required=True, metavar="ACTION")
    action.add_parser("status", parents=[reading], help="aliases, routes, shadows, canary, arms")
    routes = action.add_parser("routes", parents=[common],
                               help="weighted routes, e.g. 1=90 2=10 or stable=90 candidate=10")
    routes.add_argument("weights", nargs="+", metavar="ARM=WEIGHT")
    alias = action.add_parser("alias", parents=[common],
                              help="point an alias at a version (NAME= removes it)")
    alias.add_argument("assignment", metavar="NAME=VERSION")
    switch = action.add_parser("switch", parents=[common],
                               help="blue-green: all traffic to a version or alias")
    switch.add_argument("target", metavar="VERSION_OR_ALIAS")
    action.add_parser("rollback", parents=[common], help="undo the last change")

    shadow = action.add_parser("shadow", help="mirror live traffic to a version")
    shadow_action = shadow.add_subparsers(dest="shadow_action", required=True, metavar="ACTION")
    start = shadow_action.add_parser("start", parents=[common], help="start mirroring")
    start.add_argument("version", type=int)
    start.add_argument("--sample", type=float, default=None,
                       help="fraction of live requests mirrored, in (0, 1] (default 1)")
    stop = shadow_action.add_parser("stop", parents=[common], help="stop mirroring")
    stop.add_argument("version", type=int, nargs="?", default=None,
                      help="the shadow version (default: all)")

    canary = action.add_parser("canary", help="progressive delivery with automatic gates")
    canary_action = canary.add_subparsers(dest="canary_action", required=True, metavar="ACTION")
    begin = canary_action.add_parser("start", parents=[common], help="start a canary")
    begin.add_argument("version", type=int, help="the candidate version")
    begin.add_argument("--steps", type=_percent_list, default=(),
                       help="candidate traffic per step in percent (default 5,25,50,100)")
    begin.add_argument("--interval", type=float, default=None, metavar="SECONDS",
                       help="seconds per step (default 60)")
    begin.add_argument("--max-error-rate", type=float, default=None,
                       help="highest candidate error rate per step (default 0.01)")
    begin.add_argument("--max-p99-ratio", type=float, default=None,
                       help="highest candidate p99 / stable p99 (default 1.5)")
    begin.add_argument("--min-agreement", type=float, default=None,
                       help="lowest shadow agreement rate (default: not checked)")
    begin.add_argument("--min-requests", type=int, default=None,
                       help="candidate requests a step needs before it is judged (default 20)")
    # feedback + quality: the accuracy gates
    begin.add_argument("--min-accuracy", type=float, default=None,
                       help="lowest candidate accuracy on its labelled rows (default: not "
                       "checked)")
    begin.add_argument("--max-accuracy-drop", type=float, default=None,
                       help="highest stable minus candidate accuracy (default: not checked)")
    begin.add_argument("--min-labels", type=int, default=None,
                       help="labelled rows each arm needs before the accuracy gates judge "
                       "(default 20)")
    canary_action.add_parser("abort", parents=[common], help="stop it; all traffic to stable")

    report = sub.add_parser(
        "shadow", help="shadow comparison reports",
        description="Live vs shadow comparison of a model, per (live, shadow) version pair.",
    )
    add_url(report)
    report_action = report.add_subparsers(dest="shadow_command", required=True, metavar="ACTION")
    table = report_action.add_parser("report", parents=[reading], help="print the comparison")
    table.add_argument("model")


def _percent_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected percentages like 5,25,50,100: {text!r}") from None


def run_admin(args: argparse.Namespace) -> int:
    import getpass

    from sluice.clients import AdminClient, SluiceClientError
    from sluice.clients.admin import deployment_text, report_text

    try:
        caller = getattr(args, "caller", None) or getpass.getuser()
    except (KeyError, OSError):  # no user name in this environment: the server uses the peer
        caller = None
    try:
        with AdminClient(args.url, caller=caller, **connection(args)) as admin:
            if args.command == "shadow":
                reports = admin.shadow_report(args.model)
                running = [] if reports or args.json else admin.deployment(args.model)["shadows"]
                if running:  # mirroring, but no live request has come yet
                    print(f"model {args.model}: shadow of "
                          + ", ".join(f"v{s['version']}" for s in running)
                          + " running; no traffic yet (comparisons appear as requests arrive)")
                else:
                    print(json.dumps(reports, indent=2) if args.json else report_text(reports))
                return 0
            deployment = _deploy_call(admin, args)
    except SluiceClientError as exc:
        print(f"sluice {args.command}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"sluice {args.command}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(deployment, indent=2) if args.json else deployment_text(deployment))
    return 0


def _deploy_call(admin: Any, args: argparse.Namespace) -> dict[str, Any]:
    model, why = args.model, getattr(args, "reason", "")
    if args.action == "status":
        return admin.deployment(model)  # type: ignore[no-any-return]
    if args.action == "routes":
        weights = {}
        for item in args.weights:
            arm, sep, weight = item.partition("=")
            if not sep or not arm:
                raise ValueError(f"expected ARM=WEIGHT, got {item!r}")
            try:
                weights[arm] = float(weight)
            except ValueError:
                raise ValueError(f"routes {item!r}: WEIGHT must be a number, e.g. "
                                 f"{arm}=90") from None
        return admin.set_routes(model, weights, reason=why)  # type: ignore[no-any-return]
    if args.action == "alias":
        name, sep, version = args.assignment.partition("=")
        if not sep or not name:
            raise ValueError(f"expected NAME=VERSION (NAME= removes it), got {args.assignment!r}")
        if version and not version.isdigit():
            raise ValueError(f"alias {args.assignment!r}: VERSION must be a version number, e.g. "
                             f"{name}=2")
        return admin.set_alias(  # type: ignore[no-any-return]
            model, name, int(version) if version else None, reason=why)
    if args.action == "switch":
        return admin.switch(model, args.target, reason=why)  # type: ignore[no-any-return]
    if args.action == "rollback":
        return admin.rollback(model, reason=why)  # type: ignore[no-any-return]
    if args.action == "shadow":
        if args.shadow_action == "start":
            return admin.start_shadow(  # type: ignore[no-any-return]
                model, args.version, sample=args.sample, reason=why)
        return admin.stop_shadow(model, args.version, reason=why)  # type: ignore[no-any-return]
    if args.canary_action == "start":
        return admin.start_canary(  # type: ignore[no-any-return]
            model, args.version, steps=args.steps, interval_s=args.interval,
            max_error_rate=args.max_error_rate, max_p99_ratio=args.max_p99_ratio,
            min_agreement=args.min_agreement, min_requests=args.min_requests, reason=why,
            min_accuracy=args.min_accuracy, max_accuracy_drop=args.max_accuracy_drop,
            min_labels=args.min_labels)
    return admin.abort_canary(model, reason=why)  # type: ignore[no-any-return]
