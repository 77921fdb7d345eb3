"""Sealed, content-addressed release bundles (INC02).

``airlock release build`` copies everything a release is made of — ``airlock.yaml``, every
service's sources, the migrations — under ``.airlock/releases/<id>/files/`` and writes a
``manifest.json`` with the sha256 of every file, each service's digest and its rendered config for
every environment. The id is a hash of that content, so any changed file gives another id.
Deploys run services from the bundle, never from the working tree, and verify every file first.

The manifest also records, outside the hashed content, the git commit the release was sealed from:
``"source": {"commit": SHA or None, "dirty": bool}`` (see :func:`git_source`), so the CI gate can
ask about exactly that commit; and, for lead times (``airlock metrics``), the commits it brings
since the release sealed before it, with their author and commit times: ``"commits"`` and
``"commits_since"`` (see :func:`sealed_commits`; ``"commits": null`` outside git).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from airlock.checks.static import check_project
from airlock.errors import GateFailed, ReleaseError, TamperedReleaseError, UsageError
from airlock.findings import Severity
from airlock.model import PROJECT_FILE, Project, load_project
from airlock.paths import releases_dir
from airlock.plan import render_config, service_digest
from airlock.state import open_state

MANIFEST = "manifest.json"
FORMAT = 1
_SKIP_DIRS = {"__pycache__", ".git", ".airlock", ".venv", "node_modules", ".mypy_cache"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _walk(root: Path, relative: str) -> Iterator[str]:
    """Project-relative paths of the files under ``relative`` (a file or a folder)."""
    path = root / relative
    if path.is_file():
        yield path.relative_to(root).as_posix()
        return
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for filename in sorted(filenames):
            if Path(filename).suffix in _SKIP_SUFFIXES:
                continue
            yield (Path(dirpath) / filename).relative_to(root).as_posix()


def _sources(project: Project) -> dict[str, list[str]]:
    root = project.root
    sources: dict[str, list[str]] = {}
    for name, service in project.services.items():
        files: list[str] = []
        # The API document and config files are sealed with the service they describe.
        declared = [*service.source, *_api_files(project, service.openapi), *service.config_files]
        for index, entry in enumerate(declared):
            target = (root / entry).resolve()
            if not target.is_relative_to(root):
                raise ReleaseError(
                    f"{project.locate('services', name, 'source', index)}: source {entry!r} of "
                    f"service {name!r} is outside the project folder",
                    hint="sources must live beside airlock.yaml",
                )
            if not target.exists():
                raise ReleaseError(
                    f"{project.locate('services', name, 'source', index)}: source {entry!r} of "
                    f"service {name!r} does not exist",
                    hint="fix the path (relative to airlock.yaml) and build again",
                )
            files.extend(_walk(root, entry))
        sources[name] = sorted(set(files))
    return sources


def _api_files(project: Project, openapi: str | None) -> list[str]:
    """A service's OpenAPI document and every file its ``$ref``s pull in."""
    if not openapi:
        return []
    from airlock.checks.contracts import InvalidDocument, load_document

    try:
        document = load_document(project.root / openapi, project.root)
    except InvalidDocument:
        return [openapi]  # the check reports it; seal what there is
    return sorted(
        {openapi, *(f.resolve().relative_to(project.root).as_posix() for f in document.files)}
    )


def _migrations(project: Project) -> list[str]:
    if project.database is None or project.database.migrations is None:
        return []
    folder = project.root / project.database.migrations
    if not folder.is_dir():
        raise ReleaseError(
            f"migrations folder {project.database.migrations!r} does not exist",
            hint="create it or remove database.migrations from airlock.yaml",
        )
    return list(_walk(project.root, project.database.migrations))


#: How long each git command may take while a release is sealed.
GIT_TIMEOUT = 10.0


def _git(root: Path, *args: str) -> tuple[int, str] | None:
    """``git args`` run in ``root``: (exit code, stdout), or None if git cannot run or hangs."""
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=GIT_TIMEOUT,
            check=False,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.returncode, out.stdout


