"""SARIF output validates against the official SARIF 2.1.0 schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from airlock.checks import Finding, Severity
from airlock.checks.gate import ALL_CODES
from airlock.checks.sarif import to_sarif
from airlock.errors import Location

from .conftest import REPO, ProjectFactory, airlock

SCHEMA = REPO / ".cache" / "sarif-2.1.0.json"
needs_schema = pytest.mark.skipif(
    not SCHEMA.is_file(), reason="the SARIF schema is fetched by `python3 dev.py test` (npm)"
)


def validate(document: dict[str, object]) -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft4Validator(schema).validate(document)


@needs_schema
def test_findings_convert_to_valid_sarif(tmp_path: Path) -> None:
    """Findings with and without locations make a schema-valid log with one rule per code."""
    findings = [
        Finding(
            "deps.cycle",
            Severity.ERROR,
            "a → b → a",
            Location(str(tmp_path / "airlock.yaml"), 4, 5, "services.a"),
        ),
        Finding("config.parity-missing-key", Severity.WARNING, "missing", None, hint="set it"),
        Finding(
            "secret.committed",
            Severity.ERROR,
            "AWS key",
            Location(str(tmp_path / "x.py"), 2, None),
            evidence={"fingerprint": "ab" * 32},
        ),
    ]
    document = to_sarif(findings, root=tmp_path, rules=ALL_CODES, version="1.0")
    validate(document)
    run = document["runs"][0]  # type: ignore[index]
    results = run["results"]
    assert [r["level"] for r in results] == ["error", "warning", "error"]
    assert results[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == (
        "airlock.yaml"
    )
    assert {r["id"] for r in run["tool"]["driver"]["rules"]} >= set(ALL_CODES)


@needs_schema
def test_check_prints_valid_sarif(make_project: ProjectFactory) -> None:
    """`airlock check --format sarif` prints a valid log and keeps the exit code."""
    project = make_project({"a": {"depends_on": ["b"]}, "b": {"depends_on": ["a"]}})
    result = airlock("check", "--format", "sarif", "--no-history", cwd=project)
    assert result.returncode == 1
    document = json.loads(result.stdout)
    validate(document)
    assert document["runs"][0]["results"][0]["ruleId"] == "deps.cycle"
