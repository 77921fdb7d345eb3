"""Phoenix audit service: an append-only log of business events (no dependencies).

Endpoints:
    POST /records          {"kind": str, "data": object} -> 201 {"id"}
    GET  /records          ?kind=&limit= -> [{"id", "kind", "data", "created_at"}, ...] newest first
    GET  /records/count    ?kind= -> {"count"}

Environment: PORT (required), DATA_DIR.
"""

from __future__ import annotations

import json
import sqlite3

from phoenix_common import (
    Database,
    Request,
    Response,
    Service,
    field_object,
    field_str,
    json_response,
    utc_now,
)


def migrate(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE IF NOT EXISTS records (
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               kind TEXT NOT NULL,
               data TEXT NOT NULL,
               created_at TEXT NOT NULL
           )"""
    )
    conn.execute("CREATE INDEX IF NOT EXISTS records_kind ON records (kind, id)")


class Records:
    def __init__(self, database: Database) -> None:
        self.database = database

    def create(self, request: Request) -> Response:
        payload = request.json()
        kind = field_str(payload, "kind", max_length=64)
        data = json.dumps(field_object(payload, "data"), separators=(",", ":"))
        with self.database.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO records (kind, data, created_at) VALUES (?, ?, ?)",
                (kind, data, utc_now()),
            )
        return json_response(201, {"id": cursor.lastrowid})

    def list(self, request: Request) -> Response:
        limit = request.query_int("limit", 100, maximum=1000)
        kind = request.query.get("kind", "")
        sql = "SELECT id, kind, data, created_at FROM records"
        params: list[object] = []
        if kind:
            sql += " WHERE kind = ?"
            params.append(kind)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        with self.database.connect() as conn:
            rows = conn.execute(sql, params).fetchall()
        records = [
            {
                "id": row["id"],
                "kind": row["kind"],
                "data": json.loads(row["data"]),
                "created_at": row["created_at"],
            }
            for row in rows
        ]
        return json_response(200, records)

    def count(self, request: Request) -> Response:
        kind = request.query.get("kind", "")
        with self.database.connect() as conn:
            if kind:
                row = conn.execute("SELECT COUNT(*) FROM records WHERE kind = ?", (kind,))
            else:
                row = conn.execute("SELECT COUNT(*) FROM records")
            (count,) = row.fetchone()
        return json_response(200, {"count": count})


def main() -> None:
    service = Service("audit")
    database = Database.open("audit", migrate)
    service.add_readiness_check(database.readiness_problem)
    records = Records(database)
    service.route("POST", r"/records", records.create)
    service.route("GET", r"/records", records.list)
    service.route("GET", r"/records/count", records.count)
    service.serve()


if __name__ == "__main__":
    main()
