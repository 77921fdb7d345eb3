"""Where Airlock keeps things on the operator's disk, for one project.

``.airlock/`` beside ``airlock.yaml`` holds the state store (SQLite by default), the sealed
releases and one folder per environment (its agent, logs, data and embedded database).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["env_dir", "releases_dir", "state_dir"]


def state_dir(project_root: Path) -> Path:
    """Where Airlock keeps its state for a project: ``.airlock/`` beside ``airlock.yaml``."""
    return project_root / ".airlock"


def env_dir(project_root: Path, env: str) -> Path:
    """Where one environment's agent, logs, data and database live."""
    return state_dir(project_root) / "envs" / env


def releases_dir(project_root: Path) -> Path:
    """Where sealed release bundles live, one folder per release id."""
    return state_dir(project_root) / "releases"
