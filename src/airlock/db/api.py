"""``airlock db``, as library functions: each command of the CLI is one function here.

Every function takes a :class:`~airlock.db.target.Target` (see :func:`target`), so the same code
serves an environment of ``airlock.yaml`` and a bare ``--database-url`` with ``--migrations``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airlock.db import backup as backups
from airlock.db.adopt import FLYWAY_TABLE, BaselineReport
from airlock.db.adopt import baseline as adopt
from airlock.db.files import Pending, discover
from airlock.db.fingerprint import SchemaDiff
from airlock.db.lint import lint_files
from airlock.db.migrate import Migrator, Report
from airlock.db.rehearse import Method, Rehearsal
from airlock.db.rehearse import rehearse as run_rehearsal
from airlock.db.target import Target, backup_key, resolve
from airlock.errors import GateFailed, UsageError
from airlock.findings import Finding, Severity
from airlock.model import Project, load_project

Progress = Callable[[str], None]


def target(
    project: Path | str | None = None,
    env: str | None = None,
    *,
    database_url: str | None = None,
    migrations: Path | str | None = None,
    **overrides: Any,
) -> Target:
    """Resolve a command's target. ``project`` is only read when an environment is named."""
    loaded: Project | None = None
    if env is not None and not database_url:
        loaded = load_project(Path(project or "."))
    return resolve(
        project=loaded,
        env=env,
        database_url=database_url,
        migrations=Path(migrations) if migrations else None,
        **overrides,
    )


def _migrator(target_: Target, progress: Progress | None = None, **kwargs: Any) -> Migrator:
    return Migrator(
        target_.url,
        target_.require_migrations(),
        settings=target_.settings,
        progress=progress,
        **kwargs,
    )


def status(target_: Target) -> dict[str, Any]:
    """Applied and pending migrations, and validation findings."""
    return _migrator(target_).status()


def validate(target_: Target) -> list[Finding]:
    return [Finding(**_finding_fields(f)) for f in status(target_)["findings"]]


def _finding_fields(data: dict[str, Any]) -> dict[str, Any]:
    from airlock.errors import Location

    location = data.get("location")
    return {
        "code": data["code"],
        "severity": Severity(data["severity"]),
        "message": data["message"],
        "location": Location(**location) if location else None,
        "hint": data.get("hint"),
        "evidence": data.get("evidence") or {},
    }


def lint(
    target_: Target | None, folder: Path | None = None, *, every: bool = False
) -> list[Finding]:
    """Lint the pending migrations (or, with ``every`` or no database, every file)."""
    if target_ is not None and not every:
        return pending_and_lint(target_)[1]
    source = folder or (target_.require_migrations() if target_ else None)
    if source is None:
        raise UsageError("nothing to lint", hint="pass --migrations DIR or an environment")
    found = discover(source)
    files = [m.path for m in found.versioned + found.repeatable]
    return lint_files([(str(p), p.read_text(encoding="utf-8")) for p in files])


def pending_and_lint(target_: Target) -> tuple[list[dict[str, Any]], list[Finding]]:
    """The migrations pending on the target (as ``status`` lists them) and their lint findings,
    judged against what the database has."""
    pending = status(target_)["pending"]
    folder = discover(target_.require_migrations()).folder
    files = [folder / item["script"] for item in pending]
    return pending, lint_against(target_, [(str(p), p.read_text(encoding="utf-8")) for p in files])


def catalogue(url: str) -> tuple[list[str], list[str]]:
    """``schema.name`` of every table and of every index in the database's own schemas."""
    from airlock.db.connect import connect

    with connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT c.relkind::text, n.nspname || '.' || c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p', 'i', 'I') "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'"
        ).fetchall()
    tables = [str(name) for kind, name in rows if kind in ("r", "p")]
    indexes = [str(name) for kind, name in rows if kind in ("i", "I")]
    return tables, indexes


def lint_against(target_: Target, files: list[tuple[str, str]]) -> list[Finding]:
    """Lint ``files`` knowing the tables and indexes the target's database has: a statement on
    a table that is not there yet, or a drop of an index that is not there, blocks nobody."""
    tables, indexes = catalogue(target_.url)
    return lint_files(files, existing_tables=tables, existing_indexes=indexes)


def drift(target_: Target) -> SchemaDiff | None:
    return _migrator(target_).drift()


