"""Costly reads that may be kept between writes: usage aggregates, execution lists and the
analytics figures.

A read names its kind (``KINDS``), whose data it shows (the caller's ``Scope``: one account, or
every account for a platform admin), the parameters it was asked with, and the model of its
answer. The base computes every read (``ReadCache``); the performance capability puts its
``SmartCache`` in ``Runtime.cache``, which keeps answers by exactly those parts and forgets
them when ``changed(kind, account_id)`` says a write touched that account's data (and with it
every all-accounts view). Whatever writes the data a kind shows says so: the engine's commits
(through the capability's engine observer), the API's own writes (an execution created or
cancelled) and the rollups' folds (the analytics figures of the accounts they folded)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Hashable
from typing import TypeVar

from pydantic import BaseModel

from app.repositories.base import Scope

KINDS = ("usage", "executions", "analytics")
M = TypeVar("M", bound=BaseModel)


class ReadCache:
    """No cache: every read computed (the base's, and the performance capability's when its
    cache is switched off)."""

    async def read(
        self,
        kind: str,
        scope: Scope,
        params: tuple[Hashable, ...],
        model: type[M],
        compute: Callable[[], Awaitable[M]],
    ) -> M:
        """The answer of ``compute()``, or one kept for the same kind, scope and parameters."""
        return await compute()

    def changed(self, kind: str, account_id: uuid.UUID) -> None:
        """A write changed what ``kind`` reads show of ``account_id``'s data."""
