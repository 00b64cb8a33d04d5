"""The reference deployment's systemd units (``deploy/systemd``): systemd itself accepts them
(``systemd-analyze verify``, with the programs pointed at this environment's ``renum``), a
broken one is refused, and every command a unit runs is a command the CLI has."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
INSTALLED = "/opt/renum/bin/renum"
RENUM = Path(sys.executable).parent / "renum"


def here(tmp_path: Path, edit: tuple[str, str] | None = None) -> list[Path]:
    """Copies of the units that run this environment's ``renum`` (and whose environment file
    may be absent), with ``edit`` (old, new) applied."""
    copies = []
    for unit in sorted(UNITS.iterdir()):
        text = unit.read_text().replace(INSTALLED, str(RENUM))
        text = text.replace("EnvironmentFile=/", "EnvironmentFile=-/")
        if edit is not None:
            text = text.replace(*edit)
        copy = tmp_path / unit.name
        copy.write_text(text)
        copies.append(copy)
    return copies


def verify(units: list[Path]) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: the unit session installs Debian's systemd"
    return subprocess.run(  # noqa: S603 - systemd's own tool on files written here
        [analyze, "verify", *map(str, units)], capture_output=True, text=True, check=False
    )


def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    done = verify(here(tmp_path))
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "edit",
    [
        ("OnCalendar=*-*-* 02:30:00", "OnCalendar=every blue moon"),
        (f"ExecStart={RENUM} backup run", "ExecStart=/nonexistent/renum backup run"),
    ],
)
def test_a_broken_unit_is_refused(tmp_path: Path, edit: tuple[str, str]) -> None:
    done = verify(here(tmp_path, edit))
    assert done.returncode != 0
    assert done.stderr


def commands() -> list[list[str]]:
    found = []
    for unit in sorted(UNITS.glob("*.service")):
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                program, *arguments = shlex.split(line.removeprefix("ExecStart="))
                assert program == INSTALLED, line
                found.append(arguments)
    return found


def test_every_timer_starts_a_service_that_exists() -> None:
    for timer in UNITS.glob("*.timer"):
        assert timer.with_suffix(".service").is_file(), timer.name


@pytest.mark.parametrize("arguments", commands(), ids=" ".join)
def test_every_command_a_unit_runs_is_one_the_cli_has(arguments: list[str]) -> None:
    # Options stripped: `--help` on the command itself proves its path and its options.
    options = [a for a in arguments if a.startswith("--")]
    result = CliRunner().invoke(cli, [*arguments, "--help"])
    assert result.exit_code == 0, result.output
    for option in options:
        assert option in result.output, (arguments, option)
