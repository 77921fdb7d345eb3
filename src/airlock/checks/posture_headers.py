"""Security headers and cookies judged by their values, for :mod:`airlock.checks.posture`.

Pure: no IO. :func:`judge` takes the header fields (and the body, for ``<meta>`` policies) of one
response and returns :class:`Issue` objects; the posture probe sends the request and turns each
issue into a finding with the request and response as evidence.

The rules follow what browsers do with each header and how Mozilla's HTTP Observatory scores it;
docs/posture.md lists them. In short:

* ``Content-Security-Policy``: enforced policies (header fields, comma-separated policies, and
  ``<meta http-equiv>`` in HTML) are parsed into directives and source lists. Scripts are judged
  through ``script-src`` (or its ``default-src`` fallback), plugins through ``object-src`` (or
  ``default-src``). Several policies are all enforced, so a weakness counts only when every policy
  has it. A policy without one known directive is unparseable and counts as missing.
* ``Strict-Transport-Security`` (https only): the first field, RFC 6797 syntax, ``max-age`` of at
  least six months.
* ``X-Frame-Options``: ``DENY`` or ``SAMEORIGIN`` (one value), unless a header policy sets
  ``frame-ancestors``, which browsers obey instead.
* ``X-Content-Type-Options``: the first value is ``nosniff``.
* ``Referrer-Policy``: the last value browsers understand wins; values that send the path or the
  origin across sites leak.
* ``Set-Cookie``: ``Secure`` (https), ``HttpOnly`` for session-looking names, ``SameSite``. A
  cookie's value never leaves this module: issues name the cookie only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from airlock.findings import Severity

__all__ = [
    "HSTS_MIN_AGE",
    "Issue",
    "csp_weaknesses",
    "hsts_max_age",
    "is_session_cookie",
    "judge",
    "mask_cookie",
    "meta_policies",
    "parse_policy",
    "referrer_policy",
]

HSTS_MIN_AGE = 15_768_000
"""Six months in seconds: the shortest ``max-age`` accepted for Strict-Transport-Security."""

CSP = "Content-Security-Policy"
HSTS = "Strict-Transport-Security"
XFO = "X-Frame-Options"
XCTO = "X-Content-Type-Options"
REFERRER = "Referrer-Policy"
SET_COOKIE = "Set-Cookie"

MISSING_HINTS: dict[str, str] = {
    HSTS: "max-age=31536000; includeSubDomains",
    CSP: "default-src 'self'; frame-ancestors 'none'",
    XFO: "DENY (or CSP frame-ancestors)",
    XCTO: "nosniff",
    REFERRER: "strict-origin-when-cross-origin",
}
"""A good value for each header, shown in hints."""

KNOWN_DIRECTIVES = frozenset(
    {
        "base-uri",
        "block-all-mixed-content",
        "child-src",
        "connect-src",
        "default-src",
        "fenced-frame-src",
        "font-src",
        "form-action",
        "frame-ancestors",
        "frame-src",
        "img-src",
        "manifest-src",
        "media-src",
        "navigate-to",
        "object-src",
        "plugin-types",
        "prefetch-src",
        "report-to",
        "report-uri",
        "require-sri-for",
        "require-trusted-types-for",
        "sandbox",
        "script-src",
        "script-src-attr",
        "script-src-elem",
        "style-src",
        "style-src-attr",
        "style-src-elem",
        "trusted-types",
        "upgrade-insecure-requests",
        "webrtc",
        "worker-src",
    }
)
"""CSP directive names (CSP Level 3 and the ones browsers still know)."""

_META_IGNORED = ("frame-ancestors", "report-uri", "sandbox")
"""Directives browsers ignore in a ``<meta>`` policy."""

_DIRECTIVE_NAME = re.compile(r"[a-z0-9-]+")
_ANY_HOST = frozenset({"*", "http:", "https:", "http://*", "https://*"})
_HASH_PREFIXES = ("'nonce-", "'sha256-", "'sha384-", "'sha512-")

PRIVATE_REFERRER = frozenset(
    {"no-referrer", "same-origin", "strict-origin", "strict-origin-when-cross-origin"}
)
LEAKY_REFERRER: dict[str, str] = {
    "unsafe-url": "sends the full URL (path and query) to every site, even over plain HTTP",
    "no-referrer-when-downgrade": "sends the full URL (path and query) to every https site",
    "origin-when-cross-origin": "sends the origin to other sites, even over plain HTTP",
    "origin": "sends the origin with every request, even over plain HTTP",
}

_SESSION_PARTS = ("sess", "auth", "token", "jwt", "login")
_SESSION_WORDS = frozenset({"sid", "ssid"})
_CSRF_PARTS = ("csrf", "xsrf")
_MAX_HTML = 512 * 1024


@dataclass(frozen=True)
class Issue:
    """One thing wrong with one header (or one cookie).

    ``message`` says what and why, without the URL; ``value`` is the header's value as sent
    (``None`` when missing, and for cookies, whose values are never kept).
    """

    code: str
    severity: Severity
    header: str
    value: str | None
    message: str
    hint: str
    extra: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Content-Security-Policy


def parse_policy(text: str) -> dict[str, tuple[str, ...]] | None:
    """One serialized policy -> ``{directive: sources}``; None when it cannot be used.

    Directive names are lower-cased; a repeated directive is ignored after its first occurrence
    (as browsers do). A policy with control or non-ASCII characters, or without a single known
    directive, is unusable.
    """
    if any(not (0x20 <= ord(ch) < 0x7F or ch == "\t") for ch in text):
        return None
    directives: dict[str, tuple[str, ...]] = {}
    for part in text.split(";"):
        tokens = part.split()
        if not tokens:
            continue
        name = tokens[0].lower()
        if not _DIRECTIVE_NAME.fullmatch(name) or name in directives:
            continue
        directives[name] = tuple(tokens[1:])
    if not any(name in KNOWN_DIRECTIVES for name in directives):
        return None
    return directives


class _MetaFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.policies: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "meta":
            return
        values = {name.lower(): value or "" for name, value in attrs}
        if values.get("http-equiv", "").strip().lower() == CSP.lower() and "content" in values:
            self.policies.append(values["content"])


def meta_policies(body: bytes, content_type: str) -> list[str]:
    """The ``<meta http-equiv="Content-Security-Policy">`` contents of an HTML body."""
    if "html" not in content_type.lower() or not body:
        return []
    finder = _MetaFinder()
    try:
        finder.feed(body[:_MAX_HTML].decode("utf-8", errors="replace"))
        finder.close()
    except AssertionError:  # html.parser gives up on some broken markup
        pass
    return finder.policies


def _script_weaknesses(directive: str, sources: Sequence[str]) -> dict[str, str]:
    lower = [s.lower() for s in sources]
    dynamic = "'strict-dynamic'" in lower
    hashed = any(s.startswith(_HASH_PREFIXES) for s in lower)
    found: dict[str, str] = {}
    if "'unsafe-inline'" in lower and not (hashed or dynamic):
        found["script-inline"] = f"{directive} allows 'unsafe-inline' (injected inline scripts run)"
    if "'unsafe-eval'" in lower:
        found["script-eval"] = f"{directive} allows 'unsafe-eval' (strings are run as code)"
    if dynamic:
        # 'strict-dynamic' makes browsers ignore host and scheme sources for scripts.
        return found
    if "data:" in lower:
        found["script-data"] = f"{directive} allows data: URLs as scripts"
    broad = [s for s in sources if s.lower() in _ANY_HOST]
    if broad:
        found["script-any"] = (
            f"{directive} allows scripts from any host ({' '.join(dict.fromkeys(broad))})"
        )
    plain = [s for s in sources if s.lower() == "http:" or s.lower().startswith("http://")]
    if plain:
        found["script-http"] = (
            f"{directive} allows scripts over plain HTTP ({' '.join(dict.fromkeys(plain))})"
        )
    return found


_SCRIPT_KINDS = ("script-inline", "script-eval", "script-data", "script-any", "script-http")


def csp_weaknesses(directives: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """What one parsed policy lets through: ``{kind: reason}``.

    Kinds are ``script-inline``, ``script-eval``, ``script-data``, ``script-any``,
    ``script-http``, ``script-unrestricted`` (which implies every ``script-*`` kind),
    ``object-any`` and ``object-unrestricted`` (which implies ``object-any``).
    """
    found: dict[str, str] = {}
    script = "script-src" if "script-src" in directives else "default-src"
    if script in directives:
        found.update(_script_weaknesses(script, directives[script]))
    else:
        reason = "neither script-src nor default-src is set, so scripts from anywhere run"
        found["script-unrestricted"] = reason
        found.update(dict.fromkeys(_SCRIPT_KINDS, reason))
    plugin = "object-src" if "object-src" in directives else "default-src"
    if plugin in directives:
        broad = [s for s in directives[plugin] if s.lower() in _ANY_HOST or s.lower() == "data:"]
        if broad:
            found["object-any"] = (
                f"{plugin} allows plugins from any host ({' '.join(dict.fromkeys(broad))})"
            )
    else:
        reason = "neither object-src nor default-src is set, so plugins load from anywhere"
        found["object-unrestricted"] = reason
        found["object-any"] = reason
    return found


def _combined_weaknesses(policies: Sequence[Mapping[str, Sequence[str]]]) -> list[str]:
    """Reasons a set of enforced policies is weak: a kind counts when every policy has it."""
    each = [csp_weaknesses(p) for p in policies]
    kinds = set.intersection(*(set(w) for w in each))
    reasons: list[str] = []
    for kind in dict.fromkeys(k for weak in each for k in weak):
        if kind not in kinds:
            continue
        candidates = [weak[kind] for weak in each]
        # prefer the policy that names the source over one that sets nothing at all
        specific = [r for r in candidates if not r.startswith("neither")]
        reason = (specific or candidates)[0]
        if reason not in reasons:
            reasons.append(reason)
    return reasons


def _judge_csp(header_values: list[str], metas: list[str]) -> tuple[list[Issue], bool]:
    """CSP issues, and whether a header policy sets ``frame-ancestors``."""
    value = ", ".join(header_values)
    header_policies = [p for p in (parse_policy(t) for t in value.split(",")) if p is not None]
    meta = [p for p in (parse_policy(t) for t in metas) if p is not None]
    for policy in meta:
        for name in _META_IGNORED:
            policy.pop(name, None)
    framed = any("frame-ancestors" in p for p in header_policies)
    policies = header_policies + [p for p in meta if p]
    if not policies:
        if not header_values and not metas:
            return [_missing(CSP)], framed
        shown = value if header_values else " ".join(metas)
        where = "" if header_values else " (in <meta>)"
        why = "is empty" if not shown.strip() else "has no directive browsers understand"
        return [_invalid(CSP, shown, f"{CSP}{where} {why}")], framed
    reasons = _combined_weaknesses(policies)
    if not reasons:
        return [], framed
    shown = value if header_values else " ".join(metas)
    return [
        Issue(
            code="posture.weak-csp",
            severity=Severity.WARNING,
            header=CSP,
            value=shown,
            message=f"sends a weak {CSP} ({_short(shown)}): {'; '.join(reasons)}",
            hint="allow scripts from 'self' or with nonces/hashes ('strict-dynamic' is fine), "
            "never 'unsafe-inline', 'unsafe-eval', *, http:, https: or data:, and set "
            "object-src 'none' (or default-src 'none')",
            extra={"reasons": reasons},
        )
    ], framed


# --------------------------------------------------------------------------------------------
# the other headers


def hsts_max_age(value: str) -> int | str:
    """The ``max-age`` of a Strict-Transport-Security value, or why the value is invalid.

    RFC 6797: ``;``-separated directives, names case-insensitive, each at most once, values a
    token or a quoted string; ``max-age`` is required and is a number of seconds.
    """
    directives: dict[str, str | None] = {}
    for part in value.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, raw = part.partition("=")
        name = name.strip().lower()
        if not re.fullmatch(r"[a-z0-9!#$%&'*+.^_`|~-]+", name):
            return f"{name or part!r} is not a directive"
        if name in directives:
            return f"{name} appears twice"
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1]
        directives[name] = raw if sep else None
    if "max-age" not in directives:
        return "it has no max-age"
    age = directives["max-age"]
    if age is None or not re.fullmatch(r"[0-9]+", age):
        return f"max-age={age or ''} is not a number of seconds"
    return int(age)


def referrer_policy(value: str) -> str | None:
    """The policy browsers apply for a Referrer-Policy value: the last one they understand."""
    chosen: str | None = None
    for token in value.split(","):
        token = token.strip().lower()
        if token in PRIVATE_REFERRER or token in LEAKY_REFERRER:
            chosen = token
    return chosen


def _split_values(values: list[str]) -> list[str]:
    return [v.strip().lower() for v in ", ".join(values).split(",") if v.strip()]


def _judge_hsts(values: list[str]) -> list[Issue]:
    if not values:
        return [_missing(HSTS)]
    value = values[0]  # RFC 6797 8.1: only the first field is processed
    age = hsts_max_age(value)
    if isinstance(age, str):
        return [_invalid(HSTS, value, f"{HSTS} is malformed: {age}")]
    if age >= HSTS_MIN_AGE:
        return []
    return [
        Issue(
            code="posture.hsts-short",
            severity=Severity.WARNING,
            header=HSTS,
            value=value,
            message=f"sends {HSTS}: {_short(value)} — max-age {age} s ({age // 86400} days) is "
            f"shorter than six months ({HSTS_MIN_AGE} s), so browsers forget it too soon",
            hint=f"send {HSTS}: {MISSING_HINTS[HSTS]}",
            extra={"max_age": age, "min_age": HSTS_MIN_AGE},
        )
    ]


def _judge_xfo(values: list[str], framed: bool) -> list[Issue]:
    if framed:
        return []  # browsers obey CSP frame-ancestors and ignore X-Frame-Options
    if not values:
        return [_missing(XFO)]
    distinct = set(_split_values(values))
    if distinct in ({"deny"}, {"sameorigin"}):
        return []
    shown = ", ".join(values)
    if not distinct:
        why = "is empty"
    elif len(distinct) > 1:
        why = "has conflicting values"
    else:
        why = "is neither DENY nor SAMEORIGIN (browsers ignore other values, ALLOW-FROM too)"
    return [_invalid(XFO, shown, f"{XFO} {why}")]


def _judge_xcto(values: list[str]) -> list[Issue]:
    if not values:
        return [_missing(XCTO)]
    first = _split_values(values)[:1]
    if first == ["nosniff"]:
        return []
    shown = ", ".join(values)
    return [_invalid(XCTO, shown, f"{XCTO} is not nosniff")]


def _judge_referrer(values: list[str]) -> list[Issue]:
    if not values:
        return [_missing(REFERRER)]
    shown = ", ".join(values)
    policy = referrer_policy(shown)
    if policy is None:
        return [_invalid(REFERRER, shown, f"{REFERRER} has no policy browsers understand")]
    if policy in PRIVATE_REFERRER:
        return []
    return [
        Issue(
            code="posture.leaky-referrer",
            severity=Severity.WARNING,
            header=REFERRER,
            value=shown,
            message=f"sends {REFERRER}: {_short(shown)} — {policy} {LEAKY_REFERRER[policy]}",
            hint=f"send {REFERRER}: strict-origin-when-cross-origin (or no-referrer)",
            extra={"policy": policy},
        )
    ]


# --------------------------------------------------------------------------------------------
# cookies


def _cookie_parts(value: str) -> tuple[str, dict[str, str | None], str]:
    """``Set-Cookie`` value -> (name, {attribute: value}, the attributes as sent)."""
    pair, _, rest = value.partition(";")
    name = pair.partition("=")[0].strip() if "=" in pair else ""
    attributes: dict[str, str | None] = {}
    for item in rest.split(";"):
        key, sep, val = item.partition("=")
        key = key.strip().lower()
        if key and key not in attributes:
            attributes[key] = val.strip() if sep else None
    return name, attributes, rest.strip()


def mask_cookie(value: str) -> str:
    """A ``Set-Cookie`` value with the cookie's value hidden: ``sid=(hidden); Path=/``."""
    name, _, rest = _cookie_parts(value)
    return f"{name}=(hidden)" + (f"; {rest}" if rest else "")


