"""The PostgreSQL side of migrations: lock, history, apply, drift.

A :class:`Migrator` owns one connection to the target database for a whole run and holds a
session-level advisory lock on it, so only one migrator works on a database at a time (INC05); a
second one waits up to ``lock_wait`` and then fails naming who holds the lock.

Each versioned migration runs in its own transaction together with its history row, with
``lock_timeout`` and ``statement_timeout`` set for that transaction; a lock timeout is retried with
backoff. A file whose statements PostgreSQL cannot run in a transaction (``CREATE INDEX
CONCURRENTLY``, ``VACUUM``, …) runs statement by statement in autocommit instead: each statement
is marked as started in ``airlock_schema_progress`` before it runs and as completed after, so a
run that fails or is killed half way resumes at the statement that did not complete. What such a
statement leaves behind when it fails (the INVALID index of a concurrent build, the ``*_ccnew``
copies of a concurrent reindex) is dropped before it runs again, and a concurrent detach left
pending is finished with ``FINALIZE``. A file that mixes both kinds is refused before anything runs.

After every successful migrate the schema's fingerprint is recorded in
``airlock_schema_baseline``; before migrating, the live schema is compared with it, and any
difference (someone changed the schema by hand) refuses the run with ``migration.drift`` (INC03).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from pglast.enums.parsenodes import AlterTableType, ObjectType, ReindexObjectType
from psycopg import errors as pg_errors
from psycopg import sql as pg_sql

from airlock.db.connect import DatabaseUnreachable, connect, display_url
from airlock.db.files import (
    Applied,
    MigrationFile,
    Migrations,
    Pending,
    checksum,
    discover,
    effective,
    parse_version,
    pending,
    validate,
    version_text,
)
from airlock.db.fingerprint import (
    DEFAULT_EXCLUDED_TABLES,
    SchemaDiff,
    diff,
    fingerprint,
    schema_snapshot,
)
from airlock.db.sql import Statement, explicit_transaction_control, split
from airlock.errors import AirlockError, GateFailed, UsageError
from airlock.findings import Finding, Severity

HISTORY_TABLE = "airlock_schema_history"
BASELINE_TABLE = "airlock_schema_baseline"
PROGRESS_TABLE = "airlock_schema_progress"
# Airlock's own tables are not part of the schema it fingerprints.
OWN_TABLES = (*DEFAULT_EXCLUDED_TABLES, PROGRESS_TABLE)
LOCK_CLASS = 0x41524C4B  # "ARLK"
LOCK_OBJECT = 1

SCHEMA_DDL = f"""
CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} (
    installed_rank serial PRIMARY KEY,
    version text,
    description text NOT NULL,
    type text NOT NULL CHECK (type IN ('V', 'U', 'R', 'BASELINE')),
    script text NOT NULL,
    checksum text NOT NULL,
    applied_by text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL,
    success boolean NOT NULL,
    release_id text
);
CREATE TABLE IF NOT EXISTS {BASELINE_TABLE} (
    id serial PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    recorded_by text NOT NULL,
    kind text NOT NULL,
    reason text,
    fingerprint text NOT NULL,
    snapshot jsonb NOT NULL
);
CREATE TABLE IF NOT EXISTS {PROGRESS_TABLE} (
    script text NOT NULL,
    statement integer NOT NULL,
    line integer NOT NULL,
    statement_checksum text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    PRIMARY KEY (script, statement)
);
"""


class MigrationLockTimeout(AirlockError):
    """Another migrator holds the database's migration lock."""

    exit_code = 1


