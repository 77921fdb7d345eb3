"""Deploys against real processes: upgrade, automatic rollback, locks, resume, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from airlock import api
from airlock.state import open_state

from .conftest import ProjectFactory, airlock, processes_under, running_from

SECRET = "s3cr3t-value-9f8e7d"


def three_tier(make_project: ProjectFactory, **overrides: dict[str, Any]) -> Path:
    """db ← api ← web, each a real HTTP process; api and web check their dependency."""
    services: dict[str, dict[str, Any]] = {
        "db": {"config": {"VERSION": "db-1"}},
        "api": {
            "depends_on": ["db"],
            "config": {
                "VERSION": "api-1",
                "NEEDS": "${services.db.url}",
                "SECRET": "${secret:SHOP_SECRET}",
            },
        },
        "web": {
            "depends_on": ["api"],
            "config": {"VERSION": "web-1", "NEEDS": "${services.api.url}"},
        },
    }
    for name, change in overrides.items():
        services[name] = {**services[name], **change}
    return make_project(services)


def set_config(project: Path, factory: ProjectFactory, service: str, **values: str) -> None:
    document = factory.read(project)
    document["services"][service]["config"].update(values)
    factory.write(project, document)


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=5)


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGING_SHOP_SECRET", SECRET)
    monkeypatch.setenv("PRODUCTION_SHOP_SECRET", "another-value-for-production-5521")


def test_deploy_upgrade_status_history(make_project: ProjectFactory) -> None:
    """v1 deploys in order; v2 of one service replaces it while the rest are kept."""
    project = three_tier(make_project)
    api.build(project, "v1")
    first = api.deploy(project, "staging")
    assert first.outcome == "succeeded"
    assert first.started == ["db", "api", "web"]
    assert get(first.endpoints["web"] + "/").json() == {"version": "web-1"}

    set_config(project, make_project, "api", VERSION="api-2")
    api.build(project, "v2")
    second = api.deploy(project, "staging")
    assert second.outcome == "succeeded"
    assert second.started == ["api"] and sorted(second.kept) == ["db", "web"]
    assert second.endpoints == first.endpoints
    assert get(second.endpoints["api"] + "/").json() == {"version": "api-2"}

    state = api.status(project, "staging")
    assert state["version"] == "v2"
    assert {s["service"]: s["running"] for s in state["services"]} == {
        "api": True,
        "db": True,
        "web": True,
    }
    history = api.history(project, "staging")
    assert [d.status for d in history] == ["succeeded", "succeeded"]
    assert [d.version for d in history] == ["v2", "v1"]


def test_a_service_that_exits_at_once_is_rolled_back(make_project: ProjectFactory) -> None:
    """A new version that exits immediately fails the release; the old one keeps serving."""
    project = three_tier(make_project)
    api.build(project, "v1")
    good = api.deploy(project, "staging")
    set_config(project, make_project, "api", VERSION="api-2", MODE="exit")
    api.build(project, "v2")
    result = airlock("deploy", "staging", cwd=project)
    assert result.returncode == 1, result.stderr
    assert "api" in result.stdout and "rolled back" in result.stdout
    assert "Traceback" not in result.stderr
    # why it died: its exit code, its last words (from its log), and where to read more
    said = " ".join(result.stdout.split())
    assert "exited with code 3" in said, said
    assert "refusing to start (MODE=exit)" in said and "airlock logs staging api" in said
    assert get(good.endpoints["api"] + "/").json() == {"version": "api-1"}
    assert api.status(project, "staging")["version"] == "v1"
    [deployment] = [d for d in api.history(project, "staging") if d.version == "v2"]
    assert deployment.status == "rolled_back" and deployment.failed_service == "api"


def test_readiness_answering_500_times_out_and_names_the_probe(
    make_project: ProjectFactory,
) -> None:
    """A readiness path answering 500 never gets traffic; the message shows the probe."""
    project = three_tier(make_project)
    api.build(project, "v1")
    good = api.deploy(project, "staging")
    set_config(project, make_project, "db", VERSION="db-2", MODE="ready500")
    api.build(project, "v2")
    result = api.deploy(project, "staging")
    assert result.outcome == "rolled_back"
    assert result.failed_service == "db"
    assert result.reason is not None and "500" in result.reason
    assert get(good.endpoints["db"] + "/").json() == {"version": "db-1"}


def test_a_port_in_use_is_a_clear_error(make_project: ProjectFactory) -> None:
    """A fixed port held by another program stops the deploy before anything starts."""
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        project = three_tier(make_project, db={"port": port})
        api.build(project, "v1")
        result = airlock("deploy", "staging", cwd=project)
        assert result.returncode == 2
        assert str(port) in result.stderr and "in use" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        holder.close()


def test_secrets_never_reach_output_state_or_logs(make_project: ProjectFactory) -> None:
    """The secret reaches the service, but every file and output Airlock writes masks it."""
    project = three_tier(make_project)
    api.build(project, "v1")
    result = airlock("deploy", "staging", "--format", "json", cwd=project)
    assert result.returncode == 0, result.stderr
    logs = airlock("logs", "staging", "api", cwd=project)
    assert "loaded secret ****" in logs.stdout
    for text in (result.stdout, result.stderr, logs.stdout):
        assert SECRET not in text
    for path in (project / ".airlock").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_second_deploy_is_refused_while_one_runs(make_project: ProjectFactory) -> None:
    """While a deploy holds the lock, another is refused naming the holder and since when."""
    project = three_tier(make_project)
    api.build(project, "v1")
    with open_state(project) as store:
        store.begin(
            deployment_id="d-held",
            env="staging",
            kind="deploy",
            release_id="x",
            version="v0",
            previous_release_id=None,
            plan={},
        )
    result = airlock("deploy", "staging", cwd=project)
    assert result.returncode == 2
    assert "locked by" in result.stderr and f"pid {os.getpid()}" in result.stderr
    assert "since" in result.stderr and "d-held" in result.stderr


def _spawn_deploy(project: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "airlock.cli", "deploy", "staging"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def _wait_for_log(project: Path, service: str, text: str, timeout: float = 15) -> None:
    path = project / ".airlock" / "envs" / "staging" / "logs" / f"{service}.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_resume_rolls_back_a_killed_deploy(make_project: ProjectFactory) -> None:
    """A deploy killed with SIGKILL mid-way is rolled back by `airlock resume`."""
    project = three_tier(make_project, web={"ready": "/never"})
    api.build(project, "v1")
    make_project.write(project, {**make_project.read(project)})
    document = make_project.read(project)
    document["services"]["web"]["ready"] = "/readyz"
    make_project.write(project, document)
    api.build(project, "v1-good")
    good = api.deploy(project, "staging", "v1-good")
    set_config(project, make_project, "api", VERSION="api-2")
    document = make_project.read(project)
    document["services"]["web"]["ready"] = "/never"  # web v2 waits forever: time to kill us
    document["services"]["web"]["config"]["VERSION"] = "web-2"
    document["gates"]["ready_timeout"] = "60s"
    make_project.write(project, document)
    api.build(project, "v2")
    process = _spawn_deploy(project)
    _wait_for_log(project, "web", "web-2 listening")
    process.kill()
    process.wait()
    assert get(good.endpoints["api"] + "/").json() == {"version": "api-2"}  # switched, then killed
    refused = airlock("deploy", "staging", cwd=project)
    assert refused.returncode == 2 and "airlock resume staging" in refused.stderr

    resumed = airlock("resume", "staging", "--format", "json", cwd=project)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads(resumed.stdout)["outcome"] == "rolled_back"
    assert get(good.endpoints["api"] + "/").json() == {"version": "api-1"}
    assert get(good.endpoints["web"] + "/").json() == {"version": "web-1"}
    assert api.status(project, "staging")["lock"] is None
    again = airlock("resume", "staging", cwd=project)
    assert "nothing to resume" in again.stdout


def test_ctrl_c_rolls_back(make_project: ProjectFactory) -> None:
    """SIGINT during a deploy rolls it back, exits 1, and the old version serves."""
    project = three_tier(make_project)
    api.build(project, "v1")
    good = api.deploy(project, "staging")
    set_config(project, make_project, "api", VERSION="api-2")
    document = make_project.read(project)
    document["services"]["web"]["ready"] = "/never"
    document["services"]["web"]["config"]["VERSION"] = "web-2"
    document["gates"]["ready_timeout"] = "60s"
    make_project.write(project, document)
    api.build(project, "v2")
    process = _spawn_deploy(project)
    _wait_for_log(project, "web", "web-2 listening")
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 1, output
    assert "interrupted" in output and "Traceback" not in output
    assert get(good.endpoints["api"] + "/").json() == {"version": "api-1"}
    statuses = [d.status for d in api.history(project, "staging")]
    assert statuses == ["rolled_back", "succeeded"]


def test_rollback_command_returns_to_the_previous_release(make_project: ProjectFactory) -> None:
    """`airlock rollback` deploys the previous good release again."""
    project = three_tier(make_project)
    api.build(project, "v1")
    first = api.deploy(project, "staging")
    set_config(project, make_project, "web", VERSION="web-2")
    api.build(project, "v2")
    api.deploy(project, "staging")
    assert get(first.endpoints["web"] + "/").json() == {"version": "web-2"}
    result = airlock("rollback", "staging", cwd=project)
    assert result.returncode == 0, result.stderr
    assert get(first.endpoints["web"] + "/").json() == {"version": "web-1"}
    assert api.status(project, "staging")["version"] == "v1"
    assert api.history(project, "staging")[0].kind == "rollback"


def test_env_stop_leaves_nothing_running(make_project: ProjectFactory) -> None:
    """`airlock env stop` stops every service process and the agent."""
    project = three_tier(make_project)
    api.build(project, "v1")
    api.deploy(project, "staging")
    assert processes_under(project)
    result = airlock("env", "stop", "staging", cwd=project)
    assert result.returncode == 0
    deadline = time.monotonic() + 5
    while processes_under(project) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_under(project) == []
    status = api.status(project, "staging")
    assert status["services"] == [] and status["state"] == "stopped"
    shown = airlock("status", "staging", cwd=project)
    assert "stopped" in shown.stdout and "(v1)" in shown.stdout, shown.stdout


def test_status_says_when_a_deploy_was_interrupted(make_project: ProjectFactory) -> None:
    """A lock whose holder's process is gone is not shown as held: status says to resume."""
    project = three_tier(make_project)
    api.build(project, "v1")
    env = {**os.environ, "COLUMNS": "200", "AIRLOCK_TEST_KILL_AFTER": "2"}
    killer = Path(__file__).parent / "fixtures" / "killpoint.py"
    killed = subprocess.run(
        [sys.executable, str(killer), "deploy", "staging"], cwd=project, env=env, check=False
    )
    assert killed.returncode == -signal.SIGKILL
    assert api.status(project, "staging")["interrupted"] is True
    shown = airlock("status", "staging", cwd=project)
    assert "interrupted" in shown.stdout and "airlock resume staging" in shown.stdout
    assert "locked by" not in shown.stdout
    refused = airlock("deploy", "staging", cwd=project)
    assert refused.returncode == 2 and "airlock resume staging" in refused.stderr
    assert airlock("resume", "staging", cwd=project).returncode == 0
    assert api.status(project, "staging")["interrupted"] is False


