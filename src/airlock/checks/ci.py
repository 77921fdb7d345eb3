"""CI status of the commit being released (INC16): no release of a commit whose CI is red.

The commit being released is the project's ``git rev-parse HEAD`` (:func:`current_commit`).
Its CI result comes from one of two sources, named under ``gates.ci`` in ``airlock.yaml``:

* a **JUnit XML report** (``<testsuites>`` or ``<testsuite>``). It must say which commit it is
  for: a ``<property name="commit" value="SHA"/>`` in any ``<properties>`` element, else a
  sidecar file ``REPORT.commit`` (e.g. ``junit.xml.commit``), else a file named ``commit`` in
  the report's directory, holding the SHA (an abbreviation of 7 or more characters is fine);
* a **command** that prints the status of a commit (``{commit}`` in it is replaced by the SHA).
  It runs without a shell, in the project directory, and prints either JSON
  ``{"state": "success"|"failure"|"pending", "since": "ISO time", "url": "...", "commit": "SHA"}``
  (``since``, ``url`` and ``commit`` are optional) or one of those three words on a line.

:func:`ci_status` returns a :class:`CiResult`: the ``state`` (``success``, ``failure``,
``pending`` or ``unknown``), the findings (empty only when CI passed for this very commit) and
the ``evidence`` a release record keeps (source, commit, counts, url, ...). A gate that cannot
decide says no: ``pending`` and ``unknown`` come with an error finding.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airlock.errors import Location, UsageError
from airlock.findings import Finding, Severity

CODES: dict[str, str] = {
    "ci.failing": "CI is red for the commit being released (failing tests, or status failure).",
    "ci.pending": "CI has not finished for the commit being released; the gate cannot decide.",
    "ci.not-this-commit": "The CI result is for another commit, or does not say which one.",
    "ci.unavailable": "The CI result cannot be read: missing or invalid report, failed command.",
}

#: At most this many failing test cases are named in a finding.
MAX_FAILING = 5
STATES = ("success", "failure", "pending")


@dataclass(frozen=True)
class CiResult:
    """What the CI gate learned: a state, the findings, and evidence to record."""

    state: str
    findings: list[Finding] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.state == "success" and not self.findings


def current_commit(root: Path) -> str:
    """The full SHA of ``HEAD`` in ``root``; :class:`UsageError` if that is not a git repo."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--verify", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise UsageError(f"cannot run git in {root}: {exc}") from None
    if out.returncode != 0:
        reason = (out.stderr.strip().splitlines() or ["no HEAD commit"])[-1]
        raise UsageError(
            f"{root} is not a git repository with a commit, so the commit being released is "
            f"unknown ({reason})",
            hint="release from a git checkout of the project",
        )
    return out.stdout.strip()


def same_commit(wanted: str, reported: str) -> bool:
    """True if ``reported`` names ``wanted`` (in full or abbreviated to 7+ characters)."""
    a, b = wanted.strip().lower(), reported.strip().lower()
    if not a or not b:
        return False
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    return len(short) >= 7 and long.startswith(short)


def format_duration(seconds: float) -> str:
    """``3 days 4 hours``, ``2 hours 5 minutes``, ``40 minutes``: the two largest units."""
    total = int(max(seconds, 0))
    units = []
    for name, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        n, total = divmod(total, size)
        units.append((n, name))
    while units and units[0][0] == 0:
        units.pop(0)
    parts = [f"{n} {name}{'s' if n != 1 else ''}" for n, name in units[:2] if n]
    return " ".join(parts) or "less than a minute"


def ci_status(
    root: Path,
    commit: str | None = None,
    *,
    junit: Path | None = None,
    command: str | None = None,
    timeout: float = 30,
    now: datetime | None = None,
) -> CiResult:
    """The CI result for ``commit`` (default: :func:`current_commit` of ``root``).

    Exactly one of ``junit`` (relative paths are under ``root``) and ``command`` is given.
    """
    if (junit is None) == (command is None):
        raise UsageError("gates.ci needs exactly one of `junit` or `command`")
    sha = commit if commit is not None else current_commit(root)
    if junit is not None:
        path = junit if junit.is_absolute() else root / junit
        return _from_junit(path, sha)
    assert command is not None
    return _from_command(root, command, sha, timeout, now or datetime.now(UTC))


def _unavailable(
    message: str, evidence: dict[str, Any], location: Location | None = None, hint: str = ""
) -> CiResult:
    finding = Finding(
        "ci.unavailable",
        Severity.ERROR,
        message,
        location,
        hint=hint or "a CI gate that cannot read the result says no; fix the CI source",
        evidence=evidence,
    )
    return CiResult("unknown", [finding], evidence)


def _not_this_commit(sha: str, reported: str | None, evidence: dict[str, Any]) -> CiResult:
    if reported is None:
        message = f"the CI result does not say which commit it is for (releasing {sha[:12]})"
    else:
        message = f"the CI result is for commit {reported[:12]}, not {sha[:12]} being released"
    finding = Finding(
        "ci.not-this-commit",
        Severity.ERROR,
        message,
        hint="run CI for the commit being released, and record its SHA with the result",
        evidence=evidence,
    )
    return CiResult("unknown", [finding], evidence)


# --- JUnit ------------------------------------------------------------------------------------


def _junit_commit(path: Path, tree: ET.Element) -> str | None:
    for prop in tree.iter("property"):
        if prop.get("name") == "commit" and prop.get("value"):
            return prop.get("value")
    for sidecar in (path.with_name(path.name + ".commit"), path.with_name("commit")):
        try:
            text = sidecar.read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if text:
            return text.split()[0]
    return None


