"""A template renderer that the tests of one module share: its workers live on an event loop of
their own (in a thread), so each test's event loop renders through them instead of starting
new worker processes for every test; :class:`OwnerRecorder`, a stand-in that records whose
renders it was given; and :class:`ProcessKit`, a test-only kit that shows what a render
worker's process sees (its environment, its limits)."""

from __future__ import annotations

import asyncio
import os
import resource
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


class OwnerRecorder(TemplateRenderer):
    """A renderer that starts no worker: it records each render's source and owner and
    renders the source as it is (no effects)."""

    def __init__(self) -> None:
        super().__init__(TemplateSettings())
        self.renders: list[tuple[str, Any]] = []

    async def render(
        self, source: str, data: Mapping[str, Any], *, owner: Any = None, **kit: Any
    ) -> Rendered:
        self.renders.append((source, owner))
        return Rendered(source, {"writes": {}, "messages": []})


class ProcessKit:
    """A test-only kit (``template_support:ProcessKit``, importable by a worker whose
    ``PYTHONPATH`` holds this directory): its effects are the worker's environment and the
    processor-time limit its render runs under."""

    names: Mapping[str, Any] = {}

    def __init__(self, data: Any) -> None:
        self.environ = dict(os.environ)
        self.cpu_limit = resource.getrlimit(resource.RLIMIT_CPU)[0]
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu_spent = usage.ru_utime + usage.ru_stime

    def effects(self) -> dict[str, Any]:
        return {"environ": self.environ, "cpu_limit": self.cpu_limit, "cpu_spent": self.cpu_spent}
