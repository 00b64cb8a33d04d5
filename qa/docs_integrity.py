"""The docs site's integrity checks, each returning precise problems (an empty list passes).

- ``undocumented_operations``: every OpenAPI operation has a reference entry (a heading with
  its operation id as anchor) with at least one example block;
- ``undocumented_settings``: every setting's environment variable is in the configuration
  reference;
- ``missing_checklist_lines``: every configuration rule (``app.core.config_rules.RULES``) has
  its line in the production checklist of ``docs/environments/production.md``;
- ``undocumented_sessions``: every nox session is in the harness guide;
- ``stale_pages``: the reference pages on disk equal what the generator makes now;
- ``uncommitted_pages``: the reference pages equal their committed versions (so CI, which
  regenerates them, fails when a change to the API or settings was committed without them);
- ``build_problems``: ``mkdocs build --strict`` passes, with the ``validation:`` settings of
  ``mkdocs.yml`` turning broken links and anchors into errors;
- ``external_assets``: the built site loads nothing from another host (no CDN, no web fonts),
  so it works offline;
- ``mismatched_figures``: a measured figure quoted in the README or a docs page (between
  ``<!-- figure: NAME -->`` and ``<!-- /figure -->``) says what ``docs/figures.toml``, the one
  place figures are kept, says; and every figure kept there is quoted somewhere.

Command line: ``python -m qa.docs_integrity`` runs them all on this repository.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from app.capabilities.docs.generator import (
    GENERATED_NOTE,
    METHODS,
    DocumentationGenerator,
    settings_rows,
    slug,
)
from qa.examples import extract_blocks

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = REPO_ROOT / "docs" / "reference"
CONFIGURATION_PAGE = "configuration.md"
PRODUCTION_GUIDE = REPO_ROOT / "docs" / "environments" / "production.md"
HEADING_ANCHOR = re.compile(r"^#{1,6} .*\{ *#(?P<anchor>[\w-]+) *\}\s*$")


def reference_sections(directory: Path) -> dict[str, tuple[str, str]]:
    """Each anchored heading of the reference pages: anchor -> (page name, section text)."""
    sections: dict[str, tuple[str, str]] = {}
    for page in sorted(directory.glob("*.md")):
        anchor: str | None = None
        lines: list[str] = []
        for line in [*page.read_text(encoding="utf-8").splitlines(), "## end"]:
            is_heading = line.startswith("## ") or line.startswith("# ")
            if is_heading and anchor is not None:
                sections.setdefault(anchor, (page.name, "\n".join(lines)))
                anchor = None
            match = HEADING_ANCHOR.match(line) if line.startswith("## ") else None
            if match:
                anchor, lines = match["anchor"], []
            elif anchor is not None:
                lines.append(line)
    return sections


def undocumented_operations(schema: dict[str, Any], directory: Path) -> list[str]:
    """Operations without a reference entry, or whose entry has no example."""
    sections = reference_sections(directory)
    problems = []
    for path, item in sorted(schema.get("paths", {}).items()):
        for method, operation in sorted(item.items()):
            if method not in METHODS:
                continue
            operation_id = operation.get("operationId", "")
            name = f"{method.upper()} {path} (operation {operation_id or 'without an id'})"
            found = sections.get(slug(operation_id)) if operation_id else None
            if found is None:
                problems.append(f"{name} has no reference entry in {directory}")
            elif not any(block.example for block in extract_blocks(found[1], found[0])):
                problems.append(f"{name}: its entry in {directory / found[0]} has no example")
    return problems


def undocumented_settings(model: type[BaseModel], page: Path) -> list[str]:
    """Settings whose environment variable the configuration reference does not mention."""
    if not page.exists():
        return [f"{page} does not exist: the configuration reference is missing"]
    text = page.read_text(encoding="utf-8")
    return [
        f"setting {row.path} ({row.env}) is missing from {page}"
        for row in settings_rows(model)
        if f"`{row.env}`" not in text
    ]


CHECKLIST_HEADING = re.compile(r"^(?P<level>#{1,6}) .*\bchecklist\b", re.IGNORECASE)
HEADING = re.compile(r"^(?P<level>#{1,6}) ")
FENCE = re.compile(r"^\s*(```|~~~)")
LIST_ITEM = re.compile(r"^[-*] (?P<text>.*)$")


def checklist_items(text: str) -> list[str]:
    """The list items of a page's checklist section (from a heading naming a checklist to the
    next heading of its level or higher), each on one line with its whitespace collapsed: an
    item may wrap onto indented lines. Code blocks are skipped."""
    items: list[list[str]] = []
    level: int | None = None  # the checklist heading's, while inside its section
    in_fence = in_item = False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence, in_item = not in_fence, False
            continue
        if in_fence:
            continue
        heading = HEADING.match(line)
        if heading:
            if level is not None and len(heading["level"]) <= level:
                level = None
            checklist = CHECKLIST_HEADING.match(line)
            if level is None and checklist:
                level = len(checklist["level"])
            in_item = False
            continue
        item = LIST_ITEM.match(line)
        if level is not None and item:
            items.append([item["text"]])
            in_item = True
        elif in_item and line[:1].isspace() and line.strip():
            items[-1].append(line)
        else:
            in_item = False
    return [" ".join(" ".join(lines).split()) for lines in items]


def missing_checklist_lines(rules: Iterable[Any], page: Path = PRODUCTION_GUIDE) -> list[str]:
    """Configuration rules without their line in the production checklist of ``page``: an
    item of its checklist section that starts with the rule's ``checklist`` text."""
    items = checklist_items(page.read_text(encoding="utf-8")) if page.exists() else []
    shown = _shown(page)
    return [
        f"rule {rule.id} has no line in the production checklist of {shown}: "
        f"add '- {rule.checklist}'"
        for rule in rules
        if not any(item.startswith(" ".join(rule.checklist.split())) for item in items)
    ]


