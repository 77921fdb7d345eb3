"""Migrations against a real PostgreSQL: order, history, validation, locks, failures, drift."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from airlock.db.files import checksum, discover, parse_version
from airlock.db.migrate import (
    HISTORY_TABLE,
    PROGRESS_TABLE,
    MigrationFailed,
    MigrationLockTimeout,
    Migrator,
    Settings,
)
from airlock.db.sql import MigrationSyntaxError
from airlock.errors import AirlockError, GateFailed, UsageError

from .conftest import airlock


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def schema_dump(url: str) -> str:
    """Every user table, column and index, as text: enough to see any change."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type, column_default, is_nullable "
            "FROM information_schema.columns WHERE table_schema = 'public' "
            "ORDER BY table_name, ordinal_position"
        ).fetchall()
        indexes = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexdef"
        ).fetchall()
    return json.dumps([list(map(str, r)) for r in rows + indexes])


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    migrations = tmp_path / "migrations"
    write(
        migrations,
        "V1__accounts.sql",
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);\n",
    )
    write(
        migrations, "V2__audit.sql", "CREATE TABLE audit (id bigserial PRIMARY KEY, note text);\n"
    )
    return migrations


def test_versions_order_numerically_and_trailing_zeros_do_not_count(tmp_path: Path) -> None:
    """1 < 1.1 < 2 < 10, and 1.0 is the same version as 1."""
    for name in ("V10__x.sql", "V2__x.sql", "V1.1__x.sql", "V1__x.sql"):
        write(tmp_path, name, "SELECT 1;")
    assert [m.version for m in discover(tmp_path).versioned] == [(1,), (1, 1), (2,), (10,)]
    assert parse_version("1.0") == parse_version("1")
    write(tmp_path, "V1.0__again.sql", "SELECT 1;")
    with pytest.raises(UsageError) as info:
        discover(tmp_path)
    assert "version 1 is already used by" in str(info.value)


def test_checksums_ignore_line_endings_and_trailing_spaces() -> None:
    """Re-saving a file with CRLF or trailing blanks is not an edit."""
    assert checksum("SELECT 1;  \r\nSELECT 2;\r\n\r\n") == checksum("SELECT 1;\nSELECT 2;\n")
    assert checksum("SELECT 1;") != checksum("SELECT 2;")


def test_bad_names_are_refused(tmp_path: Path) -> None:
    """A file that is not V/U/R-named is reported with the naming rule."""
    write(tmp_path, "V1_accounts.sql", "SELECT 1;")
    with pytest.raises(UsageError) as info:
        discover(tmp_path)
    assert "V<version>__<description>.sql" in str(info.value)


def test_migrate_applies_in_order_and_records_history(pg_url: str, folder: Path) -> None:
    """Pending migrations run in order, each recorded with checksum, who, when and duration."""
    report = Migrator(pg_url, folder).migrate()
    assert [s.script for s in report.steps] == ["V1__accounts.sql", "V2__audit.sql"]
    assert report.ok and report.fingerprint
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            f"SELECT version, script, checksum, success, applied_by, duration_ms "
            f"FROM {HISTORY_TABLE} ORDER BY installed_rank"
        ).fetchall()
    assert [(r[0], r[1], r[3]) for r in rows] == [
        ("1", "V1__accounts.sql", True),
        ("2", "V2__audit.sql", True),
    ]
    assert rows[0][2] == checksum((folder / "V1__accounts.sql").read_text())
    assert all("@" in r[4] and r[5] >= 0 for r in rows)
    assert Migrator(pg_url, folder).migrate().steps == []


def test_an_edited_migration_is_refused_naming_both_checksums(pg_url: str, folder: Path) -> None:
    """Changing an applied file refuses the next run with migration.edited."""
    Migrator(pg_url, folder).migrate()
    before = checksum((folder / "V1__accounts.sql").read_text())
    write(folder, "V1__accounts.sql", "CREATE TABLE accounts (id bigint PRIMARY KEY);\n")
    write(folder, "V3__more.sql", "CREATE TABLE more (id int PRIMARY KEY);\n")
    with pytest.raises(GateFailed) as info:
        Migrator(pg_url, folder).migrate()
    text = str(info.value)
    assert "migration.edited" in text and "V1__accounts.sql" in text
    assert before[:12] in text
    assert "more" not in schema_dump(pg_url)


