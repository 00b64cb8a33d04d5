"""DocumentationGenerator: pages from a small fixture schema (suites/fixtures/doc_schema.json),
the examples planned from its links, the configuration and health pages, writing, and the
generator run on this backend's own schema."""

from __future__ import annotations

import json
import subprocess
from enum import StrEnum
from pathlib import Path

import pytest
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from typer.testing import CliRunner

from app.capabilities.docs import generator as doc_generator
from app.capabilities.docs.generator import (
    GENERATED_NOTE,
    DocumentationGenerator,
    ExamplePlan,
    HealthDocs,
    cell,
    code,
    constraints,
    jq_path,
    sample,
    settings_rows,
    slug,
)
from app.capabilities.health.registry import PROBES, Troubleshooting, registered_checks
from app.cli import cli
from app.core.config import LIVE
from app.main import reference_docs
from app.services.engine.events import EVENT_TYPES
from qa.examples import ExampleValidator

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "doc_schema.json"


@pytest.fixture
def schema() -> dict:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


@pytest.fixture
def generator(schema: dict) -> DocumentationGenerator:
    return DocumentationGenerator(schema)


class Mode(StrEnum):
    fast = "fast"
    safe = "safe"


class Group(BaseModel):
    size: int = Field(default=3, ge=1, le=9, description="How many.")
    names: list[str] = Field(default_factory=list, description="Some names.")


class SmallSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="APP_", env_nested_delimiter="__")

    mode: Mode = Field(default=Mode.fast, description="The mode.", json_schema_extra=LIVE)
    token: SecretStr = Field(default=SecretStr("dev-only"), description="A secret.")
    url: str | None = Field(default=None, description="Optional URL.")
    required_name: str = Field(description="Must be given.")
    group: Group = Field(default_factory=Group)


def test_pages_are_one_per_tag_plus_index_and_schemas(generator: DocumentationGenerator) -> None:
    assert list(generator.pages()) == [
        "api-auth.md",
        "api-ops.md",
        "api-parts.md",
        "api-widgets.md",
        "index.md",
        "schemas.md",
    ]


def test_index_lists_every_operation_with_its_role(generator: DocumentationGenerator) -> None:
    index = generator.index_page()
    assert "# API reference" in index
    assert GENERATED_NOTE in index
    for op in generator.operations:
        assert f"[{op.operation_id}]({generator.page_name(op.tag)}#{slug(op.operation_id)})" in (
            index
        )
    assert "| [create_widget](api-widgets.md#create-widget) | POST | `/api/widgets` |" in index
    assert "member or higher" in index
    assert "none (public)" in index  # the metrics endpoint has no security
    assert "- [Widgets](api-widgets.md): 4 operations" in index


def test_operation_entry_has_fields_statuses_and_links(generator: DocumentationGenerator) -> None:
    page = generator.tag_page("widgets")
    assert "## Create a widget { #create-widget }" in page
    assert "`POST /api/widgets` · operation `create_widget`" in page
    assert "Makes a widget | any size." in page  # descriptions are prose, not table cells
    assert "| `name` | string | yes | min length 1; max length 40; pattern `^[a-z|-]+$` |" in page
    assert "| `size` | integer | yes | ≥ 1; ≤ 10 | How big. |" in page
    assert "| `tags` | array of string or null | no | max items 5 |  |" in page
    assert "| `colour` | [Colour](schemas.md#colour) | yes |" in page
    assert "| 422 | Unprocessable Content | `application/problem+json` [Problem]" in page
    assert "- AddPart: [add_part](api-parts.md#add-part): Give it a part." in page
    assert "| `limit` | query | integer | no | ≥ 1; ≤ 100; default `20` | Items per page. |" in page
    assert "An array of [WidgetOut](schemas.md#widgetout)." in page


