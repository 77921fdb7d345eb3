"""Shared plumbing for the Phoenix example services (standard library plus psycopg 3).

Every Phoenix service is one small script that imports this module. It provides:

* a tiny router on top of :class:`http.server.ThreadingHTTPServer`;
* the built-in ``/healthz`` (liveness), ``/readyz`` (readiness) and ``/metrics``
  (Prometheus text format) endpoints;
* one JSON log line per request on stdout;
* an HTTP client for calls to other services, with timeouts and JSON errors that
  name the dependency that failed;
* a PostgreSQL helper (``DATABASE_URL``): a small connection pool, one retry on a
  broken connection, and a readiness check that the service's tables exist. The
  schema itself belongs to the migrations in ``db/migrations``; services never
  create or alter tables;
* graceful shutdown on SIGTERM: stop accepting, finish in-flight requests, exit 0.

The version comes from ``version.py`` beside this file, which every release overlay
replaces; this file is the same in every version.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import re
import signal
import socketserver
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, LiteralString, NoReturn, TypeVar

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.rows import DictRow, dict_row
except ImportError:  # pragma: no cover - depends on the interpreter
    sys.stderr.write("phoenix: psycopg 3 is required (pip install 'psycopg[binary]')\n")
    raise SystemExit(1) from None

from version import VERSION  # the one file a release overlay replaces to bump the version

HOST = "127.0.0.1"
MAX_BODY_BYTES = 64 * 1024
#: Largest amount (in cents) accepted anywhere; keeps balances far inside ``bigint``.
MAX_AMOUNT = 10**12
#: Largest numeric id accepted in paths and bodies.
MAX_ID = 10**12
DEPENDENCY_TIMEOUT = 2.0
READINESS_TIMEOUT = 0.5
READINESS_CACHE_SECONDS = 0.5
DATABASE_CONNECT_TIMEOUT = 3  # seconds (libpq wants a whole number)
DATABASE_POOL_SIZE = 8  # idle connections kept per process
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_output_lock = threading.Lock()
# Calls between services never go through an HTTP proxy from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------- logging


def utc_now() -> str:
    """Current UTC time as an ISO 8601 string with milliseconds."""
    return iso_time(datetime.now(UTC))


def utc_timestamp() -> datetime:
    """Current UTC time, cut to milliseconds so that :func:`iso_time` shows all of it."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso_time(moment: datetime) -> str:
    """A ``timestamptz`` as ISO 8601 in UTC with milliseconds, e.g. ``2025-01-01T12:00:00.000Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@functools.cache
def _secrets_in_environment() -> list[str]:
    """Values that must never reach a log: the signing key and the database password.

    Nothing prints them on purpose; :func:`scrub` is the safety net for messages that
    quote them by accident (a traceback, a driver error). Values shorter than 4
    characters are left alone: replacing them everywhere would garble every log line.
    """
    found = [os.environ.get("JWT_SECRET", "")]
    with contextlib.suppress(ValueError):
        found.append(urllib.parse.urlsplit(os.environ.get("DATABASE_URL", "")).password or "")
    return [value for value in found if len(value) >= 4]


def scrub(text: str) -> str:
    """``text`` with every secret of this process replaced by ``****``."""
    for value in _secrets_in_environment():
        text = text.replace(value, "****")
    return text


def print_traceback() -> None:
    """The current exception's traceback on stderr, with secrets scrubbed out."""
    text = scrub(traceback.format_exc())
    with _output_lock:
        sys.stderr.write(text)
        sys.stderr.flush()


def log_event(service: str, **fields: Any) -> None:
    """Write one JSON line on stdout and flush it."""
    record = {"ts": utc_now(), "service": service, "version": VERSION, **fields}
    line = scrub(json.dumps(record, separators=(",", ":"), default=str))
    with _output_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def fail_startup(service: str, message: str, code: int = 2) -> NoReturn:
    """Print a clear message on stderr and exit with ``code``."""
    with _output_lock:
        sys.stderr.write(scrub(f"{service}: {message}\n"))
        sys.stderr.flush()
    raise SystemExit(code)