def test_a_command_that_does_not_exist_fails_the_release(make_project: ProjectFactory) -> None:
    """A run command naming no program rolls the release back with the command in the reason."""
    project = three_tier(make_project)
    api.build(project, "v1")
    good = api.deploy(project, "staging")
    document = make_project.read(project)
    document["services"]["web"]["run"] = "no-such-program --serve"
    make_project.write(project, document)
    api.build(project, "v2")
    result = airlock("deploy", "staging", cwd=project)
    assert result.returncode == 1
    assert "no-such-program" in result.stdout and "Traceback" not in result.stderr
    assert get(good.endpoints["web"] + "/").json() == {"version": "web-1"}


def test_a_failed_first_deploy_leaves_nothing_running(make_project: ProjectFactory) -> None:
    """When the very first release fails, even the services that were ready are stopped."""
    project = three_tier(make_project)
    document = make_project.read(project)
    document["services"]["web"]["config"]["MODE"] = "exit"
    make_project.write(project, document)
    bundle, _ = api.build(project, "v1")
    result = api.deploy(project, "staging")
    assert result.outcome == "rolled_back" and result.failed_service == "web"
    assert running_from(project, bundle.id) == []
    assert api.status(project, "staging")["services"] == []


def test_emergency_commands_work_with_a_broken_project_file(
    make_project: ProjectFactory,
) -> None:
    """status, logs, rollback and env stop rely on the state store and the sealed release that
    is deployed, not on today's airlock.yaml, which may be half edited when things go wrong."""
    project = three_tier(make_project)
    api.build(project, "v1")
    api.deploy(project, "staging")
    set_config(project, make_project, "api", VERSION="api-2")
    api.build(project, "v2")
    assert api.deploy(project, "staging").outcome == "succeeded"
    (project / "airlock.yaml").write_text("project: shop\nservices: [oops\n")  # mid-edit

    assert airlock("check", cwd=project).returncode == 2  # the file itself is still refused
    status = airlock("status", "staging", "--format", "json", cwd=project)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["version"] == "v2"
    logs = airlock("logs", "staging", "api", cwd=project)
    assert logs.returncode == 0 and "api-2" in logs.stdout, logs.stderr
    back = airlock("rollback", "staging", cwd=project)
    assert back.returncode == 0, back.stdout + back.stderr
    assert api.history(project, "staging")[0].version == "v1"
    stop = airlock("env", "stop", "staging", cwd=project)
    assert stop.returncode == 0, stop.stderr
    assert processes_under(project / ".airlock") == []


