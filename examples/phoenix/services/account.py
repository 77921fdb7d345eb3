"""Phoenix account service: the balances of accounts 1..100, in cents (no dependencies).

Endpoints:
    GET  /accounts/{id}             -> {"id", "balance"}
    GET  /accounts/{id}/statement   -> {"id", "balance", "as_of", "signature"}
    POST /accounts/{id}/debit       {"amount": int > 0} -> {"id", "balance"}, 409 if too low
    POST /accounts/{id}/credit      {"amount": int > 0} -> {"id", "balance"}

Table: accounts (created and seeded by db/migrations/V1__initial_schema.sql).

Environment: PORT (required), JWT_SECRET (required, signs statements), DATABASE_URL (required).
"""

from __future__ import annotations

import hashlib
import hmac
import json

from phoenix_common import (
    Database,
    HTTPError,
    Request,
    Response,
    Service,
    field_int,
    json_response,
    utc_now,
)

TABLES = ["accounts"]


class Accounts:
    def __init__(self, database: Database, secret: bytes) -> None:
        self.database = database
        self.secret = secret

    def _balance(self, account_id: int) -> int:
        row = self.database.query_one("SELECT balance FROM accounts WHERE id = %s", [account_id])
        if row is None:
            raise HTTPError(404, f"account {account_id} not found")
        return int(row["balance"])

    def get(self, request: Request) -> Response:
        account_id = request.path_id()
        return json_response(200, {"id": account_id, "balance": self._balance(account_id)})

    def statement(self, request: Request) -> Response:
        account_id = request.path_id()
        statement = {"id": account_id, "balance": self._balance(account_id), "as_of": utc_now()}
        canonical = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
        signature = hmac.new(self.secret, canonical, hashlib.sha256).hexdigest()
        return json_response(200, {**statement, "signature": signature})

    def debit(self, request: Request) -> Response:
        account_id = request.path_id()
        amount = field_int(request.json(), "amount")
        # The WHERE clause makes the check and the update one atomic statement, so
        # concurrent debits can never take a balance below zero.
        row = self.database.query_one(
            "UPDATE accounts SET balance = balance - %s, updated_at = now()"
            " WHERE id = %s AND balance >= %s RETURNING balance",
            [amount, account_id, amount],
        )
        if row is None:
            balance = self._balance(account_id)  # 404 when the account does not exist
            raise HTTPError(409, "insufficient funds", id=account_id, balance=balance)
        return json_response(200, {"id": account_id, "balance": int(row["balance"])})

    def credit(self, request: Request) -> Response:
        account_id = request.path_id()
        amount = field_int(request.json(), "amount")
        row = self.database.query_one(
            "UPDATE accounts SET balance = balance + %s, updated_at = now()"
            " WHERE id = %s RETURNING balance",
            [amount, account_id],
        )
        if row is None:
            raise HTTPError(404, f"account {account_id} not found")
        return json_response(200, {"id": account_id, "balance": int(row["balance"])})


def main() -> None:
    service = Service("account")
    secret = service.require_secret()
    database = Database.open("account", TABLES)
    service.add_readiness_check(database.readiness_problem)
    accounts = Accounts(database, secret)
    service.route("GET", r"/accounts/(?P<id>\d{1,15})", accounts.get)
    service.route("GET", r"/accounts/(?P<id>\d{1,15})/statement", accounts.statement)
    service.route("POST", r"/accounts/(?P<id>\d{1,15})/debit", accounts.debit)
    service.route("POST", r"/accounts/(?P<id>\d{1,15})/credit", accounts.credit)
    service.serve()


if __name__ == "__main__":
    main()
