"""The state store: deployments, their event journal, what is deployed, environment locks (as
leases), gate runs, approvals, and the tamper-evident audit log (:mod:`airlock.state.audit`).

One :class:`StateStore` type with two backends: SQLite in ``.airlock/state.db`` (the default, one
operator) and PostgreSQL (``AIRLOCK_STATE_URL=postgresql://...``, a team sharing one store). The
runner journals every engine event here *before* the engine acts on it, so a deploy whose
process was killed can be rebuilt from the journal and finished or rolled back, from this
machine or, with a shared store, from another once the lease has expired (see ``docs/state.md``).
Nothing stored here holds a secret's value: config is kept as written, with references.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airlock.errors import StateError
from airlock.paths import state_dir
from airlock.state.base import (
    DEFAULT_LEASE_SECONDS,
    LEASE_ENV,
    SCHEMA_VERSION,
    Approval,
    DeployedRow,
    Deployment,
    GateRun,
    StateStore,
    masked_url,
    now_iso,
    this_holder,
)
from airlock.state.sqlite import SQLiteStateStore

if TYPE_CHECKING:
    from airlock.state.postgres import PostgresStateStore

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "LEASE_ENV",
    "SCHEMA_VERSION",
    "STATE_URL_ENV",
    "Approval",
    "DeployedRow",
    "Deployment",
    "GateRun",
    "PostgresStateStore",
    "SQLiteStateStore",
    "StateStore",
    "masked_url",
    "now_iso",
    "open_state",
    "state_location",
    "this_holder",
    "use_project_url",
]

#: The environment variable naming a shared state store (a ``postgresql://`` URL).
STATE_URL_ENV = "AIRLOCK_STATE_URL"
_POSTGRES = ("postgresql://", "postgres://")


def open_state(
    project_root: Path,
    *,
    url: str | None = None,
    readonly: bool = False,
    lease_seconds: float | None = None,
) -> StateStore:
    """The state store of the project in ``project_root``.

    Which one: ``url`` (a project's ``state.url``), else ``AIRLOCK_STATE_URL``, else SQLite in
    ``.airlock/state.db``. A URL is ``postgresql://USER:PASSWORD@HOST:PORT/DATABASE``, or
    ``sqlite:PATH`` (relative to the project). A writer creates or upgrades the store's schema in
    place; ``readonly`` never writes anything (a missing store reads as empty). A lease lasts
    ``lease_seconds``, else ``AIRLOCK_LEASE_SECONDS``, else 30 s.
    """
    chosen = _chosen_url(url, project_root)
    store: StateStore
    if chosen is not None and chosen.startswith(_POSTGRES):
        from airlock.state.postgres import PostgresStateStore

        store = PostgresStateStore(chosen, readonly=readonly, lease_seconds=lease_seconds)
    else:
        path = _sqlite_path(project_root, chosen)
        store = SQLiteStateStore(path, readonly=readonly, lease_seconds=lease_seconds)
    name = _PROJECT_NAMES.get(Path(project_root).resolve())
    if name is not None and not readonly:
        store.audit_home = (Path(project_root), name)  # its periodic audit checkpoints
    return store


def state_location(project_root: Path, *, url: str | None = None) -> str:
    """Where :func:`open_state` would find the store, for people (a URL without its password)."""
    chosen = _chosen_url(url, project_root)
    if chosen is not None and chosen.startswith(_POSTGRES):
        return masked_url(chosen)
    return str(_sqlite_path(project_root, chosen))


#: Project folder → the ``state.url`` its ``airlock.yaml`` names (see :func:`use_project_url`).
_PROJECT_URLS: dict[Path, str] = {}
#: Project folder → the project's name (its audit signing key is named after it).
_PROJECT_NAMES: dict[Path, str] = {}


def use_project_url(project_root: Path, url: str | None, *, name: str | None = None) -> None:
    """Remember the ``state: {url: …}`` of the project in ``project_root``: :func:`open_state`
    uses it when it is given no ``url`` and ``AIRLOCK_STATE_URL`` is not set (the library calls
    this when it loads a project). With the project's ``name``, stores opened for writing sign
    the audit log's periodic checkpoints with that project's key."""
    key = Path(project_root).resolve()
    if url:
        _PROJECT_URLS[key] = url
    else:
        _PROJECT_URLS.pop(key, None)
    if name:
        _PROJECT_NAMES[key] = name


def _chosen_url(url: str | None, project_root: Path | None = None) -> str | None:
    if url or os.environ.get(STATE_URL_ENV):
        return url or os.environ.get(STATE_URL_ENV)
    if project_root is not None:
        return _PROJECT_URLS.get(Path(project_root).resolve())
    return None


def _sqlite_path(project_root: Path, url: str | None) -> Path:
    if url is None:
        return state_dir(project_root) / "state.db"
    if not url.startswith("sqlite:"):
        raise StateError(
            f"unknown kind of state store: {masked_url(url)}",
            hint="use postgresql://USER:PASSWORD@HOST:PORT/DATABASE for a shared store, "
            f"or leave {STATE_URL_ENV} unset for SQLite in .airlock/",
        )
    path = url.removeprefix("sqlite:")
    if path.startswith("//"):  # sqlite:///absolute/path or sqlite://relative/path
        path = path[2:]
    return project_root / path


def __getattr__(name: str) -> Any:
    if name == "PostgresStateStore":  # imported when asked for: psycopg only for PostgreSQL
        from airlock.state.postgres import PostgresStateStore

        return PostgresStateStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