class MigrationFailed(AirlockError):
    """A migration failed; it was rolled back (or cleaned up) and nothing of it remains."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, script: str = "") -> None:
        super().__init__(message, hint=hint)
        self.script = script


@dataclass(frozen=True)
class Settings:
    """How migrations run; from ``database:`` in airlock.yaml or the command line."""

    lock_timeout: float = 5.0
    statement_timeout: float = 0.0  # 0: no limit
    lock_wait: float = 30.0  # how long a second migrator waits for the advisory lock
    retries: int = 3  # on lock timeout
    allow_out_of_order: bool = False


@dataclass
class Step:
    """What happened to one migration."""

    script: str
    version: str | None
    kind: str
    outcome: str  # applied | failed | skipped | planned
    seconds: float = 0.0
    attempts: int = 1
    transactional: bool = True
    locks: list[str] = field(default_factory=list)
    error: str | None = None
    statements: int = 0
    completed: int = 0  # statements that ran to completion (and, outside a transaction, stay)
    resumed_at: int | None = None  # the statement an interrupted run was resumed at

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Report:
    """The result of a migrate, undo or rehearsal."""

    database: str
    steps: list[Step] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    fingerprint: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # files of the folder that were skipped

    @property
    def ok(self) -> bool:
        return all(s.outcome in {"applied", "planned", "skipped"} for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "ok": self.ok,
            "steps": [s.to_dict() for s in self.steps],
            "findings": [f.to_dict() for f in self.findings],
            "fingerprint": self.fingerprint,
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
        }


def who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


Progress = Callable[[str], None]
_T = TypeVar("_T")


class Migrator:
    """Migrations of one folder against one database."""

    def __init__(
        self,
        url: str,
        folder: Path,
        *,
        settings: Settings | None = None,
        release_id: str | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.url = url
        self.folder = folder
        self.settings = settings or Settings()
        self.release_id = release_id
        self.progress = progress or (lambda _text: None)
        self.where = display_url(url)
        self.last_report: Report | None = None  # also set when a run fails half-way

    # -- connection and lock -------------------------------------------------------------------

    @contextmanager
    def session(
        self, *, lock: bool = True, prepare: bool = True
    ) -> Iterator[psycopg.Connection[Any]]:
        """A connection with, by default, the migration lock and Airlock's tables in place
        (``prepare=False``: the caller creates them with :data:`SCHEMA_DDL` when it writes)."""
        conn = connect(self.url, autocommit=True)
        try:
            name = f"airlock migrate {who()} pid {os.getpid()}"[:63]
            conn.execute("SELECT set_config('application_name', %s, false)", (name,))
            if lock:
                self._acquire(conn)
            if prepare:
                conn.execute(SCHEMA_DDL)
            # Reading the schema can queue behind a lock too: never wait forever.
            conn.execute(self._settings_sql(local=False)[0])
            yield conn
        except pg_errors.LockNotAvailable:
            raise
        except psycopg.OperationalError as exc:
            raise DatabaseUnreachable(
                f"lost the connection to {self.where}: {str(exc).strip().splitlines()[0]}",
                hint="check the server; migrations that had finished are recorded, the one "
                "that was running was rolled back",
            ) from None
        finally:
            conn.close()  # closing the session releases the advisory lock

    def _acquire(self, conn: psycopg.Connection[Any]) -> None:
        deadline = time.monotonic() + self.settings.lock_wait
        announced = False
        while True:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, LOCK_OBJECT)
            ).fetchone()
            if row and row[0]:
                return
            holder = self._holder(conn)
            if time.monotonic() >= deadline:
                raise MigrationLockTimeout(
                    f"another migrator holds the migration lock on {self.where}: {holder}",
                    hint="wait for it to finish (migrations run one at a time per database), "
                    "or raise database.lock_wait / --lock-wait",
                )
            if not announced:
                self.progress(f"waiting for the migration lock held by {holder}")
                announced = True
            time.sleep(0.2)

    def _holder(self, conn: psycopg.Connection[Any]) -> str:
        row = conn.execute(
            "SELECT a.pid, a.application_name, a.usename, a.client_addr, a.backend_start "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.granted "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (LOCK_CLASS, LOCK_OBJECT),
        ).fetchone()
        if row is None:
            return "an unknown session"
        pid, app, user, addr, since = row
        source = f" from {addr}" if addr else ""
        return (
            f"{app or 'a session'} (backend pid {pid}, user {user}{source}, since {since:%H:%M:%S})"
        )

    # -- reading -------------------------------------------------------------------------------

    def migrations(self) -> Migrations:
        return discover(self.folder)

    def history(self, conn: psycopg.Connection[Any]) -> list[Applied]:
        rows = conn.execute(
            f"SELECT installed_rank, version, description, type, script, checksum, applied_by, "
            f"applied_at, duration_ms, success, release_id FROM {HISTORY_TABLE} "
            "ORDER BY installed_rank"
        ).fetchall()
        return [
            Applied(
                rank=r[0],
                version=parse_version(r[1]) if r[1] else None,
                description=r[2],
                type=r[3],
                script=r[4],
                checksum=r[5],
                applied_by=r[6],
                applied_at=r[7].isoformat(timespec="seconds"),
                duration_ms=r[8],
                success=r[9],
                release_id=r[10],
            )
            for r in rows
        ]

    def status(self) -> dict[str, Any]:
        """Applied and pending migrations and validation findings (takes no lock)."""
        with self.session(lock=False) as conn:
            migrations = self.migrations()
            history = self.history(conn)
            versions, _ = effective(history)
            todo = pending(migrations, history, allow_out_of_order=self.settings.allow_out_of_order)
            findings = validate(
                migrations, history, allow_out_of_order=self.settings.allow_out_of_order
            )
            partly = dict(
                conn.execute(
                    f"SELECT script, count(*) FROM {PROGRESS_TABLE} "
                    "WHERE completed_at IS NOT NULL GROUP BY script"
                ).fetchall()
            )
            return {
                "database": self.where,
                "applied": [
                    {
                        "version": version_text(v),
                        "script": row.script,
                        "applied_at": row.applied_at,
                        "applied_by": row.applied_by,
                        "duration_ms": row.duration_ms,
                        "release_id": row.release_id,
                    }
                    for v, row in sorted(versions.items())
                ],
                "pending": [
                    {
                        "version": m.version_label,
                        "script": m.name,
                        "kind": m.kind,
                        "completed_statements": partly.get(m.name, 0),
                    }
                    for m in todo.all
                ],
                "findings": [f.to_dict() for f in findings],
                "notes": list(migrations.notes),
            }

    # -- drift ---------------------------------------------------------------------------------

    def recorded_baseline(self, conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
        row = conn.execute(
            f"SELECT snapshot FROM {BASELINE_TABLE} ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return dict(row[0]) if row else None

    def record_baseline(
        self, conn: psycopg.Connection[Any], kind: str, reason: str | None = None
    ) -> str:
        snapshot = schema_snapshot(conn, exclude_tables=OWN_TABLES)
        digest = fingerprint(snapshot)
        conn.execute(
            f"INSERT INTO {BASELINE_TABLE} (recorded_by, kind, reason, fingerprint, snapshot) "
            "VALUES (%s, %s, %s, %s, %s)",
            (who(), kind, reason, digest, json.dumps(snapshot)),
        )
        return digest

    def drift(
        self, conn: psycopg.Connection[Any] | None = None, *, ignore: Collection[str] = ()
    ) -> SchemaDiff | None:
        """The difference between the live schema and the one recorded after the last migrate;
        ``None`` when nothing was recorded yet. Objects named in ``ignore`` (``"index
        public.x"``) do not count."""
        if conn is None:
            with self.session(lock=False) as own:
                return self.drift(own, ignore=ignore)
        recorded = self.recorded_baseline(conn)
        if recorded is None:
            return None
        live = schema_snapshot(conn, exclude_tables=OWN_TABLES)
        for key in ignore:
            recorded.pop(key, None)
            live.pop(key, None)
        return diff(recorded, live)

    def accept_drift(self, reason: str) -> str:
        """Take the live schema as the new baseline, recording who and why."""
        if not reason.strip():
            raise UsageError("accepting drift needs a reason", hint="pass --reason 'why'")
        with self.session() as conn:
            return self.record_baseline(conn, "accept-drift", reason)

    # -- migrate -------------------------------------------------------------------------------

    def migrate(
        self,
        *,
        dry_run: bool = False,
        collect_locks: bool = False,
        before_apply: Callable[[Pending], None] | None = None,
    ) -> Report:
        """Validate, check drift, then apply every pending migration in order.

        ``before_apply`` runs under the migration lock once validation and the drift check have
        passed and before anything is applied (a release lints and snapshots there); raising
        in it stops the run with nothing applied.
        """
        started = time.monotonic()
        report = self.last_report = Report(database=self.where)
        with self.session() as conn:
            migrations = self.migrations()
            report.notes = list(migrations.notes)
            history = self.history(conn)
            report.findings = validate(
                migrations, history, allow_out_of_order=self.settings.allow_out_of_order
            )
            if any(f.severity is Severity.ERROR for f in report.findings):
                raise _refusal(
                    "the migrations do not match the database's history", report.findings
                )
            todo = pending(migrations, history, allow_out_of_order=self.settings.allow_out_of_order)
            leftovers = self._interrupted_leftovers(conn, todo)
            drift = self._retrying(
                "reading the live schema", lambda: self.drift(conn, ignore=leftovers)
            )
            if drift is not None and not drift.empty:
                finding = drift_finding(drift, self.where)
                report.findings.append(finding)
                raise _refusal("the live schema differs from the one Airlock recorded", [finding])
            if drift is None:
                self.record_baseline(conn, "initial")
            parsed = [(m, self._parse(m)) for m in todo.all]
            if todo and not dry_run and before_apply is not None:
                before_apply(todo)
            try:
                for migration, statements in parsed:
                    if dry_run:
                        report.steps.append(_step(migration, "planned", statements))
                        continue
                    report.steps.append(_step(migration, "running", statements))
                    report.steps[-1] = self._apply(
                        conn,
                        migration,
                        statements,
                        collect_locks=collect_locks,
                        step=report.steps[-1],
                    )
            except BaseException:
                # What the migrations before the failed one changed is Airlock's doing, not drift.
                if any(s.outcome == "applied" for s in report.steps):
                    with suppress(psycopg.Error):
                        self.record_baseline(conn, "migrate")
                raise
            if todo and not dry_run:
                report.fingerprint = self.record_baseline(conn, "migrate")
        report.seconds = time.monotonic() - started
        return report

    def _retrying(self, what: str, action: Callable[[], _T]) -> _T:
        """Run ``action``, retrying when it times out waiting for a table lock."""
        for attempt in range(1, self.settings.retries + 2):
            try:
                return action()
            except pg_errors.LockNotAvailable:
                if attempt > self.settings.retries:
                    raise MigrationFailed(
                        f"{what} on {self.where}: a table stayed locked by another session "
                        f"for {attempt} attempts of {self.settings.lock_timeout:g}s",
                        hint="something holds a strong lock (a long transaction?); retry later",
                    ) from None
                time.sleep(min(0.5 * 2 ** (attempt - 1), 5.0))
        raise AssertionError("unreachable")

    def _parse(self, migration: MigrationFile) -> list[Statement]:
        statements = split(migration.read(), file=str(migration.path))
        if not statements:
            raise UsageError(f"{migration.path}: the migration is empty")
        for control in explicit_transaction_control(statements):
            raise UsageError(
                f"{migration.path}:{control.line}: migrations must not manage transactions "
                f"themselves ({control.kind})",
                hint="remove BEGIN/COMMIT/ROLLBACK: Airlock runs each migration in its own "
                "transaction",
            )
        outside = [s for s in statements if not s.transactional]
        if outside and len(outside) < len(statements):
            first = outside[0]
            inside = len(statements) - len(outside)
            listed = "; ".join(f"line {s.line}: {describe(s)}" for s in outside)
            raise UsageError(
                f"{migration.path}:{first.line}: {describe(first)} cannot run inside a "
                f"transaction, and the file also has {inside} statement(s) that should run in one",
                hint=f"move the {len(outside)} statement(s) that cannot run in a transaction to a "
                f"migration file of their own (they may share one): {listed}. Airlock runs such "
                "a file statement by statement and resumes it where it stopped; a file that "
                "mixes both kinds could fail half applied",
            )
        return statements

    def _apply(
        self,
        conn: psycopg.Connection[Any],
        migration: MigrationFile,
        statements: Sequence[Statement],
        *,
        collect_locks: bool,
        step: Step | None = None,
    ) -> Step:
        transactional = statements[0].transactional
        step = step or _step(migration, "applied", statements)
        step.outcome = "applied"
        self.progress(f"applying {migration.name}")
        began = time.monotonic()
        for attempt in range(1, self.settings.retries + 2):
            step.attempts = attempt
            try:
                if transactional:
                    step.locks = self._run_in_transaction(
                        conn, migration, statements, began, collect_locks
                    )
                    step.completed = len(statements)
                else:
                    self._run_statement_by_statement(conn, migration, statements, began, step)
                break
            except pg_errors.LockNotAvailable as exc:
                if attempt > self.settings.retries:
                    step.outcome, step.error = "failed", _sql_error(migration, None, exc)
                    raise MigrationFailed(
                        f"{migration.name}: could not get a lock within "
                        f"{self.settings.lock_timeout:g}s after {attempt} attempts "
                        + _what_remains(transactional, step),
                        hint="something holds a conflicting lock on the table (a long "
                        "transaction?); retry later or raise database.lock_timeout",
                        script=migration.name,
                    ) from None
                delay = min(0.5 * 2 ** (attempt - 1), 5.0)
                self.progress(f"{migration.name}: lock timeout, retrying in {delay:g}s")
                time.sleep(delay)
            except _StatementFailed as failure:
                step.outcome, step.error = "failed", failure.message
                step.seconds = time.monotonic() - began
                raise MigrationFailed(
                    f"{failure.message} {_what_remains(transactional, step)}",
                    hint="fix the migration and run it again"
                    + ("" if transactional or not step.completed else "; it resumes there"),
                    script=migration.name,
                ) from None
        step.seconds = time.monotonic() - began
        return step

    def _restore_session(self, conn: psycopg.Connection[Any]) -> None:
        """Back to the session's own settings after a statement run outside a transaction:
        no statement timeout, and the lock timeout that keeps schema reads from waiting forever
        (a RESET would drop it)."""
        conn.execute("RESET statement_timeout")
        conn.execute(self._settings_sql(local=False)[0])

    def _settings_sql(self, local: bool) -> list[str]:
        scope = "LOCAL " if local else ""
        return [
            f"SET {scope}lock_timeout = '{int(self.settings.lock_timeout * 1000)}ms'",
            f"SET {scope}statement_timeout = '{int(self.settings.statement_timeout * 1000)}ms'",
        ]

    def _run_in_transaction(
        self,
        conn: psycopg.Connection[Any],
        migration: MigrationFile,
        statements: Sequence[Statement],
        began: float,
        collect_locks: bool,
    ) -> list[str]:
        locks: list[str] = []
        with conn.transaction():
            for setting in self._settings_sql(local=True):
                conn.execute(setting)
            for statement in statements:
                _execute(conn, migration, statement)
            if collect_locks:
                locks = held_locks(conn)
            self._record(conn, migration, began)
        return locks

    def _run_statement_by_statement(
        self,
        conn: psycopg.Connection[Any],
        migration: MigrationFile,
        statements: Sequence[Statement],
        began: float,
        step: Step,
    ) -> None:
        """Run a file of statements that cannot run in a transaction, one at a time in
        autocommit, recording each one's start and completion; resume after the last completed
        statement of an earlier run."""
        done, interrupted = self._resume_point(conn, migration, statements)
        step.completed = done
        if done or interrupted:
            step.resumed_at = done + 1
            self.progress(
                f"{migration.name}: resuming at statement {done + 1} of {len(statements)}"
            )
        for index in range(done + 1, len(statements) + 1):
            statement = statements[index - 1]
            if index == interrupted and self._finished_before(conn, statement):
                self.progress(f"{migration.name}: statement {index} had finished before the stop")
            else:
                self._drop_invalid_leftover(conn, migration, statement)
                conn.execute(
                    f"INSERT INTO {PROGRESS_TABLE} (script, statement, line, statement_checksum) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (script, statement) DO UPDATE SET "
                    "line = EXCLUDED.line, statement_checksum = EXCLUDED.statement_checksum, "
                    "started_at = now(), completed_at = NULL",
                    (migration.name, index, statement.line, checksum(statement.text)),
                )
                for setting in self._settings_sql(local=False):
                    conn.execute(setting)
                try:
                    _execute(conn, migration, statement, self._instead(conn, migration, statement))
                except (psycopg.Error, _StatementFailed):
                    with suppress(psycopg.Error):
                        self._after_failure(conn, migration, index, statement)
                    raise
                finally:
                    with suppress(psycopg.Error):
                        self._restore_session(conn)
            with conn.transaction():
                conn.execute(
                    f"UPDATE {PROGRESS_TABLE} SET completed_at = now() "
                    "WHERE script = %s AND statement = %s",
                    (migration.name, index),
                )
                self.record_baseline(conn, "statement")
            step.completed = index
        with conn.transaction():
            self._record(conn, migration, began)
            conn.execute(f"DELETE FROM {PROGRESS_TABLE} WHERE script = %s", (migration.name,))

    def _resume_point(
        self,
        conn: psycopg.Connection[Any],
        migration: MigrationFile,
        statements: Sequence[Statement],
    ) -> tuple[int, int | None]:
        """How many statements of ``migration`` an earlier run completed, and the statement it
        started but did not complete (None when it stopped between statements or never ran).

        The completed statements must still be the first ones of the file: a file may be fixed
        after the statement that failed, not before it."""
        rows = conn.execute(
            f"SELECT statement, statement_checksum, completed_at IS NOT NULL "
            f"FROM {PROGRESS_TABLE} WHERE script = %s ORDER BY statement",
            (migration.name,),
        ).fetchall()
        done = 0
        interrupted: int | None = None
        for index, digest, completed in rows:
            if completed:
                if index != done + 1 or index > len(statements):
                    raise _changed_after_partial_run(migration, index, None)
                if checksum(statements[index - 1].text) != digest:
                    raise _changed_after_partial_run(migration, index, statements[index - 1])
                done = index
            elif index <= len(statements) and checksum(statements[index - 1].text) == digest:
                interrupted = index
        return done, interrupted if interrupted == done + 1 else None

    def _interrupted_leftovers(self, conn: psycopg.Connection[Any], todo: Pending) -> list[str]:
        """The indexes (``"index schema.name"``) the statement an earlier run did not complete
        was building, dropping or rebuilding, if the next migration to run is such a file:
        whatever state they are in now is the interrupted statement's doing, not drift."""
        if not todo:
            return []
        migration = todo.all[0]
        statements = self._parse(migration)
        if statements[0].transactional:
            return []
        _, interrupted = self._resume_point(conn, migration, statements)
        if interrupted is None:
            return []
        statement = statements[interrupted - 1]
        keys = [f"index {row[2]}" for row in _reindex_leftovers(conn, statement)]
        target = _index_target(statement)
        if target is not None:
            row = conn.execute(_INDEX_KEY, target).fetchone()
            if row and row[0]:
                keys.append(f"index {row[0]}")
        return keys

    def _finished_before(self, conn: psycopg.Connection[Any], statement: Statement) -> bool:
        """Whether an interrupted statement had done its work anyway (PostgreSQL finishes a
        concurrent index build whose client went away): a valid index it built that the
        schema recorded before it does not have, an index it dropped that is gone, or a
        partition it detached that is no longer attached."""
        detach = _detach_target(statement)
        if detach is not None:
            return conn.execute(_PENDING_DETACH, detach).fetchone() is None
        target = _index_target(statement)
        if target is None:
            return False
        found = _find_index(conn, statement)
        if statement.kind == "DropStmt":
            return found is None
        if found is None or not found[2]:
            return False
        recorded = self.recorded_baseline(conn) or {}
        return f"index {found[3]}" not in recorded

    def _after_failure(
        self,
        conn: psycopg.Connection[Any],
        migration: MigrationFile,
        index: int,
        statement: Statement,
    ) -> None:
        """Clean up after a statement that failed: drop the invalid index it left, and forget
        that it started unless an invalid index of its remains (then the next run knows that
        index is the failed statement's and drops it before trying again)."""
        self._drop_invalid_leftover(conn, migration, statement)
        found = _find_index(conn, statement)
        if found is None or found[2]:
            conn.execute(
                f"DELETE FROM {PROGRESS_TABLE} WHERE script = %s AND statement = %s",
                (migration.name, index),
            )

    def _drop_invalid_leftover(
        self, conn: psycopg.Connection[Any], migration: MigrationFile, statement: Statement
    ) -> None:
        """Drop the INVALID indexes a failed or interrupted ``CREATE INDEX CONCURRENTLY`` or
        ``REINDEX … CONCURRENTLY`` of ``statement`` left behind (the ``*_ccnew`` copy it was
        building, or the ``*_ccold`` original it could not drop after the swap), so that running
        it again can succeed and leaves no second copy."""
        leftovers: list[tuple[str, str, str]] = []
        if statement.kind == "IndexStmt":
            found = _find_index(conn, statement)
            if found is not None and not found[2]:
                leftovers.append((found[0], found[1], found[3]))
        elif statement.kind == "ReindexStmt":
            leftovers = _reindex_leftovers(conn, statement)
        if not leftovers:
            return
        for setting in self._settings_sql(local=False):
            conn.execute(setting)
        try:
            for schema, name, key in leftovers:
                self.progress(
                    f"{migration.name}: dropping the invalid index {key} left by a failure"
                )
                conn.execute(
                    pg_sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
                        pg_sql.Identifier(schema), pg_sql.Identifier(name)
                    )
                )
        finally:
            with suppress(psycopg.Error):
                self._restore_session(conn)

    def _instead(
        self, conn: psycopg.Connection[Any], migration: MigrationFile, statement: Statement
    ) -> str | None:
        """What to run in place of ``statement``, if anything: ``… DETACH PARTITION …
        FINALIZE`` for a ``DETACH PARTITION … CONCURRENTLY`` that an earlier try left pending
        (PostgreSQL refuses to start it again)."""
        target = _detach_target(statement)
        if target is None:
            return None
        row = conn.execute(_PENDING_DETACH, target).fetchone()
        if row is None or not row[0]:
            return None
        self.progress(f"{migration.name}: finishing the pending detach of {target['partition']}")
        return f"ALTER TABLE {target['parent']} DETACH PARTITION {target['partition']} FINALIZE"

    def _record(
        self, conn: psycopg.Connection[Any], migration: MigrationFile, began: float
    ) -> None:
        conn.execute(
            f"INSERT INTO {HISTORY_TABLE} (version, description, type, script, checksum, "
            "applied_by, duration_ms, success, release_id) VALUES (%s, %s, %s, %s, %s, %s, %s, "
            "true, %s)",
            (
                migration.version_label,
                migration.description,
                migration.kind,
                migration.name,
                migration.checksum,
                who(),
                int((time.monotonic() - began) * 1000),
                self.release_id,
            ),
        )

    # -- undo ----------------------------------------------------------------------------------

    def undo(self, *, steps: int = 1, to: str | None = None) -> Report:
        """Run U files for the latest applied versions, newest first."""
        started = time.monotonic()
        report = Report(database=self.where)
        with self.session() as conn:
            migrations = self.migrations()
            history = self.history(conn)
            versions, _ = effective(history)
            applied = sorted(versions, reverse=True)
            if to is not None:
                target = parse_version(to)
                chosen = [v for v in applied if v > target]
            else:
                chosen = applied[:steps]
            if not chosen:
                return report
            missing = [version_text(v) for v in chosen if v not in migrations.undo]
            if missing:
                raise UsageError(
                    "no undo file for version(s) " + ", ".join(missing),
                    hint="write U<version>__<description>.sql files, or restore a snapshot",
                )
            for version in chosen:
                undo_file = migrations.undo[version]
                statements = self._parse(undo_file)
                report.steps.append(self._apply(conn, undo_file, statements, collect_locks=False))
            report.fingerprint = self.record_baseline(conn, "undo")
        report.seconds = time.monotonic() - started
        return report


