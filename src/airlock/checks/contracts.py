"""API contracts: a release must not break the clients of the API it replaces (INC19).

Each service may name its OpenAPI document (``openapi:`` in ``airlock.yaml``, 3.0, 3.1 or 3.2,
JSON or YAML). The document is validated with ``openapi-spec-validator``; its ``$ref`` links —
inside the document or to files next to it — are resolved through ``jsonschema-path``. The
resolved document of the new release is then compared with the one sealed in the release that
is deployed to the environment.

Every rule follows from one principle: **requests may widen, responses may narrow**. A server
may start accepting more than before, and may start sending less variety than before, without
breaking a client written against the old document; anything else breaks some client:

* a path or an operation (method) is removed;
* a 2xx response, or one of its media types, is removed;
* a field of a 2xx response is removed (recursively, through nested objects, arrays, ``allOf``
  and maps), or a response field that was required becomes optional;
* a response field's type, format or enum widens (it may now be ``null``, an ``integer`` becomes
  a ``number``, an ``int32`` an ``int64``, an enum gains a value: strict clients fail on it);
* a new required parameter (query, header, path, cookie) appears, or one becomes required;
* the request body becomes required, or loses a media type;
* a request body field becomes required (new or existing);
* a parameter's or request field's type, format or enum narrows (an enum value is removed, an
  enum or a format is added, ``number`` becomes ``integer``).

Not breaking: added paths, operations, optional parameters, optional request fields, response
fields, 2xx responses; removed parameters and request fields (servers ignore what they do not
read); a request enum that gains a value; a response enum that loses one. ``oneOf``/``anyOf``
are compared variant by variant when both sides have as many; a request that loses a variant, or
a response that gains one, is breaking. Constraints such as ``maxLength`` or ``minimum``,
``webhooks``, security schemes and callbacks are not compared.

The escape hatch is the API's own version: when ``info.version``'s major number increases
(``1.4.2`` → ``2.0.0``, ``v1`` → ``v2``) the break is deliberate, and the check reports it as
information instead of refusing the release.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urldefrag, urljoin, urlsplit
from urllib.request import url2pathname

import yaml

from airlock.errors import Location
from airlock.findings import Finding, Severity
from airlock.model import Project

if TYPE_CHECKING:
    from referencing._core import Resolver

CODES: dict[str, str] = {
    "api.breaking-change": "The new OpenAPI document breaks clients of the deployed one (a "
    "removed operation or response field, a new required parameter, ...) while info.version's "
    "major number stayed the same.",
    "api.major-version": "The API has breaking changes, allowed because info.version's major "
    "number increased.",
    "api.invalid-document": "A service's OpenAPI document is missing, does not parse, has a $ref "
    "that cannot be resolved, or is not a valid OpenAPI 3 document.",
    "api.deployed-document-unreadable": "The OpenAPI document sealed in the deployed release "
    "cannot be read, so the API could not be compared with it.",
}

Spec = dict[str, Any]
"""An OpenAPI document as plain data, every ``$ref`` replaced by what it points to.

