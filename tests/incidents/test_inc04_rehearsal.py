"""INC04: migrations "worked on my machine" but failed on staging; a seed script was run by hand.

Migrations are versioned, checksummed and ordered by Airlock alone; an edited applied migration
is refused; `airlock db rehearse` runs the pending migrations on a clone of the target first and
reports each one's duration and result.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from airlock.db.server import ServerInfo

from ..conftest import airlock, databases, full_dump


def test_rehearsal_finds_what_fails_on_staging_data(
    pg_url: str, pg_server: ServerInfo, tmp_path: Path
) -> None:
    """Staging data breaks V3; the rehearsal says so with durations, and staging is untouched."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "V1__users.sql").write_text(
        "CREATE TABLE users (id bigint PRIMARY KEY, email text);\n"
    )
    (folder / "V2__seed_roles.sql").write_text(
        "CREATE TABLE roles (name text PRIMARY KEY);\n"
        "INSERT INTO roles VALUES ('admin'), ('member');\n"
    )
    args = ["--database-url", pg_url, "--migrations", str(folder)]
    assert airlock("db", "migrate", *args, cwd=tmp_path).returncode == 0
    with psycopg.connect(pg_url) as conn:  # staging has real data, with duplicates
        conn.execute("INSERT INTO users VALUES (1, 'a@x'), (2, 'a@x'), (3, NULL)")
    (folder / "V3__users_role.sql").write_text(
        "ALTER TABLE users ADD COLUMN role text;\n"
        "ALTER TABLE users ADD CONSTRAINT users_role_fk FOREIGN KEY (role) "
        "REFERENCES roles (name) NOT VALID;\n"
    )
    (folder / "V4__unique_email.sql").write_text(
        "CREATE UNIQUE INDEX CONCURRENTLY users_email ON users (email);\n"
    )
    before = full_dump(pg_url)
    result = airlock("db", "rehearse", *args, "--format", "json", cwd=tmp_path)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    outcomes = {s["script"]: s["outcome"] for s in report["steps"]}
    assert outcomes == {"V3__users_role.sql": "applied", "V4__unique_email.sql": "failed"}
    assert all(isinstance(s["seconds"], float) for s in report["steps"])
    assert "V4__unique_email.sql" in report["error"] and "23505" in report["error"]
    assert report["clone_dropped"] is True
    assert full_dump(pg_url) == before
    assert not [d for d in databases(pg_server) if d.startswith("airlock_rehearsal_")]


def test_an_edited_applied_migration_is_refused(pg_url: str, tmp_path: Path) -> None:
    """Editing a migration that ran is refused with both checksums; nothing runs."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    script = folder / "V1__users.sql"
    script.write_text("CREATE TABLE users (id bigint PRIMARY KEY);\n")
    args = ["--database-url", pg_url, "--migrations", str(folder)]
    assert airlock("db", "migrate", *args, cwd=tmp_path).returncode == 0
    script.write_text("CREATE TABLE users (id bigint PRIMARY KEY, name text);\n")
    result = airlock("db", "validate", *args, "--format", "json", cwd=tmp_path)
    assert result.returncode == 1
    [finding] = json.loads(result.stdout)["findings"]
    assert finding["code"] == "migration.edited"
    assert finding["evidence"]["applied"] != finding["evidence"]["file"]
    refused = airlock("db", "migrate", *args, cwd=tmp_path)
    assert refused.returncode == 1 and "migration.edited" in refused.stderr
