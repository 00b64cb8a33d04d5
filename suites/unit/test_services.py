"""Services against a real, migrated SQLite database: the branches HTTP tests reach rarely."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import DatabaseSettings, Environment, Settings
from app.core.errors import Conflict, Forbidden, NotFound, Unauthorized, ValidationFailed
from app.core.security import TokenCodec, hash_password, verify_password
from app.db import migrate
from app.db.database import SQLAlchemyManager
from app.models import Account, ApiKey, RefreshToken, Role, User
from app.repositories.base import Scope, paginate
from app.repositories.users import UserRepository
from app.schemas.accounts import AccountCreate
from app.schemas.api_keys import ApiKeyCreate
from app.schemas.users import PasswordChange, UserCreate, UserUpdate
from app.services import auth as auth_module
from app.services.accounts import AccountService, name_key
from app.services.api_keys import ApiKeyService
from app.services.auth import AuthService
from app.services.bootstrap import (
    DEFAULT_ADMIN_EMAIL,
    PLATFORM_ACCOUNT_NAME,
    BootstrapPasswordLeft,
    bootstrap_admin,
    create_admin,
    platform_account,
)
from app.services.principal import Principal
from app.services.users import UserService

pytestmark = pytest.mark.anyio

PASSWORD = "a-long-passphrase"
SECRET = "services-unit-test-secret-0123456789abcdef"


# --- pure units -------------------------------------------------------------------------


def test_roles_are_ordered() -> None:
    order = [Role.viewer, Role.member, Role.owner, Role.admin]
    assert [role.rank for role in order] == [0, 1, 2, 3]
    for lower, higher in itertools.pairwise(order):
        assert higher.at_least(lower)
        assert not lower.at_least(higher)
    assert all(role.at_least(role) for role in order)


def _principal(role: Role) -> Principal:
    return Principal(user_id=uuid.uuid4(), account_id=uuid.uuid4(), role=role)


def test_principal_scope_is_its_account_except_for_admins() -> None:
    owner = _principal(Role.owner)
    assert owner.scope == Scope(owner.account_id)
    assert not owner.scope.all_accounts
    assert not owner.is_admin
    admin = _principal(Role.admin)
    assert admin.is_admin
    assert admin.scope == Scope(None, viewer=admin.account_id)  # its reads are audited
    assert admin.scope.all_accounts


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("needed", list(Role))
def test_principal_require(role: Role, needed: Role) -> None:
    principal = _principal(role)
    if role.at_least(needed):
        principal.require(needed)
    else:
        with pytest.raises(Forbidden, match=f"needs the {needed.value} role"):
            principal.require(needed)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Acme", "acme"),
        ("  Acme   Research ", "acme research"),
        ("ACME\tResearch\n", "acme research"),
        ("Straße", "strasse"),
    ],
)
def test_name_key(name: str, key: str) -> None:
    assert name_key(name) == key


def test_validation_failed_at_builds_one_field_error() -> None:
    error = ValidationFailed.at("/body/workflow/steps/0", "bad step", "step_invalid")
    assert error.status == 422
    assert error.detail == "bad step"
    assert error.errors == [
        {
            "pointer": "/body/workflow/steps/0",
            "location": "body",
            "type": "step_invalid",
            "message": "bad step",
        }
    ]
    assert ValidationFailed.at("/query/limit", "x").errors[0]["location"] == "query"  # type: ignore[index]


# --- database fixtures ------------------------------------------------------------------


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[SQLAlchemyManager]:
    db = SQLAlchemyManager(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'services.db'}"))
    await migrate.upgrade(db.engine)
    try:
        yield db
    finally:
        await db.dispose()


@pytest.fixture
async def session(database: SQLAlchemyManager) -> AsyncIterator[AsyncSession]:
    async with database.session() as session:
        yield session


@dataclass
class World:
    admin: Principal
    owner: Principal
    member: Principal
    viewer: Principal
    other_owner: Principal
    account: Account
    other_account: Account


async def _principal_of(session: AsyncSession, email: str) -> Principal:
    user = await UserRepository(session).by_email(email)
    assert user is not None
    return Principal(user_id=user.id, account_id=user.account_id, role=user.role_enum)


@pytest.fixture
async def world(session: AsyncSession) -> World:
    admin_user = await create_admin(session, "admin@example.com", PASSWORD)
    admin = Principal(admin_user.id, admin_user.account_id, Role.admin)
    accounts = AccountService(session)
    account = await accounts.create(
        admin, AccountCreate(name="Acme", owner_email="owner@acme.example", owner_password=PASSWORD)
    )
    other = await accounts.create(
        admin,
        AccountCreate(name="Other", owner_email="owner@other.example", owner_password=PASSWORD),
    )
    owner = await _principal_of(session, "owner@acme.example")
    users = UserService(session)
    await users.create(owner, UserCreate(email="member@acme.example", password=PASSWORD))
    await users.create(
        owner, UserCreate(email="viewer@acme.example", password=PASSWORD, role="viewer")
    )
    return World(
        admin=admin,
        owner=owner,
        member=await _principal_of(session, "member@acme.example"),
        viewer=await _principal_of(session, "viewer@acme.example"),
        other_owner=await _principal_of(session, "owner@other.example"),
        account=account,
        other_account=other,
    )


@pytest.fixture
def codec() -> TokenCodec:
    return TokenCodec(Settings(secret_key=SECRET))


# --- bootstrap --------------------------------------------------------------------------


async def test_bootstrap_creates_the_platform_admin_with_a_generated_password(
    session: AsyncSession,
) -> None:
    result = await bootstrap_admin(session, Settings())
    assert result is not None
    assert result.email == DEFAULT_ADMIN_EMAIL
    assert result.generated_password is not None
    assert len(result.generated_password) >= 20
    admin = await UserRepository(session).by_email(DEFAULT_ADMIN_EMAIL)
    assert admin is not None
    assert admin.role_enum is Role.admin
    assert verify_password(result.generated_password, admin.password_hash)
    account = await session.get(Account, admin.account_id)
    assert account is not None
    assert account.is_platform
    assert account.name == PLATFORM_ACCOUNT_NAME


async def test_bootstrap_with_a_configured_password_reports_none_generated(
    session: AsyncSession,
) -> None:
    settings = Settings(
        bootstrap_admin_email="Boss@Example.com", bootstrap_admin_password="pw-1234567"
    )
    result = await bootstrap_admin(session, settings)
    assert result is not None
    assert result.email == "Boss@Example.com"
    assert result.generated_password is None
    admin = await UserRepository(session).by_email("boss@example.com")
    assert admin is not None
    assert admin.email == "boss@example.com"
    assert verify_password("pw-1234567", admin.password_hash)


async def test_bootstrap_is_a_no_op_when_users_exist(session: AsyncSession) -> None:
    await create_admin(session, "first@example.com", PASSWORD)
    assert await bootstrap_admin(session, Settings()) is None
    assert await UserRepository(session).count() == 1


@pytest.mark.parametrize("environment", ["staging", "production"])
async def test_production_never_generates_the_first_admins_password(
    session: AsyncSession, environment: str
) -> None:
    settings = Settings(environment=environment, secret_key=SECRET)
    result = await bootstrap_admin(session, settings)
    assert result is not None
    assert (result.created, result.generated_password) == (False, None)
    assert await UserRepository(session).count() == 0


@pytest.mark.parametrize("environment", ["staging", "production"])
async def test_production_refuses_a_bootstrap_password_left_once_the_admin_exists(
    session: AsyncSession, environment: str
) -> None:
    settings = Settings(
        environment=environment, secret_key=SECRET, bootstrap_admin_password="pw-1234567"
    )
    first = await bootstrap_admin(session, settings)
    assert first is not None
    assert first.created
    with pytest.raises(BootstrapPasswordLeft, match="RENUM_BOOTSTRAP_ADMIN_PASSWORD is still set"):
        await bootstrap_admin(session, settings)
    development = settings.model_copy(update={"environment": Environment.development})
    assert await bootstrap_admin(session, development) is None


async def test_platform_account_is_created_once(session: AsyncSession) -> None:
    first = await platform_account(session)
    await session.commit()
    second = await platform_account(session)
    assert first.id == second.id
    await create_admin(session, "a1@example.com", PASSWORD)
    await create_admin(session, "a2@example.com", PASSWORD)
    platforms = (await session.scalars(select(Account).where(Account.is_platform))).all()
    assert len(platforms) == 1


# --- accounts ---------------------------------------------------------------------------


async def test_only_admins_create_accounts(session: AsyncSession, world: World) -> None:
    data = AccountCreate(name="Nope", owner_email="x@nope.example", owner_password=PASSWORD)
    with pytest.raises(Forbidden):
        await AccountService(session).create(world.owner, data)


@pytest.mark.parametrize("name", ["acme", "ACME", "  Acme  ", "aCmE"])
async def test_account_names_are_unique_regardless_of_case_and_spacing(
    session: AsyncSession, world: World, name: str
) -> None:
    data = AccountCreate(name=name, owner_email="new@new.example", owner_password=PASSWORD)
    with pytest.raises(Conflict, match="already exists"):
        await AccountService(session).create(world.admin, data)


async def test_account_owner_email_must_be_new(session: AsyncSession, world: World) -> None:
    data = AccountCreate(name="Fresh", owner_email="MEMBER@acme.example", owner_password=PASSWORD)
    with pytest.raises(Conflict, match="email already exists"):
        await AccountService(session).create(world.admin, data)


async def test_account_creation_makes_an_owner(session: AsyncSession, world: World) -> None:
    owner = await UserRepository(session).by_email("owner@acme.example")
    assert owner is not None
    assert owner.account_id == world.account.id
    assert owner.role_enum is Role.owner
    assert world.account.name_key == "acme"
    assert not world.account.is_platform


async def test_account_get_and_page(session: AsyncSession, world: World) -> None:
    service = AccountService(session)
    assert (await service.get(world.owner, world.account.id)).id == world.account.id
    assert (await service.get(world.admin, world.other_account.id)).name == "Other"
    with pytest.raises(NotFound):
        await service.get(world.owner, world.other_account.id)  # another tenant: 404, not 403
    with pytest.raises(NotFound):
        await service.get(world.admin, uuid.uuid4())
    rows, total = await service.page(world.admin, limit=2, offset=0)
    assert total == 3  # platform, Acme, Other
    assert len(rows) == 2
    rows, _ = await service.page(world.admin, limit=2, offset=2)
    assert [row.name for row in rows] == ["Other"]
    with pytest.raises(Forbidden):
        await service.page(world.owner, limit=10, offset=0)


# --- users ------------------------------------------------------------------------------


async def test_user_management_needs_an_owner(session: AsyncSession, world: World) -> None:
    users = UserService(session)
    for principal in (world.member, world.viewer):
        with pytest.raises(Forbidden):
            await users.page(principal, limit=10, offset=0)
        with pytest.raises(Forbidden):
            await users.create(principal, UserCreate(email="z@acme.example", password=PASSWORD))


async def test_admin_must_name_the_account(session: AsyncSession, world: World) -> None:
    with pytest.raises(ValidationFailed) as caught:
        await UserService(session).create(
            world.admin, UserCreate(email="new@acme.example", password=PASSWORD)
        )
    assert caught.value.errors is not None
    assert caught.value.errors[0]["pointer"] == "/body/account_id"


async def test_admin_creates_users_in_any_existing_account(
    session: AsyncSession, world: World
) -> None:
    users = UserService(session)
    created = await users.create(
        world.admin,
        UserCreate(
            email="By-Admin@Other.example", password=PASSWORD, account_id=world.other_account.id
        ),
    )
    assert created.account_id == world.other_account.id
    assert created.email == "by-admin@other.example"
    with pytest.raises(NotFound, match="account"):
        await users.create(
            world.admin,
            UserCreate(email="lost@example.com", password=PASSWORD, account_id=uuid.uuid4()),
        )


async def test_owner_cannot_create_users_in_another_account(
    session: AsyncSession, world: World
) -> None:
    users = UserService(session)
    with pytest.raises(NotFound, match="account"):
        await users.create(
            world.owner,
            UserCreate(
                email="x@other.example", password=PASSWORD, account_id=world.other_account.id
            ),
        )
    own = await users.create(
        world.owner,
        UserCreate(email="own@acme.example", password=PASSWORD, account_id=world.account.id),
    )
    assert own.account_id == world.account.id


async def test_duplicate_email_is_a_conflict(session: AsyncSession, world: World) -> None:
    with pytest.raises(Conflict):
        await UserService(session).create(
            world.owner, UserCreate(email="Member@ACME.example", password=PASSWORD)
        )


async def test_users_are_scoped_to_the_account(session: AsyncSession, world: World) -> None:
    users = UserService(session)
    rows, total = await users.page(world.owner, limit=50, offset=0)
    assert total == 3
    assert {row.account_id for row in rows} == {world.account.id}
    _, everyone = await users.page(world.admin, limit=50, offset=0)
    assert everyone == 5
    with pytest.raises(NotFound):
        await users.get(world.other_owner, world.member.user_id)
    assert (await users.get(world.admin, world.member.user_id)).email == "member@acme.example"
    assert (await users.me(world.viewer)).email == "viewer@acme.example"


async def test_update_changes_fields_and_ends_sessions(
    session: AsyncSession, world: World, codec: TokenCodec
) -> None:
    auth = AuthService(session, codec)
    pair = await auth.login("member@acme.example", PASSWORD)
    users = UserService(session)
    updated = await users.update(
        world.owner,
        world.member.user_id,
        UserUpdate(full_name="Ada", role="viewer", password="new-passphrase"),
    )
    assert (updated.full_name, updated.role) == ("Ada", "viewer")
    assert verify_password("new-passphrase", updated.password_hash)
    with pytest.raises(Unauthorized):
        await auth.refresh(pair.refresh_token)  # the password change ended the session
    cleared = await users.update(world.owner, world.member.user_id, UserUpdate(full_name=None))
    assert cleared.full_name is None
    assert cleared.role == "viewer"  # unset fields are left alone


async def test_a_password_change_by_an_owner_ends_access_tokens_too(
    session: AsyncSession, world: World, codec: TokenCodec
) -> None:
    auth = AuthService(session, codec)
    old = await auth.login("member@acme.example", PASSWORD)
    assert (await auth.authenticate(old.access_token)).user_id == world.member.user_id
    await UserService(session).update(
        world.owner, world.member.user_id, UserUpdate(password="new-passphrase")
    )
    with pytest.raises(Unauthorized, match="session has ended"):
        await auth.authenticate(old.access_token)
    new = await auth.login("member@acme.example", "new-passphrase")
    assert codec.decode(new.access_token, "access").generation == 1
    assert (await auth.authenticate(new.access_token)).user_id == world.member.user_id
    rotated = await auth.refresh(new.refresh_token)
    assert codec.decode(rotated.access_token, "access").generation == 1


async def test_users_change_their_own_password_given_the_current_one(
    session: AsyncSession, world: World, codec: TokenCodec
) -> None:
    auth = AuthService(session, codec)
    old = await auth.login("viewer@acme.example", PASSWORD)
    users = UserService(session)
    change = PasswordChange(current_password=PASSWORD, new_password="viewer-new-passphrase")
    await users.change_own_password(world.viewer, change)
    with pytest.raises(Unauthorized, match="session has ended"):
        await auth.authenticate(old.access_token)
    with pytest.raises(Unauthorized, match="revoked"):
        await auth.refresh(old.refresh_token)
    with pytest.raises(Unauthorized, match="Incorrect"):
        await auth.login("viewer@acme.example", PASSWORD)
    await auth.login("viewer@acme.example", "viewer-new-passphrase")


@pytest.mark.parametrize(
    ("current", "new", "pointer"),
    [
        ("not-the-password", "viewer-new-passphrase", "/body/current_password"),
        (PASSWORD, PASSWORD, "/body/new_password"),
    ],
)
async def test_own_password_change_refusals_change_nothing(
    session: AsyncSession, world: World, codec: TokenCodec, current: str, new: str, pointer: str
) -> None:
    auth = AuthService(session, codec)
    pair = await auth.login("member@acme.example", PASSWORD)
    change = PasswordChange(current_password=current, new_password=new)
    with pytest.raises(ValidationFailed) as caught:
        await UserService(session).change_own_password(world.member, change)
    assert caught.value.errors is not None
    assert caught.value.errors[0]["pointer"] == pointer
    await auth.authenticate(pair.access_token)  # still valid
    await auth.refresh(pair.refresh_token)


async def test_an_api_key_cannot_change_its_users_password(
    session: AsyncSession, world: World
) -> None:
    as_key = Principal(world.member.user_id, world.account.id, Role.member, uuid.uuid4())
    change = PasswordChange(current_password=PASSWORD, new_password="whatever-passphrase")
    with pytest.raises(Forbidden, match="API key"):
        await UserService(session).change_own_password(as_key, change)


async def test_a_concurrent_password_change_wins_over_a_stale_one(
    session: AsyncSession, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between reading the hash and writing the new one (while argon2 runs, with no
    transaction open) another change lands: the stale one is refused, not applied."""
    from app.services import users as users_module

    users = UserService(session)

    original = users_module.hash_password_async

    async def meanwhile_changed(password: str) -> str:
        await UserRepository(session).change_password(
            world.member.user_id, hash_password("changed-meanwhile")
        )
        await session.commit()
        return await original(password)

    monkeypatch.setattr(users_module, "hash_password_async", meanwhile_changed)
    change = PasswordChange(current_password=PASSWORD, new_password="the-stale-passphrase")
    with pytest.raises(Conflict, match="meanwhile"):
        await users.change_own_password(world.member, change)
    user = await session.get(User, world.member.user_id)
    assert user is not None
    await session.refresh(user)
    assert verify_password("changed-meanwhile", user.password_hash)


