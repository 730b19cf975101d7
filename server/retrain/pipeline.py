"""``sluice retrain MODEL``: fetch -> validate -> train -> evaluate -> publish -> shadow -> canary.

Each step logs one line with its figures (logger ``sluice.retrain``) and either passes or stops
the run with :class:`StepFailed` naming the step. The promise is that a failed step leaves
serving untouched: nothing is written into the model repository before the candidate has been
loaded as the server would load it and has beaten the serving version on the held-out rows by
the declared margin; the new version directory appears at once (written beside it, then renamed),
and the serving version is pinned (alias ``stable``) before the server loads it, so the newest
version never takes traffic by being newest. From then on every change goes through the running
server's admin API (a :class:`Deployer`): a shadow of the new version, then a canary with the
declared gates. At most one run per model at a time, across processes (a lock file in the state
directory).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sluice.server.config.model import check_model_name
from sluice.server.errors import SluiceError
from sluice.server.retrain import checks, data, evaluation, trainer
from sluice.server.retrain.spec import DeploySpec, RetrainSpec, SpecError, read_spec

log = logging.getLogger("sluice.retrain")

#: Written beside the model file of a version the pipeline made: where it came from.
PROVENANCE_FILE = "retrain.json"


class Deployer(Protocol):
    """The running server, as the pipeline changes it (implemented over the admin API)."""

    def serving_version(self, model: str) -> int:
        """The version that takes the model's traffic now; raises StepFailed when that is not
        one version (a canary running, traffic split between versions)."""
        ...

    def check_gates(self, names: list[str]) -> None:
        """Raise StepFailed when the server cannot apply one of these canary gates."""
        ...

    def pin(self, model: str, version: int) -> None:
        """Keep ``version`` taking all traffic when a newer version loads."""
        ...

    def load(self, model: str) -> None: ...

    def start_shadow(self, model: str, version: int, sample: float) -> None: ...

    def start_canary(self, model: str, version: int, deploy: DeploySpec) -> dict[str, Any]: ...


class StepFailed(Exception):
    """The run stopped at ``step``; ``message`` says why."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message


@dataclass(frozen=True, slots=True)
class Sources:
    """Where the logs are (the deployment's directories, not the owner's)."""

    prediction_log: Path
    feedback: Path
    #: The server's state directory: the runs' lock files go under ``retrain/`` there.
    state: Path


@dataclass
class Outcome:
    """What a run did. ``outcome``: "deployed" (a shadow and a canary of ``version`` run),
    "kept" (the candidate was not better: nothing changed) or "failed" (at ``step``)."""

    model: str
    outcome: str = "failed"
    step: str = ""
    message: str = ""
    version: int | None = None
    serving_version: int | None = None
    figures: dict[str, Any] = field(default_factory=dict)


def _step(model: str, name: str, text: str) -> None:
    log.info("retrain %s: %s: %s", model, name, text)


@contextlib.contextmanager
def _exclusive(state: Path, model: str) -> Iterator[None]:
    try:
        (state / "retrain").mkdir(parents=True, exist_ok=True)
        handle = open(state / "retrain" / f"{model}.lock", "a")  # noqa: SIM115 (held for the run)
    except OSError as exc:
        raise StepFailed("start", f"cannot write a lock file in the state directory "
                         f"({exc.strerror})") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StepFailed("start", f"another retrain of model '{model}' is running") \
                from None
        yield
    finally:
        handle.close()


def retrain(model: str, repository: Path, sources: Sources, deployer: Deployer, *,
            python: str | None = None) -> Outcome:
    """One run for ``model`` of ``repository``; never raises for a failed step (the Outcome
    says where it stopped). SpecError (no such model, a bad retrain.yaml) and ModelLoadError (a
    name that is no model name) do."""
    check_model_name(model)  # before any path is built from it
    model_dir = repository / model
    if not model_dir.is_dir():
        raise SpecError(f"the repository has no model '{model}'")
    spec = read_spec(model_dir, model)
    result = Outcome(model=model)
    started = time.monotonic()
    try:
        with _exclusive(sources.state, model):
            _run(spec, sources, deployer, python, result)
    except StepFailed as exc:
        result.outcome, result.step, result.message = "failed", exc.step, exc.message
        log.error("retrain %s: %s failed: %s; serving unchanged%s", model, exc.step, exc.message,
                  "" if result.version is None else f" (version {result.version} was written)")
    result.figures["seconds"] = round(time.monotonic() - started, 3)
    return result


