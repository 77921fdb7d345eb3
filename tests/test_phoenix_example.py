"""End-to-end tests of the Phoenix example system, run as real processes without Airlock."""

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
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

PHOENIX = Path(__file__).resolve().parents[1] / "examples" / "phoenix"
SECRET = "planted-secret-9c1e7b3f5a"
URL_ENV = {
    "account": "ACCOUNT_URL",
    "audit": "AUDIT_URL",
    "payment": "PAYMENT_URL",
    "transaction": "TRANSACTION_URL",
}

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ------------------------------------------------------------------------ helpers


def make_release(tmp_path: Path, version: str) -> Path:
    """Copy examples/phoenix to tmp_path and apply the overlay of ``version`` (v1 = base)."""
    target = tmp_path / f"phoenix-{version}"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "data")
    shutil.copytree(PHOENIX, target, ignore=ignore)
    if version != "v1":
        shutil.copytree(PHOENIX / "releases" / version, target, ignore=ignore, dirs_exist_ok=True)
    return target


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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        out = (self.log_dir / "stdout").read_text(errors="replace")
        return out + (self.log_dir / "stderr").read_text(errors="replace")

    def stdout_records(self) -> list[dict[str, Any]]:
        text = (self.log_dir / "stdout").read_text()
        return [json.loads(line) for line in text.splitlines()]

    def terminate(self, timeout: float = 2.0) -> tuple[int, float]:
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
        data_dir: Path,
        *,
        urls: dict[str, str] | None = None,
        extra_env: dict[str, str] | None = None,
        secret: str | None = SECRET,
        port: int | None = None,
        wait: bool = True,
    ) -> Proc:
        port = port or free_port()
        env = {"PATH": os.environ.get("PATH", ""), "PORT": str(port), "DATA_DIR": str(data_dir)}
        if secret is not None:
            env["JWT_SECRET"] = secret
        for dependency, url in (urls or {}).items():
            env[URL_ENV[dependency]] = url
        env.update(extra_env or {})
        log_dir = self.tmp_path / "logs" / f"{name}-{port}"
        log_dir.mkdir(parents=True)
        with (log_dir / "stdout").open("wb") as out, (log_dir / "stderr").open("wb") as err:
            popen = subprocess.Popen(
                [sys.executable, f"services/{name}.py"],
                cwd=release,
                env=env,
                stdout=out,
                stderr=err,
            )
        proc = Proc(name, popen, port, log_dir)
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


LAYERS = {  # dependency order: each layer only needs the layers before it
    ("account", "audit"): (),
    ("payment", "transaction"): ("account", "audit"),
    ("notification",): ("payment", "transaction"),
}


def start_system(cluster: Cluster, release: Path, data_dir: Path) -> dict[str, Proc]:
    """Start the five services layer by layer, each layer once the previous one is ready."""
    procs: dict[str, Proc] = {}
    for layer, needs in LAYERS.items():
        urls = {dep: procs[dep].url for dep in needs}
        for name in layer:
            procs[name] = cluster.start(name, release, data_dir, urls=urls, wait=False)
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


# -------------------------------------------------------------------------- tests


