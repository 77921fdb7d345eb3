"""Committed secrets (INC11): API keys, tokens, private keys and passwords in a git repository.

A secret that was ever committed is in every clone of the repository, even after a later commit
removed it: the only fix is to rotate it. This scanner reads the whole history, so such secrets
are found and reported with the commit that introduced them, its date, and whether the secret is
still in the working tree.

How it stays fast (see ``docs/secrets.md`` for figures):

* every unique blob of the history is read exactly once: ``git log --raw`` lists which blob each
  commit put at each path, ``git cat-file --batch-check`` gives their sizes (binary and huge
  blobs are skipped), and ``git cat-file --batch`` streams their contents;
* each detector is a regular expression compiled on bytes that starts with literal text, which
  CPython's ``re`` finds with a fast substring search (rare prefixes are first tested with
  ``needle in data``); names such as ``password`` or ``api_key`` are matched in the lowered text,
  and only values that fit the shape of an assignment reach the Python-level tests;
* batches of blobs are scanned in worker processes (Python's ``re`` holds the GIL), each reading
  its own batch from its own ``git cat-file``, so no content crosses a process boundary;
* the blob → (path, commit) map comes from the same ``git log`` pass, and is consulted only for
  the few blobs with findings.

Nothing here prints, logs, stores or raises a secret's value: a :class:`Hit` keeps the value in
memory only (it is left out of its ``repr``), and findings carry a SHA-256 fingerprint and a
masked prefix of at most four characters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from airlock.checks.secret_formats import FORMAT_KINDS, FORMATS, KeyFormat
from airlock.errors import Location, UsageError
from airlock.findings import Finding, Severity

CODE = "secret.committed"

#: Files (and blobs) larger than this are skipped and counted, not scanned.
MAX_FILE_BYTES = 5 * 2**20
#: A blob with a NUL byte in its first this-many bytes is binary (git's own rule).
BINARY_SNIFF_BYTES = 8000
#: Below this many bytes to scan, worker processes cost more than they save.
PARALLEL_MIN_BYTES = 4 * 2**20

#: Every detector's stable ``kind`` and what it finds.
KINDS: dict[str, str] = {
    "aws-access-key-id": "AWS access key id",
    "aws-secret-access-key": "AWS secret access key",
    "stripe-live-key": "Stripe live secret key",
    "stripe-test-key": "Stripe test-mode secret key",
    "stripe-webhook-secret": "Stripe webhook signing secret",
    "twilio-auth-token": "Twilio auth token",
    "twilio-api-key": "Twilio API key",
    "sendgrid-api-key": "SendGrid API key",
    "github-token": "GitHub token",
    "slack-token": "Slack token",
    "slack-webhook": "Slack webhook URL",
    "google-api-key": "Google API key",
    "private-key": "private key",
    "jwt": "JSON Web Token",
    "database-url": "database URL with a password",
    "generic-secret": "high-entropy value assigned to a secret-like name",
    **FORMAT_KINDS,
}

#: Lockfiles hold package hashes, never hand-written secrets: only the specific detectors (key
#: formats with a fixed prefix) run on them, not the name/entropy one.
# fmt: off
LOCKFILES = frozenset({
    "package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml", "poetry.lock",
    "pipfile.lock", "pdm.lock", "uv.lock", "cargo.lock", "go.sum", "composer.lock",
    "gemfile.lock", "mix.lock", "pubspec.lock", "packages.lock.json", "flake.lock",
})
# fmt: on

#: Folders never walked when scanning a folder that is not a git repository (in a repository,
#: ``.gitignore`` decides).
# fmt: off
SKIPPED_DIRS = frozenset({
    ".git", ".hg", ".svn", ".airlock", ".venv", "venv", "node_modules", "__pycache__", ".tox",
    ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache",
})
# fmt: on

_HINT = (
    "rotate it now (revoke it at the provider and issue a new one): it is in the git history, "
    "so every clone has it, and deleting or rewriting the file does not take it back; then "
    "load it from the environment or a secret manager instead. If it is not a secret, review "
    "it into the baseline: `airlock secrets baseline --reason '…'`"
)
_HINT_UNCOMMITTED = (
    "do not commit it: load it from the environment or a secret manager instead; if it is not "
    "a secret, review it into the baseline: `airlock secrets baseline --reason '…'`"
)


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """One secret found in one text: its kind, 1-based line, fingerprint and masked prefix.

    ``value`` is the secret itself. It exists in memory only so callers can act on it; it is not
    part of ``repr()`` or of comparisons, and nothing in Airlock writes it anywhere.
    """

    kind: str
    line: int
    fingerprint: str
    masked: str
    value: str = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        return KINDS.get(self.kind, self.kind)


@dataclass
class ScanResult:
    """Findings of a scan, and what it read to find them."""

    findings: list[Finding] = field(default_factory=list)
    bytes_scanned: int = 0
    blobs_scanned: int = 0
    files_scanned: int = 0
    commits: int = 0
    skipped_binary: int = 0
    skipped_large: int = 0
    seconds: float = 0.0

    @property
    def skipped(self) -> int:
        """Blobs and files not scanned: binary, or larger than :data:`MAX_FILE_BYTES`."""
        return self.skipped_binary + self.skipped_large

    def stats(self) -> dict[str, Any]:
        return {
            "bytes_scanned": self.bytes_scanned,
            "blobs_scanned": self.blobs_scanned,
            "files_scanned": self.files_scanned,
            "commits": self.commits,
            "skipped": self.skipped,
            "skipped_binary": self.skipped_binary,
            "skipped_large": self.skipped_large,
            "seconds": round(self.seconds, 3),
        }


# -- value tests -------------------------------------------------------------------------------


def shannon_entropy(value: bytes) -> float:
    """Bits of Shannon entropy per character of ``value`` (0 for an empty value)."""
    if not value:
        return 0.0
    total = len(value)
    return -sum(n / total * math.log2(n / total) for n in Counter(value).values())


_PLACEHOLDER_VALUES = frozenset(
    b"password passwd pass pwd secret token postgres postgresql mysql mariadb mongo mongodb redis "
    b"rabbitmq guest root admin user username test none null nil true false".split()
)
_SEQUENCES = (b"0123456789", b"abcdefghijklmnopqrstuvwxyz", b"qwertyuiop", b"asdfghjkl")
_PLACEHOLDER = re.compile(
    rb"xxxx|\*\*\*\*|\.\.\.\.|\xe2\x80\xa6|change.?me|example|placeholder|your|dummy|sample"
    rb"|redacted|replace.?me|insert|fixme|todo|username|\$\{|\{\{|%\(|\$\(|[<>]|"
    + b"|".join(seq[i : i + 8] for seq in _SEQUENCES for i in range(len(seq) - 7))
)
_RUN = re.compile(rb"(.)\1{5}")


def is_placeholder(value: bytes, *, case_sensitive: bool = False) -> bool:
    """True for values that stand for a secret rather than being one.

    ``xxxx``, ``changeme``, ``<your-key>``, ``${VAR}``, ``{{ var }}``, ``example``, six equal
    characters in a row, runs like ``12345678`` or ``abcdefgh``, three or fewer distinct
    characters, and well-known default passwords (``password``, ``postgres``, ``guest`` …).

    With ``case_sensitive`` (for the random part of a key whose format was recognised), a word
    or run counts only when written in one case or capitalised (``EXAMPLE``, ``Example``,
    ``qwertyui``): a random key has mixed-case runs like ``AsDfGhJk`` or ``xXxX`` by chance.
    """
    lowered = value.lower()
    if lowered in _PLACEHOLDER_VALUES or len(set(lowered)) <= 3:
        return True
    if not case_sensitive:
        return _PLACEHOLDER.search(lowered) is not None or _RUN.search(lowered) is not None
    if _RUN.search(value) is not None:
        return True
    for m in _PLACEHOLDER.finditer(lowered):
        written = value[m.start() : m.end()]
        if written in (m.group(), written.upper(), m.group().capitalize()):
            return True
    return False


def _fingerprint(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()


def _masked(value: bytes) -> str:
    return value[:4].decode("utf-8", "replace") + "…"


# -- detectors ---------------------------------------------------------------------------------
#
# A detector looks at one text (bytes) and appends (start, kind, value) for each secret it finds;
# ``start`` is where the secret (or its private key block) begins, which gives the line.
#
# Speed: CPython's ``re`` searches quickly only for a pattern that starts with literal text (it
# then skips ahead with a substring search); one that starts with a character class, an
# alternation or a lookbehind is tried at every position, 20 to 50 times slower. So every pattern
# here starts with a literal, the character before a match is checked in Python, and names are
# matched in lowered text (``re.IGNORECASE`` is slower as well).

_Raw = tuple[int, str, bytes]
_Detector = Callable[[bytes, list[_Raw]], None]

_ALNUM = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_TOKEN_CHARS = _ALNUM | frozenset(b"_-")
_NAME_CHARS = _ALNUM | frozenset(b"_.-")


def _preceded_by(data: bytes, start: int, chars: frozenset[int]) -> bool:
    return start > 0 and data[start - 1] in chars


def _looks_random(value: bytes, bits: float, *, case_sensitive: bool = False) -> bool:
    return (
        not is_placeholder(value, case_sensitive=case_sensitive) and shannon_entropy(value) >= bits
    )


class _KeyFormat:
    """A key format with a fixed prefix (``ghp_``, ``AIza`` …): the whole match is the secret.

    ``pattern`` must start with literal text, so that ``re`` finds candidates with a fast
    substring search. When ``needles`` are given, the pattern runs only on a text that contains
    one of them (``needle in data`` is faster still). A match right after a character of
    ``left`` is the tail of a longer token and does not count; the placeholder test (and
    ``valid``) apply to the match from ``body_from`` on, past the fixed prefix, or to the
    pattern's group ``b`` when it has one; a group ``v`` is the secret when it is not the whole
    match.

    Formats from :data:`~airlock.checks.secret_formats.FORMATS` add: an ``anchor`` (literal
    text inside the key, around which a pattern that does not start with a literal is tried),
    ``context`` words one of which the text must contain, and a ``checksum``: a key whose
    checksum holds is reported however it looks, others must pass the placeholder test (in
    its case-sensitive form, see :func:`is_placeholder`) and ``valid``.
    """

    def __init__(
        self,
        kind: str | Callable[[bytes], str],
        pattern: bytes,
        *,
        body_from: int = 0,
        needles: tuple[bytes, ...] = (),
        left: frozenset[int] = _ALNUM,
        valid: Callable[[bytes], bool] | None = None,
        checksum: Callable[[bytes], bool] | None = None,
        anchor: bytes = b"",
        window: int = 256,
        context: tuple[bytes, ...] = (),
    ) -> None:
        self.kind = kind
        self.pattern = re.compile(pattern)
        self.body_from = body_from
        self.needles = needles
        self.left = left
        self.valid = valid
        self.checksum = checksum
        self.anchor = anchor
        self.window = window
        # each context word as people write it: lower case, capitalised, upper case
        self.context = tuple(
            {form for word in context for form in (word, word.capitalize(), word.upper())}
        )
        self.groups = self.pattern.groupindex

    def _matches(self, data: bytes) -> Iterable[re.Match[bytes]]:
        if not self.anchor:
            yield from self.pattern.finditer(data)
            return
        seen: set[int] = set()
        at = data.find(self.anchor)
        while at >= 0:
            low, high = max(0, at - self.window), min(len(data), at + self.window)
            for m in self.pattern.finditer(data, low, high):
                cut = m.end() == high and high < len(data)  # may go on past the window
                if m.start() <= at < m.end() and not cut and m.start() not in seen:
                    seen.add(m.start())
                    yield m
            at = data.find(self.anchor, at + len(self.anchor))

    def __call__(self, data: bytes, out: list[_Raw]) -> None:
        if self.needles and not any(needle in data for needle in self.needles):
            return
        if self.anchor and self.anchor not in data:
            return
        if self.context and not any(word in data for word in self.context):
            return
        for m in self._matches(data):
            if _preceded_by(data, m.start(), self.left):
                continue
            value = m.group("v") if "v" in self.groups else m.group()
            body = m.group("b") if "b" in self.groups else m.group()[self.body_from :]
            confirmed = self.checksum is not None and self.checksum(body)
            if not confirmed and (
                is_placeholder(body, case_sensitive=True)
                or (self.valid is not None and not self.valid(body))
            ):
                continue
            kind = self.kind if isinstance(self.kind, str) else self.kind(value)
            start = m.start("v") if "v" in self.groups else m.start()
            out.append((start, kind, value))

    @classmethod
    def of(cls, fmt: KeyFormat) -> _KeyFormat:
        """The detector of one documented provider format."""

        def valid(body: bytes) -> bool:
            return (
                len(body) >= fmt.min_length
                and sum(c in _DIGIT_BYTES for c in body) >= fmt.min_digits
                and shannon_entropy(body) >= fmt.entropy
            )

        return cls(
            fmt.kind,
            fmt.pattern,
            left=_LEFT[fmt.left],
            valid=valid,
            checksum=fmt.checksum,
            anchor=fmt.anchor,
            window=fmt.window,
            context=fmt.context,
        )


_DIGIT_BYTES = frozenset(b"0123456789")
_LEFT = {"alnum": _ALNUM, "token": _TOKEN_CHARS, "name": _NAME_CHARS, "none": frozenset()}


def _stripe_kind(value: bytes) -> str:
    return "stripe-live-key" if value[3:8] == b"live_" else "stripe-test-key"


def _entropy_at_least(bits: float) -> Callable[[bytes], bool]:
    def check(body: bytes) -> bool:
        return shannon_entropy(body) >= bits

    return check


_AWS_ID = re.compile(rb"A(?:KIA|SIA|BIA|CCA)[A-Z0-9]{16}(?![A-Za-z0-9])")
_AWS_ID_NEEDLES = (b"AKIA", b"ASIA", b"ABIA", b"ACCA")
_AWS_SECRET = re.compile(rb"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_TWILIO_SID = re.compile(rb"AC[0-9a-f]{32}(?![A-Za-z0-9])")
_HEX32 = re.compile(rb"(?<![A-Za-z0-9])[0-9a-f]{32}(?![A-Za-z0-9])")
_PAIR_WINDOW = 300  # how far after an id its secret may follow: ``Client("AC…", "…")``


def _aws_secret_ok(value: bytes) -> bool:
    has_lower = any(97 <= c <= 122 for c in value)
    has_upper = any(65 <= c <= 90 for c in value)
    return has_lower and has_upper and _looks_random(value, 4.0)


def _detect_aws(data: bytes, out: list[_Raw]) -> None:
    """Access key ids (``AKIA``/``ASIA``/``ABIA``/``ACCA`` + 16), and a 40-character secret
    right after one."""
    if not any(needle in data for needle in _AWS_ID_NEEDLES):
        return
    for m in _AWS_ID.finditer(data):
        body = m.group()[4:]
        if _preceded_by(data, m.start(), _ALNUM) or not _looks_random(
            body, 2.5, case_sensitive=True
        ):
            continue
        out.append((m.start(), "aws-access-key-id", m.group()))
        pair = _AWS_SECRET.search(data, m.end(), m.end() + _PAIR_WINDOW)
        if pair and _aws_secret_ok(pair.group()):
            out.append((pair.start(), "aws-secret-access-key", pair.group()))


def _detect_twilio_pair(data: bytes, out: list[_Raw]) -> None:
    """A Twilio auth token (32 hex) written right after an account SID (``AC`` + 32 hex)."""
    if b"AC" not in data:
        return
    for m in _TWILIO_SID.finditer(data):
        if _preceded_by(data, m.start(), _ALNUM):
            continue
        pair = _HEX32.search(data, m.end(), m.end() + _PAIR_WINDOW)
        if pair and _looks_random(pair.group(), 3.0):
            out.append((pair.start(), "twilio-auth-token", pair.group()))


_PRIVATE_KEY = re.compile(rb"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/=]{16,}")
_ESCAPED_NEWLINE = re.compile(rb"\\[rn]")


def _detect_private_keys(data: bytes, out: list[_Raw]) -> None:
    """``-----BEGIN … PRIVATE KEY-----`` blocks with a real body; the body is the secret.

    Bodies in JSON strings (``\\n`` escapes) count; blocks whose body is shorter than 64 base64
    characters (``...`` in documentation) do not.
    """
    if b"PRIVATE KEY" not in data:
        return
    for m in _PRIVATE_KEY.finditer(data):
        end = data.find(b"-----END", m.end(), m.end() + 65536)
        block = data[m.end() : end] if end >= 0 else data[m.end() : m.end() + 8192]
        parts: list[bytes] = []
        for line in _ESCAPED_NEWLINE.sub(b"\n", block).splitlines():
            if b":" in line:  # Proc-Type, DEK-Info and Comment headers
                continue
            run = _BASE64_RUN.search(line)
            if run is None:
                if parts and end < 0:
                    break
                continue
            parts.append(run.group())
        body = b"".join(parts)
        if len(body) >= 64 and not is_placeholder(body, case_sensitive=True):
            out.append((m.start(), "private-key", body))


# A JWT's header is a JSON object, so its base64url starts with ``eyJ`` (``{"``), or ``eyA``,
# ``ewo``, ``ew0`` and ``ewk`` when the object starts with a space, a newline, CR LF or a tab.
_JWT_TAIL = (
    rb"[A-Za-z0-9_-]{8,}={0,2}\.[A-Za-z0-9_-]{8,}={0,2}\.[A-Za-z0-9_-]{16,}={0,2}"
    rb"(?![A-Za-z0-9_-])"
)
_JWT_STARTS = (b"eyJ", b"eyA", b"ewo", b"ew0", b"ewk")
_JWTS = tuple((start, re.compile(start + _JWT_TAIL)) for start in _JWT_STARTS)


def _jwt_header_has_alg(value: bytes) -> bool:
    header = value.split(b".", 1)[0].rstrip(b"=")
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + b"=" * (-len(header) % 4)))
    except (ValueError, binascii.Error):
        return False
    return isinstance(decoded, dict) and "alg" in decoded


def _detect_jwts(data: bytes, out: list[_Raw]) -> None:
    """Three base64url parts whose first decodes to a JSON object with an ``alg``."""
    for start, pattern in _JWTS:
        if start not in data:
            continue
        for m in pattern.finditer(data):
            if not _preceded_by(data, m.start(), _TOKEN_CHARS) and _jwt_header_has_alg(m.group()):
                out.append((m.start(), "jwt", m.group()))


_URL_CREDENTIALS = re.compile(
    rb"://(?P<user>[^\s:/?#@\"'`<>]{0,128}):(?P<password>[^\s@/?#\"'`<>]{1,256})@"
    rb"(?P<host>[A-Za-z0-9_\[][A-Za-z0-9._\-\[\]]*)"
)
_DB_SCHEME = re.compile(
    rb"(?:^|[^A-Za-z0-9+.-])(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|rediss?|amqps?"
    rb"|mssql|sqlserver|cockroachdb)(?:\+[A-Za-z0-9]+)?\Z",
    re.IGNORECASE,
)


def _detect_database_urls(data: bytes, out: list[_Raw]) -> None:
    """``postgres://user:PASSWORD@host`` (and mysql, mongodb, redis, amqp …).

    Not when the password is a reference (``${DB_PASSWORD}``, ``$DB_PASSWORD``, ``{{ pw }}``,
    ``%(pw)s``), a placeholder, or the user name again (``app:app@``, a local default).
    """
    if b"://" not in data:
        return
    for m in _URL_CREDENTIALS.finditer(data):
        if not _DB_SCHEME.search(data, max(0, m.start() - 40), m.start()):
            continue
        password = m.group("password")
        if password.startswith((b"$", b"%", b"{")) or password == m.group("user"):
            continue
        if not is_placeholder(password):
            out.append((m.start("password"), "database-url", password))


_WEB_SCHEME = re.compile(
    rb"(?:^|[^A-Za-z0-9+.-])(?:https?|s?ftps?|smtps?|imaps?|pop3s?|ldaps?|git|ssh|svn|wss?)\Z",
    re.IGNORECASE,
)


def _detect_url_credentials(data: bytes, out: list[_Raw], taken: list[tuple[int, int]]) -> None:
    """``https://user:PASSWORD@host`` (and ftp, smtp, ldap, git, ssh …) with a random password.

    The password, percent-decoded, must look random (:func:`is_secret_like`); a key of a
    known format in that place (``https://x-access-token:ghs_…@github.com``) is reported by
    its own detector.
    """
    if b"://" not in data:
        return
    for m in _URL_CREDENTIALS.finditer(data):
        if not _WEB_SCHEME.search(data, max(0, m.start() - 40), m.start()):
            continue
        start, end = m.span("password")
        password = m.group("password")
        if password == m.group("user") or any(s < end and start < e for s, e in taken):
            continue
        if b"," in password or b":" in password:
            continue  # ``https://a.com:123,b:c@d.com``: a list of hosts, not a password
        if is_secret_like(_PERCENT.sub(_unquote, password), bare=True):
            out.append((start, "url-credentials", password))


_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")


def _unquote(m: re.Match[bytes]) -> bytes:
    return bytes([int(m.group(1), 16)])


@cache
def _specific() -> tuple[_Detector, ...]:
    """Every detector of a specific format (compiled on first use: the CLI starts faster)."""
    return (
        *_own_detectors(),
        *(_KeyFormat.of(fmt) for fmt in FORMATS),
    )


def _own_detectors() -> tuple[_Detector, ...]:
    return (
        _detect_aws,
        _KeyFormat(
            _stripe_kind,
            rb"[sr]k_(?:live|test)_[0-9A-Za-z]{20,247}(?![A-Za-z0-9])",
            body_from=8,
            needles=(b"k_live_", b"k_test_"),
        ),
        _KeyFormat(
            "stripe-webhook-secret",
            rb"whsec_[A-Za-z0-9]{24,}(?![A-Za-z0-9])",
            body_from=6,
            needles=(b"whsec_",),
        ),
        _detect_twilio_pair,
        _KeyFormat(
            "twilio-api-key",
            rb"SK[0-9a-fA-F]{32}(?![A-Za-z0-9])",
            body_from=2,
            valid=_entropy_at_least(3.0),
        ),
        _KeyFormat(
            "sendgrid-api-key",
            rb"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])",
            body_from=3,
            left=_NAME_CHARS,
        ),
        _KeyFormat(
            "slack-webhook",
            rb"https://hooks\.slack\.com/(?:services/T[A-Z0-9]{6,}/B[A-Z0-9]{6,}/[A-Za-z0-9]{16,}"
            rb"|(?:workflows|triggers)/[A-Za-z0-9_/+-]{20,})",
            body_from=24,
            needles=(b"hooks.slack.com/",),
            left=frozenset(),
        ),
        _KeyFormat(
            "google-api-key",
            rb"AIza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])",
            body_from=4,
            needles=(b"AIza",),
            left=_TOKEN_CHARS,
            valid=_entropy_at_least(3.5),
        ),
        _detect_private_keys,
        _detect_jwts,
        _detect_database_urls,
    )


# -- names with secret-like values -------------------------------------------------------------

# What may follow a secret-like word, in lowered text: the rest of the name, a closing quote or
# bracket, an operator (``=``, ``:``, ``:=``, ``=>``, ``==``, a type annotation then ``=``, a
# call's ``(``, or ``,`` after a quoted name) and a quoted value; or ``=``/``:`` and a bare one.
_ASSIGNMENT_TAIL = (
    rb"[a-z0-9_.-]*+(?P<close>[\"'`]?+\]?+)[ \t]*+(?=[:=(,])"
    rb"(?:(?P<op>:=|=>|==|=(?!=)|:[ \t]*[a-z_][a-z0-9_.]*(?:\[[a-z0-9_., |]*\])?"
    rb"(?:[ \t]*\|[ \t]*none)?[ \t]*=(?!=)|:|\(|,)"
    rb"[ \t]*[rbu]?(?P<quote>[\"'`])(?:(?:bearer|basic|token) )?"
    rb"(?![a-z][a-z0-9+.-]*://)(?P<qv>[^\"'`\s\\]{8,512})(?P=quote)"
    rb"|[=:](?!=)[ \t]*(?![a-z_$][a-z0-9_$]*(?:\.[a-z_$][a-z0-9_$]*)+(?:[\s,;)\]}]|\Z))"
    rb"(?P<uv>[^\s\"'`,;()<>\[\]{}\\]{8,512}+)(?![(\[{\])]))"
)
# Secret-like words; ``key`` counts only as api/access/private/signing/encryption/master key.
_KEYWORDS = (
    rb"pass(?:w|phrase)",
    rb"pwd",
    rb"secret",
    rb"token",
    rb"credential",
    rb"auth(?!or(?!i[sz]))",
)
_ASSIGNMENTS = [re.compile(word + _ASSIGNMENT_TAIL) for word in _KEYWORDS]
_KEY_ASSIGNMENT = re.compile(rb"key" + _ASSIGNMENT_TAIL)
_NAME_RUN = re.compile(rb"[a-z0-9_.-]*")
_PAIR_NAME = re.compile(
    rb"(?:passw(?:or)?d|passphrase|secret|token|(?:api|access|private|secret|signing"
    rb"|encryption|master)[_.-]?key)\Z"
)
_KEY_NAME = re.compile(rb"(?:api|access|private|signing|encryption|master)[_.-]?key\Z")

_HEX = re.compile(rb"[0-9a-fA-F]+")
_UUID = re.compile(rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DOTTED_NAME = re.compile(rb"[A-Za-z_$][A-Za-z0-9_$]*(?:\.[A-Za-z_$][A-Za-z0-9_$]*)+")
_SLUG = re.compile(rb"[a-z0-9]+(?:[-_./:][a-z0-9]+)+|[A-Z0-9]+(?:[-_./:][A-Z0-9]+)+")
_WORD = re.compile(rb"(?:^|[-_./:])[A-Za-z]{3,}(?=[-_./:]|$)")
_HASH_PREFIXES = (b"sha1", b"sha224", b"sha256", b"sha384", b"sha512", b"md5", b"blake2")
_MIN_GENERIC_LENGTH = 10
# First characters of references, format strings, paths and regular expressions, not secrets;
# bare (unquoted) values also exclude YAML tags, anchors and aliases, comments and decorators.
_NOT_FIRST = frozenset(b"${<.([")
_NOT_FIRST_BARE = _NOT_FIRST | frozenset(b"@&*!~#%")
_WORDS = re.compile(rb"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
_LOWER = b"abcdefghijklmnopqrstuvwxyz"
_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LETTERS = _LOWER + _UPPER
_DIGITS = b"0123456789"
_SYMBOLS = 20  # punctuation a password generator typically draws from
_DATE = re.compile(rb"\d{4}-\d\d-\d\d")
_VARIABLE = re.compile(rb"\$[A-Z_]{3,}")
_PATH = re.compile(rb"(?:/[A-Za-z0-9_.-]+)+/?")


def _alphabet_size(value: bytes) -> int:
    """How many different characters a random value like this one is drawn from."""
    if _HEX.fullmatch(value):
        return 16
    size = 0
    rest = value
    for chars, count in ((_DIGITS, 10), (_LOWER, 26), (_UPPER, 26)):
        fewer = rest.translate(None, chars)
        if len(fewer) < len(rest):
            size += count
        rest = fewer
    return size + (_SYMBOLS if rest else 0)


def _entropy_threshold(value: bytes) -> float:
    """Bits per character that a random value of this length and alphabet is very likely to reach.

    ``n`` characters drawn at random from ``k`` take about ``k * (1 - (1 - 1/k) ** n)`` distinct
    values, which bounds their entropy by the log2 of that; random values come close to the
    bound (a 16-digit hex string has about 3.2 bits per character). The threshold is 80 % of it:
    random values of 16 characters or more pass (99 % and more of them), repetitive ones do not.
    """
    n, k = len(value), _alphabet_size(value)
    return 0.8 * math.log2(k * (1 - (1 - 1 / k) ** n))


def _looks_like_words(value: bytes) -> bool:
    """``PKCS7PrivateKeyTypes``, ``AuthorizationController``: names made of words, not secrets.

    Split into runs of one case or of digits, a random string has runs of about 1.8 characters
    on average; names made of words have runs of 3.5 or more.
    """
    if value.lower() == value or value.upper() == value:
        return False  # single-case values are judged by entropy and the slug rule
    runs = _WORDS.findall(value)
    covered = sum(len(run) for run in runs)
    return covered >= 0.9 * len(value) and covered >= 3.5 * len(runs)


def is_secret_like(value: bytes, *, bare: bool = False) -> bool:
    """Whether a value assigned to a secret-like name looks like a real secret.

    It must be at least 10 characters long; not a placeholder or reference; not a dotted name
    (``settings.API_KEY``), path, URL, date, hash digest (``sha256:…``, ``sha512-…``), slug of words
    (``prod/db-password``) or a name made of words (``PrivateKeyTypes``); have a letter, and a
    digit unless it is mixed-case and 16 characters or longer; and reach
    :func:`_entropy_threshold`. UUIDs count (they are common API keys).
    """
    if len(value) < _MIN_GENERIC_LENGTH or value[0] in (_NOT_FIRST_BARE if bare else _NOT_FIRST):
        return False
    if b"://" in value or value.lower().startswith(_HASH_PREFIXES):
        return False
    if _DATE.match(value) or _VARIABLE.search(value):
        return False  # a timestamp, or text around a ``$VARIABLE``
    if _UUID.fullmatch(value):
        return not is_placeholder(value)
    if _DOTTED_NAME.fullmatch(value) or (
        (_SLUG.fullmatch(value) or _PATH.fullmatch(value)) and _WORD.search(value)
    ):
        return False
    if _looks_like_words(value):
        return False
    if len(value.translate(None, _LETTERS)) == len(value):
        return False  # no letter: a number, a date, a version
    if len(value.translate(None, _DIGITS)) == len(value) and not (
        len(value) >= 16 and value.lower() != value and value.upper() != value
    ):
        return False  # no digit: only a long mixed-case value can be random
    return shannon_entropy(value) >= _entropy_threshold(value) and not is_placeholder(value)


def _classify_assignment(name: bytes, value: bytes, *, bare: bool) -> str | None:
    """The kind of secret ``name = value`` holds, if any (``name`` is lowered)."""
    aws_name = b"aws" in name or (b"secret" in name and b"access" in name)
    if aws_name and len(value) == 40 and _AWS_SECRET.fullmatch(value) and _aws_secret_ok(value):
        return "aws-secret-access-key"
    if b"twilio" in name and _HEX32.fullmatch(value) and _looks_random(value, 3.0):
        return "twilio-auth-token"
    return "generic-secret" if is_secret_like(value, bare=bare) else None


def _is_pair_name(name: bytes) -> bool:
    """``("API_KEY", "…")``: a configuration key in one case, ending in a secret-like word."""
    return name in (name.lower(), name.upper()) and bool(_PAIR_NAME.search(name.lower()))


def _detect_assignments(data: bytes, out: list[_Raw], taken: list[tuple[int, int]]) -> None:
    """High-entropy values assigned to secret-like names, in the many forms code and config use.

    ``password = "…"``, ``api_key: …``, ``API_KEY=…``, ``"client_secret": "…"``,
    ``token: str = "…"``, ``env["SECRET"] = "…"``, ``client(api_key="…")``, ``login(password='…')``,
    ``set_token("…")``, ``("api_key", "…")`` and ``"Authorization": "Bearer …"``. A value that a
    specific detector already reported (``Stripe(api_key="sk_live_…")``) is not reported again.
    """
    lowered = data.lower()
    seen: set[int] = set()
    for pattern in (*_ASSIGNMENTS, _KEY_ASSIGNMENT):
        for m in pattern.finditer(lowered):
            start, end = m.span("qv")
            if start < 0:
                start, end = m.span("uv")
            if start in seen or (m.group("op") == b"," and not m.group("close")):
                continue  # ``f(token, "…")``: only ``("token", "…")`` pairs a name and a value
            before = lowered[max(0, m.start() - 64) : m.start()][::-1]
            name_start = m.start() - _NAME_RUN.match(before).end()  # type: ignore[union-attr]
            if pattern is _KEY_ASSIGNMENT and not _KEY_NAME.search(
                lowered, name_start, m.start() + 3
            ):
                continue
            if m.group("op") == b"," and not _is_pair_name(data[name_start : m.start("close")]):
                continue  # ``("tokens", "symbol2label")`` is a tuple of names, not a pair
            seen.add(start)
            if any(s < end and start < e for s, e in taken):
                continue
            name = lowered[name_start : m.start("close")]
            kind = _classify_assignment(name, data[start:end], bare=m.start("uv") >= 0)
            if kind is not None:
                out.append((start, kind, data[start:end]))


def _scan_bytes(data: bytes, *, generic: bool = True) -> list[Hit]:
    """Every secret in ``data``, in order of position."""
    raws: list[_Raw] = []
    for detect in _specific():
        detect(data, raws)
    if generic:
        taken = [(start, start + len(value)) for start, _, value in raws]
        _detect_url_credentials(data, raws, taken)
        taken = [(start, start + len(value)) for start, _, value in raws]
        _detect_assignments(data, raws, taken)
    if not raws:
        return []
    raws.sort(key=lambda raw: raw[0])
    hits = []
    line, counted = 1, 0
    for start, kind, value in raws:
        line += data.count(b"\n", counted, start)
        counted = start
        text = value.decode("utf-8", "replace")
        hits.append(Hit(kind, line, _fingerprint(value), _masked(value), text))
    return hits


def is_lockfile(path: str) -> bool:
    """Whether ``path`` names a package manager's lockfile (see :data:`LOCKFILES`)."""
    return path.rpartition("/")[2].lower() in LOCKFILES


def scan_text(text: bytes | str, *, path: str) -> list[Hit]:
    """The secrets in one text, as found in a file at ``path`` (lockfiles get fewer detectors)."""
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    return _scan_bytes(data, generic=not is_lockfile(path))


# -- git ---------------------------------------------------------------------------------------

_GIT = ("git", "-c", "core.quotepath=off", "-c", "log.showSignature=false")
_NULL_SHA = "0" * 40
_REGULAR_MODES = frozenset({"100644", "100755"})


def _git(cwd: Path | str, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    try:
        proc = subprocess.run([*_GIT, *args], cwd=cwd, capture_output=True, check=False)
    except FileNotFoundError:
        raise UsageError(
            "git is not installed (or not on PATH), so the repository cannot be scanned",
            hint="install git, or scan only the files on disk (history=False)",
        ) from None
    if check and proc.returncode != 0:
        raise _git_failed(args, cwd, proc.stderr)
    return proc


def _git_failed(args: Sequence[str], cwd: Path | str, stderr: bytes) -> UsageError:
    reason = stderr.decode("utf-8", "replace").strip().splitlines()
    return UsageError(
        f"`git {args[0]}` failed in {cwd}: {reason[-1] if reason else 'no message'}",
        hint="check that the repository is healthy: `git fsck`",
    )


def _folder(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder, so there is nothing to scan")
    return root.resolve()


def _toplevel(root: Path) -> Path | None:
    """The top folder of the git work tree ``root`` is in, or None if it is in none."""
    proc = _git(root, "rev-parse", "--show-toplevel", check=False)
    if proc.returncode == 0:
        return Path(proc.stdout.decode("utf-8", "surrogateescape").strip()).resolve()
    if b"not a git repository" in proc.stderr.lower():
        return None
    raise _git_failed(["rev-parse"], root, proc.stderr)


def _require_repository(root: Path, what: str) -> Path:
    top = _toplevel(root)
    if top is None:
        raise UsageError(
            f"{root} is not a git repository, so {what} cannot be scanned",
            hint="run it inside a git repository (or `git init` one); to scan only the files "
            "on disk, scan the working tree (history=False, `--no-history`)",
        )
    return top


@dataclass
class _History:
    """What one ``git log --raw`` pass tells: each commit, and where each blob appeared."""

    commits: list[tuple[str, int, str]] = field(default_factory=list)  # sha, author ts, ISO date
    # blob -> [(path, index into commits)], every (blob, path) a commit introduced
    introduced: dict[str, list[tuple[str, int]]] = field(default_factory=dict)


def _walk_history(top: Path) -> _History:
    history = _History()
    if not _git(top, "rev-list", "--all", "--max-count=1").stdout.strip():
        return history  # no commits yet
    out = _git(
        top,
        "log",
        "--all",
        "--root",
        "--no-renames",
        "--raw",
        "--no-abbrev",
        "-z",
        "-m",  # merges: against each parent (git before 2.31 has no --diff-merges)
        "--no-color",
        "--no-textconv",
        "--format=%x01%H %at %aI",
    ).stdout
    for record in out.split(b"\x01")[1:]:
        header, _, rest = record.partition(b"\0")
        sha, timestamp, date = header.decode().split(" ", 2)
        if not history.commits or history.commits[-1][0] != sha:  # -m repeats merges
            history.commits.append((sha, int(timestamp), date))
        index = len(history.commits) - 1
        tokens = rest.lstrip(b"\n").split(b"\0")
        for i in range(0, len(tokens) - 1, 2):
            meta = tokens[i].decode().split()
            if len(meta) < 5 or meta[1] not in _REGULAR_MODES or meta[3] == _NULL_SHA:
                continue
            path = tokens[i + 1].decode("utf-8", "surrogateescape")
            history.introduced.setdefault(meta[3], []).append((path, index))
    return history


def _blob_sizes(top: Path, shas: Iterable[str]) -> dict[str, int]:
    """Size of each blob that exists (missing ones, e.g. in a partial clone, are left out)."""
    request = "".join(f"{sha}\n" for sha in shas).encode()
    if not request:
        return {}
    try:
        proc = subprocess.run(
            [*_GIT, "cat-file", "--batch-check=%(objectname) %(objecttype) %(objectsize)"],
            cwd=top,
            input=request,
            capture_output=True,
            check=False,
        )
    except FileNotFoundError:
        raise UsageError("git is not installed (or not on PATH)") from None
    if proc.returncode != 0:
        raise _git_failed(["cat-file"], top, proc.stderr)
    sizes = {}
    for line in proc.stdout.decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "blob":
            sizes[parts[0]] = int(parts[2])
    return sizes


# -- scanning jobs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """A batch to scan in one process: blobs (by sha, read with ``git cat-file``) or files."""

    source: str  # "blobs" or "files"
    cwd: str
    items: tuple[tuple[str, bool], ...]  # (sha or relative path, generic detectors on?)


@dataclass
class _JobResult:
    hits: dict[str, list[Hit]] = field(default_factory=dict)
    scanned: set[str] = field(default_factory=set)
    bytes: int = 0
    binary: int = 0
    large: int = 0


def _is_binary(data: bytes) -> bool:
    return b"\0" in data[:BINARY_SNIFF_BYTES]


def _scan_item(result: _JobResult, name: str, data: bytes, generic: bool) -> None:
    if _is_binary(data):
        result.binary += 1
        return
    result.scanned.add(name)
    result.bytes += len(data)
    hits = _scan_bytes(data, generic=generic)
    if hits:
        result.hits[name] = hits


def _run_job(job: _Job) -> _JobResult:
    """Scan one batch (in a worker process, or in this one)."""
    result = _JobResult()
    if job.source == "files":
        base = Path(job.cwd)
        for rel, generic in job.items:
            path = base / rel
            try:
                if path.is_symlink() or not path.is_file():
                    continue
                if path.stat().st_size > MAX_FILE_BYTES:
                    result.large += 1
                    continue
                data = path.read_bytes()
            except OSError:
                continue  # deleted or unreadable since it was listed
            _scan_item(result, rel, data, generic)
        return result
    with tempfile.TemporaryFile() as request, tempfile.TemporaryFile() as errors:
        request.write("".join(f"{sha}\n" for sha, _ in job.items).encode())
        request.seek(0)
        proc = subprocess.Popen(
            [*_GIT, "cat-file", "--batch"],
            cwd=job.cwd,
            stdin=request,
            stdout=subprocess.PIPE,
            stderr=errors,
            bufsize=1 << 20,
        )
        assert proc.stdout is not None
        try:
            with proc.stdout as out:
                for sha, generic in job.items:
                    header = out.readline().split()
                    if len(header) != 3:  # "<sha> missing", or git stopped
                        if not header:
                            break
                        continue
                    data = out.read(int(header[2]))
                    out.read(1)
                    _scan_item(result, sha, data, generic)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if proc.wait() != 0:
            errors.seek(0)
            raise _git_failed(["cat-file"], job.cwd, errors.read())
    return result


def _batches(sizes: list[tuple[tuple[str, bool], int]], parts: int) -> list[list[tuple[str, bool]]]:
    """Split items into about ``parts`` batches of similar total size, keeping their order."""
    total = sum(size for _, size in sizes)
    target = max(total / max(parts, 1), 1.0)
    batches: list[list[tuple[str, bool]]] = [[]]
    filled = 0
    for item, size in sizes:
        if filled >= target and batches[-1]:
            batches.append([])
            filled = 0
        batches[-1].append(item)
        filled += size
    return [batch for batch in batches if batch]


def _worker_count(workers: int | None, total_bytes: int) -> int:
    if workers is not None:
        if workers < 1:
            raise UsageError(f"workers must be 1 or more, not {workers}")
        return workers
    if total_bytes < PARALLEL_MIN_BYTES:
        return 1
    return max(1, min(os.cpu_count() or 1, 8))


def _run_jobs(
    cwd: Path,
    blobs: list[tuple[tuple[str, bool], int]],
    files: list[tuple[tuple[str, bool], int]],
    workers: int | None,
) -> _JobResult:
    """Scan blobs and files, in worker processes when there is enough to scan."""
    total = sum(size for _, size in blobs) + sum(size for _, size in files)
    count = _worker_count(workers, total)
    jobs = [
        _Job(source, str(cwd), tuple(batch))
        for source, items in (("blobs", blobs), ("files", files))
        for batch in _batches(items, count * 4 if count > 1 else 1)
    ]
    results: list[_JobResult] | None = None
    if count > 1 and len(jobs) > 1:
        try:
            with ProcessPoolExecutor(max_workers=min(count, len(jobs))) as pool:
                results = list(pool.map(_run_job, jobs))
        except (OSError, NotImplementedError, BrokenProcessPool):
            results = None  # no worker processes here (sandbox, no /dev/shm): scan in this one
    if results is None:
        results = [_run_job(job) for job in jobs]
    merged = _JobResult()
    for result in results:
        merged.hits.update(result.hits)
        merged.scanned |= result.scanned
        merged.bytes += result.bytes
        merged.binary += result.binary
        merged.large += result.large
    return merged


# -- the working tree --------------------------------------------------------------------------


def _split_z(out: bytes) -> list[str]:
    return [p.decode("utf-8", "surrogateescape") for p in out.split(b"\0") if p]


def _tree_entries(top: Path, root: Path) -> list[tuple[str, str | None]]:
    """Files in the work tree under ``root``: (path from ``top``, index blob if unchanged).

    Tracked files and untracked ones that ``.gitignore`` does not exclude; a tracked file that
    differs from the index (or was never committed) has no blob, so it is read from disk.
    """
    staged = _git(root, "ls-files", "-z", "--full-name", "--stage").stdout
    index: dict[str, str] = {}
    for entry in staged.split(b"\0"):
        if not entry:
            continue
        meta, _, path = entry.partition(b"\t")
        mode, sha, _stage = meta.decode().split()
        if mode in _REGULAR_MODES:
            index[path.decode("utf-8", "surrogateescape")] = sha
    changed = set(_split_z(_git(root, "ls-files", "-z", "--full-name", "-m").stdout))
    deleted = set(_split_z(_git(root, "ls-files", "-z", "--full-name", "-d").stdout))
    others = _split_z(
        _git(root, "ls-files", "-z", "--full-name", "--others", "--exclude-standard").stdout
    )
    entries: list[tuple[str, str | None]] = [
        (path, None if path in changed else sha)
        for path, sha in index.items()
        if path not in deleted
    ]
    # Airlock's own files (the agent's token, sealed copies, logs) are never the user's leak;
    # a tracked one was committed on purpose and is scanned like any other file.
    entries.extend((path, None) for path in others if ".airlock" not in Path(path).parts)
    return entries


def _walk_folder(root: Path) -> list[str]:
    """Files under a folder that is not a git repository, minus :data:`SKIPPED_DIRS`."""
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        rel = Path(folder).relative_to(root)
        found.extend((rel / name).as_posix() for name in sorted(files))
    return found


def _file_sizes(base: Path, paths: Iterable[str]) -> list[tuple[tuple[str, bool], int]]:
    items = []
    for path in paths:
        try:
            size = (base / path).stat().st_size
        except OSError:
            continue
        items.append(((path, not is_lockfile(path)), size))
    return items


# -- findings ----------------------------------------------------------------------------------


@dataclass
class _Seen:
    """Where a secret (by fingerprint) was found at one path."""

    hit: Hit
    commit: str | None = None
    date: str | None = None
    order: tuple[int, int] = (0, 0)  # author timestamp, then git log position (older = larger)
    in_tree: bool = False
    tree_line: int | None = None


def _finding(path: str, seen: _Seen, *, staged: bool = False) -> Finding:
    hit = seen.hit
    if seen.commit is not None:
        where = f"committed in {seen.commit[:12]} ({seen.date})"
        state = (
            "still in the working tree"
            if seen.in_tree
            else "no longer in the files, but still in the history"
        )
        message = f"{hit.label} ({hit.kind}) {where}; {state}"
        hint = _HINT
    else:
        state = "staged for commit" if staged else "in the working tree, not committed"
        message = f"{hit.label} ({hit.kind}) {state}"
        hint = _HINT_UNCOMMITTED
    line = seen.tree_line if seen.tree_line is not None else hit.line
    return Finding(
        CODE,
        Severity.ERROR,
        message,
        Location(path, line, None, ""),
        hint=hint,
        evidence={
            "kind": hit.kind,
            "commit": seen.commit,
            "date": seen.date,
            "in_working_tree": seen.in_tree,
            "fingerprint": hit.fingerprint,
            "masked": hit.masked,
        },
    )


def _tree_findings(hits: Iterable[tuple[str, list[Hit]]], *, staged: bool = False) -> list[Finding]:
    found: dict[tuple[str, str], _Seen] = {}
    for path, path_hits in hits:
        for hit in path_hits:
            found.setdefault((hit.fingerprint, path), _Seen(hit, in_tree=True))
    return _sorted([_finding(path, seen, staged=staged) for (_, path), seen in found.items()])


def _sorted(findings: list[Finding]) -> list[Finding]:
    def key(f: Finding) -> tuple[str, int, str]:
        loc = f.location
        return (loc.file if loc else "", (loc.line or 0) if loc else 0, f.message)

    return sorted(findings, key=key)


# -- public API --------------------------------------------------------------------------------


def scan_repository(root: Path, *, history: bool = True, workers: int | None = None) -> ScanResult:
    """Scan every blob in the git history of the repository at ``root``, and its working tree.

    Each secret (by fingerprint) is reported once per path, with the commit that first put it
    there (by author date) and whether it is still in the working tree. With ``history=False``
    only the files on disk are scanned (that also works on a folder that is not a repository).
    ``workers`` is the number of processes (default: one per core, one for small repositories).
    """
    if not history:
        return scan_working_tree(root, workers=workers)
    started = time.perf_counter()
    root = _folder(root)
    top = _require_repository(root, "its history")
    walk = _walk_history(top)
    entries = _tree_entries(top, top)
    sizes = _blob_sizes(top, walk.introduced)
    result = ScanResult(commits=len(walk.commits))

    blob_items: list[tuple[tuple[str, bool], int]] = []
    for sha, size in sizes.items():
        if size > MAX_FILE_BYTES:
            result.skipped_large += 1
            continue
        generic = not all(is_lockfile(path) for path, _ in walk.introduced[sha])
        blob_items.append(((sha, generic), size))
    from_disk = [path for path, sha in entries if sha is None or sha not in sizes]
    scanned = _run_jobs(top, blob_items, _file_sizes(top, from_disk), workers)

    found: dict[tuple[str, str], _Seen] = {}
    for sha, hits in scanned.hits.items():
        for path, index in walk.introduced.get(sha, ()):
            commit, timestamp, date = walk.commits[index]
            order = (timestamp, -index)
            for hit in hits:
                key = (hit.fingerprint, path)
                seen = found.get(key)
                if seen is None or order < seen.order:
                    found[key] = _Seen(hit, commit, date, order)
    for path, blob in entries:
        for hit in scanned.hits.get(blob if blob is not None and blob in sizes else path, []):
            key = (hit.fingerprint, path)
            seen = found.setdefault(key, _Seen(hit))
            if not seen.in_tree:
                seen.in_tree = True
                seen.tree_line = hit.line

    result.findings = _sorted([_finding(path, seen) for (_, path), seen in found.items()])
    result.blobs_scanned = sum(1 for item, _ in blob_items if item[0] in scanned.scanned)
    result.files_scanned = len(scanned.scanned) - result.blobs_scanned
    result.bytes_scanned = scanned.bytes
    result.skipped_binary = scanned.binary
    result.skipped_large += scanned.large
    result.seconds = time.perf_counter() - started
    return result


def scan_working_tree(root: Path, *, workers: int | None = None, plain: bool = False) -> ScanResult:
    """Scan the files on disk: tracked and untracked-but-not-ignored ones in a git repository,
    every file but :data:`SKIPPED_DIRS` in a plain folder (or with ``plain``, such as a sealed
    release's files, which lie inside the project's repository)."""
    started = time.perf_counter()
    root = _folder(root)
    top = None if plain else _toplevel(root)
    if top is None:
        base, paths = root, _walk_folder(root)
    else:
        base, paths = top, [path for path, _ in _tree_entries(top, root)]
    scanned = _run_jobs(base, [], _file_sizes(base, paths), workers)
    return ScanResult(
        findings=_tree_findings(scanned.hits.items()),
        bytes_scanned=scanned.bytes,
        files_scanned=len(scanned.scanned),
        skipped_binary=scanned.binary,
        skipped_large=scanned.large,
        seconds=time.perf_counter() - started,
    )


def scan_staged(root: Path) -> ScanResult:
    """Scan what is staged for the next commit (the pre-commit hook).

    Each added or changed file's staged content is scanned, and a secret is reported only if
    the same file in ``HEAD`` did not already have it, so the hook blocks new secrets and not
    old ones a commit happens to touch (the history scan reports those).
    """
    started = time.perf_counter()
    root = _folder(root)
    top = _require_repository(root, "the staged changes")
    out = _git(top, "diff", "--cached", "--no-renames", "--raw", "-z", "--no-abbrev").stdout
    tokens = out.split(b"\0")
    changes: list[tuple[str, str, str]] = []  # path, staged blob, HEAD blob (or null)
    for i in range(0, len(tokens) - 1, 2):
        meta = tokens[i].decode().lstrip(":").split()
        if len(meta) >= 5 and meta[1] in _REGULAR_MODES and meta[3] != _NULL_SHA:
            old = meta[2] if meta[0] in _REGULAR_MODES else _NULL_SHA
            changes.append((tokens[i + 1].decode("utf-8", "surrogateescape"), meta[3], old))
    wanted = {sha for _, new, old in changes for sha in (new, old) if sha != _NULL_SHA}
    sizes = _blob_sizes(top, wanted)
    result = ScanResult()
    items: dict[str, bool] = {}
    for path, new, old in changes:
        for sha in (new, old):
            if sha in sizes and sizes[sha] <= MAX_FILE_BYTES:
                items[sha] = items.get(sha, False) or not is_lockfile(path)
        if sizes.get(new, 0) > MAX_FILE_BYTES:
            result.skipped_large += 1
    scanned = _run_jobs(top, [((sha, g), sizes[sha]) for sha, g in items.items()], [], None)
    hits: list[tuple[str, list[Hit]]] = []
    for path, new, old in changes:
        before = {hit.fingerprint for hit in scanned.hits.get(old, [])}
        added = [hit for hit in scanned.hits.get(new, []) if hit.fingerprint not in before]
        hits.append((path, added))
    result.findings = _tree_findings(hits, staged=True)
    result.blobs_scanned = sum(1 for _, new, _ in changes if new in scanned.scanned)
    result.bytes_scanned = sum(sizes[sha] for _, sha, _ in changes if sha in scanned.scanned)
    result.skipped_binary = sum(
        1 for _, new, _ in changes if new in items and new not in scanned.scanned
    )
    result.seconds = time.perf_counter() - started
    return result
