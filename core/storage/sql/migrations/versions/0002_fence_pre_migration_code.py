"""Fence off crawlcoin from before migrations: schema_version says 2.

That code (commit 3a4523b and older) refuses a store whose schema_version is above 1 ("newer than
this crawlcoin; upgrade crawlcoin") instead of running its `create_all` on a schema it does not
know. Alembic's revision is the schema's version from here on; later revisions leave this table
alone, since any value above 1 keeps the old code out.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

schema_version = sa.table("schema_version", sa.column("id", sa.Integer()), sa.column("version", sa.Integer()))


def upgrade() -> None:
    op.execute(sa.delete(schema_version))
    op.execute(sa.insert(schema_version).values(id=1, version=2))


def downgrade() -> None:
    op.execute(sa.update(schema_version).values(version=1))
