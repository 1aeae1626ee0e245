"""Observations: each result's extracted value and whether it changed, and the order's extraction.

An order may name what of each page to keep and watch (`orders.extraction`, JSON; none on orders
placed before this revision, which compare whole pages). The watcher writes one observation per
result, in n order, and keeps how far it got per order in `watch_cursors`; results stored before
this revision are observed when the watcher first reaches their order.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("orders", sa.Column("extraction", sa.JSON(), nullable=True))
    op.create_table(
        "observations",
        sa.Column("order_id", sa.String(36), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("fetched_at", TZ, nullable=False),
        sa.Column("valid", sa.Boolean(), nullable=False),
        sa.Column("extraction", sa.Text(), nullable=True),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("value_truncated", sa.Boolean(), nullable=False),
        sa.Column("value_sha256", sa.String(64), nullable=True),
        sa.Column("changed", sa.Boolean(), nullable=False),
        sa.Column("previous_n", sa.Integer(), nullable=True),
        sa.Column("diff", sa.Text(), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("order_id", "n"),
    )
    op.create_table(
        "watch_cursors",
        sa.Column("order_id", sa.String(36), nullable=False),
        sa.Column("last_n", sa.Integer(), nullable=False),
        sa.Column("last_valid_n", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("order_id"),
    )


def downgrade() -> None:
    op.drop_table("watch_cursors")
    op.drop_table("observations")
    op.drop_column("orders", "extraction")
