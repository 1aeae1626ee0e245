"""The durable store: one Protocol (`Store`), its records, and one backend per kind of database."""

from core.errors import InvalidInput
from core.storage.interface import (
    AccountStore,
    LedgerStore,
    OrderStore,
    ResultStore,
    Store,
    SyncOutbox,
    WatchStore,
    WebhookStore,
)
from core.storage.records import (
    Acknowledged,
    ApiToken,
    Claim,
    Cursor,
    DeliveryState,
    LedgerEntry,
    LoginSession,
    Observation,
    OpenClaim,
    Order,
    OrderEdit,
    Pruned,
    Recorded,
    Repetition,
    Result,
    ResultOutcome,
    Transfer,
    User,
    WatchCursor,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
    delivery_id,
    job_key,
)

__all__ = [
    "AccountStore", "Acknowledged", "ApiToken", "Claim", "Cursor", "DeliveryState", "LedgerEntry", "LedgerStore",
    "LoginSession", "Observation", "OpenClaim", "Order", "OrderEdit", "OrderStore", "Pruned", "Recorded", "Repetition",
    "Result", "ResultOutcome", "ResultStore", "Store", "SyncOutbox", "Transfer", "User", "WatchCursor", "WatchStore",
    "Webhook", "WebhookAttempt", "WebhookDelivery", "WebhookEvent", "WebhookStore", "delivery_id", "job_key",
    "open_store",
]


def open_store(url: str) -> Store:
    """Open (and create or migrate the schema of) the store at `url`."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme in ("sqlite", "postgresql", "postgres"):
        from core.storage.sql import SqlStore

        if scheme == "postgres":
            url = "postgresql" + url[len("postgres") :]
        return SqlStore(url)
    if scheme == "cassandra":
        from core.storage.cassandra import CassandraStore

        return CassandraStore(url)
    raise InvalidInput(f"unsupported store URL scheme {scheme!r} (expected sqlite://, postgresql:// or cassandra://)")
