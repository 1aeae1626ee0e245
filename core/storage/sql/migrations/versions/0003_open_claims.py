"""Open claims: claims whose queued repetitions are not all settled, for the requeue pass.

A dispatch claims repetitions in the store and then enqueues them in Valkey; if Valkey is down
or loses the write, the store's open claim is how any worker finds them again. Claims of active
or paused orders made before this revision are recorded open and confirmed queued (their dispatch
got that far or failed without telling anyone); the requeue pass closes the settled ones.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "open_claims",
        sa.Column("flow_run_id", sa.String(64), nullable=False),
        sa.Column("order_id", sa.String(36), nullable=False),
        sa.Column("first_n", sa.Integer(), nullable=False),
        sa.Column("last_n", sa.Integer(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("queued", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("flow_run_id"),
    )
    op.create_index("ix_open_claims_created_at", "open_claims", ["created_at"])
    op.execute(
        "INSERT INTO open_claims (flow_run_id, order_id, first_n, last_n, created_at, queued) "
        "SELECT c.flow_run_id, c.order_id, c.first_n, c.last_n, c.created_at, true "
        "FROM dispatch_claims c JOIN orders o ON o.id = c.order_id "
        "WHERE o.status IN ('active', 'paused') AND c.last_n >= c.first_n"
    )


def downgrade() -> None:
    op.drop_index("ix_open_claims_created_at", table_name="open_claims")
    op.drop_table("open_claims")
