"""Findings as SARIF 2.1.0, the format code-scanning UIs read (GitHub, GitLab, Azure DevOps)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airlock.findings import Finding, Severity

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def _uri(file: str, root: Path) -> str:
    path = Path(file)
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def to_sarif(
    findings: Sequence[Finding],
    *,
    root: Path,
    rules: Mapping[str, str],
    version: str,
) -> dict[str, Any]:
    """One SARIF log with one run; ``rules`` maps every code to its one-line description."""
    used = sorted({f.code for f in findings} | set(rules))
    index = {code: i for i, code in enumerate(used)}
    results = []
    for finding in findings:
        result: dict[str, Any] = {
            "ruleId": finding.code,
            "ruleIndex": index[finding.code],
            "level": _LEVELS[finding.severity],
            "message": {"text": finding.message + (f" ({finding.hint})" if finding.hint else "")},
        }
        location = finding.location
        if location is not None and location.file:
            physical: dict[str, Any] = {
                "artifactLocation": {"uri": _uri(location.file, root), "uriBaseId": "SRCROOT"}
            }
            if location.line is not None and location.line >= 1:
                region: dict[str, Any] = {"startLine": location.line}
                if location.column is not None and location.column >= 1:
                    region["startColumn"] = location.column
                physical["region"] = region
            result["locations"] = [{"physicalLocation": physical}]
        fingerprint = finding.evidence.get("fingerprint")
        if isinstance(fingerprint, str):
            result["partialFingerprints"] = {"secretHash/v1": fingerprint}
        results.append(result)
    return {
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "airlock",
                        "version": version,
                        "rules": [
                            {
                                "id": code,
                                "shortDescription": {"text": rules.get(code, code)},
                            }
                            for code in used
                        ],
                    }
                },
                "originalUriBaseIds": {"SRCROOT": {"uri": root.resolve().as_uri() + "/"}},
                "results": results,
            }
        ],
    }
