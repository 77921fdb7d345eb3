"""Sealed releases: content-addressed bundles with a manifest of every file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airlock import api
from airlock.bundle import sha256_file
from airlock.errors import GateFailed, TamperedReleaseError

from .conftest import ProjectFactory, airlock


def test_build_writes_a_manifest_with_every_file_hashed(phoenix: Path) -> None:
    """The bundle holds airlock.yaml and each service's sources, each with its sha256."""
    bundle, new = api.build(phoenix, "v1")
    assert new
    files = bundle.manifest["files"]
    assert set(files) == {
        "airlock.yaml",
        "db/migrations/V1__initial_schema.sql",
        "services/version.py",
        "services/phoenix_common.py",
        *(
            f"services/{s}.py"
            for s in ("account", "audit", "payment", "transaction", "notification")
        ),
    }
    for relative, digest in files.items():
        assert sha256_file(bundle.files_dir / relative) == digest
        assert sha256_file(phoenix / relative) == digest
    assert bundle.path == phoenix / ".airlock" / "releases" / bundle.id
    assert set(bundle.manifest["config"]) == {"staging", "production"}


def test_the_same_content_gives_the_same_id(phoenix: Path) -> None:
    """Building twice without a change reuses the sealed bundle."""
    first, _ = api.build(phoenix, "v1")
    second, new = api.build(phoenix, "v1")
    assert second.id == first.id and not new


def test_any_change_gives_a_new_id(phoenix: Path) -> None:
    """A changed source file, config value or version label changes the id."""
    base, _ = api.build(phoenix, "v1")
    with (phoenix / "services" / "audit.py").open("a") as handle:
        handle.write("\n# a comment\n")
    changed_source, _ = api.build(phoenix, "v2")  # "v1" again is refused: it names base
    relabelled, _ = api.build(phoenix, "v2.0.1")
    assert len({base.id, changed_source.id, relabelled.id}) == 3
    assert base.digests("staging")["audit"] != changed_source.digests("staging")["audit"]
    assert base.digests("staging")["account"] == changed_source.digests("staging")["account"]


def test_the_manifest_holds_references_never_secret_values(phoenix: Path) -> None:
    """Rendered config keeps ${secret:…}; the secret's value is nowhere in the bundle."""
    bundle, _ = api.build(phoenix, "v1")
    text = (bundle.path / "manifest.json").read_text()
    assert "${secret:PHOENIX_JWT_SECRET}" in text
    assert "phoenix-test-secret-3f9a1c" not in text


def test_verify_catches_an_edited_file_and_an_edited_manifest(phoenix: Path) -> None:
    """Changing a sealed file or the manifest after sealing is detected, naming the file."""
    bundle, _ = api.build(phoenix, "v1")
    target = bundle.files_dir / "services" / "payment.py"
    target.chmod(0o644)
    target.write_text(target.read_text() + "\n# hotfix\n")
    with pytest.raises(TamperedReleaseError) as info:
        bundle.verify()
    assert "services/payment.py" in str(info.value)
    target.write_text(target.read_text().removesuffix("\n# hotfix\n"))
    bundle.verify()
    manifest_path = bundle.path / "manifest.json"
    manifest_path.chmod(0o644)
    manifest = json.loads(manifest_path.read_text())
    manifest["config"]["staging"]["audit"]["DATABASE_URL"] = "postgresql://elsewhere"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(TamperedReleaseError):
        api.release(phoenix, bundle.id).verify()


def test_a_missing_source_is_a_clear_error(make_project: ProjectFactory) -> None:
    """A service whose source path does not exist cannot be sealed: the same finding as
    `airlock check`, and the same exit code (1, the gate said no)."""
    project = make_project({"api": {"source": ["app/nope.py"]}})
    with pytest.raises(GateFailed) as info:
        api.build(project)
    assert "app/nope.py" in str(info.value) and "'api'" in str(info.value)
    build = airlock("release", "build", cwd=project)
    check = airlock("check", "--no-history", cwd=project)
    assert build.returncode == check.returncode == 1
    plan = airlock("plan", "staging", cwd=project)
    assert plan.returncode == 2 and "airlock check" in plan.stderr


def test_release_list_and_show(phoenix: Path) -> None:
    """The CLI lists releases and shows one by version or id prefix, also as JSON."""
    first, _ = api.build(phoenix, "v1")
    (phoenix / "services" / "audit.py").write_text(
        (phoenix / "services" / "audit.py").read_text() + "\n"
    )
    second, _ = api.build(phoenix, "v2")
    listed = json.loads(airlock("release", "list", "--format", "json", cwd=phoenix).stdout)
    assert [r["id"] for r in listed] == [first.id, second.id]
    shown = airlock("release", "show", "v2", "--format", "json", cwd=phoenix)
    assert json.loads(shown.stdout)["id"] == second.id
    assert airlock("release", "show", second.id[:6], cwd=phoenix).returncode == 0
    missing = airlock("release", "show", "v9", cwd=phoenix)
    assert missing.returncode == 2 and "no release 'v9'" in missing.stderr


def test_deploy_without_a_release_says_to_seal_one(phoenix: Path) -> None:
    """With nothing sealed, deploy refuses and says how to seal."""
    result = airlock("deploy", "staging", cwd=phoenix)
    assert result.returncode == 2
    assert "airlock release build" in result.stderr
