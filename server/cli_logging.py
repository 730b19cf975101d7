"""``sluice logging MODEL [--sample F] [--inputs | --no-inputs] [--exclude a,b]``: show or change
a model's prediction-log settings on a running server (the Admin service)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from sluice.server.cli_connect import connection  # transport security (issue 14)


def add_logging_command(sub: Any, add_url: Callable[[argparse.ArgumentParser], None]) -> None:
    parser = sub.add_parser(
        "logging", help="show or change a model's prediction log",
        description="Show MODEL's prediction-log settings and counts; with options, change "
        "them (they then win over deployment.yaml's logging block until it changes).",
    )
    parser.add_argument("model")
    add_url(parser)
    parser.add_argument("--sample", type=float, default=None, metavar="F",
                        help="fraction of requests logged, in [0, 1] (0 turns it off)")
    parser.add_argument("--inputs", action=argparse.BooleanOptionalAction, default=None,
                        help="log the inputs too (--no-inputs: outputs only)")
    parser.add_argument("--exclude", type=_names, default=None, metavar="A,B",
                        help="inputs never logged, comma-separated ('' clears the list)")
    parser.add_argument("--reason", default="", help="why, recorded in the server log")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def run_logging(args: argparse.Namespace) -> int:
    from sluice.clients import AdminClient, SluiceClientError

    changing = args.sample is not None or args.inputs is not None or args.exclude is not None
    try:
        with AdminClient(args.url, **connection(args)) as admin:
            settings = admin.set_prediction_logging(
                args.model, sample=args.sample, inputs=args.inputs, exclude=args.exclude,
                reason=args.reason,
            ) if changing else admin.prediction_logging(args.model)
    except SluiceClientError as exc:
        print(f"sluice logging: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(settings, indent=2) if args.json else logging_text(settings))
    return 0


def logging_text(s: dict[str, Any]) -> str:
    if not s["sample"]:
        head = f"model {s['model']}: prediction log off ({s['source']})"
    else:
        kept = "outputs and inputs" if s["inputs"] else "outputs only"
        head = (f"model {s['model']}: logging {s['sample']:g} of requests, {kept}"
                + (f", never {', '.join(s['exclude'])}" if s["exclude"] else "")
                + f" ({s['source']})")
    dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(s["dropped"].items()))
    return f"{head}\n  records written {s['records']}; dropped: {dropped or 'none'}"
