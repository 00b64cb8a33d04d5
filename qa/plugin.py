"""The harness's pytest plugin (registered as ``renum_qa``): options and shared fixtures.

Options: ``--db sqlite,postgresql`` picks the database flavours the backend is launched on;
``--target URL`` runs against a deployment instead (admin credentials from
``RENUM_QA_ADMIN_EMAIL`` / ``RENUM_QA_ADMIN_PASSWORD``).

Which flavours a test runs on: a test (or module, or class) marked ``both_databases`` runs
once per flavour given with ``--db``; any other test that uses a backend runs once, on the
first flavour given. Tests whose behaviour depends on the database (transactions, locking,
resuming executions, migrations, aggregation queries) carry the mark; the rest would only
repeat themselves. A test that launches a backend on a flavour it names itself is not
affected either way.

Fixtures: ``backend``, ``client`` (anonymous), ``admin_client``, ``tenant`` and
``other_tenant`` (an account with owner, member and viewer each), ``owner_client``,
``member_client``, ``viewer_client``, ``other_owner_client``, ``login`` (a client for any
credentials) and ``launch_backend`` (a private server with its own settings).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from qa.client import ApiClient
from qa.factories import Member, Tenant, create_tenant
from qa.launcher import FLAVOURS, Backend, LaunchedBackend, remote_backend

LaunchBackend = Callable[..., LaunchedBackend]
# Set by a suite that sends bursts on purpose (the contract tests): its backend is launched
# with the throttling's thresholds raised (``LaunchedBackend.start(bursts=True)``).
SENDS_BURSTS = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("renum", "Renum harness")
    group.addoption(
        "--db",
        default="sqlite",
        help="Comma-separated database flavours to launch the backend on: sqlite, postgresql.",
    )
    group.addoption(
        "--target",
        default=None,
        metavar="URL",
        help="Test a deployed backend at URL instead of launching one.",
    )


def _flavours(config: pytest.Config) -> list[str]:
    if config.getoption("--target"):
        return ["remote"]
    flavours = [f.strip() for f in str(config.getoption("--db")).split(",") if f.strip()]
    unknown = sorted(set(flavours) - set(FLAVOURS))
    if unknown or not flavours:
        raise pytest.UsageError(f"--db takes {', '.join(FLAVOURS)}; got {unknown or 'nothing'}")
    return flavours


BOTH_DATABASES = "both_databases"
# A long scenario (a kill, a restart, an outage, a backup and its restore, several processes)
# among the integration tests: `nox -s integration` leaves it out (`-m "not drill"`) to keep
# the default run short, and `nox -s drills` runs it with the drills.
DRILL = "drill"


def pytest_configure(config: pytest.Config) -> None:
    _flavours(config)  # a bad --db is a usage error at once, not a collection error later
    config.addinivalue_line(
        "markers",
        f"{BOTH_DATABASES}: the test's behaviour depends on the database; it runs on every "
        "flavour given with --db (other tests run on the first one only)",
    )
    config.addinivalue_line(
        "markers",
        f"{DRILL}: a long scenario, run by `nox -s drills` instead of the default run",
    )


@pytest.hookimpl(tryfirst=True)  # marked before `-m` selects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under a ``drills`` directory of the tree under test is a drill (``DRILL``)."""
    for item in items:
        if "drills" in item.path.parent.relative_to(config.rootpath).parts:
            item.add_marker(DRILL)


def flavours_for(config: pytest.Config, marked: bool) -> list[str]:
    """The flavours a test runs on: every one of ``--db`` when marked ``both_databases``,
    else the first."""
    flavours = _flavours(config)
    return flavours if marked else flavours[:1]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_flavour" in metafunc.fixturenames:
        marked = metafunc.definition.get_closest_marker(BOTH_DATABASES) is not None
        flavours = flavours_for(metafunc.config, marked)
        metafunc.parametrize("db_flavour", flavours, scope="session")


@pytest.fixture(scope="session")
def db_flavour(request: pytest.FixtureRequest) -> str:
    """The first flavour of ``--db``; tests that name a backend fixture are parametrised
    instead (``pytest_generate_tests``: every flavour when marked ``both_databases``, else the
    first). This covers fixtures requested lazily."""
    return _flavours(request.config)[0]


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest, db_flavour: str) -> Iterator[Backend]:
    """The backend under test: launched on ``db_flavour``, or the ``--target`` deployment."""
    target = request.config.getoption("--target")
    if target:
        yield remote_backend(target)
        return
    launched = LaunchedBackend.start(
        db_flavour,
        extra_env={"RENUM_AUTH__ACCESS_TOKEN_MINUTES": "120"},
        bursts=request.config.stash.get(SENDS_BURSTS, False),
    )
    try:
        yield launched
    finally:
        launched.stop()


@pytest.fixture
def launch_backend() -> Iterator[LaunchBackend]:
    """Start private servers with their own settings; all are stopped after the test."""
    started: list[LaunchedBackend] = []

    def launch(flavour: str = "sqlite", **kwargs: object) -> LaunchedBackend:
        server = LaunchedBackend.start(flavour, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield launch
    for server in started:
        server.stop()


@pytest.fixture
def client(backend: Backend) -> Iterator[ApiClient]:
    """An anonymous client."""
    with ApiClient(backend.base_url) as anonymous:
        yield anonymous


@pytest.fixture(scope="session")
def login(backend: Backend) -> Iterator[Callable[[str, str], ApiClient]]:
    """``login(email, password)``: a client logged in with those credentials."""
    opened: list[ApiClient] = []

    def make(email: str, password: str) -> ApiClient:
        logged_in = ApiClient(backend.base_url).login(email, password)
        opened.append(logged_in)
        return logged_in

    yield make
    for opened_client in opened:
        opened_client.close()


@pytest.fixture(scope="session")
def admin_client(backend: Backend, login: Callable[[str, str], ApiClient]) -> ApiClient:
    return login(backend.admin_email, backend.admin_password)


@pytest.fixture(scope="session")
def tenant(admin_client: ApiClient) -> Tenant:
    return create_tenant(admin_client)


@pytest.fixture(scope="session")
def other_tenant(admin_client: ApiClient) -> Tenant:
    return create_tenant(admin_client)


def _login_member(login: Callable[[str, str], ApiClient], member: Member) -> ApiClient:
    return login(member.email, member.password)


@pytest.fixture(scope="session")
def owner_client(tenant: Tenant, login: Callable[[str, str], ApiClient]) -> ApiClient:
    return _login_member(login, tenant.owner)


@pytest.fixture(scope="session")
def member_client(tenant: Tenant, login: Callable[[str, str], ApiClient]) -> ApiClient:
    return _login_member(login, tenant.member)


@pytest.fixture(scope="session")
def viewer_client(tenant: Tenant, login: Callable[[str, str], ApiClient]) -> ApiClient:
    return _login_member(login, tenant.viewer)


@pytest.fixture(scope="session")
def other_owner_client(other_tenant: Tenant, login: Callable[[str, str], ApiClient]) -> ApiClient:
    return _login_member(login, other_tenant.owner)


@pytest.fixture
def fake_openai() -> Iterator[object]:
    """The harness's shared ``qa.fake_openai.FakeOpenAI`` on loopback (every launched
    backend's platform base URL, and allowlisted there), reset for this test: scriptable,
    with only this test's requests recorded."""
    from qa.fake_openai import shared_fake

    fake = shared_fake()
    fake.reset()
    yield fake
    fake.reset()