async def test_deactivation_ends_sessions_and_blocks_login(
    session: AsyncSession, world: World, codec: TokenCodec
) -> None:
    auth = AuthService(session, codec)
    pair = await auth.login("viewer@acme.example", PASSWORD)
    await UserService(session).update(
        world.owner, world.viewer.user_id, UserUpdate(is_active=False)
    )
    with pytest.raises(Unauthorized, match="deactivated"):
        await auth.login("viewer@acme.example", PASSWORD)
    with pytest.raises(Unauthorized):
        await auth.refresh(pair.refresh_token)
    with pytest.raises(Unauthorized, match="no longer exists or is deactivated"):
        await auth.authenticate(pair.access_token)


async def test_refresh_of_a_deactivated_user_is_refused(
    session: AsyncSession, world: World, codec: TokenCodec
) -> None:
    auth = AuthService(session, codec)
    pair = await auth.login("member@acme.example", PASSWORD)
    user = await session.get(User, world.member.user_id)
    assert user is not None
    user.is_active = False  # deactivated behind the service's back: the token row survives
    await session.commit()
    with pytest.raises(Unauthorized, match="deactivated"):
        await auth.refresh(pair.refresh_token)


async def test_nobody_changes_their_own_role_or_activity(
    session: AsyncSession, world: World
) -> None:
    users = UserService(session)
    for change in (UserUpdate(role="member"), UserUpdate(is_active=False)):
        with pytest.raises(Conflict, match="your own role"):
            await users.update(world.owner, world.owner.user_id, change)
    renamed = await users.update(world.owner, world.owner.user_id, UserUpdate(full_name="Me"))
    assert renamed.full_name == "Me"


