"""ExampleValidator: every code example in the docs runs against a live backend.

Python (httpx) and shell (``curl``) blocks are taken from Markdown pages and run in page order,
sharing state within a page: Python blocks share one namespace, shell blocks the variables
they set. Examples read the backend's address and credentials from ``RENUM_URL``,
``RENUM_EMAIL`` and ``RENUM_PASSWORD``, which the validator sets, so the same pages work for a
reader against their own backend.

Conventions in the Markdown (MkDocs Material shows the titles above the blocks):

- a ``python``, ``bash``, ``sh`` or ``shell`` block runs; it passes when it exits cleanly;
- a block titled ``Not run: <reason>`` (```` ```bash title="Not run: starts a server" ````) is
  deliberately not run; it is listed and counted;
- a ``text`` block titled ``Output`` right after a runnable block is its expected output.
  Placeholders stand for what changes between runs: ``<id>`` (a UUID), ``<time>`` (an ISO 8601
  time), ``<number>``, ``<token>`` (text without spaces), ``<...>`` (the rest of a line);
  a line holding only ``...`` stands for any number of lines.

A reader may run a page again, so a page's examples must be safe to re-run against the same
backend (unique names, or clean-up at the end): with ``runs=2`` (the docs session's setting)
each page runs twice in a row, the second time from a fresh start (a new namespace and shell
state), and a failure of the second run says so.

A failure names the page, the block (number and line), the command and its output.
Command line: ``python -m qa.examples [--url URL] [--runs N] PAGE...`` (without ``--url`` it
launches a backend with ``qa.launcher``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

PYTHON = frozenset({"python", "py"})
SHELL = frozenset({"bash", "sh", "shell"})
NOT_RUN = "Not run"
OUTPUT_TITLE = "Output"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
TITLE = re.compile(r'title="(?P<title>[^"]*)"')
PLACEHOLDERS = {
    "<id>": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "<time>": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?",
    "<number>": r"-?\d+(?:\.\d+)?",
    "<token>": r"\S+",
    "<...>": r".*",
}
# Variables the shell keeps between a page's blocks: everything exported, except the shell's own.
SAVE_STATE = 'export -p | grep -v -E "^declare -x (OLDPWD|PWD|SHLVL|_)=" > "$RENUM_EXAMPLE_STATE"'


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: str
    number: int
    line: int
    language: str
    title: str
    code: str
    expected: str | None = None

    @property
    def example(self) -> bool:
        return self.language in PYTHON | SHELL

    @property
    def runnable(self) -> bool:
        return self.example and not self.title.startswith(NOT_RUN)

    @property
    def where(self) -> str:
        return f"{self.page}, block {self.number} (line {self.line}, {self.language})"


@dataclass(frozen=True)
class Outcome:
    """How one runnable block went: its output, and why it failed if it did."""

    block: Block
    passed: bool
    output: str
    reason: str = ""
    run: int = 1  # which run of its page: 2 is the page run again against the same backend

    def describe(self) -> str:
        where = self.block.where
        if self.run > 1:
            where += f", run {self.run} of the page against the same backend"
        text = [f"{where}: {self.reason}", "command:", _indent(self.block.code)]
        text += ["output:", _indent(self.output or "(none)")]
        if self.block.expected is not None:
            text += ["expected output:", _indent(self.block.expected)]
        return "\n".join(text)


@dataclass
class Report:
    """Every block run (passed or failed) and every block marked not run."""

    outcomes: list[Outcome] = field(default_factory=list)
    not_run: list[Block] = field(default_factory=list)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.passed]

    def summary(self) -> str:
        """Counts of examples; when pages ran more than once, passed and failed count runs."""
        passed = len(self.outcomes) - len(self.failures)
        pages = len({o.block.page for o in self.outcomes} | {b.page for b in self.not_run})
        runs = max((o.run for o in self.outcomes), default=1)
        examples = len(self.outcomes)
        each = ""
        if runs > 1:
            examples = len({(o.block.page, o.block.number) for o in self.outcomes})
            each = f", each page {runs} times"
        return (
            f"{examples} examples run on {pages} pages{each}: {passed} passed, "
            f"{len(self.failures)} failed; {len(self.not_run)} marked not run"
        )

    def details(self) -> str:
        lines = [self.summary()]
        lines += [f"not run: {b.where}: {b.title}" for b in self.not_run]
        lines += ["", *(o.describe() + "\n" for o in self.failures)]
        return "\n".join(lines).rstrip() + "\n"


def extract_blocks(text: str, page: str) -> list[Block]:
    """The page's fenced code blocks in order; an ``Output`` block attaches to the one before."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    previous_end = -1  # the line index of the previous block's closing fence
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"].strip()
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        body = [
            line[len(indent) :] if line.startswith(indent) else line
            for line in lines[index + 1 : end]
        ]
        language = info.split(" ", 1)[0].strip("{.").lower() if info else ""
        title_match = TITLE.search(info)
        title = title_match["title"] if title_match else ""
        content = "\n".join(body)
        previous = blocks[-1] if blocks else None
        follows = previous_end >= 0 and all(
            not line.strip() for line in lines[previous_end + 1 : index]
        )
        if (
            language == "text"
            and title == OUTPUT_TITLE
            and previous is not None
            and previous.runnable
            and previous.expected is None
            and follows
        ):
            blocks[-1] = Block(**{**previous.__dict__, "expected": content})
        else:
            blocks.append(Block(page, len(blocks) + 1, index + 1, language, title, content))
        previous_end = end
        index = end + 1
    return blocks


