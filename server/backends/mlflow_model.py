"""An MLflow model directory read as it is: its ``MLmodel`` file, without importing mlflow.

A version directory that holds an ``MLmodel`` file (what ``mlflow.<flavor>.save_model`` writes, or
a logged model's artifact directory copied in) is served from it. Read here: which flavor it is,
the model file the flavor names (``data``; it must lie inside the version directory), the model's
class (an XGBoost scikit-learn classifier predicts classes, a Booster scores) and the
``signature``: inputs and outputs as tensor specs (``{"type": "tensor", "tensor-spec": {"dtype":
"float32", "shape": [-1, 30]}}``) or as column specs (``{"type": "double", "name": "age"}``).

Flavors served: ``onnx``, ``xgboost`` (JSON or UBJSON model files; ``model_format`` ``json``,
``ubj``) and ``lightgbm`` (a Booster's text model). Any other flavor, a scikit-learn LightGBM model
(stored as a pickle or skops file, code Sluice does not run) or XGBoost's legacy binary format is a
load error that says so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from sluice.server.errors import ModelLoadError

MLMODEL = "MLmodel"
#: Flavors served, in the order one is chosen when a model has several.
FLAVORS = ("onnx", "xgboost", "lightgbm")
#: An MLmodel file is a few kilobytes; a larger one is not read.
MAX_MLMODEL_BYTES = 1 << 20

#: MLflow tensor-spec dtypes (numpy names) -> KServe datatypes.
TENSOR_DTYPES = {
    "bool": "BOOL", "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64", "str": "BYTES", "object": "BYTES",
    "bytes": "BYTES",
}
#: MLflow column types -> KServe datatypes.
COLUMN_TYPES = {
    "boolean": "BOOL", "integer": "INT32", "long": "INT64", "float": "FP32", "double": "FP64",
    "string": "BYTES", "binary": "BYTES",
}


@dataclass(frozen=True, slots=True)
class SignatureSpec:
    """One input or output of an MLflow signature."""

    #: The spec's name; None for an unnamed tensor (it takes the model file's name).
    name: str | None
    datatype: str
    #: Full shape with the batch dimension (-1 where variable); None for a column (one value
    #: per row).
    shape: tuple[int, ...] | None

    @property
    def is_column(self) -> bool:
        return self.shape is None


@dataclass(frozen=True, slots=True)
class MLflowModel:
    """What one MLmodel file says, checked."""

    flavor: str
    #: The model file the flavor names, inside the version directory.
    data: Path
    #: The flavor's ``model_class`` ("" when it names none).
    model_class: str
    #: The flavor's ``model_format`` (xgboost: json, ubj or xgb; "" when absent).
    model_format: str
    #: None when the model was saved without a signature.
    inputs: tuple[SignatureSpec, ...] | None
    outputs: tuple[SignatureSpec, ...] | None

    @property
    def is_classifier(self) -> bool:
        """A scikit-learn classifier's ``predict`` answers classes, not scores."""
        return self.model_class.rsplit(".", 1)[-1].endswith("Classifier")


def is_mlflow_model(version_dir: Path) -> bool:
    """Whether ``version_dir`` holds an MLflow model (an ``MLmodel`` file)."""
    return (version_dir / MLMODEL).is_file()


