"""API contract check: loading OpenAPI documents, finding breaking changes, the version rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from airlock.checks import Severity
from airlock.checks.contracts import (
    BREAKING_KINDS,
    CODES,
    Change,
    InvalidDocument,
    Spec,
    check_contracts,
    compare,
    is_major_bump,
    load_document,
    load_spec,
    major_version,
)
from airlock.model import Project, load_project

# ---------------------------------------------------------------------------------------------
# Builders for resolved documents.

S: dict[str, Any] = {"type": "string"}
INT: dict[str, Any] = {"type": "integer"}
NUM: dict[str, Any] = {"type": "number"}


def api(paths: dict[str, Any], version: str = "1.0.0", openapi: str = "3.1.0") -> Spec:
    return {"openapi": openapi, "info": {"title": "t", "version": version}, "paths": paths}


def obj(required: tuple[str, ...] = (), **properties: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def arr(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def enum(*values: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


def content(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    return {media: {"schema": schema}}


def op(
    response: dict[str, Any] | None = None,
    *,
    status: str = "200",
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    body_required: bool = False,
    responses: dict[str, Any] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "responses": responses
        or {status: {"description": "ok", **({"content": content(response)} if response else {})}}
    }
    if parameters is not None:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"content": content(body), "required": body_required}
    return operation


def param(
    name: str, where: str = "query", schema: dict[str, Any] | None = None, required: bool = False
) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": schema or S}


def get(response: dict[str, Any] | None = None, **kwargs: Any) -> Spec:
    """A one-operation API: GET /accounts/{id}."""
    kwargs.setdefault("parameters", [param("id", "path", required=True)])
    return api({"/accounts/{id}": {"get": op(response, **kwargs)}})


def post(body: dict[str, Any], *, required: bool = True, **kwargs: Any) -> Spec:
    """A one-operation API: POST /accounts with a JSON body."""
    return api({"/accounts": {"post": op(body=body, body_required=required, **kwargs)}})


ACCOUNT = obj(("id",), id=S, balance=NUM)

# (name, old, new, expected change kinds)
BREAKING: list[tuple[str, Spec, Spec, list[str]]] = [
    (
        "a path is removed",
        api({"/a": {"get": op()}, "/b": {"get": op()}}),
        api({"/a": {"get": op()}}),
        ["path-removed"],
    ),
    (
        "an operation is removed",
        api({"/a": {"get": op(), "delete": op()}}),
        api({"/a": {"get": op()}}),
        ["operation-removed"],
    ),
    (
        "a 2xx response status is removed",
        api({"/a": {"post": op(responses={"201": {"description": "created"}})}}),
        api({"/a": {"post": op(responses={"202": {"description": "accepted"}})}}),
        ["response-removed"],
    ),
    (
        "a response media type is removed",
        get(
            ACCOUNT,
            responses={
                "200": {
                    "description": "ok",
                    "content": {**content(ACCOUNT), **content(ACCOUNT, "application/xml")},
                }
            },
        ),
        get(ACCOUNT),
        ["response-media-type-removed"],
    ),
    (
        "a response field is removed",
        get(ACCOUNT),
        get(obj(("id",), id=S)),
        ["response-field-removed"],
    ),
    (
        "a nested response field is removed",
        get(obj(owner=obj(name=S, email=S))),
        get(obj(owner=obj(name=S))),
        ["response-field-removed"],
    ),
    (
        "a field of response array items is removed",
        get(obj(entries=arr(obj(id=S, amount=NUM)))),
        get(obj(entries=arr(obj(id=S)))),
        ["response-field-removed"],
    ),
    (
        "a required response field becomes optional",
        get(ACCOUNT),
        get(obj((), id=S, balance=NUM)),
        ["response-field-optional"],
    ),
    (
        "a response field changes type",
        get(obj(balance=NUM)),
        get(obj(balance=S)),
        ["response-type-changed"],
    ),
    (
        "a response field may now be null (3.1 type list)",
        get(obj(name=S)),
        get(obj(name={"type": ["string", "null"]})),
        ["response-type-changed"],
    ),
    (
        "a response field may now be null (3.0 nullable)",
        get(obj(name=S)),
        get(obj(name={"type": "string", "nullable": True})),
        ["response-type-changed"],
    ),
    (
        "a response integer widens to number",
        get(obj(count=INT)),
        get(obj(count=NUM)),
        ["response-type-changed"],
    ),
    (
        "a response format widens from int32 to int64",
        get(obj(count={"type": "integer", "format": "int32"})),
        get(obj(count={"type": "integer", "format": "int64"})),
        ["response-type-changed"],
    ),
    (
        "a response enum gains a value",
        get(obj(status=enum("open", "closed"))),
        get(obj(status=enum("open", "closed", "frozen"))),
        ["response-enum-widened"],
    ),
    (
        "a response oneOf gains a variant",
        get(obj(owner={"oneOf": [obj(name=S), obj(company=S)]})),
        get(obj(owner={"oneOf": [obj(name=S), obj(company=S), obj(trust=S)]})),
        ["response-variant-added"],
    ),
    (
        "a new required query parameter",
        get(ACCOUNT),
        get(
            ACCOUNT, parameters=[param("id", "path", required=True), param("tenant", required=True)]
        ),
        ["parameter-required"],
    ),
    (
        "a new required header parameter",
        get(ACCOUNT),
        get(ACCOUNT, parameters=[param("id", "path"), param("X-Tenant", "header", required=True)]),
        ["parameter-required"],
    ),
    (
        "an optional parameter becomes required",
        get(ACCOUNT, parameters=[param("id", "path"), param("expand")]),
        get(ACCOUNT, parameters=[param("id", "path"), param("expand", required=True)]),
        ["parameter-required"],
    ),
    (
        "a parameter changes type",
        get(ACCOUNT, parameters=[param("id", "path", S)]),
        get(ACCOUNT, parameters=[param("id", "path", INT)]),
        ["parameter-type-changed"],
    ),
    (
        "a parameter gains a format (narrower)",
        get(ACCOUNT, parameters=[param("id", "path", S)]),
        get(ACCOUNT, parameters=[param("id", "path", {"type": "string", "format": "uuid"})]),
        ["parameter-type-changed"],
    ),
    (
        "a parameter enum loses a value",
        get(ACCOUNT, parameters=[param("id", "path"), param("sort", schema=enum("asc", "desc"))]),
        get(ACCOUNT, parameters=[param("id", "path"), param("sort", schema=enum("asc"))]),
        ["parameter-enum-narrowed"],
    ),
    (
        "a field of an object parameter becomes required",
        get(ACCOUNT, parameters=[param("id", "path"), param("filter", schema=obj(a=S))]),
        get(ACCOUNT, parameters=[param("id", "path"), param("filter", schema=obj(("a",), a=S))]),
        ["parameter-field-required"],
    ),
    (
        "a parameter oneOf loses a variant",
        get(ACCOUNT, parameters=[param("id", "path", {"oneOf": [S, INT]})]),
        get(ACCOUNT, parameters=[param("id", "path", {"oneOf": [S]})]),
        ["parameter-variant-removed"],
    ),
    (
        "the request body becomes required",
        post(obj(name=S), required=False),
        post(obj(name=S), required=True),
        ["request-body-required"],
    ),
    (
        "a request body media type is removed",
        api(
            {
                "/accounts": {
                    "post": {
                        "requestBody": {
                            "content": {
                                **content(obj(name=S)),
                                **content(obj(name=S), "application/x-www-form-urlencoded"),
                            }
                        },
                        "responses": {"200": {"description": "ok"}},
                    }
                }
            }
        ),
        post(obj(name=S), required=False),
        ["request-media-type-removed"],
    ),
    (
        "a new required request field",
        post(obj(name=S)),
        post(obj(("currency",), name=S, currency=S)),
        ["request-field-required"],
    ),
    (
        "an optional request field becomes required",
        post(obj(name=S, currency=S)),
        post(obj(("currency",), name=S, currency=S)),
        ["request-field-required"],
    ),
    (
        "a request field narrows from number to integer",
        post(obj(amount=NUM)),
        post(obj(amount=INT)),
        ["request-type-changed"],
    ),
    (
        "a request field may no longer be null",
        post(obj(note={"type": ["string", "null"]})),
        post(obj(note=S)),
        ["request-type-changed"],
    ),
    (
        "a request enum loses a value",
        post(obj(kind=enum("savings", "checking"))),
        post(obj(kind=enum("checking"))),
        ["request-enum-narrowed"],
    ),
    (
        "a request field gains an enum",
        post(obj(kind=S)),
        post(obj(kind=enum("checking"))),
        ["request-enum-narrowed"],
    ),
    (
        "a request anyOf loses a variant",
        post(obj(owner={"anyOf": [obj(name=S), obj(company=S)]})),
        post(obj(owner={"anyOf": [obj(name=S)]})),
        ["request-variant-removed"],
    ),
]

NOT_BREAKING: list[tuple[str, Spec, Spec]] = [
    (
        "a path is added",
        api({"/a": {"get": op()}}),
        api({"/a": {"get": op()}, "/b": {"get": op()}}),
    ),
    ("an operation is added", api({"/a": {"get": op()}}), api({"/a": {"get": op(), "put": op()}})),
    ("a response field is added", get(obj(id=S)), get(obj(id=S, nickname=S))),
    ("a response field becomes required", get(obj(id=S)), get(obj(("id",), id=S))),
    (
        "a 2xx response is added",
        api({"/a": {"post": op(responses={"200": {"description": "ok"}})}}),
        api(
            {
                "/a": {
                    "post": op(
                        responses={"200": {"description": "ok"}, "202": {"description": "later"}}
                    )
                }
            }
        ),
    ),
    (
        "a non-2xx response is removed",
        api(
            {
                "/a": {
                    "get": op(
                        responses={"200": {"description": "ok"}, "404": {"description": "no"}}
                    )
                }
            }
        ),
        api({"/a": {"get": op(responses={"200": {"description": "ok"}})}}),
    ),
    (
        "200 is replaced by the 2XX range",
        get(ACCOUNT),
        get(responses={"2XX": {"description": "ok", "content": content(ACCOUNT)}}),
    ),
    (
        "a response enum loses a value",
        get(obj(status=enum("open", "closed"))),
        get(obj(status=enum("open"))),
    ),
    (
        "a response field may no longer be null",
        get(obj(name={"type": ["string", "null"]})),
        get(obj(name=S)),
    ),
    ("a response number narrows to integer", get(obj(count=NUM)), get(obj(count=INT))),
    (
        "a response format narrows from int64 to int32",
        get(obj(count={"type": "integer", "format": "int64"})),
        get(obj(count={"type": "integer", "format": "int32"})),
    ),
    ("a response field gains an enum", get(obj(status=S)), get(obj(status=enum("open")))),
    (
        "a write-only field is dropped from the response schema",
        get(obj(id=S, password={"type": "string", "writeOnly": True})),
        get(obj(id=S)),
    ),
    (
        "an optional query parameter is added",
        get(ACCOUNT),
        get(ACCOUNT, parameters=[param("id", "path"), param("expand")]),
    ),
    (
        "a parameter is removed",
        get(ACCOUNT, parameters=[param("id", "path"), param("expand", required=True)]),
        get(ACCOUNT, parameters=[param("id", "path")]),
    ),
    (
        "a path parameter is renamed",
        api({"/accounts/{id}": {"get": op(ACCOUNT, parameters=[param("id", "path")])}}),
        api(
            {
                "/accounts/{account_id}": {
                    "get": op(ACCOUNT, parameters=[param("account_id", "path")])
                }
            }
        ),
    ),
    (
        "a header name changes case",
        get(ACCOUNT, parameters=[param("id", "path"), param("X-Tenant", "header", required=True)]),
        get(ACCOUNT, parameters=[param("id", "path"), param("x-tenant", "header", required=True)]),
    ),
    (
        "a path-level parameter moves to the operation",
        api({"/a/{id}": {"parameters": [param("id", "path")], "get": op(ACCOUNT)}}),
        api({"/a/{id}": {"get": op(ACCOUNT, parameters=[param("id", "path")])}}),
    ),
    (
        "a parameter enum gains a value",
        get(ACCOUNT, parameters=[param("id", "path"), param("sort", schema=enum("asc"))]),
        get(ACCOUNT, parameters=[param("id", "path"), param("sort", schema=enum("asc", "desc"))]),
    ),
    (
        "a parameter loses its format (wider)",
        get(ACCOUNT, parameters=[param("id", "path", {"type": "string", "format": "uuid"})]),
        get(ACCOUNT, parameters=[param("id", "path", S)]),
    ),
    ("an optional request field is added", post(obj(name=S)), post(obj(name=S, memo=S))),
    ("a request field is removed", post(obj(name=S, memo=S)), post(obj(name=S))),
    ("a required request field becomes optional", post(obj(("name",), name=S)), post(obj(name=S))),
    ("a request enum gains a value", post(obj(kind=enum("a"))), post(obj(kind=enum("a", "b")))),
    ("a request field widens from integer to number", post(obj(amount=INT)), post(obj(amount=NUM))),
    (
        "a request field may now be null",
        post(obj(note=S)),
        post(obj(note={"type": "string", "nullable": True})),
    ),
    (
        "a required read-only field appears in the request schema",
        post(obj(name=S)),
        post(obj(("id",), name=S, id={"type": "string", "readOnly": True})),
    ),
    (
        "an optional request body is added",
        api({"/accounts": {"post": op()}}),
        post(obj(name=S), required=False),
    ),
    (
        "properties move into allOf",
        get(obj(("id",), id=S, balance=NUM)),
        get({"allOf": [obj(("id",), id=S), obj(balance=NUM)]}),
    ),
    (
        "a media type gains parameters",
        get(ACCOUNT),
        get(
            responses={
                "200": {
                    "description": "ok",
                    "content": content(ACCOUNT, "application/json; charset=utf-8"),
                }
            }
        ),
    ),
    (
        "an object type is spelled out where it was implied",
        post({"properties": {"name": S}}),
        post(obj(name=S)),
    ),
    (
        "a type is spelled out for an enum",
        post(obj(kind={"enum": ["a", "b"]})),
        post(obj(kind=enum("a", "b"))),
    ),
    ("the same document", get(ACCOUNT), get(ACCOUNT)),
]


@pytest.mark.parametrize(
    ("old", "new", "kinds"),
    [pytest.param(old, new, kinds, id=name) for name, old, new, kinds in BREAKING],
)
def test_breaking_changes_are_found(old: Spec, new: Spec, kinds: list[str]) -> None:
    """Each kind of breaking change is reported, and only it."""
    assert [change.kind for change in compare(old, new)] == kinds


@pytest.mark.parametrize(
    ("old", "new"), [pytest.param(old, new, id=name) for name, old, new in NOT_BREAKING]
)
def test_compatible_changes_are_allowed(old: Spec, new: Spec) -> None:
    """Changes that keep every existing client working are not reported."""
    assert compare(old, new) == []


def test_every_breaking_kind_has_a_case() -> None:
    """The table above exercises every kind of change the comparison can report."""
    assert {kind for *_, kinds in BREAKING for kind in kinds} == set(BREAKING_KINDS)


def test_changes_name_the_operation_and_the_field() -> None:
    """A change's location names the operation, the status and the dotted field path."""
    old = get(obj(owner=obj(name=S, email=S), entries=arr(obj(id=S, amount=NUM))))
    new = get(obj(owner=obj(name=S), entries=arr(obj(id=S, amount=S))))
    assert compare(old, new) == [
        Change(
            "response-field-removed",
            "GET /accounts/{id} response 200 .owner.email",
            "response field 'owner.email' was removed",
        ),
        Change(
            "response-type-changed",
            "GET /accounts/{id} response 200 .entries[].amount",
            "type of response field 'entries[].amount' changed from number to string",
        ),
    ]