def _shown(path: Path) -> str:
    """A path as a reader finds it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def nox_sessions(noxfile: Path) -> list[str]:
    """The names of the sessions a noxfile defines (functions decorated with ``nox.session``)."""
    tree = ast.parse(noxfile.read_text(encoding="utf-8"))
    names = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            call = decorator.func if isinstance(decorator, ast.Call) else decorator
            if isinstance(call, ast.Attribute) and call.attr == "session":
                keywords = decorator.keywords if isinstance(decorator, ast.Call) else []
                name = next(
                    (
                        k.value.value
                        for k in keywords
                        if k.arg == "name" and isinstance(k.value, ast.Constant)
                    ),
                    node.name,
                )
                names.append(str(name))
    return names


def undocumented_sessions(noxfile: Path, page: Path) -> list[str]:
    """Sessions the harness guide does not name (as `` `name` ``)."""
    text = page.read_text(encoding="utf-8")
    return [
        f"nox session {name!r} is not described in {page}"
        for name in nox_sessions(noxfile)
        if f"`{name}`" not in text
    ]


def stale_pages(generator: DocumentationGenerator, directory: Path) -> list[str]:
    """Generated pages that differ from (or are missing in, or linger in) ``directory``."""
    pages = generator.pages()
    problems = []
    for name, text in pages.items():
        target = directory / name
        if not target.exists():
            problems.append(f"{target} is missing: regenerate the reference (nox -s docs)")
        elif target.read_text(encoding="utf-8") != text:
            problems.append(f"{target} is out of date: regenerate the reference (nox -s docs)")
    for page in sorted(directory.glob("*.md")):
        if page.name not in pages and GENERATED_NOTE in page.read_text(encoding="utf-8"):
            problems.append(f"{page} is no longer generated: delete it (nox -s docs does)")
    return problems


def uncommitted_pages(directory: Path, root: Path = REPO_ROOT) -> list[str]:
    """Reference pages that differ from their committed versions, or are not committed."""
    relative = directory.resolve().relative_to(root.resolve())

    def git(*args: str) -> list[str]:
        done = subprocess.run(
            ["git", *args, "--", str(relative)],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"git {' '.join(args)} failed in {root}: {done.stderr.strip()}")
        return [line for line in done.stdout.splitlines() if line]

    changed = git("diff", "--name-only", "HEAD")
    untracked = git("ls-files", "--others", "--exclude-standard")
    return [
        f"{name} differs from the committed version: the API or settings changed; commit "
        "the regenerated reference pages"
        for name in sorted(changed)
    ] + [f"{name} is not committed: commit the regenerated reference pages" for name in untracked]


def build_problems(config_file: Path, site_dir: Path) -> list[str]:
    """Build the site strictly; on failure, the warnings and errors MkDocs printed."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(config_file),
            "--site-dir",
            str(site_dir),
        ],
        cwd=config_file.parent,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    if done.returncode == 0:
        return []
    lines = [
        line.strip()
        for line in (done.stdout + done.stderr).splitlines()
        if line.startswith(("WARNING", "ERROR")) or "Error" in line
    ]
    return lines or [f"mkdocs build --strict failed (exit {done.returncode}):\n{done.stderr}"]


