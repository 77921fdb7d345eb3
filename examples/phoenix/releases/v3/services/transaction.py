"""Phoenix transaction service: moves money between accounts (depends on account and audit).

Endpoints:
    POST /transactions  {"from": int, "to": int, "amount": int > 0}
                        -> 201 {"transaction_id", "from", "to", "amount", "currency",
                                "from_balance", "to_balance", "created_at"}
                           402 insufficient funds, 404 unknown account,
                           502/503 when account or audit cannot be used
    GET  /transactions  ?account=&limit= -> [{"transaction_id", "from", "to", "amount",
                        "currency", "created_at"}, ...] newest first, either side of the transfer

Since 2.0.0 every transfer names its currency ("EUR"), stored in the column
transactions.currency that db/migrations/V2__payment_fee_and_currency.sql adds with a
default, so 1.x processes keep working while both versions run during an upgrade. This
version is only ready once that column exists.

A failed credit undoes the debit, so money is never lost half-way.

Table: transactions (V1__initial_schema.sql, plus the currency column of V2).

Environment: PORT (required), DATABASE_URL (required), ACCOUNT_URL, AUDIT_URL.
"""

from __future__ import annotations

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

TABLES = ["transactions", "transactions.currency"]
CURRENCY = "EUR"


def balance_of(body: Any) -> int:
    if isinstance(body, dict) and isinstance(body.get("balance"), int):
        return int(body["balance"])
    raise HTTPError(502, "account sent an invalid response", dependency="account")


class Transactions:
    def __init__(self, database: Database, account: Dependency, audit: Dependency) -> None:
        self.database = database
        self.account = account
        self.audit = audit

    def _move(self, kind: str, account_id: int, amount: int) -> int:
        """Debit or credit one account and return its new balance."""
        status, body = self.account.call(
            "POST", f"/accounts/{account_id}/{kind}", {"amount": amount}
        )
        if status == 409:
            raise HTTPError(402, "insufficient funds", account=account_id)
        if status == 404:
            raise HTTPError(404, f"account {account_id} not found")
        if status != 200:
            raise self.account.failed(status)
        return balance_of(body)

    def _compensate(self, kind: str, account_id: int, amount: int) -> None:
        try:
            self._move(kind, account_id, amount)
            event = "transfer_compensated"
        except HTTPError:
            event = "transfer_compensation_failed"
        log_event("transaction", event=event, action=kind, account=account_id, amount=amount)

    def create(self, request: Request) -> Response:
        payload = request.json()
        source = field_int(payload, "from", maximum=MAX_ID)
        target = field_int(payload, "to", maximum=MAX_ID)
        amount = field_int(payload, "amount")
        if source == target:
            raise HTTPError(400, "fields 'from' and 'to' must be different accounts")

        from_balance = self._move("debit", source, amount)
        try:
            to_balance = self._move("credit", target, amount)
        except Exception:
            self._compensate("credit", source, amount)
            raise
        try:
            transfer = self._record(source, target, amount)
        except Exception:
            self._compensate("debit", target, amount)
            self._compensate("credit", source, amount)
            raise
        return json_response(
            201, {**transfer, "from_balance": from_balance, "to_balance": to_balance}
        )

    def _record(self, source: int, target: int, amount: int) -> dict[str, Any]:
        status, _ = self.audit.call(
            "POST",
            "/records",
            {"kind": "transfer", "data": {"from": source, "to": target, "amount": amount}},
        )
        if status != 201:
            raise self.audit.failed(status)
        created = utc_timestamp()
        row = self.database.query_single(
            "INSERT INTO transactions (from_account, to_account, amount, currency, created_at)"
            " VALUES (%s, %s, %s, %s, %s) RETURNING id",
            [source, target, amount, CURRENCY, created],
        )
        return {
            "transaction_id": row["id"],
            "from": source,
            "to": target,
            "amount": amount,
            "currency": CURRENCY,
            "created_at": iso_time(created),
        }

    def list(self, request: Request) -> Response:
        account_id = request.query_int("account", None, maximum=MAX_ID)
        limit = request.query_int("limit", 100, maximum=1000)
        sql = "SELECT id, from_account, to_account, amount, currency, created_at FROM transactions"
        params: list[object] = []
        if account_id is not None:
            sql += " WHERE from_account = %s OR to_account = %s"
            params += [account_id, account_id]
        sql += " ORDER BY id DESC LIMIT %s"
        params.append(limit)
        rows = self.database.query(sql, params)
        transfers = [
            {
                "transaction_id": row["id"],
                "from": row["from_account"],
                "to": row["to_account"],
                "amount": row["amount"],
                "currency": row["currency"],
                "created_at": iso_time(row["created_at"]),
            }
            for row in rows
        ]
        return json_response(200, transfers)


def main() -> None:
    service = Service("transaction")
    account = service.dependency("account", "ACCOUNT_URL")
    audit = service.dependency("audit", "AUDIT_URL")
    database = Database.open("transaction", TABLES)
    service.add_readiness_check(database.readiness_problem)
    transactions = Transactions(database, account, audit)
    service.route("POST", r"/transactions", transactions.create)
    service.route("GET", r"/transactions", transactions.list)
    service.serve()


if __name__ == "__main__":
    main()
