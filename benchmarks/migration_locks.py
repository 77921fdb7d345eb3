"""How long does a migration stall the application's writes? Naive SQL vs the safe form.

    python benchmarks/migration_locks.py --rows 1000000

On a temporary embedded PostgreSQL server it fills ``orders`` with N rows (and ``customers``),
starts a writer that keeps inserting and updating single rows, and applies through
``airlock db migrate``:

(a) the naive change: a plain ``CREATE INDEX``, ``ADD COLUMN … NOT NULL DEFAULT`` with a volatile
    default (a table rewrite), and a foreign key validated at once;
(b) the same change the way the linter recommends: ``CREATE INDEX CONCURRENTLY``, the column added
    without a default, its default set separately and the rows backfilled in small batches (by
    the application, outside the migration), ``NOT NULL`` through a ``CHECK … NOT VALID`` that is
    validated later, and the foreign key added ``NOT VALID`` then validated.

It prints one JSON object: for each path, the writer's longest stall and p99 latency while the
migration ran, and the migration's own duration. Target at N = 1,000,000: the safe path's longest
stall ≤ 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from airlock.db.server import EmbeddedServer

SETUP = """
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (id bigint PRIMARY KEY, customer bigint NOT NULL, amount bigint NOT NULL);
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, {customers}) g;
INSERT INTO orders SELECT g, 1 + g % {customers}, g % 1000 FROM generate_series(1, {rows}) g;
"""

NAIVE = {
    "V2__naive.sql": (
        "CREATE INDEX orders_customer ON orders (customer);\n"
        "ALTER TABLE orders ADD COLUMN token uuid NOT NULL DEFAULT gen_random_uuid();\n"
        "ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer) "
        "REFERENCES customers (id);\n"
    ),
}

SAFE_BEFORE_BACKFILL = {
    "V2__index.sql": "CREATE INDEX CONCURRENTLY orders_customer ON orders (customer);\n",
    "V3__token.sql": (
        "ALTER TABLE orders ADD COLUMN token uuid;\n"
        "ALTER TABLE orders ALTER COLUMN token SET DEFAULT gen_random_uuid();\n"
        "ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer) "
        "REFERENCES customers (id) NOT VALID;\n"
    ),
}

SAFE_AFTER_BACKFILL = {
    "V4__token_check.sql": (
        "ALTER TABLE orders ADD CONSTRAINT orders_token_not_null CHECK (token IS NOT NULL) "
        "NOT VALID;\n"
    ),
    "V5__validate.sql": (
        "ALTER TABLE orders VALIDATE CONSTRAINT orders_token_not_null;\n"
        "ALTER TABLE orders VALIDATE CONSTRAINT orders_customer_fk;\n"
    ),
    "V6__not_null.sql": (
        "ALTER TABLE orders ALTER COLUMN token SET NOT NULL;\n"
        "ALTER TABLE orders DROP CONSTRAINT orders_token_not_null;\n"
    ),
}


class Writer:
    """Keeps inserting and updating single rows; records each operation's latency."""

    def __init__(self, url: str, first_id: int) -> None:
        self.url = url
        self.next_id = first_id
        self.latencies: list[tuple[float, float]] = []  # (started, seconds)
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        if self.error is not None:
            raise SystemExit(f"the writer failed: {self.error}")

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            self.error = exc

    def _loop(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                self.next_id += 1
                started = time.monotonic()
                conn.execute(
                    "INSERT INTO orders (id, customer, amount) VALUES (%s, 1, 1)", (self.next_id,)
                )
                conn.execute(
                    "UPDATE orders SET amount = amount + 1 WHERE id = %s",
                    (self.next_id % 1000 + 1,),
                )
                self.latencies.append((started, time.monotonic() - started))
                time.sleep(0.005)

    def window(self, start: float, end: float) -> dict[str, Any]:
        inside = [
            seconds
            for began, seconds in self.latencies
            if began + seconds >= start and began <= end
        ]
        if not inside:
            return {"operations": 0, "longest_stall_seconds": None, "p99_ms": None}
        ordered = sorted(inside)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return {
            "operations": len(inside),
            "longest_stall_seconds": round(max(inside), 3),
            "p99_ms": round(p99 * 1000, 2),
            "median_ms": round(statistics.median(inside) * 1000, 2),
        }


def migrate(url: str, folder: Path) -> float:
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "airlock.cli",
            "db",
            "migrate",
            "--database-url",
            url,
            "--migrations",
            str(folder),
            "--no-lint",
            "--lock-timeout",
            "10",
            "--statement-timeout",
            "0",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
        env=os.environ.copy(),
    )
    if result.returncode != 0:
        raise SystemExit(f"airlock db migrate failed:\n{result.stderr}")
    return time.monotonic() - started


def write(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def backfill(url: str, rows: int, batch: int) -> float:
    """The application's job: fill the new column in small batches, one transaction each."""
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        for low in range(1, rows + 1, batch):
            conn.execute(
                "UPDATE orders SET token = gen_random_uuid() "
                "WHERE id >= %s AND id < %s AND token IS NULL",
                (low, low + batch),
            )
        conn.execute("UPDATE orders SET token = gen_random_uuid() WHERE token IS NULL")
    return time.monotonic() - started


def run(rows: int, batch: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="airlock-bench-") as tmp:
        server = EmbeddedServer(Path(tmp) / "home", fast=True)
        info = server.ensure_running()
        try:
            results: dict[str, Any] = {"rows": rows}
            for path in ("naive", "safe"):
                with psycopg.connect(info.url(), autocommit=True) as admin:
                    admin.execute(f"CREATE DATABASE {path}")
                url = info.url(path)
                folder = Path(tmp) / path
                write(
                    folder, {"V1__setup.sql": SETUP.format(rows=rows, customers=max(rows // 10, 1))}
                )
                migrate(url, folder)
                with Writer(url, first_id=rows * 2) as writer:
                    time.sleep(1.0)
                    started = time.monotonic()
                    if path == "naive":
                        write(folder, NAIVE)
                        migration_seconds = migrate(url, folder)
                        backfill_seconds = 0.0
                    else:
                        write(folder, SAFE_BEFORE_BACKFILL)
                        migration_seconds = migrate(url, folder)
                        backfill_seconds = backfill(url, rows, batch)
                        write(folder, SAFE_AFTER_BACKFILL)
                        migration_seconds += migrate(url, folder)
                    finished = time.monotonic()
                    time.sleep(0.5)
                results[path] = {
                    **writer.window(started, finished),
                    "migration_seconds": round(migration_seconds, 2),
                    "backfill_seconds": round(backfill_seconds, 2),
                }
            results["target_safe_longest_stall_seconds"] = 1.0
            stall = results["safe"]["longest_stall_seconds"]
            results["target_met"] = stall is not None and stall <= 1.0
            return results
        finally:
            server.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000, help="backfill batch size")
    args = parser.parse_args()
    print(json.dumps(run(args.rows, args.batch)))


if __name__ == "__main__":
    main()
