"""Executions: start a team on a prompt, watch it (JSON or Server-Sent Events), cancel it."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Body, Header, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import WithJsonSchema

from app.api.deps import (
    CursorPagingDep,
    MemberDep,
    RuntimeDep,
    SessionDep,
    SettingsDep,
    ShutdownDep,
    ViewerDep,
)
from app.api.router import PrefixRouter
from app.core.middleware import hold_open
from app.core.shutdown import GracefulShutdown
from app.models import ExecutionStatus
from app.schemas.common import CursorPage, link, links, problems
from app.schemas.executions import (
    DEFAULT_CANCEL_MODE,
    EXECUTION_CANCEL_EXAMPLES,
    EXECUTION_CREATE_EXAMPLES,
    ContextOut,
    ContextValueOut,
    EventOut,
    ExecutionCancel,
    ExecutionCreate,
    ExecutionOut,
    ExecutionSummary,
    MessageKindName,
    MessageOut,
    StepOut,
)
from app.services.events import StreamsClosed
from app.services.executions import ExecutionService

router = PrefixRouter(tags=["executions"])


def _execution_links(status: int, description: str) -> dict[int | str, Any]:
    """Links from a response carrying one execution to reading, cancelling and cleaning up."""
    execution_id = "$response.body#/id"
    return links(
        status,
        description,
        GetExecution=link("get_execution", "Read the execution.", execution_id=execution_id),
        ListExecutionSteps=link(
            "list_execution_steps", "Read its steps.", execution_id=execution_id
        ),
        GetExecutionContext=link(
            "get_execution_context", "Read its shared context.", execution_id=execution_id
        ),
        ListExecutionMessages=link(
            "list_execution_messages", "Read its agents' messages.", execution_id=execution_id
        ),
        ListExecutionEvents=link(
            "list_execution_events", "Read its events.", execution_id=execution_id
        ),
        CancelExecution=link(
            "cancel_execution", "Cancel the execution.", execution_id=execution_id
        ),
        DeleteTeam=link(
            "delete_team", "Delete the team that ran it.", team_id="$response.body#/team_id"
        ),
    )


SSE_HEARTBEAT_SECONDS = 15.0

WaitQuery = Annotated[
    float,
    Query(
        ge=0,
        le=3600,
        description="Block up to this many seconds (capped by the server's setting) until the "
        "execution ends.",
        openapi_examples={
            "until_end": {"summary": "Answer when it ends, or after 30 seconds", "value": 30}
        },
    ),
]


@router.post(
    "/teams/{team_id}/executions",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ExecutionOut,
    summary="Run a team on a prompt",
    description="Starts an execution and answers at once (202), or after `?wait=` seconds "
    "or when it ends, whichever is first.",
    responses={
        **_execution_links(202, "The execution, as it stands."),
        **problems(400, 401, 403, 404, 409, 422, 429),
    },
)
async def create_execution(
    request: Request,
    team_id: uuid.UUID,
    body: Annotated[ExecutionCreate, Body(openapi_examples=EXECUTION_CREATE_EXAMPLES)],
    principal: MemberDep,
    session: SessionDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
    wait: WaitQuery = 0,
) -> ExecutionOut:
    if wait > 0:
        hold_open(request.scope)  # a long-poll: not timed as the route's latency
    service = ExecutionService(session, settings, runtime.content)
    execution = await service.create(principal, team_id, body, runtime.runner)
    runtime.cache.changed("executions", execution.account_id)
    await service.wait(execution, wait, runtime)
    return await service.view(principal, execution.id)


@router.get(
    "/executions",
    response_model=CursorPage[ExecutionSummary],
    summary="List executions",
    description="The account's executions (admins: every account's), oldest first. Read a "
    "long list page by page with `cursor`: each page's `next_cursor` says where the next one "
    "starts (`null` on the last), at the same cost however deep; `offset` still works but "
    "grows slower the further it skips.",
    responses={
        **links(
            200,
            "One page of executions.",
            GetExecution=link(
                "get_execution",
                "Read the first execution.",
                execution_id="$response.body#/items/0/id",
            ),
            NextPage=link(
                "list_executions",
                "Read the next page (with the same filters).",
                cursor="$response.body#/next_cursor",
            ),
        ),
        **problems(401, 422),
    },
)
async def list_executions(
    principal: ViewerDep,
    session: SessionDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
    paging: CursorPagingDep,
    team_id: uuid.UUID | None = None,
    status_: Annotated[ExecutionStatus | None, Query(alias="status")] = None,
) -> CursorPage[ExecutionSummary]:
    status = status_.value if status_ else None

    async def compute() -> CursorPage[ExecutionSummary]:
        rows, total, offset = await ExecutionService(session, settings, runtime.content).page(
            principal,
            team_id=team_id,
            status=status,
            limit=paging.limit,
            offset=paging.offset,
            after=paging.after,
        )
        return paging.page(ExecutionSummary, rows, total, offset)

    params = (team_id, status, paging.limit, paging.offset, paging.cursor)
    return await runtime.cache.read(
        "executions", principal.scope, params, CursorPage[ExecutionSummary], compute
    )


@router.get(
    "/executions/{execution_id}",
    response_model=ExecutionOut,
    summary="Get an execution: status, per-step status, progress, timings, result",
    responses={**_execution_links(200, "The execution."), **problems(401, 404, 422)},
)
async def get_execution(
    request: Request,
    execution_id: uuid.UUID,
    principal: ViewerDep,
    session: SessionDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
    wait: WaitQuery = 0,
) -> ExecutionOut:
    if wait > 0:
        hold_open(request.scope)
    service = ExecutionService(session, settings, runtime.content)
    execution = await service.get(principal, execution_id)
    await service.wait(execution, wait, runtime)
    return await service.view(principal, execution_id)


@router.get(
    "/executions/{execution_id}/steps",
    response_model=list[StepOut],
    summary="An execution's steps in workflow order",
    responses=problems(401, 404, 422),
)
async def list_execution_steps(
    execution_id: uuid.UUID,
    principal: ViewerDep,
    session: SessionDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
) -> list[StepOut]:
    service = ExecutionService(session, settings, runtime.content)
    execution = await service.get(principal, execution_id)
    return [StepOut.model_validate(s) for s in await service.steps(execution)]


@router.get(
    "/executions/{execution_id}/context",
    response_model=ContextOut,
    summary="An execution's shared context: current values and every versioned write",
    responses=problems(401, 404, 422),
)
async def get_execution_context(
    execution_id: uuid.UUID,
    principal: ViewerDep,
    session: SessionDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
) -> ContextOut:
    service = ExecutionService(session, settings, runtime.content)
    history = await service.context(await service.get(principal, execution_id))
    current = {entry.key: entry.value for entry in history}  # ordered by version per key
    return ContextOut(current=current, history=[ContextValueOut.model_validate(e) for e in history])


@router.get(
    "/executions/{execution_id}/messages",
    response_model=list[MessageOut],
    summary="Messages the execution's agents sent each other",
    description="Direct messages, broadcasts, and requests with their responses (paired by "
    "`correlation_id`), oldest first. `agent_id` keeps those the agent sent or received.",
    responses=problems(401, 404, 422),
)
async def list_execution_messages(
    execution_id: uuid.UUID,
    principal: ViewerDep,
    session: SessionDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
    after: Annotated[int, Query(ge=0, description="Only messages with a larger `seq`.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    kind: MessageKindName | None = None,
    agent_id: uuid.UUID | None = None,
) -> list[MessageOut]:
    service = ExecutionService(session, settings, runtime.content)
    execution = await service.get(principal, execution_id)
    rows = await service.messages(execution, after=after, limit=limit, kind=kind, agent_id=agent_id)
    return [MessageOut.model_validate(r) for r in rows]


async def _sse(
    events: AsyncIterator[EventOut | None], shutdown: GracefulShutdown
) -> AsyncIterator[str]:
    with shutdown.hold():
        yield "retry: 2000\n\n"
        try:
            async for event in events:
                if event is None:
                    yield ": keep-alive\n\n"
                    continue
                payload = json.dumps(event.model_dump(mode="json"), separators=(",", ":"))
                yield f"id: {event.seq}\nevent: {event.type}\ndata: {payload}\n\n"
        except StreamsClosed:
            # The stream ends here; the client reconnects (to another process) and resumes
            # after the last id it got.
            yield ": server shutting down; reconnect with Last-Event-ID\n\n"


@router.get(
    "/executions/{execution_id}/events",
    response_model=list[EventOut],
    summary="An execution's events, as JSON or as a live Server-Sent Events stream",
    description="With `Accept: text/event-stream` the events stream live (each with `id:` "
    "its sequence number) until the execution ends, resuming after `Last-Event-ID` or "
    "`?after=`; idle streams get a keep-alive comment every 15 seconds. A server that shuts "
    "down ends its streams at once (reconnect, to resume where you were).",
    responses={
        **problems(401, 404, 422),
        200: {
            "description": "The events after `after`, oldest first.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
    },
)
async def list_execution_events(
    execution_id: uuid.UUID,
    request: Request,
    principal: ViewerDep,
    session: SessionDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
    shutdown: ShutdownDep,
    after: Annotated[int, Query(ge=0, description="Only events with a larger sequence.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    # A header is absent or a number; never "null" (the schema must not say it may be).
    last_event_id: Annotated[
        int | None, Header(ge=0), WithJsonSchema({"type": "integer", "minimum": 0})
    ] = None,
) -> Any:
    service = ExecutionService(session, settings, runtime.content)
    execution = await service.get(principal, execution_id)
    start = max(after, last_event_id or 0)
    if "text/event-stream" in request.headers.get("accept", ""):
        hold_open(request.scope)  # a stream lasts as long as the client wants
        events = await service.follow(execution, start, runtime, SSE_HEARTBEAT_SECONDS)
        return StreamingResponse(
            _sse(events, shutdown),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    rows = await service.events(execution, after=start, limit=limit)
    return [EventOut.model_validate(r) for r in rows]


@router.post(
    "/executions/{execution_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ExecutionOut,
    summary="Cancel an execution",
    description="Once this returns, no new step starts. `immediate` also abandons in-flight "
    "model calls; `after_step` lets them finish.",
    responses={
        **_execution_links(
            202,
            "The cancel was accepted: the execution with its `cancel_mode`, `running` while its "
            "steps stop (or already `cancelled`, or ended by the time `wait` ran out).",
        ),
        **problems(400, 401, 403, 404, 409, 422),
    },
)
async def cancel_execution(
    execution_id: uuid.UUID,
    principal: MemberDep,
    session: SessionDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
    body: Annotated[
        ExecutionCancel | None, Body(openapi_examples=EXECUTION_CANCEL_EXAMPLES)
    ] = None,
    wait: WaitQuery = 0,
) -> ExecutionOut:
    mode = body.mode if body else DEFAULT_CANCEL_MODE
    service = ExecutionService(session, settings, runtime.content)
    execution = await service.cancel(principal, execution_id, mode, runtime.runner, runtime.hub)
    runtime.cache.changed("executions", execution.account_id)
    await service.wait(execution, wait, runtime)
    return await service.view(principal, execution_id)
