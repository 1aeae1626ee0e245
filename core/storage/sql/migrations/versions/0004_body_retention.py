"""Retention of delivered bodies: results say when their body was deleted; deliveries note what was delivered when.

A result client's acknowledged stretch of an order's results is noted in `deliveries` with its time;
once that time is older than the retention, the pruning pass deletes those bodies (the rest of each
result stays) and sets `results.body_pruned_at`. What result clients had acknowledged before this
revision — up to each delivery cursor — is noted as delivered now, so its retention starts today.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("results", sa.Column("body_pruned_at", TZ, nullable=True))
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.String(36), nullable=False),
        sa.Column("first_n", sa.Integer(), nullable=False),
        sa.Column("last_n", sa.Integer(), nullable=False),
        sa.Column("delivered_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_deliveries_delivered_at", "deliveries", ["delivered_at"])
    op.execute(
        "INSERT INTO deliveries (order_id, first_n, last_n, delivered_at) "
        "SELECT order_id, 1, MAX(last_n), CURRENT_TIMESTAMP FROM delivery_cursors WHERE last_n > 0 GROUP BY order_id"
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_delivered_at", table_name="deliveries")
    op.drop_table("deliveries")
    op.drop_column("results", "body_pruned_at")
