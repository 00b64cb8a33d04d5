"""`/api/v1/ops/alerts` and `/api/v1/ops/silences`: the monitor's alerts (active and recent)
and the silences that keep matching alerts from being notified, for platform admins. Both are
read from the database, so every process answers alike."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import status
from pydantic import BaseModel, BeforeValidator, Field

from app.api.deps import AdminDep, AuditDep, SessionDep, SettingsDep
from app.api.input_guard import CheckInputs
from app.api.router import PrefixRouter
from app.capabilities.monitor.alerting import Alert, AlertState
from app.capabilities.monitor.alerts import (
    CHANNEL_KIND,
    RECENT_RESOLVED,
    alert_out,
    to_alert,
    to_silence,
)
from app.core.config import AlertChannelSettings, AlertSettings
from app.core.errors import NotFound, ValidationFailed
from app.db.base import utcnow
from app.models import AlertSilence, User
from app.repositories.alerts import AlertRepository, ChannelStatus, Evaluation
from app.schemas.common import RequestModel, link, links, problems

router = PrefixRouter(prefix="/api/v1/ops", tags=["ops"], dependencies=[CheckInputs])

MAX_SILENCE_MINUTES = 90 * 24 * 60  # the settings' largest silence_max_hours
MATCHER_NAME = r"^[a-z][a-z0-9_]{0,31}$"
# An alert's fields that are not labels: a matcher on one of them would never match.
NOT_LABELS = frozenset({"severity", "state", "fingerprint", "message", "value"})
RECENT_SECONDS = 24 * 3600.0
# The types of the server's own refusals (documented on the operation: app.api.server_rules).
NOT_A_LABEL = "not_a_label"
SILENCE_TOO_LONG = "silence_too_long"


class AlertOut(BaseModel):
    fingerprint: str = Field(description="The alert's identity: its rule and labels.")
    rule: str = Field(examples=["route_error_ratio"])
    severity: str = Field(examples=["critical"], description="info, warning or critical.")
    state: str = Field(examples=["firing"], description="pending, firing or resolved.")
    labels: dict[str, str] = Field(examples=[{"method": "GET", "route": "/api/v1/teams"}])
    value: float = Field(description="The value that triggered it, at the last evaluation.")
    message: str
    diagnostics: list[str] = Field(
        description="What was worth knowing then: the slowest routes, a forecast's basis."
    )
    started_at: datetime = Field(description="When its condition was first seen.")
    fired_at: datetime | None
    resolved_at: datetime | None
    notified_at: datetime | None = Field(description="The last notification sent for it.")
    seen_at: datetime | None = Field(
        description="The last evaluation that found its condition (each evaluation updates it)."
    )
    silenced_by: list[uuid.UUID] = Field(description="The silences in force that match it.")


class ChannelOut(BaseModel):
    name: str = Field(examples=["ops-email"])
    type: str = Field(examples=["email"])
    min_severity: str
    pending: int = Field(description="Notifications waiting to be (re)tried.")
    dead: int = Field(description="Notifications that ran out of attempts.")
    failing: bool = Field(description="Its latest attempted notification failed.")
    last_error: str | None = Field(description="Why, in generic words.")
    last_attempt_at: datetime | None


class AlertsOut(BaseModel):
    active: list[AlertOut] = Field(description="Pending and firing alerts, newest first.")
    recent: list[AlertOut] = Field(description="Resolved within the last day, newest first.")
    channels: list[ChannelOut] = Field(description="Where notifications go besides the log.")
    evaluating: bool = Field(
        description="Whether the rules are evaluated (`RENUM_MONITOR__ALERTS__ENABLED`)."
    )
    evaluated_at: datetime | None = Field(
        description="When the rules were last evaluated, by any process (None: never). Far "
        "behind the evaluation interval, no process evaluates (the database was away, or the "
        "evaluator's host is)."
    )
    evaluated_by: str | None = Field(
        description="The process that evaluated them (`host:pid`).", examples=["api-1:4242"]
    )


def _not_a_boolean(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("Input should be a valid integer")  # JSON's true is not a number
    return value


# An integer as JSON Schema has it: 60 and 60.0, never true.
WholeNumber = Annotated[int, BeforeValidator(_not_a_boolean)]


class SilenceCreate(RequestModel):
    matchers: dict[
        Annotated[str, Field(pattern=MATCHER_NAME)],
        Annotated[str, Field(min_length=1, max_length=200)],
    ] = Field(
        min_length=1,
        max_length=10,
        description="`rule` and label names (`method`, `route`, `check`, `provider`, or a "
        "reported problem's own) with the exact values an alert must have; an alert's "
        "severity, state or fingerprint are not labels.",
        examples=[{"rule": "route_latency_p95", "route": "/api/v1/executions"}],
        # Only names that match the pattern (JSON Schema lets others through otherwise).
        json_schema_extra={"additionalProperties": False},
    )
    reason: str = Field(
        min_length=1,
        max_length=500,
        pattern=r"\S",
        examples=["Known slow import, ticket OPS-42"],
    )
    duration_minutes: WholeNumber = Field(
        ge=1,
        le=MAX_SILENCE_MINUTES,
        description="How long it lasts from now; at most "
        "`RENUM_MONITOR__ALERTS__SILENCE_MAX_HOURS`.",
        examples=[120],
    )


class SilenceOut(BaseModel):
    id: uuid.UUID
    matchers: dict[str, str]
    reason: str
    author: str = Field(description="The admin who created it.")
    starts_at: datetime
    expires_at: datetime
    ended_at: datetime | None = Field(description="When an admin ended it early.")
    active: bool = Field(description="In force now.")


def _silence_out(row: AlertSilence, now: datetime) -> SilenceOut:
    return SilenceOut(
        id=row.id,
        matchers=dict(row.matchers),
        reason=row.reason,
        author=row.author,
        starts_at=row.starts_at,
        expires_at=row.expires_at,
        ended_at=row.ended_at,
        active=row.ended_at is None and row.starts_at <= now < row.expires_at,
    )


def alerts_report(
    alerts: Sequence[Alert],
    silences: Sequence[AlertSilence],
    channels: Mapping[str, ChannelStatus],
    config: AlertSettings,
    now: datetime,
    evaluation: Evaluation | None,
) -> AlertsOut:
    """The alerts (with the silences in force that match each; resolved ones of the last
    day), the channels' state, and the last evaluation."""
    at = now.timestamp()
    in_force = [to_silence(s) for s in silences if s.ended_at is None]

    def out(alert: Alert) -> AlertOut:
        matching = [uuid.UUID(s.id) for s in in_force if s.active(at) and s.matches(alert)]
        return AlertOut(**alert_out(alert), silenced_by=matching)

    active = [a for a in alerts if a.state is not AlertState.resolved]
    active.sort(key=lambda a: a.started_at, reverse=True)
    recent = [
        a
        for a in alerts
        if a.state is AlertState.resolved and (a.resolved_at or 0.0) >= at - RECENT_SECONDS
    ]
    recent.sort(key=lambda a: a.resolved_at or 0.0, reverse=True)
    return AlertsOut(
        active=[out(a) for a in active],
        recent=[out(a) for a in recent[:RECENT_RESOLVED]],
        channels=[
            _channel_out(c, channels.get(CHANNEL_KIND.format(name=c.name))) for c in config.channels
        ],
        evaluating=config.enabled,
        evaluated_at=evaluation.at if evaluation else None,
        evaluated_by=evaluation.by if evaluation else None,
    )


