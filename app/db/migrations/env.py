"""Alembic environment: runs migrations on the connection app.db.migrate hands over.

The db layer does not import the models: whoever needs the models' metadata (autogenerate,
``alembic check``) passes it as ``config.attributes["target_metadata"]`` from a layer above,
e.g. ``Base.metadata`` after ``import app.models``. Upgrades and downgrades do not need it.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached when alembic is run by hand
    raise RuntimeError("run migrations with `renum db upgrade`, which supplies the connection")

context.configure(
    connection=connection,
    target_metadata=context.config.attributes.get("target_metadata"),
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
