"""security counters: the intrusion detection's counters shared by every API process when
Redis is not configured (failed logins per account and source, throttlings, known contexts)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "security_counters",
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_security_counters")),
    )
    with op.batch_alter_table("security_counters", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_security_counters_expires_at"), ["expires_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("security_counters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_security_counters_expires_at"))
    op.drop_table("security_counters")