# --------------------------------------------------------------------- requests


class HTTPError(Exception):
    """Raised by handlers; turned into a JSON error response ``{"error": message, ...}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"error": message, **extra}
        self.headers = headers or {}


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    data = (json.dumps(payload, separators=(",", ":")) + "\n").encode()
    return Response(status, data, "application/json", headers or {})


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        """The body as a JSON object, or a 400 error."""
        if not self.body.strip():
            raise HTTPError(400, "request body must be a JSON object")
        try:
            payload = json.loads(self.body, parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise HTTPError(400, "request body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise HTTPError(400, "request body must be a JSON object")
        return payload

    def path_id(self, name: str = "id") -> int:
        value = int(self.params[name])
        if not 1 <= value <= MAX_ID:
            raise HTTPError(404, f"{name} {value} does not exist")
        return value

    def query_int(
        self, name: str, default: int | None, *, minimum: int = 1, maximum: int = MAX_ID
    ) -> int | None:
        raw = self.query.get(name, "")
        if raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise HTTPError(400, f"query parameter {name!r} must be an integer") from None
        if not minimum <= value <= maximum:
            raise HTTPError(
                400, f"query parameter {name!r} must be between {minimum} and {maximum}"
            )
        return value


def field_int(
    payload: dict[str, Any], key: str, *, minimum: int = 1, maximum: int = MAX_AMOUNT
) -> int:
    """An integer field of a JSON body (booleans and floats are rejected)."""
    if key not in payload:
        raise HTTPError(400, f"field {key!r} is required")
    value = payload[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise HTTPError(400, f"field {key!r} must be an integer")
    if not minimum <= value <= maximum:
        raise HTTPError(400, f"field {key!r} must be between {minimum} and {maximum}")
    return value


def field_str(payload: dict[str, Any], key: str, *, max_length: int = 1000) -> str:
    """A non-empty string field of a JSON body."""
    value = payload.get(key)
    if not isinstance(value, str) or not value.strip():
        raise HTTPError(400, f"field {key!r} must be a non-empty string")
    if len(value) > max_length:
        raise HTTPError(400, f"field {key!r} is longer than {max_length} characters")
    return value


def field_object(payload: dict[str, Any], key: str) -> dict[str, Any]:
    value = payload.get(key)
    if not isinstance(value, dict):
        raise HTTPError(400, f"field {key!r} must be a JSON object")
    return value


# ---------------------------------------------------------------------- metrics


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return ",".join(f'{key}="{_escape_label(value)}"' for key, value in labels.items())


def _resident_memory_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            resident_pages = int(statm.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    except (ImportError, OSError):
        return 0


class Metrics:
    """Request counters and a latency histogram, rendered in Prometheus text format."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str], int] = {}
        self._buckets = [0] * len(DURATION_BUCKETS)
        self._duration_sum = 0.0
        self._duration_count = 0

    def observe(self, method: str, status: int, seconds: float) -> None:
        key = (method, str(status))
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1
            for index, bound in enumerate(DURATION_BUCKETS):
                if seconds <= bound:
                    self._buckets[index] += 1
            self._duration_sum += seconds
            self._duration_count += 1

    def render(self) -> str:
        base = {"service": self.service, "version": VERSION}
        with self._lock:
            requests = sorted(self._requests.items())
            buckets = list(self._buckets)
            duration_sum = self._duration_sum
            duration_count = self._duration_count
        lines = [
            "# HELP phoenix_requests_total HTTP requests served, by method and status code.",
            "# TYPE phoenix_requests_total counter",
        ]
        for (method, code), count in requests:
            labels = _labels(**base, method=method, code=code)
            lines.append(f"phoenix_requests_total{{{labels}}} {count}")
        lines += [
            "# HELP phoenix_request_duration_seconds Time spent serving HTTP requests.",
            "# TYPE phoenix_request_duration_seconds histogram",
        ]
        for bound, count in zip(DURATION_BUCKETS, buckets, strict=True):
            labels = _labels(**base, le=repr(float(bound)))
            lines.append(f"phoenix_request_duration_seconds_bucket{{{labels}}} {count}")
        labels = _labels(**base, le="+Inf")
        lines.append(f"phoenix_request_duration_seconds_bucket{{{labels}}} {duration_count}")
        labels = _labels(**base)
        lines += [
            f"phoenix_request_duration_seconds_sum{{{labels}}} {duration_sum!r}",
            f"phoenix_request_duration_seconds_count{{{labels}}} {duration_count}",
            "# HELP process_resident_memory_bytes Resident memory size in bytes.",
            "# TYPE process_resident_memory_bytes gauge",
            f"process_resident_memory_bytes {_resident_memory_bytes()}",
            "# HELP phoenix_build_info Service name and version of this process.",
            "# TYPE phoenix_build_info gauge",
            f"phoenix_build_info{{{labels}}} 1",
        ]
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------ calls to services


