"""FastAPI dependencies: settings, database session, the authenticated principal, the probe
token, paging."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Query, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.crypto import SecretBox
from app.core.errors import Unauthorized
from app.core.security import TokenCodec
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


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_codec(request: Request) -> TokenCodec:
    return request.app.state.codec


def get_box(request: Request) -> SecretBox:
    return request.app.state.box


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.database.session() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
CodecDep = Annotated[TokenCodec, Depends(get_codec)]
BoxDep = Annotated[SecretBox, Depends(get_box)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_principal(
    session: SessionDep,
    codec: CodecDep,
    credential: Annotated[str | None, Depends(oauth2_scheme)],
) -> Principal:
    if not credential:
        raise Unauthorized("Send `Authorization: Bearer <access token or API key>`.")
    return await AuthService(session, codec).authenticate(credential)


PrincipalDep = Annotated[Principal, Depends(get_principal)]

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


def get_paging(
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
