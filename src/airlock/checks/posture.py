"""Posture probes for ``airlock check ENV --posture`` (INC13, INC14).

Each probe talks to a running environment and returns :class:`Finding` objects. Every finding
carries ``evidence``: ``request`` (the request line and the headers we sent, as text) and
``response`` (the status line and the headers that matter, as text), so a reviewer can see exactly
what was asked and what came back without re-running the probe.

The probes are read-only except :func:`check_rate_limit`, which sends a short, bounded burst to the
endpoints a target *declares* sensitive. HTTPS requests are made with certificate verification
off (environments often run self-signed certificates); the evidence records ``tls_verify: false``.
Certificate validity is judged by :func:`check_tls`, not by the HTTP client. Security headers
and cookies are judged by their values in :mod:`airlock.checks.posture_headers`.
"""

from __future__ import annotations

import socket
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from traceback import TracebackException
from typing import Any
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

import httpx
from cryptography.utils import CryptographyDeprecationWarning
from sslyze.plugins.certificate_info.implementation import CertificateInfoScanResult
from sslyze.plugins.openssl_cipher_suites.implementation import CipherSuitesScanResult
from sslyze.plugins.scan_commands import ScanCommand
from sslyze.scanner.models import ServerScanRequest, ServerScanResult, ServerScanStatusEnum
from sslyze.scanner.scan_command_attempt import ScanCommandAttemptStatusEnum
from sslyze.scanner.scanner import Scanner
from sslyze.server_setting import ServerNetworkLocation

from airlock.checks.posture_headers import Issue, judge, mask_cookie
from airlock.findings import Finding, Severity

CODES: dict[str, str] = {
    "posture.unreachable": "The environment did not answer, so its posture cannot be judged.",
    "posture.tls-unreachable": "The TLS handshake failed: protocols and certificate are unknown.",
    "posture.tls-old-protocol": "The server accepts SSL 2/3, TLS 1.0 or TLS 1.1.",
    "posture.cert-expiring": "The leaf certificate expires in fewer days than the target allows.",
    "posture.cert-expired": "The leaf certificate has already expired.",
    "posture.missing-header": "A security response header is missing.",
    "posture.invalid-header": "A security header's value is not understood, as if it were missing.",
    "posture.weak-csp": "The Content-Security-Policy lets injected scripts or plugins run.",
    "posture.hsts-short": "Strict-Transport-Security has a max-age shorter than six months.",
    "posture.leaky-referrer": "Referrer-Policy sends the page's URL or origin to other sites.",
    "posture.insecure-cookie": "A cookie lacks Secure, HttpOnly (sessions) or a valid SameSite.",
    "posture.no-https-redirect": "Plain HTTP does not redirect to HTTPS on the same host.",
    "posture.cors-open": "CORS lets a foreign origin read responses (echoed, or * + credentials).",
    "posture.admin-exposed": "A declared admin path answers 2xx without credentials.",
    "posture.no-rate-limit": "A declared sensitive endpoint never answered 429 in a short burst.",
}

FOREIGN_ORIGIN = "https://evil.example"
"""The origin sent by :func:`check_cors`; a correct policy never allows it."""

DEFAULT_TIMEOUT = 5.0
"""Seconds allowed for one HTTP request."""

BURST_DEADLINE = 10.0
"""Upper bound, in seconds, on one rate-limit burst to one endpoint."""

_OLD_PROTOCOLS: tuple[tuple[ScanCommand, str], ...] = (
    (ScanCommand.SSL_2_0_CIPHER_SUITES, "SSL 2.0"),
    (ScanCommand.SSL_3_0_CIPHER_SUITES, "SSL 3.0"),
    (ScanCommand.TLS_1_0_CIPHER_SUITES, "TLS 1.0"),
    (ScanCommand.TLS_1_1_CIPHER_SUITES, "TLS 1.1"),
)

# Relevant response headers shown in evidence, in this order, when present.
_EVIDENCE_HEADERS = (
    "location",
    "www-authenticate",
    "retry-after",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "strict-transport-security",
    "content-security-policy",
    "x-frame-options",
    "x-content-type-options",
    "referrer-policy",
)


