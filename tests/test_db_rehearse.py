"""Rehearsal: pending migrations on a clone of the target, which is then dropped."""

from __future__ import annotations

from pathlib import Path

import psycopg

from airlock.db.migrate import Migrator
from airlock.db.rehearse import rehearse
from airlock.db.server import ServerInfo
from airlock.db.target import resolve

from .conftest import databases, full_dump


def setup(folder: Path, url: str) -> None:
    folder.mkdir()
    (folder / "V1__t.sql").write_text("CREATE TABLE t (id bigint PRIMARY KEY, v text);\n")
    Migrator(url, folder).migrate()
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 5000) g")


def test_rehearsal_reports_each_migration_and_leaves_the_target_alone(
    pg_url: str, pg_server: ServerInfo, tmp_path: Path
) -> None:
    """Pending migrations run on a clone with durations and locks; the target is unchanged."""
    folder = tmp_path / "m"
    setup(folder, pg_url)
    (folder / "V2__v_not_null.sql").write_text("ALTER TABLE t ADD COLUMN w text DEFAULT 'y';\n")
    (folder / "V3__index.sql").write_text("CREATE INDEX CONCURRENTLY t_v ON t (v);\n")
    before = full_dump(pg_url)
    target = resolve(project=None, env=None, database_url=pg_url, migrations=folder)
    result = rehearse(target, method="auto")
    assert result.ok, result.error
    assert result.clone_method == "template"
    steps = {s.script: s for s in result.report.steps}
    assert set(steps) == {"V2__v_not_null.sql", "V3__index.sql"}
    assert "AccessExclusiveLock on t" in steps["V2__v_not_null.sql"].locks
    assert steps["V3__index.sql"].transactional is False
    assert all(s.seconds >= 0 for s in steps.values())
    assert full_dump(pg_url) == before
    assert not [d for d in databases(pg_server) if d.startswith("airlock_rehearsal_")]


def test_rehearsal_uses_a_dump_while_the_target_is_in_use(
    pg_url: str, pg_server: ServerInfo, tmp_path: Path
) -> None:
    """With other sessions connected, the clone is made by dump and restore, and still works."""
    folder = tmp_path / "m"
    setup(folder, pg_url)
    (folder / "V2__w.sql").write_text("ALTER TABLE t ADD COLUMN w int;\n")
    target = resolve(project=None, env=None, database_url=pg_url, migrations=folder)
    with psycopg.connect(pg_url):  # the application is connected
        result = rehearse(target)
    assert result.ok and result.clone_method == "dump"
    assert [s.script for s in result.report.steps] == ["V2__w.sql"]


def test_a_failing_rehearsal_names_the_migration_and_drops_the_clone(
    pg_url: str, pg_server: ServerInfo, tmp_path: Path
) -> None:
    """A migration that fails on real data fails the rehearsal, not the target."""
    folder = tmp_path / "m"
    setup(folder, pg_url)
    (folder / "V2__unique.sql").write_text("ALTER TABLE t ADD CONSTRAINT v_unique UNIQUE (v);\n")
    before = full_dump(pg_url)
    target = resolve(project=None, env=None, database_url=pg_url, migrations=folder)
    result = rehearse(target)
    assert not result.ok
    assert result.error is not None and "V2__unique.sql:1" in result.error
    assert "23505" in result.error
    assert full_dump(pg_url) == before
    assert not [d for d in databases(pg_server) if d.startswith("airlock_rehearsal_")]
