"""FastAPI dependencies: settings, database and session, the process's runtime and shutdown,
the authenticated principal and the role an operation requires, the probe token, paging.

The application's resources are read from ``HTTPConnection``, so they serve WebSocket routes
as well as HTTP ones."""

from __future__ import annotations

import functools
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Query, Request
from fastapi.requests import HTTPConnection
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.crypto import SecretBox
from app.core.errors import Unauthorized
from app.core.security import TokenCodec
from app.core.shutdown import GracefulShutdown
from app.db.database import SQLAlchemyManager
from app.models import Role
from app.schemas.common import Page, ResponseModel
from app.services.auth import AuthService
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
CodecDep = Annotated[TokenCodec, Depends(get_codec)]
BoxDep = Annotated[SecretBox, Depends(get_box)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ShutdownDep = Annotated[GracefulShutdown, Depends(get_shutdown)]


async def get_principal(
    session: SessionDep,
    codec: CodecDep,
    credential: Annotated[str | None, Depends(oauth2_scheme)],
) -> Principal:
    if not credential:
        raise Unauthorized("Send `Authorization: Bearer <access token or API key>`.")
    return await AuthService(session, codec).authenticate(credential)


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