The target of a ``$ref`` is one object shared by all its uses, and a recursive schema is a cycle
(a node's ``children.items`` *is* the node): walk it with care, and do not serialise it.
"""


METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace", "query")
Role = Literal["parameter", "request", "response"]
"""What a schema describes: requests (parameters, bodies) may widen, responses may narrow."""

_MAX_DEPTH = 64

# ---------------------------------------------------------------------------------------------
# Changes.


@dataclass(frozen=True)
class Change:
    """One breaking change between two versions of an API document."""

    kind: str  # e.g. "response-field-removed"
    location: str  # e.g. "GET /accounts/{id} response 200 .balance"
    detail: str  # e.g. "response field 'balance' was removed"

    def __str__(self) -> str:
        return f"{self.location}: {self.detail}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


BREAKING_KINDS: dict[str, str] = {
    "path-removed": "a path and all its operations were removed",
    "operation-removed": "an operation (method on a path) was removed",
    "response-removed": "a 2xx response status was removed",
    "response-media-type-removed": "a 2xx response no longer offers a media type",
    "response-field-removed": "a field of a 2xx response was removed",
    "response-field-optional": "a required field of a 2xx response became optional",
    "response-type-changed": "a response field's type or format widened or changed",
    "response-enum-widened": "a response field may return a value it did not before",
    "response-variant-added": "a response oneOf/anyOf gained a variant",
    "parameter-required": "a new required parameter, or a parameter made required",
    "parameter-type-changed": "a parameter's type or format narrowed or changed",
    "parameter-enum-narrowed": "a parameter no longer accepts a value it accepted",
    "parameter-field-required": "a field of an object parameter became required",
    "parameter-variant-removed": "a parameter's oneOf/anyOf lost a variant",
    "request-body-required": "the request body became required",
    "request-media-type-removed": "the request body no longer accepts a media type",
    "request-field-required": "a request body field is new and required, or became required",
    "request-type-changed": "a request field's type or format narrowed or changed",
    "request-enum-narrowed": "a request field no longer accepts a value it accepted",
    "request-variant-removed": "a request body oneOf/anyOf lost a variant",
}


def compare(old: Spec, new: Spec) -> list[Change]:
    """The changes from ``old`` to ``new`` (resolved documents) that break existing clients."""
    changes: list[Change] = []
    old_paths, new_paths = _paths(old), _paths(new)
    for key, (old_template, old_item) in old_paths.items():
        if key not in new_paths:
            changes.append(Change("path-removed", old_template, f"path {old_template} was removed"))
            continue
        template, new_item = new_paths[key]
        for method in METHODS:
            old_op, new_op = old_item.get(method), new_item.get(method)
            if not isinstance(old_op, dict):
                continue
            where = f"{method.upper()} {template}"
            if not isinstance(new_op, dict):
                changes.append(
                    Change(
                        "operation-removed",
                        f"{method.upper()} {old_template}",
                        f"operation {method.upper()} {old_template} was removed",
                    )
                )
                continue
            _Comparison(changes, where).operation(
                (old_template, old_item, old_op), (template, new_item, new_op)
            )
    return changes


def _paths(spec: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Path items by their template with parameter names blanked: ``/a/{id}`` ≡ ``/a/{key}``."""
    paths = spec.get("paths")
    if not isinstance(paths, dict):
        return {}
    return {
        _PATH_PARAMETER.sub("{}", template): (template, item)
        for template, item in paths.items()
        if isinstance(item, dict)
    }


_PATH_PARAMETER = re.compile(r"\{[^{}]*\}")


def _path_parameter_names(template: str) -> list[str]:
    return [match.group(0)[1:-1] for match in _PATH_PARAMETER.finditer(template)]


_Operation = tuple[str, dict[str, Any], dict[str, Any]]
_WHOLE: dict[Role, str] = {
    "parameter": "the parameter",
    "request": "the request body",
    "response": "the response",
}


class _Comparison:
    """Compares one operation; appends what breaks clients to ``changes``."""

    def __init__(self, changes: list[Change], where: str) -> None:
        self.changes = changes
        self.where = where
        self.seen: dict[tuple[int, int, str], tuple[object, object]] = {}

    def add(self, kind: str, location: str, detail: str) -> None:
        self.changes.append(Change(kind, location, detail))

    def operation(self, old: _Operation, new: _Operation) -> None:
        """Compare an operation: ``(path template, path item, operation)`` before and after."""
        self.parameters(_parameters(*old), _parameters(*new))
        self.request_body(old[2].get("requestBody"), new[2].get("requestBody"))
        self.responses(old[2].get("responses"), new[2].get("responses"))

    # -- parameters ---------------------------------------------------------------------------

    def parameters(
        self,
        old: dict[tuple[str, str | int], dict[str, Any]],
        new: dict[tuple[str, str | int], dict[str, Any]],
    ) -> None:
        for key, parameter in new.items():
            name, place = str(parameter.get("name")), str(parameter.get("in"))
            location = f"{self.where} {place} parameter {name}"
            required = bool(parameter.get("required")) or place == "path"
            before = old.get(key)
            if before is None:
                if required:
                    self.add(
                        "parameter-required",
                        location,
                        f"new required {place} parameter {name!r}",
                    )
                continue
            if required and not (bool(before.get("required")) or place == "path"):
                self.add(
                    "parameter-required", location, f"{place} parameter {name!r} is now required"
                )
            self.schema(
                _parameter_schema(before), _parameter_schema(parameter), "parameter", location, ""
            )

    # -- request body --------------------------------------------------------------------------

    def request_body(self, old: object, new: object) -> None:
        location = f"{self.where} request body"
        if not isinstance(new, dict):
            return
        if new.get("required") and not (isinstance(old, dict) and old.get("required")):
            detail = (
                "the request body is now required"
                if isinstance(old, dict)
                else "a required request body was added"
            )
            self.add("request-body-required", location, detail)
        if not isinstance(old, dict):
            return
        old_content, new_content = _content(old), _content(new)
        for media_type, old_media in old_content.items():
            here = location if len(old_content) == 1 else f"{location} {media_type}"
            new_media = new_content.get(media_type)
            if new_media is None:
                self.add("request-media-type-removed", here, f"{media_type} is no longer accepted")
                continue
            self.schema(old_media.get("schema"), new_media.get("schema"), "request", here, "")

    # -- responses -----------------------------------------------------------------------------

    def responses(self, old: object, new: object) -> None:
        if not isinstance(old, dict):
            return
        new_responses = new if isinstance(new, dict) else {}
        for code, old_response in old.items():
            status = str(code).upper()
            if not status.startswith("2") or not isinstance(old_response, dict):
                continue
            location = f"{self.where} response {status}"
            new_response = new_responses.get(code, new_responses.get(status))
            if new_response is None and status != "2XX":
                new_response = new_responses.get("2XX", new_responses.get("2xx"))
            if not isinstance(new_response, dict):
                self.add("response-removed", location, f"the {status} response was removed")
                continue
            old_content, new_content = _content(old_response), _content(new_response)
            for media_type, old_media in old_content.items():
                here = location if len(old_content) == 1 else f"{location} {media_type}"
                new_media = new_content.get(media_type)
                if new_media is None:
                    self.add(
                        "response-media-type-removed", here, f"{media_type} is no longer returned"
                    )
                    continue
                self.schema(old_media.get("schema"), new_media.get("schema"), "response", here, "")

    # -- schemas -------------------------------------------------------------------------------

    def schema(
        self,
        old: object,
        new: object,
        role: Role,
        where: str,
        field: str,
        depth: int = 0,
    ) -> None:
        """Compare two schemas of the same value; ``field`` is its path, e.g. ``.owner.name``."""
        if not isinstance(old, dict) or not isinstance(new, dict) or depth > _MAX_DEPTH:
            return
        # Resolved documents share the targets of $refs, and recursive schemas are cycles:
        # compare each pair of schemas once per operation.
        seen = (id(old), id(new), role)
        if seen in self.seen:
            return
        self.seen[seen] = (old, new)  # holding them keeps their ids from being reused
        old, new = _flatten(old), _flatten(new)
        location = f"{where} {field}" if field else where
        what = f"{role} field {field[1:]!r}" if field else _WHOLE[role]
        # The side that must accept everything the other side may produce.
        wide, narrow = (old, new) if role == "response" else (new, old)

        wide_types, narrow_types = _types(wide), _types(narrow)
        if not _covers_types(wide_types, narrow_types):
            self.add(
                f"{role}-type-changed",
                location,
                f"type of {what} changed from {_describe_types(_types(old))} "
                f"to {_describe_types(_types(new))}",
            )
        elif not _covers_format(wide.get("format"), narrow.get("format")):
            self.add(
                f"{role}-type-changed",
                location,
                f"format of {what} changed from {old.get('format') or 'none'} "
                f"to {new.get('format') or 'none'}",
            )

        wide_enum, narrow_enum = _enum(wide), _enum(narrow)
        if not _covers_enum(wide_enum, narrow_enum):
            if role != "response":
                if wide_enum is not None and narrow_enum is not None:
                    lost = [v for v in narrow_enum if v not in wide_enum]
                    detail = f"{what} no longer accepts {_values(lost)}"
                else:
                    detail = f"{what} is now restricted to {_values(wide_enum or [])}"
                self.add(f"{role}-enum-narrowed", location, detail)
            else:
                if wide_enum is not None and narrow_enum is not None:
                    gained = [v for v in narrow_enum if v not in wide_enum]
                    detail = f"{what} may now be {_values(gained)}"
                else:
                    detail = f"{what} is no longer restricted to {_values(wide_enum or [])}"
                self.add("response-enum-widened", location, detail)

        self._properties(old, new, role, where, field, depth)
        self._variants(old, new, role, where, field, depth)
        old_items, new_items = old.get("items"), new.get("items")
        if isinstance(old_items, dict) and isinstance(new_items, dict):
            self.schema(old_items, new_items, role, where, f"{field}[]", depth + 1)
        old_extra, new_extra = old.get("additionalProperties"), new.get("additionalProperties")
        if isinstance(old_extra, dict) and isinstance(new_extra, dict):
            self.schema(old_extra, new_extra, role, where, f"{field}.*", depth + 1)

    def _properties(
        self,
        old: dict[str, Any],
        new: dict[str, Any],
        role: Role,
        where: str,
        field: str,
        depth: int,
    ) -> None:
        old_props, new_props = _properties(old), _properties(new)
        old_required, new_required = _required(old), _required(new)
        if role == "response":
            for name, schema in old_props.items():
                child = f"{field}.{name}"
                if isinstance(schema, dict) and schema.get("writeOnly"):
                    continue
                if name not in new_props:
                    self.add(
                        "response-field-removed",
                        f"{where} {child}",
                        f"response field {child[1:]!r} was removed",
                    )
                elif name in old_required and name not in new_required:
                    self.add(
                        "response-field-optional",
                        f"{where} {child}",
                        f"response field {child[1:]!r} is no longer required (it may be missing)",
                    )
        else:
            for name in new_required:
                if name in old_required:
                    continue
                schema = new_props.get(name)
                if isinstance(schema, dict) and schema.get("readOnly"):
                    continue
                child = f"{field}.{name}"
                state = "is now required" if name in old_props else "is new and required"
                self.add(
                    f"{role}-field-required",
                    f"{where} {child}",
                    f"{role} field {child[1:]!r} {state}",
                )
        for name, old_schema in old_props.items():
            if name in new_props:
                self.schema(old_schema, new_props[name], role, where, f"{field}.{name}", depth + 1)

    def _variants(
        self,
        old: dict[str, Any],
        new: dict[str, Any],
        role: Role,
        where: str,
        field: str,
        depth: int,
    ) -> None:
        location = f"{where} {field}" if field else where
        for keyword in ("oneOf", "anyOf"):
            old_variants, new_variants = old.get(keyword), new.get(keyword)
            if not isinstance(old_variants, list) or not isinstance(new_variants, list):
                continue
            if role != "response" and len(new_variants) < len(old_variants):
                self.add(
                    f"{role}-variant-removed",
                    location,
                    f"{keyword} has {len(new_variants)} variants instead of {len(old_variants)}",
                )
            elif role == "response" and len(new_variants) > len(old_variants):
                self.add(
                    "response-variant-added",
                    location,
                    f"{keyword} has {len(new_variants)} variants instead of {len(old_variants)}",
                )
            elif len(new_variants) == len(old_variants):
                for old_variant, new_variant in zip(old_variants, new_variants, strict=True):
                    self.schema(old_variant, new_variant, role, where, field, depth + 1)


def _parameters(
    template: str, item: dict[str, Any], operation: dict[str, Any]
) -> dict[tuple[str, str | int], dict[str, Any]]:
    """An operation's parameters (the path item's, overridden by its own), by identity.

    Path parameters are identified by their position in the template, so renaming ``{id}`` to
    ``{account_id}`` is not a change; header names are case-insensitive.
    """
    positions = {name: index for index, name in enumerate(_path_parameter_names(template))}
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for source in (item.get("parameters"), operation.get("parameters")):
        if not isinstance(source, list):
            continue
        for parameter in source:
            if isinstance(parameter, dict) and "name" in parameter and "in" in parameter:
                merged[(str(parameter["in"]), str(parameter["name"]))] = parameter
    result: dict[tuple[str, str | int], dict[str, Any]] = {}
    for (place, name), parameter in merged.items():
        key: str | int = name
        if place == "path" and name in positions:
            key = positions[name]
        elif place == "header":
            key = name.lower()
        result[(place, key)] = parameter
    return result


def _parameter_schema(parameter: dict[str, Any]) -> object:
    if "schema" in parameter:
        return parameter["schema"]
    content = _content(parameter)
    return next(iter(content.values()), {}).get("schema")


def _content(holder: dict[str, Any]) -> dict[str, dict[str, Any]]:
    content = holder.get("content")
    if not isinstance(content, dict):
        return {}
    # "application/json; charset=utf-8" is application/json.
    return {
        str(k).split(";")[0].strip().lower(): v if isinstance(v, dict) else {}
        for k, v in content.items()
    }


def _properties(schema: dict[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties")
    return properties if isinstance(properties, dict) else {}


def _required(schema: dict[str, Any]) -> set[str]:
    required = schema.get("required")
    return {str(name) for name in required} if isinstance(required, list) else set()


def _flatten(schema: dict[str, Any], within: frozenset[int] = frozenset()) -> dict[str, Any]:
    """``allOf`` merged into one schema: properties and required fields of every part."""
    parts = schema.get("allOf")
    if not isinstance(parts, list) or id(schema) in within:
        return schema
    within |= {id(schema)}
    merged = {key: value for key, value in schema.items() if key != "allOf"}
    properties: dict[str, Any] = dict(_properties(merged))
    required = _required(merged)
    for part in parts:
        if not isinstance(part, dict):
            continue
        part = _flatten(part, within)
        for name, value in _properties(part).items():
            if name in properties and properties[name] is not value:
                properties[name] = {"allOf": [properties[name], value]}
            else:
                properties[name] = value
        required |= _required(part)
        for key, value in part.items():
            if key not in ("properties", "required"):
                merged.setdefault(key, value)
    if properties:
        merged["properties"] = properties
    if required:
        merged["required"] = sorted(required)
    return merged


def _types(schema: dict[str, Any]) -> frozenset[str] | None:
    """The JSON types a schema allows (``None``: any); 3.0's ``nullable`` adds ``null``."""
    declared = schema.get("type")
    types: set[str]
    if isinstance(declared, str):
        types = {declared}
    elif isinstance(declared, list) and declared:
        types = {str(t) for t in declared}
    elif any(k in schema for k in ("properties", "additionalProperties", "required")):
        types = {"object"}
    elif "items" in schema:
        types = {"array"}
    elif (values := _enum(schema)) is not None:
        types = {_json_type(value) for value in values}
    else:
        return None
    if schema.get("nullable") is True:
        types.add("null")
    return frozenset(types)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "string"


def _covers_types(wide: frozenset[str] | None, narrow: frozenset[str] | None) -> bool:
    if wide is None:
        return True
    if narrow is None:
        return False
    return all(t in wide or (t == "integer" and "number" in wide) for t in narrow)


def _describe_types(types: frozenset[str] | None) -> str:
    return "any" if types is None else " or ".join(sorted(types))


# A value in the key's format is also valid in each of these.
_WIDER_FORMATS = {"int32": {"int64"}, "float": {"double"}}


def _covers_format(wide: object, narrow: object) -> bool:
    if wide is None or wide == narrow:
        return True
    if narrow is None:
        return False
    return wide in _WIDER_FORMATS.get(str(narrow), set())


def _enum(schema: dict[str, Any]) -> list[Any] | None:
    if isinstance(schema.get("enum"), list):
        return list(schema["enum"])
    if "const" in schema:
        return [schema["const"]]
    return None


def _covers_enum(wide: list[Any] | None, narrow: list[Any] | None) -> bool:
    if wide is None:
        return True
    if narrow is None:
        return False
    return all(value in wide for value in narrow)


def _values(values: list[Any]) -> str:
    return ", ".join(json.dumps(v) for v in values) or "nothing"


# ---------------------------------------------------------------------------------------------
# Versions.

_MAJOR = re.compile(r"^\s*v?(\d+)(?:\.|-(?!\d)|\s*$)", re.IGNORECASE)


def major_version(version: object) -> int | None:
    """The major number of ``info.version``: ``2`` for ``2.0.0``, ``v2`` or ``2.1-beta``."""
    match = _MAJOR.match(str(version)) if isinstance(version, str | int | float) else None
    return int(match.group(1)) if match else None


def is_major_bump(old_version: object, new_version: object) -> bool:
    """True when the new ``info.version``'s major number is higher than the old one's."""
    old_major, new_major = major_version(old_version), major_version(new_version)
    return old_major is not None and new_major is not None and new_major > old_major


def api_version(spec: Mapping[str, Any]) -> str | None:
    info = spec.get("info")
    version = info.get("version") if isinstance(info, dict) else None
    return None if version is None else str(version)


# ---------------------------------------------------------------------------------------------
# Loading, validating and resolving documents.


class InvalidDocument(Exception):
    """An OpenAPI document that cannot be read, parsed, resolved or validated."""

    def __init__(
        self,
        message: str,
        file: Path,
        line: int | None = None,
        column: int | None = None,
        *,
        missing: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.missing = missing  # the file itself does not exist

    @property
    def location(self) -> Location:
        return Location(str(self.file), self.line, self.column)


@dataclass(frozen=True)
class Document:
    """A loaded OpenAPI document: resolved, and every file it was assembled from."""

    path: Path
    spec: Spec
    files: tuple[Path, ...]

    @property
    def version(self) -> str | None:
        return api_version(self.spec)


if yaml.__with_libyaml__:

    class _Loader(yaml.CSafeLoader):
        """Safe YAML without timestamps: ``version: 2024-01-01`` stays a string, as in JSON."""

else:  # pragma: no cover - PyYAML built without libyaml

    class _Loader(yaml.SafeLoader):  # type: ignore[no-redef]
        """Safe YAML without timestamps: ``version: 2024-01-01`` stays a string, as in JSON."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

Positions = dict[tuple[str | int, ...], tuple[int, int]]


def _json_key(key: object) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return "null" if key is None else str(key)


def _construct(node: yaml.Node, positions: Positions) -> Any:
    """The data of a composed YAML document; records where each of its nodes starts."""
    scalars = yaml.constructor.SafeConstructor()

    def build(node: yaml.Node, path: tuple[str | int, ...]) -> Any:
        positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = _json_key(scalars.construct_object(key_node, deep=True))
                result[key] = build(value_node, (*path, key))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [build(item, (*path, i)) for i, item in enumerate(node.value)]
        return scalars.construct_object(node, deep=True)

    return build(node, ())


def _parse(text: str, file: Path) -> tuple[Any, Positions]:
    """The data of a JSON or YAML document, and the line and column of each of its nodes."""
    positions: Positions = {}
    if file.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidDocument(f"invalid JSON: {exc.msg}", file, exc.lineno, exc.colno) from None
        try:  # JSON is YAML: compose it again for the positions of its nodes.
            node = yaml.compose(text, Loader=_Loader)
            if node is not None:
                _construct(node, positions)
        except (yaml.YAMLError, RecursionError):
            positions = {}
        return data, positions
    try:
        nodes = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = "invalid YAML: " + ", ".join(p for p in (exc.context, exc.problem) if p)
        if mark is None:
            raise InvalidDocument(message, file) from None
        raise InvalidDocument(message, file, mark.line + 1, mark.column + 1) from None
    except yaml.YAMLError as exc:
        raise InvalidDocument(f"invalid YAML: {exc}", file) from None
    if len(nodes) != 1:
        raise InvalidDocument(
            "the file is empty" if not nodes else "the file holds several YAML documents", file
        )
    try:
        data = _construct(nodes[0], positions)
        # Plain JSON data: anything else YAML can express (sets, binary) becomes a string.
        return json.loads(json.dumps(data, default=str)), positions
    except (yaml.YAMLError, TypeError, ValueError) as exc:
        raise InvalidDocument(f"invalid YAML: {exc}", file) from None
    except RecursionError:
        raise InvalidDocument("the YAML is nested too deeply (or refers to itself)", file) from None


def _read(file: Path) -> str:
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise InvalidDocument("the file does not exist", file, missing=True) from None
    except IsADirectoryError:
        raise InvalidDocument("this is a folder, not a file", file) from None
    except OSError as exc:
        raise InvalidDocument(f"cannot be read: {exc.strerror or exc}", file) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InvalidDocument(
            f"the file is not UTF-8 text (byte 0x{raw[exc.start]:02x})", file, line
        ) from None


class _LocalFiles(Mapping[str, Any]):
    """``$ref`` handlers for jsonschema-path: files inside ``root`` only, never the network.

    jsonschema-path asks this mapping for a handler by URI scheme; every scheme is "present"
    so that none falls through to its default (network) retrieval.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: list[Path] = []
        self._cache: dict[Path, Any] = {}

    def __getitem__(self, scheme: str) -> Any:
        return self.retrieve

    def __contains__(self, scheme: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(("file",))

    def __len__(self) -> int:
        return 1

    def retrieve(self, uri: str) -> Any:
        parts = urlsplit(uri)
        if parts.scheme != "file":
            raise _RefProblem(f"only local files may be referenced, not {uri}")
        file = Path(url2pathname(parts.path)).resolve()
        if not file.is_relative_to(self.root):
            raise _RefProblem(f"{file} is outside the project folder {self.root}")
        if file not in self._cache:
            try:
                data, _ = _parse(_read(file), file)
            except InvalidDocument as exc:
                where = f"{file}:{exc.line}" if exc.line else str(file)
                raise _RefProblem(f"{where}: {exc.message}") from None
            self._cache[file] = data
            self.files.append(file)
        return self._cache[file]


class _RefProblem(Exception):
    """Why a referenced file could not be retrieved."""


def _unresolvable(
    exc: BaseException, path: Path, data: Any, positions: Positions
) -> InvalidDocument:
    """A ``$ref`` that cannot be resolved, at its line when it is in the document itself."""
    ref = str(getattr(exc, "ref", ""))
    spellings = {ref, f"#{ref}"} if ref.startswith("/") else {ref}
    line = column = None
    for where, (at_line, at_column) in positions.items():
        if where and where[-1] == "$ref" and _value_at(data, where) in spellings:
            line, column = at_line, at_column
            break
    return InvalidDocument(_unresolvable_message(exc), path, line, column)


def _value_at(data: Any, where: tuple[str | int, ...]) -> Any:
    for part in where:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _unresolvable_message(exc: BaseException) -> str:
    ref = getattr(exc, "ref", None)
    if isinstance(ref, str) and ref.startswith("/"):  # a JSON pointer within a document
        ref = f"#{ref}"
    message = f"$ref {ref!r} cannot be resolved" if ref is not None else "a $ref cannot be resolved"
    if isinstance(exc, _CircularRef):
        return f"{message}: it leads only back to itself"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, _RefProblem):
            return f"{message}: {cause}"
        cause = cause.__cause__ or cause.__context__
    if type(exc).__name__ == "PointerToNowhere":
        return f"{message}: nothing is at that place in the document"
    return message


_VALIDATORS = {"3.0": "OpenAPIV30SpecValidator", "3.1": "OpenAPIV31SpecValidator"}
_VALIDATORS["3.2"] = "OpenAPIV32SpecValidator"


def load_document(path: Path, root: Path | None = None) -> Document:
    """Read, validate and resolve the OpenAPI document at ``path``.

    ``$ref`` links may point into the document or into files inside ``root`` (default: the
    document's folder); nothing is fetched from the network. Raises :class:`InvalidDocument`.
    """
    # The pure-Python backend: its errors keep their sub-errors (``oneOf`` branches), which
    # the message needs to name the exact field; the jsonschema-rs one (picked when installed,
    # as schemathesis does) only says "not valid under any of the given schemas".
    os.environ.setdefault("OPENAPI_SPEC_VALIDATOR_SCHEMA_VALIDATOR_BACKEND", "jsonschema")
    import openapi_spec_validator
    from jsonschema_path import SchemaPath
    from referencing.exceptions import Unresolvable, Unretrievable

    file = path.resolve()
    boundary = (root or file.parent).resolve()
    if not file.is_relative_to(boundary):
        boundary = file.parent
    data, positions = _parse(_read(path), path)
    if not isinstance(data, dict):
        raise InvalidDocument("the document is not a mapping (openapi:, info:, paths:)", path, 1, 1)
    version = data.get("openapi")
    if version is None:
        if "swagger" in data:
            raise InvalidDocument(
                "Swagger 2.0 documents are not supported; convert it to OpenAPI 3",
                path,
                *positions.get(("swagger",), (None, None)),
            )
        raise InvalidDocument(
            "no `openapi:` version field: this is not an OpenAPI document", path, 1, 1
        )
    validator_name = _VALIDATORS.get(".".join(str(version).split(".")[:2]))
    if validator_name is None or not hasattr(openapi_spec_validator, validator_name):
        raise InvalidDocument(
            f"OpenAPI {version} is not supported; use 3.0 or 3.1",
            path,
            *positions.get(("openapi",), (None, None)),
        )
    handlers = _LocalFiles(boundary)
    base_uri = file.as_uri()
    schema_path = SchemaPath.from_dict(data, base_uri=base_uri, handlers=handlers)
    validator = getattr(openapi_spec_validator, validator_name)(schema_path)
    try:
        error = next(iter(validator.iter_errors()), None)
    except (Unresolvable, Unretrievable) as exc:
        raise _unresolvable(exc, path, data, positions) from None
    except RecursionError:
        raise InvalidDocument(
            "the document is nested too deeply to validate (a $ref that refers to itself?)", path
        ) from None
    if error is not None:
        raise _validation_problem(error, path, positions)
    with schema_path.resolve() as resolved:
        resolver = resolved.resolver
    try:
        spec = _Dereferencer(resolver).value(data)
    except (Unresolvable, Unretrievable, _CircularRef) as exc:
        raise _unresolvable(exc, path, data, positions) from None
    except RecursionError:
        raise InvalidDocument("the document is nested too deeply to resolve", path) from None
    return Document(path, spec, (file, *handlers.files))


def load_spec(path: Path, root: Path | None = None) -> Spec:
    """The resolved OpenAPI document at ``path`` (see :func:`load_document`)."""
    return load_document(path, root).spec


def _validation_problem(error: Any, path: Path, positions: Positions) -> InvalidDocument:
    """The validator's first error, at the line of the node it is about."""
    where, message = _most_specific(error)
    if len(message) > 300:
        message = message[:297] + "..."
    dotted = ".".join(str(p) for p in where)
    if dotted:
        message = f"at {dotted}: {message}"
    probe = where
    while probe and probe not in positions:
        probe = probe[:-1]
    line, column = positions.get(probe, (None, None))
    return InvalidDocument(f"not a valid OpenAPI document: {message}", path, line, column)


def _most_specific(error: Any) -> tuple[tuple[str | int, ...], str]:
    """Where and what, from the deepest of an error's sub-errors (``oneOf`` branches, ...).

    A branch that only failed for lack of a ``$ref`` (the "or a Reference Object" alternative)
    says nothing useful and is passed over; enum errors on one value are merged into one.
    """

    def leaves(item: Any) -> Iterator[Any]:
        context = getattr(item, "context", None) or []
        if not context:
            yield item
        for child in context:
            yield from leaves(child)

    candidates = list(leaves(error))
    useful = [
        c
        for c in candidates
        if not (getattr(c, "validator", None) == "required" and "'$ref'" in str(c.message))
    ]
    candidates = useful or candidates
    deepest = max(len(getattr(c, "absolute_path", ())) for c in candidates)
    chosen = [c for c in candidates if len(getattr(c, "absolute_path", ())) == deepest]
    first = chosen[0]
    where = tuple(getattr(first, "absolute_path", ()))
    if len(chosen) > 1 and all(getattr(c, "validator", None) == "enum" for c in chosen):
        allowed = [v for c in chosen for v in c.validator_value]
        return where, f"{first.instance!r} is not one of {allowed!r}"
    return where, str(getattr(first, "message", first))


class _Dereferencer:
    """Replaces every ``$ref`` with its target, resolved once and shared by every use.

    A recursive schema becomes a cycle of Python objects: the ``$ref`` back into a schema that
    contains it is the schema itself. Each target is walked once, so resolving is linear in the
    size of the documents however densely their schemas refer to each other.
    """

    def __init__(self, resolver: Resolver[Any]) -> None:
        self.root = resolver
        self.done: dict[str, Any] = {}
        self.pending: set[str] = set()

    def value(self, node: Any) -> Any:
        return self._walk(node, self.root)

    def _walk(self, node: Any, resolver: Resolver[Any], into: dict[str, Any] | None = None) -> Any:
        if isinstance(node, list):
            return [self._walk(item, resolver) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            target = self._follow(ref, resolver)
            siblings = {
                key: self._walk(value, resolver)
                for key, value in node.items()
                if key != "$ref" and key not in _ANNOTATIONS
            }
            # OpenAPI 3.1 schemas may add keywords beside $ref; they apply as well (allOf).
            # Annotations (summary, description) beside a Reference Object change nothing here.
            return {"allOf": [target, siblings]} if siblings else target
        result = {} if into is None else into
        for key, value in node.items():
            result[key] = self._walk(value, resolver)
        return result

    def _follow(self, ref: str, resolver: Resolver[Any]) -> Any:
        base = _base_uri(resolver)
        absolute = urldefrag(base)[0] + ref if ref.startswith("#") else urljoin(base, ref)
        if absolute in self.done:
            return self.done[absolute]
        if absolute in self.pending:  # only a $ref that is nothing but a $ref to itself
            raise _CircularRef(ref)
        resolved = resolver.lookup(ref)
        contents = resolved.contents
        if isinstance(contents, dict) and not isinstance(contents.get("$ref"), str):
            # Registered before it is filled, so that references back into it find it.
            shell: dict[str, Any] = {}
            self.done[absolute] = shell
            return self._walk(contents, resolved.resolver, into=shell)
        self.pending.add(absolute)
        result = self._walk(contents, resolved.resolver)
        self.pending.discard(absolute)
        self.done[absolute] = result
        return result


_ANNOTATIONS = frozenset({"summary", "description"})


class _CircularRef(Exception):
    def __init__(self, ref: str) -> None:
        super().__init__(ref)
        self.ref = ref


def _base_uri(resolver: Resolver[Any]) -> str:
    # referencing keeps the base URI private; it is what relative references resolve against.
    return str(getattr(resolver, "_base_uri", ""))


# ---------------------------------------------------------------------------------------------
# The check.


def check_contracts(project: Project, deployed: Project | None) -> list[Finding]:
    """Findings for every service's API document: invalid, or breaking the deployed one's."""
    findings: list[Finding] = []
    for name, service in project.services.items():
        if service.openapi is None:
            continue
        key = project.locate("services", name, "openapi")
        try:
            new = load_document(project.root / service.openapi, project.root)
        except InvalidDocument as exc:
            where = key if exc.missing else exc.location
            findings.append(
                Finding(
                    "api.invalid-document",
                    Severity.ERROR,
                    f"OpenAPI document {service.openapi!r} of service {name!r}: {exc.message}",
                    where,
                    hint="fix the document; `openapi-spec-validator FILE` shows every problem",
                    evidence={"service": name, "file": service.openapi},
                )
            )
            continue
        previous = deployed.services.get(name) if deployed is not None else None
        if deployed is None or previous is None or previous.openapi is None:
            continue
        try:
            old = load_document(deployed.root / previous.openapi, deployed.root)
        except InvalidDocument as exc:
            findings.append(
                Finding(
                    "api.deployed-document-unreadable",
                    Severity.WARNING,
                    f"the deployed release's OpenAPI document of service {name!r} cannot be "
                    f"read ({exc.message}), so the API was not compared with it",
                    key,
                    evidence={"service": name, "file": str(exc.file)},
                )
            )
            continue
        findings.extend(_compare_findings(name, key, old, new))
    return findings


def _compare_findings(name: str, key: Location, old: Document, new: Document) -> list[Finding]:
    changes = compare(old.spec, new.spec)
    if not changes:
        return []
    evidence: dict[str, Any] = {
        "service": name,
        "old_version": old.version,
        "new_version": new.version,
    }
    if is_major_bump(old.version, new.version):
        listing = "; ".join(str(change) for change in changes)
        return [
            Finding(
                "api.major-version",
                Severity.INFO,
                f"service {name!r}: API {old.version} → {new.version} is a new major version "
                f"with {len(changes)} breaking change{'s' if len(changes) != 1 else ''}: "
                f"{listing}",
                key,
                hint="clients of the old major version must be upgraded or served elsewhere",
                evidence={**evidence, "changes": [c.to_dict() for c in changes]},
            )
        ]
    return [
        Finding(
            "api.breaking-change",
            Severity.ERROR,
            f"service {name!r}: {change.location}: {change.detail}",
            key,
            hint=f"keep the old behaviour (API {old.version} is deployed), or release the change "
            "as a new major version by raising info.version's major number",
            evidence={**evidence, "changes": [change.to_dict()]},
        )
        for change in changes
    ]
