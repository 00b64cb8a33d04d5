"""Properties of the running API (launched with ``--db``; SQLite by default).

- Any malformed or wrongly typed body sent to any write operation (POST/PATCH/PUT, taken from
  the backend's own ``/openapi.json``) is answered with a 4xx problem document, never a 5xx.
- Any string presented as a bearer credential is a 401 problem document.
- Any query value for ``limit``/``offset`` on any paginated collection is a 200 page or a 422.

Bodies are generated so that they are invalid *by construction* (random bytes that do not
parse, JSON of a type the operation's schema does not accept even with Pydantic's lax
coercions, an unknown field, or one field of a type it does not accept), so no example can
succeed by accident and change the database.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from qa.client import ApiClient
from qa.launcher import Backend
from qa.schema_diff import json_type

JSON_TYPES = frozenset({"null", "boolean", "integer", "number", "string", "array", "object"})
# What else Pydantic accepts for a declared JSON type in lax mode (e.g. "12" or true for an
# int, 0/1 or "yes" for a bool, a number for a datetime).
LAX = {
    "integer": {"number", "string", "boolean"},
    "number": {"integer", "string", "boolean"},
    "boolean": {"integer", "number", "string"},
}
TIME_FORMATS = {"date-time", "date", "time", "duration"}
PROBLEM = "application/problem+json"

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
VALUES_OF_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "integer": st.integers(),
    "number": st.floats(allow_nan=False, allow_infinity=False),
    "string": st.text(max_size=30),
    "array": st.lists(json_values, max_size=4),
    "object": st.dictionaries(st.text(max_size=8), json_values, max_size=4),
}


class Schemas:
    """Reads JSON types out of an OpenAPI document's schemas."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.components = document.get("components", {}).get("schemas", {})

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[1]]
        return schema

    def accepted(self, schema: dict[str, Any]) -> frozenset[str]:
        """Every JSON type a value for ``schema`` may have and still validate (lax mode)."""
        schema = self.resolve(schema)
        if "anyOf" in schema or "oneOf" in schema:
            out: set[str] = set()
            for option in schema.get("anyOf", []) + schema.get("oneOf", []):
                out |= self.accepted(option)
            return frozenset(out)
        declared = schema.get("type")
        if declared is None:
            if "properties" in schema:
                declared = "object"
            elif "const" in schema or "enum" in schema:
                values = schema.get("enum", [schema.get("const")])
                declared = [json_type(v) for v in values]
            else:
                return JSON_TYPES  # anything goes
        types = set(declared if isinstance(declared, list) else [declared])
        for name in list(types):
            types |= LAX.get(name, set())
        if "string" in types and schema.get("format") in TIME_FORMATS:
            types |= {"integer", "number"}
        return frozenset(types)

    def wrong_types(self, schema: dict[str, Any]) -> list[str]:
        return sorted(JSON_TYPES - self.accepted(schema))


@dataclass(frozen=True)
class WriteRoute:
    method: str
    path: str
    url: str
    media_type: str
    schema: dict[str, Any]

    def __str__(self) -> str:
        return f"{self.method.upper()} {self.path}"


@pytest.fixture(scope="module")
def openapi(backend: Backend) -> dict[str, Any]:
    with ApiClient(backend.base_url) as anonymous:
        response = anonymous.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


@pytest.fixture(scope="module")
def write_routes(openapi: dict[str, Any], owner_client: ApiClient) -> list[WriteRoute]:
    """Every operation that takes a request body, with its path filled in. ``{user_id}`` is
    the owner's own id, so PATCH validation runs against a real object; other ids are
    random (validation comes before the lookup)."""
    own_id = owner_client.get("/api/v1/users/me").json()["id"]
    routes = []
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            if method not in {"post", "patch", "put"} or "requestBody" not in operation:
                continue
            media_type, content = next(iter(operation["requestBody"]["content"].items()))
            url = path
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    value = own_id if parameter["name"] == "user_id" else str(uuid.uuid4())
                    url = url.replace("{" + parameter["name"] + "}", value)
            routes.append(WriteRoute(method, path, url, media_type, content.get("schema", {})))
    assert len(routes) >= 7, routes  # auth x3, accounts, users x2, api-keys at least
    return routes


