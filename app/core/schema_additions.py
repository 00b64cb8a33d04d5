"""Additions to the OpenAPI schema an application serves. A part of the backend that answers
something its routes do not declare (413 from the body limit, 503 while the database is away,
304 on conditional reads, the server's rules) documents it through ``add_to_schema``: on every
schema the application generates, including one generated again after ``app.openapi_schema``
was reset, before it is served."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI


def add_to_schema(app: FastAPI, document: Callable[[dict[str, Any]], None]) -> None:
    """Run ``document`` on each schema ``app`` generates (it changes the schema in place)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            try:
                document(generate())  # generating sets app.openapi_schema
            except BaseException:
                app.openapi_schema = None  # never served half documented
                raise
        return app.openapi_schema  # type: ignore[return-value]  # set just above, or before

    app.openapi = openapi  # type: ignore[method-assign]
