"""The role each API operation requires, as its route declares it, stated in the OpenAPI schema.

A route declares its role with the dependency that authenticates its caller:
``principal: MemberDep`` (``Depends(requires(Role.member))``, see ``app.api.deps``) lets members
and higher in and refuses the rest with 403. ``declare_required_roles`` reads those
declarations and sets each operation's ``x-required-role`` to the lowest role that passes: the
highest ``requires`` in the route's dependency tree, or ``viewer`` (the lowest role, which
every signed-in user has) for a route that only authenticates (``get_principal``). Public
routes get nothing. The app factory calls it once, after including the routers and before
serving: operations keep their schema from then on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.api.deps import get_principal, required_role_of
from app.models import Role

ROLE_EXTENSION = "x-required-role"
LOWEST_ROLE = min(Role, key=lambda role: role.rank)


def required_role(dependant: Dependant) -> Role | None:
    """The lowest role that passes every role check in a dependency tree: the highest role a
    ``requires`` dependency in it demands, ``viewer`` when it only authenticates, ``None``
    when it does neither (a public operation)."""
    found: list[Role] = []
    authenticated = False
    for call in _calls(dependant):
        role = required_role_of(call)
        if role is not None:
            found.append(role)
        authenticated = authenticated or call is get_principal
    if found:
        return max(found, key=lambda role: role.rank)
    return LOWEST_ROLE if authenticated else None


def api_routes(routes: Iterable[Any]) -> Iterator[APIRoute]:
    """Every API route, those inside included routers too (FastAPI keeps them nested in their
    router, or copies them into the including one, depending on its version)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        nested = getattr(route, "original_router", None) or getattr(route, "router", None)
        if nested is not None and hasattr(nested, "routes"):
            yield from api_routes(nested.routes)


def declare_required_roles(app_or_routes: Any) -> dict[str, str]:
    """Set ``x-required-role`` on every API operation that needs a signed-in caller (an app,
    a router or a list of routes); returns the roles by route name (the operation id)."""
    routes = getattr(app_or_routes, "routes", app_or_routes)
    declared = {}
    for route in api_routes(routes):
        role = required_role(route.dependant)
        if role is None:
            continue
        extra = route.openapi_extra
        if extra is None:
            extra = route.openapi_extra = {}
        extra[ROLE_EXTENSION] = role.value
        declared[route.name] = role.value
    return dict(sorted(declared.items()))


def _calls(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)
