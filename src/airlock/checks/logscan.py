"""Personal data in logs and responses (INC15): card numbers, e-mail addresses, custom patterns.

A service that logs a customer's card number or e-mail address turns every log file, log
shipper and support ticket into a copy of that personal data. :func:`scan_logs` reads log files
and :func:`scan_responses` reads sampled HTTP response bodies, and both report:

* ``logs.card-number`` (error): 13 to 19 digits, written together or in groups separated by
  single spaces or dashes, that pass the Luhn check **and** start with a known issuer prefix
  of the right length (Visa, Mastercard, Amex, Discover, Diners, JCB, UnionPay). Order ids,
  timestamps, phone numbers and UUIDs fail one of these tests;
* ``logs.email`` (warning): e-mail addresses;
* ``logs.pattern`` (error): each regular expression configured under ``gates.logs.patterns``.

Files are read in blocks of whole lines, so memory stays flat whatever their size. The same
value found on many lines of one file gives one finding, with the first line, up to
:data:`MAX_LINES` line numbers and the count.

A ``line_prefix`` scans only the lines that begin with it (a string, or a regular expression
matched at the start of the line), e.g. the ``[web-1a2b3c4d-...] `` lines one release's
instances wrote to a service log; the prefix itself is not scanned, and line numbers stay those
of the file. :func:`scan_log_files` also says how many lines of each file were scanned.

Nothing here prints, stores or raises a found value: findings carry only a masked form (a card
keeps its last four digits, ``************4242``; an e-mail its first letter and domain,
``j***@example.com``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from airlock.errors import Location, UsageError
from airlock.findings import Finding, Severity

CODES: dict[str, str] = {
    "logs.card-number": "A log line or response body holds a payment card number.",
    "logs.email": "A log line or response body holds an e-mail address.",
    "logs.pattern": "A log line or response body matches a pattern configured in gates.logs.",
}

#: At most this many line numbers are listed in a finding's evidence.
MAX_LINES = 5
#: Files are read in blocks of about this many bytes (cut at the last newline).
BLOCK_BYTES = 1 << 20

_CARD = re.compile(
    # 13-19 digits in one run, or groups of 4 then 4-6 then 3-5 digits with one consistent
    # separator (4-4-4-4, 4-6-5, 4-4-4-4-3). Not inside a word, a dashed id or a decimal number.
    r"(?<![\w.-])(?:\d{13,19}|\d{4}(?P<sep>[ -])\d{4,6}(?:(?P=sep)\d{3,5}){1,3})(?![\w-])"
)
_EMAIL = re.compile(
    r"(?<![\w.%+-])(?P<local>[A-Za-z0-9][A-Za-z0-9._%+-]{0,63})@"
    r"(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24})(?![\w-])"
)
#: "Top-level domains" that are really file extensions (``icon@2x.png``).
_NOT_TLDS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "css", "js", "map", "ico"})

#: (brand, prefix ranges as (low, high, digits), allowed lengths)
_BRANDS: tuple[tuple[str, tuple[tuple[int, int, int], ...], frozenset[int]], ...] = (
    ("Visa", ((4, 4, 1),), frozenset({13, 16, 19})),
    ("Mastercard", ((51, 55, 2), (2221, 2720, 4)), frozenset({16})),
    ("American Express", ((34, 34, 2), (37, 37, 2)), frozenset({15})),
    ("Discover", ((6011, 6011, 4), (644, 649, 3), (65, 65, 2)), frozenset(range(16, 20))),
    ("Diners Club", ((300, 305, 3), (36, 36, 2), (38, 39, 2)), frozenset(range(14, 20))),
    ("JCB", ((3528, 3589, 4),), frozenset(range(16, 20))),
    ("UnionPay", ((62, 62, 2),), frozenset(range(16, 20))),
)


def luhn_valid(digits: str) -> bool:
    """True if ``digits`` (only digits) passes the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_brand(digits: str) -> str | None:
    """The brand whose issuer prefix and length fit ``digits``, or None."""
    for brand, ranges, lengths in _BRANDS:
        if len(digits) not in lengths:
            continue
        for low, high, width in ranges:
            if low <= int(digits[:width]) <= high:
                return brand
    return None


def mask_card(digits: str) -> str:
    """Keep only the last four digits: ``************4242``."""
    return "*" * (len(digits) - 4) + digits[-4:]


def mask_email(address: str) -> str:
    """Keep the first character of the local part and the domain: ``j***@example.com``."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}"


def mask_value(value: str) -> str:
    """Mask a custom pattern's match: keep at most its last 4 characters, only if it is long."""
    if len(value) >= 12:
        return "*" * (len(value) - 4) + value[-4:]
    return "*" * len(value)


@dataclass
class _Hit:
    kind: str
    masked: str
    first_line: int
    lines: list[int] = field(default_factory=list)
    count: int = 0
    brand: str | None = None
    pattern: str | None = None


