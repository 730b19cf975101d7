from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Alias(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("arm", "version", "weight")
    ARM_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    arm: str
    version: int
    weight: float
    def __init__(self, arm: _Optional[str] = ..., version: _Optional[int] = ..., weight: _Optional[float] = ...) -> None: ...

class ShadowTarget(_message.Message):
    __slots__ = ("version", "sample")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    version: int
    sample: float
    def __init__(self, version: _Optional[int] = ..., sample: _Optional[float] = ...) -> None: ...

class CanaryGates(_message.Message):
    __slots__ = ("max_error_rate", "max_p99_ratio", "min_agreement", "min_requests", "min_accuracy", "max_accuracy_drop", "min_labels")
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_P99_RATIO_FIELD_NUMBER: _ClassVar[int]
    MIN_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MIN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    MAX_ACCURACY_DROP_FIELD_NUMBER: _ClassVar[int]
    MIN_LABELS_FIELD_NUMBER: _ClassVar[int]
    max_error_rate: float
    max_p99_ratio: float
    min_agreement: float
    min_requests: int
    min_accuracy: float
    max_accuracy_drop: float
    min_labels: int
    def __init__(self, max_error_rate: _Optional[float] = ..., max_p99_ratio: _Optional[float] = ..., min_agreement: _Optional[float] = ..., min_requests: _Optional[int] = ..., min_accuracy: _Optional[float] = ..., max_accuracy_drop: _Optional[float] = ..., min_labels: _Optional[int] = ...) -> None: ...

class Canary(_message.Message):
    __slots__ = ("state", "stable_version", "candidate_version", "steps", "step", "percent", "interval_s", "gates", "reason", "extensions")
    STATE_FIELD_NUMBER: _ClassVar[int]
    STABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXTENSIONS_FIELD_NUMBER: _ClassVar[int]
    state: str
    stable_version: int
    candidate_version: int
    steps: _containers.RepeatedScalarFieldContainer[float]
    step: int
    percent: float
    interval_s: float
    gates: CanaryGates
    reason: str
    extensions: int
    def __init__(self, state: _Optional[str] = ..., stable_version: _Optional[int] = ..., candidate_version: _Optional[int] = ..., steps: _Optional[_Iterable[float]] = ..., step: _Optional[int] = ..., percent: _Optional[float] = ..., interval_s: _Optional[float] = ..., gates: _Optional[_Union[CanaryGates, _Mapping]] = ..., reason: _Optional[str] = ..., extensions: _Optional[int] = ...) -> None: ...

class ArmStatus(_message.Message):
    __slots__ = ("arm", "requests", "errors", "p50_s", "p99_s", "version")
    ARM_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    P50_S_FIELD_NUMBER: _ClassVar[int]
    P99_S_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    arm: str
    requests: int
    errors: int
    p50_s: float
    p99_s: float
    version: int
    def __init__(self, arm: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., p50_s: _Optional[float] = ..., p99_s: _Optional[float] = ..., version: _Optional[int] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("model", "aliases", "routes", "shadows", "canary", "arms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    SHADOWS_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    model: str
    aliases: _containers.RepeatedCompositeFieldContainer[Alias]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    shadows: _containers.RepeatedCompositeFieldContainer[ShadowTarget]
    canary: Canary
    arms: _containers.RepeatedCompositeFieldContainer[ArmStatus]
    def __init__(self, model: _Optional[str] = ..., aliases: _Optional[_Iterable[_Union[Alias, _Mapping]]] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., shadows: _Optional[_Iterable[_Union[ShadowTarget, _Mapping]]] = ..., canary: _Optional[_Union[Canary, _Mapping]] = ..., arms: _Optional[_Iterable[_Union[ArmStatus, _Mapping]]] = ...) -> None: ...

class GetDeploymentRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class WeightedArm(_message.Message):
    __slots__ = ("arm", "weight")
    ARM_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    arm: str
    weight: float
    def __init__(self, arm: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class SetRoutesRequest(_message.Message):
    __slots__ = ("model", "routes", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    routes: _containers.RepeatedCompositeFieldContainer[WeightedArm]
    reason: str
    def __init__(self, model: _Optional[str] = ..., routes: _Optional[_Iterable[_Union[WeightedArm, _Mapping]]] = ..., reason: _Optional[str] = ...) -> None: ...

class SetAliasRequest(_message.Message):
    __slots__ = ("model", "alias", "version", "clear", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    alias: str
    version: int
    clear: bool
    reason: str
    def __init__(self, model: _Optional[str] = ..., alias: _Optional[str] = ..., version: _Optional[int] = ..., clear: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class SwitchRequest(_message.Message):
    __slots__ = ("model", "target", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    target: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., target: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("model", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class StartShadowRequest(_message.Message):
    __slots__ = ("model", "version", "sample", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    sample: float
    reason: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., sample: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class StopShadowRequest(_message.Message):
    __slots__ = ("model", "version", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    reason: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class StartCanaryRequest(_message.Message):
    __slots__ = ("model", "candidate_version", "steps", "interval_s", "gates", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    candidate_version: int
    steps: _containers.RepeatedScalarFieldContainer[float]
    interval_s: float
    gates: CanaryGates
    reason: str
    def __init__(self, model: _Optional[str] = ..., candidate_version: _Optional[int] = ..., steps: _Optional[_Iterable[float]] = ..., interval_s: _Optional[float] = ..., gates: _Optional[_Union[CanaryGates, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class AbortCanaryRequest(_message.Message):
    __slots__ = ("model", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ShadowReportRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ShadowComparison(_message.Message):
    __slots__ = ("model", "live_version", "shadow_version", "mirrored", "compared", "shed", "candidate_errors", "candidate_error_rate", "agreement", "max_abs_diff", "mean_abs_diff", "within_tolerance", "tolerance", "flips", "live_p50_s", "live_p99_s", "shadow_p50_s", "shadow_p99_s", "label_rows", "live_errors", "dropped", "last_candidate_error")
    class FlipsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    MIRRORED_FIELD_NUMBER: _ClassVar[int]
    COMPARED_FIELD_NUMBER: _ClassVar[int]
    SHED_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    MEAN_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    WITHIN_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    FLIPS_FIELD_NUMBER: _ClassVar[int]
    LIVE_P50_S_FIELD_NUMBER: _ClassVar[int]
    LIVE_P99_S_FIELD_NUMBER: _ClassVar[int]
    SHADOW_P50_S_FIELD_NUMBER: _ClassVar[int]
    SHADOW_P99_S_FIELD_NUMBER: _ClassVar[int]
    LABEL_ROWS_FIELD_NUMBER: _ClassVar[int]
    LIVE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    LAST_CANDIDATE_ERROR_FIELD_NUMBER: _ClassVar[int]
    model: str
    live_version: int
    shadow_version: int
    mirrored: int
    compared: int
    shed: int
    candidate_errors: int
    candidate_error_rate: float
    agreement: float
    max_abs_diff: float
    mean_abs_diff: float
    within_tolerance: float
    tolerance: float
    flips: _containers.ScalarMap[str, int]
    live_p50_s: float
    live_p99_s: float
    shadow_p50_s: float
    shadow_p99_s: float
    label_rows: int
    live_errors: int
    dropped: int
    last_candidate_error: str
    def __init__(self, model: _Optional[str] = ..., live_version: _Optional[int] = ..., shadow_version: _Optional[int] = ..., mirrored: _Optional[int] = ..., compared: _Optional[int] = ..., shed: _Optional[int] = ..., candidate_errors: _Optional[int] = ..., candidate_error_rate: _Optional[float] = ..., agreement: _Optional[float] = ..., max_abs_diff: _Optional[float] = ..., mean_abs_diff: _Optional[float] = ..., within_tolerance: _Optional[float] = ..., tolerance: _Optional[float] = ..., flips: _Optional[_Mapping[str, int]] = ..., live_p50_s: _Optional[float] = ..., live_p99_s: _Optional[float] = ..., shadow_p50_s: _Optional[float] = ..., shadow_p99_s: _Optional[float] = ..., label_rows: _Optional[int] = ..., live_errors: _Optional[int] = ..., dropped: _Optional[int] = ..., last_candidate_error: _Optional[str] = ...) -> None: ...

class ShadowReportResponse(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[ShadowComparison]
    def __init__(self, reports: _Optional[_Iterable[_Union[ShadowComparison, _Mapping]]] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("id", "row", "value")
    ID_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    id: str
    row: int
    value: float
    def __init__(self, id: _Optional[str] = ..., row: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("model", "labels")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    model: str
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    def __init__(self, model: _Optional[str] = ..., labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ...) -> None: ...

class LabelError(_message.Message):
    __slots__ = ("index", "id", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    id: str
    message: str
    def __init__(self, index: _Optional[int] = ..., id: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("received", "joined", "replaced_rows", "unknown", "invalid", "errors", "logged", "log_error", "note")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    REPLACED_ROWS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    INVALID_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    LOGGED_FIELD_NUMBER: _ClassVar[int]
    LOG_ERROR_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    received: int
    joined: int
    replaced_rows: int
    unknown: int
    invalid: int
    errors: _containers.RepeatedCompositeFieldContainer[LabelError]
    logged: int
    log_error: str
    note: str
    def __init__(self, received: _Optional[int] = ..., joined: _Optional[int] = ..., replaced_rows: _Optional[int] = ..., unknown: _Optional[int] = ..., invalid: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[LabelError, _Mapping]]] = ..., logged: _Optional[int] = ..., log_error: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class QualityRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ClassQuality(_message.Message):
    __slots__ = ("label", "precision", "recall", "f1", "support")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    F1_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    label: int
    precision: float
    recall: float
    f1: float
    support: int
    def __init__(self, label: _Optional[int] = ..., precision: _Optional[float] = ..., recall: _Optional[float] = ..., f1: _Optional[float] = ..., support: _Optional[int] = ...) -> None: ...

class ConfusionCell(_message.Message):
    __slots__ = ("label", "predicted", "rows")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    label: int
    predicted: int
    rows: int
    def __init__(self, label: _Optional[int] = ..., predicted: _Optional[int] = ..., rows: _Optional[int] = ...) -> None: ...

class QualityWindow(_message.Message):
    __slots__ = ("version", "arm", "kind", "predicted_rows", "labelled_rows", "metrics", "classes", "confusion", "confidence_histogram", "window_rows", "window_s")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_ROWS_FIELD_NUMBER: _ClassVar[int]
    LABELLED_ROWS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ROWS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    version: int
    arm: str
    kind: str
    predicted_rows: int
    labelled_rows: int
    metrics: _containers.ScalarMap[str, float]
    classes: _containers.RepeatedCompositeFieldContainer[ClassQuality]
    confusion: _containers.RepeatedCompositeFieldContainer[ConfusionCell]
    confidence_histogram: _containers.RepeatedScalarFieldContainer[int]
    window_rows: int
    window_s: float
    def __init__(self, version: _Optional[int] = ..., arm: _Optional[str] = ..., kind: _Optional[str] = ..., predicted_rows: _Optional[int] = ..., labelled_rows: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., classes: _Optional[_Iterable[_Union[ClassQuality, _Mapping]]] = ..., confusion: _Optional[_Iterable[_Union[ConfusionCell, _Mapping]]] = ..., confidence_histogram: _Optional[_Iterable[int]] = ..., window_rows: _Optional[int] = ..., window_s: _Optional[float] = ...) -> None: ...

class QualityResponse(_message.Message):
    __slots__ = ("model", "windows", "counts", "notes")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class NotesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    model: str
    windows: _containers.RepeatedCompositeFieldContainer[QualityWindow]
    counts: _containers.ScalarMap[str, int]
    notes: _containers.ScalarMap[int, str]
    def __init__(self, model: _Optional[str] = ..., windows: _Optional[_Iterable[_Union[QualityWindow, _Mapping]]] = ..., counts: _Optional[_Mapping[str, int]] = ..., notes: _Optional[_Mapping[int, str]] = ...) -> None: ...

class DriftReportRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class DriftFeature(_message.Message):
    __slots__ = ("name", "psi", "ks", "missing_rate", "below_rate", "above_rate", "edges", "reference", "live")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PSI_FIELD_NUMBER: _ClassVar[int]
    KS_FIELD_NUMBER: _ClassVar[int]
    MISSING_RATE_FIELD_NUMBER: _ClassVar[int]
    BELOW_RATE_FIELD_NUMBER: _ClassVar[int]
    ABOVE_RATE_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    name: str
    psi: float
    ks: float
    missing_rate: float
    below_rate: float
    above_rate: float
    edges: _containers.RepeatedScalarFieldContainer[float]
    reference: _containers.RepeatedScalarFieldContainer[float]
    live: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., psi: _Optional[float] = ..., ks: _Optional[float] = ..., missing_rate: _Optional[float] = ..., below_rate: _Optional[float] = ..., above_rate: _Optional[float] = ..., edges: _Optional[_Iterable[float]] = ..., reference: _Optional[_Iterable[float]] = ..., live: _Optional[_Iterable[int]] = ...) -> None: ...

class DriftVersion(_message.Message):
    __slots__ = ("model", "version", "sample", "window_rows", "window_s", "rows", "features", "prediction", "prediction_output", "prediction_kind", "prediction_drift", "max_psi", "sampled_rows", "dropped_rows", "malformed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ROWS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_KIND_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_DRIFT_FIELD_NUMBER: _ClassVar[int]
    MAX_PSI_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_ROWS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_ROWS_FIELD_NUMBER: _ClassVar[int]
    MALFORMED_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    sample: float
    window_rows: int
    window_s: float
    rows: int
    features: _containers.RepeatedCompositeFieldContainer[DriftFeature]
    prediction: DriftFeature
    prediction_output: str
    prediction_kind: str
    prediction_drift: float
    max_psi: float
    sampled_rows: int
    dropped_rows: int
    malformed: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., sample: _Optional[float] = ..., window_rows: _Optional[int] = ..., window_s: _Optional[float] = ..., rows: _Optional[int] = ..., features: _Optional[_Iterable[_Union[DriftFeature, _Mapping]]] = ..., prediction: _Optional[_Union[DriftFeature, _Mapping]] = ..., prediction_output: _Optional[str] = ..., prediction_kind: _Optional[str] = ..., prediction_drift: _Optional[float] = ..., max_psi: _Optional[float] = ..., sampled_rows: _Optional[int] = ..., dropped_rows: _Optional[int] = ..., malformed: _Optional[int] = ...) -> None: ...

class DriftReportResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[DriftVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[DriftVersion, _Mapping]]] = ...) -> None: ...

class PredictionLogging(_message.Message):
    __slots__ = ("model", "sample", "inputs", "exclude", "source", "records", "dropped")
    class DroppedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    model: str
    sample: float
    inputs: bool
    exclude: _containers.RepeatedScalarFieldContainer[str]
    source: str
    records: int
    dropped: _containers.ScalarMap[str, int]
    def __init__(self, model: _Optional[str] = ..., sample: _Optional[float] = ..., inputs: _Optional[bool] = ..., exclude: _Optional[_Iterable[str]] = ..., source: _Optional[str] = ..., records: _Optional[int] = ..., dropped: _Optional[_Mapping[str, int]] = ...) -> None: ...

class GetPredictionLoggingRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class InputNames(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class SetPredictionLoggingRequest(_message.Message):
    __slots__ = ("model", "sample", "inputs", "exclude", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    sample: float
    inputs: bool
    exclude: InputNames
    reason: str
    def __init__(self, model: _Optional[str] = ..., sample: _Optional[float] = ..., inputs: _Optional[bool] = ..., exclude: _Optional[_Union[InputNames, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...