async def test_admin_roles_are_not_changed_through_the_api(
    session: AsyncSession, world: World
) -> None:
    second = await create_admin(session, "admin2@example.com", PASSWORD)
    with pytest.raises(Conflict, match="create-admin"):
        await UserService(session).update(world.admin, second.id, UserUpdate(role="member"))


async def test_delete(session: AsyncSession, world: World) -> None:
    users = UserService(session)
    with pytest.raises(Conflict, match="delete yourself"):
        await users.delete(world.owner, world.owner.user_id)
    with pytest.raises(NotFound):
        await users.delete(world.other_owner, world.member.user_id)
    await users.delete(world.owner, world.member.user_id)
    with pytest.raises(NotFound):
        await users.get(world.owner, world.member.user_id)


async def test_commit_unique_turns_a_lost_race_into_a_conflict(
    session: AsyncSession, world: World
) -> None:
    from app.repositories.base import commit_unique

    # Two writers pass the "email is free" check; the second commit hits the constraint.
    session.add(
        User(
            account_id=world.account.id,
            email="member@acme.example",
            password_hash=hash_password(PASSWORD),
            role="member",
        )
    )
    with pytest.raises(Conflict, match="raced"):
        await commit_unique(session, "raced")
    assert await UserRepository(session).count() == 5  # rolled back, nothing changed