def is_session_cookie(name: str) -> bool:
    """True for names that look like a session or credential (sid, PHPSESSID, auth_token …)."""
    lower = name.lower()
    if any(part in lower for part in _CSRF_PARTS):
        return False
    words = set(re.split(r"[^a-z0-9]+", lower))
    return bool(words & _SESSION_WORDS) or any(part in lower for part in _SESSION_PARTS)


def _judge_cookie(value: str, https: bool) -> Issue | None:
    name, attrs, _ = _cookie_parts(value)
    max_age = attrs.get("max-age")
    if max_age is not None and re.fullmatch(r"-?[0-9]+", max_age) and int(max_age) <= 0:
        return None  # the cookie is being deleted
    session = is_session_cookie(name)
    secure = "secure" in attrs
    problems: list[str] = []
    serious = False
    if https and not secure:
        problems.append("no Secure attribute (it is also sent over plain HTTP)")
        serious = serious or session
    if session and "httponly" not in attrs:
        problems.append("no HttpOnly attribute (scripts can read this session cookie)")
        serious = True
    same_site = attrs.get("samesite")
    if "samesite" not in attrs:
        problems.append("no SameSite attribute (it is sent with cross-site requests)")
    elif (same_site or "").lower() not in ("strict", "lax", "none"):
        problems.append(f"SameSite={same_site or ''} is not Strict, Lax or None")
    elif (same_site or "").lower() == "none" and not secure:
        problems.append("SameSite=None without Secure (browsers reject it)")
    if not problems:
        return None
    shown = name or "(unnamed)"
    kind = "session cookie" if session else "cookie"
    return Issue(
        code="posture.insecure-cookie",
        severity=Severity.ERROR if serious else Severity.WARNING,
        header=SET_COOKIE,
        value=None,
        message=f"sets {kind} {shown!r} with {'; '.join(problems)}",
        hint="set cookies with Secure, HttpOnly (always for sessions) and SameSite=Lax or Strict",
        extra={"cookie": shown, "session": session, "problems": problems},
    )


