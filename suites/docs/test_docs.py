"""The docs site, checked as `nox -s docs` runs it: the reference is current and committed,
every operation and setting is documented, every configuration rule has its line in the
production checklist, the site builds strictly, every example runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app.capabilities.docs.generator import DocumentationGenerator
from app.core.config import Settings
from app.core.config_rules import RULES
from qa import docs_integrity
from qa.examples import ExampleValidator, Report, markdown_pages
from qa.launcher import Backend

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS = REPO_ROOT / "docs"
REFERENCE = DOCS / "reference"
PAGES = markdown_pages(DOCS)


def _fail_on(problems: list[str]) -> None:
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_reference_matches_the_generator(generator: DocumentationGenerator) -> None:
    _fail_on(docs_integrity.stale_pages(generator, REFERENCE))


def test_reference_is_committed() -> None:
    _fail_on(docs_integrity.uncommitted_pages(REFERENCE, REPO_ROOT))


def test_every_operation_has_an_entry_with_an_example(generator: DocumentationGenerator) -> None:
    assert generator.operations, "the served schema has no operations"
    _fail_on(docs_integrity.undocumented_operations(generator.schema, REFERENCE))


def test_every_setting_is_in_the_configuration_reference() -> None:
    _fail_on(docs_integrity.undocumented_settings(Settings, REFERENCE / "configuration.md"))


def test_every_configuration_rule_is_in_the_production_checklist() -> None:
    _fail_on(docs_integrity.missing_checklist_lines(RULES))


def test_every_nox_session_is_in_the_harness_guide() -> None:
    _fail_on(docs_integrity.undocumented_sessions(REPO_ROOT / "noxfile.py", DOCS / "harness.md"))


def test_quoted_figures_are_the_kept_ones() -> None:
    _fail_on(
        docs_integrity.mismatched_figures(
            docs_integrity.FIGURES, docs_integrity.documentation_pages()
        )
    )


def test_site_builds_strictly() -> None:
    _fail_on(docs_integrity.build_problems(REPO_ROOT / "mkdocs.yml", REPO_ROOT / "site"))
    assert (REPO_ROOT / "site" / "reference" / "index.html").exists()
    _fail_on(docs_integrity.external_assets(REPO_ROOT / "site"))


def test_the_examples_tools_are_installed() -> None:
    missing = [tool for tool in ("bash", "curl", "jq") if shutil.which(tool) is None]
    assert not missing, (
        f"the docs' shell examples need {', '.join(missing)}: install them "
        f"(Debian: apt-get install {' '.join(missing)})"
    )


@pytest.mark.target_ok
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_examples_run(page: Path, backend: Backend, examples_report: Report) -> None:
    """Every example of the page runs and prints what the page shows, twice in a row against
    the same backend: a reader may run a page again (its names are unique, or it cleans up)."""
    validator = ExampleValidator(
        backend.base_url, backend.admin_email, backend.admin_password, runs=2
    )
    report = validator.run([page], root=REPO_ROOT)
    examples_report.outcomes += report.outcomes
    examples_report.not_run += report.not_run
    _fail_on([outcome.describe() for outcome in report.failures])
