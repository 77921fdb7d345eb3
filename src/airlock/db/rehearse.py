"""Rehearsal (INC04): run the pending migrations on a clone of the target database first.

The clone is made one of two ways:

- ``template``: ``CREATE DATABASE clone TEMPLATE target`` — a file-level copy inside the server,
  by far the faster, but PostgreSQL only allows it while nobody else is connected to the target
  (and it keeps new connections out while it copies), so it is only safe on an idle database;
- ``dump``: ``pg_dump | pg_restore`` streamed between the two databases — slower, but works
  while the application is connected and blocks nobody.

``auto`` (the default) uses the template copy when the target has no other sessions, else the
dump. The report gives the method and how long the clone took, then each migration's duration,
result and the locks it took; the clone is always dropped.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from psycopg import sql

from airlock.db.backup import PgTarget, pg_tool
from airlock.db.connect import connect, database_name, display_url, with_database
from airlock.db.migrate import MigrationFailed, Migrator, Report
from airlock.db.target import Target
from airlock.errors import AirlockError, GateFailed

Method = Literal["auto", "template", "dump"]


@dataclass
class Rehearsal:
    """What a rehearsal did and found."""

    database: str
    clone_method: str
    clone_seconds: float
    report: Report
    error: str | None = None
    dropped: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.report.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "ok": self.ok,
            "clone_method": self.clone_method,
            "clone_seconds": round(self.clone_seconds, 3),
            "error": self.error,
            "clone_dropped": self.dropped,
            **{k: v for k, v in self.report.to_dict().items() if k != "database"},
        }


def other_sessions(url: str) -> int:
    with connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


def clone(url: str, name: str, method: Method = "auto") -> tuple[str, float]:
    """Copy the database at ``url`` into a new database ``name``; (method used, seconds)."""
    source = database_name(url)
    chosen = method
    if method == "auto":
        chosen = "template" if other_sessions(url) == 0 else "dump"
    started = time.monotonic()
    admin = with_database(url, "postgres")
    with connect(admin, autocommit=True) as conn:
        if chosen == "template":
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(source)
                )
            )
        else:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    if chosen == "dump":
        _dump_restore(url, with_database(url, name))
    return chosen, time.monotonic() - started


def _dump_restore(source_url: str, target_url: str) -> None:
    """``pg_dump | pg_restore`` between two databases; passwords travel only in PGPASSWORD."""
    source, target = PgTarget.of(source_url), PgTarget.of(target_url)
    dump = subprocess.Popen(
        [
            str(pg_tool("pg_dump")),
            "--format=custom",
            "--no-owner",
            f"--dbname={source.conninfo}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=source.env(),
    )
    restore = subprocess.run(
        [
            str(pg_tool("pg_restore")),
            "--no-owner",
            "--exit-on-error",
            f"--dbname={target.conninfo}",
        ],
        stdin=dump.stdout,
        capture_output=True,
        env=target.env(),
        check=False,
    )
    assert dump.stdout is not None
    dump.stdout.close()
    _, dump_err = dump.communicate()
    if dump.returncode != 0 or restore.returncode != 0:
        message = (dump_err or restore.stderr).decode(errors="replace").strip()[-500:]
        raise AirlockError(
            f"cloning {source.display()} for the rehearsal failed: "
            f"{target.mask(source.mask(message))}",
            hint="check that the database is reachable and the user may dump it",
        )


def drop(url: str, name: str) -> None:
    with connect(with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def rehearse(
    target: Target,
    *,
    method: Method = "auto",
    before_migrate: Callable[[str], None] | None = None,
    after_migrate: Callable[[str], None] | None = None,
) -> Rehearsal:
    """Clone the target, apply its pending migrations there, report, drop the clone.

    ``before_migrate(clone_url)`` runs on the fresh clone, ``after_migrate(clone_url)`` once the
    migrations succeeded on it, before it is dropped: the go/no-go starts the release that runs
    now against the clone, before and after, and judges what the migrations broke.
    """
    name = f"airlock_rehearsal_{secrets.token_hex(4)}"
    folder = target.require_migrations()
    try:
        chosen, seconds = clone(target.url, name, method)
    except BaseException:
        drop(target.url, name)  # a dump that failed half way leaves a database (and data)
        raise
    clone_url = with_database(target.url, name)
    rehearsal = Rehearsal(
        database=target.display,
        clone_method=chosen,
        clone_seconds=seconds,
        report=Report(database=display_url(clone_url)),
    )
    try:
        if before_migrate is not None:
            before_migrate(clone_url)
        migrator = Migrator(clone_url, folder, settings=target.settings)
        try:
            rehearsal.report = migrator.migrate(collect_locks=True)
        except MigrationFailed as exc:
            rehearsal.error = exc.message
            rehearsal.report = migrator.last_report or rehearsal.report
        except GateFailed as exc:
            rehearsal.error = exc.message
        if after_migrate is not None and rehearsal.ok:
            after_migrate(clone_url)
    finally:
        drop(target.url, name)
        rehearsal.dropped = True
    return rehearsal
