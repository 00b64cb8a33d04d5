"""ExampleValidator running a page more than once (``runs``), without a server: each run starts
afresh, a page that cannot run again fails on its second run and says so, the blocks marked
not run are listed once, and the summary counts runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from qa import examples
from qa.examples import ExampleValidator, Report


def run(text: str, runs: int, page: str = "page.md") -> Report:
    validator = ExampleValidator("http://127.0.0.1:9/", "a@b.test", "pw", timeout=10, runs=runs)
    return validator.run_page(text, page)


FRESH = """# Every run starts afresh

```python
assert "seen" not in globals(), "state left over from the previous run"
seen = 1
print("python", seen)
```

```text title="Output"
python 1
```

```bash
[ -z "${MARK:-}" ] || { echo "shell state left over: $MARK"; exit 1; }
MARK=set
echo "shell $MARK"
```

```bash title="Not run: starts a server"
renum serve
```
"""


def test_each_run_starts_from_a_fresh_namespace_and_shell_state() -> None:
    report = run(FRESH, runs=2)
    assert [(o.block.number, o.run, o.passed) for o in report.outcomes] == [
        (1, 1, True),
        (2, 1, True),
        (1, 2, True),
        (2, 2, True),
    ], report.details()
    assert [o.output for o in report.outcomes] == ["python 1\n", "shell set\n"] * 2
    assert [b.number for b in report.not_run] == [3]  # listed once, not once per run
    assert report.summary() == (
        "2 examples run on 1 pages, each page 2 times: 4 passed, 0 failed; 1 marked not run"
    )


def test_a_page_that_cannot_run_again_fails_on_its_second_run(tmp_path: Path) -> None:
    # The file stands for a name on the backend: the first run takes it, the second finds it.
    taken = tmp_path / "gs-team"
    page = f'```python\nopen({str(taken)!r}, "x").close()\nprint("created")\n```\n'
    report = run(page, runs=2, page="docs/once.md")
    first, second = report.outcomes
    assert (first.run, first.passed) == (1, True)
    assert (second.run, second.passed) == (2, False)
    assert "FileExistsError" in second.output
    assert second.describe().startswith(
        "docs/once.md, block 1 (line 1, python), run 2 of the page against the same backend: "
        "it failed"
    )
    assert report.summary().endswith("each page 2 times: 1 passed, 1 failed; 0 marked not run")
    assert "run 2 of the page" in report.details()


def test_one_run_keeps_the_plain_summary_and_descriptions() -> None:
    report = run("```python\nprint(1)\n```\n\n```python\n1 / 0\n```\n", runs=1)
    assert [o.run for o in report.outcomes] == [1, 1]
    assert report.summary() == "2 examples run on 1 pages: 1 passed, 1 failed; 0 marked not run"
    assert "run 1" not in report.failures[0].describe()


def test_runs_must_be_at_least_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ExampleValidator("http://127.0.0.1:9/", "a@b.test", "pw", runs=0)
    with pytest.raises(SystemExit) as exited:  # refused before any backend is launched
        examples.main(["--runs", "0", "docs/index.md"])
    assert exited.value.code == 2
    assert "--runs must be at least 1" in capsys.readouterr().err