def test_a_missing_applied_file_is_refused(pg_url: str, folder: Path) -> None:
    """Deleting an applied migration's file refuses the next run with migration.missing."""
    Migrator(pg_url, folder).migrate()
    (folder / "V2__audit.sql").unlink()
    with pytest.raises(GateFailed) as info:
        Migrator(pg_url, folder).migrate()
    assert "migration.missing" in str(info.value) and "V2__audit.sql" in str(info.value)


def test_out_of_order_is_refused_unless_allowed(pg_url: str, folder: Path) -> None:
    """A pending version below the latest applied needs --allow-out-of-order."""
    Migrator(pg_url, folder).migrate()
    write(folder, "V1.5__late.sql", "CREATE TABLE late (id int PRIMARY KEY);\n")
    with pytest.raises(GateFailed) as info:
        Migrator(pg_url, folder).migrate()
    assert "migration.out-of-order" in str(info.value)
    report = Migrator(pg_url, folder, settings=Settings(allow_out_of_order=True)).migrate()
    assert [s.script for s in report.steps] == ["V1.5__late.sql"]


def test_a_failure_halfway_rolls_the_migration_back(pg_url: str, folder: Path) -> None:
    """The second statement fails: the first is rolled back too, and the error names the line."""
    Migrator(pg_url, folder).migrate()
    before = schema_dump(pg_url)
    write(
        folder,
        "V3__broken.sql",
        "ALTER TABLE accounts ADD COLUMN status text;\n\nINSERT INTO nowhere VALUES (1);\n",
    )
    with pytest.raises(MigrationFailed) as info:
        Migrator(pg_url, folder).migrate()
    message = str(info.value)
    assert "V3__broken.sql:3" in message and "42P01" in message and "nowhere" in message
    assert "rolled back" in message
    assert schema_dump(pg_url) == before
    history = Migrator(pg_url, folder).status()
    assert [p["script"] for p in history["pending"]] == ["V3__broken.sql"]


def test_a_syntax_error_names_file_and_line(pg_url: str, folder: Path) -> None:
    """A migration that does not parse is refused before anything runs."""
    write(folder, "V3__typo.sql", "SELECT 1;\nCREAT TABLE x (id int);\n")
    with pytest.raises(MigrationSyntaxError) as info:
        Migrator(pg_url, folder).migrate()
    assert "V3__typo.sql:2" in str(info.value)
    assert "accounts" not in schema_dump(pg_url)


def test_a_second_migrator_waits_then_names_the_holder(pg_url: str, folder: Path) -> None:
    """While one migrator holds the lock, another gives up after lock_wait, naming it."""
    first = Migrator(pg_url, folder)
    with first.session():
        second = Migrator(pg_url, folder, settings=Settings(lock_wait=0.5))
        started = time.monotonic()
        with pytest.raises(MigrationLockTimeout) as info:
            second.migrate()
        assert time.monotonic() - started >= 0.5
    assert "airlock migrate" in str(info.value) and "backend pid" in str(info.value)
    assert Migrator(pg_url, folder).migrate().ok


def test_lock_timeout_is_retried(pg_url: str, folder: Path) -> None:
    """A table lock held by someone else makes the migration wait briefly and retry."""
    Migrator(pg_url, folder).migrate()
    write(folder, "V3__status.sql", "ALTER TABLE accounts ADD COLUMN status text;\n")
    blocker = psycopg.connect(pg_url)

    def lock_the_table(_pending: object) -> None:
        blocker.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
        threading.Timer(1.0, blocker.rollback).start()

    try:
        settings = Settings(lock_timeout=0.2, retries=5)
        report = Migrator(pg_url, folder, settings=settings).migrate(before_apply=lock_the_table)
    finally:
        time.sleep(0.1)
        blocker.close()
    [step] = report.steps
    assert step.outcome == "applied" and step.attempts > 1


