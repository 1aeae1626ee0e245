"""SQL plumbing: engines for SQLite or PostgreSQL, the schema, and transactions with retries.

Atomicity: every write runs in one transaction. On SQLite writers take the database lock
up front (`BEGIN IMMEDIATE`), so concurrent writers from any number of processes queue on
the busy timeout instead of failing half-way; readers use deferred transactions and never
block thanks to WAL. On PostgreSQL a debit is one conditional `UPDATE … WHERE balance >=
amount`, which row-locks and re-checks under READ COMMITTED, and the two account rows of a
transfer are always touched in sorted order so concurrent transfers cannot deadlock.
"""

import fcntl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, bindparam, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, SQLModel, create_engine, select

from core.errors import InvalidInput
from core.storage.sql.migrate import migrate
from core.storage.sql.tables import SchemaVersionRow

R = TypeVar("R")
T = TypeVar("T")

KEYS_PER_READ = 500
"""Keys read in one statement (well within SQLite's and PostgreSQL's bound parameters)."""


def chunked(items: list[T], size: int = KEYS_PER_READ) -> Iterator[list[T]]:
    """`items` in slices of at most `size`, for IN lists of bounded length."""
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _sqlite_engine(url: str, immediate: bool) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@contextmanager
def _opening_lock(database: Path) -> Iterator[None]:
    """Processes opening one SQLite file take turns until its schema is migrated.

    The first connection to a new file switches it to WAL, which needs the database to itself and
    answers "database is locked" at once, busy timeout or not, while another process is migrating
    it. A lock file next to the database (`flock`, released when the process dies) serialises that.
    """
    with open(database.with_name(database.name + ".open-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def utcnow() -> datetime:
    return datetime.now(UTC)


def record(model: type[R], row: SQLModel) -> R:
    """Copy a table row out into its record."""
    return model.model_validate(row, from_attributes=True)  # type: ignore[attr-defined]


def by_keys(table: Any, column: str) -> Any:
    """`SELECT * FROM table WHERE column IN :keys`, to build once and run with `records_by_keys`: building a
    statement costs about three times what running it does on SQLite, and ORM objects cost more than rows."""
    return select(table).where(table.c[column].in_(bindparam("keys", expanding=True)))


def records_by_keys(s: Session, stmt: Any, keys: list[Any], model: type[R]) -> list[R]:
    """The records of the rows `stmt` (from `by_keys`) finds for `keys`, read in chunks."""
    return [model.model_validate(m) for some in chunked(keys)  # type: ignore[attr-defined]
            for m in s.execute(stmt, {"keys": some}).mappings()]


class SqlBase:
    """Engines and transactions, shared by every part of the SQL store."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        opening: Any = nullcontext()
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                opening = _opening_lock(Path(parsed.database))
            self._writer = _sqlite_engine(url, immediate=True)
            self._reader = _sqlite_engine(url, immediate=False)
            self._insert: Callable[..., Any] = sqlite.insert  # dialect insert, for ON CONFLICT
        elif self.dialect == "postgresql":
            if parsed.drivername == "postgresql":
                url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
            self._writer = self._reader = create_engine(url, pool_size=10, max_overflow=40, pool_pre_ping=True)
            self._insert = postgresql.insert
        else:
            raise InvalidInput(f"unsupported SQL store URL scheme {parsed.drivername!r}")
        with opening:
            migrate(self._writer)

    def close(self) -> None:
        self._writer.dispose()
        self._reader.dispose()

    def ping(self) -> None:
        with Session(self._reader) as s:
            s.exec(select(SchemaVersionRow)).first()

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with Session(self._writer, expire_on_commit=False) as s, s.begin():
            yield s

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self._reader, expire_on_commit=False) as s:
            yield s

    def _retrying(self, fn: Callable[[], R]) -> R:
        """Run a write again when PostgreSQL aborts it for a deadlock or serialization failure."""
        for attempt in range(5):
            try:
                return fn()
            except OperationalError as e:
                code = getattr(e.orig, "sqlstate", None)
                if code not in ("40001", "40P01") or attempt == 4:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")
