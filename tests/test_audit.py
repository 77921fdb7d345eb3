"""The tamper-evident audit log: one entry per recorded event, appended in the same transaction
as the write it records, hash-chained, append-only in the database, with signed Merkle
checkpoints and inclusion proofs. The log checked here is made by real deploys of a small
project, and then damaged in every way the verifier must notice."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import shutil
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from airlock import api
from airlock.errors import AuditFailed, LockedError, UsageError
from airlock.masking import MASK
from airlock.state import SCHEMA_VERSION, StateStore, audit, open_state, use_project_url
from airlock.state.postgres import SCHEMA
from airlock.state.sqlite import SQLiteStateStore

from .conftest import ProjectFactory, airlock
from .test_no_secret_leaks import forms
from .test_state import Target, make_v1_store

SECRET = "audit-pl4nted-secret-61c0e2"
ACTOR = "release-bot@ci-runner-3"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRLOCK_STATE_URL", raising=False)
    monkeypatch.delenv("AIRLOCK_LEASE_SECONDS", raising=False)


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "sqlite":
        return Target("sqlite", tmp_path, None)
    return Target("postgres", tmp_path, request.getfixturevalue("pg_url"))


def begin(store: StateStore, deployment_id: str, env: str = "staging") -> None:
    store.begin(
        deployment_id=deployment_id,
        env=env,
        kind="deploy",
        release_id="r1",
        version="v1",
        previous_release_id=None,
        plan={"services": ["web"]},
    )


# -- Merkle trees ------------------------------------------------------------------------------


def tree_hash(data: list[bytes]) -> bytes:
    """RFC 6962's MTH written straight from its definition, over the entries' bytes."""
    if not data:
        return hashlib.sha256(b"").digest()
    if len(data) == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1
    while k * 2 < len(data):
        k *= 2
    return hashlib.sha256(b"\x01" + tree_hash(data[:k]) + tree_hash(data[k:])).digest()


def test_merkle_roots_and_inclusion_proofs_follow_rfc_6962() -> None:
    """Roots match the definition for 0 to 40 leaves; every leaf's proof holds, and fails for
    another leaf, another position, a shortened path or another root."""
    a, b, c = (audit.leaf_hash(x) for x in (b"a", b"b", b"c"))

    def node(left: bytes, right: bytes) -> bytes:
        return hashlib.sha256(b"\x01" + left + right).digest()

    assert audit.merkle_root([a, b, c]) == node(node(a, b), c)  # split at 2, not in the middle
    for n in range(41):
        data = [f"entry {i}".encode() for i in range(n)]
        leaves = [audit.leaf_hash(d) for d in data]
        root = audit.merkle_root(leaves)
        assert root == tree_hash(data)
        for i in range(n):
            path = audit.inclusion_path(leaves, i)
            assert audit.verify_inclusion(leaves[i], i, n, path, root)
            assert not audit.verify_inclusion(audit.leaf_hash(b"forged"), i, n, path, root)
            assert not audit.verify_inclusion(leaves[i], i, n, path, hashlib.sha256().digest())
            if n > 1:
                assert not audit.verify_inclusion(leaves[i], (i + 1) % n, n, path, root)
                assert not audit.verify_inclusion(leaves[i], i, n, path[:-1], root)


# -- the store ---------------------------------------------------------------------------------


def test_each_recorded_write_appends_one_chained_entry(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deployments begun and finished, overrides, approvals, migrations, gate runs, go/no-go
    reports and seals each append one entry; a refused write and engine events append none."""
    monkeypatch.setenv("AIRLOCK_ACTOR", ACTOR)
    with target.open() as store:
        begin(store, "d-1")
        with pytest.raises(LockedError):
            begin(store, "d-2")
        store.journal("d-1", "event", {"type": "Begin"})
        store.journal(
            "d-1",
            "approval",
            {
                "override_reason": "hotfix for INC-7",
                "by": "ana@laptop",
                "missing": ["0 of 1 approval(s)"],
                "report": None,
                "approvers": [],
            },
        )
        store.journal(
            "d-1",
            "migration",
            {
                "database": "postgresql://app:****@db/app",
                "steps": [{"script": "V2__status.sql", "outcome": "applied"}],
                "snapshot": {"path": "snapshots/1.albk"},
            },
        )
        store.finish("d-1", "succeeded")
        store.record_gate("staging", "r1", "load", passed=True, body={"summary": "p95 12 ms"})
        store.record_gate(
            "production",
            "r1",
            "gonogo",
            passed=True,
            body={"verdict": "GO", "gates": [{"name": "static", "status": "pass"}]},
        )
        store.approve("production", "r1", "alice", note="looks good", report_id=2)
        store.record_seal(
            "r2", project="shop", version="v2", source={"commit": "c0ffee", "dirty": False}, files=3
        )
        rows = store.audit_rows()
        assert store.audit_rows("production", limit=1) == [rows[-2]]
    assert [(r["seq"], r["kind"], r["env"]) for r in rows] == [
        (1, "deploy.started", "staging"),
        (2, "override", "staging"),
        (3, "migration.applied", "staging"),
        (4, "deploy.finished", "staging"),
        (5, "gate.run", "staging"),
        (6, "gonogo.report", "production"),
        (7, "approval", "production"),
        (8, "release.sealed", None),
    ]
    assert {r["actor"] for r in rows} == {ACTOR}
    payloads = [json.loads(r["payload"]) for r in rows]
    assert payloads[1]["reason"] == "hotfix for INC-7"
    assert payloads[2]["applied"] == ["V2__status.sql"] and "database" not in payloads[2]
    assert payloads[3]["status"] == "succeeded" and payloads[3]["lock"] == "released"
    assert payloads[5] == {"run": 2, "release": "r1", "verdict": "GO", "gates": {"static": "pass"}}
    assert payloads[6]["approver"] == "alice" and payloads[6]["note"] == "looks good"
    verified = audit.verify_rows(rows)
    assert (
        verified.ok
        and verified.log_id == rows[0]["hash"]
        and verified.hashes[-1] == rows[-1]["hash"]
    )


