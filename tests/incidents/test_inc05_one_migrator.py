"""INC05: two migration runs raced and hit foreign-key errors halfway.

One migrator at a time per database (a lock, with a clear message to the second); each migration
is transactional where PostgreSQL allows it; statements that cannot be are handled explicitly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg

from airlock.db.migrate import HISTORY_TABLE

from ..conftest import airlock


def test_two_racing_migrators_apply_each_migration_once(pg_url: str, tmp_path: Path) -> None:
    """Started together, one migrator applies everything; the other waits and finds it done."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "V1__customers.sql").write_text(
        "CREATE TABLE customers (id bigint PRIMARY KEY);\n"
        "INSERT INTO customers SELECT generate_series(1, 20000);\n"
    )
    (folder / "V2__orders.sql").write_text(
        "CREATE TABLE orders (id bigserial PRIMARY KEY, "
        "customer bigint NOT NULL REFERENCES customers (id));\n"
        "INSERT INTO orders (customer) SELECT id FROM customers;\n"
    )
    command = [
        sys.executable,
        "-m",
        "airlock.cli",
        "db",
        "migrate",
        "--database-url",
        pg_url,
        "--migrations",
        str(folder),
    ]
    runs = [
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    with psycopg.connect(pg_url) as conn:
        scripts = [r[0] for r in conn.execute(f"SELECT script FROM {HISTORY_TABLE}")]
        (orders,) = conn.execute("SELECT count(*) FROM orders").fetchone() or (0,)
    assert sorted(scripts) == ["V1__customers.sql", "V2__orders.sql"]
    assert orders == 20000


def test_the_second_migrator_is_told_who_holds_the_lock(pg_url: str, tmp_path: Path) -> None:
    """A migrator that cannot get the lock in time names the session that holds it."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "V1__t.sql").write_text("CREATE TABLE t (id int PRIMARY KEY);\n")
    with psycopg.connect(pg_url, autocommit=True, application_name="nightly-import") as other:
        other.execute("SELECT pg_advisory_lock(%s, 1)", (0x41524C4B,))
        result = airlock(
            "db",
            "migrate",
            "--database-url",
            pg_url,
            "--migrations",
            str(folder),
            "--lock-wait",
            "0.5",
            cwd=tmp_path,
        )
    assert result.returncode == 1
    assert "nightly-import" in result.stderr and "another migrator" in result.stderr


def test_a_statement_that_cannot_run_in_a_transaction_is_handled(
    pg_url: str, tmp_path: Path
) -> None:
    """CREATE INDEX CONCURRENTLY is detected and run on its own, outside a transaction."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "V1__t.sql").write_text("CREATE TABLE t (id int PRIMARY KEY, v int);\n")
    (folder / "V2__index.sql").write_text("CREATE INDEX CONCURRENTLY t_v ON t (v);\n")
    result = airlock(
        "db",
        "migrate",
        "--database-url",
        pg_url,
        "--migrations",
        str(folder),
        "--format",
        "json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert '"transactional": false' in result.stdout