def test_a_failed_first_deploy_leaves_no_agent_running(make_project: ProjectFactory) -> None:
    """Nothing of the environment serves after a first deploy that failed: nothing is left
    running for it either (no agent holding ports)."""
    project = three_tier(make_project, api={"config": {"VERSION": "api-1", "MODE": "exit"}})
    api.build(project, "v1")
    result = airlock("deploy", "staging", cwd=project)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the previous release kept serving" not in result.stdout  # there was none
    assert processes_under(project / ".airlock") == []
    assert api.status(project, "staging")["agent"] is False


@pytest.mark.parametrize("delay", [0.05, 0.1, 0.2, 0.4])
def test_ctrl_c_at_any_moment_ends_without_a_traceback(
    make_project: ProjectFactory, delay: float
) -> None:
    """SIGINT while the command line is still importing, or already working, ends it cleanly
    (exit 130, ended by the signal itself before Python handles it, or 0 when it was done),
    never with a traceback."""
    project = make_project({"api": {}})
    command = [sys.executable, "-c", "from airlock.entry import main; main()", "status", "staging"]
    proc = subprocess.Popen(command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130, -signal.SIGINT), err.decode()
    assert b"Traceback" not in err, err.decode()


def test_ctrl_c_while_python_shuts_down_ends_without_a_traceback(
    make_project: ProjectFactory,
) -> None:
    """SIGINT after the command is done, while the interpreter waits for a thread at exit
    (where Python would print "Exception ignored in: <module 'threading'>" and a traceback),
    ends the process by the signal."""
    project = make_project({"api": {}})
    code = (
        "import threading, time\n"
        "from airlock.entry import main\n"
        "threading.Thread(target=time.sleep, args=(30,)).start()\n"
        "main()\n"
    )
    command = [sys.executable, "-u", "-c", code, "status", "staging"]
    proc = subprocess.Popen(command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert "nothing deployed" in proc.stdout.readline().decode()
    time.sleep(0.5)  # the command returned: the interpreter is waiting for the thread
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (130, -signal.SIGINT), err.decode()
    assert b"Traceback" not in err, err.decode()
