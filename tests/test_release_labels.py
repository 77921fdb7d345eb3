"""Release labels say what a release is: one label, one content; +dirty for uncommitted work;
a deploy says when the working tree has moved on; a deploy that changes nothing does not bake."""

from __future__ import annotations

from pathlib import Path

from airlock import api

from .conftest import ProjectFactory, airlock
from .test_leaks import GitRepo


def test_a_label_names_one_content(make_project: ProjectFactory) -> None:
    project = make_project({"api": {"config": {"VERSION": "api-1"}}})
    assert airlock("release", "build", "--version", "v1", cwd=project).returncode == 0
    again = airlock("release", "build", "--version", "v1", cwd=project)
    assert again.returncode == 0  # the same content: the same release
    document = make_project.read(project)
    document["services"]["api"]["config"]["VERSION"] = "api-2"
    make_project.write(project, document)
    clash = airlock("release", "build", "--version", "v1", cwd=project)
    assert clash.returncode == 2
    assert "already names release" in clash.stderr and "Traceback" not in clash.stderr
    assert [b.version for b in api.releases(project)] == ["v1"]
    assert airlock("release", "build", "--version", "v2", cwd=project).returncode == 0
    assert airlock("deploy", "staging", "--release", "v1", cwd=project).returncode == 0


def test_a_release_sealed_from_uncommitted_changes_says_so(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "shop")
    ProjectFactory(tmp_path)({"api": {}}, name="shop")
    repo.commit("Initial import", "2026-11-02T10:00:00+00:00")
    clean, _ = api.build(repo.root, "v1")
    assert clean.version == "v1"
    (repo.root / "app" / "webapp.py").write_text("# changed\n", encoding="utf-8")
    dirty, _ = api.build(repo.root, "v2")
    assert dirty.label == "v2+dirty" and dirty.version == "v2"
    plan = airlock("plan", "staging", cwd=repo.root)
    assert "v2+dirty" in plan.stdout, plan.stdout
    listed = airlock("release", "list", cwd=repo.root)
    assert "v2+dirty" in listed.stdout
    repo.commit("Change the app", "2026-11-03T10:00:00+00:00")
    committed, new = api.build(repo.root, "v2")  # the same content, now committed
    assert committed.id == dirty.id and not new and committed.label == "v2"


def test_deploy_warns_when_the_working_tree_moved_on_and_skips_the_bake_of_no_change(
    make_project: ProjectFactory,
) -> None:
    project = make_project({"api": {}}, gates={"bake": "30s", "ready_timeout": "5s"})
    document = make_project.read(project)
    make_project.write(project, {**document, "gates": {"bake": "0.5s", "ready_timeout": "5s"}})
    api.build(project, "v1")
    first = airlock("deploy", "staging", cwd=project)
    assert first.returncode == 0 and "differs" not in first.stderr
    make_project.write(project, {**document, "gates": {"bake": "30s", "ready_timeout": "5s"}})
    (project / "app" / "webapp.py").write_text(
        (project / "app" / "webapp.py").read_text() + "\n# edited after sealing\n"
    )
    again = airlock("deploy", "staging", cwd=project)
    assert again.returncode == 0, again.stdout + again.stderr
    said = " ".join(again.stderr.split())
    assert "the working tree differs from the newest sealed release v1" in said
    assert "app/webapp.py" in said
    # v1 again: nothing starts, so the deploy does not wait through a bake
    assert "nothing changes" in again.stderr  # the progress, on stderr
    assert api.plan(project, "staging").engine_plan().bake_seconds == 0
