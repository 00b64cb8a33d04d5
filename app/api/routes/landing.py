"""The page at ``/``: what this server is and where to go from here (the API explorer, the
schema, the health dashboard and probes), each link shown only when this deployment serves it.
Plain HTML with its own small style: nothing loaded from elsewhere."""

from __future__ import annotations

from html import escape

from fastapi import Request
from fastapi.responses import HTMLResponse

from app import __version__
from app.api.router import PrefixRouter
from app.core.config import Settings
from app.core.content_policy import with_nonce

router = PrefixRouter(include_in_schema=False)

_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;"
    "color:#1b1f24}a{color:#0b5cad}code{background:#f2f4f7;padding:0 .25rem;border-radius:3px}"
    "li{margin:.4rem 0}"
)


def links(settings: Settings) -> list[tuple[str, str]]:
    """The places this deployment serves, as (path, what it is)."""
    found = []
    if settings.docs.enabled:
        found.append(("/docs", "the API explorer: every operation, tried from the browser"))
    found.append(("/openapi.json", "the OpenAPI schema"))
    if settings.monitor.enabled:
        found.append(("/health/dashboard", "the health dashboard, live"))
    found.append(("/health/ready", "readiness: 200 when every critical dependency passes"))
    return found


@router.get("/", response_class=HTMLResponse)
async def landing(request: Request) -> HTMLResponse:
    settings: Settings = request.app.state.settings
    items = "".join(
        f'<li><a href="{escape(path)}"><code>{escape(path)}</code></a>: {escape(text)}</li>'
        for path, text in links(settings)
    )
    name = escape(settings.app_name)
    page = HTMLResponse(
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        # No icon to fetch (a request for /favicon.ico would only find a 404).
        '<link rel=icon href="data:,">'
        f"<title>{name}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{name}</h1><p>A backend that runs teams of AI agents: compose a team, run it over "
        "any OpenAI-compatible model endpoint, watch it live, and see every token and cent "
        f"spent. Version {escape(__version__)}; the API lives under <code>/api/v1</code>.</p>"
        f"<ul>{items}</ul><p>The guides and the reference are the docs site: "
        "<code>nox -s docs -- serve</code> in the repository.</p></body></html>"
    )
    return with_nonce(page, images="'self' data:")
