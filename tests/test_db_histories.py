"""Migration histories shaped like real Flyway projects', applied from empty with `airlock db
migrate` on a real PostgreSQL, and databases Flyway made adopted with `airlock db baseline`.

The sets under ``tests/fixtures/histories/`` were written for these tests. Between them they
have: versions with underscores (``V1_1__``) and dots, timestamp versions, gaps where a Java
migration was, repeatable migrations, files that are not migrations (a README, Flyway's
``.sql.conf``), enums made in ``DO $$ … $$`` blocks, ``ALTER TYPE … ADD VALUE``, files of
400+ lines creating dozens of tables and then recreating their indexes, and files of
``CREATE/DROP INDEX CONCURRENTLY`` only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

from airlock.db.files import checksum, discover, flyway_checksum
from airlock.db.migrate import HISTORY_TABLE, Migrator

from .conftest import airlock

HISTORIES = Path(__file__).resolve().parent / "fixtures" / "histories"
SETS = sorted(p.name for p in HISTORIES.iterdir() if p.is_dir())


def migrate(url: str, folder: Path, cwd: Path, *extra: str) -> dict[str, Any]:
    result = airlock(
        "db",
        "migrate",
        "--database-url",
        url,
        "--migrations",
        str(folder),
        "--format",
        "json",
        *extra,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def public_tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename NOT LIKE 'airlock%'"
        ).fetchall()
    return {r[0] for r in rows}


def test_there_are_three_realistic_sets() -> None:
    """At least three sets of 15 or more migrations each, one with a 400-line file."""
    assert len(SETS) >= 3
    longest = 0
    for name in SETS:
        found = discover(HISTORIES / name)
        assert len(found.versioned) + len(found.repeatable) >= 15, name
        assert found.repeatable and found.notes, name
        longest = max(longest, *(len(m.read().splitlines()) for m in found.versioned))
    assert longest >= 400


@pytest.mark.parametrize("name", SETS)
def test_a_history_applies_from_empty_and_reruns_as_a_no_op(
    name: str, pg_url: str, tmp_path: Path
) -> None:
    """`airlock db migrate` applies every file in order (versioned, then repeatable), notes
    the files it skips, and a second run changes nothing."""
    folder = HISTORIES / name
    found = discover(folder)
    first = migrate(pg_url, folder, tmp_path)
    expected = [m.name for m in found.versioned] + [m.name for m in found.repeatable]
    assert [s["script"] for s in first["steps"]] == expected
    assert all(s["outcome"] == "applied" for s in first["steps"])
    assert first["notes"] == list(found.notes)
    concurrent = [s for s in first["steps"] if not s["transactional"]]
    assert concurrent and all(s["statements"] > 1 for s in concurrent)

    second = migrate(pg_url, folder, tmp_path)
    assert second["steps"] == [] and second["findings"] == []
    status = json.loads(
        airlock(
            "db",
            "status",
            "--database-url",
            pg_url,
            "--migrations",
            str(folder),
            "--format",
            "json",
            cwd=tmp_path,
        ).stdout
    )
    assert status["pending"] == [] and status["findings"] == []
    assert [a["script"] for a in status["applied"]] == [m.name for m in found.versioned]


@pytest.mark.parametrize("name", SETS)
def test_an_edited_repeatable_runs_again_after_the_versioned_ones(
    name: str, pg_url: str, tmp_path: Path
) -> None:
    """Changing a repeatable migration reruns only it; adding a version runs that first."""
    folder = tmp_path / name
    shutil.copytree(HISTORIES / name, folder)
    Migrator(pg_url, folder).migrate()
    repeatable = discover(folder).repeatable[0]
    repeatable.path.write_text(repeatable.read() + "\n-- reviewed\n")
    (folder / "V99999999999__later.sql").write_text("CREATE TABLE later (id int PRIMARY KEY);\n")
    report = Migrator(pg_url, folder).migrate()
    assert [s.script for s in report.steps] == ["V99999999999__later.sql", repeatable.name]


# -- adopting a database Flyway migrated ---------------------------------------------------------

FLYWAY_DDL = """
CREATE TABLE flyway_schema_history (
    installed_rank integer NOT NULL PRIMARY KEY,
    version varchar(50),
    description varchar(200) NOT NULL,
    type varchar(20) NOT NULL,
    script varchar(1000) NOT NULL,
    checksum integer,
    installed_by varchar(100) NOT NULL,
    installed_on timestamp NOT NULL DEFAULT now(),
    execution_time integer NOT NULL,
    success boolean NOT NULL
);
"""


def as_flyway_did(url: str, folder: Path, *, java: dict[str, str] | None = None) -> None:
    """Run every file of ``folder`` as Flyway would and write Flyway's history rows, without
    Airlock: the database looks like one Flyway migrated. ``java`` adds rows for Java
    migrations (version: class name)."""
    found = discover(folder)
    rows: list[tuple[Any, ...]] = [
        (None, "<< Flyway Schema Creation >>", "SCHEMA", '"public"', None, True)
    ]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FLYWAY_DDL)
        order = sorted(
            [(m.version, m) for m in found.versioned]
            + [(tuple(int(p) for p in v.split(".")), None) for v in (java or {})],
            key=lambda pair: pair[0] or (),
        )
        for version, migration in order:
            if migration is None:
                label = ".".join(map(str, version))
                name = (java or {})[label]
                rows.append((label, name.replace("_", " "), "JDBC", name, None, True))
                continue
            for statement in _statements(migration.read()):
                conn.execute(statement.encode(), prepare=False)
            rows.append(_row(migration))
        for migration in found.repeatable:
            for statement in _statements(migration.read()):
                conn.execute(statement.encode(), prepare=False)
            rows.append(_row(migration))
        for rank, (version, description, kind, script, crc, success) in enumerate(rows, 1):
            conn.execute(
                "INSERT INTO flyway_schema_history VALUES (%s, %s, %s, %s, %s, %s, 'deploy', "
                "now(), 12, %s)",
                (rank, version, description, kind, script, crc, success),
            )


def _statements(text: str) -> list[str]:
    from airlock.db.sql import split

    return [s.text for s in split(text)]


def _row(migration: Any) -> tuple[Any, ...]:
    return (
        migration.version_label,
        migration.description,
        "SQL",
        migration.name,
        flyway_checksum(migration.read()),
        True,
    )


def baseline(url: str, folder: Path, cwd: Path, *args: str) -> Any:
    return airlock(
        "db",
        "baseline",
        "--database-url",
        url,
        "--migrations",
        str(folder),
        "--format",
        "json",
        *args,
        cwd=cwd,
    )


def history(url: str) -> list[tuple[str | None, str, str]]:
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass(%s)", (HISTORY_TABLE,)).fetchone() == (None,):
            return []
        rows = conn.execute(
            f"SELECT version, script, type FROM {HISTORY_TABLE} ORDER BY installed_rank"
        ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def test_flyway_checksums_are_crc32_over_lines() -> None:
    """The CRC-32 of the lines without their endings, BOM dropped, as a signed integer: the
    standard check value for "123456789", whatever the line endings."""
    assert flyway_checksum("123456789\n") == -873187034  # 0xCBF43926 as a Java int
    assert flyway_checksum("1234\r\n56789") == flyway_checksum("\ufeff123456789")
    assert flyway_checksum("") == 0
    # computed with java.util.zip.CRC32 over BufferedReader lines
    text = "\ufeffCREATE TABLE t (id int);\r\n\r\n-- café  \n\rSELECT 1;\n"
    assert flyway_checksum(text) == 743164754
    assert flyway_checksum("SELECT 1;  \n") != flyway_checksum("SELECT 1;\n")


@pytest.mark.parametrize("name", SETS)
def test_a_flyway_database_is_adopted_and_then_migrates_only_what_is_new(
    name: str, pg_url: str, tmp_path: Path
) -> None:
    """`airlock db baseline --from-flyway` records what Flyway applied (with Airlock's
    checksums), a Java migration is left out with a note, and the next migrate is a no-op."""
    folder = HISTORIES / name
    found = discover(folder)
    as_flyway_did(pg_url, folder, java={"99999999998": "V99999999998__Backfill_things"})
    result = baseline(pg_url, folder, tmp_path, "--from-flyway")
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert [r["script"] for r in data["recorded"]] == [m.name for m in found.versioned] + [
        m.name for m in found.repeatable
    ]
    assert data["findings"] == [] and data["pending"] == []
    assert any("V99999999998__Backfill_things" in n and "JDBC" in n for n in data["notes"])
    with psycopg.connect(pg_url) as conn:
        sums = dict(conn.execute(f"SELECT script, checksum FROM {HISTORY_TABLE}").fetchall())
    assert sums == {m.name: checksum(m.read()) for m in found.versioned + found.repeatable}
    again = migrate(pg_url, folder, tmp_path)
    assert again["steps"] == [] and again["findings"] == []


def test_baseline_at_a_version_records_the_files_up_to_it(pg_url: str, tmp_path: Path) -> None:
    """`--version V` records V and everything below as applied without running them; the
    later files run on the next migrate."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "V1__a.sql").write_text("CREATE TABLE a (id int PRIMARY KEY);\n")
    (folder / "V1_1__b.sql").write_text("CREATE TABLE b (id int PRIMARY KEY);\n")
    (folder / "V2__c.sql").write_text("CREATE TABLE c (id int PRIMARY KEY);\n")
    (folder / "V3__d.sql").write_text("CREATE TABLE d (id int PRIMARY KEY);\n")
    with psycopg.connect(pg_url) as conn:  # what an earlier tool made
        conn.execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE c (id int PRIMARY KEY)")
    result = baseline(pg_url, folder, tmp_path, "--version", "2")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["baseline_version"] == "2" and data["pending"] == ["V3__d.sql"]
    assert history(pg_url) == [
        ("1", "V1__a.sql", "BASELINE"),
        ("1.1", "V1_1__b.sql", "BASELINE"),
        ("2", "V2__c.sql", "BASELINE"),
    ]
    step = [s["script"] for s in migrate(pg_url, folder, tmp_path)["steps"]]
    assert step == ["V3__d.sql"] and "d" in public_tables(pg_url)
    again = baseline(pg_url, folder, tmp_path, "--version", "3")
    assert again.returncode == 2 and "already has an Airlock history" in again.stderr