def test_lock_timeout_gives_up_cleanly(pg_url: str, folder: Path) -> None:
    """When the lock never comes, the migration fails after its retries and leaves nothing."""
    Migrator(pg_url, folder).migrate()
    before = schema_dump(pg_url)
    write(folder, "V3__status.sql", "ALTER TABLE accounts ADD COLUMN status text;\n")
    with psycopg.connect(pg_url) as blocker:

        def lock_the_table(_pending: object) -> None:
            blocker.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")

        settings = Settings(lock_timeout=0.1, retries=1)
        with pytest.raises(MigrationFailed) as info:
            Migrator(pg_url, folder, settings=settings).migrate(before_apply=lock_the_table)
        blocker.rollback()
    assert "could not get a lock" in str(info.value)
    assert schema_dump(pg_url) == before


def test_reading_the_schema_does_not_wait_forever(pg_url: str, folder: Path) -> None:
    """A table locked during the drift check makes it fail after retries, not hang."""
    Migrator(pg_url, folder).migrate()
    with psycopg.connect(pg_url) as blocker:
        blocker.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(MigrationFailed) as info:
            Migrator(pg_url, folder, settings=Settings(lock_timeout=0.1, retries=1)).migrate()
    assert "stayed locked" in str(info.value)


def test_concurrent_index_runs_outside_a_transaction(pg_url: str, folder: Path) -> None:
    """CREATE INDEX CONCURRENTLY alone in its file is applied in autocommit."""
    write(
        folder,
        "V3__index.sql",
        "CREATE INDEX CONCURRENTLY accounts_balance ON accounts (balance);\n",
    )
    report = Migrator(pg_url, folder).migrate()
    assert report.steps[-1].transactional is False
    assert "accounts_balance" in schema_dump(pg_url)


def test_a_file_mixing_both_kinds_is_refused_naming_what_to_move(pg_url: str, folder: Path) -> None:
    """A file with statements that need a transaction and statements that cannot run in one is
    refused up front; the hint lists the statements to move, by line."""
    write(
        folder,
        "V3__mixed.sql",
        "ALTER TABLE accounts ADD COLUMN note text;\n"
        "CREATE INDEX CONCURRENTLY accounts_note ON accounts (note);\n"
        "ALTER TABLE accounts ADD COLUMN tag text;\n"
        "DROP INDEX CONCURRENTLY IF EXISTS accounts_old;\n",
    )
    with pytest.raises(UsageError) as info:
        Migrator(pg_url, folder).migrate()
    text = str(info.value)
    assert "V3__mixed.sql:2" in text and "cannot run inside a transaction" in text
    assert "line 2: CREATE INDEX CONCURRENTLY accounts_note ON accounts (note)" in text
    assert "line 4: DROP INDEX CONCURRENTLY IF EXISTS accounts_old" in text
    assert "line 1:" not in text and "line 3:" not in text
    assert "accounts" not in schema_dump(pg_url)


SIX_CONCURRENT = (
    "CREATE INDEX CONCURRENTLY accounts_balance ON accounts (balance);\n"
    "CREATE INDEX CONCURRENTLY audit_note ON audit (note);\n"
    "DROP INDEX CONCURRENTLY accounts_balance;\n"
    "CREATE UNIQUE INDEX CONCURRENTLY accounts_balance_key ON accounts (balance);\n"
    "CREATE INDEX CONCURRENTLY audit_note_id ON audit (note, id);\n"
    "DROP INDEX CONCURRENTLY audit_note;\n"
)


def progress_rows(url: str) -> list[tuple[str, int, bool]]:
    with psycopg.connect(url) as conn:
        return [
            (r[0], r[1], r[2])
            for r in conn.execute(
                f"SELECT script, statement, completed_at IS NOT NULL FROM {PROGRESS_TABLE} "
                "ORDER BY script, statement"
            )
        ]


