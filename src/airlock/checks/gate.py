"""The static gate: every check that needs no running system, composed.

``airlock check`` and ``airlock deploy`` (for its one environment) both run it:

- the model: dependencies, cycles, references, ports, sources (:mod:`airlock.checks.static`);
- config files a service declares must parse (:mod:`airlock.checks.config_files`);
- for the environments asked for: parity, cross-environment references, literal, undefined and
  shared secrets (:mod:`airlock.checks.parity`), and API contracts against the release deployed
  there (:mod:`airlock.checks.contracts`);
- committed secrets in the working tree and the git history, less the reviewed baseline
  (:mod:`airlock.checks.leaks`, :mod:`airlock.checks.baseline`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airlock.checks import CODES
from airlock.checks.baseline import filter_findings, load_baseline
from airlock.checks.config_files import CODES as CONFIG_CODES
from airlock.checks.config_files import check_config_files
from airlock.checks.contracts import CODES as CONTRACT_CODES
from airlock.checks.contracts import check_contracts
from airlock.checks.leaks import scan_repository, scan_staged, scan_working_tree
from airlock.checks.parity import CODES as PARITY_CODES
from airlock.checks.parity import check_environments
from airlock.checks.static import check_project
from airlock.errors import UsageError
from airlock.findings import Finding, Severity
from airlock.model import Project


def all_codes() -> dict[str, str]:
    """Every finding code of the gates and what it means (imports each gate's module)."""
    from airlock.checks.ci import CODES as CI_CODES
    from airlock.checks.load import CODES as LOAD_CODES
    from airlock.checks.logscan import CODES as LOG_CODES
    from airlock.checks.posture import CODES as POSTURE_CODES
    from airlock.checks.release_gates import CODES as RELEASE_GATE_CODES

    return {
        **CODES,
        **CONFIG_CODES,
        **CONTRACT_CODES,
        **PARITY_CODES,
        **POSTURE_CODES,
        **LOG_CODES,
        **RELEASE_GATE_CODES,
        **CI_CODES,
        **LOAD_CODES,
        "gonogo.gate-error": "A gate could not run (unreachable system, unreadable input); a gate "
        "that cannot decide says no.",
        "gonogo.not-run": "A configured gate has no result for this release yet.",
        "migration.rehearsal-failed": "The pending migrations failed when rehearsed on a clone "
        "of the environment's database.",
        "secret.committed": "A secret (key, token, password, private key) is in the working tree "
        "or the git history.",
        "secret.history-not-scanned": "The project is not in a git repository, so only the files "
        "on disk were scanned for secrets.",
    }


def __getattr__(name: str) -> Any:
    # ALL_CODES is computed on first use: the posture gate's module loads sslyze
    if name == "ALL_CODES":
        return all_codes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class GateResult:
    findings: list[Finding] = field(default_factory=list)
    silenced: int = 0  # committed secrets silenced by the baseline
    scanned: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None  # the project folder checked (SARIF paths are relative to it)

    def to_dict(self) -> dict[str, Any]:
        """What ``airlock check --format json`` prints."""
        return {
            "findings": [f.to_dict() for f in self.findings],
            "errors": sum(f.severity is Severity.ERROR for f in self.findings),
            "warnings": sum(f.severity is Severity.WARNING for f in self.findings),
            "silenced_by_baseline": self.silenced,
            "scanned": self.scanned,
        }

    def worst(self) -> Severity | None:
        ranks = [f.severity for f in self.findings]
        return max(ranks, key=lambda s: s.rank) if ranks else None

    def fails(self, threshold: Severity) -> bool:
        return any(f.severity.rank >= threshold.rank for f in self.findings)


def run_gate(
    project: Project,
    *,
    root: Path,
    envs: Iterable[str] = (),
    deployed: Mapping[str, Project | None] | None = None,
    history: bool = True,
    scan_secrets: bool = True,
    sealed: Path | None = None,
) -> GateResult:
    """Every static finding. ``root`` is the project's folder on disk (for a sealed project,
    the working tree it was sealed from), where the git repository and the baseline are.

    With ``sealed`` (a release's ``files`` folder), secrets are looked for in the sealed files
    instead of the working tree and its history: a deploy judges the release it deploys, not
    what the working copy holds today."""
    result = GateResult(root=root)
    result.findings += check_project(project)
    result.findings += check_config_files(project)
    chosen = list(envs)
    if chosen:
        result.findings += check_environments(project, chosen, root=root)
        for env in chosen:
            result.findings += check_contracts(project, (deployed or {}).get(env))
    if scan_secrets and sealed is not None:
        result.findings += _sealed_secrets(sealed, root, result)
    elif scan_secrets:
        result.findings += _committed_secrets(root, history, result)
    return result


def _sealed_secrets(files: Path, root: Path, result: GateResult) -> list[Finding]:
    """Secrets in a sealed release's files, less the project's reviewed baseline."""
    scan = scan_working_tree(files, plain=True)
    remaining, silenced = filter_findings(
        scan.findings, load_baseline(repository_root(root) or root)
    )
    result.scanned = {"sealed": str(files), "bytes": scan.bytes_scanned, "seconds": scan.seconds}
    result.silenced = len(silenced)
    return list(remaining)


@dataclass
class SecretScan:
    """Committed secrets under a folder, less the reviewed baseline."""

    repository: Path | None  # the git repository holding the folder, if any
    findings: list[Finding]
    silenced: int
    bytes_scanned: int = 0
    seconds: float = 0.0


def scan_committed(root: Path, *, history: bool = True, staged: bool = False) -> SecretScan:
    """Scan the repository holding ``root`` (its history too, with ``history``; only the
    staged changes with ``staged``), or just the files under ``root`` outside git, and drop
    what the baseline records as reviewed."""
    repository = repository_root(root)
    if staged:
        if repository is None:
            raise UsageError(f"{root} is not in a git repository", hint="--staged needs git")
        scan = scan_staged(repository)
    else:
        scan = scan_repository(repository or root, history=history and repository is not None)
    remaining, silenced = filter_findings(scan.findings, load_baseline(repository or root))
    return SecretScan(
        repository,
        list(remaining),
        len(silenced),
        getattr(scan, "bytes_scanned", 0),
        getattr(scan, "seconds", 0.0),
    )


def _committed_secrets(root: Path, history: bool, result: GateResult) -> list[Finding]:
    found = scan_committed(root, history=history)
    repository = found.repository
    if repository is None:
        result.scanned = {"repository": None, "history": False}
        note = Finding(
            "secret.history-not-scanned",
            Severity.INFO,
            f"{root} is not in a git repository: only the files on disk were scanned",
            None,
        )
        findings = [note]
    else:
        result.scanned = {"repository": str(repository), "history": history}
        findings = []
    result.scanned.update({"bytes": found.bytes_scanned, "seconds": found.seconds})
    result.silenced = found.silenced
    return findings + found.findings


def posture_findings(project: Project, envs: Iterable[str]) -> list[Finding]:
    """Probe each environment's running system (INC13, INC14); see docs/posture.md."""
    from airlock.checks.posture import Target, probe

    findings: list[Finding] = []
    for env in envs:
        posture = project.environments[env].posture
        if posture is None:
            raise UsageError(
                f"environment {env!r} has no posture target",
                hint=f"add environments.{env}.posture: {{url: https://…}} to airlock.yaml",
            )
        target = Target(
            name=env,
            url=posture.url,
            admin_paths=list(posture.admin_paths),
            sensitive_paths=list(posture.sensitive_paths),
            cert_min_days=project.gates.cert_min_days,
            burst=posture.burst,
            http_port=posture.http_port,
            https_url=posture.https_url,
        )
        findings += probe(target)
    return findings


def repository_root(path: Path) -> Path | None:
    """The git repository holding ``path``, or None."""
    for candidate in (path, *path.parents):
        if (candidate / ".git").exists():
            return candidate
    return None
