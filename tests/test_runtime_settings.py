"""`environments.ENV.runtime`: local or ssh settings, placement checked with positions, the
hosts of an ssh environment belonging to it, and open_runtime choosing the module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from airlock.checks.static import check_project
from airlock.errors import ProjectError
from airlock.model import LocalRuntimeModel, SshRuntimeModel, load_project
from airlock.runtimes import RUNTIMES, open_runtime
from airlock.runtimes.local import LocalRuntime

from .conftest import ProjectFactory, airlock

FLEET: dict[str, Any] = {
    "type": "ssh",
    "hosts": {
        "web-1": {"address": "10.213.0.11", "roles": ["front"]},
        "web-2": {"address": "10.213.0.12", "roles": ["front"]},
        "db-1": {"address": "db-1.prod.shop.example", "user": "deploy", "port": 2222},
    },
    "placement": {"web": ["role:front"], "api": ["web-2", "db-1"]},
    "rollout": {"batch": "50%"},
}


def fleet_project(make_project: ProjectFactory, runtime: dict[str, Any]) -> Path:
    return make_project(
        {"api": {}, "web": {"depends_on": ["api"]}, "worker": {}},
        environments={
            "staging": {"runtime": "local", "secrets": {"prefix": "STAGING_"}},
            "production": {"runtime": runtime, "secrets": {"prefix": "PRODUCTION_"}},
        },
    )


def test_ssh_settings_and_placement(make_project: ProjectFactory) -> None:
    project = load_project(fleet_project(make_project, FLEET))
    assert isinstance(project.environments["staging"].runtime, LocalRuntimeModel)
    fleet = project.environments["production"].runtime
    assert isinstance(fleet, SshRuntimeModel)
    assert fleet.hosts_of("web") == ["web-1", "web-2"]
    assert fleet.hosts_of("api") == ["web-2", "db-1"]
    assert fleet.hosts_of("worker") == ["web-1", "web-2", "db-1"]  # not placed: every host
    assert fleet.rollout.size(2) == 1 and fleet.rollout.size(3) == 2
    assert fleet.hosts["db-1"].port == 2222 and fleet.host_keys == "strict"
    assert check_project(project) == []


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        ("kubernetes", "unknown runtime 'kubernetes'; Airlock has: local, ssh"),
        ({"type": "ssh", "hosts": {}}, "at least 1 item"),
        ({"type": "ssh", "hosts": {"a": {"address": "10.0.0.1"}}, "host_keys": "off"}, "pin"),
        ({"type": "ssh", "hosts": {"a": {"address": "a b"}}}, "without spaces"),
        ({**FLEET, "rollout": {"batch": "150%"}}, '"25%"'),
    ],
)
def test_bad_runtime_settings_are_clear_errors(
    make_project: ProjectFactory, runtime: Any, message: str
) -> None:
    project = fleet_project(make_project, runtime)
    with pytest.raises(ProjectError, match=r"airlock\.yaml:\d+:\d+") as caught:
        load_project(project)
    assert message in str(caught.value)


def test_placement_errors_are_findings_with_positions(make_project: ProjectFactory) -> None:
    runtime = {
        **FLEET,
        "placement": {"web": ["role:back"], "api": ["web-3"], "ghost": ["web-1"]},
    }
    project = fleet_project(make_project, runtime)
    result = airlock("check", "--no-history", "--format", "json", cwd=project)
    assert result.returncode == 1, result.stderr
    text = (project / "airlock.yaml").read_text().splitlines()
    found = {
        f["code"]: text[f["location"]["line"] - 1]
        for f in json.loads(result.stdout)["findings"]
        if f["code"].startswith("runtime.")
    }
    assert set(found) == {"runtime.unknown-host", "runtime.no-host", "runtime.unknown-service"}
    assert "role:back" in found["runtime.unknown-host"] or "web-3" in found["runtime.unknown-host"]
    assert "web" in found["runtime.no-host"]
    assert "ghost" in found["runtime.unknown-service"]


def test_an_ssh_hosts_address_belongs_to_its_environment(make_project: ProjectFactory) -> None:
    """INC01 with a fleet: staging's config pointing at a production host is caught."""
    project = make_project(
        {"api": {"config": {"UPSTREAM": "unset"}}},
        environments={
            "staging": {
                "runtime": "local",
                "secrets": {"prefix": "STAGING_"},
                "config": {"api": {"UPSTREAM": "http://db-1.prod.shop.example:8080"}},
            },
            "production": {
                "runtime": FLEET,
                "secrets": {"prefix": "PRODUCTION_"},
                "config": {"api": {"UPSTREAM": "http://10.213.0.11:8080"}},
            },
        },
    )
    result = airlock("check", "--env", "all", "--no-history", "--format", "json", cwd=project)
    codes = [f["code"] for f in json.loads(result.stdout)["findings"]]
    assert "config.cross-env-reference" in codes


def test_open_runtime_imports_the_module_the_environment_names(
    make_project: ProjectFactory, tmp_path: Path
) -> None:
    assert set(RUNTIMES) == {"local", "ssh"}
    project = load_project(
        make_project(
            {"api": {}},
            environments={"staging": {"runtime": {"type": "local", "dir": "run/{env}"}}},
        )
    )
    runtime = open_runtime(project, "staging", root=project.root)
    assert isinstance(runtime, LocalRuntime)
    assert runtime.name == "local"
    assert runtime.env_dir == project.root / "run" / "staging"


def test_the_schema_describes_both_runtimes(tmp_path: Path) -> None:
    result = airlock("schema", cwd=tmp_path)
    assert result.returncode == 0
    text = result.stdout
    for word in ("SshRuntimeModel", "placement", "host_keys", "LocalRuntimeModel"):
        assert word in text
