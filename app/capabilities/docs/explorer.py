"""The interactive API docs (Swagger UI), served from vendored assets so the page loads
nothing from the internet, under a Content-Security-Policy whose nonce lets only the page's
own inline script run (``app.core.content_policy``)."""

from __future__ import annotations

from html import escape
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from app.api.router import PrefixRouter
from app.core.content_policy import with_nonce

STATIC_DIR = Path(__file__).parents[2] / "web" / "static"
ASSETS = "/static/swagger-ui"


def install_explorer(app: FastAPI) -> None:
    """Serve Swagger UI at ``/docs`` and its vendored assets under ``/static``."""
    router = PrefixRouter(include_in_schema=False)

    @router.get("/docs", response_class=HTMLResponse)
    async def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=escape(f"{app.title} - docs"),  # FastAPI puts it in the page as it is
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
        )
        return with_nonce(page, images="'self' data:")  # Swagger UI draws icons as data: URLs

    @router.get("/docs/oauth2-redirect", response_class=HTMLResponse)
    async def swagger_ui_redirect() -> HTMLResponse:
        return with_nonce(get_swagger_ui_oauth2_redirect_html())

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