@dataclass
class Target:
    """One environment to probe: its base URL and the paths that deserve extra care.

    ``admin_paths`` must refuse anonymous requests; ``sensitive_paths`` (password reset, login)
    must be rate limited. A path may start with a method (``"POST /password-reset"``); the
    default is GET.

    Plain HTTP must redirect to HTTPS: for an ``https`` target, ``http://HOST:http_port`` is
    tried (``None`` skips it); an ``http`` target is held to it only when ``https_url`` names its
    HTTPS address.
    """

    name: str
    url: str
    admin_paths: list[str] = field(default_factory=list)
    sensitive_paths: list[str] = field(default_factory=list)
    cert_min_days: int = 21
    burst: int = 30
    http_port: int | None = 80
    https_url: str | None = None


class _Unreachable(Exception):
    """An HTTP request could not be completed; carries the reason and the request text."""

    def __init__(self, reason: str, request: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request = request


# --------------------------------------------------------------------------------------------
# evidence helpers


def _request_text(method: str, url: str, headers: Mapping[str, str] | None = None) -> str:
    lines = [f"{method} {url} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return "\n".join(lines)


def _response_text(response: httpx.Response) -> str:
    reason = response.reason_phrase or ""
    lines = [f"{response.http_version} {response.status_code} {reason}".rstrip()]
    for name in _EVIDENCE_HEADERS:
        value = response.headers.get(name)
        if value is not None:
            lines.append(f"{_title(name)}: {value}")
    # cookie values are secrets: only names and attributes are shown
    lines += [f"Set-Cookie: {mask_cookie(v)}" for v in response.headers.get_list("set-cookie")]
    return "\n".join(lines)


def _title(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


def _evidence(request: str, response: str, url: str, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"request": request, "response": response}
    if url.lower().startswith("https:"):
        data["tls_verify"] = False
    data.update(extra)
    return data


def _unreachable(url: str, err: _Unreachable) -> Finding:
    return Finding(
        code="posture.unreachable",
        severity=Severity.ERROR,
        message=f"{url} did not answer: {err.reason}",
        hint="start the environment (or fix its URL) and probe again; a gate that cannot "
        "decide fails",
        evidence={"request": err.request, "response": f"(no response: {err.reason})"},
    )


def _split_path(spec: str) -> tuple[str, str]:
    """``"POST /reset"`` -> ``("POST", "/reset")``; a bare path means GET."""
    parts = spec.strip().split(None, 1)
    if len(parts) == 2 and parts[0].isalpha() and parts[0].isupper():
        return parts[0], parts[1].strip()
    return "GET", spec.strip()


def _join(base: str, path: str) -> str:
    return urljoin(base if base.endswith("/") else base + "/", path.lstrip("/"))


def _client() -> httpx.Client:
    return httpx.Client(verify=False, timeout=DEFAULT_TIMEOUT, follow_redirects=False)


def _send(
    client: httpx.Client, method: str, url: str, headers: Mapping[str, str] | None = None
) -> tuple[httpx.Response, str]:
    request = _request_text(method, url, headers)
    try:
        return client.request(method, url, headers=dict(headers or {})), request
    except httpx.HTTPError as exc:
        raise _Unreachable(_reason(exc), request) from exc


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# TLS


def _trace_reason(trace: TracebackException | None) -> str:
    if trace is None:
        return "unknown error"
    return "".join(trace.format_exception_only()).strip() or "unknown error"


def _scan(host: str, port: int) -> ServerScanResult:
    commands = {ScanCommand.CERTIFICATE_INFO} | {cmd for cmd, _ in _OLD_PROTOCOLS}
    request = ServerScanRequest(
        server_location=ServerNetworkLocation(hostname=host, port=port),
        scan_commands=commands,
    )
    scanner = Scanner()
    with warnings.catch_warnings():
        # sslyze's bundled trust stores hold old roots that newer cryptography warns about.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        scanner.queue_scans([request])
        results = list(scanner.get_results())
    return results[0]


def check_tls(host: str, port: int, *, min_days: int, now: datetime | None = None) -> list[Finding]:
    """Scan ``host:port`` with sslyze: old protocol versions offered, and the leaf's not-after."""
    request = f"TLS scan of {host}:{port} (sslyze: SSL 2.0, SSL 3.0, TLS 1.0, TLS 1.1, certificate)"

    def unreachable(reason: str) -> list[Finding]:
        return [
            Finding(
                code="posture.tls-unreachable",
                severity=Severity.ERROR,
                message=f"TLS handshake with {host}:{port} failed: {reason}",
                hint="check that the port serves TLS with a protocol and cipher a modern client "
                "accepts; a gate that cannot decide fails",
                evidence={"request": request, "response": f"(handshake failed: {reason})"},
            )
        ]

    try:
        result = _scan(host, port)
    except Exception as exc:  # sslyze raises on bad input (e.g. a hostname that does not resolve)
        return unreachable(_reason(exc))
    if result.scan_status is not ServerScanStatusEnum.COMPLETED or result.scan_result is None:
        return unreachable(_trace_reason(result.connectivity_error_trace))

    findings: list[Finding] = []
    attempts = result.scan_result
    accepted: list[str] = []
    lines: list[str] = []
    for command, label in _OLD_PROTOCOLS:
        attempt = getattr(attempts, command.value)
        if attempt.status is not ScanCommandAttemptStatusEnum.COMPLETED:
            continue
        suites = attempt.result
        if isinstance(suites, CipherSuitesScanResult) and suites.is_tls_version_supported:
            names = [s.cipher_suite.name for s in suites.accepted_cipher_suites]
            accepted.append(label)
            more = f" (+{len(names) - 3} more)" if len(names) > 3 else ""
            lines.append(f"{label}: handshake accepted ({', '.join(names[:3])}{more})")
    if accepted:
        findings.append(
            Finding(
                code="posture.tls-old-protocol",
                severity=Severity.ERROR,
                message=f"{host}:{port} accepts old protocol versions: {', '.join(accepted)}",
                hint="allow TLS 1.2 and TLS 1.3 only (e.g. ssl_protocols TLSv1.2 TLSv1.3)",
                evidence={
                    "request": request,
                    "response": "\n".join(lines),
                    "protocols": accepted,
                },
            )
        )

    cert_attempt = attempts.certificate_info
    cert_result = cert_attempt.result
    if cert_attempt.status is not ScanCommandAttemptStatusEnum.COMPLETED or not isinstance(
        cert_result, CertificateInfoScanResult
    ):
        reason = _trace_reason(cert_attempt.error_trace)
        return findings + unreachable(f"certificate could not be read: {reason}")
    deployments = cert_result.certificate_deployments
    if not deployments or not deployments[0].received_certificate_chain:
        return findings + unreachable("the server sent no certificate")
    leaf = deployments[0].received_certificate_chain[0]
    not_after = leaf.not_valid_after_utc
    current = now or datetime.now(UTC)
    seconds_left = (not_after - current).total_seconds()
    days_left = int(seconds_left // 86400)  # whole days left, rounded down
    subject = leaf.subject.rfc4514_string()
    response = (
        f"leaf certificate: subject {subject}; not after {not_after.isoformat()}; "
        f"days left {days_left}"
    )
    evidence = {
        "request": request,
        "response": response,
        "not_after": not_after.isoformat(),
        "days_left": days_left,
        "min_days": min_days,
    }
    if seconds_left <= 0:
        findings.append(
            Finding(
                code="posture.cert-expired",
                severity=Severity.ERROR,
                message=f"certificate of {host}:{port} expired on {not_after.date().isoformat()} "
                f"({-days_left} days ago)",
                hint="renew the certificate now",
                evidence=evidence,
            )
        )
    elif seconds_left < min_days * 86400:
        findings.append(
            Finding(
                code="posture.cert-expiring",
                severity=Severity.ERROR,
                message=f"certificate of {host}:{port} expires on {not_after.date().isoformat()}, "
                f"in {days_left} days (fewer than the {min_days} required)",
                hint="renew the certificate (or fix its automatic renewal) before releasing",
                evidence=evidence,
            )
        )
    return findings


# --------------------------------------------------------------------------------------------
# HTTP


def check_headers(url: str) -> list[Finding]:
    """GET ``url`` and judge its security headers and cookies by their values.

    Codes: ``posture.missing-header``, ``posture.invalid-header`` (a value browsers ignore),
    ``posture.weak-csp``, ``posture.hsts-short``, ``posture.leaky-referrer`` and
    ``posture.insecure-cookie``; the rules are in :mod:`airlock.checks.posture_headers`.
    """
    try:
        with _client() as client:
            response, request = _send(client, "GET", url)
    except _Unreachable as err:
        return [_unreachable(url, err)]
    issues = judge(
        response.headers.multi_items(),
        https=urlsplit(url).scheme.lower() == "https",
        body=response.content,
        content_type=response.headers.get("content-type", ""),
    )
    evidence = _evidence(request, _response_text(response), url)
    return [_issue_finding(url, issue, evidence) for issue in issues]


def _issue_finding(url: str, issue: Issue, evidence: dict[str, Any]) -> Finding:
    extra: dict[str, Any] = {"header": issue.header}
    if issue.value is not None:
        extra["value"] = issue.value
    extra.update(issue.extra)
    return Finding(
        code=issue.code,
        severity=issue.severity,
        message=f"{url} {issue.message}",
        hint=issue.hint,
        evidence={**evidence, **extra},
    )


def check_https_redirect(http_url: str, https_url: str) -> list[Finding]:
    """GET ``http_url`` (redirects not followed): it must redirect to https on the host of
    ``https_url``.

    Nothing answering is fine (the site is not served over plain HTTP). Content (2xx) served over
    plain HTTP is an error; any other answer that is not such a redirect (another status, a first
    redirect to another host or to http) is a warning. Both are ``posture.no-https-redirect``.
    """
    try:
        with _client() as client:
            response, request = _send(client, "GET", http_url)
    except _Unreachable:
        return []
    host = (urlsplit(https_url).hostname or "").lower()
    status = response.status_code
    location = response.headers.get("location")
    severity = Severity.WARNING
    if 300 <= status < 400 and location:
        target = urlsplit(urljoin(http_url, location.strip()))
        if target.scheme.lower() == "https" and (target.hostname or "").lower() == host:
            return []
        if target.scheme.lower() == "https":
            why = (
                f"redirects to another host first ({target.hostname}), so browsers never see "
                f"the HSTS header of {host}"
            )
        else:
            why = f"redirects to {location.strip()!r}, which is not https"
    elif 300 <= status < 400:
        why = f"answers {status} without a Location header"
    elif 200 <= status < 300:
        why = f"serves content ({status}) over plain HTTP instead of redirecting to https"
        severity = Severity.ERROR
    else:
        why = f"answers {status} instead of redirecting to https"
    return [
        Finding(
            code="posture.no-https-redirect",
            severity=severity,
            message=f"{http_url} {why}",
            hint=f"answer plain HTTP with 301 to https://{host}/… (same host), and send HSTS there",
            evidence=_evidence(request, _response_text(response), http_url, expected_host=host),
        )
    ]


def _plain_http_url(url: str, port: int) -> str:
    """``https://host:8443/app`` -> ``http://host:PORT/app`` (no port shown for 80)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port == 80 else f"{host}:{port}"
    return urlunsplit(("http", netloc, parts.path or "/", parts.query, ""))


def check_cors(url: str) -> list[Finding]:
    """Send a foreign ``Origin``; report ``posture.cors-open`` if the response lets it read."""
    headers = {"Origin": FOREIGN_ORIGIN}
    try:
        with _client() as client:
            response, request = _send(client, "GET", url, headers)
    except _Unreachable as err:
        return [_unreachable(url, err)]
    allow = response.headers.get("access-control-allow-origin", "").strip()
    credentials = response.headers.get("access-control-allow-credentials", "").strip().lower()
    why: str | None = None
    if allow == FOREIGN_ORIGIN:
        why = f"reflects the foreign origin {FOREIGN_ORIGIN}"
        if credentials == "true":
            why += " with credentials allowed"
    elif allow == "*" and credentials == "true":
        why = "allows any origin (*) with credentials"
    if why is None:
        return []
    return [
        Finding(
            code="posture.cors-open",
            severity=Severity.ERROR,
            message=f"CORS at {url} {why}",
            hint="allow only the origins you own; never echo the request's Origin",
            evidence=_evidence(request, _response_text(response), url),
        )
    ]


def check_admin(url: str, paths: list[str]) -> list[Finding]:
    """Request each declared admin path without credentials; 2xx is ``posture.admin-exposed``."""
    findings: list[Finding] = []
    try:
        with _client() as client:
            for spec in paths:
                method, path = _split_path(spec)
                full = _join(url, path)
                response, request = _send(client, method, full)
                if 200 <= response.status_code < 300:
                    findings.append(
                        Finding(
                            code="posture.admin-exposed",
                            severity=Severity.ERROR,
                            message=f"admin path {path} answered {response.status_code} "
                            "without credentials",
                            hint="require authentication (401/403) or do not expose it publicly",
                            evidence=_evidence(request, _response_text(response), full),
                        )
                    )
    except _Unreachable as err:
        return [*findings, _unreachable(url, err)]
    return findings


def check_rate_limit(
    url: str, paths: list[str], burst: int, *, deadline: float = BURST_DEADLINE
) -> list[Finding]:
    """Send up to ``burst`` requests to each sensitive path; no 429 is ``posture.no-rate-limit``.

    A burst stops at the first 429 or after ``deadline`` seconds, whichever comes first.
    """
    findings: list[Finding] = []
    try:
        with _client() as client:
            for spec in paths:
                method, path = _split_path(spec)
                full = _join(url, path)
                statuses: dict[int, int] = {}
                sent = 0
                limited: httpx.Response | None = None
                last: httpx.Response | None = None
                request = _request_text(method, full)
                started = time.monotonic()
                while sent < burst and time.monotonic() - started < deadline:
                    last, request = _send(client, method, full)
                    sent += 1
                    statuses[last.status_code] = statuses.get(last.status_code, 0) + 1
                    if last.status_code == 429:
                        limited = last
                        break
                if limited is not None:
                    continue
                elapsed = time.monotonic() - started
                counts = ", ".join(f"{n}x {code}" for code, n in sorted(statuses.items()))
                response = _response_text(last) if last is not None else "(no response)"
                findings.append(
                    Finding(
                        code="posture.no-rate-limit",
                        severity=Severity.ERROR,
                        message=f"{method} {path}: {sent} requests in {elapsed:.1f}s, "
                        f"no 429 ({counts or 'nothing sent'})",
                        hint="rate limit this endpoint (answer 429 with Retry-After)",
                        evidence=_evidence(
                            f"{request}\n(x{sent})",
                            f"last response:\n{response}",
                            full,
                            sent=sent,
                            statuses={str(code): n for code, n in sorted(statuses.items())},
                            seconds=round(elapsed, 3),
                        ),
                    )
                )
    except _Unreachable as err:
        return [*findings, _unreachable(url, err)]
    return findings


# --------------------------------------------------------------------------------------------
# everything


def _tcp_open(parts: SplitResult) -> bool:
    """True when a TCP connection to the URL's host and port succeeds."""
    try:
        with socket.create_connection((parts.hostname, parts.port or 443), timeout=DEFAULT_TIMEOUT):
            return True
    except OSError:
        return False


def probe(target: Target) -> list[Finding]:
    """Run every posture probe against ``target``; unreachable means one ``posture.unreachable``."""
    parts = urlsplit(target.url)
    try:
        with _client() as client:
            _send(client, "GET", target.url)
    except _Unreachable as err:
        if parts.scheme.lower() == "https" and parts.hostname and _tcp_open(parts):
            # The port answers but HTTPS failed: let the TLS scan say why (tls-unreachable).
            tls = check_tls(parts.hostname, parts.port or 443, min_days=target.cert_min_days)
            if any(f.code == "posture.tls-unreachable" for f in tls):
                return tls
            return [*tls, _unreachable(target.url, err)]
        return [_unreachable(target.url, err)]
    findings: list[Finding] = []
    if parts.scheme.lower() == "https" and parts.hostname:
        findings += check_tls(parts.hostname, parts.port or 443, min_days=target.cert_min_days)
    findings += check_headers(target.url)
    if parts.scheme.lower() == "https" and target.http_port is not None:
        findings += check_https_redirect(_plain_http_url(target.url, target.http_port), target.url)
    elif parts.scheme.lower() == "http" and target.https_url:
        findings += check_https_redirect(target.url, target.https_url)
    findings += check_cors(target.url)
    findings += check_admin(target.url, target.admin_paths)
    findings += check_rate_limit(target.url, target.sensitive_paths, target.burst)
    return findings