# ---------------------------------------------------------------------------------------------


class _StatementFailed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _execute(
    conn: psycopg.Connection[Any],
    migration: MigrationFile,
    statement: Statement,
    instead: str | None = None,
) -> None:
    """Run ``statement`` (or ``instead``, in its place); an error names the statement's line."""
    try:
        conn.execute((instead or statement.text).encode(), prepare=False)
    except pg_errors.LockNotAvailable:
        raise
    except psycopg.Error as exc:
        raise _StatementFailed(_sql_error(migration, statement, exc)) from None


def _sql_error(migration: MigrationFile, statement: Statement | None, exc: psycopg.Error) -> str:
    line = statement.line if statement else None
    diag = exc.diag
    position = diag.statement_position
    if statement is not None and position:
        try:
            offset = int(position) - 1
            line = statement.line + statement.text[:offset].count("\n")
        except ValueError:
            pass
    where = f"{migration.path}:{line}" if line else str(migration.path)
    primary = diag.message_primary or str(exc).strip().splitlines()[0]
    detail = f" ({diag.message_detail})" if diag.message_detail else ""
    return f"{where}: {diag.sqlstate or ''} {primary}{detail}".replace("  ", " ")


def _step(migration: MigrationFile, outcome: str, statements: Sequence[Statement]) -> Step:
    return Step(
        script=migration.name,
        version=migration.version_label,
        kind=migration.kind,
        outcome=outcome,
        transactional=all(s.transactional for s in statements),
        statements=len(statements),
    )


