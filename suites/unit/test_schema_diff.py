"""The breaking-change guard (``qa.schema_diff``) on small schema pairs: it fails on each kind of
breaking change and passes on additive ones."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qa import schema_diff
from qa.schema_diff import compare

Schema = dict[str, Any]
REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED = REPO_ROOT / "contracts" / "openapi.json"
BEARER = [{"Bearer": []}]


def problem(description: str) -> Schema:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


def json_body(ref: str) -> Schema:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


def base() -> Schema:
    """A small API: a collection, one item, a public probe."""
    item_id = {"name": "item_id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Items", "version": "1"},
        "paths": {
            "/items": {
                "get": {
                    "operationId": "list_items",
                    "security": BEARER,
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                        }
                    ],
                    "responses": {
                        "200": {"description": "OK", "content": json_body("Page")},
                        "401": problem("No credentials"),
                    },
                },
                "post": {
                    "operationId": "create_item",
                    "security": BEARER,
                    "requestBody": {"required": True, "content": json_body("ItemCreate")},
                    "responses": {
                        "201": {"description": "Created", "content": json_body("Item")},
                        "401": problem("No credentials"),
                        "422": problem("Invalid"),
                    },
                },
            },
            "/items/{item_id}": {
                "get": {
                    "operationId": "get_item",
                    "security": BEARER,
                    "parameters": [item_id],
                    "responses": {
                        "200": {"description": "OK", "content": json_body("Item")},
                        "404": problem("Not found"),
                    },
                },
                "delete": {
                    "operationId": "delete_item",
                    "security": BEARER,
                    "parameters": [item_id],
                    "responses": {"204": {"description": "Deleted"}, "404": problem("Not found")},
                },
            },
            "/health": {
                "get": {
                    "operationId": "health",
                    "responses": {"200": {"description": "OK", "content": json_body("Probe")}},
                }
            },
        },
        "components": {
            "schemas": {
                "ItemCreate": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 120},
                        "kind": {"type": "string", "enum": ["a", "b", "c"]},
                        "size": {"type": "number"},
                        "note": {"anyOf": [{"type": "string", "maxLength": 200}, {"type": "null"}]},
                        "tags": {"type": "array", "items": {"type": "string"}},
                    },
                    "required": ["name"],
                },
                "Item": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        "name": {"type": "string"},
                        "kind": {"type": "string", "enum": ["a", "b", "c"]},
                        "count": {"type": "integer"},
                        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                    },
                    "required": ["id", "name", "kind", "count", "note"],
                },
                "Page": {
                    "type": "object",
                    "properties": {
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}},
                        "total": {"type": "integer"},
                    },
                    "required": ["items", "total"],
                },
                "Probe": {"type": "object", "properties": {"status": {"type": "string"}}},
                "Problem": {"type": "object", "properties": {"title": {"type": "string"}}},
            },
            "securitySchemes": {"Bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def schemas(doc: Schema) -> Schema:
    return doc["components"]["schemas"]


def op(doc: Schema, path: str, method: str) -> Schema:
    return doc["paths"][path][method]


def rename_response_field(doc: Schema) -> None:
    item = schemas(doc)["Item"]
    item["properties"]["title"] = item["properties"].pop("name")
    item["required"] = ["id", "title", "kind", "count", "note"]


def add_required_parameter(doc: Schema) -> None:
    op(doc, "/items", "get")["parameters"].append(
        {"name": "owner", "in": "query", "required": True, "schema": {"type": "string"}}
    )


def change_created_status(doc: Schema) -> None:
    responses = op(doc, "/items", "post")["responses"]
    responses["200"] = responses.pop("201")


BREAKING: list[tuple[str, Callable[[Schema], None], str]] = [
    ("removed path", lambda d: d["paths"].pop("/health"), "path-removed"),
    ("removed method", lambda d: d["paths"]["/items/{item_id}"].pop("delete"), "operation-removed"),
    (
        "removed response field",
        lambda d: schemas(d)["Item"]["properties"].pop("count"),
        "response-field-removed",
    ),
    ("renamed response field", rename_response_field, "response-field-removed"),
    (
        "removed field in a nested response list",
        lambda d: schemas(d)["Page"]["properties"].pop("total"),
        "response-field-removed",
    ),
    (
        "response field no longer always present",
        lambda d: schemas(d)["Item"]["required"].remove("kind"),
        "response-field-optional",
    ),
    (
        "response field became nullable",
        lambda d: schemas(d)["Item"]["properties"].update(
            count={"anyOf": [{"type": "integer"}, {"type": "null"}]}
        ),
        "response-type-changed",
    ),
    (
        "new required request field",
        lambda d: (
            schemas(d)["ItemCreate"]["properties"].update(owner={"type": "string"}),
            schemas(d)["ItemCreate"]["required"].append("owner"),
        ),
        "request-field-required",
    ),
    (
        "optional request field became required",
        lambda d: schemas(d)["ItemCreate"]["required"].append("kind"),
        "request-field-required",
    ),
    (
        "removed request field of a closed model",
        lambda d: schemas(d)["ItemCreate"]["properties"].pop("tags"),
        "request-field-removed",
    ),
    ("new required parameter", add_required_parameter, "parameter-required"),
    (
        "optional parameter became required",
        lambda d: op(d, "/items", "get")["parameters"][0].update(required=True),
        "parameter-required",
    ),
    ("removed parameter", lambda d: op(d, "/items", "get").pop("parameters"), "parameter-removed"),
    (
        "narrowed type (number to integer)",
        lambda d: schemas(d)["ItemCreate"]["properties"]["size"].update(type="integer"),
        "type-narrowed",
    ),
    (
        "narrowed type (no longer nullable)",
        lambda d: schemas(d)["ItemCreate"]["properties"].update(
            note={"type": "string", "maxLength": 200}
        ),
        "type-narrowed",
    ),
    (
        "narrowed parameter type",
        lambda d: op(d, "/items", "get")["parameters"][0]["schema"].update(type="boolean"),
        "type-narrowed",
    ),
    (
        "narrowed enum",
        lambda d: schemas(d)["ItemCreate"]["properties"]["kind"].update(enum=["a", "b"]),
        "enum-narrowed",
    ),
    (
        "enum where any value was accepted",
        lambda d: schemas(d)["ItemCreate"]["properties"]["name"].update(enum=["x"]),
        "enum-narrowed",
    ),
    (
        "tighter maximum length",
        lambda d: schemas(d)["ItemCreate"]["properties"]["name"].update(maxLength=60),
        "constraint-tightened",
    ),
    (
        "tighter parameter bound",
        lambda d: op(d, "/items", "get")["parameters"][0]["schema"].update(maximum=100),
        "constraint-tightened",
    ),
    (
        "new pattern on an array item",
        lambda d: schemas(d)["ItemCreate"]["properties"]["tags"]["items"].update(
            pattern="^[a-z]+$"
        ),
        "constraint-tightened",
    ),
    ("changed status code", change_created_status, "status-removed"),
    (
        "removed error status",
        lambda d: op(d, "/items/{item_id}", "get")["responses"].pop("404"),
        "status-removed",
    ),
    (
        "auth now required",
        lambda d: op(d, "/health", "get").update(security=BEARER),
        "auth-changed",
    ),
    ("auth no longer required", lambda d: op(d, "/items", "get").pop("security"), "auth-changed"),
    (
        "auth scheme replaced",
        lambda d: op(d, "/items", "post").update(security=[{"ApiKey": []}]),
        "auth-changed",
    ),
    (
        "request media type removed",
        lambda d: op(d, "/items", "post")["requestBody"].update(
            content={"application/x-www-form-urlencoded": {"schema": {}}}
        ),
        "media-type-removed",
    ),
    (
        "renamed operationId",
        lambda d: op(d, "/items", "get").update(operationId="items"),
        "operation-id-changed",
    ),
]

ADDITIVE: list[tuple[str, Callable[[Schema], None], str]] = [
    (
        "new path",
        lambda d: d["paths"].update(
            {"/teams": {"get": {"operationId": "list_teams", "responses": {"200": {}}}}}
        ),
        "path-added",
    ),
    (
        "new method on a path",
        lambda d: d["paths"]["/items/{item_id}"].update(
            patch={"operationId": "update_item", "security": BEARER, "responses": {"200": {}}}
        ),
        "operation-added",
    ),
    (
        "new optional request field",
        lambda d: schemas(d)["ItemCreate"]["properties"].update(colour={"type": "string"}),
        "request-field-added",
    ),
    (
        "new optional parameter",
        lambda d: op(d, "/items", "get")["parameters"].append(
            {"name": "q", "in": "query", "schema": {"type": "string"}}
        ),
        "parameter-added",
    ),
    (
        "new response field",
        lambda d: (
            schemas(d)["Item"]["properties"].update(updated_at={"type": "string"}),
            schemas(d)["Item"]["required"].append("updated_at"),
        ),
        "response-field-added",
    ),
    (
        "wider request enum",
        lambda d: schemas(d)["ItemCreate"]["properties"]["kind"]["enum"].append("d"),
        "enum-widened",
    ),
    (
        "looser request constraint",
        lambda d: schemas(d)["ItemCreate"]["properties"]["name"].update(maxLength=500),
        "constraint-loosened",
    ),
    (
        "request field also accepts null",
        lambda d: schemas(d)["ItemCreate"]["properties"].update(
            size={"anyOf": [{"type": "number"}, {"type": "null"}]}
        ),
        "type-widened",
    ),
    (
        "new error status",
        lambda d: op(d, "/items", "post")["responses"].update({"409": problem("Conflict")}),
        "status-added",
    ),
    (
        "new value in a response enum",
        lambda d: schemas(d)["Item"]["properties"]["kind"]["enum"].append("d"),
        "response-enum-value-added",
    ),
]


def changed(mutate: Callable[[Schema], None]) -> Schema:
    doc = copy.deepcopy(base())
    mutate(doc)
    return doc


def test_identical_schemas_have_no_differences() -> None:
    diff = compare(base(), base())
    assert diff.changes == []
    assert diff.report() == "No differences a client could notice."


def test_documentation_changes_are_not_differences() -> None:
    def document(doc: Schema) -> None:
        op(doc, "/items", "get").update(summary="List items", description="All of them.")
        schemas(doc)["Item"]["properties"]["name"]["examples"] = ["Widget"]
        op(doc, "/items", "post")["responses"]["201"]["links"] = {
            "GetItem": {"operationId": "get_item", "parameters": {"item_id": "$response.body#/id"}}
        }

    assert compare(base(), changed(document)).changes == []


@pytest.mark.parametrize(
    ("mutate", "kind"), [c[1:] for c in BREAKING], ids=[c[0] for c in BREAKING]
)
def test_breaking_change_fails_the_guard(mutate: Callable[[Schema], None], kind: str) -> None:
    diff = compare(base(), changed(mutate))
    assert diff.breaking, diff.report()
    assert kind in {c.kind for c in diff.breaking}, diff.report()
    assert "Breaking changes" in diff.report()


@pytest.mark.parametrize(
    ("mutate", "kind"), [c[1:] for c in ADDITIVE], ids=[c[0] for c in ADDITIVE]
)
def test_additive_change_passes_the_guard(mutate: Callable[[Schema], None], kind: str) -> None:
    diff = compare(base(), changed(mutate))
    assert diff.breaking == [], diff.report()
    assert kind in diff.kinds, diff.report()
    assert diff.report().startswith("Additive changes")


def test_rename_names_the_likely_new_field() -> None:
    diff = compare(base(), changed(rename_response_field))
    removed = [c for c in diff.breaking if c.kind == "response-field-removed"]
    # Every response that carries an item says so: the list page, the created and the read one.
    assert [c.where for c in removed] == [
        "GET /items response 200.items[]",
        "POST /items response 201",
        "GET /items/{item_id} response 200",
    ]
    assert all("`name` removed (renamed to `title`?)" in c.detail for c in removed)


def test_changed_status_suggests_its_replacement() -> None:
    (change,) = compare(base(), changed(change_created_status)).breaking
    assert change.where == "POST /items"
    assert change.detail == "status 201 no longer documented (changed to 200?)"


def test_report_lists_breaking_before_additive() -> None:
    def both(doc: Schema) -> None:
        add_required_parameter(doc)
        schemas(doc)["Item"]["properties"]["extra"] = {"type": "string"}

    report = compare(base(), changed(both)).report().splitlines()
    assert report[0] == "Breaking changes (1):"
    assert report[1] == "  ✗ GET /items: new required query parameter `owner` [parameter-required]"
    assert report[2] == "Additive changes (3):"  # `extra` in three responses


def test_refs_to_path_items_and_parameters_are_resolved() -> None:
    def with_refs(doc: Schema) -> Schema:
        item = doc["paths"]["/items/{item_id}"]
        doc["components"]["parameters"] = {"ItemId": item["get"]["parameters"][0]}
        item["get"]["parameters"] = [{"$ref": "#/components/parameters/ItemId"}]
        return doc

    old = with_refs(base())
    new = with_refs(base())
    new["components"]["parameters"]["ItemId"]["schema"] = {"type": "integer"}
    kinds = {c.kind for c in compare(old, new).breaking}
    assert kinds == {"type-narrowed"}


def test_a_combinator_beside_a_type_constrains_it() -> None:
    """A `oneOf` next to the schema's own `type`/`properties` (say, "exactly one of these
    keys") narrows that object; it is not a union of untyped branches."""

    def shapes(doc: Schema) -> None:
        schemas(doc)["ItemCreate"]["oneOf"] = [{"required": ["kind"]}, {"required": ["size"]}]

    assert compare(base(), changed(shapes)).breaking == []
    assert compare(changed(shapes), base()).breaking == []


