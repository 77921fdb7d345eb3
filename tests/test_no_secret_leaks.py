"""Secrets never leak: planted values are searched for in every byte Airlock prints or writes.

Services here leak on purpose, the way careless services do: they dump their configuration as
JSON, as a Python ``repr``, in a query string and base64-encoded in their logs, and quote their
secrets in the bodies of failed readiness and health probes. A good deploy, a deploy that never
gets ready and one that fails its bake are followed by every reporting command in text and JSON;
then each planted value, in each of its encodings, is searched for in everything the commands
printed and in every file under ``.airlock/`` (the SQLite store and its WAL, logs, bundles,
reports). There must be no hit.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from airlock.masking import MASK

from .conftest import ProjectFactory, airlock

# A value with every character that an encoder treats specially: quote, backslash, slash,
# plus, equals, ampersand, percent, a space and non-ASCII letters.
TOKEN = 'tok"en\\pl4nted/é+=&% ünï-5fa2c9'
JWT = "jwt-pl4nted-7d41c09be8a2f3"
PLANTED = {"API_TOKEN": TOKEN, "JWT_SECRET": JWT}


def forms(value: str) -> set[str]:
    """How a program is likely to print ``value``: the forms that must never appear."""
    found = {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value)[1:-1],
        quote(value, safe=""),
        quote(value),
        quote_plus(value),
        base64.b64encode(value.encode()).decode(),
    }
    # Inside base64 of a longer text, only the characters the value alone determines are fixed.
    for prefix in ("", "a", "ab", "svc:"):
        encoded = base64.b64encode((prefix + value).encode()).decode()
        start = -(-8 * len(prefix.encode()) // 6)
        end = 8 * len((prefix + value).encode()) // 6
        found.add(encoded[start:end])
    return {f for f in found if len(f) >= 12}


def hits(blob: bytes, where: str) -> list[str]:
    problems = []
    for name, value in PLANTED.items():
        for form in forms(value):
            for encoding in ("utf-8", "utf-16-le"):
                if form.encode(encoding) in blob:
                    problems.append(f"{name} as {form!r} ({encoding}) in {where}")
    return problems


def leaky_project(make_project: ProjectFactory) -> Path:
    echo = {"ECHO_KEYS": "API_TOKEN,JWT_SECRET"}
    secrets_ = {"API_TOKEN": "${secret:API_TOKEN}", "JWT_SECRET": "${secret:JWT_SECRET}"}
    return make_project(
        {
            "accounts": {"config": {"VERSION": "accounts-1", **echo, **secrets_}},
            "api": {
                "depends_on": ["accounts"],
                "ready": "/readyz",
                "config": {"VERSION": "api-1", **echo, **secrets_},
            },
        },
        gates={"bake": "1.5s", "ready_timeout": "3s"},
    )


def set_mode(project: Path, factory: ProjectFactory, service: str, mode: str, version: str) -> None:
    document = factory.read(project)
    document["services"][service]["config"].update({"MODE": mode, "VERSION": version})
    factory.write(project, document)


@pytest.fixture(autouse=True)
def _planted(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PLANTED.items():
        monkeypatch.setenv(f"STAGING_{name}", value)
        monkeypatch.setenv(f"PRODUCTION_{name}", value[::-1] + "-prod")


def test_no_planted_secret_in_any_output_or_file(make_project: ProjectFactory) -> None:
    project = leaky_project(make_project)
    outputs: list[tuple[str, str]] = []
    codes: dict[str, int] = {}

    def run(*args: str) -> Any:
        result = airlock(*args, cwd=project)
        label = " ".join(args)
        outputs.append((label, result.stdout + result.stderr))
        codes[label] = result.returncode
        assert "Traceback" not in result.stderr, f"{label}:\n{result.stderr}"
        return result

    run("check", "--env", "staging")
    run("check", "--env", "staging", "--format", "json")
    run("release", "build", "--version", "v1")
    run("plan", "staging")
    good = run("deploy", "staging", "--format", "json")
    assert good.returncode == 0, good.stdout + good.stderr

    # v2: api never gets ready, and its readiness answer quotes its secrets.
    set_mode(project, make_project, "api", "unready-echo", "api-2")
    run("release", "build", "--version", "v2")
    unready = run("deploy", "staging")
    assert unready.returncode == 1
    assert "not ready" in unready.stderr + unready.stdout
    unready_json = run("deploy", "staging", "--format", "json")
    assert unready_json.returncode == 1
    assert MASK in json.loads(unready_json.stdout)["reason"]  # quoted, and masked

    # v3: api gets ready, then its health check fails during the bake, quoting its secrets.
    set_mode(project, make_project, "api", "unhealthy-echo", "api-3")
    run("release", "build", "--version", "v3")
    unhealthy = run("deploy", "staging", "--format", "json")
    assert unhealthy.returncode == 1, unhealthy.stdout + unhealthy.stderr
    assert "health check failed during bake" in json.loads(unhealthy.stdout)["reason"]
    run("deploy", "staging")

    for fmt in ("text", "json"):
        run("status", "staging", "--format", fmt)
        run("history", "staging", "--format", fmt)
        run("release", "list", "--format", fmt)
        run("release", "show", "v3", "--format", fmt)
        run("plan", "staging", "--format", fmt)
    for service in ("accounts", "api"):
        logs = run("logs", "staging", service)
        assert MASK in logs.stdout  # the service did print its secrets; Airlock masked them
    run("rollback", "staging")
    run("resume", "staging")
    run("env", "stop", "staging")

    problems: list[str] = []
    for label, text in outputs:
        problems += hits(text.encode(), f"the output of `airlock {label}`")
    files = [p for p in (project / ".airlock").rglob("*") if p.is_file()]
    assert any(p.name.endswith(".log") for p in files), "the services' logs were not found"
    assert any(p.suffix == ".db" for p in files), "the state store was not found"
    for path in files:
        problems += hits(path.read_bytes(), str(path.relative_to(project)))
    assert problems == []
