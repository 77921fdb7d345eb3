"""Posture probes against real HTTP(S) servers on 127.0.0.1 (helpers are shared with INC13/14)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from airlock.checks import Finding, Severity
from airlock.checks.posture import (
    CODES,
    Target,
    check_admin,
    check_cors,
    check_headers,
    check_https_redirect,
    check_rate_limit,
    check_tls,
    probe,
)
from airlock.checks.posture_headers import (
    csp_weaknesses,
    hsts_max_age,
    is_session_cookie,
    mask_cookie,
    parse_policy,
    referrer_policy,
)

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# certificates


@dataclass
class Pki:
    """A test CA and the PEM files of one leaf certificate it signed."""

    cert_file: Path
    key_file: Path
    not_after: dt.datetime


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_pki(folder: Path, *, valid_for: dt.timedelta) -> Pki:
    """Write a CA-signed leaf for 127.0.0.1 valid from a day ago until now + ``valid_for``."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Airlock Test CA"))
        .issuer_name(_name("Airlock Test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = now + valid_for
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now, not_after) - dt.timedelta(days=1))
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_file = folder / "leaf.pem"
    key_file = folder / "leaf.key"
    cert_file.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + ca_cert.public_bytes(serialization.Encoding.PEM)
    )
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Pki(cert_file, key_file, not_after.replace(microsecond=0))


def tls_context(pki: Pki, *, old_protocols: bool = False) -> ssl.SSLContext:
    """A server context: TLS 1.2+ normally, or from TLS 1.1 up when ``old_protocols``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert_file, pki.key_file)
    if old_protocols:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 refuses TLS 1.1 at level 1+
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is the point here
            context.minimum_version = ssl.TLSVersion.TLSv1_1
    else:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def tls11_works(context: ssl.SSLContext, port: int) -> bool:
    """True when a TLS 1.1-only client completes a handshake with the server on ``port``."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    try:
        client.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            client.minimum_version = ssl.TLSVersion.TLSv1_1
            client.maximum_version = ssl.TLSVersion.TLSv1_1
        with (
            socket.create_connection(("127.0.0.1", port), timeout=3) as raw,
            client.wrap_socket(raw) as tls,
        ):
            return tls.version() == "TLSv1.1"
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------------------------
# servers

SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
}


class _Handler(BaseHTTPRequestHandler):
    """Answers every method the same way through ``self.server.behaviour``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        server: _Server = self.server  # type: ignore[assignment]
        answer = server.behaviour(self.command, self.path, dict(self.headers))
        status, headers = answer[0], answer[1]
        body = answer[2] if len(answer) == 3 else b"ok\n"
        self.send_response(status)
        fields = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in fields:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _answer


Fields = Mapping[str, str] | Sequence[tuple[str, str]]
"""Response headers: a mapping, or (name, value) pairs when a name repeats (Set-Cookie)."""

Behaviour = Callable[[str, str, dict[str, str]], tuple[int, Fields] | tuple[int, Fields, bytes]]
"""(method, path, request headers) -> (status, headers) or (status, headers, body)."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    behaviour: Behaviour

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # failed handshakes from the scanner are expected


