"""``retrain.yaml``: the steps a model's owner declares for ``sluice retrain MODEL``.

Beside ``config.pbtxt``; every block and key is optional except ``train.command``::

    fetch:
      input: input                    # the model input whose logged values are the features
      training_data: train_split.npz  # the original training data (X, y), beside the model
      since_days: 30                  # logged requests of the last N days (default: all)
    validate:
      min_rows: 500                   # rows the trainer gets, at least
      max_missing: 0.0                # share of rows with a NaN allowed (they are dropped)
      classes: 10                     # labels are class ids in [0, classes)
      min_class_share: 0.02           # every class at least this share of the rows
    train:
      command: ["{python}", "train.py", "--data", "{data}", "--output", "{output}"]
      python: /opt/train-venv/bin/python   # {python} (default: the interpreter running sluice)
      timeout_s: 1800
    evaluate:
      holdout: test_split.npz         # held-out (X, y), never given to the trainer
      output: label                   # class ids, or scores whose argmax is the class
      metric: accuracy                # or macro_f1
      margin: 0.01                    # the candidate must beat serving by at least this
    deploy:
      shadow: {sample: 1.0}
      canary: {steps: [5, 25, 50, 100], interval_s: 60, gates: {max_error_rate: 0.01}}

The command runs in the model's directory; ``{python}``, ``{data}`` (the rows, .npz with X and y),
``{output}`` (where the model file goes) and ``{model}`` are substituted in each argument.
Parsing normalizes, then validates once; an unknown key is an error naming it with its block.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FILENAME = "retrain.yaml"
#: Canary gates retrain.yaml may set; the last three are the quality gate's (issue 13, item 4).
CANARY_GATES = ("max_error_rate", "max_p99_ratio", "min_agreement", "min_requests",
                "min_accuracy", "max_accuracy_drop", "min_labels")
#: Gates that count (integers); the others are rates or ratios.
_COUNT_GATES = ("min_requests", "min_labels")
METRICS = ("accuracy", "macro_f1")


class SpecError(ValueError):
    """retrain.yaml is missing, unreadable or wrong; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class FetchSpec:
    #: Model input whose logged values are the features.
    input: str = "input"
    #: The original training data, relative to the model directory; None: logged rows only.
    training_data: str | None = None
    #: Logged requests of the last N days (by partition date); None: every day logged.
    since_days: int | None = None


@dataclass(frozen=True, slots=True)
class ValidateSpec:
    #: Rows (training data + labelled logged rows) the trainer needs, at least.
    min_rows: int = 100
    #: Share of rows holding a NaN or infinity that may be dropped; more fails the step.
    max_missing: float = 0.0
    #: Number of classes: labels must lie in [0, classes); None: taken from the holdout.
    classes: int | None = None
    #: Lowest share of the rows any class may have.
    min_class_share: float = 0.0


@dataclass(frozen=True, slots=True)
class TrainSpec:
    #: The owner's command, one argument per item, run in the model directory.
    command: tuple[str, ...]
    #: Interpreter substituted for ``{python}``; None: the one running sluice.
    python: str | None = None
    #: Seconds the command may run before it is stopped (and the step fails).
    timeout_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class EvaluateSpec:
    #: Held-out (X, y), relative to the model directory; never given to the trainer.
    holdout: str = "test_split.npz"
    #: Output read as the prediction: integer class ids, or scores (argmax).
    output: str = "label"
    metric: str = "accuracy"
    #: The candidate's metric must exceed the serving version's by at least this.
    margin: float = 0.0


@dataclass(frozen=True, slots=True)
class DeploySpec:
    #: Share of live requests the candidate's shadow sees, in (0, 1].
    shadow_sample: float = 1.0
    #: Canary steps in percent; () takes the server's default.
    canary_steps: tuple[float, ...] = ()
    #: Seconds per canary step; None takes the server's default.
    canary_interval_s: float | None = None
    #: Gate name -> value (names from :data:`CANARY_GATES`).
    canary_gates: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RetrainSpec:
    """One model's retrain.yaml, normalized and validated."""

    model: str
    model_dir: Path
    fetch: FetchSpec
    validate: ValidateSpec
    train: TrainSpec
    evaluate: EvaluateSpec
    deploy: DeploySpec

    def path(self, relative: str) -> Path:
        """A file the spec names, resolved in the model directory (never outside it)."""
        target = (self.model_dir / relative).resolve()
        if not target.is_relative_to(self.model_dir.resolve()):
            raise SpecError(f"{FILENAME}: {relative!r} is outside the model directory")
        return target


def read_spec(model_dir: Path, model: str) -> RetrainSpec:
    """The retrain.yaml of ``model_dir``; SpecError names the file and what is wrong."""
    path = model_dir / FILENAME
    try:
        raw = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"model '{model}' has no {FILENAME} (nothing declares how to retrain "
                        "it)") from None
    except OSError as exc:
        raise SpecError(f"{model}/{FILENAME}: cannot be read ({exc.strerror})") from None
    return parse_spec(raw, model, model_dir)


