"""The storage interface every backend (SQLite, PostgreSQL, Cassandra) implements.

Every query is by key: a record's id, or the partition it is listed under (an owner's orders,
tokens, an account's ledger entries). No joins, no scans of whole tables. Operations that
must be atomic — a transfer, creating an order together with its escrow hold, cancelling an
order together with its refund, accepting a TOTP step once — are single methods, so each
backend can make them atomic in its own way (a transaction in SQL, lightweight transactions
and a pending-transfer record in Cassandra).

Records are plain (non-table) SQLModel models; backends copy them in and out. Datetimes are timezone-aware UTC.
"""

from datetime import datetime
from typing import Protocol

from sqlmodel import Field, SQLModel

from core.schemas import OrderStatus

Cursor = tuple[datetime, str]
"""Position in a newest-first listing: (created_at, id) of the last item already seen."""


class User(SQLModel):
    id: str
    username: str
    password_hash: str
    totp_secret: str | None = None
    totp_enabled: bool = False
    totp_last_step: int = 0
    created_at: datetime


class LoginSession(SQLModel):
    id: str
    user_id: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None


class ApiToken(SQLModel):
    id: str
    owner_id: str
    name: str
    secret_hash: str
    scopes: list[str]
    order_id: str | None = None
    created_at: datetime
    revoked_at: datetime | None = None


class Order(SQLModel):
    id: str
    owner_id: str
    url: str
    method: str
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    schedule_kind: str
    every_seconds: int | None = None
    cron: str | None = None
    timezone: str | None = None
    start_at: datetime
    max_runs: int
    runs_claimed: int = 0
    status: OrderStatus = OrderStatus.active
    price_per_run: int
    deployment_id: str | None = None
    request_hash: str = Field(description="Fingerprint of the create request, to recognise an idempotent retry.")
    created_at: datetime
    updated_at: datetime

    @property
    def cost(self) -> int:
        return self.max_runs * self.price_per_run


class Transfer(SQLModel):
    key: str
    from_account: str
    to_account: str
    amount: int
    kind: str
    reference: str | None = None
    created_at: datetime


class LedgerEntry(SQLModel):
    account: str
    txn_key: str
    delta: int
    balance_after: int
    kind: str
    reference: str | None = None
    created_at: datetime


class Store(Protocol):
    """Durable state of crawlcoin. Implementations must be safe to share between threads."""

    def close(self) -> None: ...

    def ping(self) -> None:
        """Raise if the backend cannot be reached."""

    # users -------------------------------------------------------------------------------
    def create_user(self, user: User) -> None:
        """Store a new user; raise Conflict if the (lower-cased) username is taken."""

    def get_user(self, user_id: str) -> User | None: ...

    def get_user_by_username(self, username: str) -> User | None: ...

    def set_totp_secret(self, user_id: str, secret: str) -> bool:
        """Replace the pending TOTP secret; False if two-factor is already enabled."""

    def enable_totp(self, user_id: str) -> None: ...

    def use_totp_step(self, user_id: str, step: int) -> bool:
        """Record that the TOTP code of time step `step` was used.

        True only if `step` is newer than every step used before, atomically: of two
        concurrent logins with the same code exactly one gets True.
        """

    # sessions ----------------------------------------------------------------------------
    def create_session(self, session: LoginSession) -> None: ...

    def get_session(self, session_id: str) -> LoginSession | None: ...

    def revoke_session(self, session_id: str, at: datetime) -> None: ...

    # API tokens --------------------------------------------------------------------------
    def create_api_token(self, token: ApiToken) -> None: ...

    def get_api_token(self, token_id: str) -> ApiToken | None: ...

    def list_api_tokens(self, owner_id: str) -> list[ApiToken]:
        """The owner's tokens, newest first."""

    def revoke_api_token(self, owner_id: str, token_id: str, at: datetime) -> bool:
        """Revoke the owner's token; False if the owner has no such token."""

    # ledger ------------------------------------------------------------------------------
    def transfer(
        self, key: str, from_account: str, to_account: str, amount: int, kind: str, reference: str | None = None
    ) -> Transfer:
        """Move `amount` coins, once per `key`.

        Returns the stored transfer; a second call with the same key and the same accounts
        and amount returns the first transfer and moves nothing. Raises IdempotencyConflict
        if the key was used for a different movement and InsufficientFunds if the source
        (any account but the mint) would go below zero — under any concurrency.
        """

    def get_transfer(self, key: str) -> Transfer | None: ...

    def get_balance(self, account: str) -> int:
        """Current balance; 0 for an account that never moved coins."""

    def list_entries(self, account: str, limit: int, before: Cursor | None = None) -> list[LedgerEntry]:
        """The account's ledger entries, newest first, strictly older than `before`."""

    # orders ------------------------------------------------------------------------------
    def create_order(self, order: Order) -> tuple[Order, bool]:
        """Store the order and hold its cost in escrow, atomically.

        Returns (order, True) when created. If an order with the same id exists (an
        idempotent retry) returns (existing, False) when its request_hash matches and
        raises IdempotencyConflict otherwise. Raises InsufficientFunds — and stores
        nothing — when the owner cannot pay the cost.
        """

    def get_order(self, order_id: str) -> Order | None: ...

    def list_orders(self, owner_id: str, limit: int, before: Cursor | None = None) -> list[Order]:
        """The owner's orders, newest first, strictly older than `before`."""

    def set_order_status(self, order_id: str, allowed_from: set[OrderStatus], to: OrderStatus) -> Order | None:
        """Change the status if it is currently one of `allowed_from`; None otherwise."""

    def cancel_order(self, order_id: str) -> tuple[Order, int] | None:
        """Cancel an active or paused order and refund its unclaimed repetitions, atomically.

        Returns (order, refunded coins), or None if the order is not active or paused.
        """
