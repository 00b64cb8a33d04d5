"""The security headers every answer carries (``security.headers``): ``nosniff``, the referrer
policy, a Content-Security-Policy for answers that set none (the API's JSON: nothing to load,
never framed; the pages Renum serves set their own, with a nonce) and, where configured,
``Strict-Transport-Security``.

They are static, so they cost nothing to work out per request: the base middleware adds them
to each answer's head, each one unless the answer set that header itself
(``app.state.response_headers``, ``app.core.middleware``)."""

from __future__ import annotations

from app.core.config import SecurityHeaderSettings


def security_headers(settings: SecurityHeaderSettings) -> list[tuple[bytes, bytes]]:
    """The headers to add, as ASGI header pairs (lower-case names)."""
    if not settings.enabled:
        return []
    headers = [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", settings.referrer_policy.encode("latin-1")),
        (b"content-security-policy", settings.content_security_policy.encode("latin-1")),
    ]
    if settings.hsts_max_age_seconds:
        value = f"max-age={settings.hsts_max_age_seconds}"
        if settings.hsts_include_subdomains:
            value += "; includeSubDomains"
        headers.append((b"strict-transport-security", value.encode("latin-1")))
    return headers
