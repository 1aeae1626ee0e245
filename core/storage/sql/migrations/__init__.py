"""Alembic migrations of the SQL store (SQLite and PostgreSQL); `core.storage.sql.migrate` runs them.

A new revision goes in `versions/`, hand-written with `op.*` calls that work on both dialects
(SQLite gets batch mode, so `op.batch_alter_table` is the way to change a table there).
`tests/core/storage/test_sql_migrations.py` fails while the models and the migrated schema differ.
"""
