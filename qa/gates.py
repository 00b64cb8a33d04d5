"""Quality gates the nox sessions enforce. Each returns a verdict and a readable report, and
``python -m qa.gates NAME`` exits non-zero when the gate fails.

- ``coverage``: combine every session's data (the server processes' included) and require
  the total line+branch coverage of ``app`` and ``qa`` to reach ``fail_under``.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import coverage
from coverage.exceptions import NoDataError


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    report: str


def coverage_gate(
    data_dir: Path,
    *,
    config_file: Path | str | bool = True,
    fail_under: float | None = None,
    html_dir: Path | None = None,
    xml_file: Path | None = None,
) -> GateResult:
    """Combine the ``.coverage.*`` files in ``data_dir`` (keeping them) and check the total."""
    combined = data_dir / ".coverage"
    cov = coverage.Coverage(data_file=str(combined), config_file=config_file)
    pieces = sorted(str(p) for p in data_dir.glob(".coverage.*"))
    if not pieces:
        return GateResult(
            "coverage", False, f"no coverage data in {data_dir}; run the test sessions first"
        )
    cov.combine(pieces, keep=True)
    cov.save()
    threshold = cov.config.fail_under if fail_under is None else fail_under
    out = io.StringIO()
    try:
        total = cov.report(file=out)
    except NoDataError as exc:
        return GateResult("coverage", False, f"coverage data holds nothing measurable: {exc}")
    if html_dir is not None:
        cov.html_report(directory=str(html_dir))
    if xml_file is not None:
        cov.xml_report(outfile=str(xml_file))
    passed = total >= threshold
    verdict = "PASS" if passed else "FAIL"
    out.write(
        f"\ncoverage gate: {verdict}: total {math.floor(total * 100) / 100:.2f}% "
        f"{'>=' if passed else '<'} required {threshold:.2f}% "
        f"(combined from {len(pieces)} data files)\n"
    )
    return GateResult("coverage", passed, out.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qa.gates", description=__doc__)
    sub = parser.add_subparsers(dest="gate", required=True)
    cov = sub.add_parser("coverage", help="combine coverage data and enforce fail_under")
    cov.add_argument("--data-dir", type=Path, default=Path("reports/coverage"))
    cov.add_argument("--fail-under", type=float, default=None)
    cov.add_argument("--html", type=Path, default=None)
    cov.add_argument("--xml", type=Path, default=None)
    args = parser.parse_args(argv)
    result = coverage_gate(
        args.data_dir, fail_under=args.fail_under, html_dir=args.html, xml_file=args.xml
    )
    print(result.report)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
