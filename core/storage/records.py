"""The records the store keeps and returns: plain pydantic models that every backend copies in and out.

Datetimes are timezone-aware UTC; coin amounts are integers.
"""

import hashlib
import uuid
import zlib
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from core.schemas import Extraction, OrderStatus, RepetitionState, Validation

Cursor = tuple[datetime, str]
"""Position in a newest-first listing: (created_at, id) of the last item already seen."""

BODY_ZLIB_LEVEL = 1
"""How hard a mining server compresses each page it stores (once, in its event loop). Measured on the e2e bench's
20 KB text page: level 6 took 552 µs and made 3,562 bytes, level 1 104 µs and 4,355 bytes. At 1,000 pages a second
that is half a core against a tenth, for bodies a fifth smaller, which retention deletes after a week."""


class User(BaseModel):
    id: str
    username: str
    password_hash: str
    totp_secret: str | None = None
    totp_enabled: bool = False
    totp_last_step: int = 0
    created_at: datetime


class LoginSession(BaseModel):
    id: str
    user_id: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None


class ApiToken(BaseModel):
    id: str
    owner_id: str
    name: str
    secret_hash: str
    scopes: list[str]
    order_id: str | None = None
    created_at: datetime
    revoked_at: datetime | None = None


class Order(BaseModel):
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
    extraction: Extraction | None = Field(default=None, description="What of each page to keep and watch.")
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


class OrderEdit(BaseModel):
    """What a customer may change of a live order, as it is to be; it applies from the next unclaimed repetition."""

    url: str
    schedule_kind: str
    every_seconds: int | None = None
    cron: str | None = None
    timezone: str | None = None
    extraction: Extraction | None = None
    max_runs: int


class Repetition(BaseModel):
    key: str = Field(description='"{order_id}:{n}", the idempotency key of everything downstream.')
    order_id: str
    n: int
    due_at: datetime
    flow_run_id: str
    state: RepetitionState = RepetitionState.queued
    attempts: int = 0
    created_at: datetime


class Claim(BaseModel):
    """What one dispatch run claimed of an order."""

    order: Order
    queued: list[Repetition] = Field(default_factory=list, description="To enqueue, in due order.")
    refunded: list[Repetition] = Field(default_factory=list, description="Missed by more than the catch-up limit.")
    replay: bool = Field(default=False, description="This flow run had claimed before; same repetitions again.")


class OpenClaim(BaseModel):
    """A dispatch run's claim with queued repetitions that are not all settled yet.

    The store keeps it from the claim until every repetition it took is final, so the requeue pass
    can find repetitions the store claimed but Valkey does not hold, whatever the order does next.
    """

    flow_run_id: str
    order_id: str
    first_n: int
    last_n: int
    created_at: datetime
    queued: bool = Field(default=False, description="Its jobs were confirmed in the Valkey queue once.")


def job_key(order_id: str, n: int) -> str:
    return f"{order_id}:{n}"


class Result(BaseModel):
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
    body_pruned_at: datetime | None = Field(
        default=None, description="When the body was deleted, its retention after delivery over; the rest stays.")
    validation: Validation = Field(default=Validation.unchecked,
                                   description="Whether other miners' fetches checked it.")
    checked_by: list[str] = Field(
        default_factory=list, description="The miners whose fetches of the same repetition checked this one; each is "
                                          "paid a validation fee when the result is recorded.")

    @property
    def body(self) -> bytes:
        return zlib.decompress(self.body_zlib) if self.body_zlib else b""

    @classmethod
    def with_body(cls, body: bytes, cap: int, **fields: object) -> "Result":
        """A result holding at most `cap` bytes of `body`, compressed; cutting marks it truncated."""
        if len(body) > cap:
            body, fields["truncated"] = body[:cap], True
        return cls(body_zlib=zlib.compress(body, BODY_ZLIB_LEVEL) if body else b"", body_size=len(body),
                   sha256=hashlib.sha256(body).hexdigest(), **fields)


class Observation(BaseModel):
    """What the watcher made of one repetition's result: the value it compared and whether that changed.

    Written once per (order, n), in n order: repetition n is observed only when every one before it
    is settled, so `previous_n` is the latest valid result before it.
    """

    order_id: str
    n: int
    fetched_at: datetime
    valid: bool = Field(description="A page to compare: fetched without an error, with a 2xx status.")
    extraction: str | None = Field(default=None, description="The order's extraction applied (its JSON); None: the "
                                                             "whole page was compared.")
    value: str | None = Field(default=None, description="The extracted value; None without an extraction.")
    value_truncated: bool = False
    value_sha256: str | None = Field(default=None, description="Digest of what was compared (the value or the page).")
    changed: bool = Field(default=False, description="It differs from the valid result `previous_n`.")
    previous_n: int | None = None
    diff: str | None = Field(default=None, description="Unified diff from `previous_n` to `n` (capped); None when "
                                                       "unchanged, or when a page is binary.")
    created_at: datetime