def test_baseline_refuses_bad_input_and_changes_nothing(pg_url: str, tmp_path: Path) -> None:
    """A version no file has, no Flyway table, Flyway's failed rows: each a clear error,
    exit 2, no traceback, and the database as it was."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "V1__a.sql").write_text("CREATE TABLE a (id int PRIMARY KEY);\n")
    (folder / "V2__b.sql").write_text("CREATE TABLE b (id int PRIMARY KEY);\n")

    wrong = baseline(pg_url, folder, tmp_path, "--version", "1.5")
    assert wrong.returncode == 2 and "no migration file" in wrong.stderr
    assert "version 1.5" in wrong.stderr and "1, 2" in wrong.stderr

    absent = baseline(pg_url, folder, tmp_path, "--from-flyway")
    assert absent.returncode == 2 and "no table flyway_schema_history" in absent.stderr

    neither = baseline(pg_url, folder, tmp_path)
    assert neither.returncode == 2 and "--from-flyway" in neither.stderr

    as_flyway_did(pg_url, folder)
    with psycopg.connect(pg_url) as conn:
        conn.execute(
            "INSERT INTO flyway_schema_history VALUES (9, '3', 'broken', 'SQL', 'V3__broken.sql',"
            " 42, 'deploy', now(), 5, false)"
        )
    failed = baseline(pg_url, folder, tmp_path, "--from-flyway")
    assert failed.returncode == 2 and "1 failed migration" in failed.stderr
    assert "V3__broken.sql" in failed.stderr and "nothing was adopted" in failed.stderr
    for result in (wrong, absent, neither, failed):
        assert "Traceback" not in result.stderr
    assert history(pg_url) == []
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('airlock_schema_baseline')").fetchone() == (None,)


def test_a_file_changed_since_flyway_ran_it_is_reported(pg_url: str, tmp_path: Path) -> None:
    """A file whose CRC no longer matches Flyway's is adopted and reported; a changed
    repeatable is left to run again; files below Flyway's baseline are recorded too."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "V1__a.sql").write_text("CREATE TABLE a (id int PRIMARY KEY);\n")
    (folder / "V2__b.sql").write_text("CREATE TABLE b (id int PRIMARY KEY);\n")
    (folder / "V3__c.sql").write_text("CREATE TABLE c (id int PRIMARY KEY);\n")
    (folder / "R__v.sql").write_text("CREATE OR REPLACE VIEW v AS SELECT id FROM c;\n")
    as_flyway_did(pg_url, folder)
    with psycopg.connect(pg_url) as conn:  # Flyway was baselined at 1: no row for V1
        conn.execute("DELETE FROM flyway_schema_history WHERE version = '1'")
        conn.execute(
            "INSERT INTO flyway_schema_history VALUES (0, '1', '<< Flyway Baseline >>', "
            "'BASELINE', '<< Flyway Baseline >>', NULL, 'deploy', now(), 0, true)"
        )
    (folder / "V2__b.sql").write_text("CREATE TABLE b (id bigint PRIMARY KEY);\n")
    (folder / "R__v.sql").write_text("CREATE OR REPLACE VIEW v AS SELECT id, id AS c FROM c;\n")
    text = airlock(
        "db",
        "baseline",
        "--database-url",
        pg_url,
        "--migrations",
        str(folder),
        "--from-flyway",
        cwd=tmp_path,
    )
    assert text.returncode == 0, text.stderr
    assert "migration.flyway-mismatch" in text.stdout and "V2__b.sql" in text.stdout
    assert history(pg_url) == [
        ("1", "V1__a.sql", "BASELINE"),
        ("2", "V2__b.sql", "V"),
        ("3", "V3__c.sql", "V"),
    ]
    steps = migrate(pg_url, folder, tmp_path)["steps"]
    assert [s["script"] for s in steps] == ["R__v.sql"]
