"""Gates: each check returns :class:`Finding` objects with a stable, dotted code.

Codes are documented in ``docs/findings.md``; a test keeps that page and :data:`CODES` in step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from airlock.errors import Location


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"error": 3, "warning": 2, "info": 1}[self.value]


@dataclass(frozen=True)
class Finding:
    """One thing a check found: what, how bad, where, and what to do."""

    code: str
    severity: Severity
    message: str
    location: Location | None = None
    hint: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["severity"] = self.severity.value
        if self.location is not None:
            data["location"] = {
                "file": self.location.file,
                "line": self.location.line,
                "column": self.location.column,
                "path": self.location.path,
            }
        return data


CODES: dict[str, str] = {
    "deps.unknown": "A service depends on a service the project does not define.",
    "deps.cycle": "Services depend on each other in a cycle, so none of them could start first.",
    "config.undefined-reference": "A ${...} reference names something that does not exist.",
    "model.port-conflict": "Two services ask for the same fixed port.",
    "model.source-missing": "A service's `source` path does not exist, so it cannot be sealed.",
    "migration.edited": "An applied migration's file changed after it ran.",
    "migration.missing": "An applied migration's file is gone.",
    "migration.out-of-order": "A pending migration's version is below the latest applied one.",
    "migration.drift": "The live schema differs from the one recorded after the last migrate.",
}


def has_errors(findings: list[Finding]) -> bool:
    return any(f.severity is Severity.ERROR for f in findings)