class InvalidResponse(Exception):
    """A dependency answered something that is not JSON."""


def http_json(
    method: str, url: str, payload: Any = None, timeout: float = DEPENDENCY_TIMEOUT
) -> tuple[int, Any]:
    """Send a JSON request and return ``(status, decoded body)`` for any HTTP status.

    Network failures raise :class:`OSError`, :class:`urllib.error.URLError` or
    :class:`http.client.HTTPException`; a body that is not JSON raises
    :class:`InvalidResponse`.
    """
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"phoenix/{VERSION}",
        },
    )
    try:
        with _opener.open(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            status, raw = error.code, error.read()
    try:
        return status, (json.loads(raw) if raw.strip() else None)
    except (UnicodeDecodeError, ValueError):
        raise InvalidResponse(f"non-JSON answer from {url}") from None


_NETWORK_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException)


class Dependency:
    """Another Phoenix service, found through a base URL in an environment variable."""

    def __init__(self, name: str, env_var: str) -> None:
        self.name = name
        self.env_var = env_var
        self.base_url = os.environ.get(env_var, "").strip().rstrip("/") or None
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._problem: str | None = None

    def not_configured(self) -> str:
        return f"{self.name} not configured ({self.env_var})"

    def unreachable(self) -> str:
        return f"{self.name} unreachable at {self.base_url}"

    def call(
        self, method: str, path: str, payload: Any = None, timeout: float = DEPENDENCY_TIMEOUT
    ) -> tuple[int, Any]:
        """Call the dependency; 503 if it is not configured, 502 if it cannot be reached."""
        if self.base_url is None:
            raise HTTPError(503, self.not_configured(), dependency=self.name)
        try:
            return http_json(method, self.base_url + path, payload, timeout)
        except _NETWORK_ERRORS:
            raise HTTPError(502, self.unreachable(), dependency=self.name) from None
        except InvalidResponse:
            raise HTTPError(
                502, f"{self.name} sent an invalid response", dependency=self.name
            ) from None

    def failed(self, status: int) -> HTTPError:
        """The error to raise when the dependency answered with an unexpected status."""
        return HTTPError(502, f"{self.name} failed with HTTP {status}", dependency=self.name)

    def readiness_problem(self) -> str | None:
        """Why the dependency is not usable right now (``GET /healthz``), cached briefly."""
        if self.base_url is None:
            return self.not_configured()
        with self._lock:
            if time.monotonic() - self._checked_at < READINESS_CACHE_SECONDS:
                return self._problem
            try:
                status, _ = http_json("GET", self.base_url + "/healthz", None, READINESS_TIMEOUT)
                problem = None if status == 200 else f"{self.unreachable()} (HTTP {status})"
            except (*_NETWORK_ERRORS, InvalidResponse):
                problem = self.unreachable()
            self._problem = problem
            self._checked_at = time.monotonic()
            return problem


# ------------------------------------------------------------------- PostgreSQL

Connection = psycopg.Connection[DictRow]
T = TypeVar("T")


