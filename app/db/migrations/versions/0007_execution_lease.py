"""executions.lease: the generation of an execution's ownership, advanced by every claim and
every engine commit, which each check it (a fence against a stale owner, and what makes a
commit retried after a lost connection safe)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 16:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("lease", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("executions", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("lease")