def test_recursive_schemas_terminate() -> None:
    def tree(doc: Schema) -> None:
        schemas(doc)["Item"]["properties"]["children"] = {
            "type": "array",
            "items": {"$ref": "#/components/schemas/Item"},
        }

    assert compare(changed(tree), changed(tree)).changes == []


def test_a_change_inside_a_branching_recursive_input_is_reported_once_per_path_to_it() -> None:
    """A guard of guards (``all``, ``any`` and ``not`` each hold guards) is compared until it
    comes round to itself: a change inside it is reported where the recursion starts, not once
    for every path down to the depth limit (3**32 of them, in principle)."""

    def guards(doc: Schema) -> None:
        guard = {"$ref": "#/components/schemas/Guard"}
        schemas(doc)["Guard"] = {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "all": {"type": "array", "items": guard},
                "any": {"type": "array", "items": guard},
                "not": guard,
            },
        }
        schemas(doc)["ItemCreate"]["properties"]["when"] = guard

    def tighter(doc: Schema) -> None:
        guards(doc)
        schemas(doc)["Guard"]["properties"]["path"]["maxLength"] = 10

    changes = compare(changed(guards), changed(tighter)).changes
    assert [(c.kind, c.where) for c in changes] == [
        ("constraint-tightened", "POST /items request body.when.path")
    ]


