"""`airlock check --env ENV --posture` probes the environment's running system."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .conftest import ProjectFactory, airlock


class Careless(BaseHTTPRequestHandler):
    """No security headers, CORS echoing any origin, and an open /admin."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        origin = self.headers.get("Origin")
        if origin:
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Access-Control-Allow-Credentials", "true")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


@pytest.fixture
def careless_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Careless)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_posture_findings_come_with_evidence(
    make_project: ProjectFactory, careless_url: str
) -> None:
    """Open CORS and an open admin path are errors with the request and response shown
    (`airlock check ENV --posture`, the environment given as an argument)."""
    project = make_project(
        {"api": {}},
        environments={"staging": {"posture": {"url": careless_url, "admin_paths": ["/admin"]}}},
    )
    result = airlock(
        "check", "staging", "--posture", "--no-history", "--format", "json", cwd=project
    )
    assert result.returncode == 1, result.stderr
    findings = json.loads(result.stdout)["findings"]
    codes = {f["code"] for f in findings}
    assert {"posture.cors-open", "posture.admin-exposed", "posture.missing-header"} <= codes
    cors = next(f for f in findings if f["code"] == "posture.cors-open")
    assert "evil.example" in cors["evidence"]["request"]


def test_posture_needs_a_target(make_project: ProjectFactory) -> None:
    """An environment without a posture target is a clear error, exit 2."""
    project = make_project({"api": {}}, environments={"staging": {}})
    result = airlock("check", "--env", "staging", "--posture", "--no-history", cwd=project)
    assert result.returncode == 2
    assert "has no posture target" in result.stderr and "Traceback" not in result.stderr


def test_an_unreachable_environment_fails_the_gate(make_project: ProjectFactory) -> None:
    """A gate that cannot decide is a failure, not a pass."""
    project = make_project(
        {"api": {}}, environments={"staging": {"posture": {"url": "http://127.0.0.1:9"}}}
    )
    result = airlock("check", "--env", "staging", "--posture", "--no-history", cwd=project)
    assert result.returncode == 1
    assert "posture.unreachable" in result.stdout