def held_locks(conn: psycopg.Connection[Any]) -> list[str]:
    """Locks this session holds now, as 'mode on relation'."""
    rows = conn.execute(
        "SELECT l.mode, c.relname FROM pg_locks l LEFT JOIN pg_class c ON c.oid = l.relation "
        "WHERE l.pid = pg_backend_pid() AND l.granted AND l.locktype = 'relation' "
        "AND c.relnamespace NOT IN (SELECT oid FROM pg_namespace WHERE nspname IN "
        "('pg_catalog', 'information_schema')) ORDER BY c.relname, l.mode"
    ).fetchall()
    return [f"{mode} on {name}" for mode, name in rows if name and not name.startswith("airlock_")]


def describe(statement: Statement, width: int = 72) -> str:
    """A statement's text on one line, shortened: ``CREATE INDEX CONCURRENTLY x ON t (a)``."""
    text = " ".join(statement.text.split())
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _index_target(statement: Statement) -> dict[str, str | None] | None:
    """The index a ``CREATE INDEX`` or ``DROP INDEX`` statement names, as query parameters:
    ``index`` (qualified and quoted, for ``to_regclass``), ``name`` (bare) and ``table``
    (qualified and quoted; None for a ``DROP``)."""
    node = statement.node
    if statement.kind == "IndexStmt" and getattr(node, "idxname", None):
        relation = node.relation
        schema = relation.schemaname
        return {
            "index": _quoted(schema, node.idxname),
            "name": node.idxname,
            "table": _quoted(schema, relation.relname),
        }
    if statement.kind == "DropStmt" and node.removeType == ObjectType.OBJECT_INDEX:
        objects: Sequence[Any] = node.objects or ()
        if len(objects) == 1:
            names = [getattr(part, "sval", "") for part in objects[0]]
            return {"index": _quoted(*names), "name": names[-1], "table": None}
    return None


