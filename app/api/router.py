"""``PrefixRouter``: FastAPI's ``APIRouter``, skipped at once by a request whose path cannot be
under it.

FastAPI (0.165) keeps every ``include_router`` as a node of the routing tree and, for each
request, tries every route of every included router in turn, recursing into nested ones,
without first asking whether the path could be under that router's prefix: a request for the
last route of the app, or for a path that exists nowhere, paid a regular expression per route
of the whole API (about 60% of a small request's cost in Renum). Every route of an included
router is registered under its prefix (the prefixes it was included with, then its own), so a
path that does not start with the literal part of that prefix (before any ``{param}``) matches
none of them, neither fully nor partially (no 405 either): the router answers ``Match.NONE``
without looking at its routes. Routers without a literal prefix are tried as before.

Every router of the backend is a ``PrefixRouter``. The check reads the included router FastAPI
records in the request's scope while matching; ``suites/unit/test_routing.py`` fails if a
FastAPI upgrade changes that (the same check is proposed upstream, fastapi/fastapi#16159).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi import routing as fastapi_routing
from starlette._utils import get_route_path
from starlette.routing import Match
from starlette.types import Scope


class PrefixRouter(APIRouter):
    """An ``APIRouter`` that answers ``Match.NONE`` at once for paths outside its prefix."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        included = fastapi_routing._get_scope_included_router(scope)
        if included is not None and included.original_router is self:
            prefix: str = included.include_context.prefix + self.prefix
            literal = prefix.split("{", 1)[0]
            if literal and not get_route_path(scope).startswith(literal):
                return Match.NONE, {}
        return super().matches(scope)
