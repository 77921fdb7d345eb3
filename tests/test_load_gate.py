"""The load gate: real services, real HTTP, real Locust in a child process of its own."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from airlock import api
from airlock.checks import load
from airlock.checks.load import default_targets, run_load, url_variable
from airlock.checks.outcome import GateOutcome, Status
from airlock.errors import UsageError
from airlock.gonogo import run_load_gate
from airlock.model import load_project
from airlock.state import open_state

from .conftest import ProjectFactory, processes_under, running_from

FAST_LOAD = {"users": 4, "spawn_rate": 20, "duration": "2s"}


def gates(**load_gate: Any) -> dict[str, Any]:
    return {"bake": "0.5s", "ready_timeout": "5s", "load": {**FAST_LOAD, **load_gate}}


def deployed(project: Path) -> str:
    api.build(project, "v1")
    result = api.deploy(project, "staging")
    assert result.outcome == "succeeded", result.reason
    return result.release


def closed_port() -> str:
    """The URL of a port nothing listens on (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


URLS = {"api": "http://127.0.0.1:9001", "web-front": "http://127.0.0.1:9000/"}


def write_locustfile(project: Path, text: str, name: str = "load/locustfile.py") -> None:
    path = project / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def codes(outcome: GateOutcome) -> list[str]:
    return [f.code for f in outcome.findings]


# -- against a deployed environment --------------------------------------------------------------


def test_a_fast_environment_passes_with_plausible_figures(make_project: ProjectFactory) -> None:
    """Every declared endpoint of every service gets load; figures, names and record are there."""
    project = make_project(
        {
            "api": {"endpoints": ["GET /", "GET /healthz"]},
            "web-front": {"endpoints": ["GET /"]},
        },
        gates=gates(p50_ms=500, p95_ms=1000, p99_ms=2000, error_rate=0.01),
    )
    release = deployed(project)
    said: list[str] = []
    outcome = run_load_gate(project, "staging", progress=said.append)

    assert outcome.status is Status.PASS, outcome.summary
    assert outcome.gate == "load" and outcome.findings == []
    figures = outcome.evidence
    assert figures["requests"] > 0 and figures["failures"] == 0
    assert figures["error_rate"] == 0
    assert 0 <= figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"]
    assert figures["rps"] > 0
    assert figures["users"] == 4 and figures["duration_s"] > 1.5  # it ran its whole duration
    assert figures["locustfile"] == "default"
    assert figures["release"] == release
    assert figures["thresholds"] == {
        "p50_ms": 500,
        "p95_ms": 1000,
        "p99_ms": 2000,
        "error_rate": 0.01,
    }
    names = {entry["name"] for entry in figures["endpoints"]}
    assert names == {"api GET /", "api GET /healthz", "web-front GET /"}
    assert sum(e["requests"] for e in figures["endpoints"]) == figures["requests"]
    assert "p95" in outcome.summary and "errors over" in outcome.summary
    assert any("4 users" in line for line in said)

    with open_state(project) as store:
        (run,) = store.gate_runs(release, gate="load")
    assert run.passed and run.env == "staging"
    assert run.body["status"] == "pass"
    assert run.body["evidence"]["requests"] == figures["requests"]


def test_failing_requests_fail_the_error_rate(make_project: ProjectFactory) -> None:
    """30% of GET / answered 500 against a 5% target: load.error-rate with the figures."""
    project = make_project(
        {"api": {"endpoints": ["GET /"], "config": {"ERROR_RATE": "0.3"}}},
        gates=gates(error_rate=0.05, p95_ms=1000),
    )
    release = deployed(project)
    outcome = run_load_gate(project, "staging")

    assert outcome.status is Status.FAIL
    assert codes(outcome) == ["load.error-rate"]
    assert 0.2 < outcome.evidence["error_rate"] < 0.4
    finding = outcome.findings[0]
    assert "above the target of 5%" in finding.message
    assert "HTTP 500" in finding.message
    assert finding.location is not None and finding.location.path == "gates.load.error_rate"
    assert outcome.summary.startswith("error rate ")
    with open_state(project) as store:
        (run,) = store.gate_runs(release, gate="load")
    assert not run.passed and run.body["findings"][0]["code"] == "load.error-rate"


def test_responses_that_leak_card_numbers_fail_the_gate_masked(
    make_project: ProjectFactory,
) -> None:
    """INC15, the site leaking card numbers: with gates.logs set, sampled responses are scanned
    too; the finding names the request and never shows the number."""
    card = "4111 1111 1111 1111"
    project = make_project(
        {"api": {"endpoints": ["GET /", "GET /healthz"], "config": {"VERSION": f"card {card}"}}},
        gates={**gates(p95_ms=1000), "logs": {}},
    )
    release = deployed(project)
    outcome = run_load_gate(project, "staging")

    assert outcome.status is Status.FAIL
    assert codes(outcome) == ["logs.card-number"]
    assert outcome.findings[0].location is not None
    assert outcome.findings[0].location.file == "response to api GET /"
    assert outcome.evidence["responses_scanned"] >= 2
    stored = json.dumps(outcome.to_dict())
    assert card not in stored and card.replace(" ", "") not in stored
    with open_state(project) as store:
        (run,) = store.gate_runs(release, gate="load")
    assert card not in json.dumps(run.body)


def test_the_projects_locustfile_is_used(make_project: ProjectFactory) -> None:
    """A locustfile reaches services through AIRLOCK_URL_<SERVICE>; a user class without a host
    gets the first running service in airlock.yaml order."""
    project = make_project(
        {
            "api": {"config": {"VERSION": "api-1"}},
            "web-front": {"config": {"VERSION": "front-1"}},
        },
        gates=gates(locustfile="load/locustfile.py", error_rate=0),
    )
    write_locustfile(
        project,
        """
        import os

        from locust import HttpUser, constant, task


        def expect(response, version):
            if response.json().get("version") != version:
                response.failure(f"wrong service: {response.text}")


        class Visitor(HttpUser):
            wait_time = constant(0.1)

            @task
            def home(self):
                url = os.environ["AIRLOCK_URL_WEB_FRONT"] + "/"
                with self.client.get(url, name="front home", catch_response=True) as response:
                    expect(response, "front-1")


        class HostLess(HttpUser):
            wait_time = constant(0.1)

            @task
            def home(self):
                with self.client.get("/", name="host home", catch_response=True) as response:
                    expect(response, "api-1")
        """,
    )
    deployed(project)
    outcome = run_load_gate(project, "staging")

    assert outcome.status is Status.PASS, outcome.summary
    assert outcome.evidence["locustfile"] == "load/locustfile.py"
    names = {entry["name"] for entry in outcome.evidence["endpoints"]}
    assert names == {"front home", "host home"}
    assert outcome.evidence["failures"] == 0


def test_nothing_deployed_or_running_is_a_usage_error(make_project: ProjectFactory) -> None:
    """No release in the environment, or an environment that was stopped: deploy first."""
    project = make_project({"api": {"endpoints": ["GET /"]}}, gates=gates())
    with pytest.raises(UsageError, match="nothing is deployed") as raised:
        run_load_gate(project, "staging")
    assert raised.value.hint is not None and "airlock deploy staging" in raised.value.hint

    deployed(project)
    api.stop_env(project, "staging")
    with pytest.raises(UsageError, match="runs in 'staging'"):
        run_load_gate(project, "staging")


def test_an_environment_that_does_not_answer_fails(
    make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service process is frozen (SIGSTOP): no request completes, the gate fails."""
    monkeypatch.setattr(load, "STOP_GRACE_S", 1.0)
    project = make_project({"api": {"endpoints": ["GET /"]}}, gates=gates(p95_ms=1000))
    release = deployed(project)
    frozen = running_from(project, release)
    assert frozen
    for proc in frozen:
        proc.send_signal(signal.SIGSTOP)
    try:
        outcome = run_load_gate(project, "staging")
    finally:
        for proc in frozen:
            proc.send_signal(signal.SIGCONT)

    assert outcome.status is Status.FAIL
    assert codes(outcome) == ["load.unavailable"]
    assert "no request completed in 2 s" in outcome.summary
    with open_state(project) as store:
        (run,) = store.gate_runs(release, gate="load")
    assert not run.passed


def test_without_gates_load_the_gate_is_skipped(make_project: ProjectFactory) -> None:
    project = make_project({"api": {"endpoints": ["GET /"]}})
    outcome = run_load_gate(project, "staging")
    assert outcome.status is Status.SKIPPED and outcome.passed
    assert "gates.load" in outcome.summary


# -- against ports directly (no deploy) ----------------------------------------------------------


def test_a_closed_port_fails_as_unavailable(make_project: ProjectFactory) -> None:
    """Every request refused: the gate cannot decide, so it fails (not a latency verdict)."""
    project = load_project(make_project({"api": {"endpoints": ["GET /"]}}, gates=gates(p95_ms=5)))
    outcome = run_load(project, {"api": closed_port()})
    assert outcome.status is Status.FAIL
    assert codes(outcome) == ["load.unavailable"]
    assert "did not answer any of" in outcome.summary
    assert "Connection refused" in outcome.summary or "ConnectionRefused" in outcome.summary


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("from locust import HttpUser, task\n\n\nclass U(HttpUser)\n    pass\n", 4, "SyntaxError"),
        ("import os\nimport no_such_module_for_airlock\n", 2, "ModuleNotFoundError"),
    ],
)
def test_a_locustfile_that_does_not_load_is_named_with_its_line(
    make_project: ProjectFactory, text: str, line: int, expected: str
) -> None:
    project = make_project({"api": {}}, gates=gates(locustfile="load/locustfile.py"))
    write_locustfile(project, text)
    outcome = run_load(load_project(project), {"api": closed_port()})

    assert outcome.status is Status.FAIL
    assert codes(outcome) == ["load.unavailable"]
    finding = outcome.findings[0]
    assert f"load/locustfile.py:{line}: {expected}" in finding.message
    assert finding.location is not None
    assert (finding.location.file, finding.location.line) == ("load/locustfile.py", line)
    assert "Traceback" not in json.dumps(outcome.to_dict())


def test_a_locustfile_without_users_fails(make_project: ProjectFactory) -> None:
    project = make_project({"api": {}}, gates=gates(locustfile="load/locustfile.py"))
    write_locustfile(
        project, "from locust import HttpUser\n\nclass Base(HttpUser):\n    abstract = True\n"
    )
    outcome = run_load(load_project(project), {"api": closed_port()})
    assert codes(outcome) == ["load.unavailable"]
    assert "defines no user class" in outcome.summary


def test_a_crashing_worker_fails_with_its_last_words(make_project: ProjectFactory) -> None:
    project = make_project({"api": {}}, gates=gates(locustfile="load/locustfile.py"))
    write_locustfile(project, "import os\nprint('out of cheese', flush=True)\nos._exit(5)\n")
    outcome = run_load(load_project(project), {"api": closed_port()})
    assert codes(outcome) == ["load.unavailable"]
    assert "crashed (it exited with status 5): out of cheese" in outcome.summary


def test_a_hanging_worker_is_killed_with_its_children(make_project: ProjectFactory) -> None:
    """Past the time limit the worker's whole process group is killed, and the gate fails."""
    project = make_project({"api": {}}, gates=gates(locustfile="load/locustfile.py"))
    write_locustfile(
        project,
        f"""
        import subprocess
        import time

        subprocess.Popen([{sys.executable!r}, "-c", "import time; time.sleep(60)"])
        time.sleep(60)
        """,
    )
    outcome = run_load(load_project(project), {"api": closed_port()}, timeout=4)
    assert codes(outcome) == ["load.unavailable"]
    assert outcome.summary.startswith("load test did not finish within 4 s")
    assert [p for p in processes_under(project) if p.pid != os.getpid()] == []


def test_missing_locustfile_or_nothing_to_send_is_a_usage_error(
    make_project: ProjectFactory,
) -> None:
    project = load_project(
        make_project({"api": {}}, gates=gates(locustfile="load/missing.py"), name="one")
    )
    with pytest.raises(UsageError, match=r"load/missing\.py does not exist"):
        run_load(project, {"api": closed_port()})
    bare = load_project(make_project({"api": {}}, gates=gates(), name="two"))
    with pytest.raises(UsageError, match="no service declares `endpoints`"):
        run_load(bare, {"api": closed_port()})


def test_default_targets_and_url_variables(make_project: ProjectFactory) -> None:
    """Targets follow airlock.yaml order, only for running services, named service METHOD /path."""
    project = load_project(
        make_project(
            {
                "web-front": {"endpoints": ["GET /", "post /orders"]},
                "api": {"endpoints": ["DELETE /accounts/1"]},
                "idle": {"endpoints": ["GET /"]},
            },
            gates=gates(),
        )
    )
    targets = default_targets(project, URLS)  # service → stable URL, as a runtime gives them
    assert [(t.name, t.url) for t in targets] == [
        ("web-front GET /", "http://127.0.0.1:9000/"),
        ("web-front POST /orders", "http://127.0.0.1:9000/orders"),
        ("api DELETE /accounts/1", "http://127.0.0.1:9001/accounts/1"),
    ]
    assert url_variable("web-front") == "AIRLOCK_URL_WEB_FRONT"
    env = load.worker_environment(project, URLS)
    assert env["AIRLOCK_URL_API"] == "http://127.0.0.1:9001"
    assert "AIRLOCK_URL_IDLE" not in env
    assert load.default_host(project, URLS) == "http://127.0.0.1:9000"
