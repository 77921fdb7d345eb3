"""INC03: a production migration failed because someone had changed the schema by hand.

Airlock compares the live schema with the one it recorded after the last migrate and refuses on
drift, naming the changed objects; a failing migration leaves the database as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from ..conftest import airlock, full_dump


def migrations(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "V1__orders.sql").write_text(
        "CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL DEFAULT 'new');\n"
    )
    return folder


def test_a_hand_made_change_blocks_the_next_migration(pg_url: str, tmp_path: Path) -> None:
    """An unapproved column type change is found and named; nothing is migrated."""
    folder = migrations(tmp_path)
    args = ["--database-url", pg_url, "--migrations", str(folder)]
    assert airlock("db", "migrate", *args, cwd=tmp_path).returncode == 0
    with psycopg.connect(pg_url) as conn:
        conn.execute("ALTER TABLE orders ALTER COLUMN status TYPE varchar(20)")
        conn.execute("CREATE TABLE scratch (id int PRIMARY KEY)")
    (folder / "V2__paid_at.sql").write_text("ALTER TABLE orders ADD COLUMN paid_at timestamptz;\n")
    before = full_dump(pg_url)

    drift = airlock("db", "drift", *args, "--format", "json", cwd=tmp_path)
    assert drift.returncode == 1
    report = json.loads(drift.stdout)
    assert report["drift"] is True
    assert "table public.scratch" in report["added"]
    assert "table public.orders" in report["changed"]

    refused = airlock("db", "migrate", *args, cwd=tmp_path)
    assert refused.returncode == 1
    assert "migration.drift" in refused.stderr
    assert "scratch" in refused.stderr and "status" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert full_dump(pg_url) == before


def test_a_failing_statement_leaves_the_database_exactly_as_it_was(
    pg_url: str, tmp_path: Path
) -> None:
    """A migration whose last statement fails is rolled back entirely, data included."""
    folder = migrations(tmp_path)
    args = ["--database-url", pg_url, "--migrations", str(folder)]
    assert airlock("db", "migrate", *args, cwd=tmp_path).returncode == 0
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO orders (id) SELECT generate_series(1, 1000)")
    (folder / "V2__backfill.sql").write_text(
        "ALTER TABLE orders ADD COLUMN total bigint;\n"
        "UPDATE orders SET total = id * 100;\n"
        "UPDATE orders SET total = 1 / (id - 500);\n"
    )
    before = full_dump(pg_url)
    failed = airlock("db", "migrate", *args, cwd=tmp_path)
    assert failed.returncode == 1
    assert "V2__backfill.sql:3" in failed.stderr and "division by zero" in failed.stderr
    assert full_dump(pg_url) == before
