"""SQL backend (SQLModel on SQLAlchemy): SQLite for the embedded default, PostgreSQL at scale.

Atomicity: every write runs in one transaction. On SQLite writers take the database lock
up front (`BEGIN IMMEDIATE`), so concurrent writers from any number of processes queue on
the busy timeout instead of failing half-way; readers use deferred transactions and never
block thanks to WAL. On PostgreSQL a debit is one conditional `UPDATE … WHERE balance >=
amount`, which row-locks and re-checks under READ COMMITTED, and the two account rows of a
transfer are always touched in sorted order so concurrent transfers cannot deadlock.
"""

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Engine,
    Index,
    LargeBinary,
    String,
    TypeDecorator,
    case,
    event,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

from core import ledger
from core.errors import Conflict, IdempotencyConflict, InsufficientFunds, InvalidInput, NotFound
from core import schedules
from core.schemas import OrderStatus, RepetitionState
from core.storage.base import (
    ApiToken,
    Claim,
    Cursor,
    LedgerEntry,
    LoginSession,
    Order,
    Repetition,
    Result,
    ResultOutcome,
    Transfer,
    User,
    job_key,
)
from core.storage.sql_migrate import migrate

R = TypeVar("R")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every dialect (SQLite drops the offset otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


# --- tables ---------------------------------------------------------------------------------


class SchemaVersionRow(SQLModel, table=True):
    """Read by crawlcoin from before migrations, which refuses the 2 written here (sql_migrations 0002)."""

    __tablename__ = "schema_version"
    id: int = Field(default=1, primary_key=True)
    version: int


class UserRow(User, table=True):
    __tablename__ = "users"
    id: str = Field(primary_key=True, max_length=36)
    username: str = Field(unique=True, max_length=64)
    created_at: datetime = Field(sa_type=UTCDateTime)


class SessionRow(LoginSession, table=True):
    __tablename__ = "login_sessions"
    id: str = Field(primary_key=True, max_length=36)
    created_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ApiTokenRow(ApiToken, table=True):
    __tablename__ = "api_tokens"
    id: str = Field(primary_key=True, max_length=36)
    owner_id: str = Field(index=True, max_length=36)
    scopes: list[str] = Field(sa_type=JSON)
    created_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class OrderRow(Order, table=True):
    __tablename__ = "orders"
    id: str = Field(primary_key=True, max_length=36)
    owner_id: str = Field(index=True, max_length=36)
    headers: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    status: OrderStatus = Field(default=OrderStatus.active, sa_type=String(16))
    start_at: datetime = Field(sa_type=UTCDateTime)
    next_due_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime, index=True)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class RepetitionRow(Repetition, table=True):
    __tablename__ = "repetitions"
    key: str = Field(primary_key=True, max_length=64)
    order_id: str = Field(index=True, max_length=36)
    state: RepetitionState = Field(default=RepetitionState.queued, sa_type=String(16))
    due_at: datetime = Field(sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime)


class DispatchClaimRow(SQLModel, table=True):
    """Which repetitions a flow run claimed, so running it again claims nothing new."""

    __tablename__ = "dispatch_claims"
    flow_run_id: str = Field(primary_key=True, max_length=64)
    order_id: str = Field(max_length=36)
    first_n: int
    last_n: int
    created_at: datetime = Field(sa_type=UTCDateTime)


class DeliveryCursorRow(SQLModel, table=True):
    __tablename__ = "delivery_cursors"
    token_id: str = Field(primary_key=True, max_length=36)
    order_id: str = Field(primary_key=True, max_length=36)
    last_n: int = 0


class SyncRequestRow(SQLModel, table=True):
    __tablename__ = "prefect_sync_requests"
    order_id: str = Field(primary_key=True, max_length=36)
    requested_at: datetime = Field(sa_type=UTCDateTime, index=True)


class AccountRow(SQLModel, table=True):
    __tablename__ = "accounts"
    __table_args__ = (CheckConstraint(f"balance >= 0 OR account = '{ledger.MINT}'", name="balance_not_negative"),)
    account: str = Field(primary_key=True, max_length=80)
    balance: int = 0


