"""INC13: a certificate about to expire must stop the release before it expires in production."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from airlock.checks import Severity
from airlock.checks.posture import Target, check_tls, probe
from tests.test_posture import GoodBehaviour, make_pki, serve, tls_context


def test_certificate_expiring_in_five_days_is_refused(tmp_path: Path) -> None:
    """A leaf expiring in 5 days with cert_min_days 21 is posture.cert-expiring naming 5 days."""
    pki = make_pki(tmp_path, valid_for=dt.timedelta(days=5, hours=1))
    with serve(GoodBehaviour(), tls=tls_context(pki)) as url:
        target = Target(name="prod", url=url, cert_min_days=21)
        findings = probe(target)
    (finding,) = findings
    assert finding.code == "posture.cert-expiring"
    assert finding.severity is Severity.ERROR
    assert "in 5 days" in finding.message
    assert pki.not_after.date().isoformat() in finding.message
    assert finding.evidence["days_left"] == 5
    assert finding.evidence["not_after"] == pki.not_after.isoformat()
    assert "not after" in finding.evidence["response"]
    assert finding.evidence["request"].startswith("TLS scan of 127.0.0.1:")


def test_certificate_valid_for_200_days_is_clean(tmp_path: Path) -> None:
    """A leaf valid for 200 more days raises no certificate finding, and the probe is clean."""
    pki = make_pki(tmp_path, valid_for=dt.timedelta(days=200))
    with serve(GoodBehaviour(), tls=tls_context(pki)) as url:
        port = int(url.rsplit(":", 1)[1])
        assert check_tls("127.0.0.1", port, min_days=21) == []
        assert probe(Target(name="prod", url=url, cert_min_days=21)) == []