@contextmanager
def serve(behaviour: Behaviour, *, tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """Run ``behaviour`` on 127.0.0.1 (over TLS when given a context); yield the base URL."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.behaviour = behaviour
    if tls is not None:
        server.socket = tls.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    scheme = "https" if tls is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def bad_behaviour(method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """No security headers, CORS echoing any origin with credentials, everything open."""
    out: dict[str, str] = {}
    origin = headers.get("Origin")
    if origin:
        out["Access-Control-Allow-Origin"] = origin
        out["Access-Control-Allow-Credentials"] = "true"
    return 200, out


class GoodBehaviour:
    """Security headers, CORS for one origin, admin 401, password reset 429 after 5 requests."""

    def __init__(self, *, limit: int = 5) -> None:
        self.limit = limit
        self.resets = 0
        self.lock = threading.Lock()

    def __call__(
        self, method: str, path: str, headers: dict[str, str]
    ) -> tuple[int, dict[str, str]]:
        out = dict(SECURITY_HEADERS)
        if headers.get("Origin") == "https://app.example":
            out["Access-Control-Allow-Origin"] = "https://app.example"
            out["Access-Control-Allow-Credentials"] = "true"
        if path.startswith("/admin"):
            out["WWW-Authenticate"] = 'Basic realm="admin"'
            return 401, out
        if path.startswith("/password-reset"):
            with self.lock:
                self.resets += 1
                if self.resets > self.limit:
                    out["Retry-After"] = "60"
                    return 429, out
        return 200, out


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def not_tls_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that answers any ClientHello with plain text and closes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                try:
                    conn.settimeout(1)
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def codes(findings: list[Finding]) -> list[str]:
    return sorted(f.code for f in findings)


# --------------------------------------------------------------------------------------------
# tests


def test_every_code_is_documented() -> None:
    """docs/posture.md names every posture code and every code is namespaced ``posture.``."""
    page = (REPO / "docs" / "posture.md").read_text()
    for code in CODES:
        assert code.startswith("posture.")
        assert f"`{code}`" in page


def test_target_defaults() -> None:
    """A Target defaults to 21 days of certificate margin, a 30-request burst and no paths."""
    target = Target(name="prod", url="https://127.0.0.1:1")
    assert (target.cert_min_days, target.burst) == (21, 30)
    assert target.admin_paths == [] and target.sensitive_paths == []
    assert Target("a", "u").admin_paths is not Target("b", "u").admin_paths


def test_missing_headers_on_plain_http() -> None:
    """Plain HTTP without security headers lacks four headers (HSTS is only asked on https)."""
    with serve(bad_behaviour) as url:
        findings = check_headers(url)
    names = sorted(f.evidence["header"] for f in findings)
    assert names == [
        "Content-Security-Policy",
        "Referrer-Policy",
        "X-Content-Type-Options",
        "X-Frame-Options",
    ]
    for finding in findings:
        assert finding.code == "posture.missing-header"
        assert finding.severity is Severity.WARNING
        assert finding.evidence["request"].startswith(f"GET {url} HTTP/1.1")
        assert finding.evidence["response"].startswith("HTTP/1.1 200 OK")
        assert "tls_verify" not in finding.evidence


def test_csp_frame_ancestors_replaces_x_frame_options() -> None:
    """A CSP with frame-ancestors satisfies the framing check; a wrong nosniff value does not."""
    headers = dict(SECURITY_HEADERS)
    del headers["X-Frame-Options"]
    headers["X-Content-Type-Options"] = "sniff-away"
    with serve(lambda m, p, h: (200, headers)) as url:
        findings = check_headers(url)
    assert [f.evidence["header"] for f in findings] == ["X-Content-Type-Options"]


def test_cors_star_with_credentials_is_open() -> None:
    """``*`` together with credentials is reported with the Origin we sent as evidence."""
    allow = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Credentials": "true"}
    with serve(lambda m, p, h: (200, allow)) as url:
        (finding,) = check_cors(url)
    assert finding.code == "posture.cors-open"
    assert "Origin: https://evil.example" in finding.evidence["request"]
    assert "Access-Control-Allow-Origin: *" in finding.evidence["response"]


def test_cors_star_without_credentials_and_restricted_are_clean() -> None:
    """A public ``*`` without credentials, or an allow-list, is not reported."""
    with serve(lambda m, p, h: (200, {"Access-Control-Allow-Origin": "*"})) as url:
        assert check_cors(url) == []
    with serve(GoodBehaviour()) as url:
        assert check_cors(url) == []


def test_admin_paths() -> None:
    """An admin path answering 200 is exposed; 401 and a redirect to a login page are not."""

    def behaviour(method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        if path == "/open":
            return 200, {}
        if path == "/login-first":
            return 302, {"Location": "/login"}
        return 401, {}

    with serve(behaviour) as url:
        findings = check_admin(url, ["/open", "/login-first", "/closed"])
    (finding,) = findings
    assert finding.code == "posture.admin-exposed"
    assert "/open" in finding.message
    assert finding.evidence["request"] == f"GET {url}/open HTTP/1.1"


def test_rate_limit_counts_and_method_prefix() -> None:
    """A POST burst without 429 reports the counts; one meeting 429 after 5 requests is clean."""
    seen: list[str] = []

    def behaviour(method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        seen.append(method)
        return 200, {}

    with serve(behaviour) as url:
        (finding,) = check_rate_limit(url, ["POST /password-reset"], 8)
    assert set(seen) == {"POST"}
    assert finding.code == "posture.no-rate-limit"
    assert finding.evidence["sent"] == 8
    assert finding.evidence["statuses"] == {"200": 8}
    assert "8 requests" in finding.message
    good = GoodBehaviour(limit=5)
    with serve(good) as url:
        assert check_rate_limit(url, ["/password-reset"], 30) == []
    assert good.resets == 6


def test_rate_limit_burst_is_bounded_in_time() -> None:
    """The burst stops at its deadline even when fewer than ``burst`` requests were sent."""
    with serve(lambda m, p, h: (200, {})) as url:
        (finding,) = check_rate_limit(url, ["/reset"], 10_000, deadline=0.3)
    assert 0 < finding.evidence["sent"] < 10_000  # stopped by its deadline, not its count


def test_each_http_check_reports_unreachable() -> None:
    """Every HTTP probe turns a refused connection into posture.unreachable, not a traceback."""
    url = f"http://127.0.0.1:{free_port()}"
    for findings in (
        check_headers(url),
        check_cors(url),
        check_admin(url, ["/admin"]),
        check_rate_limit(url, ["/reset"], 3),
    ):
        (finding,) = findings
        assert finding.code == "posture.unreachable"
        assert "ConnectError" in finding.message


def test_tls_expired_certificate(tmp_path: Path) -> None:
    """A leaf that expired 3 days ago is posture.cert-expired with its date."""
    pki = make_pki(tmp_path, valid_for=-dt.timedelta(days=3))
    with serve(bad_behaviour, tls=tls_context(pki)) as url:
        port = int(url.rsplit(":", 1)[1])
        findings = check_tls("127.0.0.1", port, min_days=21)
    (finding,) = findings
    assert finding.code == "posture.cert-expired"
    assert pki.not_after.date().isoformat() in finding.message
    assert finding.evidence["days_left"] < 0


def test_tls_handshake_failure_is_tls_unreachable() -> None:
    """A port that speaks plain text instead of TLS is posture.tls-unreachable with a reason."""
    with not_tls_server() as port:
        (finding,) = check_tls("127.0.0.1", port, min_days=21)
    assert finding.code == "posture.tls-unreachable"
    assert finding.severity is Severity.ERROR
    assert f"127.0.0.1:{port}" in finding.message
    assert len(finding.message) > len(f"TLS handshake with 127.0.0.1:{port} failed: ")


def test_probe_unreachable_port() -> None:
    """probe() on a port nobody listens on yields one posture.unreachable finding."""
    target = Target(name="prod", url=f"https://127.0.0.1:{free_port()}", admin_paths=["/admin"])
    (finding,) = probe(target)
    assert finding.code == "posture.unreachable"
    assert finding.evidence["request"].startswith("GET https://127.0.0.1:")


def test_findings_serialise() -> None:
    """Posture findings serialise to plain dicts with evidence text (for JSON/SARIF output)."""
    with serve(bad_behaviour) as url:
        data = [f.to_dict() for f in check_cors(url)]
    assert data[0]["severity"] == "error"
    assert isinstance(data[0]["evidence"]["request"], str)


# --------------------------------------------------------------------------------------------
# header values, case by case
#
# Each case is served from a real server on 127.0.0.1 and judged by check_headers. `finding`
# is Airlock's verdict (some finding names `header`); `observatory` is the verdict Mozilla's
# HTTP Observatory scoring implies (a negative score modifier for that test), or None where its
# documentation does not say. Where the two differ, `note` says why.

BASE_HEADERS: tuple[tuple[str, str], ...] = (
    ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
    ("Content-Security-Policy", "default-src 'self'"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "strict-origin-when-cross-origin"),
)
"""A clean response; each case replaces the header it is about."""

CSP = "Content-Security-Policy"
HSTS = "Strict-Transport-Security"
XFO = "X-Frame-Options"
XCTO = "X-Content-Type-Options"
REFERRER = "Referrer-Policy"
COOKIE = "Set-Cookie"
COOKIE_SECRET = "s3cr3t-c00kie-v4lue"


@dataclass(frozen=True)
class HeaderCase:
    """One response: ``fields`` replace the base headers they name (``drop`` removes more)."""

    id: str
    header: str
    fields: tuple[tuple[str, str], ...]
    finding: bool
    observatory: bool | None
    drop: tuple[str, ...] = ()
    body: bytes = b""
    note: str = ""

    def response(self) -> tuple[list[tuple[str, str]], bytes]:
        replaced = {name.lower() for name, _ in self.fields} | {self.header.lower()}
        replaced |= {name.lower() for name in self.drop}
        kept = [(n, v) for n, v in BASE_HEADERS if n.lower() not in replaced]
        return [*kept, *self.fields], self.body


def _case(
    id: str,
    header: str,
    *fields: tuple[str, str],
    finding: bool,
    observatory: bool | None,
    drop: tuple[str, ...] = (),
    body: bytes = b"",
    note: str = "",
) -> HeaderCase:
    return HeaderCase(id, header, fields, finding, observatory, drop, body, note)


def _html(policy: str) -> bytes:
    meta = f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
    return f"<!doctype html><html><head>{meta}</head><body>ok</body></html>".encode()


_NO_FRAMING = (CSP, "default-src 'self'; frame-ancestors 'none'")
_HTML = ("Content-Type", "text/html; charset=utf-8")

CASES: tuple[HeaderCase, ...] = (
    # Content-Security-Policy
    _case("csp-self", CSP, (CSP, "default-src 'self'"), finding=False, observatory=False),
    _case(
        "csp-default-none",
        CSP,
        (CSP, "default-src 'none'; script-src 'self'; img-src 'self'"),
        finding=False,
        observatory=False,
    ),
    _case(
        "csp-unsafe-inline",
        CSP,
        (CSP, "script-src 'self' 'unsafe-inline'; object-src 'none'"),
        finding=True,
        observatory=True,
    ),
    _case(
        "csp-default-unsafe-inline",
        CSP,
        (CSP, "default-src 'self' 'unsafe-inline'"),
        finding=True,
        observatory=True,
    ),
    _case("csp-star", CSP, (CSP, "default-src *"), finding=True, observatory=True),
    _case("csp-empty", CSP, (CSP, ""), finding=True, observatory=True),
    _case("csp-garbage", CSP, (CSP, "this is not a policy"), finding=True, observatory=True),
    _case(
        "csp-unsafe-eval",
        CSP,
        (CSP, "default-src 'self'; script-src 'self' 'unsafe-eval'"),
        finding=True,
        observatory=True,
    ),
    _case(
        "csp-https-scheme",
        CSP,
        (CSP, "default-src 'self'; script-src https:"),
        finding=True,
        observatory=True,
    ),
    _case(
        "csp-http-scheme",
        CSP,
        (CSP, "default-src 'self'; script-src 'self' http:"),
        finding=True,
        observatory=True,
    ),
    _case(
        "csp-data-scripts",
        CSP,
        (CSP, "default-src 'self'; script-src 'self' data:"),
        finding=True,
        observatory=True,
    ),
    _case(
        "csp-http-host",
        CSP,
        (CSP, "default-src 'self'; script-src 'self' http://cdn.example.com"),
        finding=True,
        observatory=True,
    ),
    _case("csp-no-object-src", CSP, (CSP, "script-src 'self'"), finding=True, observatory=True),
    _case(
        "csp-script-and-object",
        CSP,
        (CSP, "script-src 'self'; object-src 'none'"),
        finding=False,
        observatory=False,
    ),
    _case(
        "csp-object-star",
        CSP,
        (CSP, "default-src 'self'; object-src *"),
        finding=True,
        observatory=True,
    ),
    _case(
        "csp-strict-dynamic",
        CSP,
        (
            CSP,
            "script-src 'nonce-r4nd0m' 'strict-dynamic' 'unsafe-inline' https:; object-src 'none'",
        ),
        finding=False,
        observatory=False,
    ),
    _case(
        "csp-hash-with-unsafe-inline",
        CSP,
        (
            CSP,
            "script-src 'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=' 'unsafe-inline'; "
            "object-src 'none'",
        ),
        finding=False,
        observatory=False,
    ),
    _case(
        "csp-style-unsafe-inline",
        CSP,
        (CSP, "default-src 'self'; style-src 'self' 'unsafe-inline'"),
        finding=False,
        observatory=False,
    ),
    _case(
        "csp-frame-ancestors-only",
        CSP,
        (CSP, "frame-ancestors 'none'"),
        finding=True,
        observatory=True,
    ),
    _case("csp-missing", CSP, finding=True, observatory=True),
    _case(
        "csp-meta",
        CSP,
        _HTML,
        finding=False,
        observatory=False,
        body=_html("default-src 'self'"),
    ),
    _case(
        "csp-meta-unsafe-inline",
        CSP,
        _HTML,
        finding=True,
        observatory=True,
        body=_html("script-src 'self' 'unsafe-inline'; object-src 'none'"),
    ),
    _case(
        "csp-report-only",
        CSP,
        ("Content-Security-Policy-Report-Only", "default-src 'self'"),
        finding=True,
        observatory=True,
    ),
    _case("csp-upper-case", CSP, (CSP, "DEFAULT-SRC 'SELF'"), finding=False, observatory=None),
    _case(
        "csp-two-policies",
        CSP,
        (CSP, "default-src *"),
        (CSP, "default-src 'self'"),
        finding=False,
        observatory=None,
        note="browsers enforce both policies, so the stricter one wins",
    ),
    # Strict-Transport-Security (https)
    _case(
        "hsts-one-year",
        HSTS,
        (HSTS, "max-age=31536000; includeSubDomains"),
        finding=False,
        observatory=False,
    ),
    _case("hsts-six-months", HSTS, (HSTS, "max-age=15768000"), finding=False, observatory=False),
    _case(
        "hsts-preload",
        HSTS,
        (HSTS, "max-age=63072000; includeSubDomains; preload"),
        finding=False,
        observatory=False,
    ),
    _case("hsts-one-day", HSTS, (HSTS, "max-age=86400"), finding=True, observatory=True),
    _case("hsts-zero", HSTS, (HSTS, "max-age=0"), finding=True, observatory=True),
    _case("hsts-not-a-number", HSTS, (HSTS, "max-age=abc"), finding=True, observatory=True),
    _case("hsts-no-max-age", HSTS, (HSTS, "includeSubDomains"), finding=True, observatory=True),
    _case("hsts-missing", HSTS, finding=True, observatory=True),
    _case("hsts-quoted", HSTS, (HSTS, 'max-age="31536000"'), finding=False, observatory=None),
    _case(
        "hsts-twice",
        HSTS,
        (HSTS, "max-age=31536000; max-age=31536000"),
        finding=True,
        observatory=None,
        note="RFC 6797: a directive given twice makes the header invalid",
    ),
    # X-Frame-Options (the base CSP has no frame-ancestors)
    _case("xfo-deny", XFO, (XFO, "DENY"), finding=False, observatory=False),
    _case("xfo-sameorigin", XFO, (XFO, "sameorigin"), finding=False, observatory=False),
    _case("xfo-whimsy", XFO, (XFO, "whimsy"), finding=True, observatory=True),
    _case(
        "xfo-allow-from",
        XFO,
        (XFO, "ALLOW-FROM https://partner.example"),
        finding=True,
        observatory=False,
        note="current browsers ignore ALLOW-FROM, so the page can be framed by anyone",
    ),
    _case("xfo-missing", XFO, finding=True, observatory=True),
    _case("xfo-via-frame-ancestors", XFO, _NO_FRAMING, finding=False, observatory=False),
    _case(
        "xfo-whimsy-with-frame-ancestors",
        XFO,
        (XFO, "whimsy"),
        _NO_FRAMING,
        finding=False,
        observatory=False,
    ),
    _case(
        "xfo-conflicting", XFO, (XFO, "DENY"), (XFO, "SAMEORIGIN"), finding=True, observatory=None
    ),
    # X-Content-Type-Options
    _case("xcto-nosniff", XCTO, (XCTO, "nosniff"), finding=False, observatory=False),
    _case("xcto-mixed-case", XCTO, (XCTO, "NoSniff"), finding=False, observatory=None),
    _case("xcto-wrong", XCTO, (XCTO, "sniff-away"), finding=True, observatory=True),
    _case("xcto-missing", XCTO, finding=True, observatory=True),
    # Referrer-Policy
    _case("ref-no-referrer", REFERRER, (REFERRER, "no-referrer"), finding=False, observatory=False),
    _case(
        "ref-strict-origin-when-cross-origin",
        REFERRER,
        (REFERRER, "strict-origin-when-cross-origin"),
        finding=False,
        observatory=False,
    ),
    _case("ref-same-origin", REFERRER, (REFERRER, "same-origin"), finding=False, observatory=False),
    _case("ref-unsafe-url", REFERRER, (REFERRER, "unsafe-url"), finding=True, observatory=True),
    _case("ref-origin", REFERRER, (REFERRER, "origin"), finding=True, observatory=True),
    _case(
        "ref-origin-when-cross-origin",
        REFERRER,
        (REFERRER, "origin-when-cross-origin"),
        finding=True,
        observatory=True,
    ),
    _case(
        "ref-no-referrer-when-downgrade",
        REFERRER,
        (REFERRER, "no-referrer-when-downgrade"),
        finding=True,
        observatory=False,
        note="it sends the full URL, path and query, to every other https site",
    ),
    _case("ref-invalid", REFERRER, (REFERRER, "whatever"), finding=True, observatory=True),
    _case(
        "ref-last-valid-wins",
        REFERRER,
        (REFERRER, "unsafe-url, strict-origin"),
        finding=False,
        observatory=None,
    ),
    _case(
        "ref-unknown-fallback",
        REFERRER,
        (REFERRER, "strict-origin, some-future-policy"),
        finding=False,
        observatory=None,
    ),
    _case(
        "ref-missing",
        REFERRER,
        finding=True,
        observatory=False,
        note="kept as a warning (posture.missing-header) although browsers default to "
        "strict-origin-when-cross-origin",
    ),
    # Set-Cookie (https)
    _case(
        "cookie-session-good",
        COOKIE,
        (COOKIE, f"sid={COOKIE_SECRET}; Path=/; Secure; HttpOnly; SameSite=Lax"),
        finding=False,
        observatory=False,
    ),
    _case(
        "cookie-session-no-secure",
        COOKIE,
        (COOKIE, f"sessionid={COOKIE_SECRET}; HttpOnly; SameSite=Lax"),
        finding=True,
        observatory=True,
    ),
    _case(
        "cookie-session-no-httponly",
        COOKIE,
        (COOKIE, f"JSESSIONID={COOKIE_SECRET}; Secure; SameSite=Strict"),
        finding=True,
        observatory=True,
    ),
    _case(
        "cookie-plain-good",
        COOKIE,
        (COOKIE, "theme=dark; Secure; SameSite=Lax"),
        finding=False,
        observatory=False,
    ),
    _case(
        "cookie-plain-no-secure",
        COOKIE,
        (COOKIE, "theme=dark; SameSite=Lax"),
        finding=True,
        observatory=True,
    ),
    _case(
        "cookie-no-samesite",
        COOKIE,
        (COOKIE, "prefs=compact; Secure; HttpOnly"),
        finding=True,
        observatory=False,
        note="without SameSite the cookie rides along on cross-site requests (Observatory only "
        "withholds its bonus)",
    ),
    _case(
        "cookie-csrf-no-samesite",
        COOKIE,
        (COOKIE, f"csrftoken={COOKIE_SECRET}; Secure"),
        finding=True,
        observatory=True,
    ),
    _case(
        "cookie-samesite-none-secure",
        COOKIE,
        (COOKIE, "embed=1; Secure; SameSite=None"),
        finding=False,
        observatory=True,
        note="SameSite=None with Secure is how a cookie meant for cross-site use is declared",
    ),
    _case(
        "cookie-samesite-none-insecure",
        COOKIE,
        (COOKIE, "embed=1; SameSite=None"),
        finding=True,
        observatory=True,
    ),
    _case(
        "cookie-samesite-invalid",
        COOKIE,
        (COOKIE, f"connect.sid={COOKIE_SECRET}; Secure; HttpOnly; SameSite=Sometimes"),
        finding=True,
        observatory=True,
    ),
    _case("cookie-none", COOKIE, finding=False, observatory=False),
    _case(
        "cookie-deleted",
        COOKIE,
        (COOKIE, "sid=; Max-Age=0; Path=/"),
        finding=False,
        observatory=None,
    ),
)


def case_behaviour(method: str, path: str, headers: dict[str, str]) -> tuple[int, Fields, bytes]:
    """Serves ``/case/ID`` with that case's headers and body."""
    case = next(c for c in CASES if path == f"/case/{c.id}")
    fields, body = case.response()
    return 200, fields, body or b"ok\n"


@pytest.fixture(scope="module")
def case_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An https server answering every case."""
    pki = make_pki(tmp_path_factory.mktemp("pki"), valid_for=dt.timedelta(days=200))
    with serve(case_behaviour, tls=tls_context(pki)) as url:
        yield url


def flagged(findings: list[Finding], header: str) -> bool:
    """The verdict on one header: some finding names it."""
    return any(f.evidence.get("header") == header for f in findings)


def test_case_table_is_large_and_unique() -> None:
    """At least 40 cases, ids unique, and every difference from Observatory says why."""
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
    for case in CASES:
        if case.observatory is not None and case.observatory != case.finding:
            assert case.note, case.id


def test_agreement_with_observatory() -> None:
    """Where Observatory's scoring gives a verdict, Airlock agrees on at least 90% of cases."""
    judged = [c for c in CASES if c.observatory is not None]
    agree = sum(c.observatory == c.finding for c in judged)
    assert agree / len(judged) >= 0.9, f"{agree}/{len(judged)}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_header_case(case_url: str, case: HeaderCase) -> None:
    """Each served case gets its verdict, and only the header it is about is reported."""
    findings = check_headers(f"{case_url}/case/{case.id}")
    assert flagged(findings, case.header) is case.finding, [f.message for f in findings]
    assert {f.evidence["header"] for f in findings} <= {case.header}
    for finding in findings:
        assert finding.evidence["request"].startswith("GET https://")
        assert finding.code in CODES
        assert COOKIE_SECRET not in json.dumps(finding.to_dict())


def _by_id(case_url: str, id: str) -> list[Finding]:
    return check_headers(f"{case_url}/case/{id}")


def test_weak_csp_names_value_and_reasons(case_url: str) -> None:
    """A weak CSP is one warning naming the header, its value and each reason."""
    (finding,) = _by_id(case_url, "csp-frame-ancestors-only")
    assert finding.code == "posture.weak-csp" and finding.severity is Severity.WARNING
    assert finding.evidence["value"] == "frame-ancestors 'none'"
    assert "frame-ancestors 'none'" in finding.message
    reasons = finding.evidence["reasons"]
    assert any("script-src" in r for r in reasons) and any("object-src" in r for r in reasons)
    (inline,) = _by_id(case_url, "csp-unsafe-inline")
    assert inline.evidence["reasons"] == [
        "script-src allows 'unsafe-inline' (injected inline scripts run)"
    ]


def test_unusable_values_are_invalid_header(case_url: str) -> None:
    """Empty or unparseable CSP, malformed HSTS, unknown XFO and Referrer-Policy values are
    posture.invalid-header with the value; a missing one stays posture.missing-header."""
    for id, value in (
        ("csp-empty", ""),
        ("csp-garbage", "this is not a policy"),
        ("hsts-not-a-number", "max-age=abc"),
        ("xfo-whimsy", "whimsy"),
        ("ref-invalid", "whatever"),
        ("xcto-wrong", "sniff-away"),
    ):
        (finding,) = _by_id(case_url, id)
        assert finding.code == "posture.invalid-header", id
        assert finding.severity is Severity.WARNING
        assert finding.evidence["value"] == value
    (missing,) = _by_id(case_url, "csp-report-only")
    assert missing.code == "posture.missing-header" and "value" not in missing.evidence


def test_short_hsts_gives_its_age(case_url: str) -> None:
    """max-age=86400 is posture.hsts-short with the age and the six-month minimum."""
    (finding,) = _by_id(case_url, "hsts-one-day")
    assert finding.code == "posture.hsts-short"
    assert finding.evidence["max_age"] == 86400 and finding.evidence["min_age"] == 15768000
    assert "1 days" in finding.message or "86400" in finding.message


def test_leaky_referrer(case_url: str) -> None:
    """unsafe-url is posture.leaky-referrer naming the policy browsers apply."""
    (finding,) = _by_id(case_url, "ref-unsafe-url")
    assert finding.code == "posture.leaky-referrer"
    assert finding.evidence["policy"] == "unsafe-url"
    assert "unsafe-url" in finding.message


def test_cookie_findings_name_the_cookie_never_its_value(case_url: str) -> None:
    """A session cookie without HttpOnly is an error naming the cookie; its value is hidden
    everywhere, including the response shown as evidence."""
    (finding,) = _by_id(case_url, "cookie-session-no-httponly")
    assert finding.code == "posture.insecure-cookie"
    assert finding.severity is Severity.ERROR
    assert finding.evidence["cookie"] == "JSESSIONID"
    assert "'JSESSIONID'" in finding.message and "HttpOnly" in finding.message
    assert (
        "Set-Cookie: JSESSIONID=(hidden); Secure; SameSite=Strict" in finding.evidence["response"]
    )
    assert COOKIE_SECRET not in json.dumps(finding.to_dict())
    (plain,) = _by_id(case_url, "cookie-plain-no-secure")
    assert plain.severity is Severity.WARNING and "Secure" in plain.message


def test_plain_http_cookies_need_no_secure() -> None:
    """Over plain HTTP, a missing Secure is not reported (it cannot be set); HttpOnly still is."""
    cookies = [
        ("Set-Cookie", "theme=dark; SameSite=Lax"),
        ("Set-Cookie", f"sid={COOKIE_SECRET}; SameSite=Lax"),
    ]
    with serve(lambda m, p, h: (200, [*BASE_HEADERS, *cookies])) as url:
        findings = check_headers(url)
    (finding,) = findings
    assert finding.evidence["cookie"] == "sid"
    assert finding.evidence["problems"] == [
        "no HttpOnly attribute (scripts can read this session cookie)"
    ]


# --------------------------------------------------------------------------------------------
# plain HTTP must redirect to HTTPS


def _answer(status: int, location: str | None = None) -> Behaviour:
    def behaviour(method: str, path: str, headers: dict[str, str]) -> tuple[int, Fields]:
        return status, ({"Location": location} if location else {})

    return behaviour


@pytest.mark.parametrize(
    ("status", "location", "severity", "words"),
    [
        (301, "https://127.0.0.1:8443/", None, ""),
        (308, "https://127.0.0.1/login?next=%2F", None, ""),
        (200, None, Severity.ERROR, "serves content (200) over plain HTTP"),
        (404, None, Severity.WARNING, "answers 404"),
        (301, "https://www.example.com/", Severity.WARNING, "another host first"),
        (302, "/secure", Severity.WARNING, "which is not https"),
        (302, "http://127.0.0.1/", Severity.WARNING, "which is not https"),
        (302, None, Severity.WARNING, "without a Location"),
    ],
    ids=[
        "301-https",
        "308-https-path",
        "serves-200",
        "404",
        "off-host",
        "relative",
        "http",
        "no-loc",
    ],
)
def test_https_redirect(
    status: int, location: str | None, severity: Severity | None, words: str
) -> None:
    """Plain HTTP must answer with a redirect straight to https on the same host."""
    with serve(_answer(status, location)) as http_url:
        findings = check_https_redirect(http_url, "https://127.0.0.1:8443")
    if severity is None:
        assert findings == []
        return
    (finding,) = findings
    assert finding.code == "posture.no-https-redirect"
    assert finding.severity is severity
    assert words in finding.message
    assert finding.evidence["request"] == f"GET {http_url} HTTP/1.1"
    assert finding.evidence["expected_host"] == "127.0.0.1"


def test_nothing_on_plain_http_is_fine() -> None:
    """When nothing listens for plain HTTP, there is nothing to redirect."""
    assert check_https_redirect(f"http://127.0.0.1:{free_port()}", "https://127.0.0.1") == []


def test_probe_tries_plain_http_next_to_https(tmp_path: Path) -> None:
    """An https target's http_port is probed: content there is an error, a redirect is clean."""
    pki = make_pki(tmp_path, valid_for=dt.timedelta(days=200))
    with serve(GoodBehaviour(), tls=tls_context(pki)) as url:
        port = int(url.rsplit(":", 1)[1])
        with serve(_answer(200)) as plain:
            target = Target("prod", url, http_port=int(plain.rsplit(":", 1)[1]))
            (finding,) = probe(target)
        assert finding.code == "posture.no-https-redirect"
        assert finding.message.startswith(f"http://127.0.0.1:{target.http_port}/ ")
        with serve(_answer(301, f"https://127.0.0.1:{port}/")) as plain:
            assert probe(Target("prod", url, http_port=int(plain.rsplit(":", 1)[1]))) == []


def test_http_target_is_held_to_its_declared_https_address() -> None:
    """An http target redirects only when an https address is declared for it."""
    good = GoodBehaviour()
    with serve(good) as url:
        assert [f.code for f in probe(Target("staging", url))] == []
        (finding,) = probe(Target("staging", url, https_url="https://127.0.0.1:8443"))
    assert finding.code == "posture.no-https-redirect"
    assert finding.severity is Severity.ERROR


# --------------------------------------------------------------------------------------------
# the pure rules


def test_session_cookie_names() -> None:
    """Session-looking names are recognised; anti-CSRF tokens and look-alikes are not."""
    for name in ("sid", "session", "PHPSESSID", "JSESSIONID", "connect.sid", "__Host-sid"):
        assert is_session_cookie(name), name
    for name in ("auth_token", "remember_token", "jwt", "laravel_session", "ASP.NET_SessionId"):
        assert is_session_cookie(name), name
    for name in ("theme", "sidebar", "csrftoken", "XSRF-TOKEN", "lang", "consent"):
        assert not is_session_cookie(name), name


def test_mask_cookie_hides_only_the_value() -> None:
    """The value goes; the name and attributes stay."""
    assert mask_cookie("sid=abc=def; Path=/; HttpOnly") == "sid=(hidden); Path=/; HttpOnly"
    assert mask_cookie("lonely") == "=(hidden)"


def test_hsts_parsing() -> None:
    """RFC 6797 syntax: case-insensitive names, quoted values, one max-age, no repeats."""
    assert hsts_max_age("Max-Age = 600 ; includeSubDomains;") == 600
    assert hsts_max_age('max-age="31536000"') == 31536000
    assert hsts_max_age("max-age=-1") == "max-age=-1 is not a number of seconds"
    assert hsts_max_age("max-age") == "max-age= is not a number of seconds"
    assert hsts_max_age("") == "it has no max-age"
    assert hsts_max_age("max-age=1; MAX-AGE=2") == "max-age appears twice"


def test_referrer_policy_last_known_value_wins() -> None:
    """Unknown values are skipped; the last known one applies; nothing known is None."""
    assert referrer_policy("no-referrer, unsafe-url") == "unsafe-url"
    assert referrer_policy("unsafe-url, STRICT-ORIGIN, bogus") == "strict-origin"
    assert referrer_policy("bogus, ") is None


def test_policy_parsing() -> None:
    """Directive names are case-insensitive, repeats ignored, unknown-only policies unusable."""
    assert parse_policy("Script-Src 'self'; script-src *; object-src 'none'") == {
        "script-src": ("'self'",),
        "object-src": ("'none'",),
    }
    assert parse_policy("") is None
    assert parse_policy("not-a-directive x") is None
    assert parse_policy("default-src 'self' \u00e9") is None
    weak = csp_weaknesses({"default-src": ("'none'",), "script-src": ("'strict-dynamic'",)})
    assert weak == {}
    assert set(csp_weaknesses({"img-src": ("*",)})) >= {
        "script-unrestricted",
        "object-unrestricted",
    }