def test_parameter_and_request_changes_are_located() -> None:
    """Parameter and request-body changes name the operation, the parameter or the field."""
    old = post(obj(amount=NUM), parameters=[param("dry_run", schema={"type": "boolean"})])
    new = post(
        obj(("currency",), amount=NUM, currency=S),
        parameters=[param("dry_run", schema=S), param("tenant", required=True)],
    )
    assert [str(change) for change in compare(old, new)] == [
        "POST /accounts query parameter dry_run: type of the parameter changed from boolean "
        "to string",
        "POST /accounts query parameter tenant: new required query parameter 'tenant'",
        "POST /accounts request body .currency: request field 'currency' is new and required",
    ]


def node(*names: str) -> dict[str, Any]:
    """A recursive schema: an object with ``names`` and children of its own kind."""
    schema = obj(**{name: S for name in names})
    schema["properties"]["children"] = arr(schema)
    return schema


def test_recursive_schemas_are_compared_without_looping() -> None:
    """A schema that contains itself is compared once, at its first place."""
    changes = compare(get(node("id", "name")), get(node("id")))
    assert [str(c) for c in changes] == [
        "GET /accounts/{id} response 200 .name: response field 'name' was removed"
    ]


def test_a_shared_schema_is_reported_in_every_operation() -> None:
    """A change in a schema used by two operations is reported for each of them."""
    old_account, new_account = obj(id=S, balance=NUM), obj(id=S)
    old = api({"/a": {"get": op(old_account)}, "/b": {"get": op(arr(old_account))}})
    new = api({"/a": {"get": op(new_account)}, "/b": {"get": op(arr(new_account))}})
    assert [c.location for c in compare(old, new)] == [
        "GET /a response 200 .balance",
        "GET /b response 200 [].balance",
    ]


