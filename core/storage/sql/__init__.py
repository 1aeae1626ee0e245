"""SQL backend (SQLModel on SQLAlchemy): SQLite for the embedded default, PostgreSQL at scale.

One mixin per domain, composed into `SqlStore`: `engine` (engines, transactions, schema
creation), `tables`, `accounts` (users, sessions, tokens), `ledger`, `orders` (orders and
claims), `results` (results and delivery cursors), `watch` (observations of results), `webhooks`
(webhooks and their delivery outbox), `outbox` (Prefect sync requests). Every write is one
transaction; see `core.storage.sql.engine` for how that is made safe under concurrency on each dialect.
"""

from core.storage.sql.accounts import SqlAccounts
from core.storage.sql.orders import SqlOrders
from core.storage.sql.results import SqlResults
from core.storage.sql.watch import SqlWatch
from core.storage.sql.webhooks import SqlWebhooks


class SqlStore(SqlAccounts, SqlOrders, SqlResults, SqlWatch, SqlWebhooks):
    """The Store protocol on SQLite or PostgreSQL."""


__all__ = ["SqlStore"]
