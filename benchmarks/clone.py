"""Which way of cloning a database should a rehearsal use? Template copy against dump/restore.

    python benchmarks/clone.py --rows 1000000

Fills a table with N rows on a temporary embedded server, then clones the database both ways
the rehearsal can (``airlock.db.rehearse.clone``) and prints one JSON object with each method's
seconds. The template copy is the faster; it needs the source to be idle, so rehearsals use it
only then and fall back to the dump otherwise.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import psycopg

from airlock.db.rehearse import clone, drop
from airlock.db.server import EmbeddedServer


def run(rows: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="airlock-bench-") as tmp:
        server = EmbeddedServer(Path(tmp) / "home", fast=True)
        info = server.ensure_running()
        try:
            with psycopg.connect(info.url(), autocommit=True) as admin:
                admin.execute("CREATE DATABASE source")
            url = info.url("source")
            with psycopg.connect(url) as conn:
                conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, body text NOT NULL)")
                conn.execute(
                    "INSERT INTO t SELECT g, md5(g::text) || md5((g * 7)::text) "
                    "FROM generate_series(1, %s) g",
                    (rows,),
                )
                (size,) = conn.execute(
                    "SELECT pg_database_size(current_database())"
                ).fetchone() or (0,)
            results: dict[str, Any] = {"rows": rows, "database_mb": round(size / 2**20, 1)}
            for method in ("template", "dump"):
                name = f"clone_{method}"
                used, seconds = clone(url, name, method)
                assert used == method
                results[f"{method}_seconds"] = round(seconds, 3)
                drop(url, name)
            results["template_speedup"] = round(
                results["dump_seconds"] / max(results["template_seconds"], 1e-9), 1
            )
            return results
        finally:
            server.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    print(json.dumps(run(parser.parse_args().rows)))


if __name__ == "__main__":
    main()
