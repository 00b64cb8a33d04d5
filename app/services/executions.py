"""Executions as the API sees them: start one (within the account's concurrency limit), read
its state (with its progress), steps, context, messages and events, wait for it, follow it
live, cancel it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.crypto import CryptoError
from app.core.errors import Conflict, NotFound, TooManyRequests, ValidationFailed
from app.db.base import utcnow
from app.db.database import SQLAlchemyManager
from app.models import (
    ContextEntry,
    Execution,
    ExecutionEvent,
    ExecutionMessage,
    ExecutionStatus,
    ExecutionStep,
    Role,
    StepStatus,
)
from app.repositories.base import Position
from app.repositories.executions import ExecutionRepository
from app.repositories.messages import MessageRepository
from app.repositories.teams import TeamRepository
from app.schemas.executions import (
    CANCEL_MODES,
    CancelMode,
    EventOut,
    ExecutionCreate,
    ExecutionOut,
    StepOut,
)
from app.services.content import EXECUTIONS, ExecutionContent
from app.services.engine.events import TERMINAL_EVENT_TYPES, ExecutionCancelled
from app.services.engine.runner import ExecutionDispatcher
from app.services.events import EventHub, StreamsClosed, wait_for
from app.services.principal import Principal
from app.services.teams import TeamService
from app.services.webhooks import enqueue_cancelled_before_start
from app.services.workflows import default_workflow

if TYPE_CHECKING:
    from app.services.runtime import Runtime

STEP_ENDS = frozenset(
    {StepStatus.completed, StepStatus.failed, StepStatus.skipped, StepStatus.cancelled}
)


def is_terminal(execution: Execution) -> bool:
    return ExecutionStatus(execution.status).terminal


def progress(steps: Sequence[ExecutionStep]) -> float:
    """The share of steps that reached an end state, 0 to 1 (1 for an execution without
    steps)."""
    done = sum(1 for step in steps if StepStatus(step.status) in STEP_ENDS)
    return round(done / len(steps), 4) if steps else 1.0


def cancel_mode(value: object) -> CancelMode:
    """``value`` as a cancel mode (one of ``CANCEL_MODES``, the cancel request's schema);
    ``ValidationFailed`` when it is none of them."""
    if isinstance(value, str) and value in CANCEL_MODES:
        return value
    raise ValidationFailed.at("/body/mode", f"mode is {' or '.join(CANCEL_MODES)}")


class ExecutionService:
    """``content`` seals the content of the executions it starts for the accounts its policy
    lists, and opens whatever it reads that is sealed (without it: nothing is sealed, and
    sealed content is opened with the keys of ``settings``)."""

    def __init__(
        self, session: AsyncSession, settings: Settings, content: ExecutionContent | None = None
    ) -> None:
        self.session = session
        self.settings = settings
        self.executions = ExecutionRepository(session)
        self.content = content if content is not None else ExecutionContent(settings=settings)

    async def create(
        self,
        principal: Principal,
        team_id: uuid.UUID,
        data: ExecutionCreate,
        dispatcher: ExecutionDispatcher,
    ) -> Execution:
        principal.require(Role.member)
        team = await TeamService(self.session, self.settings.teams).get(principal, team_id)
        members = [m.agent_id for m in await TeamRepository(self.session).members(team.id)]
        workflow = team.workflow or default_workflow(members)
        if not workflow["steps"]:
            raise Conflict("The team has no agents to run; add members first.")
        limit = self.settings.executions.max_concurrent_per_account
        if not await self.executions.reserve_slot(team.account_id, limit):
            await self.session.rollback()
            raise TooManyRequests(
                f"The account already runs {limit} executions, its limit; retry when one ends."
            )
        content: dict[str, Any] = {"prompt": data.prompt, "variables": data.variables}
        execution_id = uuid.uuid4()
        key_id = self.content.new_key(team.account_id)
        if key_id is not None:  # sealed at rest, bound to this row (app.services.content)
            content = self.content.seal_row(
                EXECUTIONS,
                content,
                row_id=execution_id,
                execution_id=execution_id,
                account_id=team.account_id,
                key_id=key_id,
            )
        execution = Execution(
            id=execution_id,
            account_id=team.account_id,
            team_id=team.id,
            created_by=principal.user_id,
            workflow_version=team.workflow_version,
            workflow=workflow,
            budget=data.budget.model_dump(mode="json", exclude_none=True),
            status=ExecutionStatus.pending.value,
            content_key_id=key_id,
            **content,
        )
        self.executions.add(execution)
        await self.session.flush()
        for position, step in enumerate(workflow["steps"]):
            self.session.add(
                ExecutionStep(
                    execution_id=execution.id,
                    step_key=step["id"],
                    position=position,
                    agent_id=uuid.UUID(step["agent_id"]),
                    status=StepStatus.pending.value,
                )
            )
        await self.session.commit()
        dispatcher.submit(execution.id)
        return execution

    async def get(self, principal: Principal, execution_id: uuid.UUID) -> Execution:
        execution = await self.executions.get(execution_id, principal.scope)
        if execution is None:
            raise NotFound("No execution with this id.")
        return execution

    async def view(self, principal: Principal, execution_id: uuid.UUID) -> ExecutionOut:
        """The execution as it stands now (re-read), with its steps and progress."""
        execution = await self.get(principal, execution_id)
        await self.session.refresh(execution)
        steps = await self.steps(execution)
        execution = self.content.opened(execution, execution.account_id)
        return ExecutionOut.model_validate(
            {
                **{
                    column: getattr(execution, column)
                    for column in ExecutionOut.model_fields
                    if hasattr(execution, column)
                },
                "strategy": execution.workflow.get("strategy", "sequential"),
                "progress": progress(steps),
                "steps": [StepOut.model_validate(step) for step in steps],
            }
        )

    async def wait(self, execution: Execution, seconds: float, runtime: Runtime) -> None:
        """Return when the execution has ended or ``seconds`` (capped by the server's
        ``executions.max_wait_seconds``) have passed; no transaction is held meanwhile."""
        seconds = min(seconds, self.settings.executions.max_wait_seconds)
        if seconds <= 0 or is_terminal(execution):
            return
        await self.session.commit()  # hold no transaction while waiting
        await wait_for_end(runtime.database, runtime.hub, execution.id, seconds)

    async def follow(
        self, execution: Execution, after: int, runtime: Runtime, idle_seconds: float
    ) -> AsyncIterator[EventOut | None]:
        """The execution's events live, after ``after`` (see ``event_stream``). This session's
        transaction ends first: the stream reads with short sessions of its own."""
        execution_id = execution.id
        await self.session.commit()
        return event_stream(
            runtime.database, runtime.hub, execution_id, after, idle_seconds, self.content
        )

    async def page(
        self,
        principal: Principal,
        *,
        team_id: uuid.UUID | None,
        status: str | None,
        limit: int,
        offset: int,
        after: Position | None = None,
    ) -> tuple[Sequence[Execution], int, int]:
        """A page of the caller's executions (``ExecutionRepository.page_filtered``): after
        the position ``after`` when given (only its account's rows, wherever it points),
        else ``offset`` rows in; with the total and the page's offset."""
        return await self.executions.page_filtered(
            principal.scope,
            team_id=team_id,
            status=status,
            limit=limit,
            offset=offset,
            after=after,
        )

    # What these return is opened: rows sealed at rest come as detached copies in plaintext.

    async def steps(self, execution: Execution) -> list[ExecutionStep]:
        rows = await self.executions.steps(execution.id)
        return self.content.opened_all(rows, execution.account_id)

    async def context(self, execution: Execution) -> list[ContextEntry]:
        """Every write, by key (in code point order, whatever the database's collation) and
        then by version."""
        rows = await self.executions.context_history(execution.id)
        opened = self.content.opened_all(rows, execution.account_id)
        return sorted(opened, key=lambda entry: (entry.key, entry.version))

    async def events(self, execution: Execution, *, after: int, limit: int) -> list[ExecutionEvent]:
        rows = await self.executions.events(execution.id, after=after, limit=limit)
        return self.content.opened_all(rows, execution.account_id)

    async def messages(
        self,
        execution: Execution,
        *,
        after: int,
        limit: int,
        kind: str | None,
        agent_id: uuid.UUID | None,
    ) -> list[ExecutionMessage]:
        rows = await MessageRepository(self.session).list(
            execution.id, after=after, limit=limit, kind=kind, agent_id=agent_id
        )
        return self.content.opened_all(rows, execution.account_id)

    async def cancel(
        self,
        principal: Principal,
        execution_id: uuid.UUID,
        requested_mode: object,
        dispatcher: ExecutionDispatcher,
        hub: EventHub,
    ) -> Execution:
        """Cancel in ``requested_mode`` (checked first: ``ValidationFailed`` unless it is one of
        ``CANCEL_MODES``); once this returns no new step starts."""
        mode = cancel_mode(requested_mode)
        principal.require(Role.member)
        execution = await self.get(principal, execution_id)
        if is_terminal(execution):
            raise Conflict(f"The execution already ended ({execution.status}).")
        now = utcnow()
        if await self.executions.cancel_pending(execution.id, mode, now):
            await self.executions.release_slot(execution.account_id)
            await self.executions.append_events(
                execution.id,
                [ExecutionCancelled(ExecutionStatus.cancelled, "cancelled", None).stored()],
            )
            await enqueue_cancelled_before_start(self.session, execution, now)  # its webhooks
            await self.session.commit()
            hub.notify(execution.id)
            return execution
        await self.executions.request_cancel(execution.id, mode)
        await self.session.commit()
        if mode == "immediate":
            dispatcher.interrupt(execution.id)
        return execution


async def wait_for_end(
    database: SQLAlchemyManager, hub: EventHub, execution_id: uuid.UUID, seconds: float
) -> None:
    """Return when the execution has ended, ``seconds`` have passed or the process is
    shutting down."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    with hub.listening(execution_id) as signal:
        while not hub.closed:
            signal.clear()
            async with database.session() as session:
                execution = await session.get(Execution, execution_id)
                if execution is None or is_terminal(execution):
                    return
            left = deadline - loop.time()
            if left <= 0:
                return
            await wait_for(signal, min(left, 1.0))


TERMINAL_EVENTS = frozenset(cls.type for cls in TERMINAL_EVENT_TYPES)


async def event_stream(
    database: SQLAlchemyManager,
    hub: EventHub,
    execution_id: uuid.UUID,
    after: int,
    idle_seconds: float,
    content: ExecutionContent | None = None,
) -> AsyncIterator[EventOut | None]:
    """Yield the execution's events after ``after`` as they are committed, until it ends;
    ``None`` marks ``idle_seconds`` without news (a keep-alive). Each read uses its own short
    session, so a long stream holds no transaction. Raises ``StreamsClosed`` when the process
    shuts down (the client resumes elsewhere after the last event it got). Events sealed at
    rest are opened with ``content``."""
    last = after
    account_id: uuid.UUID | None = None  # the execution's, read once a sealed event comes
    with hub.listening(execution_id) as signal:
        while True:
            if hub.closed:
                raise StreamsClosed("the server is shutting down")
            signal.clear()
            async with database.session() as session:
                # The status first: if it is final, the events read next include the last one.
                execution = await session.get(Execution, execution_id)
                ended = execution is None or is_terminal(execution)
                rows = await ExecutionRepository(session).events(
                    execution_id, after=last, limit=500
                )
            for row in rows:
                last = row.seq
                if row.content_key_id is not None:
                    if account_id is None and execution is not None:
                        account_id = execution.account_id
                    if content is None or account_id is None:
                        raise CryptoError("a sealed event and nothing to open it with")
                    row = content.opened(row, account_id)
                yield EventOut.model_validate(row)
                if row.type in TERMINAL_EVENTS:
                    return
            if rows:
                continue
            if ended:
                return
            if not await wait_for(signal, idle_seconds):
                yield None
