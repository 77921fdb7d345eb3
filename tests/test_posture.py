"""Posture probes against real HTTP(S) servers on 127.0.0.1 (helpers are shared with INC13/14)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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
    check_rate_limit,
    check_tls,
    probe,
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
        status, headers = server.behaviour(self.command, self.path, dict(self.headers))
        body = b"ok\n"
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _answer


Behaviour = Callable[[str, str, dict[str, str]], tuple[int, dict[str, str]]]


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