# ---------------------------------------------------------------------------------------------
# Versions.


@pytest.mark.parametrize(
    ("version", "major"),
    [
        ("2.0.0", 2),
        ("1.4.2", 1),
        ("v2", 2),
        ("V3.1", 3),
        ("10.0.0-rc.1", 10),
        ("2", 2),
        ("2-beta", 2),
        ("beta", None),
        ("2024-01-01", None),
        ("", None),
    ],
)
def test_major_version(version: str, major: int | None) -> None:
    """The major number is read from semver-like versions, with or without a leading v."""
    assert major_version(version) == major


@pytest.mark.parametrize(
    ("old", "new", "bumped"),
    [
        ("1.4.2", "2.0.0", True),
        ("v1", "v2", True),
        ("1.3.0", "1.4.0", False),
        ("2.0.0", "1.9.0", False),
        ("beta", "2.0.0", False),
        ("1.0.0", "2024-06-01", False),
    ],
)
def test_major_bump(old: str, new: str, bumped: bool) -> None:
    """Only a higher major number on both readable versions counts as a major bump."""
    assert is_major_bump(old, new) is bumped


# ---------------------------------------------------------------------------------------------
# Loading documents from files.


def write(path: Path, document: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(document, str):
        path.write_text(document)
    elif path.suffix == ".json":
        path.write_text(json.dumps(document, indent=2))
    else:
        path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def document(schema: dict[str, Any], openapi: str = "3.1.0", version: str = "1.0.0") -> Spec:
    """A valid document: GET /accounts/{id} answering ``schema``."""
    return api(
        {
            "/accounts/{id}": {
                "get": {
                    "parameters": [param("id", "path", required=True)],
                    "responses": {"200": {"description": "ok", "content": content(schema)}},
                }
            }
        },
        version=version,
        openapi=openapi,
    )


def account_files(root: Path, money: dict[str, Any], account_extra: dict[str, Any]) -> Path:
    """openapi.yaml → schemas/account.yaml → schemas/money.json, all linked by $ref."""
    write(root / "schemas" / "money.json", {"Money": money})
    write(
        root / "schemas" / "account.yaml",
        {
            "Account": {
                "type": "object",
                "required": ["id"],
                "properties": {
                    "id": S,
                    "balance": {"$ref": "money.json#/Money"},
                    **account_extra,
                },
            }
        },
    )
    return write(
        root / "openapi.yaml", document({"$ref": "schemas/account.yaml#/Account"}, openapi="3.0.3")
    )


MONEY = {"type": "object", "properties": {"amount": S, "currency": S}}


def test_refs_across_files_are_resolved(tmp_path: Path) -> None:
    """$refs to files next to the document, and from those to others, are followed."""
    loaded = load_document(account_files(tmp_path, MONEY, {"owner": S}))
    schema = loaded.spec["paths"]["/accounts/{id}"]["get"]["responses"]["200"]["content"]
    balance = schema["application/json"]["schema"]["properties"]["balance"]
    assert balance == MONEY
    assert [p.name for p in loaded.files] == ["openapi.yaml", "account.yaml", "money.json"]
    assert loaded.version == "1.0.0"


def test_a_change_in_a_referenced_file_is_found(tmp_path: Path) -> None:
    """A field removed in a schema two $refs away is reported at its place in the response."""
    old = load_spec(account_files(tmp_path / "old", MONEY, {}))
    narrower = {"type": "object", "properties": {"amount": S}}
    new = load_spec(account_files(tmp_path / "new", narrower, {}))
    assert [str(c) for c in compare(old, new)] == [
        "GET /accounts/{id} response 200 .balance.currency: response field 'balance.currency' "
        "was removed"
    ]


def test_openapi_3_0_and_3_1_nullability_compare_alike(tmp_path: Path) -> None:
    """3.0's nullable and 3.1's type list mean the same: a 3.0 → 3.1 move breaks nothing."""
    old = load_spec(
        write(
            tmp_path / "a.yaml", document(obj(note={"type": "string", "nullable": True}), "3.0.3")
        )
    )
    new = load_spec(
        write(tmp_path / "b.yaml", document(obj(note={"type": ["string", "null"]}), "3.1.0"))
    )
    assert compare(old, new) == []
    stricter = load_spec(write(tmp_path / "c.yaml", document(obj(note=S), "3.1.0")))
    assert compare(stricter, old) == [
        Change(
            "response-type-changed",
            "GET /accounts/{id} response 200 .note",
            "type of response field 'note' changed from string to null or string",
        )
    ]


def test_a_recursive_schema_loads(tmp_path: Path) -> None:
    """A schema that refers to itself is resolved once, into a schema that contains itself."""
    spec = document({"$ref": "#/components/schemas/Node"})
    spec["components"] = {
        "schemas": {"Node": obj(name=S, children=arr({"$ref": "#/components/schemas/Node"}))}
    }
    loaded = load_spec(write(tmp_path / "openapi.json", spec))
    root = loaded["paths"]["/accounts/{id}"]["get"]["responses"]["200"]["content"]
    schema = root["application/json"]["schema"]
    assert schema["properties"]["children"]["items"] is schema


BROKEN_YAML = """\
openapi: 3.1.0
info:
  title: t
  version: 1.0.0
paths:
  /a:
    get: [unclosed
"""

INVALID_PARAMETER = """\
openapi: 3.0.3
info: {title: t, version: 1.0.0}
paths:
  /accounts/{id}:
    get:
      parameters:
        - name: id
          in: paht
          required: true
          schema: {type: string}
      responses:
        "200": {description: ok}
"""


@pytest.mark.parametrize(
    ("name", "text", "message", "line"),
    [
        ("broken.yaml", BROKEN_YAML, "invalid YAML", 8),
        ("broken.json", '{"openapi": "3.1.0",\n  "info": }', "invalid JSON: Expecting value", 2),
        (
            "parameter.yaml",
            INVALID_PARAMETER,
            "'paht' is not one of ['path', 'query', 'header', 'cookie']",
            8,
        ),
        (
            "swagger.yaml",
            "swagger: '2.0'\ninfo: {}\n",
            "Swagger 2.0 documents are not supported",
            1,
        ),
        ("list.yaml", "- 1\n", "not a mapping", 1),
        ("plain.yaml", "name: x\n", "no `openapi:` version field", 1),
        ("future.yaml", "openapi: 4.0.0\n", "OpenAPI 4.0.0 is not supported", 1),
        (
            "ref.yaml",
            yaml.safe_dump(document({"$ref": "missing.yaml#/Account"})),
            "$ref 'missing.yaml#/Account' cannot be resolved",
            None,
        ),
    ],
)
def test_invalid_documents_are_explained(
    tmp_path: Path, name: str, text: str, message: str, line: int | None
) -> None:
    """A document that does not parse, resolve or validate raises with the reason and line."""
    with pytest.raises(InvalidDocument) as raised:
        load_document(write(tmp_path / name, text))
    assert message in raised.value.message
    assert raised.value.file.name == name
    if line is not None:
        assert raised.value.line == line


def test_an_unresolvable_ref_is_located(tmp_path: Path) -> None:
    """A $ref to a missing file is reported at the line of that $ref."""
    text = yaml.safe_dump(document({"$ref": "missing.yaml#/Account"}), sort_keys=False)
    with pytest.raises(InvalidDocument) as raised:
        load_document(write(tmp_path / "openapi.yaml", text))
    ref_line = next(i for i, t in enumerate(text.splitlines(), 1) if "missing.yaml" in t)
    assert raised.value.line == ref_line
    assert "missing.yaml: the file does not exist" in raised.value.message


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("https://example.invalid/schemas.yaml#/Account", "only local files may be referenced"),
        ("../outside.yaml#/Account", "is outside the project folder"),
    ],
)
def test_refs_stay_inside_the_project(tmp_path: Path, ref: str, reason: str) -> None:
    """Remote $refs and files outside the project are refused, never fetched or read."""
    write(tmp_path / "outside.yaml", {"Account": obj(id=S)})
    project = tmp_path / "project"
    path = write(project / "openapi.yaml", document({"$ref": ref}))
    with pytest.raises(InvalidDocument, match=reason):
        load_document(path, project)


