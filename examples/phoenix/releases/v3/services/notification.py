"""Phoenix notification service: messages to account holders (depends on payment, transaction).

Endpoints:
    POST /notifications        {"account": int, "message": str}
                               -> 201 {"notification_id", "account", "payments", "transactions"}
                                  where payments/transactions count the account's recent ones,
                                  fetched from the payment and transaction services
    GET  /notifications        ?account=&limit= -> [{"notification_id", "account", "message",
                               "payments", "transactions", "created_at"}, ...] newest first
    GET  /notifications/count  -> {"count"}

Table: notifications (created by db/migrations/V1__initial_schema.sql).

Since 3.0.0 each notification is also handed to a background delivery queue that retries until
the message is delivered. A bug keeps every rendered batch on the queue after delivery, so the
process's memory climbs by about 5 MB every second (300 MB/min) and would run out within hours.
Nothing else changes: it starts, is ready and answers correctly. This is the release Airlock has
to catch while it bakes, and roll back.

Environment: PORT (required), DATABASE_URL (required), PAYMENT_URL, TRANSACTION_URL.
"""

from __future__ import annotations

import threading
import time

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
    iso_time,
    json_response,
    utc_timestamp,
)
from psycopg import errors as pg_errors

RECENT = 50  # how many recent payments/transactions a notification looks at


TABLES = ["notifications"]

BATCH_BYTES = 512 * 1024  # one rendered batch of pending deliveries
RETRY_SECONDS = 0.1


class DeliveryQueue:
    """Retries deliveries in the background; the bug: delivered batches are never dropped."""

    def __init__(self) -> None:
        self.kept: list[bytes] = []

    def run(self) -> None:
        while True:
            batch = b"notification batch " * (BATCH_BYTES // 19)
            self.kept.append(batch)  # should be removed once delivered
            time.sleep(RETRY_SECONDS)

    def start(self) -> None:
        threading.Thread(target=self.run, name="delivery-queue", daemon=True).start()


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
        try:
            row = self.database.query_single(
                "INSERT INTO notifications (account, message, payments, transactions, created_at)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                [account_id, message, payments, transactions, utc_timestamp()],
            )
        except pg_errors.ForeignKeyViolation:
            raise HTTPError(404, f"account {account_id} not found") from None
        return json_response(
            201,
            {
                "notification_id": row["id"],
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
            sql += " WHERE account = %s"
            params.append(account_id)
        sql += " ORDER BY id DESC LIMIT %s"
        params.append(limit)
        rows = self.database.query(sql, params)
        notifications = [
            {
                "notification_id": row["id"],
                "account": row["account"],
                "message": row["message"],
                "payments": row["payments"],
                "transactions": row["transactions"],
                "created_at": iso_time(row["created_at"]),
            }
            for row in rows
        ]
        return json_response(200, notifications)

    def count(self, request: Request) -> Response:
        row = self.database.query_single("SELECT count(*) AS n FROM notifications")
        return json_response(200, {"count": row["n"]})


def main() -> None:
    service = Service("notification")
    payment = service.dependency("payment", "PAYMENT_URL")
    transaction = service.dependency("transaction", "TRANSACTION_URL")
    database = Database.open("notification", TABLES)
    service.add_readiness_check(database.readiness_problem)
    notifications = Notifications(database, payment, transaction)
    DeliveryQueue().start()
    service.route("POST", r"/notifications", notifications.create)
    service.route("GET", r"/notifications", notifications.list)
    service.route("GET", r"/notifications/count", notifications.count)
    service.serve()


if __name__ == "__main__":
    main()
