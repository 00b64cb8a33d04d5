"""The docs integrity checks, each firing on a crafted defect with a precise message, and the
MkDocs hook that puts the generated reference pages in the navigation."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from app.capabilities.docs.generator import DocumentationGenerator
from qa import docs_integrity, mkdocs_hooks
from qa.examples import extract_blocks

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "doc_schema.json"


class Small(BaseModel):
    model_config = {"env_prefix": "APP_"}

    name: str = Field(default="x", description="A name.")
    size: int = Field(default=1, description="A size.")


@pytest.fixture
def generator() -> DocumentationGenerator:
    return DocumentationGenerator(json.loads(FIXTURE.read_text(encoding="utf-8")))


@pytest.fixture
def reference(tmp_path: Path, generator: DocumentationGenerator) -> Path:
    directory = tmp_path / "reference"
    generator.write(directory)
    return directory


def test_generated_reference_passes(generator: DocumentationGenerator, reference: Path) -> None:
    assert docs_integrity.undocumented_operations(generator.schema, reference) == []
    assert docs_integrity.stale_pages(generator, reference) == []


def test_an_operation_without_an_entry(generator: DocumentationGenerator, reference: Path) -> None:
    page = reference / "api-widgets.md"
    page.write_text(
        page.read_text(encoding="utf-8").replace("{ #get-widget }", ""), encoding="utf-8"
    )
    assert docs_integrity.undocumented_operations(generator.schema, reference) == [
        f"GET /api/widgets/{{widget_id}} (operation get_widget) has no reference entry in "
        f"{reference}"
    ]


def test_an_entry_without_an_example(generator: DocumentationGenerator, reference: Path) -> None:
    page = reference / "api-parts.md"
    text = page.read_text(encoding="utf-8")
    head, example = text.split("### Example", 1)
    page.write_text(head + "### Example\n\nSee above.\n", encoding="utf-8")
    assert docs_integrity.undocumented_operations(generator.schema, reference) == [
        "POST /api/widgets/{widget_id}/parts (operation add_part): its entry in "
        f"{page} has no example"
    ]
    assert "```bash" in example


def test_operations_without_an_id_are_named_by_method_and_path(tmp_path: Path) -> None:
    schema = {"paths": {"/x": {"get": {"responses": {}}, "parameters": []}}}
    assert docs_integrity.undocumented_operations(schema, tmp_path) == [
        f"GET /x (operation without an id) has no reference entry in {tmp_path}"
    ]


def test_a_setting_missing_from_the_configuration_reference(tmp_path: Path) -> None:
    page = tmp_path / "configuration.md"
    assert docs_integrity.undocumented_settings(Small, page) == [
        f"{page} does not exist: the configuration reference is missing"
    ]
    page.write_text("| `name` | `APP_NAME` | str |\n", encoding="utf-8")
    assert docs_integrity.undocumented_settings(Small, page) == [
        f"setting size (APP_SIZE) is missing from {page}"
    ]
    page.write_text(DocumentationGenerator({}, settings_model=Small).configuration_page(Small))
    assert docs_integrity.undocumented_settings(Small, page) == []


def test_a_session_missing_from_the_harness_guide(tmp_path: Path) -> None:
    noxfile = tmp_path / "noxfile.py"
    noxfile.write_text(
        "import nox\n\n\n"
        "@nox.session\ndef lint(session): ...\n\n\n"
        "@nox.session(name='load-smoke')\ndef load_smoke(session): ...\n\n\n"
        "@nox.session(python=False)\ndef docs(session): ...\n\n\n"
        "def helper(): ...\n",
        encoding="utf-8",
    )
    assert docs_integrity.nox_sessions(noxfile) == ["lint", "load-smoke", "docs"]
    page = tmp_path / "harness.md"
    page.write_text("| `lint` | ruff |\n| `docs` | the site |\n", encoding="utf-8")
    assert docs_integrity.undocumented_sessions(noxfile, page) == [
        f"nox session 'load-smoke' is not described in {page}"
    ]


def test_stale_missing_and_lingering_pages(
    generator: DocumentationGenerator, reference: Path
) -> None:
    (reference / "api-ops.md").write_text("# Ops\n\nedited by hand\n", encoding="utf-8")
    (reference / "schemas.md").unlink()
    lingering = reference / "api-old.md"
    lingering.write_text(f"# Old\n\n{docs_integrity.GENERATED_NOTE}\n", encoding="utf-8")
    (reference / "notes.md").write_text("# Hand-written notes\n", encoding="utf-8")
    assert docs_integrity.stale_pages(generator, reference) == [
        f"{reference / 'api-ops.md'} is out of date: regenerate the reference (nox -s docs)",
        f"{reference / 'schemas.md'} is missing: regenerate the reference (nox -s docs)",
        f"{lingering} is no longer generated: delete it (nox -s docs does)",
    ]


def git(root: Path, *args: str) -> None:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    # fixed git arguments in a temporary repository, git from the PATH as a developer runs it
    subprocess.run(command, cwd=root, check=True, capture_output=True)  # noqa: S603


def test_pages_that_differ_from_the_committed_ones(tmp_path: Path, reference: Path) -> None:
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "reference")
    git(tmp_path, "commit", "-qm", "reference")
    assert docs_integrity.uncommitted_pages(reference, tmp_path) == []
    (reference / "api-ops.md").write_text("# Ops, changed\n", encoding="utf-8")
    (reference / "api-new.md").write_text("# New\n", encoding="utf-8")
    assert docs_integrity.uncommitted_pages(reference, tmp_path) == [
        "reference/api-ops.md differs from the committed version: the API or settings "
        "changed; commit the regenerated reference pages",
        "reference/api-new.md is not committed: commit the regenerated reference pages",
    ]


def test_committed_pages_need_a_git_checkout(tmp_path: Path, reference: Path) -> None:
    with pytest.raises(RuntimeError, match="git diff --name-only HEAD failed"):
        docs_integrity.uncommitted_pages(reference, tmp_path)


def site(tmp_path: Path, page: str) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(page, encoding="utf-8")
    (docs / "other.md").write_text("# Other\n\n## Known heading\n", encoding="utf-8")
    config = tmp_path / "mkdocs.yml"
    config.write_text(
        "site_name: Test\n"
        "validation:\n"
        "  omitted_files: warn\n"
        "  absolute_links: warn\n"
        "  unrecognized_links: warn\n"
        "  anchors: warn\n"
        "nav:\n  - index.md\n  - other.md\n",
        encoding="utf-8",
    )
    return config


def test_a_site_with_good_links_builds(tmp_path: Path) -> None:
    config = site(tmp_path, "# Home\n\n[Known](other.md#known-heading)\n")
    assert docs_integrity.build_problems(config, tmp_path / "site") == []
    assert (tmp_path / "site" / "other" / "index.html").exists()


def test_a_broken_link_and_a_broken_anchor_fail_the_build(tmp_path: Path) -> None:
    config = site(tmp_path, "# Home\n\n[Gone](missing.md)\n\n[Bad](other.md#no-such-heading)\n")
    problems = docs_integrity.build_problems(config, tmp_path / "site")
    assert any("missing.md" in p and "not found" in p for p in problems), problems
    assert any("no-such-heading" in p for p in problems), problems


def test_assets_from_another_host_are_found(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text(
        '<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">\n'
        '<script src="//cdn.example.com/x.js"></script>\n'
        '<a href="https://example.com/docs">a link a reader follows</a>\n'
        '<script src="assets/local.js"></script>\n',
        encoding="utf-8",
    )
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "style.css").write_text(
        "@import 'https://fonts.example.com/a.css';\n"
        "body { background: url(https://img.example.com/b.png) }\n"
        "p { background: url(local.png) }\n",
        encoding="utf-8",
    )
    problems = docs_integrity.external_assets(tmp_path)
    assert len(problems) == 4, problems
    assert problems[0].startswith("assets/style.css loads \"@import 'https://fonts.example.com")
    assert "url(https://img.example.com/b.png)" in problems[1]
    assert "fonts.googleapis.com" in problems[2]
    assert "//cdn.example.com/x.js" in problems[3]


def test_an_unreadable_config_reports_mkdocs_output(tmp_path: Path) -> None:
    config = tmp_path / "mkdocs.yml"
    config.write_text("site_name: [unclosed\n", encoding="utf-8")
    (problem,) = docs_integrity.build_problems(config, tmp_path / "site")
    assert "Error" in problem or "mkdocs build --strict failed" in problem


def test_command_line_prints_each_problem(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(docs_integrity, "uncommitted_pages", lambda _d: ["a page differs"])
    monkeypatch.setattr(docs_integrity, "build_problems", lambda _c, _s: [])
    monkeypatch.setattr(docs_integrity, "stale_pages", lambda _g, _d: [])
    monkeypatch.setattr(docs_integrity, "external_assets", lambda _s: [])
    monkeypatch.setattr(docs_integrity, "undocumented_sessions", lambda _n, _p: [])
    assert docs_integrity.main() == 1
    assert capsys.readouterr().out.endswith("a page differs\ndocs integrity: 1 problems\n")
    monkeypatch.setattr(docs_integrity, "uncommitted_pages", lambda _d: [])
    assert docs_integrity.main() == 0


def test_reference_navigation_hook(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    reference.mkdir()
    for name, title in [
        ("index.md", "API reference"),
        ("health.md", "Health checks"),
        ("schemas.md", "Schemas"),
        ("api-zebras.md", "Zebras"),
        ("api-apples.md", "Apples"),
        ("configuration.md", "Configuration reference"),
        ("snippet.md", ""),
    ]:
        (reference / name).write_text(f"# {title}\n" if title else "text\n", encoding="utf-8")
    config = {
        "docs_dir": str(tmp_path),
        "exclude_docs": None,
        "nav": [{"Home": "index.md"}, {"API reference": []}],
    }
    mkdocs_hooks.on_config(config)
    assert config["nav"][1]["API reference"] == [
        {"API reference": "reference/index.md"},
        {"Apples": "reference/api-apples.md"},
        {"snippet": "reference/snippet.md"},
        {"Zebras": "reference/api-zebras.md"},
        {"Schemas": "reference/schemas.md"},
        {"Configuration reference": "reference/configuration.md"},
        {"Health checks": "reference/health.md"},
    ]
    excluded = mkdocs_hooks.reference_nav(tmp_path, lambda path: path.endswith("snippet.md"))
    assert {"snippet": "reference/snippet.md"} not in excluded


def test_every_configuration_rule_needs_its_production_checklist_line(tmp_path: Path) -> None:
    from app.core.config_rules import RULES

    guide = tmp_path / "production.md"
    lines = [f"- {rule.checklist}" for rule in RULES]
    # The first rule's line only outside the checklist section does not count.
    guide.write_text(
        "\n".join(["# Production", "", lines[0], "", "## Production checklist", "", *lines[1:]]),
        encoding="utf-8",
    )
    problems = docs_integrity.missing_checklist_lines(RULES, guide)
    assert problems == [
        f"rule {RULES[0].id} has no line in the production checklist of {guide}: "
        f"add '- {RULES[0].checklist}'"
    ]
    # Every line in the section, one wrapped onto an indented line, one followed by more text.
    words = lines[0].split(" ")
    wrapped = " ".join(words[:3]) + "\n  " + " ".join(words[3:])
    guide.write_text(
        "\n".join(["## Production checklist", wrapped, f"{lines[1]} More advice.", *lines[2:]]),
        encoding="utf-8",
    )
    assert docs_integrity.missing_checklist_lines(RULES, guide) == []
    # A later heading of the same level ends the section.
    guide.write_text(
        "\n".join(["## Production checklist", *lines[:-1], "## Afterwards", lines[-1]]),
        encoding="utf-8",
    )
    assert [
        p.split(" has no line")[0] for p in docs_integrity.missing_checklist_lines(RULES, guide)
    ] == [f"rule {RULES[-1].id}"]
    missing = tmp_path / "absent.md"
    assert len(docs_integrity.missing_checklist_lines(RULES, missing)) == len(RULES)


def test_the_production_guide_carries_every_checklist_line() -> None:
    from app.core.config_rules import RULES

    guide = docs_integrity.REPO_ROOT / "docs" / "environments" / "production.md"
    assert guide == docs_integrity.PRODUCTION_GUIDE
    assert docs_integrity.missing_checklist_lines(RULES, guide) == []
    # A rule the guide has no line for fails, and the message names the guide's path.
    unlisted = replace(RULES[0], id="made-up", checklist="A line no guide carries.")
    assert docs_integrity.missing_checklist_lines([*RULES, unlisted]) == [
        "rule made-up has no line in the production checklist of "
        "docs/environments/production.md: add '- A line no guide carries.'"
    ]


def test_a_quoted_figure_that_differs_from_the_kept_one_is_found(tmp_path: Path) -> None:
    figures = tmp_path / "figures.toml"
    figures.write_text('"run" = "20 min 9 s"\n"coverage" = "97%"\n', encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text(
        "took <!-- figure: run -->20 min\n9 s<!-- /figure --> and "
        "<!-- figure: coverage -->97%<!-- /figure -->\n",
        encoding="utf-8",
    )
    assert docs_integrity.mismatched_figures(figures, [readme]) == []  # line breaks aside
    guide = tmp_path / "guide.md"
    guide.write_text(
        "about <!-- figure: run -->ten minutes<!-- /figure -->, "
        "<!-- figure: speed -->fast<!-- /figure -->\n",
        encoding="utf-8",
    )
    problems = docs_integrity.mismatched_figures(figures, [readme, guide])
    assert len(problems) == 2
    assert "figure 'run' says 'ten minutes'" in problems[0]
    assert "'20 min 9 s'" in problems[0]
    assert "figure 'speed' is not in" in problems[1]


def test_a_kept_figure_quoted_nowhere_is_found(tmp_path: Path) -> None:
    figures = tmp_path / "figures.toml"
    figures.write_text('"run" = "20 min 9 s"\n', encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text("no figures here\n", encoding="utf-8")
    assert docs_integrity.mismatched_figures(figures, [page]) == [
        f"{figures}: figure 'run' is quoted nowhere"
    ]


def test_every_package_the_python_examples_import_is_in_the_install_line() -> None:
    """The Python examples needed httpx and websockets, and no page said how to get them."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    guide = (docs / "getting-started.md").read_text(encoding="utf-8")
    install = re.search(r"`python3 -m pip install ([^`]+)`", guide)
    assert install, "getting-started.md has no `python3 -m pip install ...` line"
    installable = set(install.group(1).split())
    imported: set[str] = set()
    for page in sorted(docs.rglob("*.md")):
        for block in extract_blocks(page.read_text(encoding="utf-8"), page.name):
            if block.language == "python" and not block.title.startswith("Not run"):
                imported |= _top_level_imports(block.code)
    third_party = {name for name in imported if name not in sys.stdlib_module_names}
    assert third_party
    assert third_party <= installable, f"examples import {sorted(third_party - installable)}"


def _top_level_imports(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names