class _Detector:
    """Finds values in blocks of text and counts them per (kind, value)."""

    def __init__(self, patterns: Mapping[str, str], emails: bool) -> None:
        self.emails = emails
        self.patterns: list[tuple[str, re.Pattern[str]]] = []
        for name, regex in patterns.items():
            try:
                self.patterns.append((name, re.compile(regex, re.MULTILINE)))
            except re.error as exc:
                raise UsageError(
                    f"log pattern {name!r} is not a valid regular expression: {exc}",
                    hint=f"fix gates.logs.patterns.{name} in airlock.yaml",
                ) from None

    def scan(self, text: str, first_line: int, hits: dict[tuple[str, str], _Hit]) -> None:
        """Record every value in ``text``, whose first line is line ``first_line``."""
        counter = _LineCounter(text, first_line)
        for m in _CARD.finditer(text):
            found = _card_in(m.group(0), m.group("sep"))
            if found is not None:
                digits, brand = found
                hit = self._record(hits, "card", digits, mask_card(digits), counter(m.start()))
                hit.brand = brand
        if self.emails and "@" in text:
            for m in _EMAIL.finditer(text):
                domain = m.group("domain")
                if domain.rsplit(".", 1)[-1].lower() in _NOT_TLDS:
                    continue
                address = m.group(0)
                key = address.lower()
                self._record(hits, "email", key, mask_email(address), counter(m.start()))
        for name, regex in self.patterns:
            for m in regex.finditer(text):
                value = m.group(0)
                if not value:
                    continue
                hit = self._record(
                    hits, f"pattern:{name}", value, mask_value(value), counter(m.start())
                )
                hit.pattern = name

    @staticmethod
    def _record(
        hits: dict[tuple[str, str], _Hit], kind: str, value: str, masked: str, line: int
    ) -> _Hit:
        hit = hits.get((kind, value))
        if hit is None:
            hit = hits[(kind, value)] = _Hit(kind.partition(":")[0], masked, line)
        hit.count += 1
        if len(hit.lines) < MAX_LINES and (not hit.lines or hit.lines[-1] != line):
            hit.lines.append(line)
        hit.first_line = min(hit.first_line, line)
        return hit


def _card_in(candidate: str, sep: str | None) -> tuple[str, str] | None:
    """The (digits, brand) of the card in a candidate match, or None.

    Grouped digits may carry a neighbouring number (``4242 4242 4242 4242 2031``): then the
    longest run of consecutive groups that is a card wins.
    """
    groups = candidate.split(sep) if sep else [candidate]
    n = len(groups)
    for size in range(n, 0, -1):
        for start in range(n - size + 1):
            digits = "".join(groups[start : start + size])
            if not 13 <= len(digits) <= 19:
                continue
            brand = card_brand(digits)
            if brand is not None and luhn_valid(digits):
                return digits, brand
    return None


class _LineCounter:
    """Maps offsets in a block of text to line numbers; offsets asked in any order."""

    def __init__(self, text: str, first_line: int) -> None:
        self.text = text
        self.pos = 0
        self.line = first_line
        self.first_line = first_line

    def __call__(self, offset: int) -> int:
        if offset < self.pos:
            self.pos, self.line = 0, self.first_line
        self.line += self.text.count("\n", self.pos, offset)
        self.pos = offset
        return self.line


def _blocks(path: Path) -> Iterator[tuple[str, int]]:
    """Yield (text, number of its first line) for blocks of whole lines of ``path``."""
    line = 1
    carry = b""
    with path.open("rb") as fh:
        while True:
            chunk = fh.read(BLOCK_BYTES)
            if not chunk:
                break
            data = carry + chunk
            cut = data.rfind(b"\n") + 1
            if cut == 0 and len(data) < 16 * BLOCK_BYTES:
                carry = data  # one very long line so far: keep reading it
                continue
            if cut == 0:
                cut = len(data)  # a line longer than 16 blocks is scanned in pieces
            block, carry = data[:cut], data[cut:]
            yield block.decode("utf-8", errors="replace"), line
            line += block.count(b"\n")
    if carry:
        yield carry.decode("utf-8", errors="replace"), line


