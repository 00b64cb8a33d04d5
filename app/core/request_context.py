"""The request being handled: its id and scope, readable anywhere in its task and in the tasks
and threads it starts (its context is theirs), and the template of the route that answered it
(the monitor's endpoint metrics and the query budget key on it)."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar, Token
from typing import Any

from starlette.types import Scope

# The route template of a request no route matched (a scan of random paths adds no series).
UNMATCHED = "<unmatched>"


class RequestInfo:
    """One request as its context holds it: its id for the whole life of what it started (log
    lines keep it), its scope only while it is being answered."""

    __slots__ = ("id", "scope")

    def __init__(self, request_id: str, scope: Scope) -> None:
        self.id = request_id
        self.scope: Scope | None = scope


_current: ContextVar[RequestInfo | None] = ContextVar("renum_request", default=None)


def begin_request(request_id: str, scope: Scope) -> Token[RequestInfo | None]:
    """Make this the request of the current context (the base middleware, once per request)."""
    return _current.set(RequestInfo(request_id, scope))


def end_request(token: Token[RequestInfo | None]) -> None:
    """The request was answered: work it left running keeps its id, no longer its scope."""
    info = _current.get()
    if info is not None:
        info.scope = None
    _current.reset(token)


def current_request_id() -> str | None:
    info = _current.get()
    return None if info is None else info.id


# Set by the login in the scope of a request whose credentials failed: ``unknown-account`` when
# no user has the email, ``wrong-password`` otherwise. The intrusion detection tells user
# enumeration from brute force by it; the client gets the same answer either way.
# Reads of account data by a platform admin, noted by the repositories for the audit trail,
# which records them when the request ends: (the account read, or None for a query across
# every account; the table; the row's id, or None for a list).
ACCOUNT_READS = "renum.account_reads"
AccountRead = tuple[Any, str, Any]


def note_account_read(account_id: Any, table: str, row_id: Any = None) -> None:
    """Note that the request being answered read ``table`` (a row of ``account_id``, or a
    list across every account)."""
    info = _current.get()
    if info is not None and info.scope is not None:
        info.scope.setdefault(ACCOUNT_READS, []).append((account_id, table, row_id))


def current_scope() -> Scope | None:
    """The scope of the request being answered in this context, if any."""
    info = _current.get()
    return None if info is None else info.scope


def route_template(scope: Scope) -> str:
    """The template of the route that answered (``/api/v1/teams/{team_id}``); ``UNMATCHED``
    when no route matched.

    The route's own template (its ``path_format``) is the end of the full one; what comes
    before is the prefixes of the routers that included it, read off the path, with the value
    of any parameter those prefixes hold put back as ``{name}``. A parameter's value that
    equals a fixed segment of the route's own path (``/teams/teams``) or that a convertor
    changed (``{n:int}`` given ``007``) cannot confuse it. Without a usable ``path_format``,
    or with a ``{name:path}`` parameter (its value spans segments), every parameter's value is
    put back in the whole path."""
    if scope.get("route") is None:
        return UNMATCHED
    path: str = scope["path"]
    params: Mapping[str, Any] = scope.get("path_params") or {}
    if not params:
        return path
    own = getattr(scope["route"], "path_format", None)
    values = [str(value) for value in params.values()]
    if isinstance(own, str) and own.startswith("/") and all(v and "/" not in v for v in values):
        depth = own.count("/")
        parts = path.rsplit("/", depth)
        if len(parts) == depth + 1:
            outer = {name: v for name, v in params.items() if "{" + name + "}" not in own}
            return _put_back(parts[0], outer) + own
    return _put_back(path, params)


def _put_back(path: str, params: Mapping[str, Any]) -> str:
    """``path`` with each parameter's value put back as ``{name}``: a segment equal to the
    value, or the rest of the path for a value that spans segments (``{name:path}``)."""
    tail = ""
    for name, value in params.items():
        text = str(value)
        if ("/" in text or not text) and path.endswith("/" + text):
            path = path[: len(path) - len(text) - 1]
            tail = "/{" + name + "}" + tail
    segments = path.split("/")
    for name, value in params.items():
        text = str(value)
        if text and "/" not in text:
            segments = ["{" + name + "}" if segment == text else segment for segment in segments]
    return "/".join(segments) + tail
