"""The breaking-change guard: compare two OpenAPI documents and sort every difference that a
client can notice into *breaking* or *additive*.

``compare(old, new)`` returns a ``SchemaDiff``; ``SchemaDiff.report()`` is the readable list.
``old`` is the promise (the committed ``contracts/openapi.json``), ``new`` what the code serves
now. Request schemas must accept at least what they accepted; response schemas must keep every
field they promised and produce nothing they did not describe. Breaking:

- a removed path or method (``operation-removed``), or a changed ``operationId``;
- a removed response field (``response-field-removed``; a rename shows as removed, with the
  likely new name) or one that is no longer always present (``response-field-optional``);
  a response value of a type it did not have (``response-type-changed``);
- a new required request field (``request-field-required``) or parameter
  (``parameter-required``), a request body that became required, a removed request field or
  parameter (``request-field-removed``, ``parameter-removed``);
- a narrowed type (``type-narrowed``), enum (``enum-narrowed``) or constraint
  (``constraint-tightened``) of anything a client sends;
- a removed or changed status code (``status-removed``), a removed media type;
- a changed auth requirement (``auth-changed``), in either direction.

Additive: new paths, operations, optional fields and parameters, response fields, status
codes, media types, widened enums, types and constraints on input, new response enum values.
Descriptions, summaries, examples and links are documentation and are not compared.

``python -m qa.schema_diff OLD NEW`` prints the report and exits 1 on a breaking change;
``--accept`` then copies NEW over OLD when nothing is breaking (``--force`` accepts anyway).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Constraints that make a schema accept less when they grow (lower bounds) or shrink (upper).
LOWER_BOUNDS = ("minLength", "minItems", "minProperties", "minimum", "exclusiveMinimum")
UPPER_BOUNDS = ("maxLength", "maxItems", "maxProperties", "maximum", "exclusiveMaximum")
# Constraints that can only be added (tightening) or removed (loosening) as a whole.
OPAQUE_CONSTRAINTS = ("pattern", "format", "multipleOf", "const")

Schema = dict[str, Any]


@dataclass(frozen=True)
class Change:
    """One difference a client can notice."""

    kind: str
    where: str
    detail: str
    breaking: bool

    def __str__(self) -> str:
        return f"{self.where}: {self.detail} [{self.kind}]"


@dataclass
class SchemaDiff:
    changes: list[Change] = field(default_factory=list)

    @property
    def breaking(self) -> list[Change]:
        return [c for c in self.changes if c.breaking]

    @property
    def additive(self) -> list[Change]:
        return [c for c in self.changes if not c.breaking]

    @property
    def kinds(self) -> set[str]:
        return {c.kind for c in self.changes}

    def report(self) -> str:
        if not self.changes:
            return "No differences a client could notice."
        lines: list[str] = []
        for title, items, mark in (
            ("Breaking changes", self.breaking, "✗"),
            ("Additive changes", self.additive, "+"),
        ):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines.extend(f"  {mark} {change}" for change in items)
        return "\n".join(lines)


class _Document:
    """One OpenAPI document, with ``$ref`` resolution inside it."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    def resolve(self, node: Any, seen: frozenset[str] = frozenset()) -> Any:
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#/") or ref in seen:
                return {}
            seen = seen | {ref}
            target: Any = self.raw
            for part in ref[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                target = target.get(part, {}) if isinstance(target, dict) else {}
            # Siblings of `$ref` (OpenAPI 3.1) refine the target; they win.
            extra = {k: v for k, v in node.items() if k != "$ref"}
            node = {**target, **extra} if extra and isinstance(target, dict) else target
        return node

    def operations(self) -> dict[tuple[str, str], dict[str, Any]]:
        found = {}
        for path, item in (self.raw.get("paths") or {}).items():
            item = self.resolve(item)
            for method in HTTP_METHODS:
                if isinstance(item.get(method), dict):
                    operation = dict(item[method])
                    shared = item.get("parameters") or []
                    operation["parameters"] = [*shared, *(operation.get("parameters") or [])]
                    found[(path, method)] = operation
        return found

    def security(self, operation: dict[str, Any]) -> set[frozenset[str]]:
        """Each alternative the operation accepts, as the set of scheme names it needs."""
        requirements = operation.get("security", self.raw.get("security", []))
        alternatives = {frozenset(requirement) for requirement in requirements or []}
        if frozenset() in alternatives or not alternatives:
            return set()  # anonymous access is allowed
        return alternatives


def _label(key: tuple[str, str]) -> str:
    return f"{key[1].upper()} {key[0]}"


def json_type(value: Any) -> str:
    """The JSON Schema type name of a decoded JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


@dataclass
class _Shape:
    """A schema with its unions flattened: the JSON types it allows and, per type, its parts."""

    types: set[str] | None  # None: anything
    enum: list[Any] | None
    branches: list[Schema]


def _shape(doc: _Document, schema: Any) -> _Shape:
    schema = doc.resolve(schema)
    if not isinstance(schema, dict):
        return _Shape(None, None, [])
    if "allOf" in schema and len(schema["allOf"]) == 1:
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        return _shape(doc, {**doc.resolve(schema["allOf"][0]), **merged})
    for union in ("anyOf", "oneOf"):
        # Beside a `type` or `properties` of its own, a combinator only constrains the schema.
        if union in schema and "type" not in schema and "properties" not in schema:
            types: set[str] | None = set()
            enum: list[Any] | None = []
            branches: list[Schema] = []
            for branch in schema[union]:
                inner = _shape(doc, branch)
                if inner.types is None or types is None:
                    types = None
                else:
                    types |= inner.types
                if inner.enum is None or enum is None:
                    enum = None
                else:
                    enum += inner.enum
                branches += inner.branches
            return _Shape(types, enum, branches)
    enum = None
    if "enum" in schema:
        enum = list(schema["enum"])
    elif "const" in schema:
        enum = [schema["const"]]
    declared = schema.get("type")
    if declared is None:
        types = {json_type(v) for v in enum} if enum is not None else None
    else:
        types = set(declared) if isinstance(declared, list) else {declared}
    if types == {"null"} and enum is None:
        enum = []  # a null branch adds no enum value; nullability is a matter of types
    return _Shape(types, enum, [schema])


def _missing_types(wanted: set[str] | None, offered: set[str] | None) -> set[str]:
    """Types in ``wanted`` that ``offered`` does not cover (a number covers an integer)."""
    if offered is None:
        return set()
    if wanted is None:
        return {"any type"}
    missing = wanted - offered
    if "integer" in missing and "number" in offered:
        missing.discard("integer")
    return missing


def _branch_of(shape: _Shape, json_type: str) -> Schema | None:
    for branch in shape.branches:
        declared = branch.get("type")
        names = set(declared) if isinstance(declared, list) else {declared}
        if json_type in names or (
            declared is None and json_type == "object" and "properties" in branch
        ):
            return branch
    return None


class _Comparer:
    def __init__(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.old = _Document(old)
        self.new = _Document(new)
        self.changes: list[Change] = []
        # The (old, new) object schemas being compared further up the current path: meeting
        # a pair again means a recursive schema (a guard holding guards) came round to itself,
        # and everything below was or will be compared there. Without it a recursive input was
        # walked to the depth limit along every branch (seconds per operation).
        self._open: set[tuple[int, int]] = set()

    def add(self, kind: str, where: str, detail: str, *, breaking: bool) -> None:
        self.changes.append(Change(kind, where, detail, breaking))

    # Operations ----------------------------------------------------------------------------

    def run(self) -> SchemaDiff:
        old_ops, new_ops = self.old.operations(), self.new.operations()
        old_paths = {path for path, _ in old_ops}
        new_paths = {path for path, _ in new_ops}
        for path in sorted(old_paths - new_paths):
            self.add("path-removed", path, "path removed", breaking=True)
        for path in sorted(new_paths - old_paths):
            self.add("path-added", path, "new path", breaking=False)
        for key in sorted(old_ops.keys() - new_ops.keys()):
            if key[0] in new_paths:
                self.add("operation-removed", _label(key), "method removed", breaking=True)
        for key in sorted(new_ops.keys() - old_ops.keys()):
            if key[0] in old_paths:
                self.add("operation-added", _label(key), "new operation", breaking=False)
        for key in sorted(old_ops.keys() & new_ops.keys()):
            self.operation(_label(key), old_ops[key], new_ops[key])
        return SchemaDiff(self.changes)

    def operation(self, where: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        if old.get("operationId") != new.get("operationId"):
            self.add(
                "operation-id-changed",
                where,
                f"operationId {old.get('operationId')!r} became {new.get('operationId')!r}",
                breaking=True,
            )
        old_auth, new_auth = self.old.security(old), self.new.security(new)
        if old_auth != new_auth:
            self.add(
                "auth-changed",
                where,
                f"auth requirement changed from {_describe_auth(old_auth)} "
                f"to {_describe_auth(new_auth)}",
                breaking=True,
            )
        self.parameters(where, old, new)
        self.request_body(where, old, new)
        self.responses(where, old, new)

    def parameters(self, where: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        def index(doc: _Document, operation: dict[str, Any]) -> dict[tuple[str, str], Schema]:
            found = {}
            for parameter in operation.get("parameters") or []:
                parameter = doc.resolve(parameter)
                if isinstance(parameter, dict) and "name" in parameter:
                    found[(parameter.get("in", "query"), parameter["name"])] = parameter
            return found

        old_params, new_params = index(self.old, old), index(self.new, new)
        for key in sorted(old_params.keys() - new_params.keys()):
            self.add(
                "parameter-removed", where, f"{key[0]} parameter `{key[1]}` removed", breaking=True
            )
        for key in sorted(new_params.keys() - old_params.keys()):
            if new_params[key].get("required"):
                self.add(
                    "parameter-required",
                    where,
                    f"new required {key[0]} parameter `{key[1]}`",
                    breaking=True,
                )
            else:
                self.add(
                    "parameter-added",
                    where,
                    f"new optional {key[0]} parameter `{key[1]}`",
                    breaking=False,
                )
        for key in sorted(old_params.keys() & new_params.keys()):
            before, after = old_params[key], new_params[key]
            if after.get("required") and not before.get("required"):
                self.add(
                    "parameter-required",
                    where,
                    f"{key[0]} parameter `{key[1]}` became required",
                    breaking=True,
                )
            self.request_schema(
                f"{where} {key[0]} parameter `{key[1]}`",
                before.get("schema", {}),
                after.get("schema", {}),
            )

    def request_body(self, where: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        before = self.old.resolve(old.get("requestBody")) or {}
        after = self.new.resolve(new.get("requestBody")) or {}
        if after.get("required") and not before.get("required"):
            self.add("request-body-required", where, "request body became required", breaking=True)
        old_content = before.get("content") or {}
        new_content = after.get("content") or {}
        for media in sorted(old_content.keys() - new_content.keys()):
            self.add(
                "media-type-removed",
                where,
                f"request body no longer accepts {media}",
                breaking=True,
            )
        for media in sorted(new_content.keys() - old_content.keys()):
            if old_content:
                self.add(
                    "media-type-added", where, f"request body also accepts {media}", breaking=False
                )
        for media in sorted(old_content.keys() & new_content.keys()):
            self.request_schema(
                f"{where} request body",
                (old_content[media] or {}).get("schema", {}),
                (new_content[media] or {}).get("schema", {}),
            )

    def responses(self, where: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        old_responses = old.get("responses") or {}
        new_responses = new.get("responses") or {}
        added = sorted(new_responses.keys() - old_responses.keys())
        for status in sorted(old_responses.keys() - new_responses.keys()):
            detail = f"status {status} no longer documented"
            replacement = [s for s in added if s[:1] == str(status)[:1]]
            if replacement:
                detail += f" (changed to {', '.join(replacement)}?)"
            self.add("status-removed", where, detail, breaking=True)
        for status in added:
            self.add("status-added", where, f"new status {status}", breaking=False)
        for status in sorted(old_responses.keys() & new_responses.keys()):
            before = self.old.resolve(old_responses[status]) or {}
            after = self.new.resolve(new_responses[status]) or {}
            old_content = before.get("content") or {}
            new_content = after.get("content") or {}
            for media in sorted(old_content.keys() - new_content.keys()):
                self.add(
                    "media-type-removed",
                    where,
                    f"response {status} no longer served as {media}",
                    breaking=True,
                )
            for media in sorted(new_content.keys() - old_content.keys()):
                self.add(
                    "media-type-added",
                    where,
                    f"response {status} also served as {media}",
                    breaking=not old_content,
                )
            for media in sorted(old_content.keys() & new_content.keys()):
                self.response_schema(
                    f"{where} response {status}",
                    (old_content[media] or {}).get("schema", {}),
                    (new_content[media] or {}).get("schema", {}),
                )

    # Schemas a client sends: the new one must accept at least what the old one accepted -------

    def request_schema(self, where: str, old: Any, new: Any, depth: int = 0) -> None:
        if depth > 32:
            return
        before, after = _shape(self.old, old), _shape(self.new, new)
        missing = _missing_types(before.types, after.types)
        if missing:
            self.add(
                "type-narrowed",
                where,
                f"no longer accepts {', '.join(sorted(missing))}",
                breaking=True,
            )
        gained = _missing_types(after.types, before.types)
        if gained and before.types is not None:
            self.add(
                "type-widened", where, f"also accepts {', '.join(sorted(gained))}", breaking=False
            )
        self._enum(where, before.enum, after.enum, request=True)
        for json_type in sorted((before.types or set()) & (after.types or {"object", "array"})):
            old_branch = _branch_of(before, json_type)
            new_branch = _branch_of(after, json_type)
            if old_branch is None or new_branch is None:
                continue
            self._constraints(where, old_branch, new_branch)
            if json_type == "object":
                self._request_object(where, old_branch, new_branch, depth)
            elif json_type == "array":
                self.request_schema(
                    f"{where}[]",
                    old_branch.get("items", {}),
                    new_branch.get("items", {}),
                    depth + 1,
                )

    def _request_object(self, where: str, old: Schema, new: Schema, depth: int) -> None:
        pair = (id(old), id(new))
        if pair in self._open:
            return
        self._open.add(pair)
        try:
            self._request_fields(where, old, new, depth)
        finally:
            self._open.discard(pair)

    def _request_fields(self, where: str, old: Schema, new: Schema, depth: int) -> None:
        old_props = old.get("properties") or {}
        new_props = new.get("properties") or {}
        old_required = set(old.get("required") or [])
        new_required = set(new.get("required") or [])
        closed = new.get("additionalProperties") is False
        for name in sorted(old_props.keys() - new_props.keys()):
            consequence = "clients that send it are refused" if closed else "it is ignored now"
            self.add(
                "request-field-removed",
                where,
                f"field `{name}` removed ({consequence})",
                breaking=True,
            )
        for name in sorted(new_props.keys() - old_props.keys()):
            if name in new_required:
                self.add(
                    "request-field-required", where, f"new required field `{name}`", breaking=True
                )
            else:
                self.add(
                    "request-field-added", where, f"new optional field `{name}`", breaking=False
                )
        for name in sorted(old_props.keys() & new_props.keys()):
            if name in new_required and name not in old_required:
                self.add(
                    "request-field-required",
                    where,
                    f"field `{name}` became required",
                    breaking=True,
                )
            self.request_schema(f"{where}.{name}", old_props[name], new_props[name], depth + 1)

    def _constraints(self, where: str, old: Schema, new: Schema) -> None:
        for key in LOWER_BOUNDS:
            self._bound(where, key, old.get(key), new.get(key), tighter=lambda a, b: b > a)
        for key in UPPER_BOUNDS:
            self._bound(where, key, old.get(key), new.get(key), tighter=lambda a, b: b < a)
        for key in OPAQUE_CONSTRAINTS:
            if key == "const":
                continue  # compared as an enum
            before, after = old.get(key), new.get(key)
            if before == after:
                continue
            if after is not None:
                self.add(
                    "constraint-tightened",
                    where,
                    f"{key} {'added' if before is None else 'changed'}: {after!r}",
                    breaking=True,
                )
            else:
                self.add("constraint-loosened", where, f"{key} removed", breaking=False)
        if old.get("uniqueItems") is not True and new.get("uniqueItems") is True:
            self.add("constraint-tightened", where, "items must now be unique", breaking=True)

    def _bound(self, where: str, key: str, before: Any, after: Any, *, tighter: Any) -> None:
        if before == after:
            return
        if after is not None and (before is None or tighter(before, after)):
            self.add("constraint-tightened", where, f"{key} {before!r} -> {after!r}", breaking=True)
        else:
            self.add("constraint-loosened", where, f"{key} {before!r} -> {after!r}", breaking=False)

    def _enum(
        self, where: str, before: list[Any] | None, after: list[Any] | None, *, request: bool
    ) -> None:
        if before == after:
            return
        if not request:
            added = [v for v in after or [] if before is not None and v not in before]
            if added:
                self.add(
                    "response-enum-value-added",
                    where,
                    f"may now return {_values(added)}",
                    breaking=False,
                )
            return
        if after is not None:
            removed = [v for v in before if v not in after] if before is not None else None
            if removed is None:
                self.add("enum-narrowed", where, f"now limited to {_values(after)}", breaking=True)
            elif removed:
                self.add(
                    "enum-narrowed", where, f"no longer accepts {_values(removed)}", breaking=True
                )
        if before is not None:
            widened = [v for v in after if v not in before] if after is not None else None
            if widened is None:
                self.add("enum-widened", where, "any value accepted", breaking=False)
            elif widened:
                self.add("enum-widened", where, f"also accepts {_values(widened)}", breaking=False)

    # Schemas a client receives: every promised field stays, nothing undescribed appears -------

    def response_schema(self, where: str, old: Any, new: Any, depth: int = 0) -> None:
        if depth > 32:
            return
        before, after = _shape(self.old, old), _shape(self.new, new)
        extra = _missing_types(after.types, before.types)
        if extra:
            self.add(
                "response-type-changed",
                where,
                f"may now be {', '.join(sorted(extra))}",
                breaking=True,
            )
        self._enum(where, before.enum, after.enum, request=False)
        for json_type in sorted((before.types or {"object", "array"}) & (after.types or set())):
            old_branch = _branch_of(before, json_type)
            new_branch = _branch_of(after, json_type)
            if old_branch is None or new_branch is None:
                continue
            if json_type == "object":
                self._response_object(where, old_branch, new_branch, depth)
            elif json_type == "array":
                self.response_schema(
                    f"{where}[]",
                    old_branch.get("items", {}),
                    new_branch.get("items", {}),
                    depth + 1,
                )

    def _response_object(self, where: str, old: Schema, new: Schema, depth: int) -> None:
        pair = (id(old), id(new))
        if pair in self._open:
            return
        self._open.add(pair)
        try:
            self._response_fields(where, old, new, depth)
        finally:
            self._open.discard(pair)

    def _response_fields(self, where: str, old: Schema, new: Schema, depth: int) -> None:
        old_props = old.get("properties") or {}
        new_props = new.get("properties") or {}
        old_required = set(old.get("required") or [])
        new_required = set(new.get("required") or [])
        added = sorted(new_props.keys() - old_props.keys())
        for name in sorted(old_props.keys() - new_props.keys()):
            detail = f"field `{name}` removed"
            old_type = _shape(self.old, old_props[name]).types
            renamed = [a for a in added if _shape(self.new, new_props[a]).types == old_type]
            if renamed:
                detail += f" (renamed to `{'`/`'.join(renamed)}`?)"
            self.add("response-field-removed", where, detail, breaking=True)
        for name in added:
            self.add("response-field-added", where, f"new field `{name}`", breaking=False)
        for name in sorted(old_props.keys() & new_props.keys()):
            if name in old_required and name not in new_required:
                self.add(
                    "response-field-optional",
                    where,
                    f"field `{name}` is no longer always present",
                    breaking=True,
                )
            self.response_schema(f"{where}.{name}", old_props[name], new_props[name], depth + 1)


def _values(values: list[Any]) -> str:
    return ", ".join(json.dumps(v) for v in values)


def _describe_auth(alternatives: set[frozenset[str]]) -> str:
    if not alternatives:
        return "none"
    return " or ".join(
        " + ".join(sorted(a)) or "anonymous" for a in sorted(alternatives, key=sorted)
    )


def compare(old: dict[str, Any], new: dict[str, Any]) -> SchemaDiff:
    """Every difference between the promised schema ``old`` and the served schema ``new``."""
    return _Comparer(old, new).run()


def load(path: Path) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def dump(schema: dict[str, Any], path: Path) -> None:
    """Write a schema the way the committed one is kept: indented, key order preserved."""
    path.write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def iter_operation_labels(schema: dict[str, Any]) -> Iterator[str]:
    for key in sorted(_Document(schema).operations()):
        yield _label(key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qa.schema_diff", description=__doc__)
    parser.add_argument("old", type=Path, help="the promised (committed) schema")
    parser.add_argument("new", type=Path, help="the schema the code produces now")
    parser.add_argument("--accept", action="store_true", help="copy NEW over OLD if not breaking")
    parser.add_argument("--force", action="store_true", help="with --accept: accept breaking too")
    args = parser.parse_args(argv)
    diff = compare(load(args.old), load(args.new))
    print(diff.report())
    if args.accept and (not diff.breaking or args.force):
        dump(load(args.new), args.old)
        print(f"Accepted: {args.old} now holds the new schema.")
        return 0
    return 1 if diff.breaking else 0


if __name__ == "__main__":
    sys.exit(main())
