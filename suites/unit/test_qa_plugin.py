"""The harness's pytest plugin: option parsing, the choice of database flavours per test, and
its fixtures, in inner pytest sessions that launch no backend (those that do are in
``suites/integration/test_harness.py``)."""

from __future__ import annotations

import pytest

from qa.launcher import TARGET_EMAIL_ENV, TARGET_PASSWORD_ENV
from qa.plugin import _flavours, flavours_for

BACKEND_TEST = """
def test_live(client):
    assert client.get("/health/live").json() == {"status": "pass"}
"""

PLAIN_TEST = """
def test_plain():
    assert True
"""


class StubConfig:
    def __init__(self, db: str, target: str | None = None) -> None:
        self.options = {"--db": db, "--target": target}

    def getoption(self, name: str) -> object:
        return self.options[name]


@pytest.mark.parametrize(
    ("db", "expected"),
    [
        ("sqlite", ["sqlite"]),
        ("postgresql", ["postgresql"]),
        ("sqlite,postgresql", ["sqlite", "postgresql"]),
        (" sqlite , postgresql ,", ["sqlite", "postgresql"]),
    ],
)
def test_flavours_parse_the_db_option(db: str, expected: list[str]) -> None:
    assert _flavours(StubConfig(db)) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("db", "message"),
    [
        ("bogus", "got ['bogus']"),
        ("sqlite,mysql,oracle", "got ['mysql', 'oracle']"),
        ("", "got nothing"),
        (" , ", "got nothing"),
    ],
)
def test_flavours_refuse_unknown_or_missing_databases(db: str, message: str) -> None:
    with pytest.raises(pytest.UsageError, match="--db takes sqlite, postgresql") as caught:
        _flavours(StubConfig(db))  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_target_replaces_the_flavours() -> None:
    assert _flavours(StubConfig("bogus", target="https://x.example")) == ["remote"]  # type: ignore[arg-type]


@pytest.mark.parametrize("source", [BACKEND_TEST, PLAIN_TEST], ids=["backend-test", "plain-test"])
def test_bad_db_option_is_a_usage_error(pytester: pytest.Pytester, source: str) -> None:
    """A bad --db is a mistake on the command line: pytest's usage error (exit code 4, an
    "ERROR:" line), whatever tests happen to be collected; not a collection error charged to
    the first test file that uses a backend, and not silently accepted when none does."""
    pytester.makepyfile(source)
    result = pytester.runpytest("--db=bogus")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines(["ERROR: --db takes sqlite, postgresql; got ['bogus']"])


def test_target_without_credentials_fails_the_setup(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TARGET_EMAIL_ENV, raising=False)
    monkeypatch.delenv(TARGET_PASSWORD_ENV, raising=False)
    pytester.makepyfile(BACKEND_TEST)
    result = pytester.runpytest("--target=http://127.0.0.1:9")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*--target needs the admin's credentials in {TARGET_EMAIL_ENV}*"])


def test_options_are_listed_in_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*Renum harness*", "*--db=DB*", "*--target=URL*"])


# --- which tests run on both databases ----------------------------------------------------

SELECTION_CONFTEST = """
import pytest

setups = []


@pytest.fixture(scope="session")
def launched(db_flavour):
    # Stands in for the session's backend: one per flavour, shared by every test on it.
    setups.append(db_flavour)
    return db_flavour


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"backends started: {setups}")
"""

SELECTION_TESTS = """
import pytest


def test_unmarked(launched):
    pass


@pytest.mark.both_databases
def test_marked(launched):
    pass


@pytest.mark.both_databases
class TestMarkedClass:
    def test_in_class(self, launched):
        pass


def test_lazy(request):
    assert request.getfixturevalue("db_flavour") == request.config.getoption("--db").split(",")[0]


@pytest.mark.parametrize("flavour", ["sqlite", "postgresql"])
def test_names_its_own_flavour(flavour):
    pass


def test_no_backend():
    pass
"""

MARKED_MODULE = """
import pytest

pytestmark = pytest.mark.both_databases


def test_in_marked_module(db_flavour):
    pass
"""


