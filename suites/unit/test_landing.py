"""The page at ``/``: a browser finds what this server is and links to what it serves."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.core.config import Settings
from app.main import create_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _landing(**overrides: Any) -> httpx.Response:
    settings = Settings(environment="test", configuration={"enabled": False}, **overrides)
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://renum") as client:
        return await client.get("/")


async def test_the_landing_page_links_to_what_is_served() -> None:
    response = await _landing()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    for path in ("/docs", "/openapi.json", "/health/dashboard", "/health/ready"):
        assert f'href="{path}"' in page
    assert "://" not in page  # loads nothing from elsewhere


async def test_links_to_switched_off_capabilities_are_left_out() -> None:
    page = (await _landing(docs={"enabled": False}, monitor={"enabled": False})).text
    assert 'href="/docs"' not in page
    assert 'href="/health/dashboard"' not in page
    assert 'href="/openapi.json"' in page


async def test_the_landing_page_is_not_in_the_schema() -> None:
    app = create_app(Settings(environment="test", configuration={"enabled": False}))
    assert "/" not in app.openapi()["paths"]
