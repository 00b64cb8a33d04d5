"""Response compression: starlette-compress picks zstd, brotli or gzip by the client's
``Accept-Encoding`` (in that order of preference), leaves bodies under ``minimum_bytes`` and
media types it does not list (images, archives, anything already compressed) as they are, and
flushes an event stream after each event, so compression never holds an event back. A
request without ``Accept-Encoding`` goes straight through (one look at its headers): nothing
can be compressed for it, and its answer, in identity coding, suits any client a cache hands it
to, so it needs no ``Vary``.

Answers under ``excluded_paths`` are never compressed: where a response carries a credential
(a token, a new API key) next to something the client sent, the sizes of its compressed forms
would let an observer guess the credential byte by byte (BREACH). The check is one
``startswith`` on the path (below any ``root_path``); ``suites/unit/test_performance.py`` fails
when an operation whose answer holds a credential is outside the excluded prefixes."""

from __future__ import annotations

from starlette._utils import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette_compress import CompressMiddleware

from app.core.config import CompressionSettings


class Compression:
    """Pure ASGI: ``CompressMiddleware`` for every HTTP answer outside ``excluded_paths``."""

    def __init__(self, app: ASGIApp, *, settings: CompressionSettings) -> None:
        self.app = app
        self.excluded = tuple(settings.excluded_paths)
        self.compressed = CompressMiddleware(
            app,
            minimum_size=settings.minimum_bytes,
            zstd_level=settings.level,
            brotli_quality=settings.level,
            gzip_level=settings.level,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, _ in scope["headers"]:
                if name == b"accept-encoding":
                    if not get_route_path(scope).startswith(self.excluded):
                        await self.compressed(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)  # the client takes no encoding, or none here
