"""The docs capability: the interactive API explorer at ``/docs`` (vendored assets, nothing
loaded from the internet) and the generator of the docs site's reference pages
(``renum docs generate``). Switched off with ``RENUM_DOCS__ENABLED=false``: the explorer and its
assets do not exist; ``/openapi.json`` stays, as part of the base API."""

from __future__ import annotations

from fastapi import FastAPI

from app.capabilities.base import Capability
from app.capabilities.docs.explorer import install_explorer
from app.capabilities.docs.generator import DocumentationGenerator, HealthDocs
from app.core.config import Settings

__all__ = ["CAPABILITY", "DocumentationGenerator", "HealthDocs"]


def install(app: FastAPI, settings: Settings) -> None:
    install_explorer(app)


CAPABILITY = Capability(
    name="docs",
    summary="The API explorer at /docs and the reference generator.",
    install=install,
)