def test_examples_follow_links_in_page_order(generator: DocumentationGenerator) -> None:
    ops = [op for op in generator.operations if op.tag == "widgets"]
    plan = ExamplePlan(generator, ops)
    assert [op.operation_id for op in plan.ordered] == [
        "create_widget",
        "list_widgets",
        "get_widget",
        "delete_widget",
    ]
    create = plan.examples["create_widget"]
    assert "--data-binary @- <<EOF" in create
    assert '\n{"name": "gear-$RUN", "size": 1, "colour": "red"}\nEOF' in create
    assert "| tee response.json | jq ." in create
    assert "WIDGET_ID=$(jq -r '.id' response.json)" in create
    # a list's first item is never kept: an empty list has none
    assert "WIDGET_ID" not in plan.examples["list_widgets"]
    assert '"$RENUM_URL/api/widgets/$WIDGET_ID"' in plan.examples["delete_widget"]
    assert plan.setup.startswith("RUN=$RANDOM$RANDOM  # ends the names created below")
    assert plan.setup.splitlines()[1].startswith("TOKEN=$(curl")


def test_setup_creates_what_another_page_needs(generator: DocumentationGenerator) -> None:
    page = generator.tag_page("parts")
    setup = page.split("## Setup", 1)[1].split("## Add a part", 1)[0]
    assert '"name": "gear-for-parts-$RUN"' in setup  # a setup's names do not clash with the page's
    assert "\nRUN=$RANDOM$RANDOM" in setup  # nor with those of an earlier run of the page
    assert "<<EOF > response.json\n" in setup
    assert "\nEOF\nWIDGET_ID=$(jq -r '.id' response.json)" in setup
    assert '"$RENUM_URL/api/widgets/$WIDGET_ID/parts"' in page
    assert '"label": "example-label"' in page  # padded to its minimum length


def test_login_form_and_linked_body_values(generator: DocumentationGenerator) -> None:
    ops = [op for op in generator.operations if op.tag == "auth"]
    plan = ExamplePlan(generator, ops)
    assert [op.operation_id for op in plan.ordered] == ["login", "logout"]
    login = plan.examples["login"]
    assert '--data-urlencode "username=$RENUM_EMAIL"' in login
    assert "REFRESH_TOKEN=$(jq -r '.refresh_token' response.json)" in login
    logout = plan.examples["logout"]
    assert '--data-binary @- <<EOF\n{"refresh_token": "$REFRESH_TOKEN"}\nEOF' in logout
    assert "Authorization" not in logout
    assert plan.setup == ""  # nothing on the page needs a token


def test_an_input_no_link_provides_stops_its_example_with_a_reason() -> None:
    operation = {
        "operationId": "get_gadget",
        "tags": ["gadgets"],
        "parameters": [{"name": "gadget_id", "in": "path", "required": True, "schema": {}}],
        "responses": {"200": {"description": "A gadget."}},
    }
    generator = DocumentationGenerator({"paths": {"/gadgets/{gadget_id}": {"get": operation}}})
    example = ExamplePlan(generator, generator.operations).examples["get_gadget"]
    assert example.splitlines()[0] == (
        ': "${GADGET_ID:?no operation links to a gadget_id; add an OpenAPI link from the '
        'operation that creates one}"'
    )
    page = f"```bash\n{example}\n```\n"
    (outcome,) = ExampleValidator("http://127.0.0.1:9", "e", "p").run_page(page, "p.md").outcomes
    assert not outcome.passed
    assert "GADGET_ID: no operation links to a gadget_id" in outcome.output


def test_non_json_responses_are_not_piped_to_jq(generator: DocumentationGenerator) -> None:
    page = generator.tag_page("ops")
    assert 'curl -sS --fail-with-body -X GET "$RENUM_URL/metrics"\n```' in page
    assert "| 200 | OK | `text/plain` string | Prometheus text. |" in page


