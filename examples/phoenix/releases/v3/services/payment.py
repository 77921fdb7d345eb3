"""Phoenix payment service: takes money out of an account (depends on account and audit).

Endpoints:
    POST /payments  {"account": int, "amount": int > 0}
                    -> 201 {"payment_id", "account", "amount", "fee", "balance", "created_at",
                            "receipt"}
                       402 insufficient funds, 404 unknown account,
                       502/503 when account or audit cannot be used
    GET  /payments  ?account=&limit= -> [{"payment_id", "account", "amount", "fee",
                    "created_at", "receipt"}, ...] newest first

Since 2.0.0 every payment has a "fee" (always 0 for now), stored in the column
payments.fee that db/migrations/V2__payment_fee_and_currency.sql adds with a default, so
1.x processes (which name their columns) keep working while both versions run during an
upgrade. This version is only ready once that column exists.

Since 3.0.0 the service is only ready once a fraud-check service answers at FRAUD_URL.
No such service exists in this example, so 3.0.0 payment never becomes ready: /readyz
answers 503 "fraud-check service not configured (FRAUD_URL)" forever. This is the
release Airlock has to refuse and roll back.

The receipt is the hex HMAC-SHA256, keyed with JWT_SECRET, of the canonical JSON
(sorted keys, no spaces) of {"account", "amount", "created_at", "payment_id"}.

Table: payments (V1__initial_schema.sql, plus the fee column of V2).

Environment: PORT (required), JWT_SECRET (required), DATABASE_URL (required), ACCOUNT_URL,
AUDIT_URL, FRAUD_URL.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

from phoenix_common import (
    MAX_ID,
    Database,
    Dependency,
    HTTPError,
    Request,
    Response,
    Service,
    field_int,
    iso_time,
    json_response,
    log_event,
    utc_timestamp,
)

TABLES = ["payments", "payments.fee"]
FEE = 0  # cents; the fee schedule is not decided yet


def sign_receipt(secret: bytes, payment_id: int, account: int, amount: int, created_at: str) -> str:
    data = {
        "account": account,
        "amount": amount,
        "created_at": created_at,
        "payment_id": payment_id,
    }
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(secret, canonical, hashlib.sha256).hexdigest()


def fraud_check_readiness() -> Callable[[], str | None]:
    """Readiness check for the fraud-check service named by FRAUD_URL."""
    fraud = Dependency("fraud-check service", "FRAUD_URL")
    return fraud.readiness_problem


def balance_of(body: Any) -> int:
    if isinstance(body, dict) and isinstance(body.get("balance"), int):
        return int(body["balance"])
    raise HTTPError(502, "account sent an invalid response", dependency="account")


class Payments:
    def __init__(
        self, database: Database, secret: bytes, account: Dependency, audit: Dependency
    ) -> None:
        self.database = database
        self.secret = secret
        self.account = account
        self.audit = audit

    def create(self, request: Request) -> Response:
        payload = request.json()
        account_id = field_int(payload, "account", maximum=MAX_ID)
        amount = field_int(payload, "amount")

        status, body = self.account.call("GET", f"/accounts/{account_id}")
        if status == 404:
            raise HTTPError(404, f"account {account_id} not found")
        if status != 200:
            raise self.account.failed(status)
        if balance_of(body) < amount:
            raise HTTPError(402, "insufficient funds", account=account_id, balance=balance_of(body))

        status, body = self.account.call(
            "POST", f"/accounts/{account_id}/debit", {"amount": amount}
        )
        if status == 409:  # another request spent the money since the check above
            raise HTTPError(402, "insufficient funds", account=account_id)
        if status == 404:
            raise HTTPError(404, f"account {account_id} not found")
        if status != 200:
            raise self.account.failed(status)
        balance = balance_of(body)

        try:
            payment = self._record(account_id, amount, balance)
        except Exception:
            self._refund(account_id, amount)
            raise
        return json_response(201, payment)

    def _record(self, account_id: int, amount: int, balance: int) -> dict[str, Any]:
        status, _ = self.audit.call(
            "POST",
            "/records",
            {"kind": "payment", "data": {"account": account_id, "amount": amount}},
        )
        if status != 201:
            raise self.audit.failed(status)
        created = utc_timestamp()
        created_at = iso_time(created)
        # Reserve the id first: the receipt signs it, and is stored by the same INSERT.
        row = self.database.query_single(
            "SELECT nextval(pg_get_serial_sequence('payments', 'id')) AS id"
        )
        payment_id = int(row["id"])
        receipt = sign_receipt(self.secret, payment_id, account_id, amount, created_at)
        self.database.query(
            "INSERT INTO payments (id, account, amount, fee, receipt, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            [payment_id, account_id, amount, FEE, receipt, created],
        )
        return {
            "payment_id": payment_id,
            "account": account_id,
            "amount": amount,
            "fee": FEE,
            "balance": balance,
            "created_at": created_at,
            "receipt": receipt,
        }

    def _refund(self, account_id: int, amount: int) -> None:
        """Give the money back after a failure that happened once it was debited."""
        try:
            status, _ = self.account.call(
                "POST", f"/accounts/{account_id}/credit", {"amount": amount}
            )
        except HTTPError:
            status = 0
        event = "payment_refunded" if status == 200 else "payment_refund_failed"
        log_event("payment", event=event, account=account_id, amount=amount)

    def list(self, request: Request) -> Response:
        account_id = request.query_int("account", None, maximum=MAX_ID)
        limit = request.query_int("limit", 100, maximum=1000)
        sql = "SELECT id, account, amount, fee, receipt, created_at FROM payments"
        params: list[object] = []
        if account_id is not None:
            sql += " WHERE account = %s"
            params.append(account_id)
        sql += " ORDER BY id DESC LIMIT %s"
        params.append(limit)
        rows = self.database.query(sql, params)
        payments = [
            {
                "payment_id": row["id"],
                "account": row["account"],
                "amount": row["amount"],
                "fee": row["fee"],
                "created_at": iso_time(row["created_at"]),
                "receipt": row["receipt"],
            }
            for row in rows
        ]
        return json_response(200, payments)


def main() -> None:
    service = Service("payment")
    secret = service.require_secret()
    account = service.dependency("account", "ACCOUNT_URL")
    audit = service.dependency("audit", "AUDIT_URL")
    database = Database.open("payment", TABLES)
    service.add_readiness_check(database.readiness_problem)
    service.add_readiness_check(fraud_check_readiness())
    payments = Payments(database, secret, account, audit)
    service.route("POST", r"/payments", payments.create)
    service.route("GET", r"/payments", payments.list)
    service.serve()


if __name__ == "__main__":
    main()
