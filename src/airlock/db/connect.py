"""Connections to PostgreSQL, with psycopg's errors translated at the boundary.

Every message names the database by :func:`display_url`, which never shows a password.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from airlock.errors import AirlockError, UsageError

APPLICATION_NAME = "airlock"
CONNECT_TIMEOUT = 10


class DatabaseError(AirlockError):
    """Something went wrong talking to PostgreSQL (exit 1 unless it was bad input)."""

    exit_code = 1


class DatabaseUnreachable(DatabaseError):
    """The server cannot be reached (wrong host or port, down, refused)."""


class DatabaseAuthFailed(UsageError):
    """The server refused the credentials."""


def display_url(url: str) -> str:
    """``url`` with any password replaced by ``****``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an invalid database URL)"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:****@{netloc}"))


def password_of(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def with_database(url: str, database: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "postgres"


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """Open a connection; unreachable servers and bad credentials become clear errors."""
    try:
        return psycopg.connect(
            url,
            autocommit=autocommit,
            connect_timeout=CONNECT_TIMEOUT,
            application_name=APPLICATION_NAME,
        )
    except psycopg.OperationalError as exc:
        raise translate_connect_error(exc, url) from None
    except psycopg.ProgrammingError as exc:
        raise UsageError(
            f"invalid database URL {display_url(url)}: {_first_line(exc)}",
            hint="use postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
        ) from None


def translate_connect_error(exc: psycopg.OperationalError, url: str) -> AirlockError:
    text = _first_line(exc)
    password = password_of(url)
    if password:
        text = text.replace(password, "****")
    where = display_url(url)
    lowered = text.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        return DatabaseAuthFailed(
            f"PostgreSQL at {where} refused the credentials: {text}",
            hint="check the user and password in the database URL (or the secret it comes from)",
        )
    if "does not exist" in lowered and "database" in lowered:
        return UsageError(
            f"{where}: {text}", hint="create the database first, or fix its name in the URL"
        )
    return DatabaseUnreachable(
        f"cannot reach PostgreSQL at {where}: {text}",
        hint="check that the server runs and the host and port are right",
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
