"""The prediction log: a sampled share of each configured model's finished requests, written to
Parquet off the request path.

Its hub subscriber (:meth:`PredictionLog.on_finished`, on the monitor hub's thread) samples and
hands the kept records to the writer. In a server that is
:class:`~.monitor_remote.RemoteLogWriter`: the records go, encoded with the rest of the drain,
to the monitor process, whose :class:`~.prediction_writer.PredictionWriter` turns them into
Arrow tables and writes Parquet on its own thread (a writer in this process, as tests use it,
does the same here). A model is watched on the hub only while
its sample rate is above 0, so a model that is not logged costs the request path one dict lookup.

Settings per model (:class:`~sluice.server.config.prediction_logging.LoggingConfig`) come from
its deployment.yaml when it loads, or from the admin API (:mod:`.prediction_settings` holds the
precedence). The schema of a model version's records comes from its declared inputs and outputs
(:mod:`.prediction_schema`).

Promises:
- Each finished request of a model logged at rate p is kept with probability p, independently.
- Inputs are written only with ``inputs: true``, and an input named in ``exclude`` never is.
- Settings naming an input the model does not have, a rate outside [0, 1] or an unknown key are
  refused with a message naming it, and change nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from sluice.server.config.deployment_file import read_logging
from sluice.server.config.model import ModelConfig
from sluice.server.config.prediction_logging import LoggingConfig, check_exclude, check_sample
from sluice.server.config.settings import ServerConfig
from sluice.server.errors import InvalidInput, ModelNotFound, SluiceError
from sluice.server.monitoring.drained import Drained
from sluice.server.monitoring.finished import Finished
from sluice.server.monitoring.hub import MonitorHub
from sluice.server.monitoring.monitor_remote import RemoteLogWriter
from sluice.server.monitoring.prediction_files import warm_up
from sluice.server.monitoring.prediction_schema import RecordSchema
from sluice.server.monitoring.prediction_settings import ADMIN, OFF, LoggingSettings
from sluice.server.monitoring.prediction_writer import PredictionWriter, writer_settings

log = logging.getLogger(__name__)

#: The writer on a thread here, or its proxy over the monitor process.
LogWriter = PredictionWriter | RemoteLogWriter

#: A model version's config (version 0: the newest loaded), or None when it is not loaded.
Describe = Callable[[str, int], ModelConfig | None]


class PredictionLog:
    """Sampling, per-model settings and the hand-off to the Parquet writer."""

    def __init__(
        self, hub: MonitorHub, writer: LogWriter, settings: LoggingSettings,
        describe: Describe, *, uniform: Callable[[], float] | None = None,
    ) -> None:
        """``uniform``: the sampling draw in [0, 1) (a seeded one in tests)."""
        self.hub = hub
        self.writer = writer
        self._settings = settings
        self._describe = describe
        self._uniform = uniform or random.Random().random
        #: model -> settings in force (only models with a sample rate above 0).
        self._active: dict[str, LoggingConfig] = {}
        self._sources: dict[str, str] = {}
        #: model -> its deployment.yaml's block when it last loaded.
        self._declared: dict[str, LoggingConfig | None] = {}
        self._schemas: dict[tuple[str, int, LoggingConfig], RecordSchema | None] = {}
        #: Whether Arrow's one-time work is done (:meth:`warm`).
        self._warm = False
        hub.subscribe("prediction_log", self.on_finished)

    @classmethod
    def for_server(cls, hub: MonitorHub, config: ServerConfig, describe: Describe,
                   writer: LogWriter | None = None) -> PredictionLog:
        """The log a server runs with ``config``: ``writer``, else one on a thread of this
        process (its directory, rotation and queue bound from ``config``)."""
        if writer is None:
            writer = PredictionWriter(config.predictions_dir, tag=secrets.token_hex(4),
                                      **writer_settings(config))
        return cls(hub, writer, LoggingSettings(config.deployment_state_dir), describe)

    # -- settings ----------------------------------------------------------------------------

    async def model_dir_loaded(self, model: str, model_dir: Path) -> None:
        """:meth:`model_loaded` with the ``logging`` block of ``model_dir``'s deployment.yaml;
        bad settings are logged, naming what is wrong, and the model serves unlogged."""
        try:
            declared = await asyncio.to_thread(read_logging, model_dir)
            self.model_loaded(model, declared)
            if model in self._active:
                await self.warm()
        except SluiceError as exc:
            log.error("model '%s': prediction log not applied: %s", model, exc.message)
        except ValueError as exc:
            log.error("model '%s': prediction log not applied: %s", model, exc)

    def model_loaded(self, model: str, declared: LoggingConfig | None) -> None:
        """Apply ``model``'s settings after it (re)loaded: the admin's, unless its yaml's
        ``logging`` block (``declared``) changed since. ValueError names what is wrong with
        them (the model is then not logged)."""
        self._declared[model] = declared
        self._forget_schemas(model)
        config, source = self._settings.resolve(model, declared)
        try:
            self._check(model, config)
        except ValueError:
            self._apply(model, LoggingConfig(), OFF)
            raise
        self._apply(model, config, source)

    def set(
        self, model: str, *, sample: float | None = None, inputs: bool | None = None,
        exclude: list[str] | None = None,
    ) -> LoggingConfig:
        """Change ``model``'s settings (None: keep that one); persisted, they win over the
        yaml until its ``logging`` block changes. InvalidInput / ModelNotFound name what is
        wrong, and nothing changes."""
        if not self.loaded(model):
            raise ModelNotFound(f"model '{model}' is not loaded")
        config, _ = self.config(model)
        try:
            if sample is not None:
                config = replace(config, sample=check_sample(sample))
            if inputs is not None:
                config = replace(config, inputs=inputs)
            if exclude is not None:
                config = replace(config, exclude=check_exclude(exclude))
            self._check(model, config)
        except ValueError as exc:
            raise InvalidInput(f"model '{model}': {exc}") from None
        self._settings.set(model, config, self._declared.get(model))
        self._apply(model, config, ADMIN)
        return config

    async def warm(self) -> None:
        """Arrow's one-time work (imports, codec), on a thread, before the first row group
        needs it (:func:`.prediction_files.warm_up`); once per process, when a model's log
        turns on as it loads or from the admin API."""
        if self._warm:
            return
        try:
            await asyncio.to_thread(warm_up)
        except Exception:  # the first row group does it then, as before; the load goes on
            log.exception("prediction log: Arrow's one-time setup failed")
            return
        self._warm = True

    def loaded(self, model: str) -> bool:
        """Whether some version of ``model`` is loaded."""
        return self._describe(model, 0) is not None

    def config(self, model: str) -> tuple[LoggingConfig, str]:
        """(settings in force, where they came from: off, deployment.yaml or admin)."""
        return self._active.get(model, LoggingConfig()), self._sources.get(model, OFF)

    def _check(self, model: str, config: LoggingConfig) -> None:
        described = self._describe(model, 0)
        if described is not None and config.exclude:
            config.check_inputs(model, (spec.name for spec in described.inputs))

    def _apply(self, model: str, config: LoggingConfig, source: str) -> None:
        was_on = model in self._active
        self._sources[model] = source
        if config.on:
            self._active[model] = config
            if not was_on:
                self.hub.watch(model)
        elif was_on:
            del self._active[model]
            self.hub.unwatch(model)
        self.hub.want_inputs("prediction_log", model, 1.0 if config.on and config.inputs else 0.0)
        log.info("model '%s': prediction log %s (%s)", model,
                 f"sample {config.sample:g}, inputs {'on' if config.inputs else 'off'}"
                 + (f", excluding {', '.join(config.exclude)}" if config.exclude else "")
                 if config.on else "off", source)

    # -- the hub's thread --------------------------------------------------------------------

    def on_finished(self, batch: Sequence[Finished]) -> None:
        """Sample ``batch`` and queue the kept records (the hub subscriber: quick)."""
        active = self._active
        if not active:
            return  # the hub hands over other monitors' models only
        for (model, version), records in Drained.of(batch).groups().items():
            config = active.get(model)
            if config is None:
                continue
            if config.sample < 1.0:  # a draw per record; at rate 1 every draw would keep it
                uniform, sample = self._uniform, config.sample
                kept = [i for i in range(len(records)) if uniform() < sample]
                if not kept:
                    continue
                records = records.view(kept)
            key = (model, version, config)
            schema = self._schema(key)
            if schema is None:
                self.writer.drop(model, "not_loaded", len(records))
            else:
                self.writer.put(model, schema, records)

    def _schema(self, key: tuple[str, int, LoggingConfig]) -> RecordSchema | None:
        if key in self._schemas:
            return self._schemas[key]
        described = self._describe(key[0], key[1])
        schema = self._schemas[key] = (
            RecordSchema(described, key[2]) if described is not None else None
        )
        return schema

    def _forget_schemas(self, model: str) -> None:
        for key in [k for k in list(self._schemas) if k[0] == model]:
            self._schemas.pop(key, None)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self.writer.start()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Hand the hub's queued records over, write them and close the files (tests, admin)."""
        self.hub.drain()
        return self.writer.flush(timeout_s)

    def close(self) -> None:
        """Write what is queued and stop (after the hub handed over its last records)."""
        self.writer.close()
