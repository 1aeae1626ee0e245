"""Validation of results: whether other miners' fetches checked a result, and which miners did.

Results stored before this revision were never compared with another fetch: they are `unchecked`.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("results", sa.Column("validation", sa.String(16), nullable=False, server_default="unchecked"))
    op.add_column("results", sa.Column("checked_by", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_column("checked_by")
        batch.drop_column("validation")