def test_a_non_utf8_document_is_refused(tmp_path: Path) -> None:
    """A document that is not UTF-8 text is an invalid document, on the line of the bad byte."""
    path = tmp_path / "openapi.yaml"
    path.write_bytes(b"openapi: 3.1.0\ninfo:\n  title: caf\xe9\n")
    with pytest.raises(InvalidDocument, match="not UTF-8") as raised:
        load_document(path)
    assert raised.value.line == 3


def test_dates_stay_strings(tmp_path: Path) -> None:
    """An unquoted date-like version is read as the string JSON would hold, and validates."""
    path = write(
        tmp_path / "openapi.yaml",
        "openapi: 3.1.0\ninfo: {title: t, version: 2024-01-01}\npaths: {}\n",
    )
    assert load_spec(path)["info"]["version"] == "2024-01-01"


# ---------------------------------------------------------------------------------------------
# The check on projects.


def make(root: Path, spec: object | None, *, openapi: str | None = "api/openapi.yaml") -> Project:
    """A one-service project in ``root`` whose API document is ``spec`` (None: not written)."""
    service: dict[str, Any] = {"run": "python app.py"}
    if openapi is not None:
        service["openapi"] = openapi
    write(
        root / "airlock.yaml",
        {"project": "bank", "services": {"accounts": service}, "environments": {"production": {}}},
    )
    if spec is not None and openapi is not None:
        write(root / openapi, spec)
    return load_project(root)


