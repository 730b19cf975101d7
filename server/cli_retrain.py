"""``sluice retrain MODEL`` and ``sluice retrain-webhook``: the retraining pipeline
(:mod:`sluice.server.retrain.pipeline`) from the command line, and its Alertmanager trigger.

Both run beside a server, never in it: they read the model repository and the logs from disk,
write the new version into the repository, and change the running server through its admin
API (``--url``), as ``sluice deploy`` does. Exit status of ``retrain``: 0 when a better version
was deployed (shadow and canary) or the candidate was not better (nothing changed), 1 when a
step failed (serving unchanged), 2 for a usage error or a bad retrain.yaml.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sluice.server.cli_connect import connection  # transport security (issue 14)

CANARY_RUNNING = "running"


def add_retrain_commands(sub: Any, add_url: Callable[[argparse.ArgumentParser], None],
                         bundled: Path) -> None:
    """Register ``sluice retrain`` and ``sluice retrain-webhook`` on the subparsers ``sub``."""
    places = argparse.ArgumentParser(add_help=False)
    add_url(places)
    places.add_argument("--model-repository", type=Path, default=bundled, metavar="DIR",
                        help="the repository the server serves (default: the bundled examples)")
    places.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                        help="the server's state directory (default: <model repository>/"
                        ".sluice-state)")
    places.add_argument("--prediction-log-dir", type=Path, default=None, metavar="DIR",
                        help="the prediction log (default: <state-dir>/predictions)")
    places.add_argument("--feedback-dir", type=Path, default=None, metavar="DIR",
                        help="the feedback log (default: <prediction-log-dir>/feedback)")
    places.add_argument("--python", default=None, metavar="PATH",
                        help="interpreter for {python} in train.command (default: "
                        "retrain.yaml's train.python, else the one running sluice)")
    places.add_argument("--caller", default="sluice-retrain",
                        help="identity in the server's audit log (default sluice-retrain)")

    retrain = sub.add_parser(
        "retrain", parents=[places], help="retrain a model and canary the better version",
        description="Run the steps MODEL/retrain.yaml declares: fetch (logged inputs joined "
        "with feedback, plus the training data), validate, train, evaluate against the serving "
        "version; when better by the margin, write the next version, then start its shadow "
        "and canary on the server at --url. A failed step leaves serving untouched.",
    )
    retrain.add_argument("model")
    retrain.add_argument("--json", action="store_true", help="print the outcome as JSON")

    hook = sub.add_parser(
        "retrain-webhook", parents=[places],
        help="receive Alertmanager webhooks and retrain the models they name",
        description="An HTTP receiver for Alertmanager's webhook: each firing alert with a "
        "'model' label starts `sluice retrain MODEL` (one at a time per model).",
    )
    hook.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    hook.add_argument("--port", type=int, default=9095, help="port; 0 picks one (default 9095)")
    hook.add_argument("--alert", action="append", default=[], metavar="ALERTNAME",
                      help="only alerts with this alertname (repeatable; default: any)")
    hook.add_argument("--model-label", default="model",
                      help="the alert label naming the model (default: model)")


class AdminDeployer:
    """The pipeline's :class:`~sluice.server.retrain.pipeline.Deployer` over the admin API."""

    def __init__(self, url: str, caller: str, connect: dict[str, Any] | None = None) -> None:
        self.url, self.caller = url, caller
        #: The clients' keyword arguments beyond the address (TLS credentials: cli_connect).
        self.connect = connect or {}

    def _call(self, step: str, call: Callable[[Any], Any]) -> Any:
        from sluice.clients import AdminClient, Client, SluiceClientError
        from sluice.server.retrain.pipeline import StepFailed

        try:
            with AdminClient(self.url, caller=self.caller, **self.connect) as admin, \
                    Client(self.url, **self.connect) as client:
                return call((admin, client))
        except SluiceClientError as exc:
            raise StepFailed(step, f"the server at {self.url} refused: {exc}") from None

    def serving_version(self, model: str) -> int:
        from sluice.server.retrain.pipeline import StepFailed

        def ask(both: Any) -> int:
            admin, client = both
            d = admin.deployment(model)
            canary = d.get("canary")
            if canary and canary.get("state") == CANARY_RUNNING:
                raise StepFailed("serving", f"a canary of version {canary['candidate_version']} "
                                 "runs; let it finish or abort it first")
            versions = sorted({r["version"] for r in d["routes"] if r["weight"] > 0})
            if len(versions) > 1:
                raise StepFailed("serving", f"traffic is split between versions {versions}; "
                                 "switch to one version first")
            if versions:
                return int(versions[0])
            ready = [int(r["version"]) for r in client.repository_index(ready_only=True)
                     if r["name"] == model and r["version"]]
            if not ready:
                raise StepFailed("serving", f"the server does not serve model '{model}'")
            return max(ready)

        return self._call("serving", ask)  # type: ignore[no-any-return]

    def check_gates(self, names: list[str]) -> None:
        from sluice.clients import AdminClient
        from sluice.server.retrain.pipeline import StepFailed

        known = inspect.signature(AdminClient.start_canary).parameters
        missing = [name for name in names if name not in known]
        if missing:
            raise StepFailed("serving", f"this Sluice's canary has no gate {missing[0]!r} "
                             "(deploy.canary.gates)")

    def pin(self, model: str, version: int) -> None:
        def pin(both: Any) -> None:
            admin, _ = both
            why = f"retrain: keep version {version} serving while a new version loads"
            admin.set_alias(model, "stable", version, reason=why)
            if not admin.deployment(model)["routes"]:
                admin.set_routes(model, {"stable": 100.0}, reason=why)

        self._call("publish", pin)

    def load(self, model: str) -> None:
        self._call("load", lambda both: both[1].load_model(model, timeout=300.0))

    def start_shadow(self, model: str, version: int, sample: float) -> None:
        self._call("shadow", lambda both: both[0].start_shadow(
            model, version, sample=sample, reason="retrain: a better version, shadowed first"))

    def start_canary(self, model: str, version: int, deploy: Any) -> dict[str, Any]:
        def start(both: Any) -> dict[str, Any]:
            d = both[0].start_canary(
                model, version, steps=deploy.canary_steps, interval_s=deploy.canary_interval_s,
                reason="retrain: a better version on held-out data", **deploy.canary_gates)
            return d["canary"] or {}  # type: ignore[no-any-return]

        return self._call("canary", start)  # type: ignore[no-any-return]


