"""Where each model's prediction-log settings come from: deployment.yaml, or the admin API.

Admin changes are persisted in the state directory (``prediction-logging.json``) together with
the digest of the yaml's ``logging`` block they overrode, with the same precedence as deployment
state: the admin's settings win until the model's yaml ``logging`` block changes; then the yaml
is applied again (and the stale admin entry forgotten). A model with neither is not logged.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from sluice.server.config.prediction_logging import LoggingConfig, parse_logging

log = logging.getLogger(__name__)

FILENAME = "prediction-logging.json"
#: Where a model's settings came from.
OFF, YAML, ADMIN = "off", "deployment.yaml", "admin"


class LoggingSettings:
    """The admin's persisted settings per model; resolves them against the yaml's."""

    def __init__(self, state_dir: Path | None) -> None:
        """``state_dir`` None keeps admin settings in memory only."""
        self._path = state_dir / FILENAME if state_dir is not None else None
        #: model -> (admin settings, digest of the yaml block they overrode or None).
        self._admin: dict[str, tuple[LoggingConfig, str | None]] = {}
        self._read()

    def resolve(self, model: str, declared: LoggingConfig | None) -> tuple[LoggingConfig, str]:
        """(settings, source) for ``model`` whose yaml declares ``declared`` (None: nothing)."""
        digest = declared.digest() if declared is not None else None
        entry = self._admin.get(model)
        if entry is not None:
            if entry[1] == digest:
                return entry[0], ADMIN
            del self._admin[model]  # the yaml changed since: it is authoritative again
            self._write()
        if declared is not None:
            return declared, YAML
        return LoggingConfig(), OFF

    def set(self, model: str, config: LoggingConfig, declared: LoggingConfig | None) -> None:
        """Record the admin's ``config`` for ``model``, overriding ``declared``."""
        self._admin[model] = (config, declared.digest() if declared is not None else None)
        self._write()

    def _read(self) -> None:
        if self._path is None:
            return
        try:
            data = json.loads(self._path.read_text())
            for model, entry in data.get("models", {}).items():
                self._admin[model] = (parse_logging(entry["logging"]), entry.get("yaml_sha256"))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("%s: unreadable, admin prediction-log settings ignored (%s)",
                      FILENAME, exc)

    def _write(self) -> None:
        if self._path is None:
            return
        data: dict[str, Any] = {"models": {
            model: {"logging": config.to_json(), "yaml_sha256": digest}
            for model, (config, digest) in sorted(self._admin.items())
        }}
        partial = self._path.with_name(f".{FILENAME}.tmp")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(data, indent=2))
            os.replace(partial, self._path)
        except OSError as exc:
            log.error("%s: cannot be written (%s); the change holds until a restart",
                      FILENAME, exc.strerror)
