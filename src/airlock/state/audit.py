"""The audit log's arithmetic: entries, their hash chain, Merkle trees, signed checkpoints and
inclusion proofs. The store appends entries (:mod:`airlock.state.base`); this module computes and
checks, and never trusts a hash it did not compute itself.

Rules of the log:

- An entry is ``(seq, at, actor, env, kind, payload)``; its *encoding* is the canonical JSON
  (keys sorted, no whitespace, ASCII with ``\\u`` escapes) of those fields plus ``prev``, the hash
  of the entry before it (``""`` for entry 1). Its hash is SHA-256 over that encoding, so each
  entry seals the whole log before it. The payload is stored in its canonical encoding too: a
  stored payload that is not canonical does not verify.
- The *log id* is the hash of entry 1: it tells two logs apart.
- A checkpoint states the log's size, the Merkle root of its entries (RFC 6962: a leaf is
  SHA-256(0x00 || encoding), a node SHA-256(0x01 || left || right), a tree of n > 1 leaves split
  at the largest power of two below n) and the hash of its last entry, signed with an Ed25519 key
  kept outside the store. A checkpoint kept elsewhere catches what the chain alone cannot: a
  truncated tail, or entries rewritten together with every hash after them.

``cryptography`` is imported inside the functions that sign or check a signature.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import json
import os
import socket
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airlock.errors import AuditFailed, UsageError
from airlock.paths import releases_dir, state_dir

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from airlock.state.base import StateStore

__all__ = [
    "ACTOR_ENV",
    "CHECKPOINT_EVERY",
    "CHECKPOINT_FORMAT",
    "KEY_ENV",
    "PROOF_FORMAT",
    "Verification",
    "actor",
    "canonical",
    "check_checkpoint",
    "checkpoint_dir",
    "encode",
    "inclusion_path",
    "key_path",
    "leaf_hash",
    "load_key",
    "make_proof",
    "merkle_root",
    "newest_checkpoint",
    "public_key_of",
    "read_checkpoint",
    "trusted_key",
    "verify_inclusion",
    "verify_proof",
    "verify_rows",
    "write_checkpoint",
]

#: Who is recorded as the actor, when set (else the OS user @ host).
ACTOR_ENV = "AIRLOCK_ACTOR"
#: The signing key's path, when set (else ``~/.config/airlock/audit/PROJECT.key``).
KEY_ENV = "AIRLOCK_AUDIT_KEY"
#: A checkpoint is written whenever the log reaches a multiple of this many entries.
CHECKPOINT_EVERY = 100
CHECKPOINT_FORMAT = "airlock-audit-checkpoint/1"
PROOF_FORMAT = "airlock-audit-proof/1"
#: The columns of an entry, as stored.
COLUMNS = ("seq", "at", "actor", "env", "kind", "payload", "hash")
_CHECKPOINT_FIELDS = ("format", "project", "log_id", "size", "root", "head", "at", "public_key")


# -- entries -----------------------------------------------------------------------------------


def actor() -> str:
    """``AIRLOCK_ACTOR`` if set, else the OS user @ this host."""
    named = os.environ.get(ACTOR_ENV, "").strip()
    if named:
        return named
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def canonical(value: Any) -> bytes:
    """Canonical JSON: keys sorted, no whitespace, ASCII only."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def encode(
    seq: int, at: str, actor_: str, env: str | None, kind: str, payload: Any, prev: str
) -> bytes:
    """The bytes an entry's hash and Merkle leaf are computed over."""
    return canonical(
        {
            "seq": seq,
            "at": at,
            "actor": actor_,
            "env": env,
            "kind": kind,
            "payload": payload,
            "prev": prev,
        }
    )


def entry_hash(encoding: bytes) -> str:
    return hashlib.sha256(encoding).hexdigest()


def leaf_hash(encoding: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + encoding).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


@dataclass
class Verification:
    """The log as recomputed from its stored columns, up to the first entry that fails."""

    #: entries stored
    entries: int
    #: the first entry that does not verify (None: all do)
    first_bad: int | None = None
    problem: str | None = None
    #: for each entry that verifies, in order: its encoding, and its hash as recomputed
    encodings: list[bytes] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.first_bad is None

    @property
    def log_id(self) -> str | None:
        return self.hashes[0] if self.hashes else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "log_id": self.log_id,
            "head": self.hashes[-1] if self.ok and self.hashes else None,
            "first_bad": self.first_bad,
            "problem": self.problem,
        }