def _quoted(*names: str | None) -> str:
    return ".".join('"' + name.replace('"', '""') + '"' for name in names if name)


# The index a statement names: (schema, name, valid, "schema.name" as the fingerprint keys it).
# With a table, the index is looked for among that table's indexes (it lives in the table's
# schema); a name without a table is resolved through the search path.
_FIND_INDEX = """
    SELECT n.nspname, c.relname, i.indisvalid, format('%%I.%%I', n.nspname, c.relname)
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE CASE WHEN %(table)s::text IS NULL THEN i.indexrelid = to_regclass(%(index)s)
               ELSE i.indrelid = to_regclass(%(table)s) AND c.relname = %(name)s END
"""
# The fingerprint key of that index, whether it exists or not (it is in its table's schema).
_INDEX_KEY = """
    SELECT CASE WHEN %(table)s::text IS NULL
                THEN (SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_class c
                      JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.oid = to_regclass(%(index)s))
                ELSE (SELECT format('%%I.%%I', n.nspname, %(name)s::text) FROM pg_class t
                      JOIN pg_namespace n ON n.oid = t.relnamespace
                      WHERE t.oid = to_regclass(%(table)s))
           END
"""


def _find_index(
    conn: psycopg.Connection[Any], statement: Statement
) -> tuple[str, str, bool, str] | None:
    target = _index_target(statement)
    if target is None:
        return None
    row = conn.execute(_FIND_INDEX, target).fetchone()
    return (row[0], row[1], bool(row[2]), row[3]) if row else None