def parse_spec(text: str, model: str, model_dir: Path) -> RetrainSpec:
    where = f"{model}/{FILENAME}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise SpecError(f"{where}: not valid YAML{at}") from None
    try:
        top = _block(data, "", ("fetch", "validate", "train", "evaluate", "deploy"))
        if "train" not in top:
            raise ValueError("block 'train' (with its 'command') is required")
        return RetrainSpec(
            model=model, model_dir=model_dir, fetch=_fetch(top.get("fetch")),
            validate=_validate(top.get("validate")), train=_train(top["train"]),
            evaluate=_evaluate(top.get("evaluate")), deploy=_deploy(top.get("deploy")),
        )
    except ValueError as exc:
        raise SpecError(f"{where}: {exc}") from None


def _block(value: Any, name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """``value`` as a mapping whose keys are all in ``keys``; ValueError names the unknown one."""
    if value is None:
        return {}
    label = f"block '{name}'" if name else "the file"
    if not isinstance(value, Mapping):
        raise ValueError(f"{label} must be a mapping with keys {', '.join(keys)}")
    for key in value:
        if key not in keys:
            dotted = f"{name}.{key}" if name else str(key)
            raise ValueError(f"unknown key '{dotted}' (expected {', '.join(keys)})")
    return dict(value)


def _number(value: Any, where: str, *, low: float, high: float = math.inf,
            open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"'{where}' must be a number, not {value!r}")
    if value < low or (open_low and value == low) or value > high:
        span = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        raise ValueError(f"'{where}' must be in {span}, not {value!r}")
    return float(value)


def _int(value: Any, where: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"'{where}' must be an integer >= {low}, not {value!r}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{where}' must be a non-empty string, not {value!r}")
    return value


def _fetch(value: Any) -> FetchSpec:
    b = _block(value, "fetch", ("input", "training_data", "since_days"))
    return FetchSpec(
        input=_text(b.get("input", "input"), "fetch.input"),
        training_data=None if b.get("training_data") is None
        else _text(b["training_data"], "fetch.training_data"),
        since_days=None if b.get("since_days") is None
        else _int(b["since_days"], "fetch.since_days", 1),
    )


def _validate(value: Any) -> ValidateSpec:
    b = _block(value, "validate", ("min_rows", "max_missing", "classes", "min_class_share"))
    return ValidateSpec(
        min_rows=_int(b.get("min_rows", 100), "validate.min_rows", 1),
        max_missing=_number(b.get("max_missing", 0.0), "validate.max_missing", low=0, high=1),
        classes=None if b.get("classes") is None else _int(b["classes"], "validate.classes", 2),
        min_class_share=_number(b.get("min_class_share", 0.0), "validate.min_class_share",
                                low=0, high=1),
    )


def _train(value: Any) -> TrainSpec:
    b = _block(value, "train", ("command", "python", "timeout_s"))
    command = b.get("command")
    if (isinstance(command, str) or not isinstance(command, list) or not command
            or not all(isinstance(arg, str | int | float) for arg in command)):
        raise ValueError("'train.command' must be a non-empty list of arguments, e.g. "
                         "[\"{python}\", \"train.py\", \"--data\", \"{data}\"]")
    return TrainSpec(
        command=tuple(str(arg) for arg in command),
        python=None if b.get("python") is None else _text(b["python"], "train.python"),
        timeout_s=_number(b.get("timeout_s", 3600.0), "train.timeout_s", low=0, open_low=True),
    )


def _evaluate(value: Any) -> EvaluateSpec:
    b = _block(value, "evaluate", ("holdout", "output", "metric", "margin"))
    metric = b.get("metric", "accuracy")
    if metric not in METRICS:
        raise ValueError(f"'evaluate.metric' must be one of {', '.join(METRICS)}, "
                         f"not {metric!r}")
    return EvaluateSpec(
        holdout=_text(b.get("holdout", "test_split.npz"), "evaluate.holdout"),
        output=_text(b.get("output", "label"), "evaluate.output"),
        metric=metric,
        margin=_number(b.get("margin", 0.0), "evaluate.margin", low=0, high=1),
    )


def _deploy(value: Any) -> DeploySpec:
    b = _block(value, "deploy", ("shadow", "canary"))
    shadow = _block(b.get("shadow"), "deploy.shadow", ("sample",))
    canary = _block(b.get("canary"), "deploy.canary", ("steps", "interval_s", "gates"))
    steps = canary.get("steps") or []
    if not isinstance(steps, list):
        raise ValueError("'deploy.canary.steps' must be a list of percentages")
    gates = _block(canary.get("gates"), "deploy.canary.gates", CANARY_GATES)
    return DeploySpec(
        shadow_sample=_number(shadow.get("sample", 1.0), "deploy.shadow.sample", low=0, high=1,
                              open_low=True),
        canary_steps=tuple(_number(s, "deploy.canary.steps", low=0, high=100, open_low=True)
                           for s in steps),
        canary_interval_s=None if canary.get("interval_s") is None else _number(
            canary["interval_s"], "deploy.canary.interval_s", low=0, open_low=True),
        canary_gates={name: (_int(v, f"deploy.canary.gates.{name}", 1) if name in _COUNT_GATES
                             else _number(v, f"deploy.canary.gates.{name}", low=0))
                      for name, v in gates.items()},
    )
