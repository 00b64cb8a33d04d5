"""Alembic environment: runs migrations on the connection app.db.migrate hands over."""

from __future__ import annotations

from alembic import context

import app.models  # noqa: F401  (registers every table)
from app.db.base import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached when alembic is run by hand
    raise RuntimeError("run migrations with `renum db upgrade`, which supplies the connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
