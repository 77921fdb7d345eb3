"""Migration files, named as Flyway names them, and their pure ordering and validation.

- ``V<version>__<description>.sql`` — versioned; versions like ``1``, ``1.1``, ``2.0.3`` (or
  ``2_0_3``) are ordered numerically, and ``1.0`` is the same version as ``1``;
- ``U<version>__<description>.sql`` — undoes ``V<version>``;
- ``R__<description>.sql`` — repeatable: applied after the versioned ones whenever its checksum
  changes, in description order.

Checksums are sha256 over normalised content (line endings, trailing whitespace and a BOM do not
count), so re-saving a file in another editor does not make it "edited". :func:`flyway_checksum`
computes the checksum Flyway records for the same file, to adopt a database Flyway migrated.

Other files in the folder (a README, Flyway's ``.sql.conf`` script settings, Java migrations,
sub-folders) are not migrations: they are skipped, each with a note saying why.

Nothing here touches a database: :func:`validate` compares files with history rows and returns
findings, like a linter; the migrator decides what to do with them.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from airlock.db.sql import normalise
from airlock.errors import Location, UsageError
from airlock.findings import Finding, Severity

Kind = Literal["V", "U", "R"]
_NAME = re.compile(
    r"^(?P<kind>[VUR])(?P<version>[0-9]+(?:[._][0-9]+)*)?__(?P<description>[^/]+)\.sql$"
)

Version = tuple[int, ...]


def parse_version(text: str) -> Version:
    """``"2.0.3"`` → ``(2, 0, 3)``; trailing zeros do not count, so ``1.0`` equals ``1``."""
    parts = [int(p) for p in re.split(r"[._]", text)]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def version_text(version: Version) -> str:
    return ".".join(str(p) for p in version)


def checksum(text: str) -> str:
    return hashlib.sha256(normalise(text).encode()).hexdigest()


def flyway_checksum(text: str) -> int:
    """The checksum Flyway stores for a SQL migration: CRC-32 over the UTF-8 bytes of each line
    without its line ending (``\\n``, ``\\r\\n`` or ``\\r``), with a byte order mark at the start
    of the first line left out, as a signed 32-bit integer. Line endings do not count, and
    neither do empty lines; trailing blanks do."""
    crc = 0
    first = True
    for line in _lines(text):
        if first:
            line = line.removeprefix(_BOM)
            first = False
        crc = zlib.crc32(line.encode("utf-8"), crc)
    return crc - (1 << 32) if crc >= 1 << 31 else crc


_BOM = "\ufeff"


def _lines(text: str) -> list[str]:
    """``text`` split where Java's ``BufferedReader.readLine`` splits it."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


