"""`/api/v1/audit`: the audit trail, page by page or exported as JSON lines. Account owners
read their account's entries; platform admins every entry."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import Query
from fastapi.responses import StreamingResponse
from pydantic import Field

from app.api.deps import (
    AuditDep,
    CursorPagingDep,
    DatabaseDep,
    OwnerDep,
    SessionDep,
    release,
)
from app.api.input_guard import CheckInputs
from app.api.router import PrefixRouter
from app.db.database import READ_ONLY, SQLAlchemyManager
from app.repositories.audit import EXPORT_BATCH
from app.schemas.common import CursorPage, DateTime, ResponseModel, problems
from app.services.audit import ACTIONS, AuditReader
from app.services.principal import Principal

router = PrefixRouter(prefix="/api/v1/audit", tags=["audit"], dependencies=[CheckInputs])

JSON_LINES = "application/x-ndjson"
# A pattern, not a list: an action added later does not change the operation's schema.
ACTION_PATTERN = r"^[a-z_]{1,32}\.[a-z_]{1,32}$"


class AuditEntryOut(ResponseModel):
    id: uuid.UUID
    seq: int = Field(description="The entry's place in the trail (1, 2, 3, ... without gaps).")
    created_at: datetime = Field(description="When it was recorded.")
    actor_id: uuid.UUID | None = Field(description="The user who acted (none for the system).")
    actor_kind: str = Field(
        examples=["user"],
        description="`user` (with an access token), `api_key` (the key is in `details`), "
        "`system`, `cli` or `anonymous` (a failed login).",
    )
    account_id: uuid.UUID | None = Field(description="The account acted in.")
    action: str = Field(examples=["api_key.create"])
    target: str | None = Field(examples=["api_key:0b7e...", "owner@example.com"])
    source: str | None = Field(description="The client's address.", examples=["203.0.113.7"])
    request_id: str | None = Field(description="The request's `X-Request-ID`.")
    outcome: str = Field(examples=["success"], description="`success`, `failure` or `denied`.")
    details: dict[str, Any] = Field(
        description="Facts of the action: names, prefixes, reasons (never a key or a password)."
    )
    hash: str = Field(description="The entry's hash in the chain (`renum audit verify`).")


Actor = Annotated[uuid.UUID | None, Query(description="Only entries by this user.")]
Action = Annotated[
    str | None,
    Query(pattern=ACTION_PATTERN, description=f"Only this action: one of {', '.join(ACTIONS)}."),
]
Since = Annotated[DateTime | None, Query(description="Only entries recorded at or after it.")]
Until = Annotated[DateTime | None, Query(description="Only entries recorded before it.")]


@router.get(
    "",
    response_model=CursorPage[AuditEntryOut],
    summary="List audit entries",
    description="The audit trail, newest first: logins, credentials and roles changed, users, "
    "accounts and provider keys created and deleted, configuration reloads, silences, exports "
    "and platform admins' reads. Owners see their account's entries; platform admins every "
    "entry. Follow `next_cursor` with `cursor` for the next page.",
    responses=problems(401, 403, 422),
)
async def list_audit_entries(
    principal: OwnerDep,
    session: SessionDep,
    database: DatabaseDep,
    paging: CursorPagingDep,
    actor: Actor = None,
    action: Action = None,
    since: Since = None,
    until: Until = None,
) -> CursorPage[AuditEntryOut]:
    await release(session)  # the page is counted and read in a read-only transaction
    async with database.session() as reading:
        await reading.connection(execution_options=READ_ONLY)
        rows, total, offset = await AuditReader(reading).page(
            principal,
            actor_id=actor,
            action=action,
            since=since,
            until=until,
            limit=paging.limit,
            offset=paging.offset,
            after=paging.after,
        )
    return paging.page(AuditEntryOut, rows, total, offset)


@router.get(
    "/export",
    summary="Export audit entries as JSON lines",
    description="Every entry the filters select, oldest first, one JSON object per line (the "
    "fields of `GET /api/v1/audit`'s items). The export itself is audited (`audit.export`).",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The entries, one JSON object per line.",
            "content": {JSON_LINES: {"schema": {"type": "string"}}},
        },
        **problems(401, 403, 422),
    },
)
async def export_audit_entries(
    principal: OwnerDep,
    session: SessionDep,
    database: DatabaseDep,
    audit: AuditDep,
    actor: Actor = None,
    action: Action = None,
    since: Since = None,
    until: Until = None,
) -> StreamingResponse:
    filters: dict[str, Any] = {"actor_id": actor, "action": action, "since": since, "until": until}
    await release(session)  # the export reads in its own session, the entry in the trail's
    await audit.record(
        "audit.export",
        principal=principal,
        details={name: None if v is None else str(v) for name, v in filters.items()},
    )
    return StreamingResponse(
        _lines(database, principal, filters),
        media_type=JSON_LINES,
        headers={"Content-Disposition": 'attachment; filename="audit.jsonl"'},
    )


async def _lines(
    database: SQLAlchemyManager, principal: Principal, filters: dict[str, Any]
) -> AsyncIterator[bytes]:
    """The export, batch by batch, each read in a short read-only session of its own: a
    client that reads slowly holds no connection and no transaction (on SQLite, never the
    write lock) while it does."""
    after = 0
    while True:
        async with database.session() as session:
            await session.connection(execution_options=READ_ONLY)
            rows = await AuditReader(session).export_batch(principal, after=after, filters=filters)
            lines = [
                json.dumps(
                    AuditEntryOut.model_validate(row).model_dump(mode="json"),
                    separators=(",", ":"),
                    ensure_ascii=False,
                )
                for row in rows
            ]
        if lines:
            yield ("\n".join(lines) + "\n").encode()
        if len(rows) < EXPORT_BATCH:
            return
        after = rows[-1].seq
