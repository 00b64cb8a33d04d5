"""The security headers (issue 17): every answer carries ``nosniff``, the referrer policy and a
Content-Security-Policy (the API's allows nothing; each page Renum serves has its own, with a
fresh nonce on its inline script and style), HSTS where configured (the production profile),
none of it with the security capability off; and the base middleware adds a registered header
only where the answer did not set it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from app.capabilities.security import security_headers
from app.core.config import SecurityHeaderSettings, Settings
from app.core.content_policy import page_policy, with_nonce
from app.core.middleware import RequestContextMiddleware
from app.main import create_app
from suites.unit.conftest import MakeSettings

pytestmark = pytest.mark.anyio

API_POLICY = "default-src 'none'; frame-ancestors 'none'"
NONCE = re.compile(r"'nonce-([A-Za-z0-9_-]{22})'")


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://renum") as client:
            yield client


async def test_api_answers_carry_the_headers_and_a_policy_that_allows_nothing(
    make_settings: MakeSettings,
) -> None:
    async with served(make_settings()) as client:
        for path in ("/openapi.json", "/livez", "/api/v1/accounts", "/no/such/page"):
            response = await client.get(path)
            assert response.headers["x-content-type-options"] == "nosniff", path
            assert response.headers["referrer-policy"] == "no-referrer", path
            assert response.headers["content-security-policy"] == API_POLICY, path
            assert "strict-transport-security" not in response.headers, path
            assert len(response.headers.get_list("content-security-policy")) == 1


async def test_pages_have_their_own_policy_with_a_fresh_nonce_on_their_inline_code(
    make_settings: MakeSettings,
) -> None:
    pages = [
        ("/", "style", "'self' data:"),  # its empty icon
        ("/docs", "script", "'self' data:"),  # Swagger UI draws its icons as data: URLs
        ("/docs/oauth2-redirect", "script", "'self'"),
    ]
    async with served(make_settings()) as client:
        for path, tag, images in pages:
            answers = [await client.get(path), await client.get(path)]
            nonces = []
            for response in answers:
                [policy] = response.headers.get_list("content-security-policy")  # its own only
                found = NONCE.search(policy)
                assert found, policy
                nonce = found.group(1)
                assert policy == page_policy(nonce, images=images)
                assert f'<{tag} nonce="{nonce}">' in response.text, path
                assert f"<{tag}>" not in response.text, path  # no inline code without it
                assert response.headers["x-content-type-options"] == "nosniff"
                nonces.append(nonce)
            assert nonces[0] != nonces[1], path


async def test_production_asks_for_https_for_a_year(make_settings: MakeSettings) -> None:
    settings = make_settings(environment="production", secret_key="p" * 64)
    assert settings.security.headers.hsts_max_age_seconds == 31_536_000
    headers = dict(security_headers(settings.security.headers))
    assert headers[b"strict-transport-security"] == b"max-age=31536000"
    wider = SecurityHeaderSettings(hsts_max_age_seconds=600, hsts_include_subdomains=True)
    assert dict(security_headers(wider))[b"strict-transport-security"] == (
        b"max-age=600; includeSubDomains"
    )


@pytest.mark.parametrize(
    "section", [{"enabled": False}, {"headers": {"enabled": False}}], ids=["capability", "headers"]
)
async def test_switched_off_no_security_header_is_added(
    make_settings: MakeSettings, section: dict[str, Any]
) -> None:
    async with served(make_settings(security=section)) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    for name in ("x-content-type-options", "referrer-policy", "content-security-policy"):
        assert name not in response.headers
    assert "x-request-id" in response.headers


def test_settings_refuse_a_policy_that_could_split_a_header() -> None:
    with pytest.raises(ValueError, match="content_security_policy"):
        SecurityHeaderSettings(content_security_policy="default-src 'none'\r\nSet-Cookie: a=b")


async def test_a_header_the_answer_sets_itself_is_kept_and_not_repeated() -> None:
    app = FastAPI()

    @app.get("/own")
    async def own() -> JSONResponse:
        return JSONResponse({}, headers={"Referrer-Policy": "same-origin"})

    added = [(b"referrer-policy", b"no-referrer"), (b"x-content-type-options", b"nosniff")]
    app.add_middleware(RequestContextMiddleware, max_body_bytes=1024, response_headers=added)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/own")
    assert response.headers.get_list("referrer-policy") == ["same-origin"]
    assert response.headers["x-content-type-options"] == "nosniff"


def test_a_page_without_inline_code_gets_the_policy_and_keeps_its_headers() -> None:
    from fastapi.responses import HTMLResponse

    page = with_nonce(HTMLResponse("<p>plain</p>", headers={"Cache-Control": "no-store"}))
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["content-length"] == str(len(b"<p>plain</p>"))
    assert NONCE.search(page.headers["content-security-policy"])


async def test_the_explorer_escapes_the_app_name_so_no_markup_gets_a_nonce(
    make_settings: MakeSettings,
) -> None:
    async with served(make_settings(app_name="Renum <script>alert(1)</script>")) as client:
        page = (await client.get("/docs")).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script") == 2  # the bundle and the page's own start-up script
