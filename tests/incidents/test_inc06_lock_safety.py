"""INC06: a migration took too long and locked tables while the stores were about to open.

The linter flags statements that take long or strong locks with the safe alternative; a
migration waits only briefly for a lock and fails cleanly instead of freezing traffic; rehearsal
times each migration on real-size data.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psycopg

from ..conftest import airlock, full_dump

NAIVE = """\
CREATE INDEX orders_customer ON orders (customer);
ALTER TABLE orders ADD COLUMN token uuid DEFAULT gen_random_uuid();
ALTER TABLE orders ADD CONSTRAINT orders_customer_fk
    FOREIGN KEY (customer) REFERENCES customers (id);
"""


def base(tmp_path: Path, url: str) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "V1__base.sql").write_text(
        "CREATE TABLE customers (id bigint PRIMARY KEY);\n"
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer bigint NOT NULL);\n"
    )
    assert (
        airlock(
            "db", "migrate", "--database-url", url, "--migrations", str(folder), cwd=tmp_path
        ).returncode
        == 0
    )
    return folder


def test_naive_migrations_are_flagged_with_the_safe_alternative(
    pg_url: str, tmp_path: Path
) -> None:
    """Each dangerous statement gets its rule code, line and a safe alternative; migrate refuses."""
    folder = base(tmp_path, pg_url)
    (folder / "V2__naive.sql").write_text(NAIVE)
    args = ["--database-url", pg_url, "--migrations", str(folder)]
    lint = airlock("db", "lint", *args, "--format", "json", cwd=tmp_path)
    assert lint.returncode == 1
    findings = json.loads(lint.stdout)["findings"]
    assert {(f["code"], f["location"]["line"]) for f in findings} >= {
        ("lint.index-not-concurrent", 1),
        ("lint.volatile-default", 2),
        ("lint.constraint-not-valid", 3),
    }
    assert all(f["hint"] for f in findings)
    before = full_dump(pg_url)
    refused = airlock("db", "migrate", *args, cwd=tmp_path)
    assert refused.returncode == 1 and "lint errors" in refused.stderr
    assert full_dump(pg_url) == before


def test_the_safe_equivalent_passes_and_applies(pg_url: str, tmp_path: Path) -> None:
    """The linter's recommended form of the same change is clean and migrates."""
    folder = base(tmp_path, pg_url)
    (folder / "V2__index.sql").write_text(
        "CREATE INDEX CONCURRENTLY orders_customer ON orders (customer);\n"
    )
    (folder / "V3__token.sql").write_text(
        "ALTER TABLE orders ADD COLUMN token uuid;\n"
        "ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer) "
        "REFERENCES customers (id) NOT VALID;\n"
    )
    (folder / "V4__validate.sql").write_text(
        "ALTER TABLE orders VALIDATE CONSTRAINT orders_customer_fk;\n"
    )
    args = ["--database-url", pg_url, "--migrations", str(folder)]
    lint = airlock("db", "lint", *args, "--format", "json", cwd=tmp_path)
    assert lint.returncode == 0, lint.stdout
    result = airlock("db", "migrate", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_a_blocked_migration_fails_fast_instead_of_freezing_traffic(
    pg_url: str, tmp_path: Path
) -> None:
    """Behind a long transaction, the migration gives up after short lock waits; writers flow."""
    folder = base(tmp_path, pg_url)
    (folder / "V2__note.sql").write_text("ALTER TABLE orders ADD COLUMN note text;\n")
    stalls: list[float] = []
    stop = threading.Event()

    def writer() -> None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            n = 0
            while not stop.is_set():
                n += 1
                started = time.monotonic()
                conn.execute("INSERT INTO orders VALUES (%s, 1)", (1_000_000 + n,))
                stalls.append(time.monotonic() - started)
                time.sleep(0.01)

    with psycopg.connect(pg_url) as long_reader:
        long_reader.execute("SELECT count(*) FROM orders")  # holds ACCESS SHARE until rollback
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            result = airlock(
                "db",
                "migrate",
                "--database-url",
                pg_url,
                "--migrations",
                str(folder),
                "--lock-timeout",
                "0.2",
                cwd=tmp_path,
            )
        finally:
            stop.set()
            thread.join()
        long_reader.rollback()
    assert result.returncode == 1
    assert "could not get a lock" in result.stderr
    assert stalls and max(stalls) < 1.0
