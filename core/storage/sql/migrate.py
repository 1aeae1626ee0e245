"""Bring a SQL store to the newest Alembic revision of `core/storage/sql/migrations`, whoever opens it first.

What the database holds decides what happens:

- no `alembic_version` and no `schema_version` table: a new store, upgraded from nothing to head;
- `schema_version` but no `alembic_version`: a store made by crawlcoin before migrations
  (`create_all`, version 1); its tables are exactly revision 0001, so it is stamped 0001 and
  upgraded to head;
- `alembic_version`: upgraded from its revision to head (nothing to do when it is there already);
  a revision this code does not know means the store was migrated by a newer crawlcoin, and
  opening it stops with an error naming that revision.

The API, workers and servers all open the store when they start, so the check and the upgrade run
in one transaction that holds a lock: PostgreSQL takes a transaction-scoped advisory lock (its DDL
is transactional too, so a failed revision leaves nothing behind); SQLite's writer engine begins
with `BEGIN IMMEDIATE`, which holds the database's write lock until commit. Whoever comes second
waits, then finds the store at head.
"""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, inspect, text

from core.storage.migration_errors import SchemaTooNew, UnrecognisedSchema

SCRIPTS = Path(__file__).with_name("migrations")
LEGACY_REVISION = "0001"
"""The revision whose schema crawlcoin created before migrations (schema_version 1)."""
LOCK_KEY = int.from_bytes(b"crawlmig", "big") >> 1
"""PostgreSQL advisory lock key (a positive bigint) serialising migrations of one database."""


def migrate(engine: Engine) -> None:
    """Upgrade the store behind `engine` to head (see the module docstring).

    On SQLite `engine` must begin its transactions with `BEGIN IMMEDIATE` (the store's writer
    engine does), so that the lock is held from the first look at the schema.
    """
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
        config = alembic_config(conn)
        tables = set(inspect(conn).get_table_names())
        if "alembic_version" in tables:
            _check_known(conn, ScriptDirectory.from_config(config))
        elif "schema_version" in tables:
            version = conn.execute(text("SELECT version FROM schema_version WHERE id = 1")).scalar()
            if version not in (None, 1):
                raise UnrecognisedSchema(
                    f"the store says schema_version {version} but has no alembic_version table; "
                    "crawlcoin cannot tell which migrations it has had"
                )
            command.stamp(config, LEGACY_REVISION)
        command.upgrade(config, "head")


def alembic_config(conn: Connection) -> Config:
    """An Alembic configuration that runs the shipped revisions on `conn` (no alembic.ini)."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = conn
    return config


def head() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory(str(SCRIPTS)).get_current_head()
    assert head is not None
    return head


def _check_known(conn: Connection, script: ScriptDirectory) -> None:
    for revision in MigrationContext.configure(conn).get_current_heads():
        try:
            script.get_revision(revision)
        except CommandError:
            raise SchemaTooNew(
                f"the store is at schema revision {revision!r}, which this crawlcoin does not know "
                f"(its newest is {head()!r}): it was migrated by a newer crawlcoin; upgrade crawlcoin"
            ) from None
