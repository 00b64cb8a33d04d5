"""Where the settings come from, highest first: values given in code, environment variables,
the ``.env`` file, the config file named by ``RENUM_CONFIG_FILE`` (TOML, or YAML when PyYAML
is installed), the environment's profile (``app.core.profiles``), the model's defaults.

``setting_sources`` tells, for every setting, which of them gave its value, so that
``renum config show`` and ``GET /api/v1/ops/config`` can say where each value came from.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from app.core.profiles import profile_defaults

if TYPE_CHECKING:
    from collections.abc import Callable

CONFIG_FILE_VARIABLE = "RENUM_CONFIG_FILE"
DEFAULT_ENVIRONMENT = "development"
# Source names, as shown with each value.
SOURCE_NAMES = ("init", "environment", "dotenv", "config_file", "profile", "default")


class ConfigFileError(ValueError):
    """The config file named by RENUM_CONFIG_FILE cannot be read."""


def config_file_path() -> Path | None:
    """The config file the environment names (``RENUM_CONFIG_FILE``), if any."""
    value = os.environ.get(CONFIG_FILE_VARIABLE, "").strip()
    return Path(value) if value else None


class ConfigFileSource(PydanticBaseSettingsSource):
    """The settings in ``RENUM_CONFIG_FILE``: TOML (``.toml``) or YAML (``.yaml``/``.yml``),
    nested by section like the settings (``[database] pool_size = 10``)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None = None) -> None:
        super().__init__(settings_cls)
        self.path = path if path is not None else config_file_path()

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self().get(field_name), field_name, False  # pragma: no cover - __call__ reads all

    def __call__(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        if not self.path.is_file():
            raise ConfigFileError(
                f"{CONFIG_FILE_VARIABLE} names {self.path}, which is not a readable file"
            )
        suffix = self.path.suffix.lower()
        if suffix not in (".toml", ".yaml", ".yml"):
            raise ConfigFileError(
                f"{CONFIG_FILE_VARIABLE} must name a .toml, .yaml or .yml file (got {self.path})"
            )
        try:
            inner: PydanticBaseSettingsSource = (
                TomlConfigSettingsSource(self.settings_cls, toml_file=self.path)
                if suffix == ".toml"
                else YamlConfigSettingsSource(self.settings_cls, yaml_file=self.path)
            )
            return inner()
        except Exception as exc:  # a syntax error (TOML or YAML), with its position
            raise ConfigFileError(f"{self.path} cannot be parsed: {exc}") from exc


class ProfileSource(PydanticBaseSettingsSource):
    """The defaults of the environment's profile: the environment is the one the higher
    sources chose (or ``development``)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self().get(field_name), field_name, False  # pragma: no cover - __call__ reads all

    def __call__(self) -> dict[str, Any]:
        chosen = self.current_state.get("environment", DEFAULT_ENVIRONMENT)
        return profile_defaults(str(getattr(chosen, "value", chosen)))


def ordered_sources(
    settings_cls: type[BaseSettings],
    init_settings: PydanticBaseSettingsSource,
    env_settings: PydanticBaseSettingsSource,
    dotenv_settings: PydanticBaseSettingsSource,
) -> tuple[PydanticBaseSettingsSource, ...]:
    """The sources in priority order, for ``Settings.settings_customise_sources``."""
    return (
        init_settings,
        env_settings,
        dotenv_settings,
        ConfigFileSource(settings_cls),
        ProfileSource(settings_cls),
    )


def _leaves(values: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, f"{dotted}.")
        else:
            yield dotted


def setting_sources(settings_cls: type[BaseSettings], **init: Any) -> dict[str, str]:
    """For every setting given by a source, the name of the highest source that gave it
    (dotted keys: ``database.pool_size``); settings absent here have their default."""
    higher: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("init", InitSettingsSource(settings_cls, init_kwargs=init)),
        ("environment", EnvSettingsSource(settings_cls)),
        ("dotenv", DotEnvSettingsSource(settings_cls)),
        ("config_file", ConfigFileSource(settings_cls)),
    ]
    found: dict[str, str] = {}
    environment: Any = None
    for name, source in higher:
        values = source()
        environment = environment if environment is not None else values.get("environment")
        for key in _leaves(values):
            found.setdefault(key, name)
    chosen = str(getattr(environment, "value", environment or DEFAULT_ENVIRONMENT))
    for key in _leaves(profile_defaults(chosen)):
        found.setdefault(key, "profile")
    return found
