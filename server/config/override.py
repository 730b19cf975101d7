"""A load-time config override (Triton's model-control extension): RepositoryModelLoad's
``config`` parameter, the JSON of a ModelConfig, in place of the model's config.pbtxt.

Parsed with protobuf's JSON mapping (so ``{"max_batch_size": "16"}`` works as in Triton) and then
held to the same rules as config.pbtxt: a field Sluice does not implement is refused by name.
"""

from __future__ import annotations

import json

from google.protobuf import json_format

from sluice.proto import model_config_pb2 as mc
from sluice.server.config.model import ModelConfig, check_model_name
from sluice.server.config.pbtxt import SUPPORTED_FIELDS, from_proto, set_fields
from sluice.server.errors import InvalidInput

#: Longest override accepted, in characters (a config is a few kilobytes).
MAX_CONFIG_CHARS = 1 << 20


def parse_config_override(text: str, name: str) -> tuple[ModelConfig, bool]:
    """The override's config for model ``name`` and whether it sets max_batch_size (as
    :func:`sluice.server.config.pbtxt.read_model_config` returns them). InvalidInput names what
    is wrong: not JSON, not a JSON object, an unknown or unsupported field, another name."""
    check_model_name(name)
    where = f"model '{name}': the 'config' override"
    if len(text) > MAX_CONFIG_CHARS:
        raise InvalidInput(f"{where} is longer than {MAX_CONFIG_CHARS} characters")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"{where} is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise InvalidInput(f"{where} must be a JSON object (a ModelConfig)")
    message = mc.ModelConfig()
    try:
        json_format.ParseDict(document, message)
    except json_format.ParseError as exc:
        raise InvalidInput(f"{where} is not a ModelConfig: {exc}") from None
    unsupported = sorted({p for p in set_fields(message) if p not in SUPPORTED_FIELDS})
    if unsupported:
        raise InvalidInput(
            f"{where}: field(s) not supported by Sluice: {', '.join(unsupported)}"
        )
    if message.name and message.name != name:
        raise InvalidInput(f"{where}: name '{message.name}' differs from the model's")
    # from_proto's ModelLoadError names the field; it is INVALID_ARGUMENT too
    config = from_proto(message, name)
    return config, "max_batch_size" in document or "maxBatchSize" in document
