"""SQLAlchemy ORM models. Importing this package registers every table on ``Base.metadata``."""

from app.models.account import Account
from app.models.agent import Agent
from app.models.alert import AlertEvaluation, AlertRecord, AlertSilence
from app.models.api_key import ApiKey
from app.models.audit import AuditCheckpoint, AuditEntry, AuditHead
from app.models.delivery import Delivery, DeliveryStatus, Webhook
from app.models.execution import (
    ContextEntry,
    Execution,
    ExecutionEvent,
    ExecutionMessage,
    ExecutionStatus,
    ExecutionStep,
    LedgerEntry,
    MessageKind,
    MessageStatus,
    StepStatus,
)
from app.models.ledger_total import LedgerDailyTotal
from app.models.provider_key import ProviderKey
from app.models.refresh_token import RefreshToken
from app.models.rollup import ExecutionRollup, UsageRollup
from app.models.security_counter import SecurityCounter
from app.models.team import Team, TeamMember, TeamWorkflowVersion
from app.models.user import Role, User

__all__ = [
    "Account",
    "Agent",
    "AlertEvaluation",
    "AlertRecord",
    "AlertSilence",
    "ApiKey",
    "AuditCheckpoint",
    "AuditEntry",
    "AuditHead",
    "ContextEntry",
    "Delivery",
    "DeliveryStatus",
    "Execution",
    "ExecutionEvent",
    "ExecutionMessage",
    "ExecutionRollup",
    "ExecutionStatus",
    "ExecutionStep",
    "LedgerDailyTotal",
    "LedgerEntry",
    "MessageKind",
    "MessageStatus",
    "ProviderKey",
    "RefreshToken",
    "Role",
    "SecurityCounter",
    "StepStatus",
    "Team",
    "TeamMember",
    "TeamWorkflowVersion",
    "UsageRollup",
    "User",
    "Webhook",
]