class TransferRow(Transfer, table=True):
    __tablename__ = "transfers"
    key: str = Field(primary_key=True, max_length=200)
    created_at: datetime = Field(sa_type=UTCDateTime)


class LedgerEntryRow(LedgerEntry, table=True):
    __tablename__ = "ledger_entries"
    account: str = Field(primary_key=True, max_length=80)
    txn_key: str = Field(primary_key=True, max_length=200)
    created_at: datetime = Field(sa_type=UTCDateTime, index=True)


class ResultRow(Result, table=True):
    __tablename__ = "results"
    __table_args__ = (Index("ix_results_order_n", "order_id", "n", unique=True),)
    job_key: str = Field(primary_key=True, max_length=64)
    order_id: str = Field(max_length=36)
    miner_id: str = Field(max_length=36)
    headers: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    body_zlib: bytes = Field(default=b"", sa_type=LargeBinary)
    fetched_at: datetime = Field(sa_type=UTCDateTime)
    stored_at: datetime = Field(sa_type=UTCDateTime)


_OPEN = (RepetitionState.queued, RepetitionState.leased)


def _record(model: type[R], row: SQLModel) -> R:
    return model.model_validate(row, from_attributes=True)  # type: ignore[attr-defined]


def _now() -> datetime:
    return datetime.now(UTC)


# --- engine ---------------------------------------------------------------------------------


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