def _channel_out(channel: AlertChannelSettings, state: ChannelStatus | None) -> ChannelOut:
    failing = (
        state is not None and state.last_status != "delivered" and state.last_error is not None
    )
    return ChannelOut(
        name=channel.name,
        type=channel.type,
        min_severity=channel.min_severity,
        pending=state.pending if state else 0,
        dead=state.dead if state else 0,
        failing=failing,
        last_error=state.last_error if state and failing else None,
        last_attempt_at=state.last_attempt_at if state else None,
    )


@router.get(
    "/alerts",
    response_model=AlertsOut,
    summary="Active and recent alerts, and the alert channels' state",
    description="Read from the database: every process answers alike. A channel whose latest "
    "notification failed is `failing`, with the reason in generic words; its notifications "
    "are retried with backoff (`RENUM_DELIVERIES__*`).",
    responses=problems(401, 403),
)
async def list_alerts(_: AdminDep, session: SessionDep, settings: SettingsDep) -> AlertsOut:
    now = utcnow()
    repo = AlertRepository(session)
    config = settings.monitor.alerts
    return alerts_report(
        [to_alert(r) for r in await repo.all()],
        await repo.silences(since=now),
        await repo.channel_status([CHANNEL_KIND.format(name=c.name) for c in config.channels]),
        config,
        now,
        await repo.last_evaluation(),
    )


