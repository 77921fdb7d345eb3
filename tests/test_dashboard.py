"""The dashboard over real HTTP: a real ``airlock dashboard`` process serving a workspace with
real deploys (a good one, one with traffic during its bake, a bad one rolled back, a go/no-go
report), its pages, its JSON API against its OpenAPI document, and who may write."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from airlock import api
from airlock.web import charts

from .conftest import ProjectFactory

TOKEN = "dashboard-test-token-5c1e9a"
HEAVY = {"fastapi", "uvicorn", "jinja2", "starlette"}


@dataclass
class Workspace:
    project: Path
    v2: str  # the release with a bake under traffic and a GO report for production
    v3: str  # the release that was rolled back


def build_workspace(root: Path) -> tuple[Workspace, ProjectFactory]:
    """v1 and v2 deployed to staging (v2 baked under traffic), v3 rolled back, and a GO
    report for v2 to production (which needs one approval)."""
    factory = ProjectFactory(root)
    project = factory(
        {
            "db": {"config": {"VERSION": "db-1"}},
            "api": {"depends_on": ["db"], "metrics": "/metrics", "config": {"VERSION": "api-1"}},
        },
        environments={"staging": {}, "production": {"approvals": 1}},
        gates={"bake": "2s", "ready_timeout": "5s", "error_rate": 0.5, "p95_ms": 2000},
    )
    api.build(project, "v1")
    first = api.deploy(project, "staging")
    assert first.outcome == "succeeded", first.reason
    document = factory.read(project)
    document["services"]["api"]["config"]["VERSION"] = "api-2"
    factory.write(project, document)
    v2, _ = api.build(project, "v2")
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(first.endpoints["api"] + "/", timeout=2, trust_env=False)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        second = api.deploy(project, "staging")
    finally:
        stop.set()
        sender.join()
    assert second.outcome == "succeeded", second.reason
    document["services"]["api"]["config"]["MODE"] = "exit"
    factory.write(project, document)
    v3, _ = api.build(project, "v3")
    assert api.deploy(project, "staging").outcome == "rolled_back"
    assert api.gonogo(project, "production", "v2").go
    return Workspace(project, v2.id, v3.id), factory


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    built, factory = build_workspace(tmp_path_factory.mktemp("dashboard"))
    try:
        yield built
    finally:
        factory.cleanup()


class Dashboard:
    """``airlock dashboard`` in a child process, on a free port."""

    def __init__(self, project: Path, *args: str, token: str | None = TOKEN) -> None:
        env = {**os.environ, "COLUMNS": "200"}
        env.pop("AIRLOCK_DASHBOARD_TOKEN", None)
        if token is not None:
            env["AIRLOCK_DASHBOARD_TOKEN"] = token
        self.process = subprocess.Popen(
            [sys.executable, "-m", "airlock.cli", "dashboard", "--port", "0", *args],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        found = re.search(r"http://\S+/", line)
        if found is None:
            self.stop()
            raise AssertionError(f"no URL in {line!r}: {self.process.stderr.read()}")  # type: ignore[union-attr]
        self.url = found.group(0)
        self.first_line = line

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return httpx.get(self.url + path.lstrip("/"), timeout=30, trust_env=False, **kwargs)  # type: ignore[arg-type]

    def post(self, path: str, **kwargs: object) -> httpx.Response:
        return httpx.post(self.url + path.lstrip("/"), timeout=60, trust_env=False, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> str:
        self.process.terminate()
        try:
            _out, err = self.process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _out, err = self.process.communicate()
        return err


@pytest.fixture(scope="module")
def dashboard(workspace: Workspace) -> Iterator[Dashboard]:
    served = Dashboard(workspace.project)
    try:
        yield served
    finally:
        err = served.stop()
        assert "Traceback" not in err, err


def _approvals(project: Path, release: str) -> dict[str, list[dict[str, object]]]:
    _bundle, record = api.release_record(project, release)
    approvals: dict[str, list[dict[str, object]]] = record["approvals"]
    return approvals


def test_every_page_shows_what_the_library_knows(
    workspace: Workspace, dashboard: Dashboard
) -> None:
    """Environments with their services' versions and URLs, the timeline with both outcomes,
    the release with its bake charts and GO report, metrics and the audit log's status."""
    assert TOKEN not in dashboard.first_line
    home = dashboard.get("/")
    assert home.status_code == 200
    status = api.status(workspace.project, "staging")
    for service in status["services"]:
        assert service["url"] in home.text
    assert "v2" in home.text and "production" in home.text

    timeline = dashboard.get("/timeline").text
    assert "rolled back" in timeline and "succeeded" in timeline and "<svg" in timeline
    assert "exited with code 3" in timeline

    release = dashboard.get(f"/releases/{workspace.v2}").text
    assert release.count("<svg") >= 3 and "<polyline" in release
    assert "memory" in release and "p95 latency" in release and "error rate" in release
    assert ">GO<" in release and "static" in release
    assert dashboard.get("/releases/v3").text.count("rolled back") >= 1

    metrics = dashboard.get("/metrics").text
    if hasattr(api, "audit_verify"):
        assert "verifies:" in metrics
    if hasattr(api, "metrics"):
        assert "change failure rate" in metrics and "<svg" in metrics
    missing = dashboard.get("/releases/no-such-release")
    assert missing.status_code == 404 and "Traceback" not in missing.text
    assert dashboard.get("/static/live.js").status_code == 200


