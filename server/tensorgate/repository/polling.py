"""Poll mode (`--model-control-mode poll`): the repository on disk is watched, and models that
appear, change or disappear are loaded, reloaded or unloaded, as in Triton's poll mode.

Every `--repository-poll-secs` seconds each model directory's fingerprint (the relative
path, size and modification time of every file under it) is compared with the one taken
before its last load. A reload loads the new versions while the old ones keep serving and
swaps them in only once they have loaded; when it fails, the old versions go on serving and
the model's record carries the reason. A model that failed to load is tried again only once
its files change, not at every poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from tensorgate.errors import TensorgateError
from tensorgate.repository.manager import ModelRepository, model_directories

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(model_dir: Path) -> Fingerprint:
    """(relative path, size, mtime in ns) of every file under `model_dir`, hidden ones left
    out: any edit, copy or removal inside the directory changes it."""
    entries: list[tuple[str, int, int]] = []
    for directory, subdirectories, files in os.walk(model_dir):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(directory, name)
            try:
                stat = os.stat(path)
            except OSError:  # removed while walking: the next poll sees the rest
                continue
            entries.append((os.path.relpath(path, model_dir), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def repository_fingerprints(roots: list[Path]) -> dict[str, Fingerprint]:
    """Every model directory of the repositories (hidden ones left out), by name; a name in
    two repositories has both directories' files in its fingerprint."""
    found: dict[str, Fingerprint] = {}
    for directory in model_directories(roots):
        found[directory.name] = found.get(directory.name, ()) + fingerprint(directory)
    return found


class RepositoryPoller:
    """Brings the loaded models in line with the repository's directories, on a period."""

    def __init__(self, repository: ModelRepository, interval_s: float) -> None:
        self.repository = repository
        self.interval_s = interval_s
        self._loaded_from: dict[str, Fingerprint] = {}  # taken before each model's last load

    async def remember(self) -> None:
        """Take every model's fingerprint before start-up loads them all."""
        self._loaded_from = await asyncio.to_thread(repository_fingerprints, self.repository.roots)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.poll()
            except OSError as exc:  # the repository itself unreadable for now: try again
                log.error("cannot read the model repository", extra={"reason": str(exc)})
            except Exception:  # a bug: logged, and the next poll tries again
                log.exception("polling the model repository failed")

    async def poll(self) -> None:
        """One comparison of the repository with what is loaded, and the loads it calls for."""
        current = await asyncio.to_thread(repository_fingerprints, self.repository.roots)
        for name in sorted(self._loaded_from.keys() - current.keys()):
            del self._loaded_from[name]
            log.info("model directory removed: unloading", extra={"model": name})
            await self.repository.forget(name)
        for name, files in current.items():
            before = self._loaded_from.get(name)
            if before == files:
                continue
            self._loaded_from[name] = files
            change = "added" if before is None else "changed"
            log.info(f"model directory {change}: loading", extra={"model": name})
            # A failure is logged and kept in the model's record by the load; a directory
            # gone again since it was read is seen as removed by the next poll.
            with contextlib.suppress(TensorgateError):
                await self.repository.load(name)