def read_mlmodel(version_dir: Path, where: str) -> MLflowModel:
    """Read and check ``version_dir/MLmodel``; ``where`` ("model 'm' version 1") starts every
    error. Blocking (reads the file)."""
    path = version_dir / MLMODEL
    try:
        if path.stat().st_size > MAX_MLMODEL_BYTES:
            raise ModelLoadError(f"{where}: MLmodel is larger than {MAX_MLMODEL_BYTES} bytes")
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{where}: MLmodel cannot be read: {type(exc).__name__}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise ModelLoadError(f"{where}: MLmodel is not valid YAML{at}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("flavors"), dict):
        raise ModelLoadError(f"{where}: MLmodel has no 'flavors' mapping")
    flavors = doc["flavors"]
    flavor = next((f for f in FLAVORS if f in flavors), None)
    if flavor is None:
        named = sorted(str(f) for f in flavors if f != "python_function") or ["python_function"]
        raise ModelLoadError(
            f"{where}: MLflow flavor {', '.join(repr(f) for f in named)} is not supported "
            f"(supported: {', '.join(FLAVORS)})"
        )
    info = flavors[flavor] if isinstance(flavors[flavor], dict) else {}
    data = _data_file(version_dir, info.get("data"), flavor, where)
    signature = doc.get("signature") if isinstance(doc.get("signature"), dict) else {}
    model = MLflowModel(
        flavor=flavor, data=data, model_class=str(info.get("model_class") or ""),
        model_format=str(info.get("model_format") or ""),
        inputs=_specs(signature.get("inputs"), "inputs", where),
        outputs=_specs(signature.get("outputs"), "outputs", where),
    )
    _check_storage(model, where)
    return model


def _data_file(version_dir: Path, data: object, flavor: str, where: str) -> Path:
    """The flavor's model file: a plain relative path that stays inside the version
    directory (no absolute path, no '..'), naming a file."""
    if not isinstance(data, str) or not data:
        raise ModelLoadError(f"{where}: MLmodel flavor '{flavor}' names no model file ('data')")
    parts = Path(data).parts
    if Path(data).is_absolute() or ".." in parts:
        raise ModelLoadError(f"{where}: MLmodel flavor '{flavor}' data must be a path inside "
                             "the version directory")
    path = version_dir.joinpath(*parts)
    real, root = os.path.realpath(path), os.path.realpath(version_dir)
    if not real.startswith(root + os.sep):
        raise ModelLoadError(f"{where}: MLmodel flavor '{flavor}' data leads outside the "
                             "version directory")
    if not path.is_file():
        raise ModelLoadError(f"{where}: MLmodel flavor '{flavor}' names model file "
                             f"'{data}', which is not in the version directory")
    return path


def _check_storage(model: MLflowModel, where: str) -> None:
    """Refuse model files that hold code to run (pickles) or a format no reader here knows."""
    if model.flavor == "lightgbm" and not model.model_class.endswith("Booster") and (
        model.model_class or model.data.suffix in (".pkl", ".skops")
    ):
        raise ModelLoadError(
            f"{where}: MLflow lightgbm model of class '{model.model_class}' is stored as a "
            "pickle or skops file, which Sluice does not load (it would run code); log its "
            "Booster instead (mlflow.lightgbm.log_model(model.booster_, ...))"
        )
    if model.flavor == "xgboost" and model.model_format not in ("", "json", "ubj"):
        with model.data.open("rb") as f:
            if f.read(1) != b"{":
                raise ModelLoadError(
                    f"{where}: MLflow xgboost model_format '{model.model_format}' is XGBoost's "
                    "legacy binary format; save it with model_format='json' or 'ubj'"
                )


def _specs(text: object, kind: str, where: str) -> tuple[SignatureSpec, ...] | None:
    """A signature's ``inputs`` or ``outputs`` (a JSON string in the YAML) as specs."""
    if text is None:
        return None
    try:
        items = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError:
        raise ModelLoadError(f"{where}: MLmodel signature {kind} is not valid JSON") from None
    if not isinstance(items, list) or not items:
        raise ModelLoadError(f"{where}: MLmodel signature {kind} must be a non-empty list")
    specs = [_spec(item, i, kind, where) for i, item in enumerate(items)]
    if len({s.is_column for s in specs}) > 1:
        raise ModelLoadError(f"{where}: MLmodel signature {kind} mixes tensor and column specs")
    names = [s.name for s in specs if s.name is not None]
    if len(names) != len(set(names)):
        raise ModelLoadError(f"{where}: MLmodel signature {kind} names a tensor twice")
    return tuple(specs)


def _spec(item: object, index: int, kind: str, where: str) -> SignatureSpec:
    at = f"{where}: MLmodel signature {kind}[{index}]"
    if not isinstance(item, dict):
        raise ModelLoadError(f"{at} is not an object")
    name = item.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise ModelLoadError(f"{at} has an invalid name")
    if item.get("type") == "tensor":
        tensor = item.get("tensor-spec")
        if not isinstance(tensor, dict):
            raise ModelLoadError(f"{at} has no tensor-spec")
        dtype = TENSOR_DTYPES.get(str(tensor.get("dtype")))
        if dtype is None:
            raise ModelLoadError(f"{at}: tensor dtype {str(tensor.get('dtype'))!r} is not "
                                 f"supported (supported: {', '.join(TENSOR_DTYPES)})")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not shape or not all(
            isinstance(d, int) and (d == -1 or d > 0) for d in shape
        ):
            raise ModelLoadError(f"{at}: tensor shape must be a list of positive sizes or -1")
        return SignatureSpec(name, dtype, tuple(shape))
    datatype = COLUMN_TYPES.get(str(item.get("type")))
    if datatype is None:
        raise ModelLoadError(f"{at}: column type {str(item.get('type'))!r} is not supported "
                             f"(supported: {', '.join(COLUMN_TYPES)})")
    return SignatureSpec(name, datatype, None)
