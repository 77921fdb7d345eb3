"""INC19: a release removed a response field the mobile apps read, and they broke in the field.

The accounts API is described by an OpenAPI document sealed with each release. A new release is
compared with the one deployed: removing a field clients use is refused, naming the operation
and the field, unless the API's major version was raised on purpose.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from airlock import api
from airlock.checks import Severity
from airlock.checks.contracts import check_contracts


def accounts_api(version: str, *, with_available_balance: bool = True) -> dict[str, Any]:
    """The accounts API at ``version``; the mobile apps show ``available_balance``."""
    account: dict[str, Any] = {
        "type": "object",
        "required": ["id", "balance"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "balance": {"type": "string", "description": "Booked balance, decimal."},
            "available_balance": {"type": "string", "description": "What can be spent now."},
            "currency": {"type": "string", "enum": ["EUR", "USD"]},
        },
    }
    if not with_available_balance:
        del account["properties"]["available_balance"]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Accounts", "version": version},
        "paths": {
            "/accounts/{id}": {
                "get": {
                    "operationId": "getAccount",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": {
                            "description": "The account.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Account"}
                                }
                            },
                        },
                        "404": {"description": "No such account."},
                    },
                }
            }
        },
        "components": {"schemas": {"Account": account}},
    }


def bank(root: Path) -> Path:
    """A project whose accounts service publishes its API document; v1 (API 1.3.0) sealed."""
    project = root / "bank"
    (project / "api").mkdir(parents=True)
    (project / "app.py").write_text("print('accounts')\n")
    document = {
        "project": "bank",
        "services": {
            "accounts": {
                "run": "python app.py",
                "source": ["app.py"],
                "openapi": "api/accounts.yaml",
            }
        },
        "environments": {"production": {}},
    }
    (project / "airlock.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    publish(project, accounts_api("1.3.0"))
    api.build(project, "v1")
    return project


def publish(project: Path, spec: dict[str, Any]) -> None:
    (project / "api" / "accounts.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def test_removing_a_field_clients_use_is_refused(tmp_path: Path) -> None:
    """v1.4.0 without available_balance is a breaking change naming the operation and field."""
    project = bank(tmp_path)
    publish(project, accounts_api("1.4.0", with_available_balance=False))
    deployed = api.release(project, "v1").project

    findings = check_contracts(api.project_at(project), deployed)

    [finding] = findings
    assert finding.code == "api.breaking-change"
    assert finding.severity is Severity.ERROR
    assert "GET /accounts/{id} response 200 .available_balance" in finding.message
    assert "'available_balance' was removed" in finding.message
    assert finding.evidence["old_version"] == "1.3.0"
    assert finding.evidence["new_version"] == "1.4.0"
    assert finding.location is not None and finding.location.path == "services.accounts.openapi"


def test_the_comparison_uses_the_sealed_document(tmp_path: Path) -> None:
    """The deployed API is read from the sealed release, not from the edited working tree."""
    project = bank(tmp_path)
    publish(project, accounts_api("1.4.0", with_available_balance=False))
    deployed = api.release(project, "v1").project
    assert deployed.root != api.project_at(project).root
    assert "available_balance" in (deployed.root / "api" / "accounts.yaml").read_text()


def test_a_new_major_version_may_break(tmp_path: Path) -> None:
    """The same removal released as API 2.0.0 is allowed, reported as information."""
    project = bank(tmp_path)
    publish(project, accounts_api("2.0.0", with_available_balance=False))
    deployed = api.release(project, "v1").project

    [finding] = check_contracts(api.project_at(project), deployed)

    assert finding.code == "api.major-version"
    assert finding.severity is Severity.INFO
    assert [c["location"] for c in finding.evidence["changes"]] == [
        "GET /accounts/{id} response 200 .available_balance"
    ]


def test_adding_a_field_is_allowed(tmp_path: Path) -> None:
    """A compatible v1.4.0 that only adds a response field passes without findings."""
    project = bank(tmp_path)
    spec = accounts_api("1.4.0")
    spec["components"]["schemas"]["Account"]["properties"]["nickname"] = {"type": "string"}
    publish(project, spec)
    deployed = api.release(project, "v1").project
    assert check_contracts(api.project_at(project), deployed) == []
