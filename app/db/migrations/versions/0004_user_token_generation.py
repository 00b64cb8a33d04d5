"""users.token_generation: a password change ends the user's access tokens too

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing users start at generation 0, which is also what tokens issued before this
    # revision (they carry no `gen` claim) read as: they stay valid until the next change.
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("token_generation", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )


def downgrade() -> None:
    # An ALTER TABLE ... DROP COLUMN (SQLite 3.35+), never SQLite's batch "move and copy": that
    # drops and recreates `users`, and with foreign keys enforced the drop deletes every row
    # referring to a user (API keys, refresh tokens, provider keys) through ON DELETE CASCADE.
    with op.batch_alter_table("users", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("token_generation")
