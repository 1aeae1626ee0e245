"""The storage interface every backend (SQLite, PostgreSQL, Cassandra) implements.

Every query is by key: a record's id, or the partition it is listed under (an owner's orders,
tokens, an account's ledger entries). No joins, no scans of whole tables. Operations that
must be atomic — a transfer, creating an order together with its escrow hold, cancelling an
order together with its refund, accepting a TOTP step once — are single methods, so each
backend can make them atomic in its own way (a transaction in SQL, lightweight transactions
and a pending-transfer record in Cassandra).

Records are plain (non-table) SQLModel models; backends copy them in and out. Datetimes are timezone-aware UTC.
"""

import hashlib
import zlib
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from sqlmodel import Field, SQLModel

from core.schemas import OrderStatus, RepetitionState

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
    next_due_at: datetime | None = Field(default=None, description="Due time of repetition runs_claimed + 1.")
    status: OrderStatus = OrderStatus.active
    price_per_run: int
    deployment_id: str | None = None
    request_hash: str = Field(description="Fingerprint of the create request, to recognise an idempotent retry.")
    created_at: datetime
    updated_at: datetime

    @property
    def cost(self) -> int:
        return self.max_runs * self.price_per_run


class Repetition(SQLModel):
    key: str = Field(description='"{order_id}:{n}", the idempotency key of everything downstream.')
    order_id: str
    n: int
    due_at: datetime
    flow_run_id: str
    state: RepetitionState = RepetitionState.queued
    attempts: int = 0
    created_at: datetime


class Claim(SQLModel):
    """What one dispatch run claimed of an order."""

    order: Order
    queued: list[Repetition] = Field(default_factory=list, description="To enqueue, in due order.")
    refunded: list[Repetition] = Field(default_factory=list, description="Missed by more than the catch-up limit.")
    replay: bool = Field(default=False, description="This flow run had claimed before; same repetitions again.")


def job_key(order_id: str, n: int) -> str:
    return f"{order_id}:{n}"


class Result(SQLModel):
    """What a miner delivered for one repetition. One per job key, written once."""

    job_key: str
    order_id: str
    n: int
    miner_id: str = Field(description="The user id of the volunteer who fetched it.")
    fetched_at: datetime
    status: int | None = Field(default=None, description="HTTP status; None when the fetch failed.")
    final_url: str
    headers: dict[str, str] = Field(default_factory=dict, description="Selected response headers.")
    body_zlib: bytes = Field(default=b"", description="The body, zlib-compressed.")
    body_size: int = Field(default=0, description="Length of the body before compression.")
    truncated: bool = Field(default=False, description="The page was longer than the body cap.")
    sha256: str = Field(description="Hex digest of the (uncompressed, capped) body.")
    elapsed_ms: int = 0
    error: str | None = Field(default=None, description="Why there is no page (core.schemas.FetchError).")
    error_text: str | None = None
    stored_at: datetime

    @property
    def body(self) -> bytes:
        return zlib.decompress(self.body_zlib) if self.body_zlib else b""

    @classmethod
    def with_body(cls, body: bytes, cap: int, **fields: object) -> "Result":
        """A result holding at most `cap` bytes of `body`, compressed; cutting marks it truncated."""
        if len(body) > cap:
            body, fields["truncated"] = body[:cap], True
        return cls(body_zlib=zlib.compress(body, 6) if body else b"", body_size=len(body),
                   sha256=hashlib.sha256(body).hexdigest(), **fields)  # type: ignore[arg-type]