def drift_summary(found: SchemaDiff | None) -> dict[str, Any]:
    """:func:`drift`'s answer as data (``airlock db drift --format json``): whether a schema
    was recorded, whether it drifted, and the objects added, removed and changed."""
    return {
        "recorded": found is not None,
        "drift": bool(found and not found.empty),
        "added": found.added if found else [],
        "removed": found.removed if found else [],
        "changed": found.changed if found else [],
    }


def project_migrations(project: Path | str) -> Path | None:
    """The migrations folder ``airlock.yaml`` names (None when it names none)."""
    loaded = load_project(Path(project))
    if loaded.database is None or loaded.database.migrations is None:
        return None
    return loaded.root / loaded.database.migrations


def accept_drift(target_: Target, reason: str) -> str:
    return _migrator(target_).accept_drift(reason)


@dataclass
class MigrateOutcome:
    report: Report
    lint: list[Finding] = field(default_factory=list)
    snapshot: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.report.to_dict(),
            "lint": [f.to_dict() for f in self.lint],
            "snapshot": self.snapshot,
        }


def migrate(
    target_: Target,
    *,
    dry_run: bool = False,
    release_id: str | None = None,
    snapshot: bool = True,
    key_env: str | None = None,
    check_lint: bool = True,
    progress: Progress | None = None,
) -> MigrateOutcome:
    """Validate → drift check → lint → snapshot → migrate, under the migration lock."""
    say = progress or (lambda _text: None)
    outcome = MigrateOutcome(report=Report(database=target_.display))
    migrator = _migrator(target_, progress, release_id=release_id)

    def before_apply(todo: Pending) -> None:
        if check_lint:
            outcome.lint = lint_against(target_, [(str(m.path), m.read()) for m in todo.all])
            errors = [f for f in outcome.lint if f.severity is Severity.ERROR]
            if errors:
                lines = [f"  {f.location}: {f.code}: {f.message}" for f in errors]
                raise GateFailed(
                    "the pending migrations have lint errors; nothing was migrated:\n"
                    + "\n".join(lines),
                    hint="use the safe alternative each rule describes (docs/migration-lint.md), "
                    "or silence one statement with `-- airlock:ignore CODE reason`",
                )
        if snapshot and target_.home is not None:
            say("taking a verified snapshot before migrating")
            outcome.snapshot = take_snapshot(target_, key_env=key_env)

    outcome.report = migrator.migrate(dry_run=dry_run, before_apply=before_apply)
    return outcome


def take_snapshot(target_: Target, *, key_env: str | None = None) -> dict[str, Any]:
    """An encrypted, verified backup in the target's ``snapshots/`` folder."""
    if target_.home is None:
        raise UsageError("snapshots need an environment", hint="use `airlock db backup` instead")
    folder = target_.home / "snapshots"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    path = folder / f"{stamp}.albk"
    result = backups.backup_and_verify(target_.url, path, backup_key(target_, key_env))
    return {"path": str(path), **_public(result)}


def _public(result: object) -> dict[str, Any]:
    to_dict = getattr(result, "to_dict", None)
    if callable(to_dict):
        data = to_dict()
        return dict(data) if isinstance(data, dict) else {}
    return {}


def baseline(
    target_: Target,
    *,
    version: str | None = None,
    from_flyway: bool = False,
    flyway_table: str = FLYWAY_TABLE,
) -> BaselineReport:
    """Adopt a database another tool migrated: record the files up to ``version`` as applied
    without running them, or (``from_flyway``) what Flyway's history says it applied."""
    return adopt(
        _migrator(target_), version=version, from_flyway=from_flyway, flyway_table=flyway_table
    )


def rehearse(target_: Target, *, method: Method = "auto") -> Rehearsal:
    return run_rehearsal(target_, method=method)


def undo(target_: Target, *, steps: int = 1, to: str | None = None) -> Report:
    return _migrator(target_).undo(steps=steps, to=to)


def backup(target_: Target, output: Path, *, key_env: str | None = None) -> dict[str, Any]:
    """An encrypted backup of the target, restored into a scratch database and verified."""
    result = backups.backup_and_verify(target_.url, output, backup_key(target_, key_env))
    return {"path": str(output), **_public(result)}


def restore(
    target_: Target, source: Path, *, key_env: str | None = None, force: bool = False
) -> dict[str, Any]:
    """Verify a backup, then restore it over the target (``force`` when it has data)."""
    result = backups.restore(source, backup_key(target_, key_env), target_.url, force=force)
    return {"path": str(source), **_public(result)}
