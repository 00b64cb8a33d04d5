"""messages between the agents of an execution

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 09:15:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.db.base import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "execution_messages",
        sa.Column("execution_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("sender_agent_id", sa.Uuid(), nullable=True),
        sa.Column("sender_step", sa.String(length=64), nullable=False),
        sa.Column("recipient_agent_id", sa.Uuid(), nullable=True),
        sa.Column("correlation_id", sa.String(length=36), nullable=True),
        sa.Column("body", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["executions.id"],
            name=op.f("fk_execution_messages_execution_id_executions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["recipient_agent_id"],
            ["agents.id"],
            name=op.f("fk_execution_messages_recipient_agent_id_agents"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["sender_agent_id"],
            ["agents.id"],
            name=op.f("fk_execution_messages_sender_agent_id_agents"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_execution_messages")),
        sa.UniqueConstraint("execution_id", "seq", name=op.f("uq_execution_messages_execution_id")),
    )
    with op.batch_alter_table("execution_messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_execution_messages_execution_id"), ["execution_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_execution_messages_correlation_id"), ["correlation_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_execution_messages_recipient_agent_id"),
            ["recipient_agent_id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_execution_messages_sender_agent_id"), ["sender_agent_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("execution_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_execution_messages_sender_agent_id"))
        batch_op.drop_index(batch_op.f("ix_execution_messages_recipient_agent_id"))
        batch_op.drop_index(batch_op.f("ix_execution_messages_correlation_id"))
        batch_op.drop_index(batch_op.f("ix_execution_messages_execution_id"))

    op.drop_table("execution_messages")