EXTERNAL_ASSET = re.compile(
    r"<(?:script|link|img)\b[^>]*\b(?:src|href)=[\"']?(https?:)?//[^\"' >]+"
    r"|url\([\"']?(?:https?:)?//[^)]+\)"
    r"|@import\s+[\"'](?:https?:)?//[^\"']+",
    re.IGNORECASE,
)


def external_assets(site_dir: Path) -> list[str]:
    """Scripts, stylesheets, fonts and images a built page would fetch from another host.
    Links a reader follows (``<a href>``) are fine."""
    problems = []
    for path in sorted([*site_dir.rglob("*.html"), *site_dir.rglob("*.css")]):
        for match in EXTERNAL_ASSET.finditer(path.read_text(encoding="utf-8", errors="replace")):
            problems.append(f"{path.relative_to(site_dir)} loads {match.group(0)!r} from the web")
    return problems


FIGURES = REPO_ROOT / "docs" / "figures.toml"
_FIGURE = re.compile(r"<!-- figure: ([\w.-]+) -->(.*?)<!-- /figure -->", re.DOTALL)


def mismatched_figures(figures: Path, pages: Iterable[Path]) -> list[str]:
    """Quoted figures that differ from ``figures`` (a TOML table of name = text), name none
    of its entries, or entries that no page quotes."""
    import tomllib

    kept: dict[str, str] = tomllib.loads(figures.read_text(encoding="utf-8"))
    problems = []
    quoted: set[str] = set()
    for page in pages:
        for match in _FIGURE.finditer(page.read_text(encoding="utf-8")):
            name, text = match.group(1), " ".join(match.group(2).split())
            quoted.add(name)
            if name not in kept:
                problems.append(f"{_shown(page)}: figure {name!r} is not in {_shown(figures)}")
            elif text != kept[name]:
                problems.append(
                    f"{_shown(page)}: figure {name!r} says {text!r}, {_shown(figures)} says "
                    f"{kept[name]!r}"
                )
    problems += [
        f"{_shown(figures)}: figure {name!r} is quoted nowhere"
        for name in sorted(set(kept) - quoted)
    ]
    return problems


def documentation_pages(root: Path = REPO_ROOT) -> list[Path]:
    """The README and every Markdown page of the docs site."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def main() -> int:
    from app.core.config import Settings
    from app.core.config_rules import RULES
    from app.main import reference_docs

    generator = reference_docs()
    problems = [
        *undocumented_operations(generator.schema, REFERENCE_DIR),
        *undocumented_settings(Settings, REFERENCE_DIR / CONFIGURATION_PAGE),
        *missing_checklist_lines(RULES, PRODUCTION_GUIDE),
        *undocumented_sessions(REPO_ROOT / "noxfile.py", REPO_ROOT / "docs" / "harness.md"),
        *stale_pages(generator, REFERENCE_DIR),
        *uncommitted_pages(REFERENCE_DIR),
        *build_problems(REPO_ROOT / "mkdocs.yml", REPO_ROOT / "site"),
        *external_assets(REPO_ROOT / "site"),
        *mismatched_figures(FIGURES, documentation_pages()),
    ]
    for problem in problems:
        print(problem)
    print(f"docs integrity: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