@pytest.fixture(scope="module")
def schemas(openapi: dict[str, Any]) -> Schemas:
    return Schemas(openapi)


@pytest.fixture(scope="module")
def anonymous(backend: Backend) -> Iterator[ApiClient]:
    with ApiClient(backend.base_url) as client:
        yield client


@pytest.fixture(scope="module")
def callers(
    anonymous: ApiClient, admin_client: ApiClient, owner_client: ApiClient
) -> dict[str, ApiClient]:
    return {"anonymous": anonymous, "admin": admin_client, "owner": owner_client}


def assert_client_error(response: Any, context: str) -> None:
    assert 400 <= response.status_code < 500, f"{context}: {response.status_code} {response.text}"
    assert response.headers["content-type"] == PROBLEM, f"{context}: {response.headers}"
    body = response.json()
    assert body["status"] == response.status_code, context
    assert body["type"].startswith("https://renum.dev/problems/"), context
    assert body["request_id"] == response.headers["x-request-id"], context


def send(client: ApiClient, route: WriteRoute, content: bytes) -> Any:
    return client.request(
        route.method, route.url, content=content, headers={"Content-Type": "application/json"}
    )


def _not_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return True
    return False


malformed_bytes = (
    st.binary(max_size=64)
    | st.text(max_size=64).map(str.encode)
    | json_values.map(lambda v: json.dumps(v).encode()[:-1])  # truncated documents
    | st.sampled_from([b"{", b"{'a': 1}", b'{"a": 1,}', b"[1,]", b"NaN-ish", b"\xff\xfe{}"])
).filter(lambda raw: raw != b"" and _not_json(raw))


@given(raw=malformed_bytes, who=st.sampled_from(["anonymous", "admin", "owner"]))
def test_malformed_json_is_a_client_error(
    write_routes: list[WriteRoute], callers: dict[str, ApiClient], raw: bytes, who: str
) -> None:
    for route in write_routes:
        assert_client_error(send(callers[who], route, raw), f"{route} as {who} with {raw!r}")


@given(data=st.data(), who=st.sampled_from(["admin", "owner", "anonymous"]))
def test_body_of_the_wrong_json_type_is_a_client_error(
    write_routes: list[WriteRoute],
    schemas: Schemas,
    callers: dict[str, ApiClient],
    data: st.DataObject,
    who: str,
) -> None:
    for route in write_routes:
        wrong = schemas.wrong_types(route.schema) if route.media_type.endswith("json") else []
        if not wrong:
            wrong = sorted(JSON_TYPES - {"object", "null"})  # a form takes no JSON at all
        kind = data.draw(st.sampled_from(wrong), label=f"{route} type")
        body = data.draw(VALUES_OF_TYPE[kind], label=f"{route} body")
        response = send(callers[who], route, json.dumps(body).encode())
        assert_client_error(response, f"{route} as {who} with {body!r}")


@given(data=st.data(), who=st.sampled_from(["admin", "owner"]))
def test_unknown_fields_are_a_client_error(
    write_routes: list[WriteRoute],
    schemas: Schemas,
    callers: dict[str, ApiClient],
    data: st.DataObject,
    who: str,
) -> None:
    for route in write_routes:
        known = set(schemas.resolve(route.schema).get("properties", {}))
        extra = data.draw(
            st.text(min_size=1, max_size=12).filter(lambda k, known=known: k not in known),
            label=f"{route} unknown field",
        )
        body = {extra: data.draw(json_values, label=f"{route} value")}
        response = send(callers[who], route, json.dumps(body).encode())
        assert_client_error(response, f"{route} as {who} with {body!r}")


