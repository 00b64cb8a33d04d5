"""ledger daily totals: the retention purge folds each ledger row it removes into its day's
total (per account, team, agent, user, provider, model and payer), so usage figures stay whole

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ledger_daily_totals",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("team_id", sa.Uuid(), nullable=True),
        sa.Column("agent_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("paid_by", sa.String(length=16), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(precision=20, scale=8), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_ledger_daily_totals_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_daily_totals")),
    )
    with op.batch_alter_table("ledger_daily_totals", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ledger_daily_totals_account_id_day", ["account_id", "day"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_ledger_daily_totals_day"), ["day"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ledger_daily_totals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ledger_daily_totals_day"))
        batch_op.drop_index("ix_ledger_daily_totals_account_id_day")
    op.drop_table("ledger_daily_totals")