@pytest.mark.parametrize(
    ("db", "marked", "expected"),
    [
        ("sqlite,postgresql", True, ["sqlite", "postgresql"]),
        ("sqlite,postgresql", False, ["sqlite"]),
        ("postgresql,sqlite", False, ["postgresql"]),
        ("postgresql", True, ["postgresql"]),
        ("sqlite", False, ["sqlite"]),
    ],
)
def test_marked_tests_get_every_flavour_and_the_others_the_first(
    db: str, marked: bool, expected: list[str]
) -> None:
    assert flavours_for(StubConfig(db), marked) == expected  # type: ignore[arg-type]


def test_under_target_every_test_runs_once_on_the_deployment() -> None:
    config = StubConfig("sqlite,postgresql", target="https://x.example")
    assert flavours_for(config, True) == flavours_for(config, False) == ["remote"]  # type: ignore[arg-type]


def _selected(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makeconftest(SELECTION_CONFTEST)
    pytester.makepyfile(test_selection=SELECTION_TESTS, test_marked_module=MARKED_MODULE)
    return pytester.runpytest("-v", *args)


def test_on_two_databases_marked_tests_run_on_both_and_the_rest_once(
    pytester: pytest.Pytester,
) -> None:
    result = _selected(pytester, "--db=sqlite,postgresql")
    result.assert_outcomes(passed=11)
    result.stdout.fnmatch_lines_random(
        [
            "*test_selection.py::test_unmarked?sqlite? PASSED*",
            "*test_selection.py::test_marked?sqlite? PASSED*",
            "*test_selection.py::test_marked?postgresql? PASSED*",
            "*test_selection.py::TestMarkedClass::test_in_class?sqlite? PASSED*",
            "*test_selection.py::TestMarkedClass::test_in_class?postgresql? PASSED*",
            "*test_selection.py::test_lazy PASSED*",
            "*test_selection.py::test_names_its_own_flavour?sqlite? PASSED*",
            "*test_selection.py::test_names_its_own_flavour?postgresql? PASSED*",
            "*test_selection.py::test_no_backend PASSED*",
            "*test_marked_module.py::test_in_marked_module?sqlite? PASSED*",
            "*test_marked_module.py::test_in_marked_module?postgresql? PASSED*",
        ]
    )
    result.stdout.no_fnmatch_line("*test_unmarked?postgresql?*")
    # One backend per flavour, shared by the marked and the unmarked tests on it.
    result.stdout.fnmatch_lines(["backends started: ['sqlite', 'postgresql']"])


def test_the_first_flavour_given_is_the_one_for_unmarked_tests(pytester: pytest.Pytester) -> None:
    result = _selected(pytester, "--db=postgresql,sqlite")
    result.assert_outcomes(passed=11)
    result.stdout.fnmatch_lines(["*test_selection.py::test_unmarked?postgresql? PASSED*"])
    result.stdout.no_fnmatch_line("*test_unmarked?sqlite?*")
    result.stdout.fnmatch_lines(["backends started: ['postgresql', 'sqlite']"])


def test_on_one_database_every_test_runs_once(pytester: pytest.Pytester) -> None:
    result = _selected(pytester, "--db=sqlite")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["backends started: ['sqlite']"])


def test_the_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.both_databases: *every flavour given with --db*"])


def test_drills_are_selected_by_their_mark_or_their_directory(pytester: pytest.Pytester) -> None:
    """`nox -s integration` runs `-m "not drill"` and `nox -s drills` runs `-m drill` over
    suites/drills and suites/integration: a test marked `drill`, and every test under a
    `drills` directory, moves from the first run to the second."""
    pytester.makepyfile(
        test_integration="""
import pytest

def test_short():
    pass

@pytest.mark.drill
def test_long():
    pass
"""
    )
    pytester.mkdir("drills")
    (pytester.path / "drills" / "test_drill.py").write_text("def test_kill():\n    pass\n")

    default = pytester.runpytest("-m", "not drill", "-v")
    default.assert_outcomes(passed=1, deselected=2)
    default.stdout.fnmatch_lines(["*test_integration.py::test_short PASSED*"])
    drills = pytester.runpytest("-m", "drill", "-v")
    drills.assert_outcomes(passed=2, deselected=1)
    drills.stdout.fnmatch_lines_random(
        ["*test_integration.py::test_long PASSED*", "*drills/test_drill.py::test_kill PASSED*"]
    )
