"""MkDocs hook: the site's "API reference" section lists every generated reference page.

The pages under ``docs/reference/`` come from the backend's schema, so a new resource (a new
OpenAPI tag) adds a page; this hook puts it in the navigation without anyone editing
``mkdocs.yml``. Order: the overview, one page per resource (by title), then schemas,
configuration and health.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

SECTION = "API reference"
REFERENCE = "reference"
LAST = ("schemas.md", "configuration.md", "health.md")


def page_title(path: Path) -> str:
    """A page's first-level heading, or its file name."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem


def reference_nav(
    docs_dir: Path, excluded: Callable[[str], bool] = lambda _: False
) -> list[dict[str, str]]:
    """Navigation entries for every reference page not ``excluded``, in the section's order."""
    folder = docs_dir / REFERENCE
    pages = [p for p in sorted(folder.glob("*.md")) if not excluded(f"{REFERENCE}/{p.name}")]

    def rank(path: Path) -> tuple[int, str]:
        if path.name == "index.md":
            return (0, "")
        if path.name in LAST:
            return (2 + LAST.index(path.name), "")
        return (1, page_title(path).lower())

    return [{page_title(p): f"{REFERENCE}/{p.name}"} for p in sorted(pages, key=rank)]


def on_config(config: Any) -> Any:
    """Fill the ``API reference`` section of the navigation with the generated pages."""
    spec = config.get("exclude_docs")  # a gitignore-style spec, or None
    excluded = spec.match_file if spec is not None else (lambda _: False)
    nav = config.get("nav") or []
    for entry in nav:
        if isinstance(entry, dict) and SECTION in entry:
            entry[SECTION] = reference_nav(Path(config["docs_dir"]), excluded)
    return config