def test_codes_are_described() -> None:
    """Every finding code the check emits has a description."""
    assert set(CODES) == {
        "api.breaking-change",
        "api.major-version",
        "api.invalid-document",
        "api.deployed-document-unreadable",
    }
    assert all(description.endswith(".") for description in CODES.values())


def test_no_deployed_release_means_nothing_to_compare(tmp_path: Path) -> None:
    """Without a deployed release a valid document gives no finding."""
    assert check_contracts(make(tmp_path, document(ACCOUNT)), None) == []


def test_an_unchanged_api_passes(tmp_path: Path) -> None:
    """The same document as the deployed one gives no finding."""
    deployed = make(tmp_path / "old", document(ACCOUNT))
    assert check_contracts(make(tmp_path / "new", document(ACCOUNT)), deployed) == []


def test_a_breaking_change_is_an_error_at_the_openapi_key(tmp_path: Path) -> None:
    """Each breaking change is an error located at the service's openapi key, with evidence."""
    deployed = make(tmp_path / "old", document(ACCOUNT, version="1.3.0"))
    project = make(tmp_path / "new", document(obj(("id",), id=S), version="1.4.0"))
    [finding] = check_contracts(project, deployed)
    assert finding.code == "api.breaking-change"
    assert finding.severity is Severity.ERROR
    assert finding.message == (
        "service 'accounts': GET /accounts/{id} response 200 .balance: "
        "response field 'balance' was removed"
    )
    assert finding.location == project.locate("services", "accounts", "openapi")
    assert finding.location is not None and finding.location.line == 5
    assert finding.evidence["old_version"] == "1.3.0"
    assert finding.evidence["new_version"] == "1.4.0"
    assert finding.evidence["changes"] == [
        {
            "kind": "response-field-removed",
            "location": "GET /accounts/{id} response 200 .balance",
            "detail": "response field 'balance' was removed",
        }
    ]


