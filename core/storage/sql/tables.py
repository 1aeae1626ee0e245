"""The SQL tables: one SQLModel table class per table, columns in their DDL order.

Each `*Row` mirrors a record of `core.storage.records` column for column (records are plain
pydantic models, so they carry no table metadata); backends copy records in and out with
`model_validate`. `tables()` is the metadata every table is registered on.
"""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, DateTime, Index, LargeBinary, String, Text, TypeDecorator
from sqlmodel import Field, SQLModel

from core import ledger
from core.schemas import OrderStatus, RepetitionState, Validation


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


class SchemaVersionRow(SQLModel, table=True):
    __tablename__ = "schema_version"
    id: int = Field(default=1, primary_key=True)
    version: int


# --- accounts -------------------------------------------------------------------------------


class UserRow(SQLModel, table=True):
    __tablename__ = "users"
    id: str = Field(primary_key=True, max_length=36)
    username: str = Field(unique=True, max_length=64)
    password_hash: str
    totp_secret: str | None = None
    totp_enabled: bool = False
    totp_last_step: int = 0
    created_at: datetime = Field(sa_type=UTCDateTime)


class SessionRow(SQLModel, table=True):
    __tablename__ = "login_sessions"
    id: str = Field(primary_key=True, max_length=36)
    user_id: str
    created_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ApiTokenRow(SQLModel, table=True):
    __tablename__ = "api_tokens"
    id: str = Field(primary_key=True, max_length=36)
    owner_id: str = Field(index=True, max_length=36)
    name: str
    secret_hash: str
    scopes: list[str] = Field(sa_type=JSON)
    order_id: str | None = None
    created_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


# --- ledger ---------------------------------------------------------------------------------


class AccountRow(SQLModel, table=True):
    __tablename__ = "accounts"
    __table_args__ = (CheckConstraint(f"balance >= 0 OR account = '{ledger.MINT}'", name="balance_not_negative"),)
    account: str = Field(primary_key=True, max_length=80)
    balance: int = 0


class TransferRow(SQLModel, table=True):
    __tablename__ = "transfers"
    key: str = Field(primary_key=True, max_length=200)
    from_account: str
    to_account: str
    amount: int
    kind: str
    reference: str | None = None
    created_at: datetime = Field(sa_type=UTCDateTime)


class LedgerEntryRow(SQLModel, table=True):
    __tablename__ = "ledger_entries"
    account: str = Field(primary_key=True, max_length=80)
    txn_key: str = Field(primary_key=True, max_length=200)
    delta: int
    balance_after: int
    kind: str
    reference: str | None = None
    created_at: datetime = Field(sa_type=UTCDateTime, index=True)


# --- orders and claims ----------------------------------------------------------------------


class OrderRow(SQLModel, table=True):
    __tablename__ = "orders"
    id: str = Field(primary_key=True, max_length=36)
    owner_id: str = Field(index=True, max_length=36)
    url: str
    method: str
    headers: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    body: str | None = None
    schedule_kind: str
    every_seconds: int | None = None
    cron: str | None = None
    timezone: str | None = None
    start_at: datetime = Field(sa_type=UTCDateTime)
    max_runs: int
    extraction: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    runs_claimed: int = 0
    next_due_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    status: OrderStatus = Field(default=OrderStatus.active, sa_type=String(16))
    price_per_run: int
    deployment_id: str | None = None
    request_hash: str
    created_at: datetime = Field(sa_type=UTCDateTime, index=True)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class RepetitionRow(SQLModel, table=True):
    __tablename__ = "repetitions"
    key: str = Field(primary_key=True, max_length=64)
    order_id: str = Field(index=True, max_length=36)
    n: int
    flow_run_id: str
    state: RepetitionState = Field(default=RepetitionState.queued, sa_type=String(16))
    attempts: int = 0
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


class OpenClaimRow(SQLModel, table=True):
    """A claim whose queued repetitions are not all settled: the requeue pass checks Valkey holds them."""

    __tablename__ = "open_claims"
    flow_run_id: str = Field(primary_key=True, max_length=64)
    order_id: str = Field(max_length=36)
    first_n: int
    last_n: int
    created_at: datetime = Field(sa_type=UTCDateTime, index=True)
    queued: bool = False