class SqlStore:
    """The Store protocol on SQLite or PostgreSQL."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self._writer = _sqlite_engine(url, immediate=True)
            self._reader = _sqlite_engine(url, immediate=False)
            self._insert = sqlite.insert
        elif self.dialect == "postgresql":
            if parsed.drivername == "postgresql":
                url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
            self._writer = self._reader = create_engine(url, pool_size=10, max_overflow=40, pool_pre_ping=True)
            self._insert = postgresql.insert
        else:
            raise InvalidInput(f"unsupported SQL store URL scheme {parsed.drivername!r}")
        migrate(self._writer)

    def close(self) -> None:
        self._writer.dispose()
        self._reader.dispose()

    def ping(self) -> None:
        with Session(self._reader) as s:
            s.exec(select(SchemaVersionRow)).first()

    # --- plumbing ----------------------------------------------------------------------

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

    # --- users -------------------------------------------------------------------------

    def create_user(self, user: User) -> None:
        try:
            with self._write() as s:
                s.add(UserRow.model_validate(user.model_dump()))
        except IntegrityError:
            raise Conflict(f"username {user.username!r} is taken") from None

    def get_user(self, user_id: str) -> User | None:
        with self._read() as s:
            row = s.get(UserRow, user_id)
            return _record(User, row) if row else None

    def get_user_by_username(self, username: str) -> User | None:
        with self._read() as s:
            row = s.exec(select(UserRow).where(UserRow.username == username)).first()
            return _record(User, row) if row else None

    def set_totp_secret(self, user_id: str, secret: str) -> bool:
        with self._write() as s:
            stmt = (
                update(UserRow)
                .where(col(UserRow.id) == user_id, col(UserRow.totp_enabled).is_(False))
                .values(totp_secret=secret)
            )
            return s.exec(stmt).rowcount == 1  # type: ignore[call-overload]

    def enable_totp(self, user_id: str) -> None:
        with self._write() as s:
            s.exec(update(UserRow).where(col(UserRow.id) == user_id).values(totp_enabled=True))  # type: ignore[call-overload]

    def use_totp_step(self, user_id: str, step: int) -> bool:
        with self._write() as s:
            stmt = (
                update(UserRow)
                .where(col(UserRow.id) == user_id, col(UserRow.totp_last_step) < step)
                .values(totp_last_step=step)
            )
            return s.exec(stmt).rowcount == 1  # type: ignore[call-overload]

    # --- sessions ----------------------------------------------------------------------

    def create_session(self, session: LoginSession) -> None:
        with self._write() as s:
            s.add(SessionRow.model_validate(session.model_dump()))

    def get_session(self, session_id: str) -> LoginSession | None:
        with self._read() as s:
            row = s.get(SessionRow, session_id)
            return _record(LoginSession, row) if row else None

    def revoke_session(self, session_id: str, at: datetime) -> None:
        with self._write() as s:
            stmt = update(SessionRow).where(col(SessionRow.id) == session_id, col(SessionRow.revoked_at).is_(None))
            s.exec(stmt.values(revoked_at=at))  # type: ignore[call-overload]

    # --- API tokens --------------------------------------------------------------------

    def create_api_token(self, token: ApiToken) -> None:
        with self._write() as s:
            s.add(ApiTokenRow.model_validate(token.model_dump()))

    def get_api_token(self, token_id: str) -> ApiToken | None:
        with self._read() as s:
            row = s.get(ApiTokenRow, token_id)
            return _record(ApiToken, row) if row else None

    def list_api_tokens(self, owner_id: str) -> list[ApiToken]:
        with self._read() as s:
            stmt = (
                select(ApiTokenRow)
                .where(ApiTokenRow.owner_id == owner_id)
                .order_by(col(ApiTokenRow.created_at).desc(), col(ApiTokenRow.id).desc())
            )
            return [_record(ApiToken, r) for r in s.exec(stmt)]

    def revoke_api_token(self, owner_id: str, token_id: str, at: datetime) -> bool:
        with self._write() as s:
            row = s.get(ApiTokenRow, token_id)
            if row is None or row.owner_id != owner_id:
                return False
            if row.revoked_at is None:
                row.revoked_at = at
            return True

    # --- ledger ------------------------------------------------------------------------

    def _move(self, s: Session, account: str, delta: int) -> int | None:
        """Apply `delta` to one balance; None if that would take a non-mint account below 0."""
        if delta > 0 or account == ledger.MINT:
            stmt = (
                self._insert(AccountRow)
                .values(account=account, balance=delta)
                .on_conflict_do_update(index_elements=["account"], set_={"balance": AccountRow.balance + delta})
                .returning(AccountRow.balance)
            )
        else:
            stmt = (
                update(AccountRow)
                .where(col(AccountRow.account) == account, col(AccountRow.balance) >= -delta)
                .values(balance=AccountRow.balance + delta)
                .returning(AccountRow.balance)
            )
        return s.execute(stmt).scalar_one_or_none()

    def _transfer(
        self, s: Session, key: str, src: str, dst: str, amount: int, kind: str, reference: str | None
    ) -> Transfer:
        if amount <= 0:
            raise InvalidInput("a transfer moves a positive number of coins")
        if src == dst:
            raise InvalidInput("a transfer needs two different accounts")
        now = _now()
        claimed = s.execute(
            self._insert(TransferRow)
            .values(key=key, from_account=src, to_account=dst, amount=amount, kind=kind, reference=reference,
                    created_at=now)
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(TransferRow.key)
        ).first()
        if claimed is None:
            existing = s.exec(select(TransferRow).where(TransferRow.key == key)).one()
            if (existing.from_account, existing.to_account, existing.amount) != (src, dst, amount):
                raise IdempotencyConflict(f"idempotency key {key!r} was already used for a different transfer")
            return _record(Transfer, existing)
        balances: dict[str, int] = {}
        for account in sorted((src, dst)):  # one lock order for every transfer: no deadlocks
            delta = -amount if account == src else amount
            after = self._move(s, account, delta)
            if after is None:
                have = self._balance(s, src)
                raise InsufficientFunds(f"insufficient coins: balance {have}, needed {amount}")
            balances[account] = after
        for account, delta in ((src, -amount), (dst, amount)):
            s.add(LedgerEntryRow(account=account, txn_key=key, delta=delta, balance_after=balances[account],
                                 kind=kind, reference=reference, created_at=now))
        return Transfer(key=key, from_account=src, to_account=dst, amount=amount, kind=kind, reference=reference,
                        created_at=now)

    def _balance(self, s: Session, account: str) -> int:
        row = s.get(AccountRow, account)
        return row.balance if row else 0

    def transfer(
        self, key: str, from_account: str, to_account: str, amount: int, kind: str, reference: str | None = None
    ) -> Transfer:
        def run() -> Transfer:
            with self._write() as s:
                return self._transfer(s, key, from_account, to_account, amount, kind, reference)

        try:
            return self._retrying(run)
        except IntegrityError:  # a concurrent first use of the same key won the race
            return self._retrying(run)

    def get_transfer(self, key: str) -> Transfer | None:
        with self._read() as s:
            row = s.get(TransferRow, key)
            return _record(Transfer, row) if row else None

    def get_balance(self, account: str) -> int:
        with self._read() as s:
            return self._balance(s, account)

    def recover_pending(self) -> int:
        return 0  # every operation is one transaction: a crash leaves nothing half done

    def list_entries(self, account: str, limit: int, before: Cursor | None = None) -> list[LedgerEntry]:
        with self._read() as s:
            stmt = select(LedgerEntryRow).where(LedgerEntryRow.account == account)
            if before is not None:
                stmt = stmt.where(tuple_(LedgerEntryRow.created_at, LedgerEntryRow.txn_key) < tuple_(*before))
            stmt = stmt.order_by(col(LedgerEntryRow.created_at).desc(), col(LedgerEntryRow.txn_key).desc())
            return [_record(LedgerEntry, r) for r in s.exec(stmt.limit(limit))]

    # --- orders ------------------------------------------------------------------------

    def create_order(self, order: Order) -> tuple[Order, bool]:
        def run() -> tuple[Order, bool]:
            with self._write() as s:
                existing = s.get(OrderRow, order.id)
                if existing is not None:
                    if existing.owner_id != order.owner_id or existing.request_hash != order.request_hash:
                        raise IdempotencyConflict("this idempotency key was already used for a different order")
                    return _record(Order, existing), False
                s.add(OrderRow.model_validate(order.model_dump()))
                s.flush()
                self._transfer(s, ledger.hold_key(order.id), ledger.user_account(order.owner_id),
                               ledger.escrow_account(order.id), order.cost, "hold", order.id)
                self._request_sync(s, order.id, order.created_at)
                return order, True

        try:
            return self._retrying(run)
        except IntegrityError:  # the same order id was created concurrently: now it exists
            return self._retrying(run)

    def get_order(self, order_id: str) -> Order | None:
        with self._read() as s:
            row = s.get(OrderRow, order_id)
            return _record(Order, row) if row else None

    def list_orders(self, owner_id: str, limit: int, before: Cursor | None = None) -> list[Order]:
        with self._read() as s:
            stmt = select(OrderRow).where(OrderRow.owner_id == owner_id)
            if before is not None:
                stmt = stmt.where(tuple_(OrderRow.created_at, OrderRow.id) < tuple_(*before))
            stmt = stmt.order_by(col(OrderRow.created_at).desc(), col(OrderRow.id).desc())
            return [_record(Order, r) for r in s.exec(stmt.limit(limit))]

    def _locked_order(self, s: Session, order_id: str) -> OrderRow | None:
        return s.exec(select(OrderRow).where(OrderRow.id == order_id).with_for_update()).first()

    def set_order_status(
        self, order_id: str, allowed_from: set[OrderStatus], to: OrderStatus, next_due_at: datetime | None = None
    ) -> Order | None:
        def run() -> Order | None:
            with self._write() as s:
                row = self._locked_order(s, order_id)
                if row is None or row.status not in allowed_from:
                    return None
                row.status, row.updated_at = to, _now()
                if next_due_at is not None:
                    row.next_due_at = next_due_at
                self._request_sync(s, order_id, row.updated_at)
                s.flush()
                return _record(Order, row)

        return self._retrying(run)

    def cancel_order(self, order_id: str) -> tuple[Order, int] | None:
        def run() -> tuple[Order, int] | None:
            with self._write() as s:
                row = self._locked_order(s, order_id)
                if row is None or row.status not in (OrderStatus.active, OrderStatus.paused):
                    return None
                refund = (row.max_runs - row.runs_claimed) * row.price_per_run
                row.status, row.updated_at = OrderStatus.cancelled, _now()
                self._request_sync(s, order_id, row.updated_at)
                s.flush()
                if refund > 0:
                    self._transfer(s, ledger.cancel_refund_key(order_id), ledger.escrow_account(order_id),
                                   ledger.user_account(row.owner_id), refund, "refund", order_id)
                return _record(Order, row), refund

        return self._retrying(run)

    def set_deployment_id(self, order_id: str, deployment_id: str | None) -> None:
        with self._write() as s:
            s.exec(update(OrderRow).where(col(OrderRow.id) == order_id).values(deployment_id=deployment_id))  # type: ignore[call-overload]

    # --- repetitions -------------------------------------------------------------------

    def _repetitions(self, s: Session, order_id: str, ns: list[int]) -> list[RepetitionRow]:
        keys = [job_key(order_id, n) for n in ns]
        stmt = select(RepetitionRow).where(col(RepetitionRow.key).in_(keys)).order_by(col(RepetitionRow.n))
        return list(s.exec(stmt))

    def claim_repetitions(
        self, order_id: str, flow_run_id: str, horizon: datetime, now: datetime, catchup_seconds: int
    ) -> Claim:
        def run() -> Claim:
            with self._write() as s:
                row = self._locked_order(s, order_id)
                if row is None:
                    raise NotFound("order not found")
                prior = s.get(DispatchClaimRow, flow_run_id)
                if prior is not None:
                    reps = [_record(Repetition, r) for r in
                            self._repetitions(s, order_id, list(range(prior.first_n, prior.last_n + 1)))]
                    return Claim(order=_record(Order, row), replay=True,
                                 queued=[r for r in reps if r.state is RepetitionState.queued],
                                 refunded=[r for r in reps if r.state is RepetitionState.refunded])
                order = _record(Order, row)
                claim = Claim(order=order)
                first_n = row.runs_claimed + 1
                due = row.next_due_at
                missed_before = now - timedelta(seconds=catchup_seconds)
                while (row.status == OrderStatus.active and row.runs_claimed < row.max_runs and due is not None
                       and due < horizon):
                    n = row.runs_claimed + 1
                    rep = Repetition(key=job_key(order_id, n), order_id=order_id, n=n, due_at=due,
                                     flow_run_id=flow_run_id, created_at=now)
                    if due < missed_before:
                        rep.state = RepetitionState.refunded
                        self._transfer(s, ledger.refund_job_key(rep.key), ledger.escrow_account(order_id),
                                       ledger.user_account(row.owner_id), row.price_per_run, "refund", rep.key)
                        claim.refunded.append(rep)
                    else:
                        claim.queued.append(rep)
                    s.add(RepetitionRow.model_validate(rep.model_dump()))
                    row.runs_claimed = n
                    due = schedules.next_due(order, due)
                if row.runs_claimed > first_n - 1:
                    row.next_due_at = due if row.runs_claimed < row.max_runs else None
                    row.updated_at = now
                    if row.runs_claimed >= row.max_runs:
                        self._request_sync(s, order_id, now)  # nothing left to claim: drop the deployment
                s.add(DispatchClaimRow(flow_run_id=flow_run_id, order_id=order_id, first_n=first_n,
                                       last_n=row.runs_claimed, created_at=now))
                s.flush()
                claim.order = _record(Order, row)
                return claim

        try:
            return self._retrying(run)
        except IntegrityError:  # the same flow run claimed concurrently: replay its claim
            return self._retrying(run)

    def get_repetitions(self, order_id: str, ns: list[int]) -> list[Repetition]:
        with self._read() as s:
            return [_record(Repetition, r) for r in self._repetitions(s, order_id, ns)]

    def unclaim(self, order_id: str, ns: list[int]) -> int:
        if not ns:
            return 0
        with self._write() as s:
            row = self._locked_order(s, order_id)
            if row is None:
                raise NotFound("order not found")
            reps = [r for r in self._repetitions(s, order_id, ns) if r.state == RepetitionState.queued]
            suffix = list(range(min(ns), row.runs_claimed + 1))
            if row.status != OrderStatus.paused or sorted(r.n for r in reps) != suffix:
                self._refund_rows(s, row, reps)
                return 0
            for r in reps:
                s.delete(r)
            row.runs_claimed = min(ns) - 1
            row.next_due_at = None
            row.updated_at = _now()
            return len(reps)

    def _refund_rows(self, s: Session, order: OrderRow, reps: list[RepetitionRow]) -> int:
        refunded = 0
        for r in reps:
            if r.state != RepetitionState.queued:
                continue
            r.state = RepetitionState.refunded
            self._transfer(s, ledger.refund_job_key(r.key), ledger.escrow_account(order.id),
                           ledger.user_account(order.owner_id), order.price_per_run, "refund", r.key)
            refunded += order.price_per_run
        return refunded

    def refund_repetitions(self, order_id: str, ns: list[int]) -> int:
        if not ns:
            return 0
        with self._write() as s:
            row = self._locked_order(s, order_id)
            if row is None:
                raise NotFound("order not found")
            return self._refund_rows(s, row, self._repetitions(s, order_id, ns))

    # --- results -----------------------------------------------------------------------

    def _lock_accounts(self, s: Session, accounts: set[str]) -> None:
        """Row-lock every account a batch will touch, in one sorted order (creating missing ones).

        A batch moves coins between many accounts; taking all their locks up front, sorted,
        keeps two concurrent batches from locking the same pair in opposite orders.
        """
        if not accounts:
            return
        stmt = self._insert(AccountRow).values([{"account": a, "balance": 0} for a in sorted(accounts)])
        s.execute(stmt.on_conflict_do_update(index_elements=["account"], set_={"balance": AccountRow.balance}))

    def _settle(self, s: Session, rep: RepetitionRow, order: OrderRow, result: Result) -> ResultOutcome:
        s.add(ResultRow.model_validate(result.model_dump()))
        escrow = ledger.escrow_account(order.id)
        if result.error is None:
            rep.state = RepetitionState.done
            self._transfer(s, ledger.reward_key(rep.key), escrow, ledger.user_account(result.miner_id),
                           order.price_per_run, "reward", rep.key)
            return ResultOutcome.paid
        rep.state = RepetitionState.refunded
        self._transfer(s, ledger.refund_job_key(rep.key), escrow, ledger.user_account(order.owner_id),
                       order.price_per_run, "refund", rep.key)
        return ResultOutcome.refunded

    def record_results(self, results: list[Result]) -> list[ResultOutcome]:
        if not results:
            return []
        keys = sorted({r.job_key for r in results})

        def run() -> list[ResultOutcome]:
            with self._write() as s:
                stmt = (select(RepetitionRow).where(col(RepetitionRow.key).in_(keys))
                        .order_by(col(RepetitionRow.key)).with_for_update())
                reps = {r.key: r for r in s.exec(stmt)}
                stored = set(s.exec(select(ResultRow.job_key).where(col(ResultRow.job_key).in_(keys))))
                order_ids = sorted({r.order_id for r in reps.values()})
                orders = {o.id: o for o in s.exec(select(OrderRow).where(col(OrderRow.id).in_(order_ids)))}
                accounts: set[str] = set()
                for result in results:
                    rep = reps.get(result.job_key)
                    if rep is not None and rep.order_id in orders:
                        order = orders[rep.order_id]
                        payee = result.miner_id if result.error is None else order.owner_id
                        accounts |= {ledger.escrow_account(order.id), ledger.user_account(payee)}
                self._lock_accounts(s, accounts)
                outcomes: list[ResultOutcome] = []
                for result in results:
                    rep = reps.get(result.job_key)
                    if rep is None or rep.order_id not in orders or (rep.order_id, rep.n) != (result.order_id,
                                                                                             result.n):
                        outcomes.append(ResultOutcome.unknown)
                    elif rep.key in stored:
                        outcomes.append(ResultOutcome.duplicate)
                    elif rep.state not in _OPEN:
                        outcomes.append(ResultOutcome.closed)
                    else:
                        outcomes.append(self._settle(s, rep, orders[rep.order_id], result))
                        stored.add(rep.key)
                return outcomes

        try:
            return self._retrying(run)
        except IntegrityError:  # the same result was stored concurrently: now it is a duplicate
            return self._retrying(run)

    def record_result(self, result: Result) -> ResultOutcome:
        return self.record_results([result])[0]

    def fail_attempt(self, job_key: str, max_attempts: int, last: Result | None = None) -> Repetition | None:
        def run() -> Repetition | None:
            with self._write() as s:
                rep = s.exec(select(RepetitionRow).where(RepetitionRow.key == job_key).with_for_update()).first()
                if rep is None:
                    return None
                if rep.state in _OPEN:
                    rep.attempts += 1
                    if rep.attempts >= max_attempts:
                        order = s.get(OrderRow, rep.order_id)
                        if order is None:
                            raise NotFound("order not found")
                        if last is not None and s.get(ResultRow, job_key) is None:
                            s.add(ResultRow.model_validate(last.model_dump()))
                        rep.state = RepetitionState.failed
                        self._transfer(s, ledger.refund_job_key(rep.key), ledger.escrow_account(order.id),
                                       ledger.user_account(order.owner_id), order.price_per_run, "refund", rep.key)
                    s.flush()
                return _record(Repetition, rep)

        return self._retrying(run)

    def get_result(self, job_key: str) -> Result | None:
        with self._read() as s:
            row = s.get(ResultRow, job_key)
            return _record(Result, row) if row else None

    def list_results(self, order_id: str, after_n: int = 0, limit: int = 100) -> list[Result]:
        with self._read() as s:
            stmt = (select(ResultRow).where(ResultRow.order_id == order_id, col(ResultRow.n) > after_n)
                    .order_by(col(ResultRow.n)).limit(limit))
            return [_record(Result, r) for r in s.exec(stmt)]

    # --- Prefect sync queue ------------------------------------------------------------

    def _request_sync(self, s: Session, order_id: str, at: datetime) -> None:
        s.execute(
            self._insert(SyncRequestRow)
            .values(order_id=order_id, requested_at=at)
            .on_conflict_do_update(index_elements=["order_id"], set_={"requested_at": at})
        )

    def request_sync(self, order_id: str, at: datetime) -> None:
        with self._write() as s:
            self._request_sync(s, order_id, at)

    def pending_syncs(self, limit: int, now: datetime) -> list[tuple[str, datetime]]:
        with self._read() as s:
            stmt = (select(SyncRequestRow).where(col(SyncRequestRow.requested_at) <= now)
                    .order_by(col(SyncRequestRow.requested_at)).limit(limit))
            return [(r.order_id, r.requested_at) for r in s.exec(stmt)]

    def finish_sync(self, order_id: str, requested_at: datetime) -> None:
        with self._write() as s:
            row = s.get(SyncRequestRow, order_id)
            if row is not None and row.requested_at <= requested_at:
                s.delete(row)

    # --- delivery cursors --------------------------------------------------------------

    def get_delivery_cursor(self, token_id: str, order_id: str) -> int:
        with self._read() as s:
            row = s.get(DeliveryCursorRow, (token_id, order_id))
            return row.last_n if row else 0

    def advance_delivery_cursor(self, token_id: str, order_id: str, n: int) -> None:
        with self._write() as s:
            s.execute(
                self._insert(DeliveryCursorRow)
                .values(token_id=token_id, order_id=order_id, last_n=n)
                .on_conflict_do_update(
                    index_elements=["token_id", "order_id"],
                    set_={"last_n": case((DeliveryCursorRow.last_n < n, n), else_=DeliveryCursorRow.last_n)},
                )
            )
