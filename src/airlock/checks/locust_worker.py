"""The child process of the load gate: runs Locust headless and writes the figures as JSON.

Run as ``python -m airlock.checks.locust_worker SPEC.json`` by :mod:`airlock.checks.load`, never
imported by Airlock itself: importing Locust monkey-patches the whole process with gevent, which
must happen before anything imports ``ssl``, ``socket`` users or HTTP clients. That is why the very
first statement below imports ``locust``.

The spec (JSON) holds::

    mode         "default" | "locustfile"
    locustfile   absolute path of the project's locustfile (mode "locustfile")
    root         the project folder (the working folder; used to place errors)
    targets      [{name, method, url}] for the default user (mode "default")
    host         base URL given to user classes that declare no ``host``
    users, spawn_rate, duration, stop_timeout
    samples      how many response bodies to keep per request name (0: none)
    result       where to write the result

The result (JSON), written atomically, is either the figures (``requests``, ``failures``,
``answered``, ``p50_ms`` … ``p99_ms``, ``rps``, ``duration_s``, ``users``, ``entries``,
``errors``, ``exceptions``, and ``samples``: response bodies for the parent to scan for personal
data, never stored) or ``{"error": message, "kind": ..., "file": ..., "line": ...}``
when the load test could not run. Nothing is printed on purpose: the parent captures stdout and
stderr and only shows their last lines when this process crashes.
"""

from __future__ import annotations

# isort: off
import locust  # noqa: F401 -- first: gevent monkey-patches the process on import
# isort: on

import json
import logging
import os
import random
import re
import sys
import time
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any

from locust import FastHttpUser, User, between, task
from locust.env import Environment
from locust.stats import StatsEntry
from locust.util.load_locustfile import load_locustfile

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_LOCUSTFILE = 3
"""Exit status when the locustfile cannot be loaded or defines no user class."""

MAX_ERRORS = 5
"""Distinct failure messages and exceptions kept in the result."""

SAMPLE_BYTES = 64 * 1024
"""At most this much of each sampled response body is kept."""

WAIT_BETWEEN = (0.1, 0.5)
"""Think time of the default user between two requests, in seconds."""


class LoadError(Exception):
    """The load test cannot start; ``file``/``line`` place the cause when known."""

    def __init__(
        self, message: str, *, kind: str, file: str | None = None, line: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.file = file
        self.line = line


# -- user classes ------------------------------------------------------------------------------


def default_user(targets: list[dict[str, str]], host: str) -> type[User]:
    """A user that sends every target in turn (each user starts at a random one), with a short
    think time between requests; each request is named ``service METHOD /path`` in the stats."""
    if not targets:
        raise LoadError("no endpoints to send requests to", kind="no-users")
    plan = [(t["method"], t["url"], t["name"]) for t in targets]

    class AirlockDefaultUser(FastHttpUser):
        wait_time = between(*WAIT_BETWEEN)
        connection_timeout = 5.0
        network_timeout = 30.0

        def on_start(self) -> None:
            self.turn = random.randrange(len(plan))

        @task
        def next_endpoint(self) -> None:
            method, url, name = plan[self.turn % len(plan)]
            self.turn += 1
            self.client.request(method, url, name=name)

    AirlockDefaultUser.host = host
    return AirlockDefaultUser


def _import_error(exc: BaseException, path: Path, root: Path) -> LoadError:
    """A one-line description of why the locustfile did not import, placed at file:line."""
    if isinstance(exc, SyntaxError):
        file = exc.filename or str(path)
        detail = exc.msg or "invalid syntax"
        return LoadError(
            f"{type(exc).__name__}: {detail}", kind="locustfile", file=file, line=exc.lineno
        )
    if isinstance(exc, SystemExit):
        return LoadError(
            f"the locustfile called sys.exit({exc.code!r}) while loading",
            kind="locustfile",
            file=str(path),
        )
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if Path(f.filename) == path]
    inside = [f for f in frames if _is_under(Path(f.filename), root)]
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    message = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    placed = own or inside
    if not placed:
        return LoadError(message, kind="locustfile", file=str(path))
    return LoadError(message, kind="locustfile", file=placed[-1].filename, line=placed[-1].lineno)


