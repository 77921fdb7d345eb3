"""Gates: each check returns :class:`Finding` objects with a stable, dotted code.

Codes are documented in ``docs/findings.md``; a test keeps that page and :data:`CODES` in step.
"""

from __future__ import annotations

from airlock.findings import Finding, Severity, has_errors

__all__ = ["CODES", "Finding", "Severity", "has_errors"]


CODES: dict[str, str] = {
    "deps.unknown": "A service depends on a service the project does not define.",
    "deps.cycle": "Services depend on each other in a cycle, so none of them could start first.",
    "config.undefined-reference": "A ${...} reference names something that does not exist.",
    "model.port-conflict": "Two services ask for the same fixed port.",
    "model.source-missing": "A service's `source` path does not exist, so it cannot be sealed.",
    "model.run-not-sealed": "A service's `run` names a script that no service seals.",
    "runtime.unknown-host": "An ssh environment's placement names a host or role it lacks.",
    "runtime.no-host": "A service of an ssh environment would run on no host.",
    "runtime.unknown-service": "An ssh environment's placement names an undefined service.",
    "migration.edited": "An applied migration's file changed after it ran.",
    "migration.missing": "An applied migration's file is gone.",
    "migration.out-of-order": "A pending migration's version is below the latest applied one.",
    "migration.drift": "The live schema differs from the one recorded after the last migrate.",
}
