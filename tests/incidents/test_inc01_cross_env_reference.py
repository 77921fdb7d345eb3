"""INC01: a production service still called a hard-coded staging endpoint.

`airlock check` renders every environment's config and rejects a value in one environment that
points at a host, URL or database belonging to another.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..conftest import ProjectFactory, airlock


def shop(make_project: ProjectFactory, payment_url_in_production: str) -> Path:
    environments: dict[str, Any] = {
        "staging": {
            "hosts": ["staging.shop.internal"],
            "database": {
                "url": "postgresql://app:${secret:DB_PASSWORD}@db.staging.shop.internal/shop_staging"
            },
            "secrets": {"prefix": "STAGING_"},
            "config": {
                "api": {
                    "PAYMENT_URL": "https://payments.staging.shop.internal/v1",
                    "FRAUD_URL": "https://sandbox.fraudcheck.example/v2",
                }
            },
        },
        "production": {
            "hosts": ["shop.example.com"],
            "database": {
                "url": "postgresql://app:${secret:DB_PASSWORD}@db.prod.shop.example.com/shop"
            },
            "secrets": {"prefix": "PRODUCTION_"},
            "config": {
                "api": {
                    "PAYMENT_URL": payment_url_in_production,
                    "FRAUD_URL": "https://api.fraudcheck.example/v2",
                }
            },
        },
    }
    return make_project(
        {
            "api": {
                "config": {
                    "PAYMENT_URL": "unset",
                    "FRAUD_URL": "unset",
                    "STRIPE_HOST": "https://api.stripe.com",
                }
            }
        },
        environments=environments,
    )


def findings(project: Path) -> list[dict[str, Any]]:
    result = airlock("check", "--env", "all", "--no-history", "--format", "json", cwd=project)
    assert result.returncode in (0, 1), result.stderr
    return [
        f
        for f in json.loads(result.stdout)["findings"]
        if f["code"] == "config.cross-env-reference"
    ]


def test_production_pointing_at_a_staging_host_is_rejected(make_project: ProjectFactory) -> None:
    """A staging host in production's config is an error naming the key and the environment."""
    project = shop(make_project, "https://payments.staging.shop.internal/v1")
    [finding] = findings(project)
    assert finding["severity"] == "error"
    assert "production: api.PAYMENT_URL" in finding["message"]
    assert "staging" in finding["message"]
    assert finding["location"]["line"] is not None
    result = airlock("check", "--env", "production", "--no-history", cwd=project)
    assert result.returncode == 1


def test_a_host_seen_only_in_another_environment_counts(make_project: ProjectFactory) -> None:
    """A host staging uses for a key where production has its own is staging's."""
    project = shop(make_project, "https://sandbox.fraudcheck.example/v2/payments")
    [finding] = [f for f in findings(project) if f["message"].startswith("production")]
    assert "sandbox.fraudcheck.example" in finding["message"]
    assert "FRAUD_URL" in finding["message"]


def test_a_host_named_for_another_environment_counts(make_project: ProjectFactory) -> None:
    """A host whose name says staging (stg) is caught even when nobody declared it."""
    project = shop(make_project, "https://payments-stg.shop.example.com/v1")
    [finding] = findings(project)
    assert "payments-stg.shop.example.com" in finding["message"]


def test_shared_third_party_hosts_and_own_hosts_are_fine(make_project: ProjectFactory) -> None:
    """A host every environment uses (an API provider) and each environment's own are clean."""
    project = shop(make_project, "https://payments.shop.example.com/v1")
    assert findings(project) == []
