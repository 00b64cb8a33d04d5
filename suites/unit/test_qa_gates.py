"""The coverage gate: it must pass good data, fail bad data, and say why."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import coverage
import pytest

from qa.gates import coverage_gate, main

TINY_MODULE = """\
def used(x):
    if x > 0:
        return "positive"
    return "other"


def half_used(flag):
    if flag:
        value = 1
    else:
        value = 2
    return value


def unused(a, b):
    total = 0
    for i in range(a):
        if i % 2:
            total += i
        else:
            total -= b
    while total > 100:
        total //= 2
    return total
"""


def measure(data_dir: Path, name: str, exercise: Callable[[ModuleType], object]) -> None:
    """Import a throwaway module under its own Coverage and save the data as ``.coverage.NAME``.

    The measurement nests inside any coverage run of the suite itself: coverage.py pauses the
    outer collector while this one runs.
    """
    source = data_dir.parent / "tiny_measured.py"
    source.write_text(TINY_MODULE)
    cov = coverage.Coverage(
        data_file=str(data_dir / f".coverage.{name}"),
        config_file=False,
        branch=True,
        include=[str(source)],
    )
    cov.start()
    try:
        spec = importlib.util.spec_from_file_location(f"tiny_measured_{name}", source)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        exercise(module)
    finally:
        cov.stop()
    cov.save()


def total_of(report: str) -> float:
    match = re.search(r"total (\d+\.\d+)%", report)
    assert match, report
    return float(match.group(1))


@pytest.fixture(autouse=True)
def keep_this_process_measured() -> Iterator[None]:
    """These tests create Coverage objects of their own (the gate does). coverage.py takes that
    to mean the process measures itself, and stops the measurement it started automatically
    (``[run] patch = subprocess``) from saving its data: a pytest-xdist worker's. Its data for
    every test the worker ran was lost (a third of the unit session's coverage under ``-n 2``).
    Give the automatic measurement its saving back after each test."""
    automatic = getattr(coverage.process_startup, "coverage", None)
    saving = getattr(automatic, "_auto_save", None)
    yield
    if automatic is not None:
        automatic._auto_save = saving


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def half_covered(data_dir: Path) -> Path:
    measure(data_dir, "half", lambda m: (m.used(1), m.used(-1), m.half_used(True)))
    return data_dir


def test_gate_fails_under_the_threshold(half_covered: Path) -> None:
    result = coverage_gate(half_covered, config_file=False, fail_under=90)
    assert not result.passed
    assert result.name == "coverage"
    assert "coverage gate: FAIL" in result.report
    assert "< required 90.00%" in result.report
    assert "(combined from 1 data files)" in result.report
    assert "tiny_measured.py" in result.report  # the per-file table is part of the report
    assert 40 <= total_of(result.report) < 90


def test_gate_passes_at_or_over_the_threshold(half_covered: Path) -> None:
    result = coverage_gate(half_covered, config_file=False, fail_under=40)
    assert result.passed
    assert "coverage gate: PASS" in result.report
    assert ">= required 40.00%" in result.report


def verdict(report: str) -> tuple[str, float, float]:
    match = re.search(r"gate: (PASS|FAIL): total (\d+\.\d+)% \S+ required (\d+\.\d+)%", report)
    assert match, report
    return match.group(1), float(match.group(2)), float(match.group(3))


def test_gate_report_never_contradicts_its_verdict(half_covered: Path) -> None:
    """With the threshold set to the total the report prints (42.86 for 42.857...), the
    verdict must agree with the printed figures: not "FAIL: total 42.86% < required 42.86%".
    coverage.py itself compares the total rounded to its display precision."""
    shown = total_of(coverage_gate(half_covered, config_file=False, fail_under=0).report)
    result = coverage_gate(half_covered, config_file=False, fail_under=shown)
    word, total, required = verdict(result.report)
    assert (total >= required) == result.passed, result.report.splitlines()[-1]
    assert word == ("PASS" if result.passed else "FAIL")


def test_gate_counts_branches(data_dir: Path) -> None:
    # half_used(True) runs the line `return value` either way, but leaves the `else` branch
    # untaken: branch measurement must show it as a partial branch in the total.
    measure(data_dir, "lines", lambda m: m.half_used(True))
    result = coverage_gate(data_dir, config_file=False, fail_under=0)
    header, _, row = result.report.splitlines()[:3]
    assert header.split() == ["Name", "Stmts", "Miss", "Branch", "BrPart", "Cover"]
    name, statements, missed, branches, partial, _cover = row.split()
    assert name.endswith("tiny_measured.py")
    assert int(branches) > 0
    assert int(partial) >= 1
    lines_only = (int(statements) - int(missed)) / int(statements) * 100
    assert total_of(result.report) != round(lines_only, 2)


def test_gate_combines_every_data_file_and_keeps_them(data_dir: Path) -> None:
    measure(data_dir, "a", lambda m: (m.used(1), m.used(-1)))
    measure(data_dir, "b", lambda m: (m.half_used(True), m.half_used(False), m.unused(300, 1)))
    measure(data_dir, "c", lambda m: m.unused(5, 0))
    result = coverage_gate(data_dir, config_file=False, fail_under=100)
    assert result.passed, result.report
    assert total_of(result.report) == 100.0
    assert "(combined from 3 data files)" in result.report
    assert sorted(p.name for p in data_dir.glob(".coverage.*")) == [
        ".coverage.a",
        ".coverage.b",
        ".coverage.c",
    ]
    assert (data_dir / ".coverage").exists()


def test_gate_reflects_only_the_current_data(data_dir: Path) -> None:
    """A combined file left by an earlier, better run must not lift a later, worse one."""
    measure(data_dir, "good", lambda m: (m.used(1), m.used(-1), m.unused(300, 1)))
    assert coverage_gate(data_dir, config_file=False, fail_under=0).passed
    (data_dir / ".coverage.good").unlink()
    measure(data_dir, "poor", lambda m: m.used(1))
    result = coverage_gate(data_dir, config_file=False, fail_under=50)
    assert not result.passed
    assert total_of(result.report) < 50


def test_gate_without_data_fails_with_a_message(data_dir: Path) -> None:
    result = coverage_gate(data_dir, config_file=False, fail_under=0)
    assert not result.passed
    assert "no coverage data" in result.report
    assert str(data_dir) in result.report
    assert "run the test sessions first" in result.report


def test_gate_with_data_about_nothing_measurable_fails(data_dir: Path, tmp_path: Path) -> None:
    measure(data_dir, "x", lambda m: m.used(1))
    config = tmp_path / "only-elsewhere.toml"
    config.write_text('[tool.coverage.report]\ninclude = ["*/nothing_here/*"]\n')
    result = coverage_gate(data_dir, config_file=config)
    assert not result.passed
    assert "nothing measurable" in result.report


def test_gate_reads_the_threshold_from_the_config(half_covered: Path, tmp_path: Path) -> None:
    strict = tmp_path / "strict.toml"
    strict.write_text("[tool.coverage.report]\nfail_under = 95\n")
    assert not coverage_gate(half_covered, config_file=strict).passed
    lenient = tmp_path / "lenient.toml"
    lenient.write_text("[tool.coverage.report]\nfail_under = 10\n")
    assert coverage_gate(half_covered, config_file=lenient).passed


def test_gate_writes_html_and_xml(half_covered: Path, tmp_path: Path) -> None:
    html, xml = tmp_path / "html", tmp_path / "coverage.xml"
    coverage_gate(half_covered, config_file=False, fail_under=0, html_dir=html, xml_file=xml)
    assert (html / "index.html").exists()
    assert "<coverage" in xml.read_text()


def test_main_exit_codes(
    half_covered: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The working directory is an empty folder, so main() reads no project configuration.
    assert main(["coverage", "--data-dir", str(half_covered), "--fail-under", "40"]) == 0
    assert "coverage gate: PASS" in capsys.readouterr().out
    assert main(["coverage", "--data-dir", str(half_covered), "--fail-under", "90"]) == 1
    assert "coverage gate: FAIL" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["coverage", "--data-dir", str(empty)]) == 1
    assert "no coverage data" in capsys.readouterr().out
    html, xml = tmp_path / "h", tmp_path / "c.xml"
    code = main(
        [
            *("coverage", "--data-dir", str(half_covered), "--fail-under", "0"),
            *("--html", str(html), "--xml", str(xml)),
        ]
    )
    assert code == 0
    assert (html / "index.html").exists()
    assert xml.exists()


def test_main_needs_a_gate_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "coverage" in capsys.readouterr().err


PROBE = """\
import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


async def work():
    engine = create_async_engine("sqlite+aiosqlite:///:memory:")
    async with engine.connect() as conn:
        value = (await conn.execute(text("SELECT 1"))).scalar()
    marker = value + 1
    await engine.dispose()
    return marker


asyncio.run(work())
"""

MEASURE_WITH_PROJECT_CONFIG = """\
import json
import pathlib
import sys

import coverage

config, probe = sys.argv[1], pathlib.Path(sys.argv[2])
cov = coverage.Coverage(config_file=config, data_file=None, source=[str(probe.parent)])
cov.start()
exec(compile(probe.read_text(), str(probe), "exec"), {"__name__": "__main__"})
cov.stop()
data = cov.get_data()
lines = [data.lines(name) for name in data.measured_files() if name.endswith(probe.name)]
print(json.dumps(sorted(lines[0]) if lines else []))
"""


def test_project_coverage_config_measures_code_around_sqlalchemy_awaits(tmp_path: Path) -> None:
    """SQLAlchemy's asyncio layer runs queries in greenlets. Unless coverage is told
    (``[tool.coverage.run] concurrency = ["thread", "greenlet"]``), its tracer loses track at
    each switch: lines after an awaited query go missing and lines of SQLAlchemy's own files
    are recorded against ours (line numbers past the end of the file). The gate would then
    judge numbers that are simply wrong, in the server processes and the tests alike."""
    import json
    import os
    import subprocess
    import sys

    from qa.launcher import REPO_ROOT

    probe = tmp_path / "probe_module.py"
    probe.write_text(PROBE)
    script = tmp_path / "measure.py"
    script.write_text(MEASURE_WITH_PROJECT_CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE")}
    out = subprocess.run(  # noqa: S603 - our own interpreter and files
        [sys.executable, str(script), str(REPO_ROOT / "pyproject.toml"), str(probe)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    lines = set(json.loads(out.stdout.strip().splitlines()[-1]))
    length = len(PROBE.splitlines())
    assert lines, out.stderr
    assert max(lines) <= length, f"lines past the end of a {length}-line file: {sorted(lines)}"
    marker = PROBE.splitlines().index("    marker = value + 1") + 1
    assert marker in lines