def git_source(root: Path, sealed: list[str] | None = None) -> dict[str, Any]:
    """The commit a project folder is at: ``{"commit": SHA or None, "dirty": bool}``.

    ``commit`` is ``HEAD`` of the git repository holding ``root`` (None outside one, without a
    commit, or without git). ``dirty`` is True when tracked files under ``root`` differ from
    ``HEAD`` (staged or not), or when one of ``sealed`` (paths relative to ``root``) is not
    tracked at all: either way the release is not what the commit holds. Never raises.
    """
    head = _git(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if head is None or head[0] != 0 or not head[1].strip():
        return {"commit": None, "dirty": False}
    commit = head[1].strip()
    status = _git(root, "status", "--porcelain", "-z", "--untracked-files=no", "--", ".")
    if status is None or status[0] != 0:
        return {"commit": commit, "dirty": True}  # unknown counts as dirty
    dirty = bool(status[1].strip("\0"))
    if not dirty and sealed:
        tracked = _git(root, "ls-files", "-z", "--", ".")
        if tracked is None or tracked[0] != 0:
            dirty = True
        else:
            dirty = not set(sealed) <= set(tracked[1].split("\0"))
    return {"commit": commit, "dirty": dirty}


def _stamp(seconds: str) -> str:
    return datetime.fromtimestamp(int(seconds), UTC).isoformat(timespec="seconds")


def sealed_commits(
    root: Path, head: str | None, previous: str | None
) -> list[dict[str, str]] | None:
    """The commits a release sealed at ``head`` brings since the release sealed before it (at
    ``previous``): ``git rev-list previous..head`` when ``previous`` is an ancestor of ``head``,
    else ``head`` alone (another line of history, or no earlier release). Each is
    ``{"hash", "author_time", "commit_time"}`` (UTC, ISO 8601), newest first. None without git
    or outside a repository. Never raises.
    """
    if head is None:
        return None
    span = ["--max-count=1", head]
    if previous:
        ancestor = _git(root, "merge-base", "--is-ancestor", previous, head)
        if ancestor is not None and ancestor[0] == 0:
            span = [f"{previous}..{head}"]
    listed = _git(root, "log", "--no-color", "--format=%H %at %ct", *span, "--")
    if listed is None or listed[0] != 0:
        return None
    commits = []
    for line in listed[1].splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            commits.append(
                {"hash": parts[0], "author_time": _stamp(parts[1]), "commit_time": _stamp(parts[2])}
            )
    return commits


def _commit_record(root: Path, source: dict[str, Any], release_id: str) -> dict[str, Any]:
    """What the manifest records for lead times: ``commits`` (see :func:`sealed_commits`) and
    ``commits_since``, the commit of the release sealed before this one (None if none)."""
    earlier = [b for b in list_releases(root) if b.id != release_id and b.commit is not None]
    previous = earlier[-1].commit if earlier else None
    return {
        "commits": sealed_commits(root, source["commit"], previous),
        "commits_since": previous,
    }


def content_id(content: dict[str, Any]) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Bundle:
    """A sealed release on disk."""

    path: Path
    manifest: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.manifest["id"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def label(self) -> str:
        """How the release is named for people: its version, with ``+dirty`` when it was sealed
        from uncommitted changes (sealing the same content once committed drops it)."""
        return f"{self.version}+dirty" if self.dirty else self.version

    @property
    def created_at(self) -> str:
        return str(self.manifest["created_at"])

    @property
    def source(self) -> dict[str, Any]:
        """Where the release was sealed from: ``{"commit": SHA or None, "dirty": bool}``.

        Releases sealed before this was recorded give ``{"commit": None, "dirty": False}``.
        """
        raw = self.manifest.get("source")
        if not isinstance(raw, dict):
            return {"commit": None, "dirty": False}
        commit = raw.get("commit")
        return {
            "commit": commit if isinstance(commit, str) and commit else None,
            "dirty": bool(raw.get("dirty", False)),
        }

    @property
    def commit(self) -> str | None:
        """The git commit the release was sealed from (None if unknown or not in git)."""
        commit = self.source["commit"]
        return commit if isinstance(commit, str) else None

    @property
    def dirty(self) -> bool:
        """Whether it was sealed from uncommitted changes (so no commit holds exactly it)."""
        return bool(self.source["dirty"])

    @property
    def files_dir(self) -> Path:
        return self.path / "files"

    @cached_property
    def project(self) -> Project:
        """The project as sealed (its root is the bundle's ``files/`` folder)."""
        return load_project(self.files_dir / PROJECT_FILE)

    def digests(self, env: str) -> dict[str, str]:
        return {name: s["digests"][env] for name, s in self.manifest["services"].items()}

    def config(self, env: str) -> dict[str, dict[str, str]]:
        if env not in self.manifest["config"]:
            known = ", ".join(sorted(self.manifest["config"]))
            raise ReleaseError(
                f"release {self.id} has no environment {env!r}",
                hint=f"environments in this release: {known}",
            )
        return {k: dict(v) for k, v in self.manifest["config"][env].items()}

    def verify(self) -> None:
        """Refuse a bundle whose files or manifest changed after sealing (INC02)."""
        changes: list[tuple[str, str, str]] = []
        for relative, want in sorted(self.manifest["files"].items()):
            path = self.files_dir / relative
            got = sha256_file(path) if path.is_file() else "(missing)"
            if got != want:
                changes.append((relative, want, got))
        seen = {p.relative_to(self.files_dir).as_posix() for p in self.files_dir.rglob("*")}
        seen = {p for p in seen if (self.files_dir / p).is_file()}
        for extra in sorted(seen - set(self.manifest["files"])):
            if "__pycache__" in extra or Path(extra).suffix in _SKIP_SUFFIXES:
                continue
            changes.append((extra, "(not sealed)", sha256_file(self.files_dir / extra)))
        recomputed = content_id(_content_of(self.manifest))
        if recomputed != self.id:
            changes.append((MANIFEST, self.id, recomputed))
        if changes:
            raise TamperedReleaseError(self.id, changes)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "created_at": self.created_at,
            "created_by": self.manifest.get("created_by"),
            "source": self.source,
            "project": self.manifest["project"],
            "services": sorted(self.manifest["services"]),
            "files": len(self.manifest["files"]),
            "environments": sorted(self.manifest["config"]),
        }


def _content_of(manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        key: manifest[key]
        for key in ("format", "project", "version", "files", "services", "config", "migrations")
    }


def unsealed_changes(project: Project, bundle: Bundle) -> list[str]:
    """The files that sealing the working copy now would seal differently from ``bundle``
    (changed, new or gone), as paths relative to the project; [] when none, or when the working
    copy cannot be sealed as it is (``airlock release build`` says why)."""
    root = project.root
    try:
        sources = _sources(project)
        migrations = _migrations(project)
    except ReleaseError:
        return []
    wanted = sorted({PROJECT_FILE, *migrations, *(f for fs in sources.values() for f in fs)})
    sealed: dict[str, str] = bundle.manifest.get("files", {})
    changed = []
    for relative in wanted:
        try:
            digest = sha256_file(root / relative)
        except OSError:
            continue
        if sealed.get(relative) != digest:
            changed.append(relative)
    changed += [relative for relative in sealed if relative not in wanted]
    return sorted(changed)


def build_release(project: Project, version: str | None = None) -> tuple[Bundle, bool]:
    """Seal the project as it is on disk; return the bundle and whether it is new.

    Building the same content twice gives the same id and reuses the existing bundle.
    """
    findings = [f for f in check_project(project) if f.severity is Severity.ERROR]
    if findings:
        lines = [f"  {f.location}: {f.code}: {f.message}" for f in findings]
        # the same findings make `airlock check` exit 1: the gate said no, here too
        raise GateFailed(
            "the project has errors, so it cannot be sealed:\n" + "\n".join(lines),
            hint="fix them (see `airlock check`) and build again",
        )
    root = project.root
    sources = _sources(project)
    migrations = _migrations(project)
    relative_files = sorted(
        {PROJECT_FILE, *migrations, *(f for fs in sources.values() for f in fs)}
    )
    files = {relative: sha256_file(root / relative) for relative in relative_files}
    config = {env: render_config(project, env) for env in project.environments}
    services = {
        name: {
            "sources": sources[name],
            "digests": {
                env: service_digest(
                    name,
                    service.argv,
                    {f: files[f] for f in sources[name]},
                    config[env][name],
                    (service.health, service.ready),
                )
                for env in project.environments
            },
        }
        for name, service in project.services.items()
    }
    content: dict[str, Any] = {
        "format": FORMAT,
        "project": project.project,
        "version": version or "",
        "files": files,
        "services": services,
        "config": config,
        "migrations": migrations,
    }
    draft_id = content_id(content)
    source = git_source(root, relative_files)
    label = version or draft_id[:8]
    content["version"] = label
    release_id = content_id(content)
    for other in list_releases(root):
        if other.version == label and other.id != release_id:
            raise ReleaseError(
                f"version {label} already names release {other.id} (sealed "
                f"{other.manifest.get('created_at', '?')[:19]}) whose content differs; nothing "
                "was sealed",
                hint="give this build another --version, or none (the content's hash is used)",
            )
    target = releases_dir(root) / release_id
    if (target / MANIFEST).is_file():
        bundle = load_bundle(root, release_id)
        bundle.verify()
        return _committed(bundle, source, root), False
    manifest = {
        "id": release_id,
        **content,
        "created_at": datetime.now(UTC).isoformat(timespec="microseconds"),
        "created_by": f"{getpass.getuser()}@{socket.gethostname()}",
        "source": source,
        **_commit_record(root, source, release_id),
    }
    releases_dir(root).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=releases_dir(root)))
    try:
        for relative in relative_files:
            destination = staging / "files" / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / relative, destination)
            if sha256_file(destination) != files[relative]:
                raise ReleaseError(
                    f"{relative} changed while the release was being built",
                    hint="build again once nothing is writing to the project",
                )
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for path in sorted(staging.rglob("*"), reverse=True):
            if path.is_file():
                path.chmod(0o444)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    with open_state(root) as store:  # the audit log records every seal
        store.record_seal(
            release_id, project=project.project, version=label, source=source, files=len(files)
        )
    return Bundle(target, manifest), True