def _run(spec: RetrainSpec, sources: Sources, deployer: Deployer, python: str | None,
         result: Outcome) -> None:
    model, model_dir = spec.model, spec.model_dir
    config = _step_call("serving", lambda: evaluation.model_config(model_dir, model))
    feature = config.input(spec.fetch.input)
    if feature is None:
        raise StepFailed("fetch", f"model '{model}' has no input '{spec.fetch.input}' "
                         f"(fetch.input; it has {', '.join(i.name for i in config.inputs)})")
    deployer.check_gates(sorted(spec.deploy.canary_gates))
    serving = result.serving_version = deployer.serving_version(model)
    existing = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    new_version = max(existing, default=0) + 1
    if serving not in config.version_policy.select([*existing, new_version]):
        raise StepFailed("serving", f"model '{model}': its version_policy would stop serving "
                         f"version {serving} once version {new_version} exists; set "
                         "version_policy { all { } } in config.pbtxt")
    _step(model, "serving", f"version {serving} serves; the candidate will be version "
          f"{new_version}")

    # fetch
    holdout_x, holdout_y = _step_call("fetch", lambda: data.read_xy(
        spec.path(spec.evaluate.holdout), model_dir))
    parts_x, parts_y, figures = [], [], result.figures
    if spec.fetch.training_data is not None:
        tx, ty = _step_call("fetch", lambda: data.read_xy(
            spec.path(spec.fetch.training_data or ""), model_dir))
        parts_x.append(tx)
        parts_y.append(ty)
        figures["training_rows"] = len(ty)
    if any(d < 0 for d in feature.dims):
        raise StepFailed("fetch", f"input '{feature.name}' has a variable dimension "
                         f"{list(feature.dims)}: retrain needs rows of one fixed shape")
    joined = _step_call("fetch", lambda: data.join_logged(
        sources.prediction_log, sources.feedback, model, spec.fetch.input,
        math.prod(feature.dims), spec.fetch.since_days))
    if len(joined.y):
        parts_x.append(joined.x.reshape(len(joined.y), *feature.dims))
        parts_y.append(joined.y)
    figures.update(logged_requests=joined.requests, logged_rows_labelled=len(joined.y),
                   logged_without_inputs=joined.without_inputs,
                   logged_rows_unlabelled=joined.unlabelled_rows,
                   feedback_unknown_ids=joined.unknown_ids, relabelled=joined.relabelled,
                   holdout_rows=len(holdout_y))
    _step(model, "fetch", f"{figures.get('training_rows', 0)} training rows + "
          f"{len(joined.y)} logged rows with labels (logged requests {joined.requests}, "
          f"{joined.without_inputs} without inputs, {joined.unlabelled_rows} rows unlabelled, "
          f"{joined.unknown_ids} feedback ids unknown, {joined.relabelled} relabelled); "
          f"holdout {len(holdout_y)} rows")
    if not parts_y:
        raise StepFailed("fetch", "no rows: no training_data declared and no logged request "
                         "with inputs has a label")

    # validate
    x = np.concatenate([p.reshape(len(p), -1) for p in parts_x]).reshape(-1, *feature.dims)
    y = np.concatenate(parts_y)
    classes = spec.validate.classes or int(max(holdout_y.max(initial=0), y.max(initial=0)) + 1)
    valid = _step_call("validate", lambda: checks.validate_rows(
        x, y, tuple(feature.dims), spec.validate, classes))
    figures.update(train_rows=len(valid.y), dropped_missing=valid.dropped_missing)
    _step(model, "validate", valid.summary())

    with tempfile.TemporaryDirectory(prefix=f"sluice-retrain-{model}-") as tmp:
        work = Path(tmp)
        candidate_dir = work / "candidate"
        candidate_dir.mkdir()
        trained = _step_call("train", lambda: trainer.run_trainer(
            spec.train, model=model, model_dir=model_dir, work=candidate_dir, x=valid.x,
            y=valid.y, model_filename=config.default_model_filename, python=python))
        figures["train_seconds"] = round(trained.seconds, 3)
        _step(model, "train", f"the command wrote {trained.model_file.name} "
              f"({trained.model_file.stat().st_size} bytes) in {trained.seconds:.1f}s"
              + (f"; it said: {trained.tail}" if trained.tail else ""))

        # evaluate
        metric, margin = spec.evaluate.metric, spec.evaluate.margin

        def score(version_dir: Path, what: str) -> evaluation.Score:
            return evaluation.score_version(model_dir, model, version_dir, what,
                                             spec.fetch.input, spec.evaluate.output, holdout_x,
                                             holdout_y)
        old = _step_call("evaluate", lambda: score(model_dir / str(serving),
                                                   f"serving version {serving}"))
        new = _step_call("evaluate", lambda: score(candidate_dir, "candidate (the trainer's "
                                                   "model)"))
        figures.update(serving_score=old.metric(metric), candidate_score=new.metric(metric),
                       metric=metric)
        gain = new.metric(metric) - old.metric(metric)
        better = gain > 0 and gain >= margin
        _step(model, "evaluate", f"{metric} on {new.rows} held-out rows: candidate "
              f"{new.metric(metric):.4f}, serving version {serving} {old.metric(metric):.4f} "
              f"({gain:+.4f}; margin {margin:g}): "
              + ("better" if better else "not better, nothing changes"))
        if not better:
            result.outcome, result.step = "kept", "evaluate"
            result.message = (f"candidate {metric} {new.metric(metric):.4f} does not beat "
                              f"version {serving}'s {old.metric(metric):.4f} by {margin:g}")
            return
        provenance = {"serving_version": serving, "metric": metric,
                      "candidate": new.metric(metric), "serving": old.metric(metric),
                      "figures": figures, "time": time.time()}
        (candidate_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        deployer.pin(model, serving)
        _publish(candidate_dir, model_dir, new_version)
    result.version = new_version
    _step(model, "publish", f"wrote version {new_version}; version {serving} stays pinned "
          "(alias stable)")
    _deploy(spec, deployer, new_version, serving, result)


def _publish(candidate_dir: Path, model_dir: Path, version: int) -> None:
    """Copy the candidate beside the versions, then rename it into place (one step: the
    server never sees a half-written version directory)."""
    staging = model_dir / f".retrain-{version}-{os.getpid()}"
    try:
        shutil.copytree(candidate_dir, staging)
        staging.rename(model_dir / str(version))
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise StepFailed("publish", f"cannot write version {version} ({exc.strerror})") from None


def _deploy(spec: RetrainSpec, deployer: Deployer, version: int, serving: int,
            result: Outcome) -> None:
    model = spec.model
    try:
        deployer.load(model)
    except StepFailed:
        shutil.rmtree(spec.model_dir / str(version), ignore_errors=True)
        result.version = None  # removed again: serving as before
        raise
    _step(model, "load", f"the server loaded version {version} (no traffic yet)")
    deployer.start_shadow(model, version, spec.deploy.shadow_sample)
    _step(model, "shadow", f"version {version} mirrors {spec.deploy.shadow_sample:.0%} of live "
          f"requests of version {serving}")
    canary = deployer.start_canary(model, version, spec.deploy)
    _step(model, "canary", f"version {version} over stable {serving}: steps "
          f"{canary.get('steps')} % every {canary.get('interval_s')}s, gates "
          f"{json.dumps(canary.get('gates'), sort_keys=True)}")
    result.outcome, result.step = "deployed", "canary"
    result.message = f"version {version} runs as a shadow and a canary over version {serving}"


def _step_call(step: str, call: Any) -> Any:
    """Run ``call``; its expected failures become StepFailed(step, message)."""
    try:
        return call()
    except (data.DataError, checks.ValidationFailed, trainer.TrainingFailed,
            evaluation.EvaluationFailed, SpecError) as exc:
        raise StepFailed(step, str(exc)) from None
    except SluiceError as exc:
        raise StepFailed(step, exc.message) from None
