"""The model repository on disk: what models exist, which versions are loaded, and their state.

Loading runs in a worker thread so the event loop keeps serving other models meanwhile. A
model that fails to load is UNAVAILABLE with the reason kept for RepositoryIndex and logged;
the other models are unaffected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tensorgate_protos import model_config_pb2 as mc

from tensorgate.errors import ModelLoadError, NotFound, TensorgateError, Unavailable
from tensorgate.observability.metrics import MetricsStore
from tensorgate.repository.config import read_config
from tensorgate.repository.overrides import LoadOverride, remove_files
from tensorgate.repository.versions import available_versions, is_version_number, select_versions
from tensorgate.runners.base import ModelVersion
from tensorgate.runners.build import VersionBuilder
from tensorgate.settings import Settings

log = logging.getLogger(__name__)


def model_directories(roots: list[Path]) -> list[Path]:
    """Every model directory in the repositories (hidden ones skipped), repository by
    repository; a name in two of them comes twice."""
    return [
        entry
        for root in roots
        for entry in sorted(root.iterdir())
        if entry.is_dir() and not entry.name.startswith(".")
    ]


READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"


@dataclass(slots=True)
class ModelRecord:
    """A model directory and what is known about it."""

    name: str
    state: str = ""
    reason: str = ""
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    load_seconds: float = 0.0  # the last load, successful or not
    loads: dict[str, int] = field(default_factory=dict)  # "success" / "failure" -> count
    files_dir: Path | None = None  # where a load's own files were written (LoadOverride)


class ModelRepository:
    """Owns every model record; all mutation happens on the event loop."""

    def __init__(
        self,
        settings: Settings,
        metrics: MetricsStore | None = None,
        on_state_change: Callable[[], None] | None = None,
    ) -> None:
        self.roots = settings.model_repository
        self.settings = settings
        self.metrics = metrics
        self.builder = VersionBuilder(settings, metrics, self.get)
        self.records: dict[str, ModelRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Models whose files load at once (Triton's --model-load-thread-count).
        self._load_slots = asyncio.Semaphore(settings.model_load_thread_count)
        # Called on the loop after any model's state changes (health status follows it).
        self._on_state_change = on_state_change or (lambda: None)

    def scan(self) -> list[str]:
        """Model directories in the repositories (hidden ones skipped), recorded if new."""
        names = sorted({directory.name for directory in model_directories(self.roots)})
        for name in names:
            self.records.setdefault(name, ModelRecord(name))
        return names

    def _directories(self, name: str) -> list[Path]:
        """The model's directory in each repository that has one (one, unless misplaced)."""
        return [root / name for root in self.roots if (root / name).is_dir()]

    def _not_found(self, name: str) -> NotFound:
        where = ", ".join(str(root) for root in self.roots)
        return NotFound(f"model '{name}' is not in the repository {where}")

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The version to serve: the requested one, else the highest loaded."""
        record = self.records.get(name)
        if record is None or (not record.versions and record.state == ""):
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        if record.state != READY or not record.versions:
            reason = f": {record.reason}" if record.reason else ""
            raise Unavailable(
                f"model '{name}' is not ready (state {record.state or 'UNAVAILABLE'}){reason}"
            )
        if not version:
            model = record.versions[max(record.versions)]
        elif not is_version_number(version) or int(version) not in record.versions:
            raise NotFound(
                f"Request for unknown model: '{name}' version {version} is not found "
                f"(loaded versions: {sorted(record.versions)})"
            )
        else:
            model = record.versions[int(version)]
        if model.needs and (missing := self._missing_need(model)):
            raise Unavailable(f"model '{name}' is not ready: {missing}")
        if not getattr(model.runner, "serving", True):
            raise Unavailable(
                f"model '{name}' is not ready: every instance ran past the model's timeout "
                "and new ones are still being created"
            )
        return model

    def _missing_need(self, model: ModelVersion) -> str:
        """Why a model that calls others (an ensemble) cannot serve now; "" when it can."""
        for need in model.needs:
            record = self.records.get(need)
            if record is None or record.state != READY or not record.versions:
                state = record.state if record is not None and record.state else UNAVAILABLE
                return f"its step model '{need}' is {state}"
        return ""

    async def load(self, name: str, override: LoadOverride | None = None) -> None:
        """Load or reload a model, from the repository or with the config and files a load
        request gave; on failure the record holds the reason and it is raised."""
        directories = self._directories(name)
        from_files = override is not None and bool(override.files)
        if not from_files and not directories:
            raise self._not_found(name)
        model_dir = directories[0] if directories else self.roots[0] / name
        record = self.records.setdefault(name, ModelRecord(name))
        async with self._locks.setdefault(name, asyncio.Lock()):
            old_files = record.files_dir
            previous = record.versions
            if not previous:
                record.state = LOADING
                self._on_state_change()
            record.reason = ""
            started = time.perf_counter()
            if self.builder.calls is not None:
                self.builder.calls.bind(asyncio.get_running_loop())
            files_dir = None
            try:
                if override is not None and from_files:
                    files_dir = model_dir = await asyncio.to_thread(override.materialize, name)
                elif len(directories) > 1:  # as Triton: names are unique across repositories
                    raise ModelLoadError(
                        f"model '{name}' is in more than one model repository "
                        f"({', '.join(str(d.parent) for d in directories)}): a name must be "
                        "unique across them"
                    )
                config = override.config if override is not None else None
                await self._load_steps(name, model_dir, config)
                versions = await self._load_files(name, model_dir, config)
            except Exception as exc:
                if files_dir is not None:
                    await asyncio.to_thread(remove_files, files_dir)
                reason = exc.message if isinstance(exc, TensorgateError) else repr(exc)
                self._finish_load(record, started, "failure", READY if previous else UNAVAILABLE)
                record.reason = reason
                log.error(
                    "model load failed",
                    extra={"model": name, "reason": reason},
                    exc_info=not isinstance(exc, TensorgateError),
                )
                raise ModelLoadError(f"failed to load '{name}': {reason}") from None
            record.versions, record.files_dir = versions, files_dir
            self._finish_load(record, started, "success", READY)
            log.info(
                "model loaded",
                extra={
                    "model": name,
                    "versions": sorted(versions),
                    "seconds": round(record.load_seconds, 3),
                },
            )
        await self._close_versions(previous)
        if old_files is not None:
            await asyncio.to_thread(remove_files, old_files)

    async def _load_files(
        self, name: str, model_dir: Path, config: mc.ModelConfig | None
    ) -> dict[int, ModelVersion]:
        """The versions built from the model's files, in a load slot; a failure is tried
        again up to --model-load-retry-count times before it counts."""
        retries = self.settings.model_load_retry_count
        async with self._load_slots:
            for attempt in range(retries + 1):
                try:
                    return await asyncio.to_thread(self._load_blocking, name, model_dir, config)
                except Exception as exc:
                    if attempt == retries:
                        raise
                    reason = exc.message if isinstance(exc, TensorgateError) else repr(exc)
                    log.warning(
                        "model load failed; trying again",
                        extra={"model": name, "attempt": attempt + 1, "reason": reason},
                    )
        raise AssertionError("unreachable")

    async def _load_steps(
        self, name: str, model_dir: Path, config: mc.ModelConfig | None = None
    ) -> None:
        """An ensemble's step models load first (once; one already loading is awaited)."""
        if config is None:
            config = read_config(model_dir, self.settings.model_config_name)
        if config is None or config.platform != "ensemble":
            return
        for step in sorted({s.model_name for s in config.ensemble_scheduling.step} - {name}):
            if not self._directories(step):
                continue  # the plan's check names the missing model
            try:
                await self.ensure_loaded(step)
            except ModelLoadError:
                continue  # likewise: the step's own load error is in its record

    async def ensure_loaded(self, name: str) -> None:
        """Load a model unless it is loaded or loading (start-up, an ensemble's steps)."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        if lock.locked():
            async with lock:
                pass
        record = self.records.get(name)
        if record is None or record.state != READY:
            await self.load(name)

    def _finish_load(self, record: ModelRecord, started: float, outcome: str, state: str) -> None:
        record.load_seconds = time.perf_counter() - started
        record.loads[outcome] = record.loads.get(outcome, 0) + 1
        record.state = state
        self._on_state_change()

    async def unload(self, name: str, dependents: bool = False) -> None:
        """Stop serving a model and release its instances once running work has finished;
        with `dependents`, an ensemble's step models too (Triton's unload_dependents)."""
        record = self.records.get(name)
        if record is None:
            raise self._not_found(name)
        steps = sorted(
            {
                s.model_name
                for v in record.versions.values()
                for s in v.config.ensemble_scheduling.step
            }
            - {name}
        )
        async with self._locks.setdefault(name, asyncio.Lock()):
            previous, record.versions = record.versions, {}
            record.state, record.reason = UNLOADING, ""
            self._on_state_change()
            await self._close_versions(previous)
            record.state, record.reason = UNAVAILABLE, "unloaded"
            self._on_state_change()
            if record.files_dir is not None:
                await asyncio.to_thread(remove_files, record.files_dir)
                record.files_dir = None
            log.info("model unloaded", extra={"model": name})
        if dependents:
            for step in steps:
                if step in self.records and self.records[step].versions:
                    await self.unload(step, dependents=True)

    async def forget(self, name: str) -> None:
        """A model whose directory is gone (poll mode): unloaded, then no longer known."""
        record = self.records.get(name)
        if record is not None and record.versions:
            await self.unload(name)
        self.records.pop(name, None)
        self._on_state_change()

    async def close(self, timeout_s: float | None = None) -> None:
        """Unload everything (server shutdown). Models still running a batch after
        `timeout_s` are left to end with the process, and named in the log."""
        closing: dict[asyncio.Task[None], str] = {}
        for name, record in self.records.items():
            previous, record.versions = record.versions, {}
            if previous:
                closing[asyncio.create_task(self._close_versions(previous))] = name
        if not closing:
            return
        done, pending = await asyncio.wait(closing, timeout=timeout_s)
        for task in pending:
            task.cancel()
            log.warning(
                "model still running a batch at exit; not waited for",
                extra={"model": closing[task], "waited_s": timeout_s},
            )
        for task in done:
            if (error := task.exception()) is not None:
                log.error("model failed to close", extra={"model": closing[task]}, exc_info=error)

    @staticmethod
    async def _close_versions(versions: dict[int, ModelVersion]) -> None:
        for version in versions.values():
            await version.runner.close()

    def _load_blocking(
        self, name: str, model_dir: Path, override: mc.ModelConfig | None = None
    ) -> dict[int, ModelVersion]:
        if override is not None:
            config = mc.ModelConfig()
            config.CopyFrom(override)
        else:
            config = read_config(model_dir, self.settings.model_config_name) or mc.ModelConfig()
        if config.name and config.name != name:
            raise ModelLoadError(
                f"config.pbtxt names the model '{config.name}' but its directory is '{name}'"
            )
        config.name = name
        versions = select_versions(available_versions(model_dir), config.version_policy)
        if not versions:
            raise ModelLoadError(f"no version directories (1/, 2/, ...) under {model_dir}")
        loaded: dict[int, ModelVersion] = {}
        try:
            for version in versions:
                loaded[version] = self.builder.build(name, model_dir, version, config)
        except BaseException:
            for done in loaded.values():
                done.runner.discard()
            raise
        return loaded

    def states(self) -> list[tuple[str, str, float, dict[str, int]]]:
        """(name, state, last load seconds, loads by outcome) per known model."""
        return [
            (name, r.state or UNAVAILABLE, r.load_seconds, dict(r.loads))
            for name, r in sorted(self.records.items())
        ]

    def index(self, ready_only: bool = False) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) for every model; loaded versions listed one by one."""
        rows: list[tuple[str, str, str, str]] = []
        for name in sorted(self.records):
            record = self.records[name]
            if ready_only and record.state != READY:
                continue
            if record.versions:
                for v in sorted(record.versions):
                    missing = self._missing_need(record.versions[v])
                    state, reason = (
                        (UNAVAILABLE, missing) if missing else (record.state, record.reason)
                    )
                    rows.append((name, str(v), state, reason))
            else:
                rows.append((name, "", record.state, record.reason))
        return rows