def test_an_entry_that_cannot_be_appended_undoes_the_write_it_records(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry is written in the same transaction: when it fails, the deployment is not
    begun either (no lock, no row)."""

    def broken() -> str:
        raise RuntimeError("the actor could not be told")

    monkeypatch.setattr(audit, "actor", broken)
    with target.open() as store:
        with pytest.raises(RuntimeError):
            begin(store, "d-1")
        assert store.lock("staging") is None and store.deployments() == []
        monkeypatch.undo()
        begin(store, "d-1")
        assert [r["kind"] for r in store.audit_rows()] == ["deploy.started"]


def test_the_database_refuses_to_change_or_delete_entries(target: Target) -> None:
    """UPDATE and DELETE of the audit table are refused by triggers (TRUNCATE too, in
    PostgreSQL); the entries stay as they were."""
    with target.open() as store:
        begin(store, "d-1")
        store.finish("d-1", "succeeded")
        before = store.audit_rows()
    attempts = ["UPDATE audit SET actor = 'mallory'", "DELETE FROM audit WHERE seq = 2"]
    if target.url is None:
        with sqlite3.connect(target.root / ".airlock" / "state.db") as db:
            for statement in attempts:
                with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                    db.execute(statement)
    else:
        with psycopg.connect(target.url, autocommit=True) as conn:
            conn.execute(f"SET search_path = {SCHEMA}")
            for statement in [*attempts, "TRUNCATE audit"]:
                with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                    conn.execute(statement)
    with target.open(readonly=True) as store:
        assert store.audit_rows() == before


def test_concurrent_writers_keep_one_gapless_chain(pg_url: str, tmp_path: Path) -> None:
    """Six stores on one PostgreSQL database recording at once: one chain, numbered 1..48,
    that verifies (a writer that met another on the same number wrote again)."""
    errors: list[BaseException] = []

    def record(worker: int) -> None:
        try:
            with open_state(tmp_path, url=pg_url) as store:
                for n in range(8):
                    store.record_gate("staging", f"r{worker}", "load", passed=True, body={"n": n})
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    with open_state(tmp_path, url=pg_url):
        pass  # the schema first, so the writers race on entries, not on creating tables
    threads = [threading.Thread(target=record, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with open_state(tmp_path, url=pg_url, readonly=True) as store:
        rows = store.audit_rows()
    assert [r["seq"] for r in rows] == list(range(1, 49))
    assert audit.verify_rows(rows).ok


def test_an_older_store_gets_the_audit_log_when_upgraded(target: Target) -> None:
    """A version-1 store is upgraded in place to one with the (empty, append-only) log."""
    make_v1_store(target)
    with target.open() as store:
        assert store.schema_version == SCHEMA_VERSION and store.audit_rows() == []
        store.finish("d-1", "succeeded")
        rows = store.audit_rows()
    assert [r["kind"] for r in rows] == ["deploy.finished"] and audit.verify_rows(rows).ok


def test_a_checkpoint_is_signed_every_n_entries_with_a_private_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the project known, the store signs a checkpoint each time the log reaches a
    multiple of N; the key is created once, readable by its owner only."""
    monkeypatch.setattr(audit, "CHECKPOINT_EVERY", 4)
    use_project_url(tmp_path, None, name="periodic")
    with open_state(tmp_path) as store:
        for n in range(9):
            store.record_gate("staging", "r1", "load", passed=True, body={"n": n})
        verified = audit.verify_rows(store.audit_rows())
    folder = audit.checkpoint_dir(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["4.json", "8.json"]
    key = audit.key_path("periodic")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    public = audit.public_key_of(audit.load_key("periodic", create=False))
    for path in folder.iterdir():
        checkpoint = audit.read_checkpoint(path)
        assert checkpoint["public_key"] == public
        assert audit.check_checkpoint(checkpoint, verified, public, path.name) is None


# -- a real log, from real deploys -------------------------------------------------------------

EXPECTED = [
    ("release.sealed", None),
    ("deploy.started", "staging"),
    ("deploy.finished", "staging"),
    ("gonogo.report", "production"),
    ("approval", "production"),
    ("deploy.started", "production"),
    ("deploy.approved", "production"),
    ("deploy.finished", "production"),
    ("release.sealed", None),
    ("deploy.started", "staging"),
    ("deploy.finished", "staging"),
    ("release.sealed", None),
    ("deploy.started", "staging"),
    ("deploy.finished", "staging"),
    ("rollback.started", "staging"),
    ("rollback.finished", "staging"),
    ("deploy.started", "production"),
    ("override", "production"),
    ("deploy.finished", "production"),
]


def _set(factory: ProjectFactory, project: Path, **config: str) -> None:
    document = factory.read(project)
    document["services"]["web"]["config"].update(config)
    factory.write(project, document)


@pytest.fixture(scope="module")
def real_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project deployed through `airlock.api`: staging, a go/no-go report and an approval for
    production, a release that fails (quoting its secret) and is rolled back, a manual rollback,
    and an override to production."""
    factory = ProjectFactory(tmp_path_factory.mktemp("audit"))
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("AIRLOCK_STATE_URL", raising=False)
        patch.setenv("STAGING_SHOP_SECRET", SECRET)
        patch.setenv("PRODUCTION_SHOP_SECRET", SECRET[::-1])
        try:
            project = factory(
                {
                    "web": {
                        "ready": "/readyz",
                        "config": {
                            "VERSION": "web-1",
                            "SECRET": "${secret:SHOP_SECRET}",
                            "ECHO_KEYS": "SECRET",
                        },
                    }
                },
                environments={
                    "staging": {"secrets": {"prefix": "STAGING_"}},
                    "production": {"secrets": {"prefix": "PRODUCTION_"}, "approvals": 1},
                },
                gates={"bake": "0.5s", "ready_timeout": "3s"},
            )
            v1, _ = api.build(project, "v1")
            assert api.deploy(project, "staging").outcome == "succeeded"
            assert api.gonogo(project, "production").verdict == "GO"
            api.approve(project, "production", v1.id, approver="alice")
            assert api.deploy(project, "production").outcome == "succeeded"
            _set(factory, project, VERSION="web-2", MODE="unready-echo")
            api.build(project, "v2")
            assert api.deploy(project, "staging").outcome == "rolled_back"
            _set(factory, project, VERSION="web-3", MODE="ok")
            api.build(project, "v3")
            assert api.deploy(project, "staging").outcome == "succeeded"
            assert api.rollback(project, "staging").version == "v1"
            result = api.deploy(project, "production", override_reason="hotfix for INC-7")
            assert result.outcome == "succeeded"
            yield project
        finally:
            factory.cleanup()


def database(project: Path) -> Path:
    return project / ".airlock" / "state.db"


def copy_of(project: Path, folder: Path) -> Path:
    """The project's SQLite store copied whole (its WAL folded in), without the triggers that
    refuse changes: whoever can write the file can drop them too."""
    target = folder / "copy.db"
    with sqlite3.connect(database(project)) as source, sqlite3.connect(target) as copy:
        source.backup(copy)
        copy.execute("DROP TRIGGER audit_no_update")
        copy.execute("DROP TRIGGER audit_no_delete")
    return target


def read(path: Path) -> list[dict[str, Any]]:
    store = SQLiteStateStore(path, readonly=True)
    try:
        return store.audit_rows()
    finally:
        store.close()


def test_real_deploys_record_every_event_once(real_log: Path) -> None:
    """Seals, deploys, the go/no-go report, the approval, the rollback and the override, in
    order, each once; the log verifies and each deploy's end signed a checkpoint."""
    rows = read(database(real_log))
    assert [(r["kind"], r["env"]) for r in rows] == EXPECTED
    assert audit.verify_rows(rows).ok
    failed = json.loads(rows[10]["payload"])
    assert failed["status"] == "rolled_back" and MASK in failed["reason"]
    override = json.loads(rows[17]["payload"])
    assert override["reason"] == "hotfix for INC-7" and override["by"]
    sizes = sorted(int(p.stem) for p in audit.checkpoint_dir(real_log).glob("*.json"))
    assert sizes == [3, 8, 11, 14, 16, 19]  # one per deploy's end
    v3 = json.loads(rows[11]["payload"])["release"]
    reports = real_log / ".airlock" / "releases" / v3 / "reports" / "audit-checkpoint.json"
    assert json.loads(reports.read_text())["size"] == 19
    api.release(real_log, v3).verify()  # the checkpoint does not touch the sealed files
    verify = airlock("audit", "verify", "--format", "json", cwd=real_log)
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout)["entries"] == 19


def _changed(text: str, index: int) -> str:
    """``text`` with the character at ``index`` replaced by another one (one byte: ASCII)."""
    old = text[index]
    new = chr(ord(old) ^ 1)
    if not new.isprintable() or not new.isascii():
        new = "x" if old != "x" else "y"
    return text[:index] + new + text[index + 1 :]


def test_every_single_byte_change_of_every_column_of_every_entry_is_detected(
    real_log: Path, tmp_path: Path
) -> None:
    """Each byte of each column of each entry changed in turn, in the SQLite file: the
    verifier names that entry every time (100% detection)."""
    path = copy_of(real_log, tmp_path)
    rows = read(path)
    tried = detected = 0
    missed: list[str] = []
    with sqlite3.connect(path, isolation_level=None) as db:
        db.row_factory = sqlite3.Row

        def check(seq: int, column: str, value: object, what: str) -> None:
            nonlocal tried, detected
            db.execute(f"UPDATE audit SET {column} = ? WHERE seq = ?", (value, seq))
            got = [dict(r) for r in db.execute("SELECT * FROM audit ORDER BY seq")]
            found = audit.verify_rows(got)
            tried += 1
            if found.first_bad == seq:
                detected += 1
            else:
                missed.append(f"entry {seq} {column} {what}: {found.problem}")
            where = value if column == "seq" else seq
            original = rows[seq - 1][column]
            db.execute(f"UPDATE audit SET {column} = ? WHERE seq = ?", (original, where))

        for row in rows:
            seq = row["seq"]
            for column in audit.COLUMNS:
                value = row[column]
                if column == "seq":
                    taken = {r["seq"] for r in rows}
                    for bit in range(16):
                        if seq ^ (1 << bit) not in taken and seq ^ (1 << bit) > 0:
                            check(seq, column, seq ^ (1 << bit), f"bit {bit}")
                elif value is None:
                    check(seq, column, "", "NULL to ''")
                    check(seq, column, "x", "NULL to 'x'")
                else:
                    for index in range(len(value)):
                        check(seq, column, _changed(value, index), f"byte {index}")
        assert audit.verify_rows(read(path)).ok  # every change was undone
    print(f"\n{detected} of {tried} single-byte changes detected over {len(rows)} entries")
    assert missed == [] and detected == tried > 5000


def test_a_deleted_entry_and_two_swapped_entries_are_named(real_log: Path, tmp_path: Path) -> None:
    """Removing any entry but the last names it; swapping two neighbours names the first."""
    path = copy_of(real_log, tmp_path)
    rows = read(path)
    with sqlite3.connect(path, isolation_level=None) as db:
        for row in rows[:-1]:
            db.execute("DELETE FROM audit WHERE seq = ?", (row["seq"],))
            found = audit.verify_rows(read(path))
            assert found.first_bad == row["seq"] and "missing" in str(found.problem)
            db.execute(
                "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)", [row[c] for c in audit.COLUMNS]
            )
        columns = [c for c in audit.COLUMNS if c != "seq"]
        sets = ", ".join(f"{c} = ?" for c in columns)
        for first, second in itertools.pairwise(rows):
            for row, other in ((first, second), (second, first)):
                db.execute(
                    f"UPDATE audit SET {sets} WHERE seq = ?",
                    [*(other[c] for c in columns), row["seq"]],
                )
            assert audit.verify_rows(read(path)).first_bad == first["seq"]
            for row in (first, second):
                db.execute(
                    f"UPDATE audit SET {sets} WHERE seq = ?",
                    [*(row[c] for c in columns), row["seq"]],
                )
    assert audit.verify_rows(read(path)).ok


def unchecked(project: Path, tmp_path: Path, env: dict[str, str]) -> Any:
    """`airlock audit verify` with the project's local checkpoints out of the way."""
    local = audit.checkpoint_dir(project)
    aside = tmp_path / "checkpoints-aside"
    shutil.move(local, aside)
    try:
        return airlock("audit", "verify", cwd=project, env=env)
    finally:
        shutil.move(aside, local)


def test_only_a_checkpoint_catches_a_cut_tail_or_a_rewritten_last_entry(
    real_log: Path, tmp_path: Path
) -> None:
    """With no checkpoint at all both logs verify; held to one — the newest local one,
    checked unasked, or one kept elsewhere — both fail (exit 1)."""
    checkpoint = audit.checkpoint_dir(real_log) / "19.json"
    kept = tmp_path / "kept-elsewhere.json"
    shutil.copyfile(checkpoint, kept)
    intact = airlock("audit", "verify", "--checkpoint", str(kept), cwd=real_log)
    assert intact.returncode == 0, intact.stderr
    assert "matches the checkpoint" in " ".join(intact.stdout.split())

    (tmp_path / "cut").mkdir()
    cut = copy_of(real_log, tmp_path / "cut")
    with sqlite3.connect(cut) as db:
        db.execute("DELETE FROM audit WHERE seq > 17")
    env = {"AIRLOCK_STATE_URL": f"sqlite:{cut}"}
    assert unchecked(real_log, tmp_path, env).returncode == 0
    assert airlock("audit", "verify", cwd=real_log, env=env).returncode == 1  # the local one
    held = airlock("audit", "verify", "--checkpoint", str(kept), cwd=real_log, env=env)
    assert held.returncode == 1, held.stderr
    assert "entries 18 to 19 were removed" in " ".join(held.stdout.split())

    (tmp_path / "rewritten").mkdir()
    rewritten = copy_of(real_log, tmp_path / "rewritten")
    rows = read(rewritten)
    last = rows[-1]
    payload = {**json.loads(last["payload"]), "reason": "nobody overrode anything"}
    encoding = audit.encode(
        last["seq"], last["at"], last["actor"], last["env"], last["kind"], payload, rows[-2]["hash"]
    )
    with sqlite3.connect(rewritten) as db:
        db.execute(
            "UPDATE audit SET payload = ?, hash = ? WHERE seq = ?",
            (audit.canonical(payload).decode(), audit.entry_hash(encoding), last["seq"]),
        )
    env = {"AIRLOCK_STATE_URL": f"sqlite:{rewritten}"}
    assert unchecked(real_log, tmp_path, env).returncode == 0
    assert airlock("audit", "verify", cwd=real_log, env=env).returncode == 1
    held = airlock(
        "audit", "verify", "--checkpoint", str(kept), "-f", "json", cwd=real_log, env=env
    )
    assert held.returncode == 1, held.stderr
    assert "rewritten" in json.loads(held.stdout)["problem"]
    # and the next deploy's checkpoint refuses to sign the rewritten log
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRLOCK_STATE_URL", f"sqlite:{rewritten}")
        with open_state(real_log) as store, pytest.raises(AuditFailed, match="no longer matches"):
            audit.write_checkpoint(store, real_log, "shop")


def test_a_proof_is_checked_with_the_proof_file_and_the_public_key_alone(
    real_log: Path, tmp_path: Path
) -> None:
    """`audit proof` writes a proof of entry 5 (the approval); `verify-proof` checks it in a
    folder with no project, given only the public key; a changed proof does not hold."""
    proof_file = tmp_path / "proof.json"
    made = airlock("audit", "proof", "5", "--output", str(proof_file), cwd=real_log)
    assert made.returncode == 0, made.stderr
    proof = json.loads(proof_file.read_text())
    assert proof["entry"]["kind"] == "approval" and proof["tree_size"] == 19
    public = proof["checkpoint"]["public_key"]
    assert public == api.audit_key(real_log)["public_key"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copyfile(proof_file, elsewhere / "proof.json")
    checked = airlock("audit", "verify-proof", "proof.json", "--public-key", public, cwd=elsewhere)
    assert checked.returncode == 0, checked.stderr
    assert "entry 5 (approval) is in the audit log of 19 entries" in " ".join(
        checked.stdout.split()
    )
    assert audit.verify_proof(proof, public)["ok"]

    forged = json.loads(json.dumps(proof))
    forged["entry"]["payload"]["approver"] = "mallory"
    assert not audit.verify_proof(forged, public)["ok"]
    (elsewhere / "forged.json").write_text(json.dumps(forged))
    refused = airlock("audit", "verify-proof", "forged.json", "--public-key", public, cwd=elsewhere)
    assert refused.returncode == 1 and "does not hold" in refused.stdout

    other = base64.b64encode(bytes(32)).decode()
    wrong = airlock("audit", "verify-proof", "proof.json", "--public-key", other, cwd=elsewhere)
    assert wrong.returncode == 2 and "not with the trusted key" in " ".join(wrong.stderr.split())


def test_show_reads_well_at_80_columns(real_log: Path) -> None:
    """Newest first, one heading line and the sentence wrapped under it; JSON has every column."""
    shown = airlock("audit", "show", "--limit", "19", cwd=real_log, env={"COLUMNS": "80"})
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), shown.stdout
    assert lines[0].startswith("#19 ") and "deploy.finished" in lines[0]
    assert "because: hotfix for INC-7" in " ".join(shown.stdout.split())
    entries = json.loads(
        airlock("audit", "show", "--env", "production", "-f", "json", cwd=real_log).stdout
    )
    assert [e["seq"] for e in entries] == [19, 18, 17, 8, 7, 6, 5, 4]
    assert set(entries[0]) == set(audit.COLUMNS) and isinstance(entries[0]["payload"], dict)


def test_bad_input_is_a_clear_error_and_loses_nothing(real_log: Path, tmp_path: Path) -> None:
    """A missing or wrong key, a checkpoint of another log, an entry that does not exist, a
    store written by a newer Airlock: exit 2, a message saying what, and the store unchanged."""
    before = hashlib.sha256(database(real_log).read_bytes()).hexdigest()
    checkpoint = str(audit.checkpoint_dir(real_log) / "19.json")

    def refused(*args: str, env: dict[str, str] | None = None, cwd: Path = real_log) -> str:
        result = airlock("audit", *args, cwd=cwd, env=env)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        return " ".join(result.stderr.split())

    missing = {"AIRLOCK_AUDIT_KEY": str(tmp_path / "nowhere.key")}
    assert "signing key" in refused("verify", "--checkpoint", checkpoint, env=missing)
    assert "is missing" in refused("checkpoint", env=missing)
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key")
    garbage.chmod(0o600)
    assert "not an Ed25519 private key" in refused(
        "checkpoint", env={"AIRLOCK_AUDIT_KEY": str(garbage)}
    )
    garbage.chmod(0o644)
    assert "can be read by others" in refused("key", env={"AIRLOCK_AUDIT_KEY": str(garbage)})
    assert "no entry 99: it has 19 entries" in refused("proof", "99")
    assert "no entry 0" in refused("proof", "0")
    assert "is not a checkpoint" in refused("verify", "--checkpoint", str(garbage))
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    not_ours = refused("verify", "--checkpoint", str(tmp_path / "other.json"))
    assert "not an Airlock audit checkpoint" in not_ours

    # a checkpoint of another project's log
    other = tmp_path / "other"
    other.mkdir()
    shutil.copyfile(real_log / "airlock.yaml", other / "airlock.yaml")
    with open_state(other) as store:
        store.record_seal("r9", project="shop", version="v9", source={}, files=1)
    foreign = airlock("audit", "checkpoint", "-f", "json", cwd=other)
    assert foreign.returncode == 0, foreign.stderr
    message = refused("verify", "--checkpoint", json.loads(foreign.stdout)["file"])
    assert "is of another audit log" in message

    # a store written by a newer Airlock
    newer = tmp_path / "newer.db"
    shutil.copyfile(copy_of(real_log, tmp_path), newer)
    with sqlite3.connect(newer) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    for command in (["verify"], ["show"], ["proof", "3"]):
        message = refused(*command, env={"AIRLOCK_STATE_URL": f"sqlite:{newer}"})
        assert "written by a newer Airlock" in message and "upgrade Airlock" in message

    assert hashlib.sha256(database(real_log).read_bytes()).hexdigest() == before
    assert audit.verify_rows(read(database(real_log))).ok


def test_no_secret_reaches_the_audit_log_or_its_checkpoints(real_log: Path) -> None:
    """The failed release quoted its secret; every column of every entry, and every checkpoint
    and proof, is free of it in every encoding."""
    with sqlite3.connect(database(real_log)) as db:
        blob = json.dumps(db.execute("SELECT * FROM audit").fetchall()).encode()
    files = [*audit.checkpoint_dir(real_log).glob("*.json")]
    files += [*(real_log / ".airlock" / "releases").glob("*/reports/audit-checkpoint.json")]
    proof = airlock("audit", "proof", "11", "-f", "json", cwd=real_log)
    assert proof.returncode == 0 and MASK in proof.stdout  # the masked reason is in it
    for where, data in [
        ("the audit table", blob),
        ("a proof", proof.stdout.encode()),
        *((str(path), path.read_bytes()) for path in files),
    ]:
        for form in forms(SECRET) | forms(SECRET[::-1]):
            assert form.encode() not in data, f"{form!r} in {where}"


def test_a_deploy_whose_checkpoint_cannot_be_signed_says_so_and_is_recorded(
    make_project: ProjectFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing key at the deploy's end: a clear error (exit 2) saying the deploy succeeded
    and is recorded; the log has it."""
    project = make_project({"web": {"config": {"VERSION": "web-1"}}})
    api.build(project, "v1")
    monkeypatch.setenv("AIRLOCK_AUDIT_KEY", str(tmp_path / "missing.key"))
    result = airlock("deploy", "staging", cwd=project)
    assert result.returncode == 2, result.stdout + result.stderr
    said = " ".join(result.stderr.split())
    assert "deploy of v1 to staging succeeded and is recorded" in said and "is missing" in said
    assert [d.status for d in api.history(project, "staging")] == ["succeeded"]
    kinds = [e["kind"] for e in api.audit_show(project)]
    assert kinds == ["deploy.finished", "deploy.started", "release.sealed"]
    with pytest.raises(UsageError, match="is missing"):
        api.audit_checkpoint(project)
    monkeypatch.delenv("AIRLOCK_AUDIT_KEY")
    assert api.audit_verify(project)["ok"]


def test_database_changes_made_with_airlock_db_are_in_the_audit_log(
    make_project: ProjectFactory, pg_url: str, tmp_path: Path
) -> None:
    """`airlock db migrate` and `undo` on an environment append an entry each, naming the
    scripts and the database by its masked URL; a dry run and a no-op append nothing."""
    project = make_project(
        {"api": {"config": {"VERSION": "a-1"}}},
        environments={"staging": {"database": {"url": pg_url}}},
    )
    document = ProjectFactory.read(project)
    document["database"] = {"migrations": "migrations"}
    ProjectFactory.write(project, document)
    (project / "migrations").mkdir()
    (project / "migrations" / "V1__users.sql").write_text(
        "CREATE TABLE users (id bigint PRIMARY KEY);\n"
    )
    (project / "migrations" / "U1__users.sql").write_text("DROP TABLE users;\n")
    assert airlock("db", "migrate", "staging", "--dry-run", cwd=project).returncode == 0
    assert airlock("db", "migrate", "staging", "--no-snapshot", cwd=project).returncode == 0
    assert airlock("db", "migrate", "staging", "--no-snapshot", cwd=project).returncode == 0
    assert airlock("db", "undo", "staging", cwd=project).returncode == 0
    shown = airlock("audit", "show", "--format", "json", cwd=project)
    entries = json.loads(shown.stdout)
    entries = entries["entries"] if isinstance(entries, dict) else entries
    database = [e for e in entries if e["kind"] in {"migration.applied", "migration.undone"}]
    assert [(e["kind"], e["env"]) for e in sorted(database, key=lambda e: e["seq"])] == [
        ("migration.applied", "staging"),
        ("migration.undone", "staging"),
    ]
    applied = min(database, key=lambda e: e["seq"])["payload"]
    assert applied["steps"] == [{"script": "V1__users.sql", "outcome": "applied"}]
    password = psycopg.conninfo.conninfo_to_dict(pg_url).get("password")
    if password:
        assert str(password) not in shown.stdout
    assert airlock("audit", "verify", cwd=project).returncode == 0
