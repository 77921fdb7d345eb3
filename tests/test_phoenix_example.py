"""End-to-end tests of the Phoenix example system: real processes (without Airlock) and a real
PostgreSQL database, whose schema comes from the example's migrations applied by Airlock's
migrator."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from airlock.db.migrate import Migrator, Report

PHOENIX = Path(__file__).resolve().parents[1] / "examples" / "phoenix"
SECRET = "planted-secret-9c1e7b3f5a"
URL_ENV = {
    "account": "ACCOUNT_URL",
    "audit": "AUDIT_URL",
    "payment": "PAYMENT_URL",
    "transaction": "TRANSACTION_URL",
}
TABLES = ["accounts", "audit_records", "notifications", "payments", "transactions"]

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ------------------------------------------------------------------------ helpers


def make_release(folder: Path, version: str) -> Path:
    """Copy examples/phoenix into ``folder`` and apply the overlays up to ``version`` in order
    (each overlay holds what changes from the release before it; v1 is the base)."""
    target = folder / f"phoenix-{version}"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(PHOENIX, target, ignore=ignore)
    for step in range(2, int(version[1:]) + 1):
        overlay = PHOENIX / "releases" / f"v{step}"
        shutil.copytree(overlay, target, ignore=ignore, dirs_exist_ok=True)
    return target


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """v1, v2 and v3, built once: services never write into their folder (but for Python's
    bytecode cache, which then saves every later start from compiling again)."""
    folder = tmp_path_factory.mktemp("releases")
    return {version: make_release(folder, version) for version in ("v1", "v2", "v3")}


def migrate(database_url: str, release: Path) -> Report:
    """Apply the release's migrations with Airlock's migrator."""
    report = Migrator(database_url, release / "db" / "migrations").migrate()
    assert report.ok, report.to_dict()
    return report


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(url: str, method: str = "GET", payload: Any = None, raw: bytes | None = None) -> Any:
    """Send a request; return ``(status, body)`` with JSON bodies decoded, text otherwise."""
    data = raw if raw is not None else None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with _opener.open(request, timeout=5) as response:
            status, body, ctype = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        with error:
            status, body, ctype = error.code, error.read(), error.headers
    if ctype.get_content_type() == "application/json":
        return status, json.loads(body)
    return status, body.decode()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log_dir: Path
    started: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        out = (self.log_dir / "stdout").read_text(errors="replace")
        return out + (self.log_dir / "stderr").read_text(errors="replace")

    def stdout_records(self) -> list[dict[str, Any]]:
        text = (self.log_dir / "stdout").read_text()
        return [json.loads(line) for line in text.splitlines()]

    def terminate(self, timeout: float = 30.0) -> tuple[int, float]:
        """Send SIGTERM; return the exit code and how long the process took to stop."""
        started = time.monotonic()
        self.popen.send_signal(signal.SIGTERM)
        code = self.popen.wait(timeout=timeout)
        return code, time.monotonic() - started


@dataclass
class Cluster:
    tmp_path: Path
    procs: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        release: Path,
        database_url: str,
        *,
        urls: dict[str, str] | None = None,
        extra_env: dict[str, str] | None = None,
        secret: str | None = SECRET,
        port: int | None = None,
        wait: bool = True,
    ) -> Proc:
        port = port or free_port()
        env = {"PATH": os.environ.get("PATH", ""), "PORT": str(port), "DATABASE_URL": database_url}
        if secret is not None:
            env["JWT_SECRET"] = secret
        for dependency, url in (urls or {}).items():
            env[URL_ENV[dependency]] = url
        env.update(extra_env or {})
        log_dir = self.tmp_path / "logs" / f"{len(self.procs)}-{name}-{port}"
        log_dir.mkdir(parents=True)
        with (log_dir / "stdout").open("wb") as out, (log_dir / "stderr").open("wb") as err:
            popen = subprocess.Popen(
                [sys.executable, f"services/{name}.py"],
                cwd=release,
                env=env,
                stdout=out,
                stderr=err,
            )
        proc = Proc(name, popen, port, log_dir, time.monotonic())
        self.procs.append(proc)
        if wait:
            wait_for(proc, "/healthz")
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.kill()
            proc.popen.wait(timeout=5)


def wait_for(proc: Proc, path: str, status: int = 200, timeout: float = 5.0) -> Any:
    """Poll ``path`` until it answers ``status``; fail with the service output otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.popen.poll() is not None:
            pytest.fail(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.output()}")
        try:
            answer = call(proc.url + path)
            if answer[0] == status:
                return answer[1]
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{proc.name} {path} never answered {status}:\n{proc.output()}")
        time.sleep(0.02)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def v1_db(pg_url: str, releases: dict[str, Path]) -> tuple[Path, str]:
    """The v1 release and a database migrated to its schema."""
    release = releases["v1"]
    migrate(pg_url, release)
    return release, pg_url