def verify_rows(rows: Sequence[Mapping[str, Any]]) -> Verification:
    """Recompute every entry from its stored columns, in ``seq`` order, and stop at the first
    that does not verify: a gap in the numbers, a column of the wrong type, a payload that is
    not canonical JSON, or a stored hash unlike the one recomputed."""
    result = Verification(entries=len(rows))
    prev = ""
    for expected, row in enumerate(rows, start=1):
        problem = _problem(row, expected, prev)
        if problem is not None:
            seq = row.get("seq")
            bad = expected if not isinstance(seq, int) or seq >= expected else seq
            result.first_bad, result.problem = bad, problem
            return result
        encoding = encode(
            row["seq"],
            row["at"],
            row["actor"],
            row["env"],
            row["kind"],
            json.loads(row["payload"]),
            prev,
        )
        computed = entry_hash(encoding)
        if computed != row["hash"]:
            result.first_bad = expected
            result.problem = (
                f"entry {expected} does not match its hash: a column was changed, or the entry "
                "was moved or replaced"
            )
            return result
        result.encodings.append(encoding)
        result.hashes.append(computed)
        result.rows.append(dict(row))
        prev = computed
    return result


def _problem(row: Mapping[str, Any], expected: int, prev: str) -> str | None:
    seq = row.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return f"entry {expected} has a sequence number that is not a number ({seq!r})"
    if seq > expected:
        return f"entry {expected} is missing (the next one stored is {seq})"
    if seq != expected:
        return f"entry {expected} is stored as number {seq}"
    for column in ("at", "actor", "kind", "payload", "hash"):
        if not isinstance(row.get(column), str):
            return f"entry {expected}: its {column} is not text"
    if row.get("env") is not None and not isinstance(row.get("env"), str):
        return f"entry {expected}: its env is neither text nor empty"
    try:
        payload = json.loads(row["payload"])
    except ValueError:
        return f"entry {expected}: its payload is not JSON"
    try:
        again = canonical(payload).decode("ascii")
    except ValueError:
        again = None
    if again != row["payload"]:
        return f"entry {expected}: its payload is not in its canonical encoding"
    return None


# -- Merkle trees (RFC 6962) -------------------------------------------------------------------


def _split(n: int) -> int:
    """The largest power of two below ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The root over leaf hashes (RFC 6962 MTH); SHA-256 of nothing for an empty tree."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    return _subtree(leaves, 0, len(leaves))


def _subtree(leaves: Sequence[bytes], start: int, end: int) -> bytes:
    n = end - start
    if n == 1:
        return leaves[start]
    k = _split(n)
    return _node(_subtree(leaves, start, start + k), _subtree(leaves, start + k, end))


def inclusion_path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of leaf ``index`` (0-based) in the tree of ``leaves`` (RFC 6962 PATH)."""
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf {index} is outside a tree of {len(leaves)}")
    path: list[bytes] = []
    start, end = 0, len(leaves)
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(_subtree(leaves, start + k, end))
            end = start + k
        else:
            path.append(_subtree(leaves, start, start + k))
            start += k
    path.reverse()  # the leaf's sibling first
    return path


