"""The model repository: Triton's directory layout, loaded and swapped at run time.

``<root>/<model>/config.pbtxt`` and ``<root>/<model>/<version>/<model file>``. Loading builds
every selected version (backend, warm-up, batcher) off the event loop, then swaps the model's
versions in one step: requests already admitted finish on the version that admitted them, new
ones go to the new versions. A load that fails leaves the previous versions serving and records
why. Model names are checked before any path is built, so nothing outside the root is read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sluice.server.backends.base import Backend
from sluice.server.config.containment import check_contained
from sluice.server.config.model import ModelConfig, check_model_name
from sluice.server.config.redaction import redact_paths
from sluice.server.config.validation import complete_model_config
from sluice.server.errors import (
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    SluiceError,
)
from sluice.server.serving import triton_texts
from sluice.server.serving.budget import InflightBudget
from sluice.server.serving.classification import read_labels
from sluice.server.serving.fallback_check import check_fallback
from sluice.server.serving.model import ModelVersion
from sluice.server.serving.staging import StagingArea
from sluice.server.serving.stats import ModelStats
from sluice.server.serving.warmup import warm_up

log = logging.getLogger(__name__)

#: read_config(model_dir, name) -> (partial config, whether max_batch_size was written).
ConfigReader = Callable[[Path, str], tuple[ModelConfig, bool]]
#: make_backend(partial config, version_dir) -> Backend. Blocking; runs on a worker thread.
BackendFactory = Callable[[ModelConfig, Path], Backend]
#: check_version(complete config, version_dir): the monitors' look at a version before it
#: serves (drift reads its reference profile). Blocking, on a worker thread; raising a
#: SluiceError fails the load.
VersionCheck = Callable[[ModelConfig, Path], None]


@dataclass(frozen=True, slots=True)
class ModelState:
    """One row of the repository index."""

    name: str
    version: str
    #: READY, LOADING, UNAVAILABLE (failed or unloaded).
    state: str
    reason: str = ""


class _Model:
    """All versions of one model plus its load lock and last load outcome."""

    def __init__(self) -> None:
        self.versions: dict[int, ModelVersion] = {}
        self.lock = asyncio.Lock()
        self.state = "UNAVAILABLE"
        self.reason = ""


class ModelRepository:
    """Owns every loaded model version; the only place versions are created or retired."""

    def __init__(
        self,
        root: Path,
        *,
        read_config: ConfigReader,
        make_backend: BackendFactory,
        default_max_batch_size: int = 64,
        default_max_queue_size: int = 4096,
        latency_window_s: float = 60.0,
        inflight: InflightBudget | None = None,
        check_version: VersionCheck | None = None,
        staging: StagingArea | None = None,
    ) -> None:
        """``inflight`` is the server's in-flight bytes budget, shared by every version;
        ``staging`` holds model files sent in load requests (256 MiB a request without)."""
        self.staging = staging if staging is not None else StagingArea(256 << 20)
        self.check_version = check_version
        self.root = root.resolve()
        self._inflight = inflight
        self._read_config = read_config
        self._make_backend = make_backend
        self._default_max_batch = default_max_batch_size
        self._default_max_queue = default_max_queue_size
        self._window_s = latency_window_s
        self._models: dict[str, _Model] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        #: Model -> default warm-ups that failed (logged; the version served anyway).
        self.warmup_failures: dict[str, int] = {}

    # -- lookups (synchronous: resolve and submit happen without an await in between) ---------

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The version to serve ``name`` with: ``version`` if given, else the newest ready one."""
        model = self._models.get(name)
        if model is None or (not model.versions and model.state != "LOADING"):
            why = f" ({model.reason})" if model is not None and model.reason else ""
            raise triton_texts.unknown_model(
                name, f"model '{name}' is not loaded{why}; {self._loaded_names()}")
        if not model.versions:  # transient: worth a retry
            raise ModelNotReady(f"model '{name}' is still loading", retry_after_ms=1000)
        if not version:
            return model.versions[max(model.versions)]
        try:
            number = int(version)
        except ValueError:
            raise triton_texts.bad_version(
                version, f"model '{name}' has no version '{version}'") from None
        served = model.versions.get(number)
        if served is None:
            raise triton_texts.unknown_version(name, version, (
                f"model '{name}' has no version '{version}' (serving {sorted(model.versions)})"))
        return served

    def find(self, name: str, version: int) -> ModelVersion | None:
        """Loaded version ``version`` of ``name``, or None (no exception: a hot-path lookup)."""
        model = self._models.get(name)
        return None if model is None else model.versions.get(version)

    def ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except SluiceError:
            return False
        return True

    def _loaded_names(self, most: int = 20) -> str:
        """"loaded: a, b" (at most ``most`` names, then how many more), or "no model is loaded"."""
        names = sorted(name for name, model in self._models.items() if model.versions)
        if not names:
            return "no model is loaded"
        more = f" and {len(names) - most} more" if len(names) > most else ""
        return "loaded: " + ", ".join(names[:most]) + more

    def loaded(self) -> list[ModelVersion]:
        return [v for m in self._models.values() for v in m.versions.values()]

    def versions(self, name: str) -> list[int]:
        """The version numbers of ``name`` being served, ascending ([] when none)."""
        model = self._models.get(name)
        return sorted(model.versions) if model is not None else []

    def version_hint(self, name: str, version: int) -> str:
        """How to get version ``version`` of ``name`` served, for an error that needs it (it
        is not loaded): what the repository holds, what the config selects, which call loads
        it. Blocking (lists the model directory and reads its config)."""
        load = f"then load it with `sluice repo load {name}` (RepositoryModelLoad)"
        model_dir = self.root / name
        available = _version_dirs(model_dir) if model_dir.is_dir() else []
        try:
            policy = self._read_config(model_dir, name)[0].version_policy
        except SluiceError as exc:
            return f"the model's config does not load ({exc.message}): fix it, {load}"
        except OSError:  # the directory went away meanwhile
            return f"the repository has no model directory {name}: add it, {load}"
        serve_all = f"set version_policy {{ all {{ }} }} in {name}/config.pbtxt"
        if version not in available:
            keep = "" if policy.kind == "all" else f", {serve_all} to serve it beside the others"
            return f"the repository has no version directory {name}/{version}: add it{keep}, {load}"
        if version not in policy.select(sorted(available)):
            chosen = (f"latest {policy.num_versions}" if policy.kind == "latest"
                      else f"specific {list(policy.versions)}")
            return f"its version_policy ({chosen}) does not select it: {serve_all}, {load}"
        model = self._models.get(name)
        failed = f" (its last load failed: {model.reason})" if model and model.reason else ""
        return (f"it is in the repository{failed}: load it with `sluice repo load {name}` "
                "(RepositoryModelLoad)")

    def available_names(self) -> list[str]:
        """Model directories under the root (whether loaded or not)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
        )

    def index(self, ready_only: bool = False) -> list[ModelState]:
        rows: list[ModelState] = []
        for name in sorted(set(self.available_names()) | set(self._models)):
            model = self._models.get(name)
            if model is None:
                if not ready_only:
                    rows.append(ModelState(name, "", "UNAVAILABLE", "not loaded"))
                continue
            for number in sorted(model.versions):
                rows.append(ModelState(name, str(number), "READY"))
            if not model.versions and not ready_only:
                rows.append(ModelState(name, "", model.state, model.reason))
        return rows

    # -- load / unload ------------------------------------------------------------------------

    def mark_loading(self, names: list[str]) -> None:
        """Report each of ``names`` that has no version yet as LOADING (requests: UNAVAILABLE,
        "still loading") until its load ends: the server's startup models, from the instant it
        listens, though each load starts in its turn. A name that is no model directory is left
        for its load to report."""
        for name in names:
            try:
                check_model_name(name)
            except SluiceError:
                continue
            if (self.root / name).is_dir():
                model = self._models.setdefault(name, _Model())
                if not model.versions:
                    model.state, model.reason = "LOADING", ""

    async def load(
        self, name: str, override: tuple[ModelConfig, bool] | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> None:
        """Load (or reload) every selected version of ``name``, then swap them in at once.

        Load-time overrides (Triton's model control): ``override`` is (config, whether it sets
        max_batch_size), used instead of config.pbtxt; ``files`` (path -> bytes, with the
        override) are the whole model directory, staged privately (:mod:`.staging`) and loaded
        from there until the next load or unload."""
        check_model_name(name)
        staged = None
        if files:
            if override is None:
                raise InvalidInput(
                    f"model '{name}': model files need a 'config' parameter beside them"
                )
            staged = model_dir = await asyncio.to_thread(self.staging.stage, name, files)
        else:
            model_dir = self.root / name
            if not model_dir.is_dir():
                raise ModelNotFound(f"model '{name}' is not in the repository")
            # hardened input: no link out of the repository, checked before any file is read
            await asyncio.to_thread(check_contained, self.root, model_dir, name)
        model = self._models.setdefault(name, _Model())
        started = time.perf_counter()
        async with model.lock:
            model.state = "LOADING" if not model.versions else model.state
            try:
                try:
                    versions = await self._build(name, model_dir, override)
                except BaseException:
                    if staged is not None:  # a failed load leaves no staged files
                        await asyncio.to_thread(self.staging.discard, staged)
                    raise
            except SluiceError as exc:
                exc.message = redact_paths(exc.message)  # hardened input: libraries' words
                exc.args = (exc.message,)
                model.state = "READY" if model.versions else "UNAVAILABLE"
                model.reason = exc.message
                log.error("loading model '%s' failed: %s", name, exc.message)
                raise
            except Exception as exc:
                model.state = "READY" if model.versions else "UNAVAILABLE"
                model.reason = f"unexpected error: {redact_paths(str(exc))}"
                log.exception("loading model '%s' failed", name)
                raise ModelLoadError(f"model '{name}': load failed: {model.reason}") from exc
            old = model.versions
            model.versions = versions
            model.state, model.reason = "READY", ""
            for served in old.values():
                self._retire(served)
            await asyncio.to_thread(self.staging.adopt, name, staged)  # the old staging goes
            log.info("model '%s' ready, versions %s (load took %.1fs)", name, sorted(versions),
                     time.perf_counter() - started)

    async def unload(self, name: str) -> None:
        """Stop routing to ``name``; in-flight requests finish, then its resources are freed."""
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(f"model '{name}' is not loaded")
        async with model.lock:
            old, model.versions = model.versions, {}
            model.state, model.reason = "UNAVAILABLE", "unloaded"
        await asyncio.gather(*(served.close() for served in old.values()))
        await asyncio.to_thread(self.staging.drop, name)

    async def close(self, grace_s: float) -> None:
        """Drain every version for up to ``grace_s`` seconds, then fail what is left."""
        everything = self.loaded()
        for model in self._models.values():
            model.versions = {}
        closing = [asyncio.ensure_future(v.close()) for v in everything]
        pending: set[asyncio.Future[None]] = set()
        if closing:
            _, pending = await asyncio.wait(closing, timeout=grace_s)
        for version in everything:
            version.abort("server shutting down")
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        await asyncio.to_thread(self.staging.close)

    # -- internals ----------------------------------------------------------------------------

    async def _build(
        self, name: str, model_dir: Path, override: tuple[ModelConfig, bool] | None
    ) -> dict[int, ModelVersion]:
        config, batch_set = override if override is not None else await asyncio.to_thread(
            self._read_config, model_dir, name)
        available = await asyncio.to_thread(_version_dirs, model_dir)
        chosen = config.version_policy.select(available)
        if not chosen:
            raise ModelLoadError(
                f"model '{name}': no version directory matches its version_policy "
                f"(found {sorted(available)})"
            )
        built: dict[int, ModelVersion] = {}
        try:
            for number in chosen:
                built[number] = await self._build_version(
                    config, batch_set, model_dir / str(number), number
                )
        except BaseException:
            for served in built.values():
                await served.close()
            raise
        return built

    async def _build_version(
        self, config: ModelConfig, batch_set: bool, version_dir: Path, number: int
    ) -> ModelVersion:
        started = time.perf_counter()
        backend = await asyncio.to_thread(self._make_backend, config, version_dir)
        try:
            full = complete_model_config(
                config, backend.io, max_batch_size_set=batch_set,
                default_max_batch_size=self._default_max_batch,
            )
            check_fallback(full, self._newest)
            if self.check_version is not None:
                await asyncio.to_thread(self.check_version, full, version_dir)
            labels = await asyncio.to_thread(read_labels, full, version_dir.parent)  # issue 16
            if not await asyncio.to_thread(warm_up, backend, full, version_dir.parent, number):
                self.warmup_failures[full.name] = self.warmup_failures.get(full.name, 0) + 1
        except BaseException:
            backend.close()
            raise
        fallback = full.overload.fallback_model
        served = ModelVersion(
            full, number, backend,
            max_queue_size=self._default_max_queue,
            stats=ModelStats(window_s=self._window_s),
            inflight=self._inflight,
            fallback=(lambda: self._newest(fallback)) if fallback else None,
            labels=labels,
        )
        served.start()
        log.info(
            "model '%s' version %d loaded and warmed in %.2fs", config.name, number,
            time.perf_counter() - started,
        )
        return served

    def _newest(self, name: str) -> ModelVersion | None:
        """The newest ready version of ``name``, or None (no exception: a hot-path lookup)."""
        model = self._models.get(name)
        if model is None or not model.versions:
            return None
        return model.versions[max(model.versions)]

    def _retire(self, served: ModelVersion) -> None:
        task = asyncio.create_task(served.close(), name=f"retire:{served.name}:{served.version}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)



def _version_dirs(model_dir: Path) -> list[int]:
    return [
        int(p.name) for p in model_dir.iterdir()
        if p.is_dir() and p.name.isascii() and p.name.isdigit()  # not '١' (int() takes it)
    ]