def test_full_system_in_dependency_order_serves_business_requests(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Started in dependency order, the five services get ready and serve cross-service calls."""
    procs = start_system(cluster, make_release(tmp_path, "v1"), tmp_path / "data")
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

    assert call(audit + "/records/count") == (200, {"count": 2})
    status, records = call(audit + "/records?kind=payment")
    assert status == 200
    assert [r["data"] for r in records] == [{"account": 1, "amount": 500}]
    status, listed = call(procs["payment"].url + "/payments?account=1")
    assert status == 200
    assert [p["payment_id"] for p in listed] == [payment["payment_id"]]

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


def test_bad_input_gets_clean_json_errors(cluster: Cluster, tmp_path: Path) -> None:
    """Malformed requests get a JSON 4xx with a reason, never a traceback."""
    release = make_release(tmp_path, "v1")
    account = cluster.start("account", release, tmp_path / "data")
    # payment validates its input before it needs any dependency
    payment = cluster.start("payment", release, tmp_path / "data")
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


def test_payment_before_account_is_not_ready_and_fails_requests(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Payment started while account is down reports 503 naming account and fails payments."""
    release = make_release(tmp_path, "v1")
    data = tmp_path / "data"
    account_port = free_port()
    account_url = f"http://127.0.0.1:{account_port}"
    audit = cluster.start("audit", release, data)
    payment = cluster.start(
        "payment", release, data, urls={"account": account_url, "audit": audit.url}
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
    cluster.start("account", release, data, port=account_port)
    assert wait_for(payment, "/readyz")["ready"] is True
    status, body = call(payment.url + "/payments", "POST", {"account": 1, "amount": 100})
    assert status == 201, body
    assert call(audit.url + "/records/count") == (200, {"count": 1})


def test_jwt_secret_is_required_and_never_printed(cluster: Cluster, tmp_path: Path) -> None:
    """Account and payment exit 2 without JWT_SECRET, and never print its value when set."""
    release = make_release(tmp_path, "v1")
    data = tmp_path / "data"
    for name in ("account", "payment"):
        result = subprocess.run(
            [sys.executable, f"services/{name}.py"],
            cwd=release,
            env={
                "PATH": os.environ.get("PATH", ""),
                "PORT": str(free_port()),
                "DATA_DIR": str(data),
            },
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert result.returncode == 2
        assert "JWT_SECRET" in result.stderr
        assert result.stdout == ""

    account = cluster.start("account", release, data, wait=False)
    audit = cluster.start("audit", release, data, wait=False)
    payment = cluster.start(
        "payment", release, data, urls={"account": account.url, "audit": audit.url}, wait=False
    )
    wait_for(payment, "/readyz")
    answers = [
        call(payment.url + "/payments", "POST", {"account": 4, "amount": 700}),
        call(payment.url + "/payments", "POST", {"account": 4, "amount": 10**9}),
        call(payment.url + "/payments", "POST", {"account": 999, "amount": 1}),
        call(payment.url + "/payments", "POST", raw=b"\xff"),
        call(payment.url + "/payments?account=4"),
        call(payment.url + "/metrics"),
        call(account.url + "/accounts/4/statement"),
        call(account.url + "/metrics"),
    ]
    assert [status for status, _ in answers] == [201, 402, 404, 400, 200, 200, 200, 200]
    for proc in (payment, audit, account):
        assert proc.terminate()[0] == 0
    for _, body in answers:
        assert SECRET not in json.dumps(body)
    for proc in (account, audit, payment):
        assert SECRET not in proc.output()


def test_concurrent_debits_never_overdraw(cluster: Cluster, tmp_path: Path) -> None:
    """Concurrent debits larger in total than the balance never drive it below zero."""
    account = cluster.start("account", make_release(tmp_path, "v1"), tmp_path / "data")
    debit = account.url + "/accounts/7/debit"

    def attempt(_: int) -> int:
        status, _body = call(debit, "POST", {"amount": 30_000})
        return int(status)

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(attempt, range(40)))
    assert statuses.count(200) == 33  # 33 * 30_000 <= 1_000_000 < 34 * 30_000
    assert statuses.count(409) == 7
    assert call(account.url + "/accounts/7") == (200, {"id": 7, "balance": 10_000})


def test_sigterm_stops_promptly_with_exit_code_zero(cluster: Cluster, tmp_path: Path) -> None:
    """SIGTERM under load lets in-flight requests finish and exits 0 in under a second."""
    account = cluster.start("account", make_release(tmp_path, "v1"), tmp_path / "data")
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
    code, elapsed = account.terminate()
    stop.set()
    worker.join(timeout=5)
    assert code == 0
    assert elapsed < 1.0
    assert results
    assert set(results) == {200}  # every request that got an answer was served completely
    assert account.stdout_records()[-1]["event"] == "stopped"


def test_v2_runs_side_by_side_with_v1_on_the_same_data(cluster: Cluster, tmp_path: Path) -> None:
    """v2 payment and transaction work against v1 services and share the v1 database files."""
    v1 = make_release(tmp_path, "v1")
    v2 = make_release(tmp_path, "v2")
    data = tmp_path / "data"
    account = cluster.start("account", v1, data, wait=False)
    audit = cluster.start("audit", v1, data, wait=False)
    deps = {"account": account.url, "audit": audit.url}
    pay1 = cluster.start("payment", v1, data, urls=deps, wait=False)
    tx1 = cluster.start("transaction", v1, data, urls=deps, wait=False)
    for proc in (account, audit, pay1, tx1):
        wait_for(proc, "/readyz")

    status, old = call(pay1.url + "/payments", "POST", {"account": 5, "amount": 100})
    assert status == 201
    assert "fee" not in old

    pay2 = cluster.start("payment", v2, data, urls=deps, wait=False)
    tx2 = cluster.start("transaction", v2, data, urls=deps, wait=False)
    assert wait_for(pay2, "/readyz")["version"] == "2.0.0"
    assert wait_for(tx2, "/readyz")["version"] == "2.0.0"
    status, new = call(pay2.url + "/payments", "POST", {"account": 5, "amount": 200})
    assert status == 201, new
    assert new["fee"] == 0
    assert new["balance"] == 1_000_000 - 300
    assert new["receipt"] == receipt_for(new)
    # v1 keeps working after v2 migrated the shared table
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


def test_v3_payment_never_becomes_ready(cluster: Cluster, tmp_path: Path) -> None:
    """v3 payment is alive but its readiness stays 503 naming the missing FRAUD_URL."""
    v3 = make_release(tmp_path, "v3")
    data = tmp_path / "data"
    account = cluster.start("account", v3, data, wait=False)
    audit = cluster.start("audit", v3, data, wait=False)
    deps = {"account": account.url, "audit": audit.url}
    payment = cluster.start("payment", v3, data, urls=deps, wait=False)
    transaction = cluster.start("transaction", v3, data, urls=deps, wait=False)
    wait_for(payment, "/healthz")

    assert wait_for(transaction, "/readyz")["version"] == "3.0.0"
    status, transfer = call(
        transaction.url + "/transactions", "POST", {"from": 1, "to": 2, "amount": 5}
    )
    assert (status, transfer["currency"]) == (201, "EUR")

    assert call(payment.url + "/healthz") == (
        200,
        {"status": "ok", "service": "payment", "version": "3.0.0"},
    )
    deadline = time.monotonic() + 1.0  # well past the 0.5 s readiness cache
    while time.monotonic() < deadline:
        status, body = call(payment.url + "/readyz")
        assert status == 503
        assert body["ready"] is False
        assert body["reason"] == "fraud-check service not configured (FRAUD_URL)"
        time.sleep(0.1)


def test_overlays_change_only_what_the_release_notes_say() -> None:
    """Each overlay bumps VERSION in an otherwise unchanged phoenix_common, plus service files."""
    base = (PHOENIX / "services" / "phoenix_common.py").read_text()
    assert 'VERSION = "1.0.0"' in base
    for version in ("v2", "v3"):
        overlay = PHOENIX / "releases" / version
        files = sorted(p.relative_to(overlay).as_posix() for p in overlay.rglob("*.py"))
        assert files == [
            "services/payment.py",
            "services/phoenix_common.py",
            "services/transaction.py",
        ]
        common = (overlay / "services" / "phoenix_common.py").read_text()
        number = version[1:]
        assert common == base.replace('VERSION = "1.0.0"', f'VERSION = "{number}.0.0"')
    v2_transaction = PHOENIX / "releases" / "v2" / "services" / "transaction.py"
    v3_transaction = PHOENIX / "releases" / "v3" / "services" / "transaction.py"
    assert v2_transaction.read_text() == v3_transaction.read_text()