async def test_paginate_counts_the_whole_query(session: AsyncSession, world: World) -> None:
    query = select(User).order_by(User.email)
    rows, total = await paginate(session, query, limit=2, offset=1)
    assert total == 5
    assert [row.email for row in rows] == ["member@acme.example", "owner@acme.example"]


# --- API keys ---------------------------------------------------------------------------


async def test_api_key_role_defaults_to_the_creator_and_never_exceeds_it(
    session: AsyncSession, world: World
) -> None:
    keys = ApiKeyService(session)
    key, secret = await keys.create(world.member, ApiKeyCreate(name="ci"))
    assert key.role == "member"
    assert secret.startswith("rk_")
    assert key.prefix == secret[:10]
    assert secret not in key.key_hash
    for higher in ("owner", "admin"):
        with pytest.raises(Forbidden, match="cannot exceed"):
            await keys.create(world.member, ApiKeyCreate(name="up", role=higher))
    lower, _ = await keys.create(world.owner, ApiKeyCreate(name="down", role="viewer"))
    assert lower.role == "viewer"


async def test_viewers_cannot_create_or_revoke_keys(session: AsyncSession, world: World) -> None:
    keys = ApiKeyService(session)
    with pytest.raises(Forbidden):
        await keys.create(world.viewer, ApiKeyCreate(name="v"))
    with pytest.raises(Forbidden):
        await keys.revoke(world.viewer, uuid.uuid4())