class WatchCursor(BaseModel):
    """How far the watcher got with an order: every repetition up to `last_n` is observed."""

    order_id: str
    last_n: int = 0
    last_valid_n: int | None = Field(default=None, description="The newest valid result observed so far.")


class ResultOutcome(StrEnum):
    """What recording a delivered result did."""

    paid = "paid"  # stored, repetition done, miner paid from the escrow
    refunded = "refunded"  # stored (an error no miner can fix), repetition refunded to the customer
    duplicate = "duplicate"  # a result for this job was stored before: nothing changed
    closed = "closed"  # the repetition was refunded or failed already: nothing stored
    unknown = "unknown"  # no such repetition: nothing stored


class Recorded(BaseModel):
    """What recording one delivered result did, and what it paid the miner."""

    outcome: ResultOutcome
    coins: int = Field(default=0, description="Coins paid to the miner from the escrow; 0 unless the outcome is paid.")


class Acknowledged(BaseModel):
    """A result client acknowledged an order's results after_n < n ≤ last_n at `at` (`record_deliveries`)."""

    model_config = ConfigDict(frozen=True)

    token_id: str
    order_id: str
    after_n: int
    last_n: int
    at: datetime


class Pruned(BaseModel):
    """What one pass of `prune_result_bodies` did."""

    deliveries: int = Field(description="Delivered stretches of results handled; fewer than the limit: none is left.")
    bodies: int = Field(description="Bodies deleted.")


class Transfer(BaseModel):
    key: str
    from_account: str
    to_account: str
    amount: int
    kind: str
    reference: str | None = None
    created_at: datetime


class LedgerEntry(BaseModel):
    account: str
    txn_key: str
    delta: int
    balance_after: int
    kind: str
    reference: str | None = None
    created_at: datetime


class WebhookEvent(StrEnum):
    """What a webhook is told about: every observed result of its orders, or only the ones that changed."""

    change = "change"
    result = "result"


class Webhook(BaseModel):
    """An endpoint a customer wants told about results of one order, or of all their orders."""

    id: str
    owner_id: str
    order_id: str | None = Field(default=None, description="None: every order of the owner.")
    url: str
    secret: str = Field(description="Signs every delivery (HMAC-SHA256); the customer got it once, on creation.")
    event: WebhookEvent = WebhookEvent.change
    created_at: datetime
    deleted_at: datetime | None = None


class DeliveryState(StrEnum):
    pending = "pending"  # to be sent (again) at next_attempt_at
    delivered = "delivered"  # the endpoint answered 2xx
    failed = "failed"  # every attempt failed, or the webhook was deleted


class WebhookDelivery(BaseModel):
    """One notification to one webhook, stored before it is sent (the outbox), retried until answered 2xx.

    `id` is deterministic (`delivery_id`): the same observation to the same webhook is one delivery
    however often it is fanned out, and the receiver gets it as the idempotency id of every attempt.
    """

    id: str
    webhook_id: str
    order_id: str
    n: int
    event: WebhookEvent
    payload: str = Field(description="The JSON body sent, the same on every attempt.")
    created_at: datetime
    state: DeliveryState = DeliveryState.pending
    attempts: int = 0
    next_attempt_at: datetime | None = Field(default=None, description="When it is due (pending only).")
    last_attempt_at: datetime | None = None
    last_status: int | None = Field(default=None, description="HTTP status of the last attempt; None: no answer.")
    last_error: str | None = None
    delivered_at: datetime | None = None


_DELIVERY_NAMESPACE = uuid.UUID("5b0e2c1e-9f43-4d0e-8d55-2f6f1f4f6a10")


def delivery_id(webhook_id: str, order_id: str, n: int) -> str:
    """The idempotency id of repetition n of an order told to a webhook."""
    return str(uuid.uuid5(_DELIVERY_NAMESPACE, f"{webhook_id}:{order_id}:{n}"))


class WebhookAttempt(BaseModel):
    """One attempt at a claimed delivery, to be logged (`finish_webhook_attempts`)."""

    model_config = ConfigDict(frozen=True)

    delivery_id: str
    attempts_before: int = Field(description="The delivery's attempts when it was claimed.")
    leased_until: datetime = Field(description="Its `next_attempt_at` as claimed: the lease this attempt ran under.")
    at: datetime
    status: int | None = None
    error: str | None = None
    delivered: bool
    retry_at: datetime | None = Field(default=None, description="When to try again; None: give up (if not delivered).")

    @classmethod
    def of(cls, delivery: "WebhookDelivery", at: datetime, status: int | None, error: str | None, delivered: bool,
           retry_at: datetime | None) -> "WebhookAttempt":
        assert delivery.next_attempt_at is not None, "an attempt at a delivery as claimed"
        return cls(delivery_id=delivery.id, attempts_before=delivery.attempts, leased_until=delivery.next_attempt_at,
                   at=at, status=status, error=error, delivered=delivered, retry_at=retry_at)

    @property
    def state(self) -> DeliveryState:
        return DeliveryState.delivered if self.delivered else DeliveryState.pending if self.retry_at else \
            DeliveryState.failed