class ResultOutcome(StrEnum):
    """What recording a delivered result did."""

    paid = "paid"  # stored, repetition done, miner paid from the escrow
    refunded = "refunded"  # stored (an error no miner can fix), repetition refunded to the customer
    duplicate = "duplicate"  # a result for this job was stored before: nothing changed
    closed = "closed"  # the repetition was refunded or failed already: nothing stored
    unknown = "unknown"  # no such repetition: nothing stored


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

    def recover_pending(self) -> int:
        """Finish the multi-step operations a crashed process left half done; returns how many it found.

        A backend whose operations are single transactions has none (SQL returns 0). Cassandra
        completes pending transfers, order creations, claims, settlements and cancellations:
        each one is completed or, if it never took effect, removed. Safe to run at any time.
        """

    # orders ------------------------------------------------------------------------------
    def create_order(self, order: Order) -> tuple[Order, bool]:
        """Store the order and hold its cost in escrow, atomically.

        Returns (order, True) when created, with a Prefect sync requested. If an order with the same id exists (an
        idempotent retry) returns (existing, False) when its request_hash matches and
        raises IdempotencyConflict otherwise. Raises InsufficientFunds — and stores
        nothing — when the owner cannot pay the cost.
        """

    def get_order(self, order_id: str) -> Order | None: ...

    def list_orders(self, owner_id: str, limit: int, before: Cursor | None = None) -> list[Order]:
        """The owner's orders, newest first, strictly older than `before`."""

    def set_order_status(
        self, order_id: str, allowed_from: set[OrderStatus], to: OrderStatus, next_due_at: datetime | None = None
    ) -> Order | None:
        """Change the status (and next due time, if given) if it is one of `allowed_from`; else None.

        Also requests a Prefect sync of the order, in the same atomic step.
        """

    def cancel_order(self, order_id: str) -> tuple[Order, int] | None:
        """Cancel an active or paused order and refund its unclaimed repetitions, atomically.

        Returns (order, refunded coins), or None if the order is not active or paused.
        """

    def set_deployment_id(self, order_id: str, deployment_id: str | None) -> None: ...

    # repetitions ---------------------------------------------------------------------------
    def claim_repetitions(
        self, order_id: str, flow_run_id: str, horizon: datetime, now: datetime, catchup_seconds: int
    ) -> Claim:
        """Claim, atomically, every unclaimed repetition of an active order due before `horizon`.

        Idempotent per flow run: a second call with the same `flow_run_id` claims nothing new
        and returns the repetitions that run claimed (replay=True). Repetitions due more than
        `catchup_seconds` before `now` are refunded to the customer instead of queued. Claiming
        the last repetition leaves next_due_at None and requests a sync (the order completes once
        its last job has left the queue). Raises NotFound for an unknown order.
        """

    def get_repetitions(self, order_id: str, ns: list[int]) -> list[Repetition]: ...

    def unclaim(self, order_id: str, ns: list[int]) -> int:
        """Return withdrawn, never-released repetitions of a paused order to its counter.

        They must be the newest claimed ones (`ns` = k+1..runs_claimed); otherwise they are
        refunded instead. Returns how many went back.
        """

    def refund_repetitions(self, order_id: str, ns: list[int]) -> int:
        """Refund queued repetitions that will never run (idempotent); returns coins refunded."""

    # results ---------------------------------------------------------------------------------
    def record_results(self, results: list[Result]) -> list[ResultOutcome]:
        """Record results delivered by miners, all in one atomic step (a batch is one round trip).

        For each result, once per job key: store it and settle its repetition. A result
        without an error marks the repetition done and pays the miner the order's price per
        run from the escrow (ledger key `reward:{job}`); a result with an error (target
        refused, robots.txt disallows it, attempts exhausted) marks it refunded and returns
        the price to the customer (`refund:{job}`). A second delivery of the same job, or one
        for a repetition already refunded or failed, changes nothing. Returns one outcome per
        result, in order.
        """

    def record_result(self, result: Result) -> ResultOutcome:
        """`record_results` for one result."""

    def fail_attempt(self, job_key: str, max_attempts: int, last: Result | None = None) -> Repetition | None:
        """Count one attempt at a job that ended without a result (miner gone, lease expired).

        When the repetition reaches `max_attempts` it is marked failed and its price refunded
        to the customer, storing `last` (the final error, if any) as its result — atomically.
        A repetition that is no longer queued or leased is returned unchanged. None if unknown.
        """

    def get_result(self, job_key: str) -> Result | None: ...

    def list_results(self, order_id: str, after_n: int = 0, limit: int = 100) -> list[Result]:
        """The order's results with n > `after_n`, by n ascending (a result client's resume point)."""

    # delivery cursors ----------------------------------------------------------------------
    def get_delivery_cursor(self, token_id: str, order_id: str) -> int:
        """The highest repetition n the result client of `token_id` acknowledged for the order; 0 if none."""

    def advance_delivery_cursor(self, token_id: str, order_id: str, n: int) -> None:
        """Move the cursor forward to `n`; never backwards."""

    # Prefect sync queue --------------------------------------------------------------------
    def request_sync(self, order_id: str, at: datetime) -> None:
        """Note that the order's Prefect deployment must be brought in line with the order.

        A request for a future `at` is a timer: it becomes pending at that time.
        """

    def pending_syncs(self, limit: int, now: datetime) -> list[tuple[str, datetime]]:
        """Orders whose sync request is due by `now`, oldest first: (order id, requested at)."""

    def finish_sync(self, order_id: str, requested_at: datetime) -> None:
        """Drop the request unless a newer one came in after `requested_at`."""
