"""What a check found: :class:`Finding` with a :class:`Severity`, shared by every layer.

Gates (``airlock.checks``), the database layer, bundles and the go/no-go report all speak in
findings; this module sits below all of them so that none has to import another to do so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from airlock.errors import Location

__all__ = ["Finding", "Severity", "has_errors"]


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


def has_errors(findings: list[Finding]) -> bool:
    return any(f.severity is Severity.ERROR for f in findings)
