"""executions' content sealed at rest: a content_key_id on executions, execution_steps,
execution_context, execution_messages and execution_events naming the key that sealed the
row's content (NULL: plaintext, every row so far), each with an index of the sealed rows only
(rows that are not sealed cost nothing more to write)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = (
    "executions",
    "execution_steps",
    "execution_context",
    "execution_messages",
    "execution_events",
)
SEALED_ROWS = sa.text("content_key_id IS NOT NULL")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch:
            batch.add_column(sa.Column("content_key_id", sa.String(length=64), nullable=True))
        op.create_index(
            f"ix_{table}_content_key_id",
            table,
            ["content_key_id"],
            postgresql_where=SEALED_ROWS,
            sqlite_where=SEALED_ROWS,
        )


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_index(f"ix_{table}_content_key_id", table)
        with op.batch_alter_table(table, recreate="never") as batch:
            batch.drop_column("content_key_id")
