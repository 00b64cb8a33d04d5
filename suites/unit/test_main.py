"""create_app in-process: lifespan (migrations, bootstrap admin), probes, CORS, docs."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app import __version__
from app.core.config import DatabaseSettings, Settings
from app.db import migrate
from app.db.database import SQLAlchemyManager
from app.main import API_PREFIX, create_app
from app.services.bootstrap import DEFAULT_ADMIN_EMAIL

MakeSettings = Callable[..., Settings]

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and give a client talking to it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client


async def login(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post(
        f"{API_PREFIX}/auth/token", data={"username": email, "password": password}
    )


async def test_configured_bootstrap_admin_can_log_in(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(settings)
    async with running(app) as client:
        response = await login(client, "root@example.com", "root-password-1")
        assert response.status_code == 200, response.text
        token = response.json()["access_token"]
        me = await client.get(
            f"{API_PREFIX}/users/me", headers={"Authorization": f"Bearer {token}"}
        )
        assert me.json()["role"] == "admin"
        assert me.json()["email"] == "root@example.com"
    err = capsys.readouterr().err
    assert "root-password-1" not in err  # a configured password is never printed or logged
    assert "generated password" not in err
    assert '"event": "bootstrap_admin_created"' in err
    assert '"event": "startup_complete"' in err
    assert '"event": "shutdown_complete"' in err


async def test_generated_admin_password_is_printed_once(
    make_settings: MakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings()
    async with running(create_app(settings)) as client:
        err = capsys.readouterr().err
        match = re.search(r"generated password \(shown once\): (\S+)", err)
        assert match, err
        password = match.group(1)
        assert len(password) >= 20
        assert err.count(password) == 1  # printed, never logged
        assert f"first admin: {DEFAULT_ADMIN_EMAIL}" in err
        assert (await login(client, DEFAULT_ADMIN_EMAIL, password)).status_code == 200

    # A second start on the same database finds the admin and prints nothing.
    async with running(create_app(settings)) as client:
        assert (await login(client, DEFAULT_ADMIN_EMAIL, password)).status_code == 200
    err = capsys.readouterr().err
    assert "generated password" not in err
    assert "bootstrap_admin_created" not in err


async def test_bootstrap_uses_the_configured_email_with_a_generated_password(
    make_settings: MakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(bootstrap_admin_email="Ops@Example.com")
    async with running(create_app(settings)) as client:
        password = re.search(r"shown once\): (\S+)", capsys.readouterr().err).group(1)  # type: ignore[union-attr]
        assert (await login(client, "ops@example.com", password)).status_code == 200


async def test_lifespan_without_auto_migrate_uses_the_existing_schema(
    make_settings: MakeSettings, sqlite_url: str
) -> None:
    database = SQLAlchemyManager(make_settings().database)
    await migrate.upgrade(database.engine)
    await database.dispose()
    settings = make_settings(
        database={"url": sqlite_url, "auto_migrate": False},
        bootstrap_admin_password="configured-pass",
    )
    async with running(create_app(settings)) as client:
        assert (await login(client, DEFAULT_ADMIN_EMAIL, "configured-pass")).status_code == 200


async def test_probes(settings: Settings, tmp_path: Path) -> None:
    app = create_app(settings)
    async with running(app) as client:
        for path in ("/health/live", "/livez", "/health/ready", "/readyz"):
            response = await client.get(path)
            assert response.status_code == 200, path
            assert response.json() == {"status": "pass"}

        # Probes read the health monitor's snapshot: the database check fails once it has
        # failed its threshold of consecutive runs (a directory is no SQLite database).
        monitor = app.state.health_monitor
        broken = SQLAlchemyManager(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}"))
        monitor.validator.database = broken
        for _ in range(monitor.states["database"].spec.failure_threshold):
            await monitor.refresh("database")
        await broken.dispose()
        for path in ("/health/ready", "/readyz"):
            response = await client.get(path)
            assert response.status_code == 503
            assert response.json() == {"status": "fail"}
        assert (await client.get("/health/live")).status_code == 200


async def test_cors_headers_when_origins_are_configured(make_settings: MakeSettings) -> None:
    settings = make_settings(cors_origins="https://ui.example", bootstrap_admin_password="x" * 12)
    async with running(create_app(settings)) as client:
        preflight = await client.options(
            f"{API_PREFIX}/users/me",
            headers={
                "Origin": "https://ui.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "Authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://ui.example"
        assert "x-request-id" in preflight.headers

        simple = await client.get("/health/live", headers={"Origin": "https://ui.example"})
        assert simple.headers["access-control-allow-origin"] == "https://ui.example"
        assert "X-Request-ID" in simple.headers["access-control-expose-headers"]

        other = await client.get("/health/live", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


async def test_no_cors_headers_by_default(settings: Settings) -> None:
    async with running(create_app(settings)) as client:
        response = await client.get("/health/live", headers={"Origin": "https://ui.example"})
        assert "access-control-allow-origin" not in response.headers


async def test_docs_are_served_from_vendored_assets(settings: Settings) -> None:
    async with running(create_app(settings)) as client:
        page = await client.get("/docs")
        assert page.status_code == 200
        assert "/static/swagger-ui/swagger-ui-bundle.js" in page.text
        assert "cdn." not in page.text
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
            assert (await client.get(f"/static/swagger-ui/{asset}")).status_code == 200
        assert (await client.get("/docs/oauth2-redirect")).status_code == 200
        assert (await client.get("/redoc")).status_code == 404


async def test_body_limit_comes_from_the_settings(make_settings: MakeSettings) -> None:
    settings = make_settings(max_body_bytes=2048, bootstrap_admin_password="p" * 10)
    async with running(create_app(settings)) as client:
        response = await client.post(
            f"{API_PREFIX}/auth/refresh",
            content=b"{" + b" " * 4096 + b"}",
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 413
        assert response.headers["content-type"] == "application/problem+json"


def test_openapi_describes_every_operation(settings: Settings) -> None:
    app = create_app(settings)
    schema = app.openapi()
    assert schema["info"]["version"] == __version__
    assert schema["info"]["title"] == "Renum API"
    operation_ids = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            assert operation.get("summary"), f"{method} {path} has no summary"
            operation_ids.append(operation["operationId"])
    assert len(operation_ids) == len(set(operation_ids))
    assert "login" in operation_ids
    assert "create_account" in operation_ids


def test_create_app_without_settings_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RENUM_APP_NAME", "Env Renum")
    app = create_app()
    assert app.title == "Env Renum API"
    assert app.state.settings.app_name == "Env Renum"
    assert not (tmp_path / "renum.db").exists()  # nothing connects before the lifespan


def test_fastapis_own_telemetry_stays_off(settings: Settings) -> None:
    """Renum measures its requests itself (the monitor); FastAPI's OpenTelemetry hooks, on by
    default, would look up the global providers on every request."""
    telemetry = create_app(settings)._telemetry  # FastAPI keeps it as given, no public reader
    assert (telemetry["tracing"], telemetry["metrics"], telemetry["logs"]) == (False,) * 3
