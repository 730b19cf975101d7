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
    __slots__ = ("max_error_rate", "max_p99_ratio", "min_agreement", "min_requests")
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_P99_RATIO_FIELD_NUMBER: _ClassVar[int]
    MIN_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    max_error_rate: float
    max_p99_ratio: float
    min_agreement: float
    min_requests: int
    def __init__(self, max_error_rate: _Optional[float] = ..., max_p99_ratio: _Optional[float] = ..., min_agreement: _Optional[float] = ..., min_requests: _Optional[int] = ...) -> None: ...

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
