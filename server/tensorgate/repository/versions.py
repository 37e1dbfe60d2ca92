"""Version directories and the version policy that picks which of them are served."""

from __future__ import annotations

from pathlib import Path

from tensorgate_protos import model_config_pb2 as mc

from tensorgate.errors import ModelLoadError


def is_version_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²' and other digits int() may refuse."""
    return text.isascii() and text.isdigit()


def available_versions(model_dir: Path) -> list[int]:
    """Numeric subdirectories of a model directory, ascending; others are ignored like Triton."""
    versions = []
    for child in model_dir.iterdir():
        if child.is_dir() and is_version_number(child.name) and not child.name.startswith("0"):
            versions.append(int(child.name))
    return sorted(versions)


def select_versions(available: list[int], policy: mc.ModelVersionPolicy) -> list[int]:
    """Apply a version policy: latest N (default latest 1), all, or specific versions."""
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return list(available)
    if choice == "specific":
        missing = [v for v in policy.specific.versions if v not in available]
        if missing:
            raise ModelLoadError(
                f"version policy names versions {missing} that have no directory "
                f"(available: {available})"
            )
        return sorted(set(policy.specific.versions))
    count = policy.latest.num_versions if choice == "latest" else 1
    if count < 1:
        raise ModelLoadError("version policy 'latest' needs num_versions >= 1")
    return available[-count:]