def _what_remains(transactional: bool, step: Step) -> str:
    if transactional:
        return "(rolled back; nothing of this migration remains)"
    if not step.completed:
        return "(no statement of this migration completed; nothing of it remains)"
    done = "statement 1" if step.completed == 1 else f"statements 1-{step.completed}"
    return (
        f"({done} of {step.statements} completed and stay applied; "
        f"the next migrate resumes at statement {step.completed + 1})"
    )


def _changed_after_partial_run(
    migration: MigrationFile, index: int, statement: Statement | None
) -> UsageError:
    where = f"{migration.path}:{statement.line}" if statement else str(migration.path)
    return UsageError(
        f"{where}: statement {index} of {migration.name} already ran in an earlier, interrupted "
        "migrate, but the file no longer has it there",
        hint="restore the statements that already ran as they were (they are recorded in "
        f"{PROGRESS_TABLE}); only the statements after them may still change",
    )


# The INVALID copies a ``REINDEX … CONCURRENTLY`` leaves when it fails: ``<index>_ccnew[N]``
# (the new copy, not finished) and ``<index>_ccold[N]`` (the original, swapped out but not
# dropped), on the tables it rebuilt the indexes of (their partitions and TOAST tables too).
_REINDEX_LEFTOVERS = """
    WITH target AS (
        SELECT CASE %(kind)s
                 WHEN 'index' THEN (SELECT indrelid FROM pg_index
                                    WHERE indexrelid = to_regclass(%(name)s))
                 WHEN 'table' THEN to_regclass(%(name)s)
               END AS oid
    ), tables AS (
        SELECT target.oid FROM target WHERE target.oid IS NOT NULL
        UNION SELECT p.relid FROM target, pg_partition_tree(target.oid) p
        UNION SELECT c.oid FROM pg_class c
        WHERE %(kind)s = 'schema' AND c.relnamespace = to_regnamespace(%(name)s)
          AND c.relkind IN ('r', 'm', 'p')
    ), owners AS (
        SELECT oid FROM tables
        UNION SELECT c.reltoastrelid FROM pg_class c JOIN tables t ON t.oid = c.oid
        WHERE c.reltoastrelid <> 0
    )
    SELECT n.nspname, c.relname, format('%%I.%%I', n.nspname, c.relname)
    FROM pg_index i JOIN owners o ON o.oid = i.indrelid
    JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE NOT i.indisvalid AND c.relname ~ '_cc(new|old)[0-9]*$'
    ORDER BY 1, 2
"""