async def test_api_key_expiry_must_be_in_the_future(session: AsyncSession, world: World) -> None:
    keys = ApiKeyService(session)
    past = datetime.now(UTC) - timedelta(seconds=1)
    with pytest.raises(ValidationFailed) as caught:
        await keys.create(world.member, ApiKeyCreate(name="old", expires_at=past))
    assert caught.value.errors is not None
    assert caught.value.errors[0]["pointer"] == "/body/expires_at"
    naive_future = datetime.now(UTC).replace(tzinfo=None) + timedelta(days=1)
    key, _ = await keys.create(world.member, ApiKeyCreate(name="naive", expires_at=naive_future))
    assert key.expires_at == naive_future.replace(tzinfo=UTC)  # naive input is read as UTC


async def test_api_key_listing_and_revocation_follow_ownership(
    session: AsyncSession, world: World
) -> None:
    keys = ApiKeyService(session)
    member_key, _ = await keys.create(world.member, ApiKeyCreate(name="m"))
    owner_key, _ = await keys.create(world.owner, ApiKeyCreate(name="o"))
    other_key, _ = await keys.create(world.other_owner, ApiKeyCreate(name="x"))

    _, member_sees = await keys.page(world.member, limit=10, offset=0)
    assert member_sees == 1
    rows, owner_sees = await keys.page(world.owner, limit=10, offset=0)
    assert owner_sees == 2
    assert {row.id for row in rows} == {member_key.id, owner_key.id}
    _, admin_sees = await keys.page(world.admin, limit=10, offset=0)
    assert admin_sees == 3

    with pytest.raises(NotFound):
        await keys.revoke(world.member, owner_key.id)  # not theirs
    with pytest.raises(NotFound):
        await keys.revoke(world.owner, other_key.id)  # another account
    await keys.revoke(world.owner, member_key.id)  # owners manage the account's keys
    await session.refresh(member_key)
    revoked_at = member_key.revoked_at
    assert revoked_at is not None
    await keys.revoke(world.owner, member_key.id)  # idempotent: the first time stays
    await session.refresh(member_key)
    assert member_key.revoked_at == revoked_at


# --- authentication ---------------------------------------------------------------------


