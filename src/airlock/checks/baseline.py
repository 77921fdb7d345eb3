"""Reviewed secret findings: the baseline that silences what a person has checked (INC11).

The baseline is ``.airlock/secrets-baseline.json`` in the repository, committed with the code.
Each entry names a secret by its fingerprint (the SHA-256 of its value) and its kind, and says
why it is not a problem, who reviewed it and when::

    {
      "version": 1,
      "entries": [
        {
          "fingerprint": "9f2c…64 hex digits…",
          "kind": "generic-secret",
          "reason": "test fixture: the fake SMTP server's password",
          "reviewed_by": "ana@example.org",
          "reviewed_at": "2024-05-02T09:14:00Z",
          "file": "tests/fixtures/smtp.py",
          "masked": "s3cr…"
        }
      ]
    }

Matching is on (fingerprint, kind) only, so a reviewed secret stays silenced when it moves to
another line or file, and a different secret on the same line is still reported. ``file`` and
``masked`` are for the people reading the file.

The fingerprint is not salted, so it is the same on every machine and for every scan. The
trade-off: anyone holding the baseline can test a guess of a value against it. For a real,
random secret that is hopeless; for a weak password it is a dictionary attack, but a value in the
baseline is (or was) in the repository's history anyway, so the baseline reveals nothing the
history does not.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airlock.checks.leaks import CODE, KINDS
from airlock.errors import UsageError
from airlock.findings import Finding

#: Where the baseline lives, relative to the repository root.
BASELINE_PATH = Path(".airlock") / "secrets-baseline.json"
VERSION = 1

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_REQUIRED = ("fingerprint", "kind", "reason", "reviewed_by", "reviewed_at")
_OPTIONAL = ("file", "masked")
_HINT = (
    "fix the file by hand, or delete it and review the findings again with "
    "`airlock secrets baseline --reason '…'`"
)


@dataclass(frozen=True)
class BaselineEntry:
    """One reviewed secret: which one (fingerprint and kind), why it is fine, who said so."""

    fingerprint: str
    kind: str
    reason: str
    reviewed_by: str
    reviewed_at: str
    file: str | None = None
    masked: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.fingerprint, self.kind)

    def to_dict(self) -> dict[str, str]:
        data = {name: getattr(self, name) for name in _REQUIRED}
        data.update({name: getattr(self, name) for name in _OPTIONAL if getattr(self, name)})
        return data


@dataclass(frozen=True)
class Baseline:
    """The reviewed secrets of one repository (empty when it has no baseline file)."""

    path: Path
    entries: tuple[BaselineEntry, ...] = ()

    def __len__(self) -> int:
        return len(self.entries)

    def silences(self, finding: Finding) -> bool:
        """Whether ``finding`` is a secret this baseline has reviewed."""
        key = _key_of(finding)
        return key is not None and key in self._keys

    @property
    def _keys(self) -> frozenset[tuple[str, str]]:
        return frozenset(entry.key for entry in self.entries)


def baseline_path(root: Path) -> Path:
    """The baseline file of the repository at ``root``."""
    return Path(root) / BASELINE_PATH


def _key_of(finding: Finding) -> tuple[str, str] | None:
    if finding.code != CODE:
        return None
    fingerprint, kind = finding.evidence.get("fingerprint"), finding.evidence.get("kind")
    if isinstance(fingerprint, str) and isinstance(kind, str):
        return (fingerprint, kind)
    return None


def load_baseline(root: Path) -> Baseline:
    """Read the baseline of the repository at ``root``; an absent file is an empty baseline.

    A file that is not valid JSON, or not the expected shape, is a :class:`UsageError` that names
    the file and the problem (and never quotes the file's values).
    """
    path = baseline_path(root)
    if not path.exists():
        return Baseline(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read: {exc.strerror}", hint=_HINT) from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: is not UTF-8 text", hint=_HINT) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
            hint=_HINT,
        ) from None
    return Baseline(path, tuple(_parse(path, data)))


def _parse(path: Path, data: Any) -> Iterable[BaselineEntry]:
    def bad(where: str, problem: str) -> UsageError:
        return UsageError(f"{path}: {where}: {problem}", hint=_HINT)

    if not isinstance(data, dict):
        raise bad("top level", f"must be an object with `version` and `entries`, not {_type(data)}")
    unknown = sorted(set(data) - {"version", "entries"})
    if unknown:
        raise bad("top level", f"unknown key {unknown[0]!r} (allowed: version, entries)")
    if data.get("version") != VERSION:
        raise bad("version", f"must be {VERSION}")
    entries = data.get("entries")
    if not isinstance(entries, list):
        raise bad("entries", f"must be a list, not {_type(entries)}")
    for index, item in enumerate(entries):
        where = f"entries[{index}]"
        if not isinstance(item, dict):
            raise bad(where, f"must be an object, not {_type(item)}")
        unknown = sorted(set(item) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            allowed = ", ".join((*_REQUIRED, *_OPTIONAL))
            raise bad(where, f"unknown key {unknown[0]!r} (allowed: {allowed})")
        for name in (*_REQUIRED, *_OPTIONAL):
            value = item.get(name)
            if name in _REQUIRED and value is None:
                raise bad(where, f"`{name}` is missing")
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise bad(f"{where}.{name}", f"must be a non-empty string, not {_type(value)}")
        if not _FINGERPRINT.fullmatch(item["fingerprint"]):
            raise bad(
                f"{where}.fingerprint",
                "must be 64 lowercase hex digits (the SHA-256 the scanner reports), "
                f"not {len(item['fingerprint'])} characters",
            )
        if item["kind"] not in KINDS:
            raise bad(f"{where}.kind", f"unknown kind; known kinds: {', '.join(KINDS)}")
        try:
            datetime.fromisoformat(item["reviewed_at"].replace("Z", "+00:00"))
        except ValueError:
            raise bad(
                f"{where}.reviewed_at", "must be an ISO 8601 time, like 2024-05-02T09:14:00Z"
            ) from None
        masked = item.get("masked")
        if masked is not None and len(masked.rstrip("…")) > 4:
            raise bad(f"{where}.masked", "may keep at most 4 characters of the secret")
        yield BaselineEntry(
            fingerprint=item["fingerprint"],
            kind=item["kind"],
            reason=item["reason"],
            reviewed_by=item["reviewed_by"],
            reviewed_at=item["reviewed_at"],
            file=item.get("file"),
            masked=masked,
        )


def _type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number" if isinstance(value, int | float) else "a value")


def default_reviewer(root: Path) -> str:
    """Who is reviewing, for ``reviewed_by``: git's ``user.email`` (or name), else the login."""
    for key in ("user.email", "user.name"):
        try:
            proc = subprocess.run(
                ["git", "config", "--get", key], cwd=root, capture_output=True, text=True
            )
        except (FileNotFoundError, NotADirectoryError):
            break
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.strip()
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def write_baseline(
    root: Path, findings: Iterable[Finding], *, reason: str, reviewed_by: str
) -> Path:
    """Add the secret findings to the baseline of the repository at ``root``; return its path.

    Entries already in the baseline keep their review; new ones get ``reason``, ``reviewed_by``
    and the current time. Findings other than ``secret.committed`` are ignored. The file is
    replaced atomically, and holds fingerprints and masked prefixes only, never a value.
    """
    reason, reviewed_by = reason.strip(), reviewed_by.strip()
    if not reason:
        raise UsageError(
            "a baseline entry needs a reason", hint="say why: --reason 'test fixture, not a key'"
        )
    if not reviewed_by:
        raise UsageError("a baseline entry needs a reviewer", hint="--reviewed-by you@example.org")
    baseline = load_baseline(root)
    entries = {entry.key: entry for entry in baseline.entries}
    now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    for finding in findings:
        key = _key_of(finding)
        if key is None or key in entries:
            continue
        masked = finding.evidence.get("masked")
        entries[key] = BaselineEntry(
            fingerprint=key[0],
            kind=key[1],
            reason=reason,
            reviewed_by=reviewed_by,
            reviewed_at=now,
            file=finding.location.file if finding.location else None,
            masked=masked if isinstance(masked, str) else None,
        )
    ordered = sorted(entries.values(), key=lambda e: (e.file or "", e.kind, e.fingerprint))
    document = {"version": VERSION, "entries": [entry.to_dict() for entry in ordered]}
    path = baseline.path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".secrets-baseline-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(document, out, indent=2, ensure_ascii=False)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def filter_findings(
    findings: Iterable[Finding], baseline: Baseline
) -> tuple[list[Finding], list[Finding]]:
    """Split findings into (still to act on, silenced by the baseline)."""
    remaining: list[Finding] = []
    silenced: list[Finding] = []
    for finding in findings:
        (silenced if baseline.silences(finding) else remaining).append(finding)
    return remaining, silenced
