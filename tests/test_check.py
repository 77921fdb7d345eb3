"""`airlock check`: static findings with stable codes, and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from airlock.checks.static import check_project
from airlock.model import load_project

from .conftest import PHOENIX, ProjectFactory, airlock


def codes(project: Path) -> list[str]:
    return [f.code for f in check_project(load_project(project))]


def test_phoenix_is_clean() -> None:
    """The shipped example has no findings."""
    assert codes(PHOENIX) == []


def test_unknown_dependency(make_project: ProjectFactory) -> None:
    """Depending on an undefined service is deps.unknown, located at the list entry."""
    project = make_project({"api": {"depends_on": ["db"]}})
    [finding] = check_project(load_project(project))
    assert finding.code == "deps.unknown"
    assert "'db'" in finding.message
    assert finding.location is not None and finding.location.path.endswith("depends_on.0")


def test_cycle_is_named(make_project: ProjectFactory) -> None:
    """A cycle is reported once, naming every service on it in order."""
    project = make_project(
        {
            "a": {"depends_on": ["c"]},
            "b": {"depends_on": ["a"]},
            "c": {"depends_on": ["b"]},
            "d": {},
        }
    )
    findings = check_project(load_project(project))
    assert [f.code for f in findings] == ["deps.cycle"]
    assert findings[0].message == "dependency cycle: a → c → b → a"


def test_self_dependency_is_a_cycle(make_project: ProjectFactory) -> None:
    """A service that depends on itself is a cycle of one."""
    project = make_project({"a": {"depends_on": ["a"]}})
    assert codes(project) == ["deps.cycle"]


def test_undefined_references(make_project: ProjectFactory) -> None:
    """References to a missing service, a missing database, or unknown syntax are errors."""
    project = make_project(
        {
            "api": {
                "config": {
                    "A": "${services.nope.url}",
                    "B": "${database.url}",
                    "C": "${whatever}",
                    "D": "$${literal}",
                }
            }
        },
        environments={"staging": {}},
    )
    findings = check_project(load_project(project))
    assert [f.code for f in findings] == ["config.undefined-reference"] * 3
    messages = " ".join(f.message for f in findings)
    assert "nope" in messages and "database" in messages and "${whatever}" in messages


def test_port_conflict(make_project: ProjectFactory) -> None:
    """Two services on one fixed port is model.port-conflict."""
    project = make_project({"a": {"port": 18080}, "b": {"port": 18080}})
    assert codes(project) == ["model.port-conflict"]


def test_exit_codes_and_json(make_project: ProjectFactory) -> None:
    """check exits 0 when clean, 1 on an error finding; --format json has stable keys."""
    project = make_project({"a": {}})
    assert airlock("check", cwd=project).returncode == 0
    make_project.write(
        project,
        {
            **make_project.read(project),
            "services": {
                "a": {
                    "run": "python app/webapp.py",
                    "source": ["app/webapp.py"],
                    "depends_on": ["ghost"],
                }
            },
        },
    )
    result = airlock("check", "--format", "json", cwd=project)
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["errors"] == 1
    [finding] = [f for f in data["findings"] if f["severity"] == "error"]
    assert set(finding) >= {"code", "severity", "message", "location", "hint", "evidence"}
    assert finding["code"] == "deps.unknown"
    assert finding["location"]["line"] is not None


def test_a_run_command_whose_script_is_not_sealed_is_an_error(tmp_path: Path) -> None:
    from airlock.checks.static import check_project
    from airlock.model import load_project

    (tmp_path / "app").mkdir()
    for name in ("app/api.py", "tools/start.sh", "web.py"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("")
    (tmp_path / "airlock.yaml").write_text(
        "project: shop\n"
        "services:\n"
        "  api: {run: python app/api.py, source: [app]}\n"
        "  web: {run: python web.py --port 1, source: [app/api.py]}\n"
        "  ops: {run: ./tools/start.sh, source: [app/]}\n"
        "  mod: {run: python -m http.server, source: [app]}\n"
        "environments: {staging: {}}\n"
    )
    found = [
        (f.location.line if f.location else None, f.message)
        for f in check_project(load_project(tmp_path))
        if f.code == "model.run-not-sealed"
    ]
    assert [line for line, _ in found] == [4, 5]  # web, ops
    assert "web.py" in found[0][1] and "./tools/start.sh" in found[1][1]
