"""rollups: hourly and daily sums of model calls (usage_rollups) and of ended executions
(execution_rollups), with a rolled_up flag on ledger_entries and executions (indexed where
false); the daily totals of ledger rows purged so far go into the rollups of their day (its
00:00 hour and the day), so usage figures read from the rollups stay as they were; daily
totals keep the calls' summed latency from now on (duration_ms, 0 for those folded before)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 12:00:00.000000
"""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, time
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOT_ROLLED_UP = sa.text("NOT rolled_up")
# As app.models.rollup fixes them forever (a migration does not import the app's models).
ROLLUPS_NAMESPACE = uuid.UUID("8d3c51f4-6f0e-4a8e-b2a4-1c9e7d52f0a3")
USAGE_KEY = ("account_id", "team_id", "agent_id", "user_id", "provider", "model", "paid_by")
MEASURES = ("calls", "input_tokens", "output_tokens", "cost_usd")
TYPES: dict[str, sa.types.TypeEngine[Any]] = {
    "id": sa.Uuid(),
    "account_id": sa.Uuid(),
    "team_id": sa.Uuid(),
    "agent_id": sa.Uuid(),
    "user_id": sa.Uuid(),
    "day": sa.Date(),
    "bucket": sa.DateTime(timezone=True),
    "cost_usd": sa.Numeric(precision=20, scale=8),
}


def _columns(*names: str) -> list[sa.ColumnClause[Any]]:
    return [sa.column(name, TYPES.get(name)) for name in names]


def _rollup_table(name: str, *columns: sa.Column[Any]) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("grain", sa.String(length=8), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.Uuid(), nullable=True),
        *columns,
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(precision=20, scale=8), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f(f"fk_{name}_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{name}")),
    )
    op.create_index(f"ix_{name}_account_id_grain_bucket", name, ["account_id", "grain", "bucket"])
    op.create_index(f"ix_{name}_grain_bucket", name, ["grain", "bucket"])


def _rollup_id(grain: str, bucket: datetime, key: Sequence[object]) -> uuid.UUID:
    parts = ("usage_rollups", grain, bucket.isoformat(), *key)
    name = "\x1f".join("" if part is None else str(part) for part in parts)
    return uuid.uuid5(ROLLUPS_NAMESPACE, name)


def _daily_totals_into_rollups() -> None:
    bind = op.get_bind()
    totals = sa.table("ledger_daily_totals", *_columns("day", *USAGE_KEY, *MEASURES))
    rollups = sa.table(
        "usage_rollups", *_columns("id", "grain", "bucket", *USAGE_KEY, *MEASURES, "duration_ms")
    )
    rows = []
    for total in bind.execute(sa.select(totals)).mappings():
        bucket = datetime.combine(total["day"], time(0), tzinfo=UTC)
        key = [total[c] for c in USAGE_KEY]
        for grain in ("hour", "day"):
            row = {c: total[c] for c in (*USAGE_KEY, *MEASURES)}
            row.update(id=_rollup_id(grain, bucket, key), grain=grain, bucket=bucket, duration_ms=0)
            rows.append(row)
    if rows:
        bind.execute(sa.insert(rollups), rows)


def upgrade() -> None:
    _rollup_table(
        "usage_rollups",
        sa.Column("agent_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("paid_by", sa.String(length=16), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
    )
    _rollup_table(
        "execution_rollups",
        sa.Column("strategy", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("executions", sa.BigInteger(), nullable=False),
    )
    with op.batch_alter_table("ledger_daily_totals", schema=None) as batch:
        batch.add_column(
            sa.Column("duration_ms", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        )
    for table in ("executions", "ledger_entries"):
        with op.batch_alter_table(table, schema=None) as batch:
            batch.add_column(
                sa.Column(
                    "rolled_up", sa.Boolean(), server_default=sa.text("false"), nullable=False
                )
            )
        op.create_index(
            f"ix_{table}_not_rolled_up",
            table,
            ["rolled_up"],
            postgresql_where=NOT_ROLLED_UP,
            sqlite_where=NOT_ROLLED_UP,
        )
    _daily_totals_into_rollups()


def downgrade() -> None:
    for table in ("ledger_entries", "executions"):
        op.drop_index(f"ix_{table}_not_rolled_up", table)
        with op.batch_alter_table(table, recreate="never") as batch:
            batch.drop_column("rolled_up")
    with op.batch_alter_table("ledger_daily_totals", recreate="never") as batch:
        batch.drop_column("duration_ms")
    for name in ("execution_rollups", "usage_rollups"):
        op.drop_index(f"ix_{name}_grain_bucket", name)
        op.drop_index(f"ix_{name}_account_id_grain_bucket", name)
        op.drop_table(name)