def indexes(url: str) -> dict[str, bool]:
    """Every index of the public schema and whether it is valid."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c "
            "ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relname NOT LIKE 'airlock%'"
        ).fetchall()
    return {name: valid for name, valid in rows}


def test_a_file_of_concurrent_statements_runs_statement_by_statement(
    pg_url: str, folder: Path
) -> None:
    """Six CREATE/DROP INDEX CONCURRENTLY in one file run one by one outside a transaction."""
    write(folder, "V3__indexes.sql", SIX_CONCURRENT)
    report = Migrator(pg_url, folder).migrate()
    step = report.steps[-1]
    assert (step.script, step.outcome, step.transactional) == ("V3__indexes.sql", "applied", False)
    assert (step.statements, step.completed, step.resumed_at) == (6, 6, None)
    assert indexes(pg_url) == {
        "accounts_pkey": True,
        "audit_pkey": True,
        "accounts_balance_key": True,
        "audit_note_id": True,
    }
    assert progress_rows(pg_url) == []
    assert Migrator(pg_url, folder).status()["pending"] == []
    assert Migrator(pg_url, folder).migrate().steps == []


def test_a_failed_statement_is_resumed_after_the_last_completed_one(
    pg_url: str, folder: Path
) -> None:
    """Statement 4 fails: 1-3 stay applied and recorded, no invalid index is left, the schema
    is not drift, and the next run starts at statement 4."""
    Migrator(pg_url, folder).migrate()
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO accounts VALUES (1, 5), (2, 5)")
    write(folder, "V3__indexes.sql", SIX_CONCURRENT)
    with pytest.raises(MigrationFailed) as info:
        Migrator(pg_url, folder).migrate()
    text = str(info.value)
    assert "V3__indexes.sql:4" in text and "23505" in text
    assert "statements 1-3 of 6 completed" in text and "resumes at statement 4" in text
    assert indexes(pg_url) == {"accounts_pkey": True, "audit_pkey": True, "audit_note": True}
    [pending] = Migrator(pg_url, folder).status()["pending"]
    assert (pending["script"], pending["completed_statements"]) == ("V3__indexes.sql", 3)
    assert Migrator(pg_url, folder).drift() is not None
    assert Migrator(pg_url, folder).drift().empty  # type: ignore[union-attr]

    with psycopg.connect(pg_url) as conn:
        conn.execute("DELETE FROM accounts WHERE id = 2")
    report = Migrator(pg_url, folder).migrate()
    step = report.steps[-1]
    assert (step.outcome, step.resumed_at, step.completed) == ("applied", 4, 6)
    assert set(indexes(pg_url)) == {
        "accounts_pkey",
        "audit_pkey",
        "accounts_balance_key",
        "audit_note_id",
    }
    assert progress_rows(pg_url) == []


def test_statements_that_already_ran_may_not_change(pg_url: str, folder: Path) -> None:
    """After a partial run, the completed statements must stay as they were; the failed one
    and those after it may be fixed."""
    Migrator(pg_url, folder).migrate()
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO accounts VALUES (1, 5), (2, 5)")
    write(folder, "V3__indexes.sql", SIX_CONCURRENT)
    with pytest.raises(MigrationFailed):
        Migrator(pg_url, folder).migrate()
    write(folder, "V3__indexes.sql", SIX_CONCURRENT.replace("audit (note)", "audit (note, id)"))
    with pytest.raises(UsageError) as info:
        Migrator(pg_url, folder).migrate()
    assert "V3__indexes.sql:2" in str(info.value) and "statement 2" in str(info.value)
    fixed = SIX_CONCURRENT.replace("CREATE UNIQUE INDEX", "CREATE INDEX")
    write(folder, "V3__indexes.sql", fixed)
    step = Migrator(pg_url, folder).migrate().steps[-1]
    assert (step.outcome, step.resumed_at) == ("applied", 4)


def backend_running(url: str, fragment: str, timeout: float = 20.0) -> int:
    """The pid of the backend whose running query contains ``fragment`` (waits for it)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE %s AND pid <> "
                "pg_backend_pid() AND state = 'active'",
                (f"%{fragment}%",),
            ).fetchone()
            if row:
                return int(row[0])
            time.sleep(0.05)
    raise AssertionError(f"no backend ran {fragment!r}")