def _committed(bundle: Bundle, source: dict[str, Any], root: Path) -> Bundle:
    """An existing bundle, its ``source`` (and the commits it brings) upgraded when it was sealed
    from uncommitted changes (or outside git) and the same content is now a clean commit;
    otherwise unchanged.

    The source is not part of the hashed content, so the id and :meth:`Bundle.verify` are
    unaffected; the manifest is replaced atomically.
    """
    old = bundle.source
    if source["commit"] is None or source["dirty"]:
        return bundle
    if old["commit"] is not None and not old["dirty"]:
        return bundle
    manifest = {**bundle.manifest, "source": source, **_commit_record(root, source, bundle.id)}
    path = bundle.path / MANIFEST
    fd, temporary = tempfile.mkstemp(prefix=".manifest-", dir=bundle.path)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.chmod(temporary, 0o444)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        return bundle  # keep the old record rather than fail the build
    return Bundle(bundle.path, manifest)


def load_bundle(project_root: Path, ref: str) -> Bundle:
    """A sealed release by id, id prefix or version label."""
    folder = releases_dir(project_root)
    candidates = list_releases(project_root)
    exact = [b for b in candidates if ref in (b.id, b.version, b.label)]
    matches = exact or [b for b in candidates if b.id.startswith(ref)]
    if not matches:
        hint = (
            "list them with `airlock release list`"
            if candidates
            else ("seal one with `airlock release build`")
        )
        raise ReleaseError(f"no release {ref!r} in {folder}", hint=hint)
    if len(matches) > 1:
        ids = ", ".join(b.id for b in matches)
        raise ReleaseError(f"{ref!r} matches several releases: {ids}", hint="give more of the id")
    return matches[0]


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReleaseError(
            f"release manifest {path / MANIFEST} cannot be read: {exc}",
            hint="the bundle is damaged; seal the release again",
        ) from None
    if not isinstance(data, dict) or "id" not in data:
        raise ReleaseError(f"{path / MANIFEST} is not a release manifest")
    return data


