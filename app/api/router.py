"""``PrefixRouter``: FastAPI's ``APIRouter``, skipped at once by a request whose path cannot be
under it.

FastAPI (0.165) keeps every ``include_router`` as a node of the routing tree and, for each
request, tries every route of every included router in turn, recursing into nested ones,
without first asking whether the path could be under that router: a request for the last route
of the app, or for a path that exists nowhere, paid a regular expression per route of the whole
app (about 60% of a small request's cost in Renum). A ``PrefixRouter`` answers ``Match.NONE``
without looking at its routes when the path cannot match any of them, neither fully nor
partially (so no 405 either), in two steps:

- the literal part of the prefix it is included under (the prefixes it was included with, then
  its own, before any ``{param}``): a path that does not start with it matches nothing here;
- the literal first segments of its routes after that prefix (``/livez``, ``/health/...``
  give ``livez`` and ``health``; a nested router gives its prefix's, or its own routes' when
  it has none): a path whose next segment is none of them matches nothing here either. A
  route whose first segment is a parameter, or the root path, turns this step off for the
  router.

Every router of the backend is a ``PrefixRouter``. The check reads the included router FastAPI
records in the request's scope while matching; ``suites/unit/test_routing.py`` fails if a
FastAPI upgrade changes that (the same check is proposed upstream, fastapi/fastapi#16159).

The app's own router gets the same idea as an index (``index_routes``): its routes grouped by
the first segment of the paths each can match, so a request tries only the routes its path's
first segment can reach (the API router for ``/api/...``, the probes for ``/health/...``), in
the app's order, and FastAPI's own loop takes over when none of them matches (redirects to the
path with or without its trailing slash, low-priority routes, 404).
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, FastAPI
from fastapi import routing as fastapi_routing
from fastapi.telemetry._api import _route_selected
from starlette._utils import get_route_path
from starlette.routing import BaseRoute, Host, Match, Mount, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send


def first_segment(path: str) -> str | None:
    """The first segment of ``path`` (``/api/v1/x`` gives ``api``), or None when it is empty
    or holds a parameter (then any request path might match)."""
    segment = path.lstrip("/").split("/", 1)[0]
    return segment if segment and "{" not in segment else None


class PrefixRouter(APIRouter):
    """An ``APIRouter`` that answers ``Match.NONE`` at once for paths outside its routes."""

    # Advanced by every change to the routes of any PrefixRouter (FastAPI marks each add and
    # include): what was worked out from their routes holds while it stays.
    generation = 0

    # By outer prefix: the generation they were worked out in, and the segments.
    _segments: dict[str, tuple[int, frozenset[str] | None]]

    def _mark_routes_changed(self) -> None:
        super()._mark_routes_changed()
        PrefixRouter.generation += 1

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        included = fastapi_routing._get_scope_included_router(scope)
        if included is not None and included.original_router is self:
            outer = included.include_context.prefix
            literal = (outer + self.prefix).split("{", 1)[0]
            path = get_route_path(scope)
            if not path.startswith(literal):
                return Match.NONE, {}
            segments = self.first_segments(outer) if "{" not in outer else None
            if segments is not None:
                rest = path[len(outer) :].lstrip("/").split("/", 1)[0]
                if rest not in segments:
                    return Match.NONE, {}
        return super().matches(scope)

    def first_segments(self, outer: str) -> frozenset[str] | None:
        """The first segments the paths of this router's routes can start with, after the
        prefix ``outer`` it is included under; None when any segment could. Worked out once
        per prefix, again after any route was added to a ``PrefixRouter``."""
        if not hasattr(self, "_segments"):
            self._segments = {}
        known = self._segments.get(outer)
        if known is not None and known[0] == PrefixRouter.generation:
            return known[1]
        result = self._work_out(outer)
        self._segments[outer] = (PrefixRouter.generation, result)
        return result

    def _work_out(self, outer: str) -> frozenset[str] | None:
        found: set[str] = set()
        for route in self.routes:
            segments = route_segments(route, outer)
            if segments is None:
                return None
            found |= segments
        return frozenset(found)


def route_segments(route: BaseRoute, outer: str) -> frozenset[str] | None:
    """The first segments of the paths ``route`` can match, in the frame of the router that
    holds it (included under ``outer``); None when any path might."""
    nested = getattr(route, "original_router", None)
    if nested is None:
        if isinstance(route, Host):
            return None
        if isinstance(route, Route | WebSocketRoute) and route.path == "/":
            return frozenset(("",))  # the frame's root path only (not a mount: it takes all)
        segment = first_segment(getattr(route, "path", ""))
        return None if segment is None else frozenset((segment,))
    # An included router: its prefix, as FastAPI records it, is in the frame of the router
    # that holds it (the prefix it was included with, then its own).
    full: str = route.include_context.prefix + nested.prefix  # type: ignore[attr-defined]
    segment = first_segment(full)
    if segment is not None:
        return frozenset((segment,))
    if full or not isinstance(nested, PrefixRouter):
        return None  # a parameter first: anything may follow
    return nested._work_out(outer)  # no prefix at all: its routes are in this frame


class SegmentIndex:
    """The entry of an app's router (its ``middleware_stack``): tries, in order, only the
    routes the request path's first segment can reach, and hands the request to the router's
    own ``app`` when none of them matches. Worked out again when a route is added or removed
    through FastAPI (here or in a ``PrefixRouter``) or when the number of routes changes; a
    reordering of the route list in place counts before the first request only."""

    def __init__(self, router: APIRouter) -> None:
        self.router = router
        self.fallback = router.app
        self._key: tuple[int, int, int] | None = None
        self._by_segment: dict[str, tuple[BaseRoute, ...]] = {}
        self._anywhere: tuple[BaseRoute, ...] = ()

    def candidates(self, path: str) -> Sequence[BaseRoute]:
        """The routes a request for ``path`` may match, in the router's order."""
        router = self.router
        key = (PrefixRouter.generation, router._routes_version, len(router.routes))
        if key != self._key:
            self._index(router.routes)
            self._key = key
        segment = path.lstrip("/").split("/", 1)[0]
        return self._by_segment.get(segment, self._anywhere)

    def _index(self, routes: list[BaseRoute]) -> None:
        reach = [(route, route_segments(route, "")) for route in routes]
        named = {segment for _, segments in reach if segments for segment in segments}
        self._by_segment = {
            segment: tuple(r for r, segments in reach if segments is None or segment in segments)
            for segment in named
        }
        self._anywhere = tuple(route for route, segments in reach if segments is None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.fallback(scope, receive, send)
            return
        router = self.router
        fastapi_routing._apply_router_form_limits(scope, router.form_limits)
        scope.setdefault("router", router)
        chosen: tuple[BaseRoute, Scope] | None = None
        for route in self.candidates(get_route_path(scope)):
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                chosen = (route, child_scope)
                break
            if match is Match.PARTIAL and chosen is None:
                chosen = (route, child_scope)
        if chosen is None:  # FastAPI's own loop: redirects, low-priority routes, 404
            await self.fallback(scope, receive, send)
            return
        route, child_scope = chosen
        fastapi_routing._update_scope(scope, child_scope)
        _route_selected(
            scope=scope,
            path=getattr(route, "path_format", None),
            mount=isinstance(route, Mount),
        )
        await route.handle(scope, receive, send)


def index_routes(app: FastAPI) -> None:
    """Route ``app``'s requests through a ``SegmentIndex`` of its router. The router's entry
    must be its own ``app`` (no router-level middleware, such as FastAPI's body limit of
    ``FastAPI(max_body_size=...)``, which the index would drop)."""
    router = app.router
    if router.middleware_stack != router.app:
        raise RuntimeError("the app's router has middleware of its own: index its routes inside")
    router.middleware_stack = SegmentIndex(router)