_REINDEX_KINDS = {
    ReindexObjectType.REINDEX_OBJECT_INDEX: "index",
    ReindexObjectType.REINDEX_OBJECT_TABLE: "table",
    ReindexObjectType.REINDEX_OBJECT_SCHEMA: "schema",
}


def _reindex_leftovers(
    conn: psycopg.Connection[Any], statement: Statement
) -> list[tuple[str, str, str]]:
    """The invalid ``*_ccnew``/``*_ccold`` indexes on what a ``REINDEX`` statement rebuilds:
    (schema, name, "schema.name" as the fingerprint keys it)."""
    if statement.kind != "ReindexStmt":
        return []
    node = statement.node
    kind = _REINDEX_KINDS.get(node.kind)
    if kind is None:
        return []
    if kind == "schema":
        name = _quoted(node.name)
    else:
        name = _quoted(node.relation.schemaname, node.relation.relname)
    rows = conn.execute(_REINDEX_LEFTOVERS, {"kind": kind, "name": name}).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


# Whether a partition is attached to its parent with a detach pending.
_PENDING_DETACH = """
    SELECT i.inhdetachpending FROM pg_inherits i
    WHERE i.inhrelid = to_regclass(%(partition)s) AND i.inhparent = to_regclass(%(parent)s)
"""