def _from_junit(path: Path, sha: str) -> CiResult:
    evidence: dict[str, Any] = {"source": "junit", "report": str(path), "commit": sha}
    try:
        data = path.read_bytes()
    except OSError as exc:
        return _unavailable(
            f"JUnit report {path} cannot be read: {exc.strerror or exc}",
            evidence,
            Location(str(path)),
            hint="run CI for this commit and point gates.ci.junit at its JUnit XML report",
        )
    try:
        tree = ET.fromstring(data)
    except ET.ParseError as exc:
        line, column = exc.position
        return _unavailable(
            f"JUnit report {path} is not valid XML: {exc}",
            evidence,
            Location(str(path), line, column + 1),
        )
    if tree.tag not in ("testsuites", "testsuite"):
        return _unavailable(
            f"JUnit report {path} has root <{tree.tag}>, not <testsuites> or <testsuite>",
            evidence,
            Location(str(path)),
        )
    tests = failures = errors = skipped = 0
    failing: list[str] = []
    for case in tree.iter("testcase"):
        tests += 1
        if case.find("failure") is not None:
            failures += 1
        elif case.find("error") is not None:
            errors += 1
        elif case.find("skipped") is not None:
            skipped += 1
            continue
        else:
            continue
        name = ".".join(x for x in (case.get("classname"), case.get("name")) if x)
        failing.append(name or "(unnamed test)")
    reported = _junit_commit(path, tree)
    evidence.update(
        reported_commit=reported, tests=tests, failures=failures, errors=errors, skipped=skipped
    )
    if reported is None or not same_commit(sha, reported):
        return _not_this_commit(sha, reported, evidence)
    if tests == 0:
        return _unavailable(f"JUnit report {path} holds no test cases", evidence)
    if failing:
        evidence["failing"] = failing[:MAX_FAILING]
        more = f" and {len(failing) - MAX_FAILING} more" if len(failing) > MAX_FAILING else ""
        finding = Finding(
            "ci.failing",
            Severity.ERROR,
            f"CI is red for {sha[:12]}: {failures} failed and {errors} errored of {tests} tests "
            f"({', '.join(failing[:MAX_FAILING])}{more})",
            Location(str(path)),
            hint="fix the failing tests and release a commit whose CI is green",
            evidence=evidence,
        )
        return CiResult("failure", [finding], evidence)
    return CiResult("success", [], evidence)


# --- command ----------------------------------------------------------------------------------


def _run(args: list[str], cwd: Path, timeout: float) -> tuple[int, str, str] | None:
    """Run ``args``; None if it did not finish within ``timeout`` (it and its children die)."""
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.communicate()
        return None
    return proc.returncode, out, err


def _parse_status(out: str) -> dict[str, Any] | None:
    text = out.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return None
        if isinstance(data, dict) and str(data.get("state", "")).lower() in STATES:
            data["state"] = str(data["state"]).lower()
            return data
        return None
    for line in reversed(text.splitlines()):
        word = line.strip().lower()
        if word in STATES:
            return {"state": word}
    return None


def _since(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _from_command(root: Path, command: str, sha: str, timeout: float, now: datetime) -> CiResult:
    try:
        args = [arg.replace("{commit}", sha) for arg in shlex.split(command)]
    except ValueError as exc:
        raise UsageError(f"gates.ci.command cannot be split into words: {exc}") from None
    if not args:
        raise UsageError("gates.ci.command is empty")
    evidence: dict[str, Any] = {"source": "command", "command": args[0], "commit": sha}
    try:
        ran = _run(args, root, timeout)
    except OSError as exc:
        return _unavailable(f"CI status command {args[0]!r} cannot run: {exc.strerror}", evidence)
    if ran is None:
        return _unavailable(
            f"CI status command {args[0]!r} did not answer within {timeout:g}s", evidence
        )
    code, out, err = ran
    if code != 0:
        last = (err.strip().splitlines() or ["(no error output)"])[-1].strip()
        evidence["exit_code"] = code
        return _unavailable(
            f"CI status command {args[0]!r} failed with exit code {code}: {last}", evidence
        )
    status = _parse_status(out)
    if status is None:
        return _unavailable(
            f"CI status command {args[0]!r} printed no status "
            "(expected JSON with a state, or success/failure/pending)",
            evidence,
        )
    state: str = status["state"]
    evidence["state"] = state
    if isinstance(status.get("url"), str):
        evidence["url"] = status["url"]
    reported = status.get("commit")
    if isinstance(reported, str):
        evidence["reported_commit"] = reported
        if not same_commit(sha, reported):
            return _not_this_commit(sha, reported, evidence)
    url = f" ({evidence['url']})" if "url" in evidence else ""
    if state == "failure":
        since = _since(status.get("since"))
        red = ""
        if since is not None:
            evidence["since"] = since.isoformat()
            evidence["red_seconds"] = int((now - since).total_seconds())
            red = f"; red for {format_duration((now - since).total_seconds())}"
        finding = Finding(
            "ci.failing",
            Severity.ERROR,
            f"CI is red for {sha[:12]}{red}{url}",
            hint="fix CI and release a commit whose CI is green",
            evidence=evidence,
        )
        return CiResult("failure", [finding], evidence)
    if state == "pending":
        finding = Finding(
            "ci.pending",
            Severity.ERROR,
            f"CI has not finished for {sha[:12]}{url}",
            hint="wait for CI to finish, then release again",
            evidence=evidence,
        )
        return CiResult("pending", [finding], evidence)
    return CiResult("success", [], evidence)
