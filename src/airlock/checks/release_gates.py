"""The log (INC15) and CI (INC16) gates of one release, as :class:`GateOutcome` for the go/no-go.

* :func:`logs_gate` scans what the release's own instances wrote to the service logs of every
  environment (``.airlock/envs/ENV/logs/SERVICE.log``, the lines prefixed
  ``[SERVICE-RELEASE8-...] ``): the rehearsal on staging and the bake. Card numbers and the
  patterns of ``gates.logs.patterns`` fail it, e-mail addresses are warnings. A release that has
  written no log line anywhere has not run, so there is nothing to judge: that fails too.
* :func:`ci_gate` asks CI about the commit the release was sealed from (recorded in its manifest,
  see :func:`airlock.bundle.git_source`). A release sealed from uncommitted changes, or outside
  git, is not any commit CI ran, so it fails.

Both are skipped when ``airlock.yaml`` does not configure them, and neither raises for what it
finds or cannot read: that is a failing outcome with a finding saying why.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airlock.checks.ci import CiResult, ci_status, format_duration
from airlock.checks.logscan import scan_log_files
from airlock.checks.outcome import GateOutcome, Status
from airlock.errors import UsageError
from airlock.findings import Finding, Severity
from airlock.model import Project

if TYPE_CHECKING:
    from airlock.bundle import Bundle

CODES: dict[str, str] = {
    "logs.no-logs": "The release has written no log line in any environment, so its logs cannot "
    "be checked.",
    "logs.unavailable": "The logs cannot be scanned: a log file cannot be read or a pattern in "
    "gates.logs.patterns is not a valid regular expression.",
}

LOGS = "logs"
CI = "ci"


# -- logs --------------------------------------------------------------------------------------


def release_prefix(service: str, release_id: str) -> re.Pattern[str]:
    """The prefix of the log lines that ``service``'s instances of a release wrote:
    ``[SERVICE-RELEASE8-SUFFIX] `` (see the agent's log pump)."""
    return re.compile(rf"\[{re.escape(service)}-{re.escape(release_id[:8])}-[^\]\s]*\] ?")


def logs_gate(
    project: Project,
    release_id: str,
    logs: Mapping[str, Mapping[str, Path]],
) -> GateOutcome:
    """Personal data in the log lines of release ``release_id`` (INC15).

    ``logs`` maps each environment to scan to its services' log files (as its runtime gives
    them, see :func:`airlock.gonogo.logs_gate`); only the lines the release's instances wrote
    are read. FAIL on card numbers and configured patterns, or when no such line exists anywhere
    (the release never ran); e-mail addresses are warnings. An id shorter than 8 characters is a
    :class:`UsageError`.
    """
    config = project.gates.logs
    if config is None:
        return GateOutcome.skipped(LOGS, "gates.logs is not configured in airlock.yaml")
    if len(release_id) < 8:
        raise UsageError(f"{release_id!r} is not a release id (16 hex characters)")
    chosen = list(logs)
    short = release_id[:8]
    findings: list[Finding] = []
    files: dict[str, int] = {}
    scanned = 0
    for env in chosen:
        for service, path in sorted(logs[env].items()):
            try:
                scan = scan_log_files(
                    [path],
                    patterns=config.patterns,
                    emails=config.emails,
                    line_prefix=release_prefix(service, release_id),
                )
            except UsageError as exc:
                return _logs_unavailable(exc, release_id, chosen)
            scanned += 1
            findings.extend(scan.findings)
            if scan.total_lines:
                files[str(path)] = scan.total_lines
    lines = sum(files.values())
    where = ", ".join(chosen) or "no environment"
    evidence: dict[str, Any] = {
        "release": release_id,
        "environments": chosen,
        "files_scanned": scanned,
        "lines_scanned": lines,
        "files": files,
        "card_numbers": _count(findings, "logs.card-number"),
        "patterns": _count(findings, "logs.pattern"),
        "emails": _count(findings, "logs.email"),
    }
    if not lines:
        first = "staging" if "staging" in chosen else (chosen[0] if chosen else "staging")
        message = (
            f"release {short} has not run in any environment yet (no log lines of its instances "
            f"in {where}), so there are no logs to check; deploy it to {first} first"
        )
        finding = Finding(
            "logs.no-logs",
            Severity.ERROR,
            message,
            hint=f"`airlock deploy {first}` the release, exercise it, then run the gate again",
            evidence={"release": release_id, "environments": chosen},
        )
        return GateOutcome.failed(LOGS, finding, evidence)
    ok = (
        f"no card numbers or configured patterns in {lines} log line{_s(lines)} of release "
        f"{short} ({len(files)} file{_s(len(files))} in {where})"
    )
    if evidence["emails"]:
        ok += f"; {evidence['emails']} e-mail address{'es' if evidence['emails'] != 1 else ''}"
    return GateOutcome.from_findings(LOGS, findings, ok=ok, evidence=evidence)


def _logs_unavailable(exc: UsageError, release_id: str, chosen: list[str]) -> GateOutcome:
    finding = Finding(
        "logs.unavailable",
        Severity.ERROR,
        f"the logs of release {release_id[:8]} cannot be scanned: {exc.message}",
        hint=exc.hint or "a log gate that cannot read the logs says no; fix the cause",
    )
    return GateOutcome.failed(LOGS, finding, {"release": release_id, "environments": chosen})


def _count(findings: list[Finding], code: str) -> int:
    return sum(1 for f in findings if f.code == code)


def _s(n: int) -> str:
    return "" if n == 1 else "s"


# -- CI ----------------------------------------------------------------------------------------


def ci_gate(project: Project, project_root: Path, bundle: Bundle) -> GateOutcome:
    """CI status of the commit ``bundle`` was sealed from (INC16).

    FAIL when the release was sealed outside git or from uncommitted changes
    (``ci.not-this-commit``), when CI is red, pending or for another commit, and when the result
    cannot be read (``ci.unavailable``, also for a :class:`UsageError` of the CI check).
    """
    config = project.gates.ci
    if config is None:
        return GateOutcome.skipped(CI, "gates.ci is not configured in airlock.yaml")
    source = bundle.source
    commit = bundle.commit
    evidence: dict[str, Any] = {"release": bundle.id, "commit": commit, "dirty": source["dirty"]}
    if commit is None:
        return _refused(
            f"release {bundle.id} was not sealed from a git commit (no repository, or none "
            "recorded), so CI cannot vouch for it",
            "seal the release from a git checkout whose commit CI has tested",
            evidence,
        )
    if bundle.dirty:
        return _refused(
            f"release {bundle.id} was sealed from uncommitted changes on top of {commit[:12]}, "
            f"so CI's result for {commit[:12]} cannot vouch for it",
            "commit the changes, let CI run for the new commit, then build the release again",
            evidence,
        )
    try:
        result = ci_status(
            project_root,
            commit,
            junit=Path(config.junit) if config.junit is not None else None,
            command=config.command,
            timeout=config.timeout,
        )
    except UsageError as exc:
        finding = Finding(
            "ci.unavailable",
            Severity.ERROR,
            f"the CI result for {commit[:12]} cannot be read: {exc.message}",
            hint=exc.hint or "fix gates.ci in airlock.yaml",
            evidence=evidence,
        )
        return GateOutcome.failed(CI, finding, evidence)
    return _outcome(result, commit, {**evidence, **result.evidence, "commit": commit})


def _refused(message: str, hint: str, evidence: dict[str, Any]) -> GateOutcome:
    finding = Finding("ci.not-this-commit", Severity.ERROR, message, hint=hint, evidence=evidence)
    return GateOutcome.failed(CI, finding, evidence)


def _outcome(result: CiResult, commit: str, evidence: dict[str, Any]) -> GateOutcome:
    sha = commit[:12]
    if result.passed:
        tests = evidence.get("tests")
        counted = f" ({tests} test{_s(tests)})" if isinstance(tests, int) else ""
        url = f" ({evidence['url']})" if isinstance(evidence.get("url"), str) else ""
        return GateOutcome(CI, Status.PASS, f"CI passed for {sha}{counted}{url}", [], evidence)
    if result.state == "failure":
        red = evidence.get("red_seconds")
        duration = f" for {format_duration(red)}" if isinstance(red, int | float) else ""
        failed = int(evidence.get("failures") or 0) + int(evidence.get("errors") or 0)
        counted = f" ({failed} failed test{_s(failed)})" if failed else ""
        summary = f"CI failing{duration}{counted} for commit {sha}"
        return GateOutcome(CI, Status.FAIL, summary, list(result.findings), evidence)
    if result.findings:
        outcome = GateOutcome.from_findings(
            CI, list(result.findings), ok=f"CI passed for {sha}", evidence=evidence
        )
        if outcome.status is Status.FAIL:
            return outcome
    # not passed, yet nothing said why: a gate that cannot decide says no
    finding = Finding(
        "ci.unavailable",
        Severity.ERROR,
        f"CI did not report success for {sha} (state {result.state})",
        hint="a CI gate that cannot decide says no; check the CI source",
        evidence=evidence,
    )
    return GateOutcome(CI, Status.FAIL, finding.message, [*result.findings, finding], evidence)