@router.get(
    "/silences",
    response_model=list[SilenceOut],
    summary="Silences in force, and those ended within the last day",
    responses=problems(401, 403),
)
async def list_silences(_: AdminDep, session: SessionDep) -> list[SilenceOut]:
    now = utcnow()
    rows = await AlertRepository(session).silences(since=now - timedelta(days=1))
    return [_silence_out(row, now) for row in rows]


@router.post(
    "/silences",
    response_model=SilenceOut,
    status_code=status.HTTP_201_CREATED,
    summary="Silence matching alerts for a while",
    description="Alerts whose rule and labels match every matcher still change state and show "
    "in `GET /api/v1/ops/alerts`, but are not notified until the silence expires. A duration "
    "over `RENUM_MONITOR__ALERTS__SILENCE_MAX_HOURS` is a 422.",
    responses={
        **links(
            201,
            "The silence, in force.",
            EndSilence=link("end_silence", "End it now.", silence_id="$response.body#/id"),
        ),
        **problems(401, 403, 422),
    },
)
async def create_silence(
    body: SilenceCreate,
    principal: AdminDep,
    session: SessionDep,
    settings: SettingsDep,
    audit: AuditDep,
) -> SilenceOut:
    for name in body.matchers:
        if name in NOT_LABELS:
            raise ValidationFailed.at(
                f"/body/matchers/{name}",
                f"{name} is not a label: no alert could ever match",
                NOT_A_LABEL,
            )
    longest = settings.monitor.alerts.silence_max_hours * 60
    if body.duration_minutes > longest:
        raise ValidationFailed.at(
            "/body/duration_minutes",
            f"a silence lasts at most {longest:g} minutes",
            SILENCE_TOO_LONG,
        )
    user = await session.get(User, principal.user_id)
    now = utcnow()
    row = AlertSilence(
        matchers=body.matchers,
        reason=body.reason,
        author=user.email if user else str(principal.user_id),
        created_by=principal.user_id,
        starts_at=now,
        expires_at=now + timedelta(minutes=body.duration_minutes),
    )
    AlertRepository(session).add_silence(row)
    await session.commit()
    await audit.record(
        "silence.create",
        principal=principal,
        target=f"silence:{row.id}",
        details={
            "matchers": ",".join(f"{k}={v}" for k, v in sorted(body.matchers.items())),
            "minutes": body.duration_minutes,
            "reason": body.reason,
        },
    )
    return _silence_out(row, now)


@router.delete(
    "/silences/{silence_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="End a silence now",
    description="Matching alerts are notified again as they come due: one that fired under "
    "the silence at the next evaluation, one already notified once its repeat interval has "
    "passed. Ending a silence that already ended changes nothing.",
    responses=problems(401, 403, 404, 422),
)
async def end_silence(
    silence_id: uuid.UUID, principal: AdminDep, session: SessionDep, audit: AuditDep
) -> None:
    row = await AlertRepository(session).silence(silence_id)
    if row is None:
        raise NotFound("No silence with this id.")
    now = utcnow()
    if row.ended_at is None and row.expires_at > now:
        row.ended_at = now
        await session.commit()
        await audit.record("silence.end", principal=principal, target=f"silence:{row.id}")
