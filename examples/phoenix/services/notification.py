"""Phoenix notification service: messages to account holders (depends on payment, transaction).

Endpoints:
    POST /notifications        {"account": int, "message": str}
                               -> 201 {"notification_id", "account", "payments", "transactions"}
                                  where payments/transactions count the account's recent ones,
                                  fetched from the payment and transaction services
    GET  /notifications        ?account=&limit= -> [{"notification_id", "account", "message",
                               "payments", "transactions", "created_at"}, ...] newest first
    GET  /notifications/count  -> {"count"}

Environment: PORT (required), PAYMENT_URL, TRANSACTION_URL, DATA_DIR.
"""

from __future__ import annotations

import sqlite3

from phoenix_common import (
    MAX_ID,
    Database,
    Dependency,
    HTTPError,
    Request,
    Response,
    Service,
    field_int,
    field_str,
    json_response,
    utc_now,
)

RECENT = 50  # how many recent payments/transactions a notification looks at


def migrate(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE IF NOT EXISTS notifications (
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               account INTEGER NOT NULL,
               message TEXT NOT NULL,
               payments INTEGER NOT NULL,
               transactions INTEGER NOT NULL,
               created_at TEXT NOT NULL
           )"""
    )
    conn.execute("CREATE INDEX IF NOT EXISTS notifications_account ON notifications (account, id)")


def recent_count(dependency: Dependency, path: str) -> int:
    status, body = dependency.call("GET", path)
    if status != 200:
        raise dependency.failed(status)
    if not isinstance(body, list):
        raise HTTPError(
            502, f"{dependency.name} sent an invalid response", dependency=dependency.name
        )
    return len(body)


class Notifications:
    def __init__(self, database: Database, payment: Dependency, transaction: Dependency) -> None:
        self.database = database
        self.payment = payment
        self.transaction = transaction

    def create(self, request: Request) -> Response:
        payload = request.json()
        account_id = field_int(payload, "account", maximum=MAX_ID)
        message = field_str(payload, "message", max_length=1000)
        query = f"?account={account_id}&limit={RECENT}"
        payments = recent_count(self.payment, "/payments" + query)
        transactions = recent_count(self.transaction, "/transactions" + query)
        with self.database.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO notifications (account, message, payments, transactions, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (account_id, message, payments, transactions, utc_now()),
            )
        return json_response(
            201,
            {
                "notification_id": cursor.lastrowid,
                "account": account_id,
                "payments": payments,
                "transactions": transactions,
            },
        )

    def list(self, request: Request) -> Response:
        account_id = request.query_int("account", None, maximum=MAX_ID)
        limit = request.query_int("limit", 100, maximum=1000)
        sql = "SELECT id, account, message, payments, transactions, created_at FROM notifications"
        params: list[object] = []
        if account_id is not None:
            sql += " WHERE account = ?"
            params.append(account_id)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        with self.database.connect() as conn:
            rows = conn.execute(sql, params).fetchall()
        notifications = [
            {
                "notification_id": row["id"],
                "account": row["account"],
                "message": row["message"],
                "payments": row["payments"],
                "transactions": row["transactions"],
                "created_at": row["created_at"],
            }
            for row in rows
        ]
        return json_response(200, notifications)

    def count(self, request: Request) -> Response:
        with self.database.connect() as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM notifications").fetchone()
        return json_response(200, {"count": count})


def main() -> None:
    service = Service("notification")
    payment = service.dependency("payment", "PAYMENT_URL")
    transaction = service.dependency("transaction", "TRANSACTION_URL")
    database = Database.open("notification", migrate)
    service.add_readiness_check(database.readiness_problem)
    notifications = Notifications(database, payment, transaction)
    service.route("POST", r"/notifications", notifications.create)
    service.route("GET", r"/notifications", notifications.list)
    service.route("GET", r"/notifications/count", notifications.count)
    service.serve()


if __name__ == "__main__":
    main()
