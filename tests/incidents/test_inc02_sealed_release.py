"""INC02: patches shipped as loose files, so nobody knew what was deployed.

Only a sealed bundle deploys; its id is what `status` reports; any changed file changes the id;
a bundle edited after sealing is refused at deploy and nothing changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from airlock import api

from ..conftest import ProjectFactory, airlock


def version_of(url: str) -> str:
    return str(httpx.get(url + "/", timeout=5).json()["version"])


def test_status_reports_the_sealed_bundle_id(make_project: ProjectFactory) -> None:
    """What `airlock status` shows is the id of the bundle that was deployed."""
    project = make_project({"api": {"config": {"VERSION": "api-1"}}})
    bundle, _ = api.build(project, "v1")
    assert airlock("deploy", "staging", cwd=project).returncode == 0
    status = json.loads(airlock("status", "staging", "--format", "json", cwd=project).stdout)
    assert status["release"] == bundle.id
    assert {s["release"] for s in status["services"]} == {bundle.id}


def test_a_loose_edit_does_not_reach_production(make_project: ProjectFactory) -> None:
    """Editing a file in the working tree after sealing changes nothing that runs."""
    project = make_project({"api": {"config": {"VERSION": "api-1"}}})
    api.build(project, "v1")
    source = project / "app" / "webapp.py"
    source.write_text(source.read_text().replace('"version": VERSION', '"version": "patched"'))
    result = api.deploy(project, "staging", "v1")
    assert version_of(result.endpoints["api"]) == "api-1"
    patched, _ = api.build(project, "v1-patched")
    assert patched.id != result.release


def test_a_bundle_edited_after_sealing_is_refused(make_project: ProjectFactory) -> None:
    """A sealed file changed on disk is detected at deploy: exit 2, named, nothing deployed."""
    project = make_project({"api": {"config": {"VERSION": "api-1"}}})
    first, _ = api.build(project, "v1")
    running = api.deploy(project, "staging", "v1")
    document = make_project.read(project)
    document["services"]["api"]["config"]["VERSION"] = "api-2"
    make_project.write(project, document)
    second, _ = api.build(project, "v2")
    sealed = second.files_dir / "app" / "webapp.py"
    sealed.chmod(0o644)
    sealed.write_text(sealed.read_text() + "\n# hot patch\n")

    result = airlock("deploy", "production", "--release", "v2", cwd=project)
    assert result.returncode == 2
    assert "modified after sealing" in result.stderr and "app/webapp.py" in result.stderr
    assert "Traceback" not in result.stderr
    staging = airlock("deploy", "staging", "--release", "v2", cwd=project)
    assert staging.returncode == 2
    assert version_of(running.endpoints["api"]) == "api-1"
    assert api.status(project, "staging")["release"] == first.id
    assert api.history(project, "production") == []


def test_migrations_are_sealed_too(make_project: ProjectFactory, tmp_path: Path) -> None:
    """Migration files are part of the bundle: editing one gives a new release id."""
    project = make_project({"api": {}})
    (project / "db" / "migrations").mkdir(parents=True)
    migration = project / "db" / "migrations" / "V1__init.sql"
    migration.write_text("CREATE TABLE t (id bigint PRIMARY KEY);\n")
    document = make_project.read(project)
    document["database"] = {"migrations": "db/migrations"}
    make_project.write(project, document)
    first, _ = api.build(project, "v1")
    assert "db/migrations/V1__init.sql" in first.manifest["files"]
    assert first.manifest["migrations"] == ["db/migrations/V1__init.sql"]
    migration.write_text("CREATE TABLE t (id bigint PRIMARY KEY, note text);\n")
    second, _ = api.build(project)  # "v1" again would be refused: it names the first content
    assert second.id != first.id
