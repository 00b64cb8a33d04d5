"""executions (account_id, created_at, id): the API's list order within an account, so that a
page after a cursor (keyset pagination) reads the index from its position instead of sorting
or skipping the account's executions

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 10:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ix_executions_account_id_created_at_id"


def upgrade() -> None:
    op.create_index(NAME, "executions", ["account_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index(NAME, "executions")
