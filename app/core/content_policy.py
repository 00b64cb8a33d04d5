"""The Content-Security-Policy of the HTML pages Renum serves (the landing page, the API
explorer): each answer gets a fresh nonce, and only the inline scripts and styles carrying it
run. Everything else a page may load comes from its own origin; nothing may frame it.

Answers that are not pages (the API's JSON) get the security capability's default policy
(``security.headers``), which allows nothing at all."""

from __future__ import annotations

import secrets

from starlette.responses import HTMLResponse


def nonce() -> str:
    """128 random bits, as the CSP specification asks of a nonce."""
    return secrets.token_urlsafe(16)


def page_policy(page_nonce: str, *, images: str = "'self'") -> str:
    """A page's policy: scripts and styles from its origin or carrying ``page_nonce``,
    requests to its origin only, no plugins, no base URL, no framing, forms posted to its
    origin."""
    allowed = f"'self' 'nonce-{page_nonce}'"
    return (
        f"default-src 'none'; script-src {allowed}; style-src {allowed}; img-src {images}; "
        "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    )


def with_nonce(page: HTMLResponse, *, images: str = "'self'") -> HTMLResponse:
    """``page`` with a fresh nonce on each of its inline ``<script>`` and ``<style>`` tags and
    the policy that lets exactly those run (the page's own markup: nothing a client sent is
    in it)."""
    value = nonce()
    body = bytes(page.body).decode("utf-8")
    body = body.replace("<script>", f'<script nonce="{value}">')
    body = body.replace("<style>", f'<style nonce="{value}">')
    kept = {k: v for k, v in page.headers.items() if k not in ("content-length", "content-type")}
    kept["Content-Security-Policy"] = page_policy(value, images=images)
    return HTMLResponse(body, status_code=page.status_code, headers=kept)