def migrate_killed_while_running(pg_url: str, folder: Path, fragment: str) -> list[BaseException]:
    """Migrate while an open write transaction on ``audit`` makes concurrent statements wait,
    and terminate the migrator's backend once it runs ``fragment``; what the migrate raised."""
    blocker = psycopg.connect(pg_url)
    blocker.execute("INSERT INTO audit (note) VALUES ('x')")
    failure: list[BaseException] = []

    def run() -> None:
        try:
            Migrator(pg_url, folder, settings=Settings(lock_timeout=60)).migrate()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        pid = backend_running(pg_url, fragment)
        time.sleep(0.2)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        thread.join(30)
    finally:
        blocker.rollback()
        blocker.close()
    return failure


def test_an_interrupted_concurrent_build_is_dropped_and_retried(pg_url: str, folder: Path) -> None:
    """The migrator's connection dies during a concurrent build: PostgreSQL leaves an INVALID
    index. The next run does not call it drift, drops it, and builds it again."""
    Migrator(pg_url, folder).migrate()
    write(folder, "V3__indexes.sql", SIX_CONCURRENT)
    failure = migrate_killed_while_running(pg_url, folder, "audit_note ON audit")
    assert failure and isinstance(failure[0], AirlockError), failure
    assert "V3__indexes.sql:2" in str(failure[0])
    assert indexes(pg_url).get("audit_note") is False  # left INVALID by the killed build
    assert ("V3__indexes.sql", 2, False) in progress_rows(pg_url)

    step = Migrator(pg_url, folder).migrate().steps[-1]
    assert (step.outcome, step.resumed_at) == ("applied", 2)
    assert indexes(pg_url) == {
        "accounts_pkey": True,
        "audit_pkey": True,
        "accounts_balance_key": True,
        "audit_note_id": True,
    }
    assert Migrator(pg_url, folder).drift().empty  # type: ignore[union-attr]


def hold_a_write_for(
    url: str, table: str, seconds: float
) -> tuple[psycopg.Connection[Any], Callable[[object], None]]:
    """A connection and a ``before_apply`` hook that opens a write transaction on ``table``
    and ends it after ``seconds``: concurrent statements wait for it and time out."""
    blocker = psycopg.connect(url)

    def hook(_pending: object) -> None:
        blocker.execute(f"INSERT INTO {table} DEFAULT VALUES")
        threading.Timer(seconds, blocker.rollback).start()

    return blocker, hook


def test_a_lock_timeout_in_a_concurrent_build_is_retried_after_dropping_its_leftover(
    pg_url: str, folder: Path
) -> None:
    """A concurrent build that times out waiting for a writer leaves an INVALID index; the
    retry drops it first and succeeds once the writer is gone."""
    Migrator(pg_url, folder).migrate()
    write(
        folder,
        "V3__index.sql",
        "CREATE INDEX CONCURRENTLY audit_note ON audit (note);\n"
        "CREATE INDEX CONCURRENTLY accounts_balance ON accounts (balance);\n",
    )
    blocker, hook = hold_a_write_for(pg_url, "audit", 1.5)
    try:
        settings = Settings(lock_timeout=0.3, retries=6)
        report = Migrator(pg_url, folder, settings=settings).migrate(before_apply=hook)
    finally:
        time.sleep(0.1)
        blocker.close()
    [step] = report.steps
    assert step.outcome == "applied" and step.attempts > 1
    assert indexes(pg_url)["audit_note"] is True and indexes(pg_url)["accounts_balance"] is True


def test_a_timed_out_concurrent_reindex_leaves_no_copy_behind(pg_url: str, folder: Path) -> None:
    """A REINDEX CONCURRENTLY that times out waiting for a writer leaves an INVALID
    ``*_ccnew`` copy; it is dropped, so the retry does not leave a second index behind."""
    Migrator(pg_url, folder).migrate()
    write(folder, "V3__reindex.sql", "REINDEX TABLE CONCURRENTLY audit;\n")
    blocker, hook = hold_a_write_for(pg_url, "audit", 1.5)
    try:
        settings = Settings(lock_timeout=0.3, retries=6)
        report = Migrator(pg_url, folder, settings=settings).migrate(before_apply=hook)
    finally:
        time.sleep(0.1)
        blocker.close()
    [step] = report.steps
    assert step.outcome == "applied" and step.attempts > 1
    assert indexes(pg_url) == {"accounts_pkey": True, "audit_pkey": True}
    assert Migrator(pg_url, folder).drift().empty  # type: ignore[union-attr]


