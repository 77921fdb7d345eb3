"""Output that reads well at 80 columns and when piped: no line over 80, no cut-off words."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

from airlock import api

from .conftest import ProjectFactory, airlock

NARROW = {"COLUMNS": "80"}


def lines_of(*args: str, cwd: Path) -> list[str]:
    result = airlock(*args, cwd=cwd, env=NARROW)
    assert "Traceback" not in result.stderr
    return (result.stdout + result.stderr).splitlines()


def test_history_status_and_check_fit_80_columns(make_project: ProjectFactory) -> None:
    project = make_project(
        {
            "accounts-service": {"config": {"VERSION": "a-1"}},
            "payments-gateway": {
                "depends_on": ["accounts-service"],
                "config": {"VERSION": "p-1"},
            },
        }
    )
    api.build(project, "v1")
    assert api.deploy(project, "staging").outcome == "succeeded"
    document = make_project.read(project)
    document["services"]["payments-gateway"]["config"].update({"MODE": "exit"})
    make_project.write(project, document)
    api.build(project, "v2")
    assert api.deploy(project, "staging").outcome == "rolled_back"

    history = lines_of("history", "staging", cwd=project)
    status = lines_of("status", "staging", cwd=project)
    document["services"]["payments-gateway"]["depends_on"] = ["ghost-service-that-is-missing"]
    make_project.write(project, document)
    check = lines_of("check", "--no-history", cwd=project)
    for name, shown in (("history", history), ("status", status), ("check", check)):
        too_long = [line for line in shown if len(line) > 80]
        assert too_long == [], f"{name}: {too_long}"
        assert not any("…" in line for line in shown), f"{name}: {shown}"
    text = "\n".join(history)
    assert "rolled back" in text and "succeeded" in text and "exited with code 3" in text
    assert any("payments-gateway" in line and "http://" in line for line in status)
    assert any("deps.unknown" in line for line in check)


def test_help_rewraps_each_paragraph_instead_of_breaking_it_into_fragments(
    tmp_path: Path,
) -> None:
    """A command's description in `--help` is its docstring's paragraphs, rewrapped at the
    width: no row stops half way and goes on below (the line breaks of the source)."""
    for group in ([], ["db"], ["audit"], ["release"], ["gate"]):
        inner = [
            line[1:-1]
            for line in lines_of(*group, "--help", cwd=tmp_path)
            if line.startswith("│") and line.endswith("│")
        ]
        for row, following in pairwise(inner):
            continued = following[:4].strip() == "" and following.strip() != ""
            short = len(row.rstrip()) < 0.6 * len(row)
            assert not (short and continued), (
                f"airlock {' '.join(group)} --help breaks a paragraph after: {row.strip()!r}"
            )
