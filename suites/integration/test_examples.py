"""ExampleValidator against the running backend: a page with passing examples (sharing state
between blocks), failing ones (an HTTP error, output that differs from the page) and one
marked not run; the command line, against a given backend and one it launches itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from qa import examples
from qa.examples import ExampleValidator
from qa.launcher import Backend

PAGE = """# Teams from Python and the shell

```python
import os
import uuid

import httpx

api = httpx.Client(base_url=os.environ["RENUM_URL"], timeout=30)
tokens = api.post(
    "/api/v1/auth/token",
    data={"username": os.environ["RENUM_EMAIL"], "password": os.environ["RENUM_PASSWORD"]},
).raise_for_status().json()
api.headers["Authorization"] = f"Bearer {tokens['access_token']}"
team = api.post(
    "/api/v1/teams", json={"name": f"examples-{uuid.uuid4().hex[:8]}"}
).raise_for_status().json()
print("created", team["id"], "at", team["created_at"])
```

```text title="Output"
created <id> at <time>
```

```python
again = api.get(f"/api/v1/teams/{team['id']}").raise_for_status().json()
print(again["id"] == team["id"], again["workflow_version"])
```

```text title="Output"
True 0
```

```bash
TOKEN=$(curl -sS --fail-with-body -X POST "$RENUM_URL/api/v1/auth/token" \\
  --data-urlencode "username=$RENUM_EMAIL" --data-urlencode "password=$RENUM_PASSWORD" \\
  | jq -r .access_token)
```

```bash
curl -sS --fail-with-body "$RENUM_URL/api/v1/users/me" -H "Authorization: Bearer $TOKEN" \\
  | jq -r .role
```

```text title="Output"
admin
```

```python
api.get("/api/v1/teams/00000000-0000-4000-8000-000000000000").raise_for_status()
```

```bash
curl -sS --fail-with-body "$RENUM_URL/health/live"
```

```text title="Output"
{"status":"fail"}
```

```bash title="Not run: starts a second server"
renum serve --port 9000
```
"""


@pytest.fixture
def validator(backend: Backend) -> ExampleValidator:
    return ExampleValidator(backend.base_url, backend.admin_email, backend.admin_password)


@pytest.mark.target_ok
def test_passing_failing_and_not_run_examples(validator: ExampleValidator) -> None:
    report = validator.run_page(PAGE, "docs/teams.md")
    assert [o.passed for o in report.outcomes] == [True, True, True, True, False, False], (
        report.details()
    )
    assert [b.title for b in report.not_run] == ["Not run: starts a second server"]
    assert report.summary() == ("6 examples run on 1 pages: 4 passed, 2 failed; 1 marked not run")
    http_error, differs = report.failures
    text = http_error.describe()
    assert text.startswith("docs/teams.md, block 5 (line 49, python): it failed")
    assert "api.get(" in text
    assert "404 Not Found" in text
    text = differs.describe()
    assert text.startswith(
        "docs/teams.md, block 6 (line 53, bash): its output differs from the expected output"
    )
    assert 'curl -sS --fail-with-body "$RENUM_URL/health/live"' in text
    assert 'output:\n    {"status":"pass"}' in text
    assert 'expected output:\n    {"status":"fail"}' in text


def test_command_line(backend: Backend, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.md"
    good.write_text(PAGE.split("```python\napi.get(")[0], encoding="utf-8")
    bad = tmp_path / "bad.md"
    bad.write_text(PAGE, encoding="utf-8")
    credentials = ["--email", backend.admin_email, f"--password={backend.admin_password}"]
    assert examples.main([str(good), "--url", backend.base_url, *credentials]) == 0
    assert "4 examples run on 1 pages: 4 passed, 0 failed" in capsys.readouterr().out
    assert examples.main([str(tmp_path), "--url", backend.base_url, *credentials]) == 1
    out = capsys.readouterr().out
    assert "10 examples run on 2 pages: 8 passed, 2 failed; 1 marked not run" in out
    assert f"{bad}, block 5 (line 49, python): it failed" in out


def test_command_line_launches_a_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    page = tmp_path / "page.md"
    page.write_text(PAGE.split("```python\napi.get(")[0], encoding="utf-8")
    assert examples.main([str(page)]) == 0
    assert "4 examples run on 1 pages: 4 passed, 0 failed" in capsys.readouterr().out
