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
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi import routing as fastapi_routing
from starlette._utils import get_route_path
from starlette.routing import Match
from starlette.types import Scope


def first_segment(path: str) -> str | None:
    """The first segment of ``path`` (``/api/v1/x`` gives ``api``), or None when it is empty
    or holds a parameter (then any request path might match)."""
    segment = path.lstrip("/").split("/", 1)[0]
    return segment if segment and "{" not in segment else None


class PrefixRouter(APIRouter):
    """An ``APIRouter`` that answers ``Match.NONE`` at once for paths outside its routes."""

    # By outer prefix: the routers whose routes the segments come from, with their routes'
    # versions then (any change: worked out again), and the segments.
    _segments: dict[str, tuple[tuple[tuple[APIRouter, int], ...], frozenset[str] | None]]

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
        per prefix, again when a route is added here or to a router without a prefix of its
        own whose routes count here (a few attribute reads tell)."""
        if not hasattr(self, "_segments"):
            self._segments = {}
        known = self._segments.get(outer)
        if known is not None and all(r._routes_version == v for r, v in known[0]):
            return known[1]
        watched: list[tuple[APIRouter, int]] = []
        result = self._work_out(outer, watched)
        self._segments[outer] = (tuple(watched), result)
        return result

    def _work_out(self, outer: str, watched: list[tuple[APIRouter, int]]) -> frozenset[str] | None:
        watched.append((self, self._routes_version))
        found: set[str] = set()
        for route in self.routes:
            nested = getattr(route, "original_router", None)
            if nested is None:
                segment = first_segment(getattr(route, "path", ""))
                if segment is None:
                    return None
                found.add(segment)
                continue
            # A router included here: its prefix, as FastAPI records it, is in this router's
            # frame (the prefix it was included with, then its own).
            full: str = route.include_context.prefix + nested.prefix  # type: ignore[attr-defined]
            segment = first_segment(full)
            if segment is not None:
                found.add(segment)
            elif full or not isinstance(nested, PrefixRouter):
                return None  # a parameter first: anything may follow
            else:  # no prefix at all: its routes are in this frame
                inner = nested._work_out(outer, watched)
                if inner is None:
                    return None
                found |= inner
        return frozenset(found)
