"""INC11: cloud credentials and payment, email and SMS keys were committed months ago.

Some were "removed" by later commits, which left them in every clone. The scan reads the whole
history and reports each secret with its file, line, the commit that added it and its date, and
whether it is still in the files; a reviewed false positive is silenced by the baseline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airlock.checks.baseline import filter_findings, load_baseline, write_baseline
from airlock.checks.leaks import scan_repository

from ..test_leaks import ALNUM, HEX, UPPER, GitRepo, fake, sha256

AWS_ID = fake("AKIA", 16, UPPER, seed=11)
AWS_SECRET = fake("", 40, ALNUM + "/+", seed=11)
STRIPE = fake("sk_" + "live_", 24, seed=11)
SENDGRID = f"{fake('SG.', 22, ALNUM + '-_', seed=11)}.{fake('', 43, ALNUM + '-_', seed=11)}"
TWILIO_SID = fake("AC", 32, HEX, seed=11)
TWILIO_TOKEN = fake("", 32, HEX, seed=12)
FIXTURE = fake("", 18, ALNUM + "!#%*+-=?@^_", seed=11)


@pytest.fixture
def leaky(tmp_path: Path) -> tuple[GitRepo, dict[str, str]]:
    """A service repository whose secrets were committed in early 2023, some removed later."""
    repo = GitRepo(tmp_path / "shop")
    repo.write("README.md", "# shop\n")
    repo.write("app/settings.py", 'DEBUG = False\nREGION = "eu-west-1"\n')
    commits = {"init": repo.commit("Initial import", "2023-01-10T09:00:00+01:00")}
    repo.write(
        "config/aws.py",
        f'AWS_ACCESS_KEY_ID = "{AWS_ID}"\nAWS_SECRET_ACCESS_KEY = "{AWS_SECRET}"\n',
    )
    commits["aws"] = repo.commit("Upload invoices to S3", "2023-02-14T16:20:00+01:00")
    repo.write(
        "app/billing.py",
        f'import stripe\n\n\ndef charge(cents):\n    client = stripe.StripeClient("{STRIPE}")\n'
        "    return client.charges.create(amount=cents)\n",
    )
    commits["stripe"] = repo.commit("Card payments", "2023-03-01T11:00:00+01:00")
    repo.write(
        "app/notify/email.py",
        f'from sendgrid import SendGridAPIClient\n\nsg = SendGridAPIClient("{SENDGRID}")\n',
    )
    repo.write(
        "app/notify/sms.py",
        f'from twilio.rest import Client\n\nclient = Client("{TWILIO_SID}", "{TWILIO_TOKEN}")\n',
    )
    commits["notify"] = repo.commit("Order e-mails and SMS", "2023-03-20T08:45:00+01:00")
    repo.write("tests/fixtures/smtp.py", f"SMTP_PASSWORD = '{FIXTURE}'  # the fake server's\n")
    commits["fixture"] = repo.commit("Fake SMTP server for tests", "2023-04-02T10:00:00+02:00")
    repo.remove("config/aws.py")
    repo.write(
        "app/notify/email.py",
        "import os\n\nfrom sendgrid import SendGridAPIClient\n\n"
        'sg = SendGridAPIClient(os.environ["SENDGRID_API_KEY"])\n',
    )
    commits["cleanup"] = repo.commit("Read keys from the environment", "2023-06-30T17:30:00+02:00")
    return repo, commits


def test_every_committed_key_is_found_with_file_line_commit_and_date(
    leaky: tuple[GitRepo, dict[str, str]],
) -> None:
    """AWS, Stripe, SendGrid and Twilio keys are all reported, removed ones included."""
    repo, commits = leaky
    result = scan_repository(repo.root)
    found = {
        (f.location.file, f.location.line, f.evidence["kind"]): f.evidence
        for f in result.findings
        if f.location is not None
    }
    aws, stripe, notify, fixture = (
        "2023-02-14T16:20:00+01:00",
        "2023-03-01T11:00:00+01:00",
        "2023-03-20T08:45:00+01:00",
        "2023-04-02T10:00:00+02:00",
    )
    expected = {
        ("config/aws.py", 1, "aws-access-key-id"): (AWS_ID, "aws", aws, False),
        ("config/aws.py", 2, "aws-secret-access-key"): (AWS_SECRET, "aws", aws, False),
        ("app/billing.py", 5, "stripe-live-key"): (STRIPE, "stripe", stripe, True),
        ("app/notify/email.py", 3, "sendgrid-api-key"): (SENDGRID, "notify", notify, False),
        ("app/notify/sms.py", 3, "twilio-auth-token"): (TWILIO_TOKEN, "notify", notify, True),
        ("tests/fixtures/smtp.py", 1, "generic-secret"): (FIXTURE, "fixture", fixture, True),
    }
    assert set(found) == set(expected)
    for key, (value, commit, date, in_tree) in expected.items():
        evidence = found[key]
        assert evidence["fingerprint"] == sha256(value), key
        assert (evidence["commit"], evidence["date"]) == (commits[commit], date), key
        assert evidence["in_working_tree"] is in_tree, key
    assert all(f.severity == "error" and f.code == "secret.committed" for f in result.findings)
    assert result.commits == len(commits)


def test_a_reviewed_false_positive_is_silenced_by_the_baseline(
    leaky: tuple[GitRepo, dict[str, str]],
) -> None:
    """Baselining the test fixture's password silences it and nothing else."""
    repo, _ = leaky
    findings = scan_repository(repo.root).findings
    fixture = [f for f in findings if f.location and f.location.file.startswith("tests/")]
    path = write_baseline(
        repo.root,
        fixture,
        reason="password of the fake SMTP server the tests start",
        reviewed_by="ana@example.org",
    )
    remaining, silenced = filter_findings(findings, load_baseline(repo.root))
    assert silenced == fixture and len(remaining) == len(findings) - 1
    assert FIXTURE not in path.read_text()
    assert {e["kind"] for e in json.loads(path.read_text())["entries"]} == {"generic-secret"}
