"""ExampleValidator without a server: reading blocks from Markdown, expected output with
placeholders, state shared within a page, failures that name page, block, command and output,
and blocks marked not run."""

from __future__ import annotations

from pathlib import Path

import pytest

from qa.examples import ExampleValidator, extract_blocks, markdown_pages, output_matches

PAGE = """# A page

```python
total = 40 + 2
print("total", total)
```

```text title="Output"
total <number>
```

```json
{"not": "an example"}
```

Some words.

```python
print(total + 1)
```

Words between a block and its would-be output detach it:

```text title="Output"
43
```

```bash title="Not run: starts a server"
renum serve
```

    ```sh
    echo indented
    ```

~~~shell
COUNT=3
~~~
"""


def run(text: str, page: str = "page.md") -> object:
    return ExampleValidator("http://127.0.0.1:9/", "a@b.test", "pw", timeout=10).run_page(
        text, page
    )


def test_blocks_are_read_in_order_with_their_expected_output() -> None:
    blocks = extract_blocks(PAGE, "page.md")
    assert [(b.number, b.language, b.example, b.runnable) for b in blocks] == [
        (1, "python", True, True),
        (2, "json", False, False),
        (3, "python", True, True),
        (4, "text", False, False),
        (5, "bash", True, False),
        (6, "sh", True, True),
        (7, "shell", True, True),
    ]
    assert blocks[0].expected == "total <number>"
    assert blocks[0].line == 3
    assert blocks[2].expected is None
    assert blocks[4].title == "Not run: starts a server"
    assert blocks[5].code == "echo indented"
    assert blocks[6].where == "page.md, block 7 (line 36, shell)"


@pytest.mark.parametrize(
    ("expected", "actual"),
    [
        ("id <id>", "id 0b1c5d3e-0000-4000-8000-00000000abcd"),
        ("at <time>", "at 2026-11-25T09:17:37.951086Z"),
        ("at <time>", "at 2026-11-25T09:17:37+00:00"),
        ("n=<number>", "n=-3.5"),
        ("key <token>", "key rk_abc.DEF"),
        ("<...> done", "anything at all done"),
        ("first\n...\nlast", "first\nsecond\nthird\nlast"),
        ("first\n...\nlast", "first\nlast"),
        ("trailing   ", "trailing"),
        ("a(b)[c]", "a(b)[c]"),
    ],
)
def test_placeholders_match(expected: str, actual: str) -> None:
    assert output_matches(expected, actual)


@pytest.mark.parametrize(
    ("expected", "actual"),
    [
        ("id <id>", "id 1234"),
        ("at <time>", "at yesterday"),
        ("key <token>", "key two words"),
        ("first\nlast", "first\nmiddle\nlast"),
        ("a", "a\nb"),
        ("a.c", "abc"),
    ],
)
def test_placeholders_do_not_match(expected: str, actual: str) -> None:
    assert not output_matches(expected, actual)


def test_a_page_shares_state_and_counts_blocks_not_run() -> None:
    report = run(PAGE)
    assert [o.passed for o in report.outcomes] == [True, True, True, True]
    assert report.outcomes[1].output == "43\n"  # the second block saw the first's variable
    assert [b.number for b in report.not_run] == [5]
    assert report.summary() == ("4 examples run on 1 pages: 4 passed, 0 failed; 1 marked not run")
    assert "not run: page.md, block 5 (line 28, bash): Not run: starts a server" in (
        report.details()
    )


def test_shell_blocks_share_variables_and_see_the_backend_settings() -> None:
    page = (
        "```bash\nTEAM=blue\nexport SIZE=2\n```\n\n"
        '```bash\necho "$TEAM $SIZE $RENUM_URL $RENUM_EMAIL"\n```\n\n'
        '```text title="Output"\nblue 2 http://127.0.0.1:9 a@b.test\n```\n'
    )
    report = run(page)
    assert [o.passed for o in report.outcomes] == [True, True], report.details()


def test_pages_do_not_share_state() -> None:
    assert run("```python\nshared = 1\n```\n").outcomes[0].passed
    failed = run("```python\nprint(shared)\n```\n").outcomes[0]
    assert not failed.passed
    assert "NameError" in failed.output


def test_a_failure_names_page_block_command_and_output() -> None:
    page = (
        "# Broken\n\n```bash\necho start\nfalse\necho never\n```\n\n"
        '```python\nprint("hello")\n```\n\n```text title="Output"\ngoodbye\n```\n'
    )
    report = run(page, "docs/broken.md")
    shell, python = report.outcomes
    assert not shell.passed
    assert shell.reason == "it failed"
    text = shell.describe()
    assert text.startswith("docs/broken.md, block 1 (line 3, bash): it failed")
    assert "command:\n    echo start\n    false\n    echo never" in text
    assert "output:\n    start\n    \n    (exit code 1)" in text
    assert not python.passed
    assert python.reason == "its output differs from the expected output"
    assert "expected output:\n    goodbye" in python.describe()
    assert report.summary().endswith("0 passed, 2 failed; 0 marked not run")
    assert "docs/broken.md, block 2" in report.details()


def test_a_block_that_hangs_is_stopped() -> None:
    validator = ExampleValidator("http://127.0.0.1:9", "a@b.test", "pw", timeout=1)
    outcome = validator.run_page("```bash\necho waiting\nsleep 5\n```\n", "slow.md").outcomes[0]
    assert not outcome.passed
    assert outcome.output.startswith("timed out after 1s")


def test_a_python_block_that_hangs_is_stopped() -> None:
    validator = ExampleValidator("http://127.0.0.1:9", "a@b.test", "pw", timeout=1)
    page = (
        "```python\nimport time\nprint('waiting')\n"
        "try:\n    time.sleep(5)\nexcept Exception:\n    print('caught')\n```\n"
    )
    outcome = validator.run_page(page, "slow.md").outcomes[0]
    assert not outcome.passed
    assert outcome.output == "timed out after 1s\nwaiting\n"


def test_environment_is_restored_after_python_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENUM_URL", "http://kept")
    monkeypatch.delenv("RENUM_EMAIL", raising=False)
    report = run('```python\nimport os\nprint(os.environ["RENUM_URL"])\n```\n')
    assert report.outcomes[0].output == "http://127.0.0.1:9\n"
    import os

    assert os.environ["RENUM_URL"] == "http://kept"
    assert "RENUM_EMAIL" not in os.environ


def test_pages_are_found_in_a_stable_order(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text("b", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.md").write_text("a", encoding="utf-8")
    (tmp_path / "a.md").write_text("a", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    assert [p.relative_to(tmp_path).as_posix() for p in markdown_pages(tmp_path)] == [
        "a.md",
        "b.md",
        "sub/a.md",
    ]
    report = ExampleValidator("http://x", "e", "p").run(markdown_pages(tmp_path), root=tmp_path)
    assert report.outcomes == []
