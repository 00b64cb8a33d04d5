"""Executions' content sealed at rest (issue 17), per account, with the API unchanged.

What is content: an execution's prompt, variables, result and error; its steps' input, output
and error; its context values; its messages' bodies; and the fields of its events that carry
outputs or errors (``step_completed.output``, ``step_failed.error``, the ending events'
``error``). Error texts count as content: a template's error quotes the template and the
values it read, a builtin agent's error what the tenant's template raised. Names, ids,
statuses, reasons, counts, tokens, costs and times stay readable (the engine, the ledger,
metrics and lists need them; none carries what a prompt or an output said).

How it is stored: in the same columns, each value sealed with ``SecretBox`` (AES-256-GCM,
``v1:<key id>:<base64>``); a JSON column holds the sealed JSON text as a JSON string. A row
says whether its content is sealed in ``content_key_id`` (the key that sealed it; NULL:
plaintext), so a user's content that looks like a sealed value is never taken for one.
Associated data binds each value to its table, column, row, execution and account
(``content_aad``): a value copied to another row, execution or account does not open (a
``CryptoError``, never someone else's plaintext).

When: an execution is sealed if its account is listed when it is created
(``SealingPolicy``, which the security capability sets from
``security.content_encryption.accounts``); everything the engine writes for it afterwards is
sealed too, so an execution is never half plaintext. Opening does not depend on the policy:
every reader opens what a row says is sealed, whatever the settings now (the switch's
rollback stops sealing new executions; it never makes stored content unreadable). Rows that
are not sealed cost a ``content_key_id is None`` test to read, and the policy's set
membership once per execution created.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from app.core.config import ContentEncryptionSettings, Settings
from app.core.crypto import CryptoError, SecretBox
from app.services.engine.events import (
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    StepCompleted,
    StepFailed,
)

AAD_PREFIX = "execution_content:v1"
ALL_ACCOUNTS = "*"

EXECUTIONS = "executions"
STEPS = "execution_steps"
CONTEXT = "execution_context"
MESSAGES = "execution_messages"
EVENTS = "execution_events"

# The sealed columns of each table: text ones hold the sealed string, JSON ones the sealed
# JSON text as a JSON string.
TEXT_COLUMNS: dict[str, tuple[str, ...]] = {
    EXECUTIONS: ("prompt", "error"),
    STEPS: ("input", "output", "error"),
}
JSON_COLUMNS: dict[str, tuple[str, ...]] = {
    EXECUTIONS: ("variables", "result"),
    CONTEXT: ("value",),
    MESSAGES: ("body",),
}
# The fields of an event's ``data`` sealed (each as JSON text), by event type; the rest of
# the data (step names, statuses, reasons, counts) stays readable.
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    StepCompleted.type: ("output",),
    StepFailed.type: ("error",),
    ExecutionCompleted.type: ("error",),
    ExecutionFailed.type: ("error",),
    ExecutionCancelled.type: ("error",),
}
TABLES = (EXECUTIONS, STEPS, CONTEXT, MESSAGES, EVENTS)

R = TypeVar("R")


def content_aad(
    table: str, column: str, row_id: uuid.UUID, execution_id: uuid.UUID, account_id: uuid.UUID
) -> str:
    """The associated data of one sealed value: its table, column (``data.<field>`` for an
    event's field), row, execution and account."""
    return f"{AAD_PREFIX}:{table}:{column}:{row_id}:{execution_id}:{account_id}"


@dataclass(frozen=True)
class SealingPolicy:
    """Which accounts' new executions are sealed."""

    accounts: frozenset[uuid.UUID] = frozenset()
    everyone: bool = False

    @classmethod
    def from_settings(cls, settings: ContentEncryptionSettings) -> SealingPolicy:
        listed = settings.accounts
        return cls(
            frozenset(uuid.UUID(a) for a in listed if a != ALL_ACCOUNTS), ALL_ACCOUNTS in listed
        )

    @property
    def active(self) -> bool:
        return self.everyone or bool(self.accounts)

    def seals(self, account_id: uuid.UUID) -> bool:
        return self.everyone or account_id in self.accounts


NOTHING = SealingPolicy()


class ExecutionContent:
    """Seals and opens executions' content. ``policy`` decides which new executions are
    sealed (nothing unless the security capability says otherwise); opening needs only the
    keys. Without a ``box``, one is made from ``settings`` the first time a sealed value is
    met."""

    def __init__(
        self,
        box: SecretBox | None = None,
        policy: SealingPolicy = NOTHING,
        *,
        settings: Settings | None = None,
    ) -> None:
        self._box = box
        self._settings = settings
        self.policy = policy

    @property
    def box(self) -> SecretBox:
        if self._box is None:
            if self._settings is None:
                raise CryptoError("no encryption keys to seal or open executions' content")
            self._box = SecretBox.from_settings(self._settings)
        return self._box

    def new_key(self, account_id: uuid.UUID) -> str | None:
        """The key that seals a new execution of ``account_id`` (None: it stays plaintext)."""
        return self.box.current_key_id if self.policy.seals(account_id) else None

    # -- one value -----------------------------------------------------------------------------

    def seal_text(self, value: str | None, aad: str, key_id: str | None = None) -> str | None:
        return None if value is None else self.box.seal(value, aad, key_id)

    def open_text(self, value: str | None, aad: str) -> str | None:
        return None if value is None else self.box.open(value, aad)

    def seal_json(self, value: Any, aad: str, key_id: str | None = None) -> Any:
        """``value`` as sealed JSON text (None stays None: a JSON null says nothing)."""
        if value is None:
            return None
        return self.box.seal(json.dumps(value, ensure_ascii=False), aad, key_id)

    def open_json(self, value: Any, aad: str) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):
            raise CryptoError("not a sealed value")
        return json.loads(self.box.open(value, aad))

    # -- rows ----------------------------------------------------------------------------------

    def seal_row(
        self,
        table: str,
        values: Mapping[str, Any],
        *,
        row_id: uuid.UUID,
        execution_id: uuid.UUID,
        account_id: uuid.UUID,
        key_id: str | None = None,
    ) -> dict[str, Any]:
        """``values`` (some of a row's columns) with their content columns sealed."""
        sealed = dict(values)
        for column in TEXT_COLUMNS.get(table, ()):
            if column in sealed:
                aad = content_aad(table, column, row_id, execution_id, account_id)
                sealed[column] = self.seal_text(sealed[column], aad, key_id)
        for column in JSON_COLUMNS.get(table, ()):
            if column in sealed:
                aad = content_aad(table, column, row_id, execution_id, account_id)
                sealed[column] = self.seal_json(sealed[column], aad, key_id)
        return sealed

    def open_row(
        self,
        table: str,
        values: Mapping[str, Any],
        *,
        row_id: uuid.UUID,
        execution_id: uuid.UUID,
        account_id: uuid.UUID,
    ) -> dict[str, Any]:
        """``values`` (some of a sealed row's columns) with their content columns opened."""
        opened = dict(values)
        for column in TEXT_COLUMNS.get(table, ()):
            if column in opened:
                aad = content_aad(table, column, row_id, execution_id, account_id)
                opened[column] = self.open_text(opened[column], aad)
        for column in JSON_COLUMNS.get(table, ()):
            if column in opened:
                aad = content_aad(table, column, row_id, execution_id, account_id)
                opened[column] = self.open_json(opened[column], aad)
        return opened

    @staticmethod
    def event_has_content(event_type: str) -> bool:
        return event_type in EVENT_FIELDS

    def seal_event(
        self,
        event_type: str,
        data: Mapping[str, Any],
        *,
        row_id: uuid.UUID,
        execution_id: uuid.UUID,
        account_id: uuid.UUID,
        key_id: str | None = None,
    ) -> dict[str, Any]:
        sealed = dict(data)
        for name in EVENT_FIELDS.get(event_type, ()):
            if name in sealed:
                aad = content_aad(EVENTS, f"data.{name}", row_id, execution_id, account_id)
                sealed[name] = self.seal_json(sealed[name], aad, key_id)
        return sealed

    def open_event(
        self,
        event_type: str,
        data: Mapping[str, Any],
        *,
        row_id: uuid.UUID,
        execution_id: uuid.UUID,
        account_id: uuid.UUID,
    ) -> dict[str, Any]:
        opened = dict(data)
        for name in EVENT_FIELDS.get(event_type, ()):
            if name in opened:
                aad = content_aad(EVENTS, f"data.{name}", row_id, execution_id, account_id)
                opened[name] = self.open_json(opened[name], aad)
        return opened

    # -- ORM rows, as the API reads them -------------------------------------------------------

    def opened(self, row: R, account_id: uuid.UUID) -> R:
        """An ORM row of an execution's tables as the API returns it: the row itself when it
        is plaintext, else a detached copy (never in a session, so never written back) with
        its content opened."""
        key_id: str | None = getattr(row, "content_key_id", None)
        if key_id is None:
            return row
        table = row.__table__.name  # type: ignore[attr-defined]
        values = {c.key: getattr(row, c.key) for c in row.__table__.columns}  # type: ignore[attr-defined]
        row_id = values["id"]
        execution_id = row_id if table == EXECUTIONS else values["execution_id"]
        if table == EVENTS:
            values["data"] = self.open_event(
                values["type"],
                values["data"],
                row_id=row_id,
                execution_id=execution_id,
                account_id=account_id,
            )
        else:
            values = self.open_row(
                table, values, row_id=row_id, execution_id=execution_id, account_id=account_id
            )
        copy: R = type(row)(**values)
        return copy

    def opened_all(self, rows: Sequence[R], account_id: uuid.UUID) -> list[R]:
        return [self.opened(row, account_id) for row in rows]
