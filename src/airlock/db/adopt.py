"""Adopting a database whose schema another tool made: ``airlock db baseline``.

Two ways in, as Flyway's users know them:

- **a baseline version** (Flyway's ``baselineVersion``): the migration files up to and including
  version V describe what the database already has. They are recorded in
  ``airlock_schema_history`` as applied, with type ``BASELINE``, without running; later files
  stay pending.
- **Flyway's history** (``flyway_schema_history``, or ``schema_version`` of Flyway 4 and older):
  every SQL migration Flyway applied and did not undo is recorded as applied, with Flyway's
  date, user and duration; files below a Flyway baseline are recorded as ``BASELINE``; a
  repeatable migration is recorded when its file still has the checksum Flyway ran, else it runs
  again on the next migrate (as Flyway would). Airlock's checksums are computed from the files;
  each file is also checked against the CRC-32 Flyway recorded
  (:func:`~airlock.db.files.flyway_checksum`), and a file that changed since Flyway ran it is
  reported (``migration.flyway-mismatch``) — adopted as it is now, since it did run.

Either way the live schema's fingerprint is recorded too, so drift detection starts at once.
Everything is checked before anything is written, and written in one transaction: a refusal
(a version no file has, no Flyway history, failed Flyway rows, a database Airlock already
migrated) changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql as pg_sql

from airlock.db.files import (
    MigrationFile,
    Migrations,
    Version,
    effective,
    flyway_checksum,
    parse_version,
    version_text,
)
from airlock.db.migrate import HISTORY_TABLE, SCHEMA_DDL, Migrator, who
from airlock.errors import Location, UsageError
from airlock.findings import Finding, Severity

__all__ = ["BaselineReport", "baseline"]

FLYWAY_TABLE = "flyway_schema_history"

# Flyway's row types for migrations Airlock can take over (SQL files) and for bookkeeping rows.
_SQL = "SQL"
_BASELINES = {"BASELINE", "SQL_BASELINE"}
_UNDONE = {"UNDO_SQL", "DELETE"}
_BOOKKEEPING = {"SCHEMA"}


@dataclass
class BaselineReport:
    """What ``airlock db baseline`` recorded."""

    database: str
    source: str  # "version" or "flyway"
    baseline_version: str | None = None
    recorded: list[dict[str, Any]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fingerprint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "source": self.source,
            "baseline_version": self.baseline_version,
            "recorded": self.recorded,
            "findings": [f.to_dict() for f in self.findings],
            "pending": self.pending,
            "notes": self.notes,
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True)
class _Row:
    """What to insert into ``airlock_schema_history`` for one adopted file."""

    migration: MigrationFile
    type: str  # V, R or BASELINE
    applied_by: str
    applied_at: Any = None  # a datetime from Flyway, or None for now()
    duration_ms: int = 0


@dataclass(frozen=True)
class _FlywayRow:
    rank: int
    version: str | None
    description: str
    type: str
    script: str
    checksum: int | None
    installed_by: str
    installed_on: Any
    execution_time: int
    success: bool


def baseline(
    migrator: Migrator,
    *,
    version: str | None = None,
    from_flyway: bool = False,
    flyway_table: str = FLYWAY_TABLE,
) -> BaselineReport:
    """Record the database's existing schema as the result of its migration files (see the
    module's docstring); raises :class:`~airlock.errors.UsageError` and changes nothing when
    the input does not fit."""
    if (version is None) == (not from_flyway):
        raise UsageError(
            "say what to adopt: --version V (files up to V are what the database has) or "
            "--from-flyway (what Flyway's history says it applied)",
            hint="pass exactly one of --version and --from-flyway",
        )
    migrations = migrator.migrations()
    # Airlock's tables are created with the rows, so a refusal leaves the database untouched.
    with migrator.session(prepare=False) as conn:
        _refuse_when_migrated(migrator, conn)
        report = BaselineReport(
            database=migrator.where, source="version" if version is not None else "flyway"
        )
        report.notes.extend(migrations.notes)
        if version is not None:
            rows = _up_to(migrations, version, report)
        else:
            rows = _from_flyway(conn, migrations, flyway_table, report)
        adopted = {row.migration.version for row in rows if row.migration.version is not None}
        latest = max(adopted, default=None)
        for migration in migrations.versioned:
            if migration.version is None or migration.version in adopted:
                continue
            report.pending.append(migration.name)
            if latest is not None and migration.version < latest:
                report.notes.append(
                    f"{migration.name}: below the latest adopted version "
                    f"{version_text(latest)} but not applied; migrate it with "
                    "--allow-out-of-order (Flyway's outOfOrder)"
                )
        recorded = {row.migration.name for row in rows}
        report.pending.extend(m.name for m in migrations.repeatable if m.name not in recorded)
        reason = (
            f"baseline at version {report.baseline_version}"
            if version is not None
            else f"adopted from {flyway_table}"
        )
        with conn.transaction():
            conn.execute(SCHEMA_DDL)
            for row in rows:
                _insert(conn, row)
            report.fingerprint = migrator.record_baseline(conn, "adopt", reason)
        report.recorded = [
            {"version": row.migration.version_label, "script": row.migration.name, "type": row.type}
            for row in rows
        ]
    return report


def _refuse_when_migrated(migrator: Migrator, conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (HISTORY_TABLE,)).fetchone()
    if not (row and row[0]):
        return
    versions, repeatables = effective(migrator.history(conn))
    if versions or repeatables:
        raise UsageError(
            f"{migrator.where} already has an Airlock history ({len(versions)} version(s) "
            "applied): a baseline only adopts a database Airlock has not migrated yet",
            hint="use `airlock db status` to see what is applied; `airlock db migrate` applies "
            "the rest",
        )


def _up_to(migrations: Migrations, text: str, report: BaselineReport) -> list[_Row]:
    try:
        target = parse_version(text)
    except ValueError:
        raise UsageError(
            f"--version {text!r} is not a version",
            hint="give it as in the file names: 3, 1.1 or 2_0_3",
        ) from None
    if migrations.by_version(target) is None:
        known = [m.version_label or "" for m in migrations.versioned]
        shown = ", ".join(known[:8] + (["…"] if len(known) > 12 else []) + known[8:][-4:])
        raise UsageError(
            f"no migration file in {migrations.folder} has version {version_text(target)}",
            hint=f"baseline at the version of an existing file ({shown or 'there are none'})",
        )
    report.baseline_version = version_text(target)
    return [
        _Row(migration, "BASELINE", who())
        for migration in migrations.versioned
        if migration.version is not None and migration.version <= target
    ]


def _from_flyway(
    conn: psycopg.Connection[Any],
    migrations: Migrations,
    table: str,
    report: BaselineReport,
) -> list[_Row]:
    history = _read_flyway(conn, table)
    failed = [row for row in history if not row.success]
    if failed:
        lines = [
            f"  rank {row.rank}: {row.script} (version {row.version or '-'}, {row.type})"
            for row in failed
        ]
        raise UsageError(
            f"{table} has {len(failed)} failed migration(s); nothing was adopted:\n"
            + "\n".join(lines),
            hint="find out what each failed migration left behind and clean it up, then remove "
            "its row (Flyway's `repair` does), and run the baseline again",
        )

    applied: dict[Version, _FlywayRow] = {}
    below: Version | None = None
    repeatable: dict[str, _FlywayRow] = {}  # by script
    for row in history:
        kind = row.type.upper()
        version = parse_version(row.version) if row.version else None
        if kind in _BOOKKEEPING:
            continue
        if kind in _BASELINES and version is not None:
            below = version if below is None else max(below, version)
        elif kind in _UNDONE and version is not None:
            applied.pop(version, None)
        elif kind == _SQL and version is not None:
            applied[version] = row
        elif kind == _SQL:
            repeatable[row.script] = row
        else:
            report.notes.append(
                f"{row.script}: a {row.type} migration in Flyway's history (version "
                f"{row.version or '-'}); Airlock records SQL files only, so it is left out"
            )

    missing = [row for version, row in applied.items() if migrations.by_version(version) is None]
    if missing:
        lines = [f"  version {row.version}: {row.script}" for row in missing]
        raise UsageError(
            f"{table} lists SQL migrations that have no file in {migrations.folder}; nothing "
            "was adopted:\n" + "\n".join(lines),
            hint="point --migrations (or database.migrations) at the folder Flyway ran, or "
            "restore the files from version control",
        )

    rows: list[_Row] = []
    for migration in migrations.versioned:
        assert migration.version is not None
        ran = applied.get(migration.version)
        if ran is not None:
            _compare(migration, ran, report)
            rows.append(
                _Row(migration, "V", ran.installed_by, ran.installed_on, ran.execution_time)
            )
        elif below is not None and migration.version <= below:
            rows.append(_Row(migration, "BASELINE", who()))
    for migration in migrations.repeatable:
        ran = repeatable.pop(migration.name, None) or _by_description(repeatable, migration)
        if ran is None:
            continue
        if ran.checksum == flyway_checksum(migration.read()):
            rows.append(
                _Row(migration, "R", ran.installed_by, ran.installed_on, ran.execution_time)
            )
        else:
            report.notes.append(
                f"{migration.name}: changed since Flyway last ran it; the next migrate runs it "
                "again (as Flyway would)"
            )
    for row in repeatable.values():
        report.notes.append(f"{row.script}: a repeatable migration Flyway ran has no file now")
    adopted_versions = [r.migration.version for r in rows if r.migration.version is not None]
    top = max([*applied, *([below] if below else []), *adopted_versions], default=None)
    report.baseline_version = version_text(top) if top is not None else None
    return rows


def _by_description(rows: dict[str, _FlywayRow], migration: MigrationFile) -> _FlywayRow | None:
    """Flyway's script column can hold a path below its location: match a repeatable by its
    file name, then by its description."""
    for script, row in list(rows.items()):
        if script.rsplit("/", 1)[-1] == migration.name or row.description == migration.description:
            return rows.pop(script)
    return None


def _compare(migration: MigrationFile, ran: _FlywayRow, report: BaselineReport) -> None:
    now = flyway_checksum(migration.read())
    if ran.checksum is None or ran.checksum == now:
        return
    report.findings.append(
        Finding(
            "migration.flyway-mismatch",
            Severity.WARNING,
            f"{migration.name} changed after Flyway applied it (Flyway recorded checksum "
            f"{ran.checksum}, the file now has {now}); the database has what the old "
            "content made, and it is adopted as the file is now",
            Location(str(migration.path)),
            hint="compare the file with its history in version control; if the change matters, "
            "make it in a new migration",
            evidence={"flyway": ran.checksum, "file": now, "version": migration.version_label},
        )
    )


def _read_flyway(conn: psycopg.Connection[Any], table: str) -> list[_FlywayRow]:
    found = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
        (table,),
    ).fetchone()
    if found is None:
        raise UsageError(
            f"there is no table {table} in the database: it was not migrated by Flyway (or "
            "Flyway kept its history under another name or schema)",
            hint="name Flyway's table with --flyway-table (schema.table; `schema_version` for "
            "Flyway 4 and older), or adopt with --version V",
        )
    query = pg_sql.SQL(
        "SELECT installed_rank, version, description, type, script, checksum, installed_by, "
        "installed_on, execution_time, success FROM {}.{} ORDER BY installed_rank"
    ).format(pg_sql.Identifier(found[0]), pg_sql.Identifier(found[1]))
    try:
        with conn.transaction():
            records: Sequence[Any] = conn.execute(query).fetchall()
    except psycopg.errors.UndefinedColumn as exc:
        raise UsageError(
            f"{table} is not a Flyway history table ({exc.diag.message_primary})",
            hint="name Flyway's table with --flyway-table",
        ) from None
    return [
        _FlywayRow(
            rank=r[0],
            version=r[1],
            description=r[2] or "",
            type=r[3] or "",
            script=r[4] or "",
            checksum=r[5],
            installed_by=r[6] or "flyway",
            installed_on=r[7],
            execution_time=int(r[8] or 0),
            success=bool(r[9]),
        )
        for r in records
    ]


def _insert(conn: psycopg.Connection[Any], row: _Row) -> None:
    migration = row.migration
    conn.execute(
        f"INSERT INTO {HISTORY_TABLE} (version, description, type, script, checksum, "
        "applied_by, applied_at, duration_ms, success) "
        "VALUES (%s, %s, %s, %s, %s, %s, coalesce(%s::timestamptz, now()), %s, true)",
        (
            migration.version_label,
            migration.description,
            row.type,
            migration.name,
            migration.checksum,
            row.applied_by,
            row.applied_at,
            row.duration_ms,
        ),
    )