def test_not_runnable_examples_are_titled(
    generator: DocumentationGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(doc_generator.NOT_RUNNABLE, "get_widget", "needs a real widget")
    page = generator.tag_page("widgets")
    assert '```bash title="Not run: needs a real widget"' in page
    assert page.count('```bash title="Example"') == 3


def test_schemas_page(generator: DocumentationGenerator) -> None:
    page = generator.schemas_page()
    assert "## Colour { #colour }" in page
    assert "A `string`, one of `red`, `green`." in page
    assert "An RFC 9457 problem document." in page
    assert "| `fragile` | boolean | no | default `false` |  |" in page


def test_roles() -> None:
    generator = DocumentationGenerator(
        {
            "paths": {
                "/a": {"get": {"operationId": "a", "security": [{"x": []}], "responses": {}}},
                "/b": {
                    "get": {
                        "operationId": "b",
                        "security": [{"x": []}],
                        "responses": {"401": {"description": "who?"}, "403": {"description": "no"}},
                    }
                },
                "/c": {"get": {"operationId": "c", "security": [{"x": []}], "responses": {}}},
            }
        }
    )
    a, b, c = generator.operations
    a.spec["responses"]["401"] = {"description": "who?"}
    assert generator.role(a) == "any signed-in user (viewer or higher)"
    assert generator.role(c) == "none (public); credentials may show more"
    assert "checks the caller's role" in generator.role(b)
    assert c.success is None
    assert c.links() == {}


def test_values_sampled_from_schemas(generator: DocumentationGenerator) -> None:
    assert sample(generator, {"type": "string", "format": "email"}, "e", {}) == (
        "someone@example.com"
    )
    assert sample(generator, {"type": "string", "format": "date-time"}, "t", {}) == (
        "2030-01-01T00:00:00Z"
    )
    assert sample(generator, {"type": "boolean"}, "b", {}) is False
    assert sample(generator, {"type": "number", "exclusiveMinimum": 0}, "n", {}) == 1
    assert sample(generator, {"type": "array", "minItems": 2, "items": {"const": 1}}, "x", {}) == [
        1,
        1,
    ]
    assert sample(generator, {"type": "array", "items": {}}, "ids", {"ids": "WIDGET_ID"}) == [
        "$WIDGET_ID"
    ]
    assert sample(generator, {"type": "string", "format": "uuid"}, "id", {"id": "X"}) == "$X"
    email = {"type": "string", "format": "email", "examples": ["ann@example.com"]}
    assert sample(generator, email, "owner", {}, suffix="-for-x") == "ann-for-x@example.com"


def test_small_helpers() -> None:
    assert slug("Create a Team!") == "create-a-team"
    assert slug("Page_TeamOut_") == "page-teamout-"
    assert cell("a |\n b") == "a \\| b"
    assert cell("x | `a|b` | `` c|`d `` |") == "x \\| `a|b` \\| `` c|`d `` \\|"
    assert code("has `tick`") == "`` has `tick` ``"
    assert code({"b": 1, "a": [2]}) == '`{"a": [2], "b": 1}`'
    assert jq_path("/id") == ".id"
    assert jq_path("/items/0/id") == ".items[0].id"
    assert jq_path("/0/agent_id") == ".[0].agent_id"
    assert jq_path("") == "."
    assert constraints({"anyOf": [{"type": "integer", "maximum": 3}, {"type": "null"}]}) == "≤ 3"
    assert constraints({"exclusiveMaximum": 4, "minItems": 1, "uniqueItems": True}) == (
        "< 4; min items 1; unique items"
    )


def test_type_names(generator: DocumentationGenerator) -> None:
    assert generator.type_of(None) == "any"
    assert generator.type_of({"allOf": [{"$ref": "#/x/Colour"}]}) == "[Colour](schemas.md#colour)"
    assert generator.type_of({"type": "object", "additionalProperties": {"type": "integer"}}) == (
        "object of integer"
    )
    assert generator.type_of({"const": "openai"}) == "`openai`"
    assert generator.type_of({"type": ["string", "null"]}) == "string or null"
    assert generator.fields_table({"type": "string"}) == ["string."]


def test_configuration_reference_from_a_settings_model() -> None:
    rows = {row.env: row for row in settings_rows(SmallSettings)}
    assert list(rows) == [
        "APP_MODE",
        "APP_TOKEN",
        "APP_URL",
        "APP_REQUIRED_NAME",
        "APP_GROUP__SIZE",
        "APP_GROUP__NAMES",
    ]
    assert rows["APP_MODE"].type == "one of fast, safe"
    assert rows["APP_MODE"].default == "`fast`"
    assert rows["APP_TOKEN"].default == "a development value (set it)"
    assert rows["APP_URL"].default == "unset"
    assert rows["APP_URL"].type == "str | None"
    assert rows["APP_REQUIRED_NAME"].default == "required"
    assert rows["APP_GROUP__SIZE"].path == "group.size"
    assert rows["APP_GROUP__SIZE"].description == "How many. (≥ 1, ≤ 9)"
    assert rows["APP_GROUP__NAMES"].default == "empty"
    assert (rows["APP_MODE"].reload, rows["APP_URL"].reload) == ("live", "restart")
    page = DocumentationGenerator({}, settings_model=SmallSettings).pages()["configuration.md"]
    assert "| `group.size` | `APP_GROUP__SIZE` | int | `3` | restart | How many. (≥ 1, ≤ 9) |" in (
        page
    )
    assert "## Profiles" not in page
    profiles = {"dev": {"mode": "safe"}, "prod": {"group": {"size": 9}}}
    generator = DocumentationGenerator({}, settings_model=SmallSettings, profiles=profiles)
    with_profiles = generator.pages()["configuration.md"]
    assert "| Setting | dev | prod |" in with_profiles
    assert "| `mode` | `safe` | - |" in with_profiles
    assert "| `group.size` | - | `9` |" in with_profiles
    assert "`group.names` |" not in with_profiles.split("## Profiles")[1]


def test_health_page_and_troubleshooting_snippet() -> None:
    checks = [
        {
            "name": "disk",
            "kind": "storage",
            "critical": True,
            "timeout_seconds": 1.0,
            "interval_seconds": 5.0,
            "ttl_seconds": 20.0,
            "failure_threshold": 2,
            "affected_endpoints": ["POST /files"],
            "troubleshooting": Troubleshooting("Full.", "Logs grew.", "Rotate them.", "disk-full"),
        },
        {"name": "clock", "kind": "time", "critical": False, "troubleshooting": None},
    ]
    probes = [{"path": "/live", "purpose": "Up.", "status_codes": {200: "up"}}]
    health = HealthDocs(probes=probes, checks=checks)
    pages = DocumentationGenerator({}, health=health).pages()
    page = pages["health.md"]
    assert "| `/live` | Up. | 200: up |" in page
    assert "| [disk](../troubleshooting.md#disk-full) | storage | yes | 1.0 | 5.0 | 20.0 | 2 |" in (
        page
    )
    assert "| [clock](../troubleshooting.md#check-clock) | time | no |" in page
    snippet = pages[doc_generator.TROUBLESHOOTING_SNIPPET]
    assert "### disk { #disk-full }" in snippet
    assert "- **Fix:** Rotate them." in snippet
    assert "### clock { #check-clock }\n\nNo troubleshooting entry yet." in snippet


def test_write_reports_changes_and_removes_stale_pages(
    generator: DocumentationGenerator, tmp_path: Path
) -> None:
    (tmp_path / "api-gone.md").write_text(f"# Gone\n\n{GENERATED_NOTE}\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("# Hand-written\n", encoding="utf-8")
    changed = generator.write(tmp_path)
    assert "api-widgets.md" in changed
    assert "api-gone.md" in changed
    assert not (tmp_path / "api-gone.md").exists()
    assert (tmp_path / "notes.md").exists()
    assert generator.write(tmp_path) == []  # deterministic: a second run changes nothing


def test_this_backend_is_fully_documented() -> None:
    generator = reference_docs()
    pages = generator.pages()
    assert {"index.md", "configuration.md", "health.md", "api-teams.md"} <= set(pages)
    index = pages["index.md"]
    for op in generator.operations:
        assert f"[{op.operation_id}](" in index
    assert "`RENUM_DATABASE__URL`" in pages["configuration.md"]
    for check in registered_checks():
        assert f"[{check.name}](../troubleshooting.md#" in pages["health.md"]
    for probe in PROBES:
        assert f"`{probe.path}`" in pages["health.md"]
    assert reference_docs().pages() == pages


def test_command_line_writes_the_pages(tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(cli, ["docs", "generate", str(tmp_path)])
    assert first.exit_code == 0, first.output
    assert f"updated {tmp_path / 'index.md'}" in first.output
    assert (tmp_path / "api-teams.md").exists()
    again = runner.invoke(cli, ["docs", "generate", str(tmp_path)])
    assert again.exit_code == 0, again.output
    assert f"reference pages in {tmp_path}: 0 changed" in again.output


def test_the_required_role_is_read_from_the_schema() -> None:
    schema = {
        "openapi": "3.1.0",
        "paths": {
            "/api/widgets/{widget_id}": {
                "get": {"operationId": "get_widget", "x-required-role": "member", "responses": {}},
                "delete": {
                    "operationId": "delete_widget",
                    "x-required-role": "admin",
                    "responses": {},
                },
            }
        },
    }
    generator = DocumentationGenerator(schema)
    assert generator.role(generator.find("get_widget")) == "member or higher"
    assert generator.role(generator.find("delete_widget")) == "admin"


def test_this_backends_roles() -> None:
    generator = reference_docs()
    assert generator.role(generator.find("create_team")) == "member or higher"
    assert generator.role(generator.find("list_users")) == "owner or higher"
    assert generator.role(generator.find("create_account")) == "admin"
    assert generator.role(generator.find("list_teams")) == "any signed-in user (viewer or higher)"


def test_the_events_page_lists_every_event_with_when_and_its_data() -> None:
    generator = DocumentationGenerator(schema={"paths": {}}, events=EVENT_TYPES)
    page = generator.pages()["events.md"]
    for event in EVENT_TYPES:
        section = page.split(f"## `{event.type}`", 1)[1].split("\n## ", 1)[0]
        assert (event.__doc__ or "").split()[0] in section  # when it is emitted
        for data_field in event.data_fields():
            assert f"| `{data_field.key}` |" in section
    assert "| `total_cost_usd` | string (a decimal number) | What the execution has cost" in page
    assert "| `status` | one of " in page  # an enum names its values
    assert "string (a UUID)" in page


def test_the_backend_s_reference_has_the_events_page() -> None:
    generator = reference_docs()
    assert {event.type for event in generator.events} == {e.type for e in EVENT_TYPES}
    assert "events.md" in generator.pages()


@pytest.mark.parametrize(
    ("tag", "title"),
    [("api-keys", "API keys"), ("team-members", "Team members"), ("ops", "Ops")],
)
def test_a_page_title_spells_acronyms_as_such(tag: str, title: str) -> None:
    assert doc_generator._title(tag) == title


def test_a_heredoc_body_expands_only_the_examples_own_variables() -> None:
    value = {
        "name": "researcher-$RUN",
        "agent_id": "$AGENT_ID",
        "template": "`id` $HOME $(whoami) \\ {{ input }} $RUNNER",
    }
    body = doc_generator.heredoc_body(json.dumps(value), {"RUN", "AGENT_ID"})
    shell = subprocess.run(  # noqa: S603 - bash reading a heredoc, nothing else
        ["/bin/bash", "-c", f"cat <<EOF\n{body}\nEOF"],
        env={"RUN": "42", "AGENT_ID": "a-1", "HOME": "/root", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(shell.stdout) == {
        "name": "researcher-42",
        "agent_id": "a-1",
        "template": "`id` $HOME $(whoami) \\ {{ input }} $RUNNER",  # exactly as written
    }
