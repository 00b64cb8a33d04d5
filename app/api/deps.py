"""FastAPI dependencies: settings, database and session, the process's runtime and shutdown,
the authenticated principal and the role an operation requires, the probe token, paging (by
offset, and by cursor for the lists that grow without bound).

The application's resources are read from ``HTTPConnection``, so they serve WebSocket routes
as well as HTTP ones."""

from __future__ import annotations

import functools
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Depends, Query, Request
from fastapi.requests import HTTPConnection
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import Scope

from app.api import cursors
from app.core.config import Settings
from app.core.crypto import SecretBox
from app.core.errors import Unauthorized, ValidationFailed
from app.core.security import TokenCodec
from app.core.shutdown import GracefulShutdown
from app.db.database import SQLAlchemyManager
from app.models import Role
from app.repositories.base import Position
from app.schemas.common import CursorPage, Page, ResponseModel
from app.services.audit import AuditTrail
from app.services.auth import AuthService, LoginGuard
from app.services.principal import Principal
from app.services.runtime import Runtime

M = TypeVar("M", bound=ResponseModel)

oauth2_scheme = OAuth2PasswordBearer(
    tokenUrl="/api/v1/auth/token",
    auto_error=False,
    description="A JWT access token from `POST /api/v1/auth/token`, or an API key (`rk_...`).",
)


# The accessors below are coroutines on purpose: FastAPI runs a plain ``def`` dependency in
# its thread pool, a hop to a worker thread and back for each one on every request.


async def get_settings(connection: HTTPConnection) -> Settings:
    settings: Settings = connection.app.state.settings
    return settings


async def get_codec(connection: HTTPConnection) -> TokenCodec:
    codec: TokenCodec = connection.app.state.codec
    return codec


async def get_box(connection: HTTPConnection) -> SecretBox:
    box: SecretBox = connection.app.state.box
    return box


async def get_runtime(connection: HTTPConnection) -> Runtime:
    runtime: Runtime = connection.app.state.runtime
    return runtime


async def get_audit(connection: HTTPConnection) -> AuditTrail:
    audit: AuditTrail = connection.app.state.audit
    return audit


async def get_database(connection: HTTPConnection) -> SQLAlchemyManager:
    database: SQLAlchemyManager = connection.app.state.database
    return database


async def get_shutdown(connection: HTTPConnection) -> GracefulShutdown:
    shutdown: GracefulShutdown = connection.app.state.shutdown
    return shutdown


DatabaseDep = Annotated[SQLAlchemyManager, Depends(get_database)]


async def get_session(database: DatabaseDep) -> AsyncIterator[AsyncSession]:
    async with database.session() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def release(session: AsyncSession) -> None:
    """End the request's session early, before work in sessions of its own (the audit
    trail's): on SQLite, the transaction authentication began holds the write lock until it
    ends, and another session writing meanwhile would wait for it."""
    await session.close()


CodecDep = Annotated[TokenCodec, Depends(get_codec)]
BoxDep = Annotated[SecretBox, Depends(get_box)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ShutdownDep = Annotated[GracefulShutdown, Depends(get_shutdown)]
AuditDep = Annotated[AuditTrail, Depends(get_audit)]


# Where the authenticated principal of a request is kept in its scope (the audit trail's
# observer of platform admins' reads looks there).
PRINCIPAL_KEY = "renum.principal"


class RequestScreen(LoginGuard, Protocol):
    """The security capability's throttling (``app.state.request_screen``; None when off):
    told of each authenticated request's client before and its principal after the
    credential is checked, and of each login (``LoginGuard``). Each raises 429 to refuse."""

    def source(self, scope: Scope) -> None: ...

    def principal(self, scope: Scope, principal: Principal) -> None: ...

    async def invalid_credential(self, scope: Scope) -> None: ...

    async def not_found(self, scope: Scope) -> None: ...


async def get_screen(connection: HTTPConnection) -> RequestScreen | None:
    screen: RequestScreen | None = connection.app.state.request_screen
    return screen


ScreenDep = Annotated[RequestScreen | None, Depends(get_screen)]


async def screen_source(connection: HTTPConnection, screen: ScreenDep) -> None:
    """429 while the client's address is throttled (for the routes that take no principal:
    the refresh and the logout)."""
    if screen is not None:
        screen.source(connection.scope)


async def get_principal(
    connection: HTTPConnection,
    session: SessionDep,
    codec: CodecDep,
    screen: ScreenDep,
    credential: Annotated[str | None, Depends(oauth2_scheme)],
) -> Principal:
    if screen is not None:
        screen.source(connection.scope)  # one dict lookup while no client is throttled
    if not credential:
        raise Unauthorized("Send `Authorization: Bearer <access token or API key>`.")
    principal = await AuthService(session, codec).authenticate(credential)
    connection.scope[PRINCIPAL_KEY] = principal
    if screen is not None:
        screen.principal(connection.scope, principal)  # the rate limits: in memory
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]

_REQUIRED_ROLES: dict[object, Role] = {}