def test_an_interrupted_concurrent_reindex_is_not_drift_and_is_cleaned_up(
    pg_url: str, folder: Path
) -> None:
    """The migrator's connection dies during REINDEX INDEX CONCURRENTLY: the ``*_ccnew`` copy
    it leaves is not drift, and the next run drops it and rebuilds the index once."""
    Migrator(pg_url, folder).migrate()
    write(folder, "V3__reindex.sql", "REINDEX INDEX CONCURRENTLY audit_pkey;\n")
    failure = migrate_killed_while_running(pg_url, folder, "REINDEX INDEX CONCURRENTLY audit_pkey")
    assert failure and isinstance(failure[0], AirlockError), failure
    assert indexes(pg_url) == {"accounts_pkey": True, "audit_pkey": True, "audit_pkey_ccnew": False}

    step = Migrator(pg_url, folder).migrate().steps[-1]
    assert (step.outcome, step.resumed_at) == ("applied", 1)
    assert indexes(pg_url) == {"accounts_pkey": True, "audit_pkey": True}
    assert Migrator(pg_url, folder).drift().empty  # type: ignore[union-attr]
    assert progress_rows(pg_url) == []


def test_a_timed_out_concurrent_detach_is_finished_on_retry(pg_url: str, folder: Path) -> None:
    """DETACH PARTITION CONCURRENTLY that times out waiting for a writer leaves the partition
    pending detach, and PostgreSQL refuses to start it again; the retry finishes it with
    FINALIZE."""
    write(
        folder,
        "V3__events.sql",
        "CREATE TABLE events (id bigint NOT NULL DEFAULT 1, at date NOT NULL DEFAULT "
        "'2026-01-15') PARTITION BY RANGE (at);\n"
        "CREATE TABLE events_2026_01 PARTITION OF events FOR VALUES FROM ('2026-01-01') "
        "TO ('2026-02-01');\n",
    )
    Migrator(pg_url, folder).migrate()
    write(
        folder,
        "V4__detach.sql",
        "ALTER TABLE events DETACH PARTITION events_2026_01 CONCURRENTLY;\n",
    )
    blocker, hook = hold_a_write_for(pg_url, "events", 1.5)
    try:
        settings = Settings(lock_timeout=0.3, retries=6)
        report = Migrator(pg_url, folder, settings=settings).migrate(before_apply=hook)
    finally:
        time.sleep(0.1)
        blocker.close()
    [step] = report.steps
    assert step.outcome == "applied" and step.attempts > 1
    with psycopg.connect(pg_url) as conn:
        attached = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhrelid = 'events_2026_01'::regclass"
        ).fetchone()
    assert attached == (0,)
    assert Migrator(pg_url, folder).drift().empty  # type: ignore[union-attr]


def test_a_failed_concurrent_index_leaves_no_invalid_index(pg_url: str, folder: Path) -> None:
    """A unique concurrent build on duplicate data fails, and its invalid index is dropped."""
    Migrator(pg_url, folder).migrate()
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO accounts VALUES (1, 5), (2, 5)")
    before = schema_dump(pg_url)
    write(
        folder,
        "V3__unique.sql",
        "CREATE UNIQUE INDEX CONCURRENTLY accounts_balance_key ON accounts (balance);\n",
    )
    with pytest.raises(MigrationFailed) as info:
        Migrator(pg_url, folder).migrate()
    assert "23505" in str(info.value)
    assert schema_dump(pg_url) == before