def _findings(where: str, hits: dict[tuple[str, str], _Hit]) -> list[Finding]:
    findings = []
    for hit in sorted(hits.values(), key=lambda h: (h.first_line, h.kind, h.masked)):
        times = f", {hit.count} times" if hit.count > 1 else ""
        evidence: dict[str, object] = {
            "kind": hit.kind,
            "masked": hit.masked,
            "count": hit.count,
            "lines": sorted(hit.lines),
        }
        location = Location(where, hit.first_line)
        if hit.kind == "card":
            evidence["brand"] = hit.brand
            findings.append(
                Finding(
                    "logs.card-number",
                    Severity.ERROR,
                    f"{hit.brand} card number {hit.masked} in {location}{times}",
                    location,
                    hint="never log card numbers: log a token or the last four digits; "
                    "purge the affected logs and copies",
                    evidence=evidence,
                )
            )
        elif hit.kind == "email":
            findings.append(
                Finding(
                    "logs.email",
                    Severity.WARNING,
                    f"e-mail address {hit.masked} in {location}{times}",
                    location,
                    hint="log a user id instead of the e-mail address",
                    evidence=evidence,
                )
            )
        else:
            evidence["pattern"] = hit.pattern
            findings.append(
                Finding(
                    "logs.pattern",
                    Severity.ERROR,
                    f"value {hit.masked} matching pattern {hit.pattern!r} in {location}{times}",
                    location,
                    hint=f"stop logging values that match gates.logs.patterns.{hit.pattern}",
                    evidence=evidence,
                )
            )
    return findings


#: Which lines of a log file are scanned: those starting with a string, or with a match of a
#: regular expression (``re.match`` at the start of the line).
LinePrefix = str | re.Pattern[str]


@dataclass
class LogScan:
    """What :func:`scan_log_files` found, and how many lines of each file it scanned."""

    findings: list[Finding] = field(default_factory=list)
    #: file (as given) -> lines scanned (with a ``line_prefix``: the lines that begin with it)
    lines: dict[str, int] = field(default_factory=dict)

    @property
    def total_lines(self) -> int:
        return sum(self.lines.values())


def _keep_prefixed(text: str, prefix: LinePrefix) -> tuple[str, int]:
    """``text`` with every line not starting with ``prefix`` emptied and the prefix cut off the
    others (so line numbers are unchanged), and the number of lines kept."""
    if isinstance(prefix, str):
        if prefix not in text:
            return "", 0
        literal = prefix

        def cut(line: str) -> int | None:
            return len(literal) if line.startswith(literal) else None

    else:
        regex = prefix

        def cut(line: str) -> int | None:
            m = regex.match(line)
            return None if m is None else m.end()

    lines = text.split("\n")
    kept = 0
    for i, line in enumerate(lines):
        at = cut(line)
        if at is not None:
            lines[i] = line[at:]
            kept += 1
        elif line:
            lines[i] = ""
    return "\n".join(lines), kept


def _line_count(text: str) -> int:
    return text.count("\n") + (1 if text and not text.endswith("\n") else 0)


def scan_log_files(
    paths: Iterable[Path],
    *,
    patterns: Mapping[str, str] = {},
    emails: bool = True,
    line_prefix: LinePrefix | None = None,
) -> LogScan:
    """Like :func:`scan_logs`, also counting the lines scanned in each file."""
    detector = _Detector(patterns, emails)
    result = LogScan()
    for path in paths:
        hits: dict[tuple[str, str], _Hit] = {}
        scanned = 0
        try:
            for text, first_line in _blocks(path):
                if line_prefix is None:
                    scanned += _line_count(text)
                else:
                    text, kept = _keep_prefixed(text, line_prefix)
                    scanned += kept
                    if not kept:
                        continue
                detector.scan(text, first_line, hits)
        except OSError as exc:
            raise UsageError(f"cannot read log file {path}: {exc.strerror or exc}") from None
        result.lines[str(path)] = result.lines.get(str(path), 0) + scanned
        result.findings.extend(_findings(str(path), hits))
    return result


def scan_logs(
    paths: Iterable[Path],
    *,
    patterns: Mapping[str, str] = {},
    emails: bool = True,
    line_prefix: LinePrefix | None = None,
) -> list[Finding]:
    """Scan log files for card numbers, e-mail addresses (if ``emails``) and ``patterns``.

    ``patterns`` maps a name to a regular expression (matched with ``re.MULTILINE``); an invalid
    one raises :class:`UsageError` naming it. A missing or unreadable file raises UsageError.
    With ``line_prefix`` (a string, or a regular expression matched at the start of a line) only
    the lines beginning with it are scanned, without the prefix; line numbers are the file's.
    """
    return scan_log_files(paths, patterns=patterns, emails=emails, line_prefix=line_prefix).findings


def scan_responses(
    samples: Iterable[tuple[str, bytes]],
    *,
    patterns: Mapping[str, str] = {},
    emails: bool = True,
) -> list[Finding]:
    """Scan sampled HTTP response bodies, each labelled (e.g. ``GET /accounts/1``).

    Findings are located at the label and the body's line; the detectors are those of
    :func:`scan_logs`.
    """
    detector = _Detector(patterns, emails)
    findings: list[Finding] = []
    for label, body in samples:
        hits: dict[tuple[str, str], _Hit] = {}
        detector.scan(body.decode("utf-8", errors="replace"), 1, hits)
        findings.extend(_findings(label, hits))
    return findings