@dataclass(frozen=True)
class MigrationFile:
    """One migration file on disk."""

    kind: Kind
    version: Version | None
    description: str
    path: Path
    checksum: str = field(compare=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def version_label(self) -> str | None:
        return version_text(self.version) if self.version is not None else None

    @property
    def label(self) -> str:
        return f"{self.kind}{self.version_label or ''} {self.description}"

    def read(self) -> str:
        return self.path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class Migrations:
    """Every migration file of a folder, ordered."""

    folder: Path
    versioned: tuple[MigrationFile, ...]
    undo: dict[Version, MigrationFile]
    repeatable: tuple[MigrationFile, ...]
    notes: tuple[str, ...] = ()  # files of the folder that are not migrations, and why

    def by_version(self, version: Version) -> MigrationFile | None:
        for migration in self.versioned:
            if migration.version == version:
                return migration
        return None


def discover(folder: Path) -> Migrations:
    """Read a migrations folder; badly named or duplicate files are errors."""
    if not folder.is_dir():
        raise UsageError(
            f"migrations folder {folder} does not exist",
            hint="create it, or point database.migrations (or --migrations) at the right folder",
        )
    versioned: dict[Version, MigrationFile] = {}
    undo: dict[Version, MigrationFile] = {}
    repeatable: dict[str, MigrationFile] = {}
    problems: list[str] = []
    notes: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir() or path.suffix != ".sql":
            notes.append(_ignored(path))
            continue
        match = _NAME.match(path.name)
        if match is None or (match["kind"] != "R") != bool(match["version"]):
            problems.append(
                f"{path.name}: not a migration name; use V<version>__<description>.sql, "
                "U<version>__<description>.sql or R__<description>.sql"
            )
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            problems.append(f"{path.name}: not UTF-8 text")
            continue
        kind: Kind = match["kind"]  # type: ignore[assignment]
        version = parse_version(match["version"]) if match["version"] else None
        migration = MigrationFile(
            kind, version, match["description"].replace("_", " "), path, checksum(text)
        )
        table: dict[Version, MigrationFile] | None = {"V": versioned, "U": undo}.get(kind)
        if table is not None:
            assert version is not None
            if version in table:
                problems.append(
                    f"{path.name}: version {version_text(version)} is already used by "
                    f"{table[version].name}"
                )
                continue
            table[version] = migration
        else:
            repeatable[migration.description] = migration
    for version, undo_file in undo.items():
        if version not in versioned:
            problems.append(
                f"{undo_file.name}: undoes version {version_text(version)}, which has no V file"
            )
    if problems:
        raise UsageError(
            f"problems in the migrations folder {folder}:\n  " + "\n  ".join(problems),
            hint="rename or remove these files",
        )
    return Migrations(
        folder=folder,
        versioned=tuple(versioned[v] for v in sorted(versioned)),
        undo=undo,
        repeatable=tuple(repeatable[d] for d in sorted(repeatable)),
        notes=tuple(notes),
    )


_JAVA = re.compile(r"^(?P<kind>[VUR])(?P<version>[0-9]+(?:[._][0-9]+)*)?__.+\.(java|class|kt)$")


def _ignored(path: Path) -> str:
    """Why a file or folder of the migrations folder is not a migration."""
    if path.is_dir():
        return f"{path.name}/: a folder, ignored (only files directly in the folder are read)"
    if path.name.endswith(".sql.conf"):
        return (
            f"{path.name}: Flyway's settings for one script, ignored (Airlock decides per "
            "statement whether a transaction is possible)"
        )
    java = _JAVA.match(path.name)
    if java is not None:
        what = f"version {version_text(parse_version(java['version']))}" if java["version"] else ""
        return f"{path.name}: a Java migration, ignored (Airlock runs SQL files only)" + (
            f"; {what} stays a gap" if what else ""
        )
    return f"{path.name}: not a .sql file, ignored"


# ---------------------------------------------------------------------------------------------
# History rows and validation.


@dataclass(frozen=True)
class Applied:
    """One row of ``airlock_schema_history``."""

    rank: int
    version: Version | None
    description: str
    type: str  # V, U, R or BASELINE (recorded as applied by `airlock db baseline`, not run)
    script: str
    checksum: str
    applied_by: str
    applied_at: str
    duration_ms: int
    success: bool
    release_id: str | None = None


def effective(history: Iterable[Applied]) -> tuple[dict[Version, Applied], dict[str, Applied]]:
    """The versions applied now (undone ones removed), and the last run of each repeatable."""
    versions: dict[Version, Applied] = {}
    repeatables: dict[str, Applied] = {}
    for row in sorted(history, key=lambda r: r.rank):
        if not row.success:
            continue
        if row.type in {"V", "BASELINE"} and row.version is not None:
            versions[row.version] = row
        elif row.type == "U" and row.version is not None:
            versions.pop(row.version, None)
        elif row.type == "R":
            repeatables[row.description] = row
    return versions, repeatables


@dataclass(frozen=True)
class Pending:
    """What a migrate would run, in order."""

    versioned: tuple[MigrationFile, ...]
    repeatable: tuple[MigrationFile, ...]

    @property
    def all(self) -> tuple[MigrationFile, ...]:
        return self.versioned + self.repeatable

    def __bool__(self) -> bool:
        return bool(self.versioned or self.repeatable)


def pending(
    migrations: Migrations, history: Sequence[Applied], *, allow_out_of_order: bool = False
) -> Pending:
    versions, repeatables = effective(history)
    latest = max(versions, default=None)
    todo = [
        m
        for m in migrations.versioned
        if m.version not in versions
        and (allow_out_of_order or latest is None or (m.version is not None and m.version > latest))
    ]
    rerun = [
        m
        for m in migrations.repeatable
        if m.description not in repeatables or repeatables[m.description].checksum != m.checksum
    ]
    return Pending(tuple(todo), tuple(rerun))


def validate(
    migrations: Migrations, history: Sequence[Applied], *, allow_out_of_order: bool = False
) -> list[Finding]:
    """Applied migrations must still match their files, exist, and come in order."""
    findings: list[Finding] = []
    versions, _ = effective(history)
    latest = max(versions, default=None)
    for version, row in sorted(versions.items()):
        migration = migrations.by_version(version)
        where = Location(str(migrations.folder / row.script))
        if migration is None:
            findings.append(
                Finding(
                    "migration.missing",
                    Severity.ERROR,
                    f"version {version_text(version)} ({row.script}) was applied on "
                    f"{row.applied_at} but its file is gone",
                    where,
                    hint="restore the file from version control; applied migrations are history",
                    evidence={"version": version_text(version), "script": row.script},
                )
            )
        elif migration.checksum != row.checksum:
            findings.append(
                Finding(
                    "migration.edited",
                    Severity.ERROR,
                    f"{migration.name} was edited after it was applied "
                    f"(applied checksum {row.checksum[:12]}…, file now {migration.checksum[:12]}…)",
                    Location(str(migration.path)),
                    hint="revert the edit and put the change in a new migration",
                    evidence={"applied": row.checksum, "file": migration.checksum},
                )
            )
    if latest is not None and not allow_out_of_order:
        for migration in migrations.versioned:
            assert migration.version is not None
            if migration.version not in versions and migration.version < latest:
                findings.append(
                    Finding(
                        "migration.out-of-order",
                        Severity.ERROR,
                        f"{migration.name} (version {migration.version_label}) is pending but "
                        f"version {version_text(latest)} is already applied",
                        Location(str(migration.path)),
                        hint="give it a version above the latest applied one, or migrate with "
                        "--allow-out-of-order",
                    )
                )
    return findings