def _detach_target(statement: Statement) -> dict[str, str] | None:
    """The parent and partition (qualified, quoted) of a ``DETACH PARTITION … CONCURRENTLY``."""
    node = statement.node
    if statement.kind != "AlterTableStmt" or len(node.cmds or ()) != 1:
        return None
    cmd = node.cmds[0]
    if cmd.subtype != AlterTableType.AT_DetachPartition or not cmd.def_.concurrent:
        return None
    parent, partition = node.relation, cmd.def_.name
    return {
        "parent": _quoted(parent.schemaname, parent.relname),
        "partition": _quoted(partition.schemaname, partition.relname),
    }


def drift_finding(schema_diff: SchemaDiff, where: str) -> Finding:
    lines = schema_diff.lines()
    return Finding(
        "migration.drift",
        Severity.ERROR,
        f"the schema of {where} was changed outside Airlock:\n    " + "\n    ".join(lines),
        None,
        hint="find out who changed it; then either revert the change, or accept it with "
        "`airlock db drift --accept --reason '…'`",
        evidence={
            "added": schema_diff.added,
            "removed": schema_diff.removed,
            "changed": schema_diff.changed,
        },
    )


def _refusal(summary: str, findings: Sequence[Finding]) -> GateFailed:
    lines = [f"  {f.code}: {f.message}" for f in findings if f.severity is Severity.ERROR]
    hints = {f.hint for f in findings if f.hint}
    return GateFailed(
        f"{summary}; nothing was migrated:\n" + "\n".join(lines),
        hint="; ".join(sorted(hints)) if hints else None,
    )