@given(data=st.data(), who=st.sampled_from(["admin", "owner"]))
def test_a_field_of_the_wrong_type_is_a_client_error(
    write_routes: list[WriteRoute],
    schemas: Schemas,
    callers: dict[str, ApiClient],
    data: st.DataObject,
    who: str,
) -> None:
    for route in write_routes:
        properties = schemas.resolve(route.schema).get("properties", {})
        candidates = sorted(name for name, spec in properties.items() if schemas.wrong_types(spec))
        if not candidates:
            continue
        field = data.draw(st.sampled_from(candidates), label=f"{route} field")
        kind = data.draw(st.sampled_from(schemas.wrong_types(properties[field])))
        body = {field: data.draw(VALUES_OF_TYPE[kind], label=f"{route} {field}")}
        for name in sorted(set(properties) - {field}):
            if data.draw(st.booleans(), label=f"include {name}"):
                body[name] = data.draw(json_values, label=f"{route} {name}")
        note(f"{route}: {body!r}")
        response = send(callers[who], route, json.dumps(body).encode())
        assert_client_error(response, f"{route} as {who} with {body!r}")


# Header values travel as latin-1: printable ASCII and the printable upper half.
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_categories=("Cc",)),
    max_size=80,
)
credentials = (
    header_text
    | header_text.map(lambda s: "rk_" + s)
    | header_text.map(lambda s: "eyJ" + s)
    | st.tuples(header_text, header_text, header_text).map(".".join)
    | st.uuids().map(str)
)


@given(credential=credentials, path=st.sampled_from(["/api/v1/users/me", "/api/v1/api-keys"]))
def test_any_bearer_string_is_a_401(anonymous: ApiClient, credential: str, path: str) -> None:
    # HTTP drops whitespace around a header value (h11 refuses to send it), so the server
    # sees the credential stripped, as it would from any client.
    value = (b"Bearer " + credential.encode("latin-1")).strip(b" \t")
    response = anonymous.get(path, headers=[(b"Authorization", value)])
    assert response.status_code == 401, f"{credential!r}: {response.status_code} {response.text}"
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["status"] == 401


@pytest.fixture(scope="module")
def collections(openapi: dict[str, Any]) -> list[str]:
    """GET operations without path parameters that take ``limit`` and ``offset``."""
    found = []
    for path, item in openapi["paths"].items():
        names = {p["name"] for p in item.get("get", {}).get("parameters", [])}
        if {"limit", "offset"} <= names and "{" not in path:
            found.append(path)
    assert "/api/v1/users" in found
    return found


query_values = (
    st.integers(min_value=-(10**20), max_value=10**20)
    | st.integers(min_value=-2, max_value=1_000_002)
    | st.text(max_size=12)
    | st.floats(allow_nan=True, allow_infinity=True).map(str)
    | st.none()
)


@given(data=st.data(), limit=query_values, offset=query_values)
def test_paging_values_give_a_page_or_a_422(
    admin_client: ApiClient, collections: list[str], data: st.DataObject, limit: Any, offset: Any
) -> None:
    path = data.draw(st.sampled_from(collections), label="collection")
    params = {name: str(v) for name, v in (("limit", limit), ("offset", offset)) if v is not None}
    response = admin_client.get(path, params=params)
    context = f"{path}?{params}: {response.status_code} {response.text[:300]}"
    assert response.status_code in {200, 422}, context
    bounds = {"limit": (1, 200), "offset": (0, 1_000_000)}
    given_ints = {n: v for n, v in (("limit", limit), ("offset", offset)) if isinstance(v, int)}
    out_of_range = any(not bounds[n][0] <= v <= bounds[n][1] for n, v in given_ints.items())
    if out_of_range:
        assert response.status_code == 422, context
    elif all(v is None or isinstance(v, int) for v in (limit, offset)):
        assert response.status_code == 200, context
    if response.status_code == 200:
        page = response.json()
        assert page["limit"] == given_ints.get("limit", page["limit"] if limit else 50)
        assert page["offset"] == given_ints.get("offset", page["offset"] if offset else 0)
        assert len(page["items"]) <= page["limit"]
        assert page["total"] >= 0
    else:
        assert response.headers["content-type"] == PROBLEM
        pointers = {error["pointer"] for error in response.json()["errors"]}
        assert pointers <= {"/query/limit", "/query/offset"}, context