@functools.cache
def requires(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency that declares the role an operation requires: the authenticated caller
    (``get_principal``: 401 without valid credentials), refused with 403 unless their role is
    ``role`` or higher. Use it as the route's principal parameter (``MemberDep``, ...);
    ``app.api.roles.declare_required_roles`` reads it into the schema."""

    async def principal_with_role(principal: PrincipalDep) -> Principal:
        principal.require(role)
        return principal

    principal_with_role.__name__ = principal_with_role.__qualname__ = f"requires_{role.value}"
    _REQUIRED_ROLES[principal_with_role] = role
    return principal_with_role


def required_role_of(dependency: object) -> Role | None:
    """The role a dependency made by ``requires`` demands; ``None`` for any other callable."""
    try:
        return _REQUIRED_ROLES.get(dependency)
    except TypeError:  # an unhashable callable: not one of ours
        return None


ViewerDep = Annotated[Principal, Depends(requires(Role.viewer))]
MemberDep = Annotated[Principal, Depends(requires(Role.member))]
OwnerDep = Annotated[Principal, Depends(requires(Role.owner))]
AdminDep = Annotated[Principal, Depends(requires(Role.admin))]

PROBE_TOKEN_HEADER = "X-Probe-Token"  # noqa: S105 - a header name, not a secret


def probe_token_matches(request: Request, credential: str | None) -> bool:
    """Whether the caller sent the configured probe token (``X-Probe-Token`` or ``Authorization:
    Bearer``); compared in constant time, and read directly from the headers so that a probe
    never answers 422."""
    configured = request.app.state.settings.health.probe_token
    if configured is None:
        return False
    expected = configured.get_secret_value().encode()
    for candidate in (request.headers.get(PROBE_TOKEN_HEADER), credential):
        if candidate and hmac.compare_digest(candidate.encode(), expected):
            return True
    return False


@dataclass(frozen=True)
class Paging:
    limit: int
    offset: int


async def get_paging(
    limit: Annotated[int, Query(ge=1, le=200, description="Items per page.")] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="Items to skip.")] = 0,
) -> Paging:
    return Paging(limit=limit, offset=offset)


PagingDep = Annotated[Paging, Depends(get_paging)]


def to_page(model: type[M], rows: Sequence[object], total: int, paging: Paging) -> Page[M]:
    """Wrap ORM rows in the response model's page."""
    return Page[model](  # type: ignore[valid-type]
        items=[model.model_validate(row) for row in rows],
        total=total,
        limit=paging.limit,
        offset=paging.offset,
    )


@dataclass(frozen=True)
class CursorPaging:
    """Paging of a list that grows without bound: ``limit`` items after ``cursor`` (a
    ``next_cursor`` of the same list for the same caller, decoded to ``after``), or, for the
    clients that page by offset still, ``offset`` items in."""

    limit: int
    offset: int
    cursor: str | None
    after: Position | None
    context: str  # the list and whose rows it shows, which a cursor is made for
    secret: bytes = field(repr=False)

    def page(self, model: type[M], rows: Sequence[Any], total: int, offset: int) -> CursorPage[M]:
        """Wrap ORM rows (with ``created_at`` and ``id``), ``offset`` items in, in a page
        whose ``next_cursor`` follows its last row when more come after it."""
        last = rows[-1] if rows and offset + len(rows) < total else None
        return CursorPage[model](  # type: ignore[valid-type]
            items=[model.model_validate(row) for row in rows],
            total=total,
            limit=self.limit,
            offset=offset,
            next_cursor=None
            if last is None
            else cursors.encode((last.created_at, last.id), self.secret, self.context),
        )


_BOTH = "Send `cursor` or `offset`, not both: a cursor says where the page starts."
_NOT_OURS = (
    "Not a cursor of this list: pass a `next_cursor` it gave you, unchanged (cursors belong "
    "to one account and end when the server's secret key changes)."
)


async def get_cursor_paging(
    request: Request,
    principal: PrincipalDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=200, description="Items per page.")] = 50,
    offset: Annotated[
        int,
        Query(
            ge=0,
            le=1_000_000,
            deprecated=True,
            description="Items to skip. Deprecated for this list, which grows without bound: "
            "the server reads every item it skips; follow `next_cursor` with `cursor`.",
        ),
    ] = 0,
    cursor: Annotated[
        str | None,
        Query(
            max_length=cursors.MAX_LENGTH,
            pattern=cursors.ALPHABET,
            description="Start after the position this cursor names: a `next_cursor` of this "
            "list (opaque; only the server makes them).",
        ),
    ] = None,
) -> CursorPaging:
    """``CursorPaging`` for the caller: a cursor is decoded (422 when it is not one the list
    made for them) after the caller is authenticated, and before anything is read."""
    operation = request.scope["route"].unique_id  # the list's operation id, set by routing
    context = f"{operation} {principal.scope.account_id or '*'}"
    secret = settings.secret_key.get_secret_value().encode()
    after = None
    if cursor is not None:
        if offset:
            raise ValidationFailed.at("/query/cursor", _BOTH, cursors.ERROR_TYPE)
        try:
            after = cursors.decode(cursor, secret, context)
        except cursors.InvalidCursor:
            raise ValidationFailed.at("/query/cursor", _NOT_OURS, cursors.ERROR_TYPE) from None
    return CursorPaging(limit, offset, cursor, after, context, secret)


CursorPagingDep = Annotated[CursorPaging, Depends(get_cursor_paging)]