class Database:
    """The PostgreSQL database named by ``$DATABASE_URL``, shared by every service and version.

    The tables come from the migrations in ``db/migrations``; a service only reads and
    writes rows. Every statement runs in autocommit, and the statements that must be
    atomic are written as one statement (``UPDATE … WHERE balance >= … RETURNING``), so
    no transaction is ever held open across a call to another service.

    Connections are kept in a small pool. A pooled connection can go stale (the server
    restarted, or closed it): when a statement fails because its connection broke, it is
    run once more on a fresh connection. The only time that repeats a write is when the
    server died after committing it and before answering, which this example accepts.
    """

    def __init__(self, service: str, url: str, requires: Sequence[str]) -> None:
        self.service = service
        self._url = url
        self.requires = tuple(requires)
        self._idle: list[Connection] = []
        self._lock = threading.Lock()

    @classmethod
    def open(cls, service: str, requires: Sequence[str]) -> Database:
        """The database of ``$DATABASE_URL``; ``requires`` lists the tables (``"payments"``)
        and columns (``"payments.fee"``) this version needs before it is ready.

        Nothing is connected yet: a database that is down, or not migrated yet, only keeps
        ``/readyz`` at 503 until it is fixed.
        """
        url = os.environ.get("DATABASE_URL", "").strip()
        if not url:
            fail_startup(service, "DATABASE_URL is not set; refusing to start")
        try:
            scheme = urllib.parse.urlsplit(url).scheme
        except ValueError:
            scheme = ""
        if scheme not in ("postgresql", "postgres"):
            # The URL holds a password, so it is described, never shown.
            fail_startup(service, "DATABASE_URL must be a postgresql://user:password@host/db URL")
        return cls(service, url, requires)

    # connections ---------------------------------------------------------------

    def _connect(self) -> Connection:
        return psycopg.connect(
            self._url,
            autocommit=True,
            row_factory=dict_row,
            connect_timeout=DATABASE_CONNECT_TIMEOUT,
            application_name=f"phoenix-{self.service}/{VERSION}",
        )

    def _acquire(self) -> tuple[Connection, bool]:
        """A connection, and whether it was reused from the pool."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _release(self, conn: Connection) -> None:
        usable = (
            not conn.closed
            and not conn.broken
            and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        )
        if usable:
            with self._lock:
                if len(self._idle) < DATABASE_POOL_SIZE:
                    self._idle.append(conn)
                    return
        conn.close()

    def run(self, work: Callable[[Connection], T]) -> T:
        """Call ``work`` with a connection; again on a fresh one if a pooled one was dead."""
        conn, reused = self._acquire()
        try:
            return work(conn)
        except psycopg.OperationalError:
            if not (reused and conn.broken):
                raise
        finally:
            self._release(conn)
        conn = self._connect()
        try:
            return work(conn)
        finally:
            self._release(conn)

    # statements ----------------------------------------------------------------

    def query(self, sql: LiteralString, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run one statement; its rows (none for a statement that returns nothing)."""

        def work(conn: Connection) -> list[dict[str, Any]]:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

        return self.run(work)

    def query_one(self, sql: LiteralString, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        """Run one statement; its first row, or ``None``."""
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def query_single(self, sql: LiteralString, params: Sequence[Any] = ()) -> dict[str, Any]:
        """Run one statement that always returns a row (``INSERT … RETURNING``, ``count(*)``)."""
        row = self.query_one(sql, params)
        if row is None:
            raise RuntimeError("the statement returned no row")
        return row

    # readiness -----------------------------------------------------------------

    def missing(self) -> list[str]:
        """The required tables and columns that the schema does not have (yet)."""
        rows = self.query(
            "SELECT item FROM unnest(%s::text[]) WITH ORDINALITY AS required (item, n)"
            " WHERE CASE WHEN strpos(item, '.') = 0 THEN to_regclass(item) IS NULL"
            " ELSE NOT EXISTS (SELECT FROM pg_attribute a"
            "   WHERE a.attrelid = to_regclass(split_part(item, '.', 1))"
            "   AND a.attname = split_part(item, '.', 2) AND a.attnum > 0"
            "   AND NOT a.attisdropped) END"
            " ORDER BY n",
            [list(self.requires)],
        )
        return [str(row["item"]) for row in rows]

    def readiness_problem(self) -> str | None:
        """Why the database cannot be used right now: unreachable, or not migrated."""
        try:
            missing = self.missing()
        except psycopg.Error as error:
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            return scrub(f"database unavailable: {first_line}")
        tables = {item for item in missing if "." not in item}
        # A column of a missing table is missing too; naming the table says enough.
        named = [
            f"column {item}" if "." in item else f"table {item}"
            for item in missing
            if "." not in item or item.split(".", 1)[0] not in tables
        ]
        if not named:
            return None
        verb = "does not exist" if len(named) == 1 else "do not exist"
        return f"{', '.join(named)} {verb} (migrations not applied?)"


# ---------------------------------------------------------------------- server

Handler = Callable[[Request], Response]
ReadinessCheck = Callable[[], str | None]


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # in-flight requests finish before the process exits
    block_on_close = True
    allow_reuse_address = True
    request_queue_size = 128

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name, which can be slow; skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: shutdown never waits on idle ones
    timeout = 10  # seconds a client may take to send its request
    # Requests too malformed to reach the router are answered by http.server itself.
    error_message_format = '{"error": "%(message)s"}\n'
    error_content_type = "application/json"
    service: Service  # set on the per-service subclass

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # replaced by the JSON line written in _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        pass  # malformed requests are answered by http.server; nothing to log

    def version_string(self) -> str:
        return f"phoenix-{self.service.name}/{VERSION}"

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise HTTPError(411, "chunked bodies are not supported; send Content-Length")
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return b""
        try:
            length = int(raw_length)
        except ValueError:
            raise HTTPError(400, "invalid Content-Length header") from None
        if length < 0:
            raise HTTPError(400, "invalid Content-Length header")
        if length > MAX_BODY_BYTES:
            raise HTTPError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        try:
            body = self.rfile.read(length)
        except OSError:
            raise HTTPError(400, "could not read the request body") from None
        if len(body) != length:
            raise HTTPError(400, "request body shorter than Content-Length")
        return body

    def _build_response(self) -> Response:
        method = "GET" if self.command == "HEAD" else self.command
        try:
            return self.service.handle(method, self.path, self._read_body())
        except HTTPError as error:
            return json_response(error.status, error.body, error.headers)
        except (pg_errors.UndefinedTable, pg_errors.UndefinedColumn) as error:
            # The code is newer than the schema: the migrations have not been applied.
            print_traceback()
            problem = error.diag.message_primary or "schema mismatch"
            body = {"error": "database schema not ready (migrations not applied?)"}
            return json_response(503, {**body, "detail": scrub(problem)})
        except psycopg.OperationalError:
            print_traceback()
            return json_response(503, {"error": "database unavailable, retry later"})
        except Exception:
            print_traceback()
            return json_response(500, {"error": "internal error"})

    def _dispatch(self) -> None:
        started = time.perf_counter()
        response = self._build_response()
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("X-Phoenix-Service", self.service.name)
            self.send_header("X-Phoenix-Version", VERSION)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away; the request is still counted and logged
        elapsed = time.perf_counter() - started
        self.service.metrics.observe(self.command, response.status, elapsed)
        log_event(
            self.service.name,
            method=self.command,
            path=self.path[:2048],
            status=response.status,
            ms=round(elapsed * 1000, 3),
        )


class Service:
    """One Phoenix service: routes, readiness checks and the HTTP server around them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.monotonic()
        self.metrics = Metrics(name)
        self.port = self._read_port()
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._readiness_checks: list[ReadinessCheck] = []
        self._stopping = threading.Event()
        self._server: _Server | None = None
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.route("GET", "/", self._index)
        self.route("GET", "/healthz", self._healthz)
        self.route("GET", "/readyz", self._readyz)
        self.route("GET", "/metrics", self._metrics)

    # configuration -------------------------------------------------------------

    def _read_port(self) -> int:
        raw = os.environ.get("PORT", "").strip()
        if not raw:
            fail_startup(self.name, "PORT is not set; refusing to start")
        try:
            port = int(raw)
        except ValueError:
            port = -1
        if not 1 <= port <= 65535:
            fail_startup(self.name, f"PORT must be a number between 1 and 65535, got {raw!r}")
        return port

    def require_secret(self, env_var: str = "JWT_SECRET") -> bytes:
        """The signing secret; exits with code 2 when it is missing. Never logged."""
        secret = os.environ.get(env_var, "")
        if not secret:
            fail_startup(self.name, f"{env_var} is not set; refusing to start without it")
        return secret.encode()

    def dependency(self, name: str, env_var: str) -> Dependency:
        """Declare a service this one calls; ``/readyz`` fails until it answers ``/healthz``."""
        dependency = Dependency(name, env_var)
        self.add_readiness_check(dependency.readiness_problem)
        return dependency

    def add_readiness_check(self, check: ReadinessCheck) -> None:
        self._readiness_checks.append(check)

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        """Register ``handler`` for ``method`` and a path regex (named groups become params)."""
        self._routes.append((method, re.compile(pattern), handler))

    # request handling ----------------------------------------------------------

    def handle(self, method: str, target: str, body: bytes) -> Response:
        parts = urllib.parse.urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        try:
            pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, max_num_fields=50)
        except ValueError:
            raise HTTPError(400, "too many query parameters") from None
        query = dict(pairs)
        allowed: list[str] = []
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            return handler(Request(method, path, match.groupdict(), query, body))
        if allowed:
            raise HTTPError(
                405,
                f"method {method} not allowed on {path}",
                headers={"Allow": ", ".join(sorted(set(allowed)))},
            )
        raise HTTPError(404, f"no such endpoint: {method} {path}")

    def _identity(self) -> dict[str, Any]:
        return {"service": self.name, "version": VERSION}

    def _index(self, request: Request) -> Response:
        endpoints = sorted({f"{method} {pattern.pattern}" for method, pattern, _ in self._routes})
        return json_response(200, {**self._identity(), "endpoints": endpoints})

    def _healthz(self, request: Request) -> Response:
        return json_response(200, {"status": "ok", **self._identity()})

    def _readyz(self, request: Request) -> Response:
        if self._stopping.is_set():
            problems = ["shutting down"]
        else:
            problems = [problem for check in self._readiness_checks if (problem := check())]
        if problems:
            body = {"ready": False, "reason": problems[0], "problems": problems}
            return json_response(503, {**body, **self._identity()})
        return json_response(200, {"ready": True, **self._identity()})

    def _metrics(self, request: Request) -> Response:
        text = self.metrics.render().encode()
        return Response(200, text, "text/plain; version=0.0.4; charset=utf-8")

    # lifecycle -----------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping.set()
        server = self._server
        if server is not None:
            # shutdown() waits for serve_forever() to return, so it cannot run here.
            threading.Thread(target=server.shutdown, daemon=True).start()

    def serve(self) -> NoReturn:
        """Serve until SIGTERM/SIGINT, then finish in-flight requests and exit 0."""
        handler = type(f"{self.name.title()}Handler", (_RequestHandler,), {"service": self})
        try:
            server = _Server((HOST, self.port), handler)
        except OSError as error:
            fail_startup(self.name, f"cannot listen on {HOST}:{self.port}: {error}", code=1)
        self._server = server
        log_event(
            self.name,
            event="started",
            port=self.port,
            pid=os.getpid(),
            startup_ms=round((time.monotonic() - self.started) * 1000, 1),
        )
        if not self._stopping.is_set():
            server.serve_forever(poll_interval=0.05)
        server.server_close()  # joins the threads still serving requests
        log_event(self.name, event="stopped", pid=os.getpid())
        raise SystemExit(0)
