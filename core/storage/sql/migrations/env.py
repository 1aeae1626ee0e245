"""Alembic environment: runs on the connection `core.storage.sql.migrate` passes in (no alembic.ini)."""

from alembic import context
from sqlmodel import SQLModel

import core.storage.sql.tables  # noqa: F401  (registers the tables on SQLModel.metadata)

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters a table by copying it
    transactional_ddl=True,  # the caller's transaction (with its lock) spans every revision
)
with context.begin_transaction():
    context.run_migrations()