async def test_login_refresh_logout(session: AsyncSession, world: World, codec: TokenCodec) -> None:
    auth = AuthService(session, codec)
    pair = await auth.login("MEMBER@acme.example", PASSWORD)
    assert pair.expires_in == 15 * 60
    principal = await auth.authenticate(pair.access_token)
    assert principal == Principal(world.member.user_id, world.account.id, Role.member)
    user = await session.get(User, world.member.user_id)
    assert user is not None
    assert user.last_login_at is not None

    rotated = await auth.refresh(pair.refresh_token)
    assert rotated.refresh_token != pair.refresh_token
    await auth.logout(rotated.refresh_token)
    with pytest.raises(Unauthorized, match="revoked"):
        await auth.refresh(rotated.refresh_token)


async def test_replayed_refresh_token_ends_the_whole_session(
    session: AsyncSession, world: World, codec: TokenCodec
) -> None:
    auth = AuthService(session, codec)
    first = await auth.login("member@acme.example", PASSWORD)
    second = await auth.refresh(first.refresh_token)
    with pytest.raises(Unauthorized, match="revoked"):
        await auth.refresh(first.refresh_token)  # replay of a rotated token
    with pytest.raises(Unauthorized, match="revoked"):
        await auth.refresh(second.refresh_token)  # ... revoked the whole family
    family = (await session.scalars(select(RefreshToken))).all()
    assert all(row.revoked_at is not None for row in family)


@pytest.mark.parametrize(
    ("email", "password"),
    [("member@acme.example", "wrong-password"), ("nobody@acme.example", PASSWORD)],
)
async def test_login_failures_look_the_same(
    session: AsyncSession, world: World, codec: TokenCodec, email: str, password: str
) -> None:
    with pytest.raises(Unauthorized) as caught:
        await AuthService(session, codec).login(email, password)
    assert caught.value.detail == "Incorrect email or password."


async def test_refresh_tokens_must_be_known_and_match_their_user(
    session: AsyncSession, world: World, codec: TokenCodec
) -> None:
    auth = AuthService(session, codec)
    with pytest.raises(Unauthorized, match="invalid or expired"):
        await auth.refresh("not-a-token")
    unknown, _ = codec.issue(world.member.user_id, "refresh")  # signed, but never stored
    with pytest.raises(Unauthorized, match="not known"):
        await auth.logout(unknown)
    pair = await auth.login("member@acme.example", PASSWORD)
    stored = codec.decode(pair.refresh_token, "refresh")
    forged, _ = codec.issue(world.owner.user_id, "refresh", token_id=stored.token_id)
    with pytest.raises(Unauthorized, match="not known"):
        await auth.refresh(forged)  # right jti, wrong subject
    access, _ = codec.issue(world.member.user_id, "access")
    with pytest.raises(Unauthorized):
        await auth.refresh(access)  # an access token is not a refresh token


# --- sessions racing password changes -----------------------------------------------------


async def _live_refresh_tokens(
    database: SQLAlchemyManager, user_id: uuid.UUID
) -> list[RefreshToken]:
    async with database.session() as fresh:
        query = select(RefreshToken).where(
            RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None)
        )
        return list((await fresh.scalars(query)).all())


async def _generation(database: SQLAlchemyManager, user_id: uuid.UUID) -> int:
    async with database.session() as fresh:
        user = await fresh.get(User, user_id)
        assert user is not None
        return user.token_generation


@pytest.mark.parametrize("change", ["own password", "owner reset", "deactivation"])
async def test_a_login_racing_a_password_change_is_refused(
    session: AsyncSession,
    database: SQLAlchemyManager,
    world: World,
    codec: TokenCodec,
    monkeypatch: pytest.MonkeyPatch,
    change: str,
) -> None:
    """The attacker's login verifies the old password (no transaction open); meanwhile the
    user's password changes or they are deactivated. The login must not store a session that
    outlives the change."""
    member = world.member
    real_verify = auth_module.verify_outside_transaction

    async def verify_then_change(own: AsyncSession, password: str, stored: str | None) -> bool:
        verified = await real_verify(own, password, stored)
        async with database.session() as other:
            users = UserService(other)
            if change == "own password":
                new = PasswordChange(current_password=PASSWORD, new_password="changed-meanwhile")
                await users.change_own_password(member, new)
            elif change == "owner reset":
                await users.update(world.owner, member.user_id, UserUpdate(password="reset-pw-1"))
            else:
                await users.update(world.owner, member.user_id, UserUpdate(is_active=False))
        return verified

    monkeypatch.setattr(auth_module, "verify_outside_transaction", verify_then_change)
    with pytest.raises(Unauthorized):
        await AuthService(session, codec).login("member@acme.example", PASSWORD)
    assert await _live_refresh_tokens(database, member.user_id) == []
    async with database.session() as fresh:
        user = await fresh.get(User, member.user_id)
        assert user is not None
        assert user.last_login_at is None  # the refused login recorded nothing


