"""The effective configuration as people see it: every setting with its value, masked where it
is a secret (secret fields, passwords inside URLs, every value of a secret map), and the source
it came from. ``renum config show`` prints it; the ops endpoint serves it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr

from app.core.config import Settings

MASK = "********"


@dataclass(frozen=True)
class SettingView:
    setting: str  # dotted: database.pool_size
    variable: str  # RENUM_DATABASE__POOL_SIZE
    value: Any  # JSON-ready, secrets masked
    source: str
    secret: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "setting": self.setting,
            "variable": self.variable,
            "value": self.value,
            "source": self.source,
            "secret": self.secret,
        }


def mask_url(url: str) -> str:
    """A URL with its password (if any) replaced by the mask."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:{MASK}@{host}", parts.path, parts.query, ""))


def _plain(value: Any) -> tuple[Any, bool]:
    """A JSON-ready value, and whether anything secret was masked in it."""
    if isinstance(value, SecretStr):
        return (MASK if value.get_secret_value() else ""), True
    if isinstance(value, Enum):
        return value.value, False
    if isinstance(value, Path):
        return str(value), False
    if isinstance(value, BaseModel):
        pairs = {k: _plain(getattr(value, k)) for k in type(value).model_fields}
        return {k: v for k, (v, _) in pairs.items()}, any(s for _, s in pairs.values())
    if isinstance(value, dict):
        pairs = {str(k): _plain(v) for k, v in value.items()}
        return {k: v for k, (v, _) in pairs.items()}, any(s for _, s in pairs.values())
    if isinstance(value, list | tuple):
        items = [_plain(v) for v in value]
        return [v for v, _ in items], any(s for _, s in items)
    if isinstance(value, str) and "://" in value:
        masked = mask_url(value)
        return masked, masked != value
    if isinstance(value, int | float | bool | str) or value is None:
        return value, False
    return str(value), False


def _source(dotted: str, sources: dict[str, str]) -> str:
    if dotted in sources:
        return sources[dotted]
    for key, source in sources.items():
        if key.startswith(f"{dotted}."):
            return source
    return "default"


def effective_configuration(settings: Settings, sources: dict[str, str]) -> list[SettingView]:
    """Every leaf setting (sections flattened), in the model's order."""
    views: list[SettingView] = []

    def walk(model: BaseModel, prefix: str) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            dotted = f"{prefix}{name}"
            if isinstance(value, BaseModel):
                walk(value, f"{dotted}.")
                continue
            shown, secret = _plain(value)
            variable = "RENUM_" + dotted.upper().replace(".", "__")
            views.append(SettingView(dotted, variable, shown, _source(dotted, sources), secret))

    walk(settings, "")
    return views


def fingerprint(settings: Settings) -> str:
    """A short hash of the effective non-secret configuration plus which secrets are set
    (never their values; a list or map holding secrets, such as the alert channels, counts by
    its masked value): two processes with the same fingerprint run the same configuration."""
    summary = [
        (view.setting, _fingerprinted(view.value) if view.secret else view.value)
        for view in effective_configuration(settings, {})
    ]
    digest = hashlib.sha256(json.dumps(summary, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _fingerprinted(masked: Any) -> Any:
    """What a secret setting adds to the fingerprint: whether it is set, or for a list or map
    its masked value (its other fields do count; its secrets show as the mask)."""
    return masked if isinstance(masked, (list, dict)) else bool(masked)
