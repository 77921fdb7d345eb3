"""Phoenix account service: the balances of accounts 1..100, in cents (no dependencies).

Endpoints:
    GET  /accounts/{id}             -> {"id", "balance"}
    GET  /accounts/{id}/statement   -> {"id", "balance", "as_of", "signature"}
    POST /accounts/{id}/debit       {"amount": int > 0} -> {"id", "balance"}, 409 if too low
    POST /accounts/{id}/credit      {"amount": int > 0} -> {"id", "balance"}

Environment: PORT (required), JWT_SECRET (required, signs statements), DATA_DIR.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3

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

SEED_ACCOUNTS = 100
SEED_BALANCE = 1_000_000  # cents


def migrate(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE IF NOT EXISTS accounts (
               id INTEGER PRIMARY KEY,
               balance INTEGER NOT NULL CHECK (balance >= 0),
               updated_at TEXT NOT NULL
           )"""
    )
    (count,) = conn.execute("SELECT COUNT(*) FROM accounts").fetchone()
    if count == 0:
        now = utc_now()
        conn.executemany(
            "INSERT INTO accounts (id, balance, updated_at) VALUES (?, ?, ?)",
            [(account_id, SEED_BALANCE, now) for account_id in range(1, SEED_ACCOUNTS + 1)],
        )


class Accounts:
    def __init__(self, database: Database, secret: bytes) -> None:
        self.database = database
        self.secret = secret

    def _balance(self, conn: sqlite3.Connection, account_id: int) -> int:
        row = conn.execute("SELECT balance FROM accounts WHERE id = ?", (account_id,)).fetchone()
        if row is None:
            raise HTTPError(404, f"account {account_id} not found")
        return int(row["balance"])

    def get(self, request: Request) -> Response:
        account_id = request.path_id()
        with self.database.connect() as conn:
            balance = self._balance(conn, account_id)
        return json_response(200, {"id": account_id, "balance": balance})

    def statement(self, request: Request) -> Response:
        account_id = request.path_id()
        with self.database.connect() as conn:
            balance = self._balance(conn, account_id)
        statement = {"id": account_id, "balance": balance, "as_of": utc_now()}
        canonical = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
        signature = hmac.new(self.secret, canonical, hashlib.sha256).hexdigest()
        return json_response(200, {**statement, "signature": signature})

    def debit(self, request: Request) -> Response:
        account_id = request.path_id()
        amount = field_int(request.json(), "amount")
        with self.database.transaction() as conn:
            # The WHERE clause makes the check and the update one atomic step.
            cursor = conn.execute(
                "UPDATE accounts SET balance = balance - ?, updated_at = ?"
                " WHERE id = ? AND balance >= ?",
                (amount, utc_now(), account_id, amount),
            )
            balance = self._balance(conn, account_id)
        if cursor.rowcount == 0:
            raise HTTPError(409, "insufficient funds", id=account_id, balance=balance)
        return json_response(200, {"id": account_id, "balance": balance})

    def credit(self, request: Request) -> Response:
        account_id = request.path_id()
        amount = field_int(request.json(), "amount")
        with self.database.transaction() as conn:
            conn.execute(
                "UPDATE accounts SET balance = balance + ?, updated_at = ? WHERE id = ?",
                (amount, utc_now(), account_id),
            )
            balance = self._balance(conn, account_id)
        return json_response(200, {"id": account_id, "balance": balance})


def main() -> None:
    service = Service("account")
    secret = service.require_secret()
    database = Database.open("account", migrate)
    service.add_readiness_check(database.readiness_problem)
    accounts = Accounts(database, secret)
    service.route("GET", r"/accounts/(?P<id>\d{1,15})", accounts.get)
    service.route("GET", r"/accounts/(?P<id>\d{1,15})/statement", accounts.statement)
    service.route("POST", r"/accounts/(?P<id>\d{1,15})/debit", accounts.debit)
    service.route("POST", r"/accounts/(?P<id>\d{1,15})/credit", accounts.credit)
    service.serve()


if __name__ == "__main__":
    main()
