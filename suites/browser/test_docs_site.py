"""The docs site in a real browser at a laptop's 1366x768 (issue 21). Code in the reference
tables stays on one line: no setting, environment variable or path is broken over lines (as
Material's `word-break: break-word` did: `RENUM_ENVIRON` / `MENT`). A table too wide for the page
scrolls sideways inside its own box, never the page, and keeps its first column in view, so
that scrolled to its end a row's description is read next to its setting. The navigation says
"API keys". Every page loads only from the site itself.

The site is built with `mkdocs build --strict` and served from loopback (``docs_site``).
The facts are measured in the page (client rects, boxes), not compared as pixels;
screenshots land in reports/browser/."""

from __future__ import annotations

import re
from typing import Any

from browser_support import LAPTOP_HD, SCREENSHOTS, BrowserPage, OpenPage
from playwright.sync_api import Locator, Page, expect

from qa.docs_integrity import REFERENCE_DIR

CONFIGURATION = "/reference/configuration/"
STYLESHEET = "/stylesheets/renum.css"
# The longest path of an API reference page's operations table (it wrapped after `deliveries/`).
WEBHOOKS = "/reference/api-webhooks/"
LONGEST_PATH = "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}"

# Each `td code` of a table: its text, how many boxes (lines) it is laid out in, its height and
# its line height.
MEASURE_CODE = """root => [...root.querySelectorAll("td code")].map(code => {
    const style = getComputedStyle(code);
    const lineHeight = parseFloat(style.lineHeight) || 1.2 * parseFloat(style.fontSize);
    return {
        text: code.textContent,
        lines: code.getClientRects().length,
        height: code.getBoundingClientRect().height,
        lineHeight,
    };
})"""

# The table scrolled to its end: the page's width, the scrolling box and, for each body row,
# the boxes of its first and last cells.
SCROLL_TO_END = """table => {
    const box = table.closest(".md-typeset__scrollwrap");
    box.scrollLeft = box.scrollWidth;
    return box.scrollLeft;
}"""
MEASURE_SCROLLED = """table => {
    const box = table.closest(".md-typeset__scrollwrap");
    const edges = cell => {
        const rect = cell.getBoundingClientRect();
        return {left: rect.left, right: rect.right};
    };
    return {
        pageWidth: document.documentElement.scrollWidth,
        viewportWidth: window.innerWidth,
        overflowX: getComputedStyle(box).overflowX,
        box: edges(box),
        rows: [...table.tBodies[0].rows].map(row => ({
            name: row.cells[0].textContent.trim(),
            first: edges(row.cells[0]),
            last: edges(row.cells[row.cells.length - 1]),
        })),
    };
}"""


def open_docs(opened: BrowserPage, url: str) -> Page:
    """Go to a page of the site and wait for Material's script to wrap its tables."""
    page = opened.page
    page.goto(url)
    expect(page.locator("article .md-typeset__scrollwrap").first).to_be_attached()
    return page


def broken_code(root: Locator) -> list[str]:
    """The `td code` elements under ``root`` laid out on more than one line."""
    measured: list[dict[str, Any]] = root.evaluate(MEASURE_CODE)
    assert measured, "no code in the table cells"
    return [
        f"{code['text']!r} on {code['lines']} lines ({code['height']:.0f}px high, "
        f"line height {code['lineHeight']:.0f}px)"
        for code in measured
        if code["lines"] != 1 or code["height"] > 1.5 * code["lineHeight"]
    ]


def assert_loaded_from_the_site(opened: BrowserPage, base_url: str) -> None:
    """Every request went to the site's loopback server (the stylesheet among them), and the
    page logged no error."""
    foreign = [url for url in opened.requests if not url.startswith(f"{base_url}/")]
    assert not foreign, f"requests to another host: {foreign}"
    assert f"{base_url}{STYLESHEET}" in opened.requests, "the site's stylesheet was not loaded"
    assert not opened.errors, opened.errors


def test_the_configuration_reference_keeps_every_name_on_one_line(
    docs_site: str, open_page: OpenPage
) -> None:
    opened = open_page(LAPTOP_HD)
    page = open_docs(opened, f"{docs_site}{CONFIGURATION}")
    table = page.locator("article table").filter(
        has=page.get_by_role("columnheader", name="Environment variable")
    )
    expect(table).to_have_count(1)
    expect(table.locator("td code", has_text=re.compile(r"^RENUM_ENVIRONMENT$"))).to_have_count(1)
    opened.screenshot("docs-configuration-1366")

    broken = broken_code(table)
    assert not broken, f"{len(broken)} code elements broken over lines: {broken[:8]}"

    scrolled_to = table.evaluate(SCROLL_TO_END)
    layout: dict[str, Any] = table.evaluate(MEASURE_SCROLLED)
    page.screenshot(path=str(SCREENSHOTS / "docs-configuration-1366-scrolled.png"))
    # The table scrolls inside its own box; the page itself never scrolls sideways.
    assert layout["overflowX"] in {"auto", "scroll"}
    assert layout["pageWidth"] <= layout["viewportWidth"], layout["pageWidth"]
    assert scrolled_to > 0, "the table fits: nothing here to scroll (the check below is idle)"
    # Scrolled to its end, each row's setting (first column) is still in view at the box's
    # left edge, and its whole description (last column) is in view beside it.
    box = layout["box"]
    hidden = [
        row["name"]
        for row in layout["rows"]
        if abs(row["first"]["left"] - box["left"]) > 1
        or row["last"]["left"] < row["first"]["right"] - 1
        or row["last"]["right"] > box["right"] + 1
    ]
    assert not hidden, f"rows not read side by side when scrolled: {hidden}"
    assert_loaded_from_the_site(opened, docs_site)


def test_the_api_reference_keeps_every_path_on_one_line(
    docs_site: str, open_page: OpenPage
) -> None:
    pages = sorted(f"/reference/{path.stem}/" for path in REFERENCE_DIR.glob("api-*.md"))
    assert WEBHOOKS in pages
    opened = open_page(LAPTOP_HD)
    broken: dict[str, list[str]] = {}
    for url in pages:
        page = open_docs(opened, f"{docs_site}{url}")
        if url == WEBHOOKS:
            path = page.locator("article td code", has_text=LONGEST_PATH).first
            expect(path).to_be_visible()
            lines = path.evaluate("code => code.getClientRects().length")
            assert lines == 1, f"{LONGEST_PATH} is laid out on {lines} lines"
            page.screenshot(path=str(SCREENSHOTS / "docs-api-webhooks-1366.png"))
        broken_here = broken_code(page.locator("article"))
        if broken_here:
            broken[url] = broken_here
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), url
    assert not broken, f"code broken over lines: {broken}"
    assert_loaded_from_the_site(opened, docs_site)


def test_the_navigation_says_api_keys(docs_site: str, open_page: OpenPage) -> None:
    opened = open_page(LAPTOP_HD)
    page = open_docs(opened, f"{docs_site}{CONFIGURATION}")
    links = page.locator(".md-nav--primary .md-nav__link").all_text_contents()
    titles = [" ".join(text.split()) for text in links]
    assert "API keys" in titles, titles
    assert [title for title in titles if re.search(r"\bApi\b", title)] == []
