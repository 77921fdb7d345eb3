"""INC16: a commit was released while its CI had been red for three days.

The gate asks CI about the very commit being released (``git rev-parse HEAD``): red for HEAD is
NO-GO and says for how long; a green result for another commit does not count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airlock import api
from airlock.checks.ci import ci_status, current_commit

from ..conftest import ProjectFactory, airlock

NOW = datetime(2024, 5, 4, 12, 0, tzinfo=UTC)
GIT = ["-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false"]


def commit(repo: Path, text: str) -> str:
    """Commit a change in ``repo`` and return the new HEAD."""
    (repo / "app.py").write_text(text)
    subprocess.run(["git", "-C", str(repo), "add", "app.py"], check=True)
    subprocess.run(["git", "-C", str(repo), *GIT, "commit", "-qm", text], check=True)
    return current_commit(repo)


def status_command(tmp_path: Path, results: dict[str, str]) -> str:
    """A CI status command answering from ``results`` (commit → JSON), pending otherwise."""
    path = tmp_path / "ci-status.py"
    path.write_text(
        f"import sys\nresults = {results!r}\nprint(results.get(sys.argv[1], 'pending'))\n"
    )
    return f"{sys.executable} {path} {{commit}}"


def test_red_for_three_days_on_head_is_no_go(tmp_path: Path) -> None:
    """CI red for HEAD since three days gives ci.failing saying '3 days'."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    green = commit(repo, "v1")
    head = commit(repo, "v2 breaks the build")
    since = (NOW - timedelta(days=3, hours=2)).isoformat()
    cmd = status_command(
        tmp_path,
        {
            green: '{"state": "success"}',
            head: f'{{"state": "failure", "since": "{since}", "url": "https://ci/run/9"}}',
        },
    )
    result = ci_status(repo, command=cmd, now=NOW)
    [finding] = result.findings
    assert result.state == "failure" and finding.code == "ci.failing"
    assert "red for 3 days 2 hours" in finding.message and head[:12] in finding.message
    assert result.evidence["commit"] == head


def test_green_for_another_commit_does_not_count(tmp_path: Path) -> None:
    """A green JUnit report or status for the previous commit is not a pass for HEAD."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    green = commit(repo, "v1")
    head = commit(repo, "v2")

    report = tmp_path / "junit.xml"
    report.write_text(
        '<testsuite name="all"><properties>'
        f'<property name="commit" value="{green}"/></properties>'
        '<testcase classname="app" name="test_ok"/></testsuite>'
    )
    [finding] = ci_status(repo, junit=report).findings
    assert finding.code == "ci.not-this-commit" and green[:12] in finding.message

    cmd = status_command(tmp_path, {green: f'{{"state": "success", "commit": "{green}"}}'})
    [finding] = ci_status(repo, command=cmd).findings
    assert finding.code == "ci.pending" and head[:12] in finding.message

    stale = tmp_path / "stale-status.py"
    answer = json.dumps({"state": "success", "commit": green})
    stale.write_text(f"print({answer!r})\n")
    cmd = f"{sys.executable} {stale} {{commit}}"
    [finding] = ci_status(repo, command=cmd).findings
    assert finding.code == "ci.not-this-commit"


def test_the_go_no_go_for_a_red_commit_is_no_go_and_production_refuses_it(
    make_project: ProjectFactory, tmp_path: Path
) -> None:
    """The release sealed from a commit whose CI is red since three days: the go/no-go report
    says NO-GO and for how long, production (approvals: 1) refuses it; once CI is green for
    that same commit, the report is GO."""
    status_file = tmp_path / "ci-results.json"
    script = tmp_path / "ci-status.py"
    script.write_text(
        "import json, sys\n"
        f"results = json.load(open({str(status_file)!r}))\n"
        "print(json.dumps(results.get(sys.argv[1], {'state': 'pending'})))\n"
    )
    project = make_project(
        {"web": {"config": {"VERSION": "w-1"}}},
        environments={"staging": {}, "production": {"approvals": 1}},
        gates={
            "bake": "0.5s",
            "ready_timeout": "5s",
            "ci": {"command": f"{sys.executable} {script} {{commit}}", "timeout": "10s"},
        },
    )
    (project / ".gitignore").write_text(".airlock/\n")
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    subprocess.run(["git", "-C", str(project), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(project), *GIT, "commit", "-qm", "v1"], check=True)
    head = current_commit(project)
    since = (datetime.now(UTC) - timedelta(days=3, minutes=5)).isoformat()
    status_file.write_text(json.dumps({head: {"state": "failure", "since": since}}))
    bundle, _ = api.build(project, "v1")
    assert bundle.commit == head and not bundle.dirty

    result = airlock("gonogo", "production", "--format", "json", cwd=project)

    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    ci = next(g for g in report["gates"] if g["gate"] == "ci")
    assert report["verdict"] == "NO-GO" and ci["status"] == "fail"
    assert "3 days" in ci["summary"], ci["summary"]
    refused = airlock("deploy", "production", cwd=project)
    assert refused.returncode == 1 and "NO-GO (ci)" in refused.stderr

    status_file.write_text(json.dumps({head: {"state": "success"}}))
    assert api.gonogo(project, "production").verdict == "GO"