def list_releases(project_root: Path) -> list[Bundle]:
    """Every sealed release, oldest first."""
    folder = releases_dir(project_root)
    if not folder.is_dir():
        return []
    bundles = [
        Bundle(path, _read_manifest(path))
        for path in folder.iterdir()
        if path.is_dir() and not path.name.startswith(".") and (path / MANIFEST).is_file()
    ]
    return sorted(bundles, key=lambda b: (b.created_at, b.id))


def find_release(project_root: Path, ref: str | None) -> Bundle:
    """The release ``ref`` names (id, id prefix or version), or the newest when it is None."""
    return load_bundle(project_root, ref) if ref else latest_release(project_root)


def latest_release(project_root: Path) -> Bundle:
    bundles = list_releases(project_root)
    if not bundles:
        raise ReleaseError(
            f"no sealed release in {releases_dir(project_root)} yet, so there is nothing to "
            "deploy or plan",
            hint="seal one with `airlock release build --version V`; if it refused, "
            "`airlock check` lists what to fix first",
        )
    return bundles[-1]


def deployed_project(project_root: Path, env: str) -> Project | None:
    """The project as sealed in the release deployed to ``env`` (None when nothing is, or when
    that release's bundle is not in this working copy)."""
    with open_state(project_root, readonly=True) as store:
        current = store.current_release(env)
    if current is None:
        return None
    with contextlib.suppress(UsageError):
        return load_bundle(project_root, current).project
    return None