def verify_inclusion(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes
) -> bool:
    """Whether ``path`` proves leaf hash ``leaf`` at ``index`` in a tree of ``size`` with
    ``root`` (the algorithm of RFC 9162, section 2.1.3.2)."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for sibling in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(sibling, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _node(r, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


# -- keys --------------------------------------------------------------------------------------


def key_path(project: str) -> Path:
    """``AIRLOCK_AUDIT_KEY``, else ``$XDG_CONFIG_HOME/airlock/audit/PROJECT.key`` (by default
    ``~/.config/airlock/audit/PROJECT.key``)."""
    named = os.environ.get(KEY_ENV, "").strip()
    if named:
        return Path(named).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME", "").strip()
    base = Path(config) if config else Path.home() / ".config"
    return base / "airlock" / "audit" / f"{project}.key"


def load_key(project: str, *, create: bool) -> Ed25519PrivateKey:
    """The project's signing key. The default path's key is created (mode 0600) on first use
    when ``create``; a key that ``AIRLOCK_AUDIT_KEY`` names must exist."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = key_path(project)
    named = bool(os.environ.get(KEY_ENV, "").strip())
    if not path.exists():
        if named or not create:
            raise UsageError(
                f"the audit signing key {path} is missing",
                hint=f"point {KEY_ENV} at the key checkpoints are signed with"
                if named
                else "it is created by the first deploy or `airlock audit checkpoint`; or pass "
                "--public-key KEY to check against a public key",
            )
        return _create_key(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read the audit signing key {path}: {exc.strerror}",
            hint="check the file's permissions (it must be readable by you only: chmod 600)",
        ) from None
    if stat.S_IMODE(mode) & 0o077:
        raise UsageError(
            f"the audit signing key {path} can be read by others (mode {stat.S_IMODE(mode):o})",
            hint=f"chmod 600 {path}",
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(
            f"{path} is not an Ed25519 private key (PEM, unencrypted)",
            hint=f"point {KEY_ENV} at the audit key, or move this file away to create a new one "
            "(checkpoints signed with the old key then no longer match it)",
        )
    return key


def _create_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
    except FileExistsError:  # another process created it first: use that one
        return _load_existing(path)
    except OSError as exc:
        raise UsageError(
            f"cannot create the audit signing key {path}: {exc.strerror}",
            hint=f"set {KEY_ENV} to a path you can write",
        ) from None
    return key


def _load_existing(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def public_key_of(key: Ed25519PrivateKey) -> str:
    """The raw public key, base64."""
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def key_id(public_key: str) -> str:
    """A short name for a public key: the first 16 hex digits of SHA-256 of its raw bytes."""
    return hashlib.sha256(_b64(public_key, "public key")).hexdigest()[:16]


def trusted_key(given: str | None, project: str | None) -> str:
    """The public key checkpoints must be signed with: ``given`` (base64, or a file holding it
    or a PEM public key), else the public half of the project's signing key."""
    if given is None:
        if project is None:
            raise UsageError(
                "no public key to check the signature against",
                hint="pass --public-key KEY (base64, or a file holding it)",
            )
        return public_key_of(load_key(project, create=False))
    text = given.strip()
    candidate = Path(text).expanduser()
    if len(text) < 200 and candidate.is_file():
        try:
            text = candidate.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the public key file {candidate}: {exc}") from None
    if text.startswith("-----BEGIN"):
        text = _pem_public(text)
    raw = _b64(text, "public key")
    if len(raw) != 32:
        raise UsageError(
            "the public key is not an Ed25519 public key (32 bytes, base64)",
            hint="use the key `airlock audit key` prints",
        )
    return base64.b64encode(raw).decode("ascii")


def _pem_public(text: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(text.encode())
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError("the public key file is not an Ed25519 public key")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise UsageError(f"the {what} is not base64") from None


# -- checkpoints -------------------------------------------------------------------------------


def checkpoint_dir(project_root: Path) -> Path:
    return state_dir(project_root) / "audit" / "checkpoints"


def make_checkpoint(
    verified: Verification, key: Ed25519PrivateKey, project: str, at: datetime | None = None
) -> dict[str, Any]:
    """A signed checkpoint of a log that verified."""
    assert verified.ok and verified.hashes
    body: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "project": project,
        "log_id": verified.hashes[0],
        "size": len(verified.hashes),
        "root": merkle_root([leaf_hash(e) for e in verified.encodings]).hex(),
        "head": verified.hashes[-1],
        "at": (at or datetime.now(UTC)).isoformat(timespec="seconds"),
        "public_key": public_key_of(key),
    }
    body["key_id"] = key_id(body["public_key"])
    body["signature"] = base64.b64encode(key.sign(_signed(body))).decode("ascii")
    return body


def _signed(checkpoint: Mapping[str, Any]) -> bytes:
    """What a checkpoint's signature covers: its fields but the signature and key id."""
    return canonical({name: checkpoint[name] for name in _CHECKPOINT_FIELDS})


def read_checkpoint(source: Path | Mapping[str, Any], where: str | None = None) -> dict[str, Any]:
    """A checkpoint from a file (or already parsed), its fields checked and its signature
    verified against the key it names. Bad input raises :class:`UsageError`."""
    where = where or str(source)
    if isinstance(source, Path):
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot read the checkpoint {where}: {exc.strerror}") from None
        except (ValueError, UnicodeDecodeError):
            raise UsageError(f"{where} is not a checkpoint (not JSON)") from None
    else:
        data = dict(source)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(
            f"{where} is not an Airlock audit checkpoint",
            hint="checkpoints are under .airlock/audit/checkpoints/",
        )
    kinds = {"size": int, "signature": str}
    for name in (*_CHECKPOINT_FIELDS, "signature"):
        want = kinds.get(name, str)
        if not isinstance(data.get(name), want) or isinstance(data.get(name), bool):
            raise UsageError(f"the checkpoint {where} has no valid {name!r}")
    if data["size"] < 1:
        raise UsageError(f"the checkpoint {where} has no valid 'size'")
    if not _signature_holds(data):
        raise UsageError(
            f"the signature of the checkpoint {where} does not verify: the file was changed "
            "after it was signed",
            hint="use the checkpoint as Airlock wrote it (or a copy kept elsewhere)",
        )
    data["key_id"] = key_id(data["public_key"])  # derived, never taken from the file: unsigned
    return data


def _signature_holds(checkpoint: Mapping[str, Any]) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        public = Ed25519PublicKey.from_public_bytes(_b64(checkpoint["public_key"], "public key"))
        public.verify(_b64(checkpoint["signature"], "signature"), _signed(checkpoint))
    except (InvalidSignature, ValueError, UsageError):
        return False
    return True


def _require_key(checkpoint: Mapping[str, Any], trusted: str | None, where: str) -> None:
    if trusted is not None and checkpoint["public_key"] != trusted:
        raise UsageError(
            f"the checkpoint {where} was signed with key {key_id(checkpoint['public_key'])}, "
            f"not with the trusted key {key_id(trusted)}",
            hint=f"check it against the key that signed it (--public-key), or set {KEY_ENV} to "
            "the project's audit key",
        )


def check_checkpoint(
    checkpoint: Mapping[str, Any], verified: Verification, trusted: str | None, where: str
) -> str | None:
    """Compare a (read) checkpoint with the log; the problem found, None when the log matches.

    A checkpoint of another log, or signed with another key than ``trusted``, is bad input
    (:class:`UsageError`); a log that lost or changed entries the checkpoint covers is a
    problem (returned)."""
    _require_key(checkpoint, trusted, where)
    size = checkpoint["size"]
    if verified.log_id is not None and checkpoint["log_id"] != verified.log_id:
        raise UsageError(
            f"the checkpoint {where} is of another audit log (its log id "
            f"{checkpoint['log_id'][:16]}, this log's {verified.log_id[:16]})",
            hint="use a checkpoint of this project's state store; if it is, its entry 1 was "
            "rewritten",
        )
    if size > len(verified.hashes):
        if not verified.ok:
            return verified.problem
        return (
            f"the log has {len(verified.hashes)} entries, but the checkpoint {where} covers "
            f"{size}: entries {len(verified.hashes) + 1} to {size} were removed"
        )
    root = merkle_root([leaf_hash(e) for e in verified.encodings[:size]]).hex()
    if root != checkpoint["root"] or verified.hashes[size - 1] != checkpoint["head"]:
        return (
            f"entries 1 to {size} do not match the checkpoint {where}: at least one of them "
            "was rewritten, with the hashes after it"
        )
    return None


def newest_checkpoint(project_root: Path) -> Path | None:
    """The local checkpoint of the largest size."""
    folder = checkpoint_dir(project_root)
    sizes = []
    if folder.is_dir():
        for path in folder.glob("*.json"):
            if path.stem.isdigit():
                sizes.append((int(path.stem), path))
    return max(sizes)[1] if sizes else None


def write_checkpoint(
    store: StateStore, project_root: Path, project: str, *, release_id: str | None = None
) -> dict[str, Any] | None:
    """Sign a checkpoint of the whole log and write it to ``.airlock/audit/checkpoints/N.json``
    (and, given a release, to its ``reports/audit-checkpoint.json``); None for an empty log.

    The log must verify, and agree with the newest local checkpoint: a log that does not is
    never signed (:class:`AuditFailed`)."""
    verified = verify_rows(store.audit_rows())
    if not verified.ok:
        raise AuditFailed(
            f"the audit log does not verify, so it was not signed: {verified.problem}",
            hint="run `airlock audit verify` for details",
        )
    if not verified.hashes:
        return None
    newest = newest_checkpoint(project_root)
    if newest is not None:
        shown = _shown(newest, project_root)
        try:
            problem = check_checkpoint(read_checkpoint(newest, shown), verified, None, shown)
        except UsageError as exc:
            problem = exc.message
        if problem is not None:
            raise AuditFailed(
                f"the audit log no longer matches its newest checkpoint, so it was not signed: "
                f"{problem}",
                hint="run `airlock audit verify --checkpoint FILE`; if the state store was "
                f"replaced on purpose, move {checkpoint_dir(project_root)} away",
            )
    key = load_key(project, create=True)
    checkpoint = make_checkpoint(verified, key, project)
    text = json.dumps(checkpoint, indent=2) + "\n"
    folder = checkpoint_dir(project_root)
    _write_file(folder / f"{checkpoint['size']}.json", text)
    if release_id is not None:
        release = releases_dir(project_root) / release_id
        if release.is_dir():
            _write_file(release / "reports" / "audit-checkpoint.json", text)
    return checkpoint


def _shown(path: Path, project_root: Path) -> str:
    try:
        return str(path.relative_to(project_root))
    except ValueError:
        return str(path)


def _write_file(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".checkpoint-", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        raise UsageError(
            f"cannot write the audit checkpoint {path}: {exc.strerror}",
            hint="check the folder's permissions",
        ) from None


# -- inclusion proofs --------------------------------------------------------------------------


def make_proof(verified: Verification, seq: int, checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """A proof that entry ``seq`` is in the log ``checkpoint`` signed, checkable on its own."""
    size = checkpoint["size"]
    leaves = [leaf_hash(e) for e in verified.encodings[:size]]
    row = verified.rows[seq - 1]
    return {
        "format": PROOF_FORMAT,
        "entry": {
            "seq": row["seq"],
            "at": row["at"],
            "actor": row["actor"],
            "env": row["env"],
            "kind": row["kind"],
            "payload": json.loads(row["payload"]),
            "prev": verified.hashes[seq - 2] if seq > 1 else "",
        },
        "hash": verified.hashes[seq - 1],
        "leaf_index": seq - 1,
        "tree_size": size,
        "path": [node.hex() for node in inclusion_path(leaves, seq - 1)],
        "checkpoint": dict(checkpoint),
    }


def verify_proof(proof: Any, trusted: str) -> dict[str, Any]:
    """Check a proof with nothing but itself and the public key: the checkpoint's signature and
    key, the entry's leaf hash, and the path up to the signed root. Malformed input raises
    :class:`UsageError`; the verdict is ``ok`` in the result."""
    if not isinstance(proof, dict) or proof.get("format") != PROOF_FORMAT:
        raise UsageError("not an Airlock audit proof", hint="make one with `airlock audit proof N`")
    checkpoint = read_checkpoint(_field(proof, "checkpoint", dict), "in the proof")
    _require_key(checkpoint, trusted, "in the proof")
    entry = _field(proof, "entry", dict)
    index = _field(proof, "leaf_index", int)
    size = _field(proof, "tree_size", int)
    path = _field(proof, "path", list)
    try:
        encoding = encode(
            entry["seq"],
            entry["at"],
            entry["actor"],
            entry["env"],
            entry["kind"],
            entry["payload"],
            entry["prev"],
        )
        nodes = [bytes.fromhex(node) for node in path]
    except (KeyError, TypeError, ValueError):
        raise UsageError("the proof's entry or path is malformed") from None
    problems = []
    if entry["seq"] != index + 1:
        problems.append(f"the entry is number {entry['seq']}, the proof is for {index + 1}")
    if size != checkpoint["size"]:
        covered = checkpoint["size"]
        problems.append(f"the proof is for {size} entries, its checkpoint covers {covered}")
    if entry_hash(encoding) != proof.get("hash"):
        problems.append("the entry does not match its hash")
    if not verify_inclusion(
        leaf_hash(encoding), index, size, nodes, bytes.fromhex(checkpoint["root"])
    ):
        problems.append("the path does not lead to the checkpoint's signed root")
    return {
        "ok": not problems,
        "problems": problems,
        "seq": entry["seq"],
        "kind": entry["kind"],
        "tree_size": size,
        "log_id": checkpoint["log_id"],
        "key_id": key_id(checkpoint["public_key"]),
    }


def _field(data: Mapping[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UsageError(f"the proof has no valid {name!r}")
    return value
