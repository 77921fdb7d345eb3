"""`airlock init`: a commented skeleton that checks clean, .gitignore lines, no overwrite."""

from __future__ import annotations

from pathlib import Path

from airlock.model import load_project

from .conftest import airlock


def test_init_writes_a_project_that_loads_and_the_gitignore_lines(tmp_path: Path) -> None:
    folder = tmp_path / "Shop Front"
    folder.mkdir()
    (folder / ".gitignore").write_text("node_modules/")  # kept, and no trailing newline
    result = airlock("init", cwd=folder)
    assert result.returncode == 0, result.stderr
    project = load_project(folder)
    assert project.project == "shop-front"
    assert sorted(project.environments) == ["production", "staging"]
    assert "#" in (folder / "airlock.yaml").read_text()  # commented for people
    ignore = (folder / ".gitignore").read_text().splitlines()
    assert ignore[0] == "node_modules/"
    assert ".airlock/*" in ignore and "!.airlock/secrets-baseline.json" in ignore
    check = airlock("check", "--no-history", cwd=folder)
    assert check.returncode == 1, check.stdout + check.stderr  # the skeleton's app.py is to write
    assert "model.source-missing" in check.stdout and "'app.py'" in check.stdout
    assert "None:" not in check.stdout
    (folder / "app.py").write_text("print('hello')\n")
    assert airlock("check", "--no-history", cwd=folder).returncode == 0


def test_init_refuses_to_overwrite_and_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "airlock.yaml").write_text("project: mine\n")
    result = airlock("init", "--name", "other", cwd=tmp_path)
    assert result.returncode == 2
    assert "already exists" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "airlock.yaml").read_text() == "project: mine\n"
    assert not (tmp_path / ".gitignore").exists()


def test_init_in_a_folder_with_a_bad_name_asks_for_one(tmp_path: Path) -> None:
    folder = tmp_path / "42"
    folder.mkdir()
    result = airlock("init", cwd=folder)
    assert result.returncode == 2 and "--name" in result.stderr
    assert airlock("init", "--name", "shop", cwd=folder).returncode == 0
    assert load_project(folder).project == "shop"