def test_drift_is_refused_listing_objects_and_can_be_accepted(pg_url: str, folder: Path) -> None:
    """A hand-made change blocks the next migrate, naming it; accepting records a new baseline."""
    Migrator(pg_url, folder).migrate()
    with psycopg.connect(pg_url) as conn:
        conn.execute("ALTER TABLE accounts ADD COLUMN hotfix text")
        conn.execute("CREATE INDEX accounts_hotfix ON accounts (hotfix)")
    write(folder, "V3__more.sql", "CREATE TABLE more (id int PRIMARY KEY);\n")
    with pytest.raises(GateFailed) as info:
        Migrator(pg_url, folder).migrate()
    text = str(info.value)
    assert "migration.drift" in text and "hotfix" in text and "accounts_hotfix" in text
    assert "more" not in schema_dump(pg_url)
    drift = Migrator(pg_url, folder).drift()
    assert drift is not None and not drift.empty
    with pytest.raises(UsageError):
        Migrator(pg_url, folder).accept_drift("  ")
    Migrator(pg_url, folder).accept_drift("hotfix INC-42, kept")
    assert Migrator(pg_url, folder).migrate().steps[-1].script == "V3__more.sql"
    with psycopg.connect(pg_url) as conn:
        reason = conn.execute(
            "SELECT reason FROM airlock_schema_baseline WHERE kind = 'accept-drift'"
        ).fetchone()
    assert reason == ("hotfix INC-42, kept",)


def test_undo_runs_u_files_newest_first(pg_url: str, folder: Path) -> None:
    """`undo` runs the U file of the latest version, which is then pending again."""
    write(folder, "U2__audit.sql", "DROP TABLE audit;\n")
    Migrator(pg_url, folder).migrate()
    report = Migrator(pg_url, folder).undo()
    assert [s.script for s in report.steps] == ["U2__audit.sql"]
    assert "audit" not in schema_dump(pg_url)
    status = Migrator(pg_url, folder).status()
    assert [p["script"] for p in status["pending"]] == ["V2__audit.sql"]
    with pytest.raises(UsageError) as info:
        Migrator(pg_url, folder).undo()
    assert "no undo file for version(s) 1" in str(info.value)


def test_repeatable_migrations_rerun_when_changed(pg_url: str, folder: Path) -> None:
    """An R file runs after versioned ones, again only when its content changes."""
    write(
        folder,
        "R__views.sql",
        "CREATE OR REPLACE VIEW rich AS SELECT id FROM accounts WHERE balance > 100;\n",
    )
    assert Migrator(pg_url, folder).migrate().steps[-1].script == "R__views.sql"
    assert Migrator(pg_url, folder).migrate().steps == []
    write(
        folder,
        "R__views.sql",
        "CREATE OR REPLACE VIEW rich AS SELECT id FROM accounts WHERE balance > 1000;\n",
    )
    assert [s.script for s in Migrator(pg_url, folder).migrate().steps] == ["R__views.sql"]


def test_standalone_cli_migrate_and_status(pg_url: str, folder: Path, tmp_path: Path) -> None:
    """`airlock db migrate --database-url … --migrations …` works without a project."""
    args = ["--database-url", pg_url, "--migrations", str(folder), "--format", "json"]
    dry = airlock("db", "migrate", *args, "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert [s["outcome"] for s in json.loads(dry.stdout)["steps"]] == ["planned", "planned"]
    applied = airlock("db", "migrate", *args, cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    status = json.loads(airlock("db", "status", *args, cwd=tmp_path).stdout)
    assert [a["version"] for a in status["applied"]] == ["1", "2"]
    password = psycopg.conninfo.conninfo_to_dict(pg_url)["password"]
    for text in (dry.stdout, applied.stdout, applied.stderr):
        assert str(password) not in text


def test_unreachable_database_and_wrong_password(folder: Path, tmp_path: Path, pg_url: str) -> None:
    """A server that is not there is exit 1; refused credentials are exit 2; neither a traceback."""
    down = airlock(
        "db",
        "status",
        "--database-url",
        "postgresql://u:p@127.0.0.1:9/x",
        "--migrations",
        str(folder),
        cwd=tmp_path,
    )
    assert down.returncode == 1 and "cannot reach PostgreSQL" in down.stderr
    assert "Traceback" not in down.stderr
    password = str(psycopg.conninfo.conninfo_to_dict(pg_url)["password"])
    wrong = pg_url.replace(f":{password}@", f":x{password}x@", 1)
    refused = airlock(
        "db", "status", "--database-url", wrong, "--migrations", str(folder), cwd=tmp_path
    )
    assert refused.returncode == 2 and "refused the credentials" in refused.stderr
    assert f"x{password}x" not in refused.stderr and password not in refused.stderr