def output_matches(expected: str, actual: str) -> bool:
    """Compare output line by line (trailing spaces ignored) with the placeholders."""
    pattern = []
    for line in expected.strip("\n").splitlines():
        if line.strip() == "...":
            pattern.append(r"(?:[^\n]*\n)*?")
            continue
        piece = re.escape(line.rstrip())
        for placeholder, regex in PLACEHOLDERS.items():
            piece = piece.replace(re.escape(placeholder), regex)
        pattern.append(piece + r"\n")
    normalised = "\n".join(line.rstrip() for line in actual.strip("\n").splitlines()) + "\n"
    return re.fullmatch("".join(pattern), normalised) is not None


class ExampleValidator:
    """Runs the examples of Markdown pages against the backend at ``url``, each page ``runs``
    times in a row (2 checks that a page can be run again)."""

    def __init__(
        self, url: str, email: str, password: str, timeout: float = 60.0, runs: int = 1
    ) -> None:
        if runs < 1:
            raise ValueError("runs must be at least 1")
        self.env = {"RENUM_URL": url.rstrip("/"), "RENUM_EMAIL": email, "RENUM_PASSWORD": password}
        self.timeout = timeout
        self.runs = runs

    def run(self, pages: Iterable[Path], root: Path | None = None) -> Report:
        report = Report()
        for page in pages:
            name = str(page.relative_to(root)) if root else str(page)
            page_report = self.run_page(page.read_text(encoding="utf-8"), name)
            report.outcomes += page_report.outcomes
            report.not_run += page_report.not_run
        return report

    def run_page(self, text: str, page: str) -> Report:
        """Run one page's blocks in order, sharing state between them; ``runs`` times, each
        run from a fresh start (blocks marked not run are listed once)."""
        report = Report()
        blocks = [block for block in extract_blocks(text, page) if block.example]
        report.not_run += [block for block in blocks if not block.runnable]
        for run in range(1, self.runs + 1):
            report.outcomes += self._run_blocks([b for b in blocks if b.runnable], run)
        return report

    def _run_blocks(self, blocks: list[Block], run: int) -> list[Outcome]:
        outcomes = []
        namespace: dict[str, object] = {"__name__": "__docs_example__"}
        with tempfile.TemporaryDirectory(prefix="renum-docs-") as workdir:
            state = Path(workdir) / ".state"
            for block in blocks:
                if block.language in PYTHON:
                    ok, output = self._run_python(block, namespace, Path(workdir))
                else:
                    ok, output = self._run_shell(block, state, Path(workdir))
                reason = "" if ok else "it failed"
                if ok and block.expected is not None and not output_matches(block.expected, output):
                    ok, reason = False, "its output differs from the expected output"
                outcomes.append(Outcome(block, ok, output, reason, run))
        return outcomes

    def _run_shell(self, block: Block, state: Path, workdir: Path) -> tuple[bool, str]:
        script = "\n".join(
            [
                "set -a",
                f'[ -f "{state}" ] && . "{state}"',
                f"trap '{SAVE_STATE}' EXIT",
                "set -eo pipefail",
                block.code,
            ]
        )
        # The harness's own programs (``renum``, ``python``) come first on the PATH.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {**os.environ, **self.env, "PATH": path, "RENUM_EXAMPLE_STATE": str(state)}
        try:
            done = subprocess.run(
                ["bash", "-c", script],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            return False, f"timed out after {self.timeout:.0f}s\n{_text(exc.stdout)}"
        output = done.stdout + (done.stderr if done.returncode else "")
        if done.returncode:
            output += f"\n(exit code {done.returncode})"
        return done.returncode == 0, output

    def _run_python(
        self, block: Block, namespace: dict[str, object], workdir: Path
    ) -> tuple[bool, str]:
        buffer = io.StringIO()
        with _environment(self.env), contextlib.chdir(workdir), contextlib.redirect_stdout(buffer):
            try:
                with _time_limit(self.timeout):
                    exec(compile(block.code, block.where, "exec"), namespace)  # noqa: S102 - the docs' own examples
            except _TimedOut:
                return False, f"timed out after {self.timeout:.0f}s\n{buffer.getvalue()}"
            except Exception:
                return False, buffer.getvalue() + traceback.format_exc(limit=3)
        return True, buffer.getvalue()


class _TimedOut(BaseException):
    """A Python block ran past its time (a BaseException, so the block cannot catch it)."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds`` with SIGALRM (examples run on the main thread)."""

    def expire(_signal: int, _frame: object) -> None:
        raise _TimedOut

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.rstrip().splitlines()) or "    (empty)"


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""


def markdown_pages(root: Path) -> list[Path]:
    """Every Markdown page under ``root`` in a stable order."""
    return sorted(root.rglob("*.md"))


def main(argv: list[str] | None = None) -> int:
    from qa.launcher import LaunchedBackend

    parser = argparse.ArgumentParser(description="Run the docs' code examples.")
    parser.add_argument("pages", nargs="*", type=Path, default=[Path("docs")])
    parser.add_argument("--url", help="a running backend (default: launch one)")
    parser.add_argument("--email", default=os.environ.get("RENUM_EMAIL", ""))
    parser.add_argument("--password", default=os.environ.get("RENUM_PASSWORD", ""))
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="run each page this many times in a row (2: check that it can be run again)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    pages = [p for arg in args.pages for p in (markdown_pages(arg) if arg.is_dir() else [arg])]
    launched = None if args.url else LaunchedBackend.start("sqlite")
    try:
        url = args.url or launched.base_url  # type: ignore[union-attr]
        email = launched.admin_email if launched else args.email
        password = launched.admin_password if launched else args.password
        report = ExampleValidator(url, email, password, runs=args.runs).run(pages)
    finally:
        if launched is not None:
            launched.stop()
    print(report.details())
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
