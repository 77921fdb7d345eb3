"""INC14: an environment with weak posture (CORS, headers, TLS, admin, rate limit) is refused."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from airlock.checks import Severity
from airlock.checks.posture import Target, probe
from tests.test_posture import (
    GoodBehaviour,
    bad_behaviour,
    free_port,
    make_pki,
    not_tls_server,
    serve,
    tls11_works,
    tls_context,
)


def test_bad_server_yields_every_finding_with_evidence(tmp_path: Path) -> None:
    """The bad server gets cors-open, 5 missing headers, admin-exposed, no-rate-limit, TLS 1.1."""
    pki = make_pki(tmp_path, valid_for=dt.timedelta(days=200))
    context = tls_context(pki, old_protocols=True)
    with serve(bad_behaviour, tls=context) as url:
        port = int(url.rsplit(":", 1)[1])
        old_tls = tls11_works(context, port)
        target = Target(
            name="prod",
            url=url,
            admin_paths=["/admin"],
            sensitive_paths=["POST /password-reset"],
            burst=10,
        )
        findings = probe(target)
    by_code: dict[str, list[str]] = {}
    for finding in findings:
        assert finding.severity in (Severity.ERROR, Severity.WARNING)
        assert finding.evidence["request"] and finding.evidence["response"]
        by_code.setdefault(finding.code, []).append(finding.message)
    headers = sorted(f.evidence["header"] for f in findings if f.code == "posture.missing-header")
    assert headers == [
        "Content-Security-Policy",
        "Referrer-Policy",
        "Strict-Transport-Security",
        "X-Content-Type-Options",
        "X-Frame-Options",
    ]
    cors = next(f for f in findings if f.code == "posture.cors-open")
    assert "Origin: https://evil.example" in cors.evidence["request"]
    assert "Access-Control-Allow-Origin: https://evil.example" in cors.evidence["response"]
    assert "Access-Control-Allow-Credentials: true" in cors.evidence["response"]
    assert cors.evidence["tls_verify"] is False
    admin = next(f for f in findings if f.code == "posture.admin-exposed")
    assert admin.evidence["request"] == f"GET {url}/admin HTTP/1.1"
    assert admin.evidence["response"].startswith("HTTP/1.1 200")
    limit = next(f for f in findings if f.code == "posture.no-rate-limit")
    assert limit.evidence["sent"] == 10 and limit.evidence["statuses"] == {"200": 10}
    assert limit.evidence["request"].startswith(f"POST {url}/password-reset HTTP/1.1")
    expected = {"posture.cors-open", "posture.missing-header", "posture.admin-exposed"}
    expected.add("posture.no-rate-limit")
    if not old_tls:
        pytest.skip("this platform's OpenSSL cannot offer TLS 1.1 even at SECLEVEL=0")
    expected.add("posture.tls-old-protocol")
    assert set(by_code) == expected
    (old,) = by_code["posture.tls-old-protocol"]
    assert "TLS 1.1" in old and "TLS 1.0" not in old


def test_good_server_is_clean(tmp_path: Path) -> None:
    """Headers set, CORS restricted, admin 401 and reset 429 after 5 requests: no findings."""
    pki = make_pki(tmp_path, valid_for=dt.timedelta(days=200))
    with serve(GoodBehaviour(limit=5), tls=tls_context(pki)) as url:
        target = Target(
            name="prod",
            url=url,
            admin_paths=["/admin"],
            sensitive_paths=["POST /password-reset"],
        )
        assert probe(target) == []


def test_unreachable_port_is_a_finding() -> None:
    """A port with nothing listening is posture.unreachable with the reason, never a traceback."""
    (finding,) = probe(Target(name="prod", url=f"https://127.0.0.1:{free_port()}"))
    assert finding.code == "posture.unreachable"
    assert finding.severity is Severity.ERROR
    assert "ConnectError" in finding.message


def test_tls_handshake_failure_is_tls_unreachable() -> None:
    """An https target whose port does not speak TLS yields posture.tls-unreachable."""
    with not_tls_server() as port:
        findings = probe(Target(name="prod", url=f"https://127.0.0.1:{port}"))
    assert any(f.code == "posture.tls-unreachable" for f in findings), findings
