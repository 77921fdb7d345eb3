"""Which database a ``airlock db`` command works on: an environment of ``airlock.yaml``, or a URL.

``airlock db migrate ENV`` takes the environment's database (starting its embedded server when it
has one) and the project's migrations folder; ``airlock db migrate --database-url URL --migrations
DIR`` works without a project, like Flyway's command line.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airlock.bundle import Bundle
from airlock.db.connect import connect, display_url, password_of, with_database
from airlock.db.migrate import Settings
from airlock.db.server import EmbeddedServer
from airlock.errors import SecretError, UsageError
from airlock.masking import Masker
from airlock.model import (
    Project,
    Reference,
    migrates,
    references,
    require_env,
    substitute,
)
from airlock.paths import env_dir
from airlock.secrets import SecretResolver, resolver


@dataclass
class Target:
    """A database to work on, with what is needed to work on it."""

    url: str
    migrations: Path | None
    settings: Settings
    env: str | None = None
    project: Project | None = None
    home: Path | None = None  # where this target's snapshots and keys live
    root: Path | None = None  # the project folder holding .airlock/
    masker: Masker = field(default_factory=Masker)

    @property
    def display(self) -> str:
        return display_url(self.url)

    def require_migrations(self) -> Path:
        if self.migrations is None:
            raise UsageError(
                "no migrations folder",
                hint="set database.migrations in airlock.yaml, or pass --migrations DIR",
            )
        return self.migrations


def embedded_server(project_root: Path, env: str) -> EmbeddedServer:
    return EmbeddedServer(env_dir(project_root, env) / "postgres")


def settings_of(project: Project | None, **overrides: object) -> Settings:
    base = project.database if project is not None else None
    values: dict[str, object] = {}
    if base is not None:
        values = {
            "lock_timeout": base.lock_timeout,
            "statement_timeout": base.statement_timeout,
            "lock_wait": base.lock_wait,
            "retries": base.retries,
        }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)  # type: ignore[arg-type]


def _resolve_secrets(text: str, where: str, secrets: SecretResolver) -> tuple[str, list[str]]:
    used: list[str] = []

    def value(ref: Reference) -> str:
        if ref.kind != "secret":
            raise UsageError(f"{where}: only ${{secret:NAME}} references are allowed here")
        found = secrets.require(ref.name, used_by=where)
        used.append(found)
        return found

    return substitute(text, value), used


def environment_database_url(
    project: Project, env: str, *, state_root: Path | None = None
) -> tuple[str, list[str]]:
    """The URL of an environment's database (its embedded server started on demand), and the
    secret values it contains. ``state_root`` is the project folder holding ``.airlock/`` (it
    differs from ``project.root`` for a project loaded from a sealed release)."""
    require_env(project, env)
    database = project.environments[env].database
    if database is None or (not database.embedded and not database.url):
        raise UsageError(
            f"environment {env!r} has no database",
            hint="give it `database: {embedded: true}` or `database: {url: postgresql://...}`",
        )
    if database.url:
        url, used = _resolve_secrets(
            database.url,
            f"environments.{env}.database.url",
            resolver(project, env, root=state_root or project.root),
        )
        return url, used
    info = embedded_server(state_root or project.root, env).ensure_running()
    name = database.name or project.project
    admin = info.url()
    with connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            from psycopg import sql

            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return info.url(name), [info.password]


def release_target(bundle: Bundle, env: str, state_root: Path) -> Target | None:
    """``env``'s database with the release's *sealed* migrations (not the working tree's), or
    None when the release has no migrations or the environment no database."""
    project = bundle.project
    if not migrates(project, env) or project.database is None or not project.database.migrations:
        return None
    return resolve(
        project=project,
        env=env,
        database_url=None,
        migrations=bundle.files_dir / project.database.migrations,
        state_root=state_root,
    )


def resolve(
    *,
    project: Project | None,
    env: str | None,
    database_url: str | None,
    migrations: Path | None,
    state_root: Path | None = None,
    **overrides: Any,
) -> Target:
    """The target of a ``db`` command from its arguments."""
    if database_url:
        if env:
            raise UsageError("give either an environment or --database-url, not both")
        masker = Masker(*(p for p in [password_of(database_url)] if p))
        return Target(
            url=database_url,
            migrations=migrations,
            settings=settings_of(None, **overrides),
            masker=masker,
        )
    if env is None:
        raise UsageError(
            "which database?",
            hint="name an environment (`airlock db status staging`) or pass --database-url URL",
        )
    if project is None:
        raise UsageError("an environment needs airlock.yaml", hint="run in the project folder")
    root = state_root or project.root
    url, used = environment_database_url(project, env, state_root=root)
    folder = migrations
    if folder is None and project.database is not None and project.database.migrations:
        folder = project.root / project.database.migrations
    return Target(
        url=url,
        migrations=folder,
        settings=settings_of(project, **overrides),
        env=env,
        project=project,
        home=env_dir(root, env),
        root=root,
        masker=Masker(*used),
    )


def backup_key(target: Target, key_env: str | None = None) -> bytes:
    """The key for snapshots and backups: ``--key-env VAR``, the environment's ``backup_key``
    secret, or a key generated once and kept (mode 0600) in the environment's folder."""
    from airlock.db.backup import key_from_text

    if key_env:
        text = os.environ.get(key_env)
        if not text:
            raise SecretError(f"--key-env {key_env}: the variable is not set")
        return key_from_text(text)
    project, env = target.project, target.env
    if project is not None and env is not None:
        database = project.environments[env].database
        if database is not None and database.backup_key:
            refs = list(references(database.backup_key))
            if len(refs) != 1 or refs[0].kind != "secret":
                raise UsageError(
                    f"environments.{env}.database.backup_key must be a ${{secret:NAME}} reference"
                )
            text, _ = _resolve_secrets(
                database.backup_key,
                f"environments.{env}.database.backup_key",
                resolver(
                    project,
                    env,
                    root=target.root or project.root,
                ),
            )
            return key_from_text(text)
    if target.home is None:
        raise UsageError(
            "backups are encrypted: say which key to use",
            hint="pass --key-env VAR naming an environment variable that holds the key",
        )
    path = target.home / "backup.key"
    if not path.is_file():
        target.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    return key_from_text(path.read_text().strip())


def scratch_url(url: str, name: str) -> str:
    return with_database(url, name)
