"""The deploy's static gate judges the sealed release, never today's working tree.

In a git project that does not ignore `.airlock/`, the agent's own `agent.json` (its token) used
to be reported as a committed secret after the first deploy, and the next deploy *and the
rollback* were refused. Airlock's own files are never findings; a deploy scans the files it
seals; a rollback to a release that was good is not blocked by what the working copy holds now.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from airlock import api
from airlock.errors import GateFailed

from .conftest import WEBAPP, airlock
from .test_leaks import UPPER, GitRepo, fake

AWS_ID = fake("AKIA", 16, UPPER, seed=31)


def git_project(tmp_path: Path) -> GitRepo:
    """A project in a git repository whose .gitignore does not mention .airlock/."""
    repo = GitRepo(tmp_path / "shop")
    shutil.copyfile(WEBAPP, repo.root / "webapp.py")
    document = {
        "project": "shop",
        "services": {
            "api": {
                "run": "python webapp.py",
                "source": ["webapp.py", "settings.py"],
                "config": {"VERSION": "api-1"},
            }
        },
        "environments": {"staging": {"secrets": {"prefix": "STAGING_"}}},
        "gates": {"bake": "0.5s", "ready_timeout": "5s"},
    }
    repo.write("airlock.yaml", yaml.safe_dump(document, sort_keys=False))
    repo.write("settings.py", 'REGION = "eu-west-1"\n')
    repo.write(".gitignore", "__pycache__/\n")
    repo.commit("Initial import", "2026-11-02T10:00:00+00:00")
    return repo


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[GitRepo]:
    made = git_project(tmp_path)
    yield made
    with_env = made.root / ".airlock" / "envs"
    if with_env.is_dir():
        api.stop_env(made.root, "staging")


def test_airlocks_own_files_never_block_a_deploy_or_a_rollback(repo: GitRepo) -> None:
    api.build(repo.root, "v1")
    assert api.deploy(repo.root, "staging").outcome == "succeeded"
    assert (repo.root / ".airlock" / "envs" / "staging" / "agent.json").is_file()

    check = airlock("check", "--format", "json", cwd=repo.root)
    codes = [f["code"] for f in json.loads(check.stdout)["findings"]]
    assert "secret.committed" not in codes, check.stdout

    repo.write("settings.py", 'REGION = "eu-central-1"\n')
    api.build(repo.root, "v2")
    assert api.deploy(repo.root, "staging").outcome == "succeeded"
    assert api.rollback(repo.root, "staging").outcome == "succeeded"


def test_a_secret_in_the_sealed_files_refuses_the_deploy(repo: GitRepo) -> None:
    repo.write("settings.py", f'AWS_ACCESS_KEY_ID = "{AWS_ID}"\n')
    api.build(repo.root, "v1")
    with pytest.raises(GateFailed) as refused:
        api.deploy(repo.root, "staging")
    assert "secret.committed" in refused.value.message
    assert "settings.py" in refused.value.message
    assert AWS_ID not in refused.value.message


def test_a_good_release_is_not_blocked_by_a_secret_only_in_the_working_tree(
    repo: GitRepo,
) -> None:
    api.build(repo.root, "v1")
    assert api.deploy(repo.root, "staging").outcome == "succeeded"
    repo.write("notes.txt", f"temporary: {AWS_ID}\n")  # not sealed: not the release's business
    assert api.rollback(repo.root, "staging", to="v1").outcome == "succeeded"
    assert api.deploy(repo.root, "staging", "v1").outcome == "succeeded"