LAYERS = {  # dependency order: each layer only needs the layers before it
    ("account", "audit"): (),
    ("payment", "transaction"): ("account", "audit"),
    ("notification",): ("payment", "transaction"),
}


def start_system(cluster: Cluster, release: Path, database_url: str) -> dict[str, Proc]:
    """Start the five services layer by layer, each layer once the previous one is ready."""
    procs: dict[str, Proc] = {}
    for layer, needs in LAYERS.items():
        urls = {dep: procs[dep].url for dep in needs}
        for name in layer:
            procs[name] = cluster.start(name, release, database_url, urls=urls, wait=False)
        for name in layer:
            wait_for(procs[name], "/readyz")
    return procs


SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>(?:[a-zA-Z_]\w*="(?:[^"\\]|\\.)*",?)*)\})?'
    r" (?P<value>[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\+Inf|NaN))$"
)
COMMENT = re.compile(
    r"^# (?:HELP [a-zA-Z_:][\w:]* .+|TYPE [a-zA-Z_:][\w:]* (counter|gauge|histogram))$"
)


def parse_metrics(text: str) -> dict[str, float]:
    """Check every line is valid Prometheus text format; map ``name{labels}`` to its value."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert COMMENT.match(line), line
            continue
        match = SAMPLE.match(line)
        assert match, line
        key = match["name"] + ("{" + match["labels"] + "}" if match["labels"] else "")
        samples[key] = float(match["value"])
    return samples


def receipt_for(payment: dict[str, Any], secret: str = SECRET) -> str:
    fields = {key: payment[key] for key in ("account", "amount", "created_at", "payment_id")}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(secret.encode(), canonical, hashlib.sha256).hexdigest()


def columns(database_url: str, table: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
            [table],
        ).fetchall()
    return [row[0] for row in rows]


# -------------------------------------------------------------------------- tests


def test_v1_migration_creates_the_schema_and_seeds_the_accounts(pg_url: str) -> None:
    """V1 creates every table with a primary key and timestamptz times, and 100 accounts."""
    report = migrate(pg_url, PHOENIX)
    assert [step.script for step in report.steps] == ["V1__initial_schema.sql"]
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute(
            "SELECT c.relname, EXISTS (SELECT FROM pg_constraint k"
            "  WHERE k.conrelid = c.oid AND k.contype = 'p')"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname NOT LIKE 'airlock_%'"
            " ORDER BY c.relname"
        ).fetchall()
        assert tables == [(name, True) for name in TABLES]
        types = conn.execute(
            "SELECT DISTINCT data_type FROM information_schema.columns"
            " WHERE table_schema = 'public' AND column_name LIKE '%_at'"
            " AND table_name NOT LIKE 'airlock_%'"
        ).fetchall()
        assert types == [("timestamp with time zone",)]
        seeded = conn.execute("SELECT count(*), min(id), max(id), sum(balance) FROM accounts")
        assert seeded.fetchone() == (100, 1, 100, 100 * 1_000_000)


def test_full_system_in_dependency_order_serves_business_requests(
    cluster: Cluster, v1_db: tuple[Path, str]
) -> None:
    """Started in dependency order, the five services get ready and serve cross-service calls."""
    procs = start_system(cluster, *v1_db)
    for name, proc in procs.items():
        assert call(proc.url + "/healthz") == (
            200,
            {"status": "ok", "service": name, "version": "1.0.0"},
        )
    audit = procs["audit"].url
    assert call(audit + "/records/count") == (200, {"count": 0})

    status, payment = call(
        procs["payment"].url + "/payments", "POST", {"account": 1, "amount": 500}
    )
    assert status == 201, payment
    assert payment["balance"] == 999_500
    assert payment["receipt"] == receipt_for(payment)

    status, transfer = call(
        procs["transaction"].url + "/transactions", "POST", {"from": 2, "to": 3, "amount": 250}
    )
    assert status == 201, transfer
    assert (transfer["from_balance"], transfer["to_balance"]) == (999_750, 1_000_250)
    assert call(procs["account"].url + "/accounts/3") == (200, {"id": 3, "balance": 1_000_250})

    notify = procs["notification"].url + "/notifications"
    status, note = call(notify, "POST", {"account": 1, "message": "thanks for paying"})
    assert status == 201, note
    assert (note["payments"], note["transactions"]) == (1, 0)
    status, note = call(notify, "POST", {"account": 3, "message": "money arrived"})
    assert (status, note["payments"], note["transactions"]) == (201, 0, 1)
    assert call(notify + "/count") == (200, {"count": 2})
    status, notes = call(notify + "?account=3")
    assert [n["message"] for n in notes] == ["money arrived"]

    assert call(audit + "/records/count") == (200, {"count": 2})
    status, records = call(audit + "/records?kind=payment")
    assert status == 200
    assert [r["data"] for r in records] == [{"account": 1, "amount": 500}]
    status, listed = call(procs["payment"].url + "/payments?account=1")
    assert status == 200
    assert [p["payment_id"] for p in listed] == [payment["payment_id"]]
    # what is read back from PostgreSQL is what was signed when the payment was made
    assert listed[0]["created_at"] == payment["created_at"]
    assert listed[0]["receipt"] == receipt_for(payment)

    status, text = call(procs["payment"].url + "/metrics")
    assert status == 200
    samples = parse_metrics(text)
    labels = 'service="payment",version="1.0.0"'
    assert samples[f'phoenix_requests_total{{{labels},method="POST",code="201"}}'] == 1
    assert samples[f"phoenix_build_info{{{labels}}}"] == 1
    assert samples["process_resident_memory_bytes"] > 1_000_000
    requests = sum(v for k, v in samples.items() if k.startswith("phoenix_requests_total{"))
    assert samples[f"phoenix_request_duration_seconds_count{{{labels}}}"] == requests
    assert samples[f'phoenix_request_duration_seconds_bucket{{{labels},le="+Inf"}}'] == requests
    assert "# TYPE phoenix_request_duration_seconds histogram" in text

    for record in procs["payment"].stdout_records():
        assert record["service"] == "payment"
        assert record["version"] == "1.0.0"
        assert "ts" in record
        if "event" not in record:
            assert {"method", "path", "status", "ms"} <= record.keys()
    for proc in procs.values():
        assert "Traceback" not in proc.output()


def test_bad_input_gets_clean_json_errors(cluster: Cluster, v1_db: tuple[Path, str]) -> None:
    """Malformed requests get a JSON 4xx with a reason, never a traceback."""
    release, database_url = v1_db
    account = cluster.start("account", release, database_url)
    # payment validates its input before it needs any dependency
    payment = cluster.start("payment", release, database_url)
    debit = account.url + "/accounts/1/debit"
    cases = [
        (call(debit, "POST", raw=b"{not json"), 400),
        (call(debit, "POST", raw=b"[1, 2]"), 400),
        (call(debit, "POST", {"amount": -5}), 400),
        (call(debit, "POST", {"amount": "10"}), 400),
        (call(debit, "POST", {"amount": 1.5}), 400),
        (call(debit, "POST", {"amount": True}), 400),
        (call(debit, "POST"), 400),
        (call(account.url + "/accounts/101"), 404),
        (call(account.url + "/accounts/101/debit", "POST", {"amount": 1}), 404),
        (call(account.url + "/accounts/101/credit", "POST", {"amount": 1}), 404),
        (call(account.url + "/nowhere"), 404),
        (call(account.url + "/accounts/1", "DELETE"), 405),
        (call(payment.url + "/payments", "POST", {"account": 1}), 400),
        (call(payment.url + "/payments?account=abc"), 400),
    ]
    for (status, body), expected in cases:
        assert status == expected, body
        assert isinstance(body, dict)
        assert isinstance(body["error"], str)
        assert body["error"]
        assert "Traceback" not in json.dumps(body)
    assert call(account.url + "/accounts/1") == (200, {"id": 1, "balance": 1_000_000})
    assert "Traceback" not in account.output() + payment.output()


def test_not_ready_until_the_migrations_are_applied(
    cluster: Cluster, pg_url: str, releases: dict[str, Path]
) -> None:
    """On an empty database account is alive but not ready, naming the missing table; once the
    migrations run it becomes ready without a restart."""
    release = releases["v1"]
    account = cluster.start("account", release, pg_url)

    status, body = call(account.url + "/readyz")
    assert status == 503
    assert body["ready"] is False
    assert body["reason"] == "table accounts does not exist (migrations not applied?)"
    status, body = call(account.url + "/accounts/1")
    assert status == 503
    assert body["error"] == "database schema not ready (migrations not applied?)"
    assert columns(pg_url, "accounts") == []  # the service did not create its table

    migrate(pg_url, release)
    assert wait_for(account, "/readyz")["ready"] is True
    assert call(account.url + "/accounts/1") == (200, {"id": 1, "balance": 1_000_000})


def test_payment_before_account_is_not_ready_and_fails_requests(
    cluster: Cluster, v1_db: tuple[Path, str]
) -> None:
    """Payment started while account is down reports 503 naming account and fails payments."""
    release, database_url = v1_db
    account_port = free_port()
    account_url = f"http://127.0.0.1:{account_port}"
    audit = cluster.start("audit", release, database_url)
    payment = cluster.start(
        "payment", release, database_url, urls={"account": account_url, "audit": audit.url}
    )

    status, body = call(payment.url + "/readyz")
    assert status == 503
    assert body["ready"] is False
    assert body["reason"] == f"account unreachable at {account_url}"

    status, body = call(payment.url + "/payments", "POST", {"account": 1, "amount": 100})
    assert status in (502, 503)
    assert "account" in body["error"]
    assert body["dependency"] == "account"

    # once account comes up, the readiness gate opens and payments go through
    cluster.start("account", release, database_url, port=account_port)
    assert wait_for(payment, "/readyz")["ready"] is True
    status, body = call(payment.url + "/payments", "POST", {"account": 1, "amount": 100})
    assert status == 201, body
    assert call(audit.url + "/records/count") == (200, {"count": 1})


def test_secrets_are_required_and_never_printed(cluster: Cluster, v1_db: tuple[Path, str]) -> None:
    """Services exit 2 without JWT_SECRET or DATABASE_URL, and never print the secret or the
    database password, not even in errors about the database."""
    release, database_url = v1_db
    password = urllib.parse.urlsplit(database_url).password
    assert password  # the embedded server has a real password: plant it
    base_env = {"PATH": os.environ.get("PATH", "")}
    refusals = [
        ("account", {"DATABASE_URL": database_url}, "JWT_SECRET"),
        ("payment", {"DATABASE_URL": database_url}, "JWT_SECRET"),
        ("audit", {}, "DATABASE_URL"),
        ("audit", {"DATABASE_URL": database_url.replace("postgresql", "mysql", 1)}, "DATABASE_URL"),
    ]
    refused = [
        subprocess.Popen(
            [sys.executable, f"services/{name}.py"],
            cwd=release,
            env={**base_env, "PORT": str(free_port()), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, env, _ in refusals
    ]
    for (name, _, missing), popen in zip(refusals, refused, strict=True):
        stdout, stderr = popen.communicate(timeout=10)
        assert popen.returncode == 2, (name, missing, stderr)
        assert missing in stderr
        assert stdout == ""
        assert password not in stderr
        assert SECRET not in stderr

    account = cluster.start("account", release, database_url, wait=False)
    audit = cluster.start("audit", release, database_url, wait=False)
    payment = cluster.start(
        "payment",
        release,
        database_url,
        urls={"account": account.url, "audit": audit.url},
        wait=False,
    )
    # the same password, but a database that does not exist: errors that mention the URL
    wrong = cluster.start(
        "account", release, database_url.rsplit("/", 1)[0] + "/no_such_db", wait=False
    )
    wait_for(payment, "/readyz")
    wait_for(wrong, "/healthz")
    answers = [
        call(payment.url + "/payments", "POST", {"account": 4, "amount": 700}),
        call(payment.url + "/payments", "POST", {"account": 4, "amount": 10**9}),
        call(payment.url + "/payments", "POST", {"account": 999, "amount": 1}),
        call(payment.url + "/payments", "POST", raw=b"\xff"),
        call(payment.url + "/payments?account=4"),
        call(payment.url + "/metrics"),
        call(account.url + "/accounts/4/statement"),
        call(account.url + "/metrics"),
        call(wrong.url + "/readyz"),
        call(wrong.url + "/accounts/4"),
    ]
    statuses = [status for status, _ in answers]
    assert statuses == [201, 402, 404, 400, 200, 200, 200, 200, 503, 503]
    assert answers[-2][1]["reason"].startswith("database unavailable: ")
    assert "no_such_db" in answers[-2][1]["reason"]
    for proc in (payment, audit, account, wrong):
        assert proc.terminate()[0] == 0
    assert "Traceback" in wrong.output()  # the failed request printed its error...
    for _, body in answers:
        assert SECRET not in json.dumps(body)
        assert password not in json.dumps(body)
    for proc in (account, audit, payment, wrong):
        assert SECRET not in proc.output()
        assert password not in proc.output()  # ...without the password


def test_concurrent_debits_never_overdraw(cluster: Cluster, v1_db: tuple[Path, str]) -> None:
    """Concurrent debits larger in total than the balance never drive it below zero."""
    account = cluster.start("account", *v1_db)
    debit = account.url + "/accounts/7/debit"

    def attempt(_: int) -> int:
        status, _body = call(debit, "POST", {"amount": 30_000})
        return int(status)

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(attempt, range(40)))
    assert statuses.count(200) == 33  # 33 * 30_000 <= 1_000_000 < 34 * 30_000
    assert statuses.count(409) == 7
    assert call(account.url + "/accounts/7") == (200, {"id": 7, "balance": 10_000})
    with psycopg.connect(v1_db[1]) as conn:
        row = conn.execute("SELECT balance FROM accounts WHERE id = 7").fetchone()
    assert row == (10_000,)


def test_starts_quickly_and_stops_promptly_on_sigterm(
    cluster: Cluster, v1_db: tuple[Path, str]
) -> None:
    """A service is alive and ready soon after it starts (the database is reached only when
    /readyz or a request needs it); SIGTERM under load lets in-flight requests finish and
    exits 0 in under a second."""
    account = cluster.start("account", *v1_db, wait=False)
    wait_for(account, "/healthz")
    healthy = time.monotonic() - account.started
    wait_for(account, "/readyz")
    ready = time.monotonic() - account.started
    assert healthy < 3.0  # about 0.3 s on an idle machine, most of it importing psycopg
    assert ready - healthy < 1.0
    started = next(r for r in account.stdout_records() if r.get("event") == "started")
    assert started["startup_ms"] < 100  # from Service() to listening; imports come before

    results: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                results.append(call(account.url + "/accounts/1/credit", "POST", {"amount": 1})[0])
            except OSError:
                return  # the listener is closed: no more connections

    worker = threading.Thread(target=load)
    worker.start()
    time.sleep(0.2)
    code, _elapsed = account.terminate()
    stop.set()
    worker.join(timeout=5)
    assert code == 0  # it drained and exited by itself on SIGTERM
    assert results
    assert set(results) == {200}  # every request that got an answer was served completely
    assert account.stdout_records()[-1]["event"] == "stopped"


def test_data_survives_a_restart(cluster: Cluster, v1_db: tuple[Path, str]) -> None:
    """Balances live in PostgreSQL, so a restarted service still has them; a pooled
    connection the server dropped is replaced without failing the request."""
    release, database_url = v1_db
    account = cluster.start("account", release, database_url)
    assert call(account.url + "/accounts/9/debit", "POST", {"amount": 1234})[0] == 200
    with psycopg.connect(database_url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name LIKE 'phoenix-account/%'"
        ).fetchall()
    assert killed == [(True,)]  # the one idle connection in account's pool
    assert call(account.url + "/accounts/9/debit", "POST", {"amount": 1}) == (
        200,
        {"id": 9, "balance": 1_000_000 - 1235},
    )
    assert account.terminate()[0] == 0
    assert "Traceback" not in account.output()

    account = cluster.start("account", release, database_url, port=account.port)
    wait_for(account, "/readyz")
    assert call(account.url + "/accounts/9") == (200, {"id": 9, "balance": 1_000_000 - 1235})


def test_v2_runs_side_by_side_with_v1_on_the_v2_schema(
    cluster: Cluster, pg_url: str, releases: dict[str, Path]
) -> None:
    """V2 migrates under running v1 services, which keep working; v2 gets ready only once its
    columns exist; both versions share the data; U2 undoes the migration for v1 alone."""
    v1, v2 = releases["v1"], releases["v2"]
    migrate(pg_url, v1)
    account = cluster.start("account", v1, pg_url, wait=False)
    audit = cluster.start("audit", v1, pg_url, wait=False)
    deps = {"account": account.url, "audit": audit.url}
    pay1 = cluster.start("payment", v1, pg_url, urls=deps, wait=False)
    tx1 = cluster.start("transaction", v1, pg_url, urls=deps, wait=False)
    pay2 = cluster.start("payment", v2, pg_url, urls=deps, wait=False)
    for proc in (account, audit, pay1, tx1):
        wait_for(proc, "/readyz")

    status, old = call(pay1.url + "/payments", "POST", {"account": 5, "amount": 100})
    assert status == 201
    assert "fee" not in old
    # v2 code on the v1 schema: alive, but not ready
    body = wait_for(pay2, "/readyz", status=503)
    assert body["reason"] == "column payments.fee does not exist (migrations not applied?)"

    report = migrate(pg_url, v2)  # expand, under the running v1 services
    assert [step.script for step in report.steps] == ["V2__payment_fee_and_currency.sql"]
    assert columns(pg_url, "payments")[-1] == "fee"
    assert columns(pg_url, "transactions")[-1] == "currency"
    tx2 = cluster.start("transaction", v2, pg_url, urls=deps, wait=False)
    assert wait_for(pay2, "/readyz")["version"] == "2.0.0"
    assert wait_for(tx2, "/readyz")["version"] == "2.0.0"
    status, new = call(pay2.url + "/payments", "POST", {"account": 5, "amount": 200})
    assert status == 201, new
    assert new["fee"] == 0
    assert new["balance"] == 1_000_000 - 300
    assert new["receipt"] == receipt_for(new)
    # v1 keeps working on the v2 schema: it names its columns, the defaults fill the rest
    status, again = call(pay1.url + "/payments", "POST", {"account": 5, "amount": 300})
    assert status == 201, again

    status, listed_v1 = call(pay1.url + "/payments?account=5")
    assert [p["amount"] for p in listed_v1] == [300, 200, 100]
    status, listed_v2 = call(pay2.url + "/payments?account=5")
    assert [(p["amount"], p["fee"]) for p in listed_v2] == [(300, 0), (200, 0), (100, 0)]

    status, transfer = call(tx2.url + "/transactions", "POST", {"from": 5, "to": 6, "amount": 50})
    assert status == 201, transfer
    assert transfer["currency"] == "EUR"
    status, transfer = call(tx1.url + "/transactions", "POST", {"from": 6, "to": 5, "amount": 20})
    assert status == 201, transfer
    status, listed = call(tx1.url + "/transactions?account=5")
    assert [t["amount"] for t in listed] == [20, 50]
    status, listed = call(tx2.url + "/transactions?account=6")
    assert [t["currency"] for t in listed] == ["EUR", "EUR"]
    assert call(account.url + "/accounts/5") == (200, {"id": 5, "balance": 1_000_000 - 630})
    assert call(audit.url + "/records/count") == (200, {"count": 5})

    # roll back: stop v2, undo V2; v1 goes on with the data it knows
    for proc in (pay2, tx2):
        assert proc.terminate()[0] == 0
    undone = Migrator(pg_url, v2 / "db" / "migrations").undo()
    assert [step.script for step in undone.steps] == ["U2__payment_fee_and_currency.sql"]
    assert "fee" not in columns(pg_url, "payments")
    status, body = call(pay1.url + "/payments", "POST", {"account": 5, "amount": 1})
    assert status == 201, body
    assert [p["amount"] for p in call(pay1.url + "/payments?account=5")[1]] == [1, 300, 200, 100]


def test_v3_notification_works_but_its_memory_climbs(
    cluster: Cluster, pg_url: str, releases: dict[str, Path]
) -> None:
    """v3 is ready and answers correctly, but notification's memory grows by megabytes a second
    (its delivery queue keeps every batch): only a bake that watches memory catches it."""
    v3 = releases["v3"]
    report = migrate(pg_url, v3)
    assert [step.script for step in report.steps] == [
        "V1__initial_schema.sql",
        "V2__payment_fee_and_currency.sql",
    ]
    account = cluster.start("account", v3, pg_url)
    audit = cluster.start("audit", v3, pg_url)
    deps = {"account": account.url, "audit": audit.url}
    payment = cluster.start("payment", v3, pg_url, urls=deps)
    transaction = cluster.start("transaction", v3, pg_url, urls=deps)
    notification = cluster.start(
        "notification",
        v3,
        pg_url,
        urls={"payment": payment.url, "transaction": transaction.url},
    )
    assert wait_for(notification, "/readyz")["version"] == "3.0.0"
    status, body = call(
        notification.url + "/notifications", "POST", {"account": 3, "message": "hi"}
    )
    assert status == 201, body

    process = psutil.Process(notification.popen.pid)
    before = process.memory_info().rss
    time.sleep(2.0)
    grown_mb = (process.memory_info().rss - before) / 2**20
    assert grown_mb > 5, f"notification 3.0.0 grew only {grown_mb:.1f} MB in 2 s"


def test_overlays_change_only_what_the_release_notes_say() -> None:
    """v2 changes the version, payment, transaction and adds migration V2 (and U2); v3, on top
    of v2, changes the version and notification only."""
    assert 'VERSION = "1.0.0"' in (PHOENIX / "services" / "version.py").read_text()
    base_migrations = sorted(p.name for p in (PHOENIX / "db" / "migrations").iterdir())
    assert base_migrations == ["V1__initial_schema.sql"]
    expected = {
        "v2": [
            "db/migrations/U2__payment_fee_and_currency.sql",
            "db/migrations/V2__payment_fee_and_currency.sql",
            "services/payment.py",
            "services/transaction.py",
            "services/version.py",
        ],
        "v3": ["services/notification.py", "services/version.py"],
    }
    for version, files in expected.items():
        overlay = PHOENIX / "releases" / version
        found = sorted(
            p.relative_to(overlay).as_posix()
            for p in overlay.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        )
        assert found == files
        number = version[1:]
        assert f'VERSION = "{number}.0.0"' in (overlay / "services" / "version.py").read_text()


def test_services_never_touch_the_schema() -> None:
    """The schema belongs to the migrations: no service creates or alters a table."""
    ddl = re.compile(r"\b(CREATE|ALTER|DROP)\s+(TABLE|INDEX)\b", re.IGNORECASE)
    for path in PHOENIX.rglob("*.py"):
        assert not ddl.search(path.read_text()), path
        assert "DATA_DIR" not in path.read_text(), path
