"""Route-declared roles (``app.api.deps.requires``, ``app.api.roles``): the dependency refuses
a caller whose role is too low with the usual 403 problem, and ``declare_required_roles``
states each operation's role in the schema as ``x-required-role``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header

from app.api.deps import (
    AdminDep,
    MemberDep,
    OwnerDep,
    PrincipalDep,
    ViewerDep,
    get_principal,
    required_role_of,
    requires,
)
from app.api.roles import ROLE_EXTENSION, api_routes, declare_required_roles, required_role
from app.core.config import Settings
from app.core.errors import Forbidden, Unauthorized, install_error_handlers
from app.main import create_app
from app.models import Role
from app.services.principal import Principal

pytestmark = pytest.mark.anyio

# What the documentation generator read from the services' ``principal.require`` calls before
# the routes declared their roles: the declarations keep every one of them.
SERVICE_CHECKED_ROLES = {
    "add_team_member": "member",
    "cancel_execution": "member",
    "create_account": "admin",
    "create_agent": "member",
    "create_api_key": "member",
    "create_execution": "member",
    "create_provider_key": "member",
    "create_team": "member",
    "create_user": "owner",
    "delete_agent": "member",
    "delete_provider_key": "member",
    "delete_team": "member",
    "delete_user": "owner",
    "get_user": "owner",
    "list_accounts": "admin",
    "list_users": "owner",
    "remove_team_member": "member",
    "revoke_api_key": "member",
    "update_agent": "member",
    "update_team": "member",
    "update_user": "owner",
}
# Operations added since, with the role their routes declare.
DECLARED_SINCE = {
    "get_configuration": "admin",
    "reload_configuration": "admin",
    "get_monitor_snapshot": "admin",
    "get_monitor_history": "admin",
    "stream_monitor": "admin",
    "list_alerts": "admin",
    "list_silences": "admin",
    "create_silence": "admin",
    "end_silence": "admin",
    "list_profiles": "admin",
    "get_profile": "admin",
    "create_webhook": "owner",
    "update_webhook": "owner",
    "delete_webhook": "owner",
    "rotate_webhook_secret": "owner",
    "test_webhook": "owner",
    "list_dead_letters": "admin",
    "list_audit_entries": "owner",
    "export_audit_entries": "owner",
    "get_summary": "owner",
    "get_timeseries": "owner",
}
PUBLIC_OPERATIONS = {"login", "refresh", "logout"}


def caller(x_role: Annotated[str | None, Header()] = None) -> Principal:
    """Stands in for ``get_principal``: the caller has the role the ``X-Role`` header names;
    without one, they are not signed in."""
    if x_role is None:
        raise Unauthorized()
    return Principal(user_id=uuid.uuid4(), account_id=uuid.uuid4(), role=Role(x_role))


def build_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    router = APIRouter(prefix="/things")

    @router.get("/public")
    async def public() -> dict[str, str]:
        return {"role": "none"}

    @router.get("/mine")
    async def signed_in(principal: PrincipalDep) -> dict[str, str]:
        return {"role": principal.role.value}

    @router.get("/seen")
    async def seen(principal: ViewerDep) -> dict[str, str]:
        return {"role": principal.role.value}

    @router.post("/made")
    async def made(principal: MemberDep) -> dict[str, str]:
        return {"role": principal.role.value}

    @router.delete("/gone")
    async def gone(principal: OwnerDep) -> dict[str, str]:
        return {"role": principal.role.value}

    @router.put("/run")
    async def run(principal: AdminDep) -> dict[str, str]:
        return {"role": principal.role.value}

    @router.patch("/both", dependencies=[Depends(requires(Role.admin))])
    async def both(principal: MemberDep) -> dict[str, str]:
        return {"role": principal.role.value}

    outer = APIRouter(prefix="/v1")
    outer.include_router(router)
    app.include_router(outer)
    app.dependency_overrides[get_principal] = caller
    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://unit") as http:
        yield http


def test_requires_gives_one_dependency_per_role() -> None:
    assert requires(Role.owner) is requires(Role.owner)
    assert requires(Role.owner) is not requires(Role.member)
    assert {role: required_role_of(requires(role)) for role in Role} == {r: r for r in Role}
    assert required_role_of(get_principal) is None
    assert required_role_of(object()) is None


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize(
    ("method", "path", "needed"),
    [
        ("GET", "/v1/things/seen", Role.viewer),
        ("POST", "/v1/things/made", Role.member),
        ("DELETE", "/v1/things/gone", Role.owner),
        ("PUT", "/v1/things/run", Role.admin),
    ],
)
async def test_a_declared_role_is_enforced(
    client: httpx.AsyncClient, role: Role, method: str, path: str, needed: Role
) -> None:
    response = await client.request(method, path, headers={"X-Role": role.value})
    if role.at_least(needed):
        assert response.status_code == 200, response.text
        assert response.json() == {"role": role.value}
        return
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 403
    assert body["title"] == Forbidden.title
    assert body["detail"] == f"This operation needs the {needed.value} role or higher."


async def test_the_role_dependency_authenticates_first(client: httpx.AsyncClient) -> None:
    response = await client.delete("/v1/things/gone")  # not signed in
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"


def test_declared_roles_go_into_the_schema() -> None:
    app = build_app()
    declared = declare_required_roles(app)
    assert declared == {
        "made": "member",
        "gone": "owner",
        "run": "admin",
        "both": "admin",  # the highest of the route's role dependencies
        "seen": "viewer",
        "signed_in": "viewer",  # authenticated, no role: any signed-in user (the lowest role)
    }
    paths = app.openapi()["paths"]
    assert ROLE_EXTENSION not in paths["/v1/things/public"]["get"]
    assert paths["/v1/things/mine"]["get"][ROLE_EXTENSION] == "viewer"
    assert paths["/v1/things/made"]["post"][ROLE_EXTENSION] == "member"
    assert paths["/v1/things/gone"]["delete"][ROLE_EXTENSION] == "owner"
    assert paths["/v1/things/run"]["put"][ROLE_EXTENSION] == "admin"
    assert paths["/v1/things/both"]["patch"][ROLE_EXTENSION] == "admin"
    assert declare_required_roles(app) == declared  # declaring again changes nothing


def test_required_role_of_a_route_without_authentication_is_none() -> None:
    app = build_app()
    public = next(route for route in api_routes(app.routes) if route.name == "public")
    assert required_role(public.dependant) is None


def test_every_authenticated_api_operation_declares_its_role(settings: Settings) -> None:
    app = create_app(settings)
    declared = declare_required_roles(app)
    assert {op: role for op, role in declared.items() if role != "viewer"} == (
        SERVICE_CHECKED_ROLES | DECLARED_SINCE
    )
    schema = app.openapi()
    api = {
        spec["operationId"]: spec
        for path, item in schema["paths"].items()
        if path.startswith("/api/v1/")
        for spec in item.values()
    }
    assert set(api) == set(declared) | PUBLIC_OPERATIONS
    for operation, spec in api.items():
        if operation in PUBLIC_OPERATIONS:
            assert not spec.get("security"), operation
            assert ROLE_EXTENSION not in spec, operation
        else:
            assert spec.get("security"), operation
            assert spec[ROLE_EXTENSION] == declared[operation], operation