def test_cli_accepts_additive_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    schema_diff.dump(base(), old)
    added = changed(lambda d: schemas(d)["Item"]["properties"].update(extra={"type": "string"}))
    schema_diff.dump(added, new)
    assert schema_diff.main([str(old), str(new)]) == 0
    assert schema_diff.main([str(old), str(new), "--accept"]) == 0
    assert schema_diff.load(old) == added
    assert "Accepted" in capsys.readouterr().out


def test_cli_refuses_breaking_changes_unless_forced(tmp_path: Path) -> None:
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    schema_diff.dump(base(), old)
    schema_diff.dump(changed(lambda d: d["paths"].pop("/health")), new)
    assert schema_diff.main([str(old), str(new), "--accept"]) == 1
    assert schema_diff.load(old) == base()
    assert schema_diff.main([str(old), str(new), "--accept", "--force"]) == 0
    assert "/health" not in schema_diff.load(old)["paths"]


@pytest.mark.skipif(not COMMITTED.exists(), reason="contracts/openapi.json is not committed yet")
def test_committed_schema_against_itself_and_a_removed_field() -> None:
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert compare(committed, committed).changes == []
    broken = copy.deepcopy(committed)
    user = broken["components"]["schemas"]["UserOut"]
    user["properties"].pop("email")
    user["required"].remove("email")
    kinds = {c.kind for c in compare(committed, broken).breaking}
    assert kinds == {"response-field-removed"}
    labels = list(schema_diff.iter_operation_labels(committed))
    assert "GET /api/v1/users/{user_id}" in labels
