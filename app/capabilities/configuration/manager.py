"""EnvironmentConfigManager: the running configuration, and its reload without a restart.

A reload reads every source again (the ``.env`` file and the config file may have changed; a
process's own environment variables cannot), validates the result like a start would (types,
ranges and the environment's rules), and then applies it all or nothing: settings marked live
(``LIVE`` in ``app.core.config``) take their new values at once, every other changed setting
is reported as needing a restart and keeps its value, and a reload that fails validation
changes nothing and says why. Requests already running keep the settings object they started
with; the next ones see the new one.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, SecretStr, ValidationError

from app.core.config import LIVE, Settings
from app.core.config_rules import Severity, check_settings
from app.core.config_sources import ConfigFileError, setting_sources
from app.core.config_view import fingerprint
from app.core.logging import get_logger
from app.services.audit import AuditTrail
from app.services.principal import Principal

log = get_logger("app.configuration")

ReloadStatus = Literal["applied", "unchanged", "refused"]


@dataclass(frozen=True)
class ReloadResult:
    """What one reload did."""

    status: ReloadStatus
    trigger: str
    at: datetime
    fingerprint: str
    applied: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _leaves(model: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Every leaf setting's raw value by dotted name (secrets compared by their value)."""
    values: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            values |= _leaves(value, f"{prefix}{name}.")
        else:
            values[f"{prefix}{name}"] = value
    return values


def _comparable(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    return value


def is_live(dotted: str) -> bool:
    """Whether a setting reloads without a restart."""
    model: type[BaseModel] = Settings
    *sections, name = dotted.split(".")
    for section in sections:
        annotation = model.model_fields[section].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return False
        model = annotation
    info = model.model_fields.get(name)
    return info is not None and info.json_schema_extra == LIVE


def _with(model: BaseModel, dotted: str, value: Any) -> Any:
    head, _, rest = dotted.partition(".")
    if not rest:
        return model.model_copy(update={head: value})
    return model.model_copy(update={head: _with(getattr(model, head), rest, value)})


def _problem_lines(exc: ValidationError | ConfigFileError) -> list[str]:
    if isinstance(exc, ConfigFileError):
        return [str(exc)]
    lines = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"])
        lines.append(f"{loc}: {error['msg']}" if loc else str(error["msg"]))
    return lines


def read_and_validate(read: Callable[[], Settings] = Settings) -> tuple[Settings | None, list[str]]:
    """Read every source and validate the result like a start would: the settings and no
    problems, or None and every problem (invalid values, an unreadable file, the
    environment's errors). Blocking: it reads the ``.env`` file and the config file."""
    try:
        candidate = read()
    except (ValidationError, ConfigFileError) as exc:
        return None, _problem_lines(exc)
    errors = [
        p.line()
        for p in check_settings(candidate, setting_sources(Settings))
        if p.severity is Severity.error
    ]
    return (None, errors) if errors else (candidate, [])


class EnvironmentConfigManager:
    """Owns the running settings of one app: ``current`` is what new requests see."""

    def __init__(
        self,
        settings: Settings,
        publish: Callable[[Settings], None],
        read: Callable[[], Settings] = Settings,
        audit: Callable[[], AuditTrail] = AuditTrail.disabled,
    ) -> None:
        self.current = settings
        self._audit = audit
        self._publish = publish
        self._read = read
        self._lock = asyncio.Lock()
        self._listeners: list[Callable[[Settings], None]] = [_apply_log_level]
        self.last: ReloadResult | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.current)

    def on_change(self, listener: Callable[[Settings], None]) -> None:
        """Call ``listener`` with the new settings after each applied reload."""
        self._listeners.append(listener)

    async def reload(self, trigger: str, principal: Principal | None = None) -> ReloadResult:
        """Read, validate and apply the configuration (all or nothing); never raises. The
        reload is audited (``config.reload``), by ``principal`` or the system."""
        async with self._lock:
            result = await self._reload(trigger)
            self.last = result
        await self._audit().record(
            "config.reload",
            outcome="failure" if result.status == "refused" else "success",
            principal=principal,
            actor_kind="system",
            details={
                "trigger": trigger,
                "status": result.status,
                "applied": len(result.applied),
                "restart_required": len(result.restart_required),
                "fingerprint": result.fingerprint,
            },
        )
        fields = {
            "trigger": trigger,
            "status": result.status,
            "fingerprint": result.fingerprint,
            "pid": os.getpid(),  # which worker, under `renum serve --workers N`
        }
        if result.status == "refused":
            log.error("configuration_reload_refused", problems=result.problems, **fields)
        else:
            log.info(
                "configuration_reloaded",
                applied=result.applied,
                restart_required=result.restart_required,
                **fields,
            )
        return result

    async def _reload(self, trigger: str) -> ReloadResult:
        now = datetime.now(UTC)
        candidate, errors = await asyncio.to_thread(read_and_validate, self._read)
        if candidate is None:
            return ReloadResult("refused", trigger, now, self.fingerprint, [], [], errors)
        old, new = _leaves(self.current), _leaves(candidate)
        changed = sorted(k for k in new if _comparable(new[k]) != _comparable(old.get(k)))
        live = [name for name in changed if is_live(name)]
        restart = [name for name in changed if name not in live]
        if not live:
            return ReloadResult("unchanged", trigger, now, self.fingerprint, [], restart)
        updated: Any = self.current
        for name in live:
            updated = _with(updated, name, new[name])
        self.current = updated
        self._publish(updated)
        for listener in self._listeners:
            listener(updated)
        return ReloadResult("applied", trigger, now, self.fingerprint, live, restart)


def _apply_log_level(settings: Settings) -> None:
    logging.getLogger().setLevel(settings.log_level)