async def test_a_refresh_token_of_an_older_generation_ends_its_session(
    session: AsyncSession, database: SQLAlchemyManager, world: World, codec: TokenCodec
) -> None:
    """What a login racing a password change would have left without its check: an unrevoked
    refresh token minted (as ``_issue_pair`` mints them) with the generation before the
    change. Refreshing it is refused, and its whole session is revoked."""
    auth = AuthService(session, codec)
    await auth.login("member@acme.example", PASSWORD)
    change = PasswordChange(current_password=PASSWORD, new_password="member-new-passphrase")
    await UserService(session).change_own_password(world.member, change)
    assert await _generation(database, world.member.user_id) == 1
    family = uuid.uuid4()
    stale = auth._issue_pair(world.member.user_id, 0, family_id=family)
    await session.commit()
    assert len(await _live_refresh_tokens(database, world.member.user_id)) == 1

    async with database.session() as request:
        with pytest.raises(Unauthorized, match="session has ended"):
            await AuthService(request, codec).refresh(stale.refresh_token)
    assert await _live_refresh_tokens(database, world.member.user_id) == []
    async with database.session() as request:
        with pytest.raises(Unauthorized, match="revoked"):
            await AuthService(request, codec).refresh(stale.refresh_token)
    # A session of the current generation refreshes as before, keeping its generation.
    fresh_pair = await auth.login("member@acme.example", "member-new-passphrase")
    async with database.session() as request:
        rotated = await AuthService(request, codec).refresh(fresh_pair.refresh_token)
    assert codec.decode(rotated.access_token, "access").generation == 1
    assert codec.decode(rotated.refresh_token, "refresh").generation == 1


async def test_a_refresh_token_rotated_by_another_request_cannot_be_rotated_again(
    session: AsyncSession, database: SQLAlchemyManager, world: World, codec: TokenCodec
) -> None:
    """Two requests present the same refresh token: the one that read it before the other
    rotated it (its copy of the row still says "not revoked") must not rotate it again; the
    rotation is a conditional update, and the loser ends the session as for a replay."""
    await session.commit()  # the fixtures' transaction holds SQLite's write lock
    async with database.session() as setup:
        pair = await AuthService(setup, codec).login("member@acme.example", PASSWORD)
    token_id = codec.decode(pair.refresh_token, "refresh").token_id
    async with database.session() as slow, database.session() as fast:
        read = await slow.get(RefreshToken, token_id)  # held: the session keeps this copy
        assert read is not None
        assert read.revoked_at is None
        await slow.commit()
        winner = await AuthService(fast, codec).refresh(pair.refresh_token)
        with pytest.raises(Unauthorized, match="revoked"):
            await AuthService(slow, codec).refresh(pair.refresh_token)
    assert await _live_refresh_tokens(database, world.member.user_id) == []
    async with database.session() as request:
        with pytest.raises(Unauthorized, match="revoked"):
            await AuthService(request, codec).refresh(winner.refresh_token)


async def test_an_owner_change_from_a_stale_read_still_moves_the_generation_on(
    session: AsyncSession, database: SQLAlchemyManager, world: World, codec: TokenCodec
) -> None:
    """The owner's update read the user before the user's own password change landed: its
    generation bump is done by the database, so both changes count and the session opened
    with the user's new password ends with the owner's reset."""
    member = world.member
    users = UserService(session)
    stale = await users.get(world.owner, member.user_id)  # held: the session keeps this copy
    assert stale.token_generation == 0
    await session.commit()
    async with database.session() as other:
        change = PasswordChange(current_password=PASSWORD, new_password="member-own-choice")
        await UserService(other).change_own_password(member, change)
        between = await AuthService(other, codec).login("member@acme.example", "member-own-choice")
    assert codec.decode(between.access_token, "access").generation == 1

    await users.update(world.owner, member.user_id, UserUpdate(password="owner-reset-pw"))
    assert await _generation(database, member.user_id) == 2
    async with database.session() as request:
        auth = AuthService(request, codec)
        with pytest.raises(Unauthorized, match="session has ended"):
            await auth.authenticate(between.access_token)
        with pytest.raises(Unauthorized):
            await auth.refresh(between.refresh_token)


async def test_deactivation_from_a_stale_read_still_moves_the_generation_on(
    session: AsyncSession, database: SQLAlchemyManager, world: World
) -> None:
    member = world.member
    users = UserService(session)
    stale = await users.get(world.owner, member.user_id)  # held: the session keeps this copy
    assert stale.token_generation == 0
    await session.commit()
    async with database.session() as other:
        change = PasswordChange(current_password=PASSWORD, new_password="member-own-choice")
        await UserService(other).change_own_password(member, change)
    updated = await users.update(world.owner, member.user_id, UserUpdate(is_active=False))
    assert await _generation(database, member.user_id) == 2
    assert updated.token_generation == 2  # the loaded user shows what was stored


