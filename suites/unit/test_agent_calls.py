"""Which key a model call carries, where it goes and who pays: the platform's key only to the
platform's base URL (trusted client), a tenant's own key elsewhere (guarded client), and no
call at all for an agent pointed elsewhere without a key of its own. The fake OpenAI server
on loopback plays both the platform and a tenant's endpoint (reached as ``localhost``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from template_support import OwnerRecorder

from app.core.crypto import SecretBox
from app.core.egress import EgressClients
from app.models import Agent, ProviderKey
from app.services.engine.agent_calls import AgentCaller
from app.services.provider_keys import provider_key_aad
from app.services.providers import ProviderAuthError, ProviderUnavailable
from app.services.providers.builtin import BuiltinAgentError
from app.services.providers.prices import PriceTable
from qa.fake_openai import FakeOpenAI
from suites.unit.conftest import MakeSettings

pytestmark = pytest.mark.anyio

PLATFORM_KEY = "sk-platform-canary-0123456789"
USER_KEY = "sk-user-own-key-9876543210"
ACCOUNT = uuid.uuid4()


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeOpenAI) -> FakeOpenAI:
    server.reset()
    return server


def make_caller(make_settings: MakeSettings, fake: FakeOpenAI, allow: str = "") -> AgentCaller:
    settings = make_settings(
        providers={"openai_base_url": fake.base_url, "openai_api_key": PLATFORM_KEY},
        egress={"allow": allow},
    )
    return AgentCaller(
        settings,
        SecretBox.from_settings(settings),
        PriceTable.load({}),
        EgressClients.build(settings),
    )


@pytest.fixture
async def caller(make_settings: MakeSettings, fake: FakeOpenAI) -> AsyncIterator[AgentCaller]:
    made = make_caller(make_settings, fake)
    yield made
    await made.http.aclose()


def agent(base_url: str | None = None, key: ProviderKey | None = None) -> Agent:
    return Agent(
        id=uuid.uuid4(),
        account_id=ACCOUNT,
        name="a",
        provider="openai",
        model="gpt-4o-mini",
        parameters={},
        timeout_seconds=5.0,
        retry={"max_attempts": 1},
        base_url=base_url,
        provider_key_id=key.id if key else None,
    )


def user_key(box: SecretBox) -> ProviderKey:
    key_id = uuid.uuid4()
    return ProviderKey(
        id=key_id,
        account_id=ACCOUNT,
        user_id=uuid.uuid4(),
        name="mine",
        provider="openai",
        sealed_key=box.seal(USER_KEY, provider_key_aad(ACCOUNT, key_id)),
        encryption_key_id=box.current_key_id,
        hint="sk-...3210",
    )


async def run(caller: AgentCaller, row: Agent, key: ProviderKey | None = None) -> Any:
    return await caller.call(row, key, step_input="hi", context={}, variables={})


@pytest.mark.parametrize("base_url", [None, "platform", "platform/"])
async def test_the_platform_key_goes_to_the_platform_url(
    caller: AgentCaller, fake: FakeOpenAI, base_url: str | None
) -> None:
    url = None if base_url is None else base_url.replace("platform", fake.base_url)
    outcome = await run(caller, agent(url))
    assert outcome.paid_by == "platform"
    assert outcome.output == "echo: hi"
    [request] = fake.completions
    assert request.headers["authorization"] == f"Bearer {PLATFORM_KEY}"


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:{port}/v1",  # another host name for the same server
        "http://127.0.0.1:{port}/v1evil",  # a path that only starts like the platform's
        "http://127.0.0.1:{port}/",  # above the platform's path
    ],
)
async def test_without_its_own_key_an_agent_elsewhere_sends_nothing(
    caller: AgentCaller, fake: FakeOpenAI, url: str
) -> None:
    with pytest.raises(ProviderAuthError) as caught:
        await run(caller, agent(url.format(port=fake.port)))
    assert "needs its own provider key" in caught.value.message
    assert not caught.value.retryable
    assert fake.requests == []


async def test_a_tenant_url_meets_the_guard_even_with_the_users_key(
    caller: AgentCaller, fake: FakeOpenAI
) -> None:
    key = user_key(caller.box)
    with pytest.raises(ProviderUnavailable, match="provider unreachable"):
        await run(caller, agent(f"http://localhost:{fake.port}/v1", key), key)
    assert fake.requests == []


async def test_an_allowed_tenant_url_gets_the_users_key_and_the_user_pays(
    make_settings: MakeSettings, fake: FakeOpenAI
) -> None:
    caller = make_caller(make_settings, fake, allow=f"127.0.0.1:{fake.port}")
    try:
        key = user_key(caller.box)
        outcome = await run(caller, agent(f"http://localhost:{fake.port}/v1", key), key)
        platform = await run(caller, agent(None, key), key)  # the user's key on the platform
    finally:
        await caller.http.aclose()
    assert outcome.paid_by == "user"
    assert platform.paid_by == "user"
    assert [r.headers["authorization"] for r in fake.completions] == [f"Bearer {USER_KEY}"] * 2


async def test_a_template_agent_renders_as_its_account(
    make_settings: MakeSettings, fake: FakeOpenAI
) -> None:
    recorder = OwnerRecorder()
    settings = make_settings()
    caller = AgentCaller(
        settings,
        SecretBox.from_settings(settings),
        PriceTable.load({}),
        EgressClients.build(settings),
        templates=recorder,
    )
    row = agent()
    row.provider, row.model, row.parameters = "builtin", "template", {"template": "hello"}
    try:
        outcome = await run(caller, row)
    finally:
        await caller.http.aclose()
    assert outcome.output == "hello"
    assert recorder.renders == [("hello", ACCOUNT)]  # its account's share of the workers


async def test_a_builtin_agent_ends_at_its_own_timeout(caller: AgentCaller) -> None:
    row = agent()
    row.provider, row.model, row.parameters = "builtin", "wait", {"seconds": 600}
    row.timeout_seconds = 0.05  # a stored agent whose wait outlasts its timeout
    with pytest.raises(BuiltinAgentError, match=r"within its timeout_seconds \(0.05\)"):
        await run(caller, row)
