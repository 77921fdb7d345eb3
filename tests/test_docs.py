"""Docs stay in step with the code: every command and finding code is documented."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer

from airlock.checks import CODES
from airlock.cli import app

from .conftest import REPO


def commands(group: Any, prefix: str = "airlock") -> Iterator[tuple[str, Any]]:
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        if hasattr(command, "commands"):
            yield from commands(command, path)
        else:
            yield path, command


def test_every_command_has_help_and_is_documented() -> None:
    """Each CLI command has a help text and appears in docs/cli.md."""
    docs = (REPO / "docs" / "cli.md").read_text()
    found = list(commands(typer.main.get_command(app)))
    assert len(found) >= 14
    for path, command in found:
        assert (command.help or "").strip(), f"{path} has no help text"
        assert f"`{path}" in docs, f"{path} is missing from docs/cli.md"


def test_every_finding_code_is_documented() -> None:
    """Each finding code is explained in docs/findings.md, each lint rule in migration-lint.md."""
    from airlock import api
    from airlock.checks.gate import ALL_CODES
    from airlock.db.lint import RULES

    docs = (REPO / "docs" / "findings.md").read_text()
    for code in {**CODES, **ALL_CODES}:
        assert f"`{code}`" in docs, f"{code} is missing from docs/findings.md"
    for code in set(api.codes()) - set(RULES):
        assert f"`{code}`" in docs, f"{code} (airlock codes) is missing from docs/findings.md"
    lint_docs = (REPO / "docs" / "migration-lint.md").read_text()
    for code in RULES:
        assert f"`{code}`" in lint_docs, f"{code} is missing from docs/migration-lint.md"


def test_readme_quick_start_has_the_two_commands() -> None:
    """The README's quick start runs the demo and the test suite, as CI does."""
    readme = (REPO / "README.md").read_text()
    assert "python3 dev.py demo" in readme and "python3 dev.py test" in readme
    assert "dev.py test" in (REPO / ".ci" / "run").read_text()
