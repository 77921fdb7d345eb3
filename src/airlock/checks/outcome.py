"""The verdict of one release gate, the shape every gate hands the go/no-go report.

A gate *passes*, *fails*, or is *skipped* because ``airlock.yaml`` does not configure it (or it
does not apply, e.g. migrations for a project without a database). A gate that cannot decide (an
unreachable environment, a report it cannot read, a command that hangs) **fails**, with the reason
as a finding: the report is GO only when no gate fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from airlock.findings import Finding, Severity


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIPPED = "skipped"


@dataclass
class GateOutcome:
    """What one gate decided, why (``summary``), its findings and its evidence (figures)."""

    gate: str
    status: Status
    summary: str
    findings: list[Finding] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status is not Status.FAIL

    @classmethod
    def from_findings(
        cls,
        gate: str,
        findings: list[Finding],
        *,
        ok: str,
        evidence: dict[str, Any] | None = None,
    ) -> GateOutcome:
        """FAIL when any finding is an error (summarised), else PASS with ``ok``."""
        errors = [f for f in findings if f.severity is Severity.ERROR]
        if errors:
            first = errors[0].message
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            return cls(gate, Status.FAIL, first + more, findings, evidence or {})
        return cls(gate, Status.PASS, ok, findings, evidence or {})

    @classmethod
    def failed(
        cls, gate: str, finding: Finding, evidence: dict[str, Any] | None = None
    ) -> GateOutcome:
        """FAIL for one reason: the finding, its message the summary."""
        return cls(gate, Status.FAIL, finding.message, [finding], evidence or {})

    @classmethod
    def skipped(cls, gate: str, why: str) -> GateOutcome:
        return cls(gate, Status.SKIPPED, why)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "status": self.status.value,
            "summary": self.summary,
            "findings": [f.to_dict() for f in self.findings],
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateOutcome:
        """Back from :meth:`to_dict` (findings come back as plain dicts in ``evidence``)."""
        from airlock.errors import Location

        findings = []
        for item in data.get("findings", []):
            where = item.get("location")
            findings.append(
                Finding(
                    item["code"],
                    Severity(item["severity"]),
                    item["message"],
                    Location(**where) if where else None,
                    item.get("hint"),
                    item.get("evidence") or {},
                )
            )
        return cls(
            data["gate"],
            Status(data["status"]),
            data["summary"],
            findings,
            data.get("evidence") or {},
        )
