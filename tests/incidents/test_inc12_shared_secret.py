"""INC12: the JWT signing secret was identical in dev, staging and production.

Airlock compares secret values across environments without printing them (HMAC under a key made
fresh for each run) and fails when two environments share one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from airlock import api

from ..conftest import ProjectFactory, airlock

VALUE = "jwt-signing-key-the-same-everywhere-91f3"


def project_with_secrets(make_project: ProjectFactory) -> Path:
    return make_project(
        {"api": {"config": {"JWT_SECRET": "${secret:JWT_SECRET}"}}},
        environments={
            "dev": {"secrets": {"prefix": "DEV_"}},
            "staging": {"secrets": {"prefix": "STAGING_"}},
            "production": {"secrets": {"provider": "file", "path": "../prod-secrets.env"}},
        },
    )


def test_the_same_value_in_three_environments_is_refused(
    make_project: ProjectFactory, tmp_path: Path
) -> None:
    """One value shared by dev, staging and production is one error naming all three."""
    project = project_with_secrets(make_project)
    (tmp_path / "prod-secrets.env").write_text(f"JWT_SECRET={VALUE}\n")
    env = {"DEV_JWT_SECRET": VALUE, "STAGING_JWT_SECRET": VALUE}
    result = airlock(
        "check", "--env", "all", "--no-history", "--format", "json", cwd=project, env=env
    )
    assert result.returncode == 1
    shared = [
        f for f in json.loads(result.stdout)["findings"] if f["code"] == "secret.shared-across-envs"
    ]
    assert len(shared) == 1
    message = shared[0]["message"]
    assert all(f"JWT_SECRET in {e}" in message for e in ("dev", "staging", "production"))
    for output in (result.stdout, result.stderr):
        assert VALUE not in output
    sarif = airlock(
        "check", "--env", "all", "--no-history", "--format", "sarif", cwd=project, env=env
    )
    assert VALUE not in sarif.stdout


def test_different_values_pass_and_undefined_ones_are_named(
    make_project: ProjectFactory, tmp_path: Path, monkeypatch: object
) -> None:
    """Distinct values are fine; a secret one environment lacks is secret.undefined."""
    project = project_with_secrets(make_project)
    (tmp_path / "prod-secrets.env").write_text("JWT_SECRET=prod-only-value-0001\n")
    os.environ["DEV_JWT_SECRET"] = "dev-only-value-0002"
    os.environ.pop("STAGING_JWT_SECRET", None)
    try:
        result = api.check(project, envs=["all"], history=False)
    finally:
        os.environ.pop("DEV_JWT_SECRET", None)
    codes = [(f.code, f.evidence.get("env")) for f in result.findings]
    assert ("secret.undefined", "staging") in codes
    assert not any(code == "secret.shared-across-envs" for code, _ in codes)


def test_deploy_refuses_a_shared_secret(make_project: ProjectFactory, tmp_path: Path) -> None:
    """The static gate runs first at deploy: a shared secret stops the release."""
    project = project_with_secrets(make_project)
    (tmp_path / "prod-secrets.env").write_text(f"JWT_SECRET={VALUE}\n")
    api.build(project, "v1")
    result = airlock(
        "deploy",
        "production",
        cwd=project,
        env={"STAGING_JWT_SECRET": VALUE, "DEV_JWT_SECRET": "other-value-1"},
    )
    assert result.returncode == 1
    assert "secret.shared-across-envs" in result.stderr
    assert VALUE not in result.stdout + result.stderr