def _is_under(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return True


def locustfile_users(path: Path, root: Path, host: str) -> list[type[User]]:
    """The runnable user classes of ``path``; those without a ``host`` get ``host``.

    Load-test shapes in the file are ignored: ``gates.load`` sets users and duration."""
    if not path.is_file():
        raise LoadError("the locustfile does not exist", kind="locustfile", file=str(path))
    try:
        classes, _shapes = load_locustfile(str(path))
    except (Exception, SystemExit) as exc:
        raise _import_error(exc, path, root) from None
    if not classes:
        raise LoadError(
            "the locustfile defines no user class (a non-abstract subclass of HttpUser, "
            "FastHttpUser or User)",
            kind="no-users",
            file=str(path),
        )
    users = [classes[name] for name in sorted(classes)]
    for cls in users:
        if cls.host is None and host:
            cls.host = host
    return users


# -- running -----------------------------------------------------------------------------------


def _figures(entry: StatsEntry) -> dict[str, Any]:
    return {
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "p50_ms": entry.get_response_time_percentile(0.5),
        "p95_ms": entry.get_response_time_percentile(0.95),
        "p99_ms": entry.get_response_time_percentile(0.99),
        "avg_ms": round(entry.avg_response_time, 1),
        "max_ms": round(entry.max_response_time, 1),
        "rps": round(entry.total_rps, 2),
    }


class _Exceptions:
    """Exceptions raised by user tasks (not request failures), placed in the user's files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seen: dict[str, dict[str, Any]] = {}

    def __call__(
        self, user_instance: Any, exception: BaseException, tb: TracebackType | None, **_: Any
    ) -> None:
        frames = [f for f in traceback.extract_tb(tb) if _is_under(Path(f.filename), self.root)]
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None
        message = f"{type(exception).__name__}: {exception}".rstrip(": ")
        key = f"{message}@{where}"
        row = self.seen.setdefault(key, {"message": message, "where": where, "count": 0})
        row["count"] += 1

    def top(self) -> list[dict[str, Any]]:
        return sorted(self.seen.values(), key=lambda r: -int(r["count"]))[:MAX_ERRORS]


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the load test described by ``spec``; the figures as a JSON-able dict."""
    root = Path(spec["root"])
    host = str(spec.get("host") or "")
    if spec["mode"] == "locustfile":
        users = locustfile_users(Path(spec["locustfile"]), root, host)
    else:
        users = [default_user(spec["targets"], host)]

    environment = Environment(
        user_classes=users,
        catch_exceptions=True,
        stop_timeout=float(spec["stop_timeout"]),
    )
    answered = 0
    per_name = int(spec.get("samples") or 0)
    samples: dict[str, list[str]] = {}

    def on_request(name: str = "", response: Any = None, exception: Any = None, **_: Any) -> None:
        nonlocal answered
        code = getattr(response, "status_code", None)
        if (code > 0) if isinstance(code, int) else exception is None:
            answered += 1
        kept = samples.setdefault(name, [])
        if response is not None and len(kept) < per_name:
            body = getattr(response, "content", None) or b""
            if isinstance(body, bytes) and body:
                kept.append(body[:SAMPLE_BYTES].decode("utf-8", errors="replace"))

    exceptions = _Exceptions(root)
    environment.events.request.add_listener(on_request)  # type: ignore[no-untyped-call]
    environment.events.user_error.add_listener(exceptions)  # type: ignore[no-untyped-call]
    runner = environment.create_local_runner()
    duration = float(spec["duration"])
    started = time.monotonic()
    peak = 0
    runner.start(int(spec["users"]), spawn_rate=float(spec["spawn_rate"]))
    while (left := duration - (time.monotonic() - started)) > 0:
        time.sleep(min(left, 0.25))  # gevent's sleep: the users run meanwhile
        peak = max(peak, runner.user_count)
    runner.stop()  # users finish the request in flight (up to stop_timeout)
    elapsed = time.monotonic() - started
    stats = environment.stats
    errors = sorted(stats.errors.values(), key=lambda e: -e.occurrences)[:MAX_ERRORS]
    result: dict[str, Any] = {
        **_figures(stats.total),
        "answered": answered,
        "duration_s": round(elapsed, 2),
        "users": peak,
        "user_classes": [cls.__name__ for cls in users],
        "entries": [
            {"name": entry.name, "method": entry.method, **_figures(entry)}
            for entry in sorted(stats.entries.values(), key=lambda e: (e.name, e.method))
            if entry.num_requests or entry.num_failures
        ],
        "errors": [
            {
                "name": e.name,
                "method": e.method,
                "error": _error_text(e.error),
                "occurrences": e.occurrences,
            }
            for e in errors
        ],
        "exceptions": exceptions.top(),
        "samples": [
            {"name": name, "body": body} for name, kept in samples.items() for body in kept
        ],
    }
    runner.quit()
    return result


def _error_text(error: Any) -> str:
    text = error if isinstance(error, str) else repr(error)
    if status := re.fullmatch(r"LocustBadStatusCode\(code=(\d+)\)", text):
        return f"HTTP {status.group(1)}"
    for prefix in ("CatchResponseError(", "HTTPError("):
        if text.startswith(prefix) and text.endswith(")"):
            text = text[len(prefix) : -1].strip("'\"")
    return text


def _write(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(partial, path)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m airlock.checks.locust_worker SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    result_path = Path(spec["result"])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # exceptions in user tasks are collected (and placed) by _Exceptions; locust would log a
    # traceback for each one
    logging.getLogger("locust.user").setLevel(logging.CRITICAL)
    try:
        result = run(spec)
    except LoadError as exc:
        _write(
            result_path,
            {"error": exc.message, "kind": exc.kind, "file": exc.file, "line": exc.line},
        )
        return EXIT_LOCUSTFILE
    except Exception as exc:  # report it; the traceback goes to the captured stderr only
        traceback.print_exc()
        _write(result_path, {"error": f"{type(exc).__name__}: {exc}", "kind": "crash"})
        return EXIT_CRASH
    _write(result_path, result)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
