"""Prove a rollback safe before the migrations run.

Airlock keeps the schema migrated when a release rolls back (expand/contract), so the release
that serves now must keep working on the new schema. The rehearsal migrates a clone of the
environment's database; here, the release that runs now is started against that clone in a
sandbox and its services' readiness and ``endpoints`` are sent. Any failure — a column it reads
was dropped or renamed, a new ``NOT NULL`` column it does not write — is a finding naming the
request, the service and the migration that most likely caused it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airlock.bundle import Bundle
from airlock.findings import Finding, Severity
from airlock.masking import Masker
from airlock.sandbox import Outcome, describe_logs, run_sandbox

CODE = "migration.rollback-unsafe"
UNPROVEN = "migration.rollback-unproven"

# Names PostgreSQL quotes in the errors a service reports: column "email" does not exist,
# relation "users" does not exist, null value in column "plan" violates not-null constraint…
_QUOTED = re.compile(r"""["'“]([A-Za-z_][A-Za-z0-9_$]*)["'”]""")


@dataclass(frozen=True)
class Proof:
    """What starting the running release on the migrated clone showed."""

    release: str  # the label of the release that runs now
    outcome: Outcome
    findings: list[Finding]

    def to_dict(self) -> dict[str, Any]:
        return {"release": self.release, **self.outcome.to_dict()}


def likely_migration(text: str, migrations: Sequence[tuple[str, str]]) -> str | None:
    """The pending migration ``(name, sql)`` that names an identifier quoted in ``text``,
    latest first (the newest change to a name is the likeliest to break its readers)."""
    names = {m.group(1).lower() for m in _QUOTED.finditer(text)}
    for name, sql in reversed(migrations):
        words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_$]*", sql.lower()))
        if names & words:
            return name
    return None


def observe(
    running: Bundle, env: str, *, project_root: Path, clone_url: str, masker: Masker
) -> Outcome:
    """Start ``running`` against the clone at ``clone_url`` and send what only reads: its
    readiness paths and its GET/HEAD ``endpoints`` (a rehearsal must write nowhere real)."""
    return run_sandbox(
        running,
        env,
        project_root=project_root,
        database_url=clone_url,
        masker=masker,
        reads_only=True,
    )


def judge(
    running: Bundle,
    before: Outcome | None,
    after: Outcome,
    migrations: Sequence[tuple[str, str]],
) -> Proof:
    """What the migrations broke: what fails on the migrated clone but worked on the clone
    before them. What fails both ways proves nothing either way and is said as a warning."""
    findings: list[Finding] = []
    failed_before = {(e.service, e.request) for e in before.failures} if before else set()
    unready_before = set(before.not_ready) if before else set()
    for service, why in after.not_ready.items():
        if service in unready_before:
            continue
        # a service that never got ready says why in its log, not in an answer
        logs = describe_logs({service: after.logs.get(service, [])})
        findings.append(_finding(running, service, f"never became ready: {why}", logs, migrations))
    for exchange in after.failures:
        if (exchange.service, exchange.request) in failed_before:
            continue
        what = f"{exchange.request} → {exchange.detail}"
        findings.append(_finding(running, exchange.service, what, "", migrations))
    already = sorted(unready_before) + sorted(f"{s} {r}" for s, r in failed_before)
    if already:
        findings.append(
            Finding(
                UNPROVEN,
                Severity.WARNING,
                f"the release that runs now ({running.label}) already fails on the clone before "
                f"the migrations ({', '.join(already)}): those cannot show what the migrations "
                "break",
                hint="its readiness or endpoints may need something only its environment's hosts "
                "reach; the rest of the proof stands",
            )
        )
    return Proof(running.label, after, findings)


def unproven(release: str, env: str, why: str) -> Finding:
    """The proof could not be made: a warning saying why (the rehearsal itself stands)."""
    return Finding(
        UNPROVEN,
        Severity.WARNING,
        f"a rollback to {release}, which runs in {env}, is not proven safe: {why}",
        hint="keep the release's sealed bundle in this working copy (.airlock/releases/)",
    )


def _finding(
    running: Bundle,
    service: str,
    what: str,
    logs: str,
    migrations: Sequence[tuple[str, str]],
) -> Finding:
    culprit = likely_migration(f"{what} {logs}", migrations)
    cause = f"; most likely {culprit}" if culprit else ""
    seen = f" (its log: {logs})" if logs else ""
    return Finding(
        CODE,
        Severity.ERROR,
        f"the release that runs now ({running.label}) fails on the migrated schema: "
        f"{service} {what}{cause}{seen}",
        hint="a rollback would leave it on this schema: keep what it reads until no running "
        "release needs it (expand now, contract in a later release)",
    )