# --- results and cursors --------------------------------------------------------------------


class ResultRow(SQLModel, table=True):
    __tablename__ = "results"
    __table_args__ = (Index("ix_results_order_n", "order_id", "n", unique=True),)
    job_key: str = Field(primary_key=True, max_length=64)
    order_id: str = Field(max_length=36)
    n: int
    miner_id: str = Field(max_length=36)
    status: int | None = None
    final_url: str
    headers: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    body_zlib: bytes = Field(default=b"", sa_type=LargeBinary)
    body_size: int = 0
    truncated: bool = False
    sha256: str
    elapsed_ms: int = 0
    error: str | None = None
    error_text: str | None = None
    fetched_at: datetime = Field(sa_type=UTCDateTime)
    stored_at: datetime = Field(sa_type=UTCDateTime)
    body_pruned_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    validation: Validation = Field(default=Validation.unchecked, sa_type=String(16))
    checked_by: list[str] = Field(default_factory=list, sa_type=JSON)


class DeliveredRow(SQLModel, table=True):
    """A stretch of an order's results a result client acknowledged: their bodies go once its retention is over."""

    __tablename__ = "deliveries"
    id: int | None = Field(default=None, primary_key=True)
    order_id: str = Field(max_length=36)
    first_n: int
    last_n: int
    delivered_at: datetime = Field(sa_type=UTCDateTime, index=True)


class DeliveryCursorRow(SQLModel, table=True):
    __tablename__ = "delivery_cursors"
    token_id: str = Field(primary_key=True, max_length=36)
    order_id: str = Field(primary_key=True, max_length=36)
    last_n: int = 0


# --- observations (extracted values and changes) ---------------------------------------------


class ObservationRow(SQLModel, table=True):
    __tablename__ = "observations"
    order_id: str = Field(primary_key=True, max_length=36)
    n: int = Field(primary_key=True)
    fetched_at: datetime = Field(sa_type=UTCDateTime)
    valid: bool
    extraction: str | None = Field(default=None, sa_type=Text)
    value: str | None = Field(default=None, sa_type=Text)
    value_truncated: bool = False
    value_sha256: str | None = Field(default=None, max_length=64)
    changed: bool = False
    previous_n: int | None = None
    diff: str | None = Field(default=None, sa_type=Text)
    created_at: datetime = Field(sa_type=UTCDateTime)


class WatchCursorRow(SQLModel, table=True):
    __tablename__ = "watch_cursors"
    order_id: str = Field(primary_key=True, max_length=36)
    last_n: int = 0
    last_valid_n: int | None = None


# --- Prefect sync outbox --------------------------------------------------------------------


class SyncRequestRow(SQLModel, table=True):
    __tablename__ = "prefect_sync_requests"
    order_id: str = Field(primary_key=True, max_length=36)
    requested_at: datetime = Field(sa_type=UTCDateTime, index=True)


# --- webhooks and their delivery outbox -------------------------------------------------------


class WebhookRow(SQLModel, table=True):
    __tablename__ = "webhooks"
    id: str = Field(primary_key=True, max_length=36)
    owner_id: str = Field(max_length=36, index=True)
    order_id: str | None = Field(default=None, max_length=36)
    url: str = Field(sa_type=Text)
    secret: str = Field(max_length=128)
    event: str = Field(max_length=16)
    created_at: datetime = Field(sa_type=UTCDateTime)
    deleted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class WebhookDeliveryRow(SQLModel, table=True):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_webhook", "webhook_id", "created_at", "id"),)
    id: str = Field(primary_key=True, max_length=36)
    webhook_id: str = Field(max_length=36)
    order_id: str = Field(max_length=36)
    n: int
    event: str = Field(max_length=16)
    payload: str = Field(sa_type=Text)
    created_at: datetime = Field(sa_type=UTCDateTime)
    state: str = Field(max_length=16)
    attempts: int = 0
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    last_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_status: int | None = None
    last_error: str | None = Field(default=None, sa_type=Text)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
