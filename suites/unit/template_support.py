"""A template renderer that the tests of one module share: its workers live on an event loop of
their own (in a thread), so each test's event loop renders through them instead of starting
new worker processes for every test."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

from app.core.config import TemplateSettings
from app.core.templates import Rendered, TemplateRenderer
from app.services.providers.builtin import TEMPLATE_KITS


class SharedRenderer(TemplateRenderer):
    """A :class:`TemplateRenderer` whose renders run on its own loop; ``shutdown()`` ends it."""

    def __init__(
        self, settings: TemplateSettings | None = None, kits: Mapping[str, str] = TEMPLATE_KITS
    ) -> None:
        super().__init__(settings or TemplateSettings(), kits)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def render(self, source: str, data: Mapping[str, Any], **kit: Any) -> Rendered:
        work = super().render(source, data, **kit)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self.loop))

    def shutdown(self) -> None:
        asyncio.run_coroutine_threadsafe(self.close(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()