def test_a_major_version_allows_breaking_changes(tmp_path: Path) -> None:
    """With info.version's major number raised, breaking changes are one info finding."""
    deployed = make(tmp_path / "old", document(ACCOUNT, version="1.3.0"))
    project = make(tmp_path / "new", document(obj(id=INT), version="2.0.0"))
    [finding] = check_contracts(project, deployed)
    assert finding.code == "api.major-version"
    assert finding.severity is Severity.INFO
    assert [c["kind"] for c in finding.evidence["changes"]] == [
        "response-field-optional",
        "response-field-removed",
        "response-type-changed",
    ]
    assert "1.3.0 → 2.0.0" in finding.message and ".balance" in finding.message


def test_a_missing_document_is_located_at_the_openapi_key(tmp_path: Path) -> None:
    """A document that does not exist is an invalid-document error at the openapi key."""
    project = make(tmp_path, None)
    [finding] = check_contracts(project, None)
    assert finding.code == "api.invalid-document"
    assert finding.severity is Severity.ERROR
    assert "does not exist" in finding.message
    assert finding.location == project.locate("services", "accounts", "openapi")


def test_an_invalid_document_is_located_in_the_document(tmp_path: Path) -> None:
    """A document failing validation is reported in its own file, at the failing line."""
    project = make(tmp_path, INVALID_PARAMETER)
    [finding] = check_contracts(project, None)
    assert finding.code == "api.invalid-document"
    assert finding.location is not None
    assert finding.location.file == str(tmp_path / "api" / "openapi.yaml")
    assert finding.location.line == 8
    assert "'accounts'" in finding.message and "paht" in finding.message


def test_an_invalid_new_document_is_not_compared(tmp_path: Path) -> None:
    """An invalid new document gives only the invalid-document finding."""
    deployed = make(tmp_path / "old", document(ACCOUNT))
    findings = check_contracts(make(tmp_path / "new", BROKEN_YAML), deployed)
    assert [f.code for f in findings] == ["api.invalid-document"]


def test_a_deployed_service_without_a_document_is_not_compared(tmp_path: Path) -> None:
    """A service whose deployed release had no openapi document has nothing to break."""
    deployed = make(tmp_path / "old", None, openapi=None)
    assert check_contracts(make(tmp_path / "new", document(ACCOUNT)), deployed) == []


def test_an_unreadable_deployed_document_is_a_warning(tmp_path: Path) -> None:
    """When the deployed document cannot be read, the check warns that it could not compare."""
    deployed = make(tmp_path / "old", BROKEN_YAML)
    [finding] = check_contracts(make(tmp_path / "new", document(ACCOUNT)), deployed)
    assert finding.code == "api.deployed-document-unreadable"
    assert finding.severity is Severity.WARNING