def test_the_bake_series_is_journaled_and_served(
    workspace: Workspace, dashboard: Dashboard
) -> None:
    """The v2 bake recorded memory and traffic over time; the API serves them."""
    evidence = dashboard.get(f"/api/releases/{workspace.v2}/evidence").json()
    [deployment] = [d for d in evidence["deployments"] if d["env"] == "staging"]
    samples = deployment["bake"]["services"]["api"]["samples"]
    assert len(samples["memory_mb"]) >= 2 and len(samples["traffic"]) >= 2
    seconds = [point[0] for point in samples["traffic"]]
    assert seconds == sorted(seconds)
    assert evidence["reports"][0]["verdict"] == "GO"


def test_the_api_mirrors_the_library(workspace: Workspace, dashboard: Dashboard) -> None:
    assert dashboard.get("/api/environments").json() == ["staging", "production"]
    assert dashboard.get("/api/status/staging").json()["version"] == "v2"
    history = dashboard.get("/api/history", params={"env": "staging"}).json()
    assert [d["status"] for d in history] == ["rolled_back", "succeeded", "succeeded"]
    assert [r["version"] for r in dashboard.get("/api/releases").json()] == ["v3", "v2", "v1"]
    assert dashboard.get("/api/releases/v2").json()["id"] == workspace.v2
    unknown = dashboard.get("/api/status/nowhere")
    assert unknown.status_code == 400 and "nowhere" in unknown.json()["error"]
    document = dashboard.get("/api/openapi.json").json()
    assert {"/api/approve", "/api/rollback", "/api/status/{env}"} <= set(document["paths"])


def test_no_unauthenticated_request_writes(workspace: Workspace, dashboard: Dashboard) -> None:
    """Writes without the token (or with a wrong one) are refused and change nothing; reads
    for a host that is not loopback are refused too (DNS rebinding)."""
    history = [d.id for d in api.history(workspace.project, None, 100)]
    body = {"env": "production", "release": "v2", "by": "mallory"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}):
        for path, payload in (("/api/approve", body), ("/api/rollback", {"env": "staging"})):
            answer = dashboard.post(path, json=payload, headers=headers)
            assert answer.status_code in {401, 403}, (path, headers, answer.text)
    form = {"env": "production", "by": "mallory", "token": "wrong"}
    assert dashboard.post(f"/releases/{workspace.v2}/approve", data=form).status_code == 403
    assert dashboard.post("/environments/staging/rollback", data={}).status_code == 401
    assert dashboard.post("/api/approve", content=b"not json").status_code == 401
    assert _approvals(workspace.project, "v2") == {}
    assert [d.id for d in api.history(workspace.project, None, 100)] == history
    rebound = dashboard.get("/api/environments", headers={"Host": "attacker.example:80"})
    assert rebound.status_code == 421
    for host in ("127.0.0.2:80", "localhost.:80", "[::1]:80"):  # loopback, by any name
        assert dashboard.get("/api/environments", headers={"Host": host}).status_code == 200


def test_a_dashboard_without_token_is_read_only(workspace: Workspace) -> None:
    served = Dashboard(workspace.project, token=None)
    try:
        assert served.process.stdout is not None
        said = served.first_line + served.process.stdout.readline()
        assert "read-only" in said, said
        assert served.get("/").status_code == 200
        answer = served.post(
            "/api/approve",
            json={"env": "production", "release": "v2", "by": "x"},
            headers={"Authorization": "Bearer anything"},
        )
        assert answer.status_code == 403 and "turned off" in answer.json()["error"]
    finally:
        served.stop()