def _sources(args: argparse.Namespace) -> Any:
    from sluice.server.retrain.pipeline import Sources

    state = args.state_dir or args.model_repository / ".sluice-state"
    log = args.prediction_log_dir or state / "predictions"  # as sluice serve's defaults
    return Sources(prediction_log=log, feedback=args.feedback_dir or log / "feedback",
                   state=state)


class _StepLines(logging.Handler):
    """The pipeline's step lines on whatever sys.stdout is when they are written."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stdout, flush=True)


def _log_to_stdout() -> None:
    logger = logging.getLogger("sluice.retrain")
    if not any(isinstance(h, _StepLines) for h in logger.handlers):  # once per process
        logger.addHandler(_StepLines())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def run_retrain(args: argparse.Namespace) -> int:
    from sluice.server.errors import SluiceError
    from sluice.server.retrain.pipeline import retrain
    from sluice.server.retrain.spec import SpecError

    if args.command == "retrain-webhook":
        return _run_webhook(args)
    _log_to_stdout()
    try:
        outcome = retrain(args.model, args.model_repository, _sources(args),
                          AdminDeployer(args.url, args.caller, connection(args)),
                          python=args.python)
    except SpecError as exc:
        print(f"sluice retrain: {exc}", file=sys.stderr)
        return 2
    except SluiceError as exc:  # a model name that is no name
        print(f"sluice retrain: {exc.message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(dataclasses.asdict(outcome), indent=2))
    else:
        print(f"retrain {outcome.model}: {outcome.outcome}"
              + (f" at {outcome.step}" if outcome.outcome == "failed" else "")
              + (f": {outcome.message}" if outcome.message else ""))
    return 1 if outcome.outcome == "failed" else 0


def _run_webhook(args: argparse.Namespace) -> int:
    import signal
    import threading

    from sluice.server.config.model import check_model_name
    from sluice.server.errors import SluiceError
    from sluice.server.retrain.pipeline import retrain
    from sluice.server.retrain.spec import FILENAME
    from sluice.server.retrain.webhook import RetrainWebhook

    _log_to_stdout()
    logging.getLogger("sluice.retrain.webhook").setLevel(logging.INFO)
    sources, repo = _sources(args), args.model_repository

    def run(model: str) -> str:
        deployer = AdminDeployer(args.url, args.caller, connection(args))
        outcome = retrain(model, repo, sources, deployer, python=args.python)
        return f"{outcome.outcome} {outcome.step}: {outcome.message}"

    def known(model: str) -> bool:
        try:
            check_model_name(model)  # before any path is built from it
        except SluiceError:
            return False
        return (repo / model / FILENAME).is_file()

    try:
        hook = RetrainWebhook(run, known, host=args.host, port=args.port,
                              alertnames=args.alert, model_label=args.model_label)
    except OSError as exc:
        print(f"sluice retrain-webhook: cannot listen on {args.host}:{args.port} "
              f"({exc.strerror})", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    hook.start()
    print(f"sluice retrain-webhook: listening on http://{args.host}:{hook.port}/ "
          f"(server {args.url})", flush=True)
    stop.wait()
    hook.close()
    return 0
