"""The durable store: one Protocol (`base.Store`), one backend per kind of database."""

from core.errors import InvalidInput
from core.storage.base import Store


def open_store(url: str) -> Store:
    """Open (and create or migrate the schema of) the store at `url`."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme in ("sqlite", "postgresql", "postgres"):
        from core.storage.sql import SqlStore

        if scheme == "postgres":
            url = "postgresql" + url[len("postgres"):]
        return SqlStore(url)
    if scheme == "cassandra":
        from core.storage.cassandra import CassandraStore

        return CassandraStore(url)
    raise InvalidInput(f"unsupported store URL scheme {scheme!r} (expected sqlite://, postgresql:// or cassandra://)")
