"""One masker for every secret value, in every form a program is likely to print it.

A service that logs ``json.dumps(os.environ)``, answers a probe with ``repr(config)`` or puts a
token in a URL does not print the value as it is: it prints it JSON-escaped, Python-escaped,
percent-encoded or base64-encoded. :class:`Masker` knows, for each value, those forms too:

- the value itself, and each of its lines when it has several (logs are masked line by line);
- JSON string escaping, ASCII-only (``\\u00e9``) and not, and Python's ``repr`` escaping;
- percent-encoding (``quote`` with and without ``/`` kept, ``quote_plus``), in both hex cases;
- base64 and URL-safe base64 at each of the three alignments a value can have inside a longer
  encoded text (``base64("user:" + value)`` holds none of ``base64(value)``'s characters, but it
  does hold the characters that only the value determines).

Every form becomes ``****``. Forms shorter than :data:`MIN_MASKED_LENGTH` characters are left
alone: they would mangle ordinary text and are too short to be secrets worth the name.

This module needs nothing but the standard library: the agent that runs services (also on remote
hosts) uses it as the runner does.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

__all__ = ["MASK", "MIN_MASKED_LENGTH", "Masker", "encoded_forms"]

MASK = "****"
MIN_MASKED_LENGTH = 4
#: A base64 fragment shorter than this is not masked (six characters carry 36 bits).
MIN_BASE64_FRAGMENT = 6


def _base64_fragments(data: bytes) -> set[str]:
    """The characters of ``base64(prefix + data + suffix)`` that only ``data`` determines,
    for each of the three lengths of ``prefix`` modulo 3, in standard and URL-safe alphabets.
    """
    fragments: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + data).decode("ascii")
        start = -(-8 * offset // 6)  # the first character made of the value's bits alone
        end = 8 * (offset + len(data)) // 6  # past the last one
        core = encoded[start:end]
        if len(core) >= MIN_BASE64_FRAGMENT:
            fragments.add(core)
            fragments.add(core.replace("+", "-").replace("/", "_"))
    return fragments


def _percent_forms(value: str) -> set[str]:
    forms = {quote(value, safe=""), quote(value), quote_plus(value)}
    lower = set()
    for form in forms:
        # %2F and %2f are the same byte: mask both spellings.
        parts = form.split("%")
        lower.add(parts[0] + "".join("%" + p[:2].lower() + p[2:] for p in parts[1:]))
    return forms | lower


def encoded_forms(value: str) -> set[str]:
    """Every form of ``value`` that :class:`Masker` replaces (those long enough to mask)."""
    forms = {value}
    forms.update(line for line in value.splitlines() if line.strip())
    forms.add(json.dumps(value)[1:-1])
    forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
    python = repr(value)[1:-1]
    plain = python.replace("\\'", "'")
    forms.update({python, plain, plain.replace("'", "\\'")})  # either quoting style of repr
    forms.update(_percent_forms(value))
    forms.update(_base64_fragments(value.encode("utf-8")))
    return {f for f in forms if len(f) >= MIN_MASKED_LENGTH}


class Masker:
    """Replaces every known secret value, and its common encodings, with ``****``."""

    def __init__(self, *values: str) -> None:
        self._values: set[str] = set()
        self._forms: list[str] = []
        self.add(*values)

    def add(self, *values: str) -> None:
        fresh = {v for v in values if len(v) >= MIN_MASKED_LENGTH} - self._values
        if not fresh:
            return
        self._values |= fresh
        forms = set(self._forms)
        for value in fresh:
            forms |= encoded_forms(value)
        # Longest first, so a form that contains another is masked whole.
        self._forms = sorted(forms, key=lambda f: (-len(f), f))

    def extend(self, values: Iterable[str]) -> None:
        self.add(*values)

    def mask(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return text

    @property
    def values(self) -> tuple[str, ...]:
        """The values themselves (not their encodings), longest first."""
        return tuple(sorted(self._values, key=lambda v: (-len(v), v)))

    def __bool__(self) -> bool:
        return bool(self._values)