async def test_repository_conditional_writes(session: AsyncSession, world: World) -> None:
    from app.repositories.tokens import RefreshTokenRepository

    users = UserRepository(session)
    now = datetime.now(UTC)
    assert not await users.record_login(world.member.user_id, now, generation=1)
    assert await users.record_login(world.member.user_id, now, generation=0)
    await users.advance_token_generation(world.member.user_id)
    await users.advance_token_generation(world.member.user_id)
    await session.commit()
    assert await _generation_in(session, world.member.user_id) == 2
    assert not await users.record_login(world.member.user_id, now, generation=0)

    tokens = RefreshTokenRepository(session)
    row = RefreshToken(
        user_id=world.member.user_id,
        family_id=uuid.uuid4(),
        expires_at=now + timedelta(days=1),
    )
    tokens.add(row)
    await session.commit()
    assert await tokens.revoke(row.id, now)
    assert not await tokens.revoke(row.id, now)  # already revoked: the second caller loses
    assert not await tokens.revoke(uuid.uuid4(), now)


async def _generation_in(session: AsyncSession, user_id: uuid.UUID) -> int:
    value = await session.scalar(select(User.token_generation).where(User.id == user_id))
    assert value is not None
    return value


async def test_access_token_of_a_deleted_user_is_refused(
    session: AsyncSession, world: World, codec: TokenCodec
) -> None:
    token, _ = codec.issue(uuid.uuid4(), "access")
    with pytest.raises(Unauthorized, match="no longer exists"):
        await AuthService(session, codec).authenticate(token)
    with pytest.raises(Unauthorized, match="access token is invalid"):
        await AuthService(session, codec).authenticate("garbage")


async def test_api_key_authentication(
    session: AsyncSession, world: World, codec: TokenCodec
) -> None:
    keys = ApiKeyService(session)
    auth = AuthService(session, codec)
    key, secret = await keys.create(world.owner, ApiKeyCreate(name="k", role="member"))
    principal = await auth.authenticate(secret)
    assert principal.role is Role.member
    assert principal.api_key_id == key.id
    assert principal.account_id == world.account.id
    with pytest.raises(Unauthorized, match="invalid or revoked"):
        await auth.authenticate(secret + "x")
    await keys.revoke(world.owner, key.id)
    with pytest.raises(Unauthorized, match="invalid or revoked"):
        await auth.authenticate(secret)


async def test_expired_api_key_is_refused(
    session: AsyncSession, world: World, codec: TokenCodec
) -> None:
    key, secret = await ApiKeyService(session).create(
        world.member, ApiKeyCreate(name="soon", expires_at=datetime.now(UTC) + timedelta(hours=1))
    )
    key.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    await session.commit()
    with pytest.raises(Unauthorized, match="expired"):
        await AuthService(session, codec).authenticate(secret)


async def test_api_key_never_carries_more_than_its_creator_has_now(
    session: AsyncSession, world: World, codec: TokenCodec
) -> None:
    _, secret = await ApiKeyService(session).create(world.owner, ApiKeyCreate(name="big"))
    owner = await session.get(User, world.owner.user_id)
    assert owner is not None
    owner.role = "viewer"  # demoted after creating an owner key
    await session.commit()
    principal = await AuthService(session, codec).authenticate(secret)
    assert principal.role is Role.viewer


async def test_api_key_of_a_deactivated_user_is_refused(
    session: AsyncSession, world: World, codec: TokenCodec
) -> None:
    _, secret = await ApiKeyService(session).create(world.member, ApiKeyCreate(name="m"))
    await UserService(session).update(
        world.owner, world.member.user_id, UserUpdate(is_active=False)
    )
    with pytest.raises(Unauthorized, match="deactivated"):
        await AuthService(session, codec).authenticate(secret)


async def test_api_key_last_use_is_written_at_most_once_a_minute(
    session: AsyncSession, world: World, codec: TokenCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, secret = await ApiKeyService(session).create(world.member, ApiKeyCreate(name="t"))
    auth = AuthService(session, codec)
    assert key.last_used_at is None
    await auth.authenticate(secret)
    await session.refresh(key)
    first_use = key.last_used_at
    assert first_use is not None
    await auth.authenticate(secret)
    await session.refresh(key)
    assert key.last_used_at == first_use  # within the interval: no write
    key.last_used_at = first_use - auth_module.API_KEY_TOUCH_INTERVAL - timedelta(seconds=1)
    await session.commit()
    await auth.authenticate(secret)
    await session.refresh(key)
    assert key.last_used_at is not None
    assert key.last_used_at >= first_use  # touched again


async def test_stored_secrets_are_hashes(session: AsyncSession, world: World) -> None:
    _, secret = await ApiKeyService(session).create(world.member, ApiKeyCreate(name="h"))
    stored = (await session.scalars(select(ApiKey))).one()
    assert secret not in (stored.key_hash, stored.prefix)
    users = (await session.scalars(select(User))).all()
    assert all(user.password_hash.startswith("$argon2id$") for user in users)
    assert all(PASSWORD not in user.password_hash for user in users)
