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


COOKIE_VALUE = "c00kie-v4lue-never-shown"


class HeadersByValue(BaseHTTPRequestHandler):
    """Every header present, but with values that do not protect: a weak CSP, a leaky
    Referrer-Policy, an unknown X-Frame-Options and a session cookie without HttpOnly."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Security-Policy", "default-src 'self' 'unsafe-inline'")
        self.send_header("X-Frame-Options", "whimsy")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "unsafe-url")
        self.send_header("Set-Cookie", f"sid={COOKIE_VALUE}; Path=/; SameSite=Lax")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


def test_header_values_are_judged_and_cookie_values_never_shown(
    make_project: ProjectFactory,
) -> None:
    """Present but useless headers are findings; a session cookie without HttpOnly fails the
    gate, and its value appears nowhere in the output."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), HeadersByValue)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        project = make_project({"api": {}}, environments={"staging": {"posture": {"url": url}}})
        result = airlock(
            "check", "staging", "--posture", "--no-history", "--format", "json", cwd=project
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1, result.stderr
    assert COOKIE_VALUE not in result.stdout + result.stderr
    findings = json.loads(result.stdout)["findings"]
    by_code = {f["code"]: f for f in findings if f["code"].startswith("posture.")}
    assert set(by_code) == {
        "posture.weak-csp",
        "posture.invalid-header",
        "posture.leaky-referrer",
        "posture.insecure-cookie",
    }
    cookie = by_code["posture.insecure-cookie"]
    assert cookie["severity"] == "error" and cookie["evidence"]["cookie"] == "sid"
    assert by_code["posture.invalid-header"]["evidence"]["value"] == "whimsy"
    assert "unsafe-inline" in by_code["posture.weak-csp"]["message"]
