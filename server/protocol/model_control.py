"""RepositoryModelLoad's parameters (Triton's model-control extension, issue 16 item 2):
``config`` (string: the JSON of a ModelConfig, used instead of config.pbtxt) and
``file:<path>`` (bytes: the files of the model directory, staged by the repository). Anything
else is refused by name; nothing here reads or writes a file."""

from __future__ import annotations

from typing import Any

from sluice.server.config.model import ModelConfig
from sluice.server.config.override import parse_config_override
from sluice.server.errors import InvalidInput

FILE_PREFIX = "file:"


def load_arguments(
    request: Any,
) -> tuple[tuple[ModelConfig, bool] | None, dict[str, bytes]]:
    """(config override or None, staged files by path) of a RepositoryModelLoadRequest."""
    override = None
    files: dict[str, bytes] = {}
    unknown = []
    for key, value in request.parameters.items():
        kind = value.WhichOneof("parameter_choice")
        if key == "config":
            if kind != "string_param":
                raise InvalidInput(
                    "parameter 'config' must be a string: the JSON of a ModelConfig"
                )
            override = parse_config_override(value.string_param, request.model_name)
        elif key.startswith(FILE_PREFIX):
            if kind != "bytes_param":
                shown = key if len(key) <= 80 else key[:77] + "..."
                raise InvalidInput(f"parameter '{shown}' must carry the file's bytes")
            files[key[len(FILE_PREFIX):]] = value.bytes_param
        else:
            unknown.append(key[:80])
    if unknown:
        raise InvalidInput(
            f"parameters {sorted(unknown)} are not supported on load (Sluice takes 'config' "
            "and 'file:<path>')"
        )
    return override, files