def test_a_rollback_from_the_dashboard_brings_the_previous_release_back(tmp_path: Path) -> None:
    """With the token, the JSON API and the environment page's form each roll back for real:
    the previous release serves again, history and the audit log record it."""
    factory = ProjectFactory(tmp_path)
    project = factory(
        {"api": {"config": {"VERSION": "api-1"}}},
        environments={"staging": {}},
        gates={"bake": "1s", "ready_timeout": "5s"},
    )
    served: Dashboard | None = None
    try:
        api.build(project, "v1")
        first = api.deploy(project, "staging")
        assert first.outcome == "succeeded", first.reason
        document = factory.read(project)
        document["services"]["api"]["config"]["VERSION"] = "api-2"
        factory.write(project, document)
        api.build(project, "v2")
        assert api.deploy(project, "staging").outcome == "succeeded"
        url = first.endpoints["api"] + "/"

        def serving() -> str:
            return httpx.get(url, timeout=5, trust_env=False).text

        assert "api-2" in serving()
        served = Dashboard(project)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        answer = served.post("/api/rollback", json={"env": "staging"}, headers=auth)
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert (result["kind"], result["version"], result["outcome"]) == (
            "rollback",
            "v1",
            "succeeded",
        )
        assert "api-1" in serving()

        form = served.post("/environments/staging/rollback", data={"token": TOKEN, "to": "v2"})
        assert form.status_code == 303
        assert "rollback%20to%20v2%3A%20succeeded" in form.headers["location"]
        assert "api-2" in serving()
        page = served.get(form.headers["location"].lstrip("/")).text
        assert "rollback to v2: succeeded" in page

        history = api.history(project, "staging", 10)
        assert [(d.kind, d.version, d.status) for d in history][:2] == [
            ("rollback", "v2", "succeeded"),
            ("rollback", "v1", "succeeded"),
        ]
        kinds = [entry["kind"] for entry in api.audit_show(project, "staging", 50)]
        assert kinds.count("rollback.finished") == 2, kinds
        assert api.audit_verify(project)["ok"]
    finally:
        if served is not None:
            err = served.stop()
            assert "Traceback" not in err, err
        factory.cleanup()


def test_the_api_finds_no_server_error_under_schemathesis(
    workspace: Workspace, dashboard: Dashboard, tmp_path: Path
) -> None:
    """schemathesis generates requests for every operation of /api/openapi.json (with the
    token, so the writes' own validation is exercised too): no answer is a 5xx."""
    tool = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(tool),
            "run",
            dashboard.url + "api/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "15",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--seed",
            "7",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # its cache stays out of the working tree
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""},
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert api.status(workspace.project, "staging")["version"] == "v2"


def test_off_loopback_it_needs_a_token_for_reads_too(workspace: Workspace) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "airlock.cli", "dashboard", "--host", "0.0.0.0", "--port", "0"],
        cwd=workspace.project,
        env={k: v for k, v in os.environ.items() if k != "AIRLOCK_DASHBOARD_TOKEN"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2 and "without a token" in refused.stderr
    assert "Traceback" not in refused.stderr
    served = Dashboard(workspace.project, "--host", "0.0.0.0")
    try:
        local = served.url.replace("0.0.0.0", "127.0.0.1")
        assert httpx.get(local + "api/environments", trust_env=False).status_code == 401
        page = httpx.get(local, trust_env=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(local + "api/environments", headers=bearer, trust_env=False).is_success
        with httpx.Client(base_url=local, trust_env=False) as client:
            assert client.post("/login", data={"token": "nope"}).status_code == 403
            signed_in = client.post("/login", data={"token": TOKEN})
            assert signed_in.status_code == 303
            assert TOKEN not in signed_in.headers["set-cookie"]
            assert client.get("/").status_code == 200
    finally:
        served.stop()


def test_a_port_in_use_is_a_clear_error(workspace: Workspace) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = subprocess.run(
            [sys.executable, "-m", "airlock.cli", "dashboard", "--port", port],
            cwd=workspace.project,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    assert f"port {port}" in result.stderr and "in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_does_not_load_the_web_stack() -> None:
    """`airlock --help` stays fast: FastAPI, uvicorn and Jinja2 load only for the dashboard."""
    code = (
        "import sys\nfrom airlock.cli import main\ntry:\n    main(['--help'])\n"
        "except SystemExit:\n    pass\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {HEAVY!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


def test_templates_and_assets_live_inside_the_package() -> None:
    """The wheel ships src/airlock whole (pyproject: packages = ["src/airlock"]), so the
    templates and static files the app loads from beside itself are in it."""
    from airlock.web import app

    package = Path(app.__file__).resolve().parent
    assert package.parent.name == "airlock" and package.parent.parent.name == "src"
    for name in ("base.html", "release.html", "environments.html", "metrics.html"):
        assert (package / "templates" / name).is_file()
    assert (package / "static" / "live.js").is_file()
    assert (package / "static" / "style.css").is_file()


def test_charts_escape_text_and_leave_gaps() -> None:
    chart = charts.line_chart(
        "<b>memory</b>",
        [charts.Series("a<script>", [(0, 1.0), (1, None), (2, 3.0), (3, 4.0)])],
        unit="MB",
        limit=5.0,
    )
    assert "<script>" not in chart and "&lt;script&gt;" in chart and "&lt;b&gt;" in chart
    assert chart.count("<polyline") == 1  # the gap splits the line; a lone point is a dot
    assert chart.count("<circle") == 3 and 'class="limit"' in chart
    assert "no data" in charts.line_chart("empty", [charts.Series("x", [(0, None)])])
