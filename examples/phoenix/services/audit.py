"""Phoenix audit service: an append-only log of business events (no dependencies).

Endpoints:
    POST /records          {"kind": str, "data": object} -> 201 {"id"}
    GET  /records          ?kind=&limit= -> [{"id", "kind", "data", "created_at"}, ...] newest first
    GET  /records/count    ?kind= -> {"count"}

Table: audit_records (created by db/migrations/V1__initial_schema.sql).

Environment: PORT (required), DATABASE_URL (required).
"""

from __future__ import annotations

from phoenix_common import (
    Database,
    Request,
    Response,
    Service,
    field_object,
    field_str,
    iso_time,
    json_response,
    utc_timestamp,
)
from psycopg.types.json import Jsonb

TABLES = ["audit_records"]


class Records:
    def __init__(self, database: Database) -> None:
        self.database = database

    def create(self, request: Request) -> Response:
        payload = request.json()
        kind = field_str(payload, "kind", max_length=64)
        data = field_object(payload, "data")
        row = self.database.query_single(
            "INSERT INTO audit_records (kind, data, created_at) VALUES (%s, %s, %s) RETURNING id",
            [kind, Jsonb(data), utc_timestamp()],
        )
        return json_response(201, {"id": row["id"]})

    def list(self, request: Request) -> Response:
        limit = request.query_int("limit", 100, maximum=1000)
        kind = request.query.get("kind", "")
        sql = "SELECT id, kind, data, created_at FROM audit_records"
        params: list[object] = []
        if kind:
            sql += " WHERE kind = %s"
            params.append(kind)
        sql += " ORDER BY id DESC LIMIT %s"
        params.append(limit)
        records = [
            {
                "id": row["id"],
                "kind": row["kind"],
                "data": row["data"],
                "created_at": iso_time(row["created_at"]),
            }
            for row in self.database.query(sql, params)
        ]
        return json_response(200, records)

    def count(self, request: Request) -> Response:
        kind = request.query.get("kind", "")
        if kind:
            sql = "SELECT count(*) AS n FROM audit_records WHERE kind = %s"
            row = self.database.query_single(sql, [kind])
        else:
            row = self.database.query_single("SELECT count(*) AS n FROM audit_records")
        return json_response(200, {"count": row["n"]})


def main() -> None:
    service = Service("audit")
    database = Database.open("audit", TABLES)
    service.add_readiness_check(database.readiness_problem)
    records = Records(database)
    service.route("POST", r"/records", records.create)
    service.route("GET", r"/records", records.list)
    service.route("GET", r"/records/count", records.count)
    service.serve()


if __name__ == "__main__":
    main()