# --------------------------------------------------------------------------------------------
# everything


def _missing(header: str) -> Issue:
    return Issue(
        code="posture.missing-header",
        severity=Severity.WARNING,
        header=header,
        value=None,
        message=f"does not send {header}",
        hint=f"send {header}: {MISSING_HINTS[header]}",
    )


def _invalid(header: str, value: str, why: str) -> Issue:
    return Issue(
        code="posture.invalid-header",
        severity=Severity.WARNING,
        header=header,
        value=value,
        message=f"sends {header}: {_short(value)!r} — {why}; browsers ignore it, as if it were "
        "missing",
        hint=f"send {header}: {MISSING_HINTS[header]}",
    )


def _short(value: str, limit: int = 160) -> str:
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def judge(
    fields: Iterable[tuple[str, str]],
    *,
    https: bool,
    body: bytes = b"",
    content_type: str = "",
) -> list[Issue]:
    """Every issue with one response's security headers and cookies, header by header.

    ``fields`` are the response's header fields in order (a name may repeat); ``body`` and
    ``content_type`` are read for ``<meta>`` policies. HSTS and ``Secure`` are asked on https only.
    """
    by_name: dict[str, list[str]] = {}
    for name, value in fields:
        by_name.setdefault(name.lower(), []).append(value)

    def values(header: str) -> list[str]:
        return by_name.get(header.lower(), [])

    issues: list[Issue] = []
    if https:
        issues += _judge_hsts(values(HSTS))
    csp, framed = _judge_csp(values(CSP), meta_policies(body, content_type))
    issues += csp
    issues += _judge_xfo(values(XFO), framed)
    issues += _judge_xcto(values(XCTO))
    issues += _judge_referrer(values(REFERRER))
    for cookie in values(SET_COOKIE):
        issue = _judge_cookie(cookie, https)
        if issue is not None:
            issues.append(issue)
    return issues
