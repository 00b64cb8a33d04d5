"""Each profile's defaults in the generated configuration reference match the code.

The reference's Profiles table is parsed back from the page ``renum docs generate`` writes (and
from the committed page): it has a column for every profile of ``app/core/profiles.py``, a row
for every setting a profile sets, and in each cell that profile's value (``-`` where the
profile leaves the model's default). Settings built in each environment take those values, from
the source ``profile``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import pytest

from app.capabilities.docs.generator import settings_rows
from app.core.config import Environment, Settings
from app.core.config_sources import setting_sources
from app.core.profiles import PROFILES
from app.main import reference_docs

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED = REPO_ROOT / "docs" / "reference" / "configuration.md"
SETTINGS = {row.path for row in settings_rows(Settings)}
UNSET = object()  # a cell showing `-`: the profile leaves the model's default


def profile_values(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """A profile's values by dotted setting name (a mapping that is a setting's value is one
    value, not a group)."""
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in SETTINGS:
            yield from profile_values(value, f"{dotted}.")
        else:
            yield dotted, value


EXPECTED = {name: dict(profile_values(profile)) for name, profile in PROFILES.items()}
PROFILED = sorted({setting for values in EXPECTED.values() for setting in values})


def _cells(row: str) -> list[str]:
    assert row.startswith("| "), f"not a table row: {row!r}"
    assert row.endswith(" |"), f"not a table row: {row!r}"
    return row[2:-2].split(" | ")


def _cell_value(cell: str, expected: Any) -> Any:
    """What a cell shows, as a value comparable with the profile's: ``-`` is UNSET, a code span
    is its text (a string setting) or the JSON it holds."""
    if cell == "-":
        return UNSET
    text = cell[3:-3] if cell.startswith("`` ") else cell.strip("`")
    return text if isinstance(expected, str) else json.loads(text)


def profiles_table(page: str) -> tuple[list[str], dict[str, list[str]]]:
    """The Profiles table of a configuration reference page: its profile names, and each
    row's cells by setting."""
    assert "\n## Profiles\n" in page, "the configuration reference has no Profiles section"
    section = page.split("\n## Profiles\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header, rule, *body = rows
    first, *names = _cells(header)
    assert first == "Setting"
    assert set(_cells(rule)) == {"---"}
    table: dict[str, list[str]] = {}
    for row in body:
        setting, *cells = _cells(row)
        assert setting == f"`{setting.strip('`')}`", f"not a setting's name: {row!r}"
        assert setting.strip("`") not in table, f"{setting} has two rows"
        assert len(cells) == len(names), f"{setting}: {len(cells)} cells for {len(names)} profiles"
        table[setting.strip("`")] = cells
    return names, table


@pytest.fixture(params=["generated", "committed"])
def page(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The configuration reference, as ``renum docs generate`` writes it now (into a tmp
    folder), and as committed in docs/reference."""
    if request.param == "committed":
        return COMMITTED.read_text(encoding="utf-8")
    directory = tmp_path / "reference"
    reference_docs().write(directory)
    return (directory / "configuration.md").read_text(encoding="utf-8")


def test_every_environment_has_a_profile_of_real_settings() -> None:
    assert set(PROFILES) == {environment.value for environment in Environment}
    unknown = sorted(set(PROFILED) - SETTINGS)
    assert not unknown, f"profiles set what is not a setting of the model: {unknown}"


def test_the_table_has_every_profile_and_every_profiled_setting(page: str) -> None:
    names, table = profiles_table(page)
    assert names == list(PROFILES)
    missing = sorted(set(PROFILED) - set(table))
    assert not missing, f"settings a profile sets but the Profiles table lacks: {missing}"
    extra = sorted(set(table) - set(PROFILED))
    assert not extra, f"rows of the Profiles table that no profile sets: {extra}"


def test_each_cell_shows_the_profiles_value(page: str) -> None:
    names, table = profiles_table(page)
    wrong = []
    for column, name in enumerate(names):
        for setting in PROFILED:
            if setting not in table:
                wrong.append(f"{setting}: no row in the Profiles table")
                continue
            expected = EXPECTED[name].get(setting, UNSET)
            shown = _cell_value(table[setting][column], expected)
            if shown != expected:
                wrong.append(f"{name} {setting}: the table shows {shown!r}, the code {expected!r}")
    assert not wrong, "\n".join(wrong)


def test_the_cell_parser_tells_values_apart() -> None:
    assert _cell_value("-", 5) is UNSET
    assert _cell_value("`20`", 5) == 20
    assert _cell_value("`false`", True) is False
    assert _cell_value("`json`", "console") == "json"
    assert _cell_value('`{"a": 1}`', {}) == {"a": 1}
    assert _cell_value("`` a`b ``", "x") == "a`b"
    names, table = profiles_table(
        "# Ref\n\n## Profiles\n\nText.\n\n| Setting | dev | prod |\n| --- | --- | --- |\n"
        "| `a.b` | `1` | - |\n\n## Next\n\n| `c` | `2` | `3` |\n"
    )
    assert (names, table) == (["dev", "prod"], {"a.b": ["`1`", "-"]})


@pytest.mark.parametrize("environment", list(Environment), ids=str)
def test_settings_take_the_profiles_values(environment: Environment) -> None:
    settings = Settings(environment=environment)
    sources = setting_sources(Settings, environment=environment)
    for setting, expected in EXPECTED[environment.value].items():
        value: Any = settings
        for part in setting.split("."):
            value = getattr(value, part)
        if isinstance(value, Enum):
            value = value.value
        assert value == expected, f"{environment.value} {setting}: {value!r}, not {expected!r}"
        assert sources[setting] == "profile", f"{environment.value} {setting}: {sources[setting]}"
