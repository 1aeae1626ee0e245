"""Wire contracts shared by the API, the dashboard and the CLIs.

Request bodies are strict: unknown fields and wrong JSON types are refused, not coerced.
"""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict

Username = Annotated[str, Field(min_length=3, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
Password = Annotated[str, Field(min_length=1, max_length=256)]
TotpCode = Annotated[str, Field(pattern=r"^\d{6}$", description="The 6-digit code from the authenticator app.")]


def _iso_datetime(value: object) -> object:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("expected an ISO 8601 date-time such as 2030-01-01T09:00:00Z") from None
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_datetime)]
"""Strict models take date-times as ISO 8601 strings only (a bare number is refused)."""


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Scope(StrEnum):
    mine = "mine"
    results = "results"


class RepetitionState(StrEnum):
    queued = "queued"
    leased = "leased"
    done = "done"
    failed = "failed"
    refunded = "refunded"


class OrderStatus(StrEnum):
    active = "active"
    paused = "paused"
    completed = "completed"
    cancelled = "cancelled"


# --- accounts -------------------------------------------------------------------------------


class RegisterRequest(Request):
    username: Username
    password: Password


class CredentialsRequest(Request):
    username: Annotated[str, Field(min_length=1, max_length=64)]
    password: Password


class TotpConfirmRequest(CredentialsRequest):
    code: TotpCode


class LoginRequest(CredentialsRequest):
    code: TotpCode


class TotpEnrolment(BaseModel):
    secret: str = Field(description="Base32 secret, for manual entry in an authenticator app.")
    otpauth_uri: str
    qr_png: str = Field(description="The otpauth URI as a QR code, a data:image/png;base64 URI.")


class UserOut(BaseModel):
    id: str
    username: str
    totp_enabled: bool
    created_at: datetime


class Registered(BaseModel):
    user: UserOut
    totp: TotpEnrolment


class SessionOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: datetime


class MeOut(UserOut):
    balance: int


# --- API tokens -----------------------------------------------------------------------------


class TokenCreate(Request):
    name: Annotated[str, Field(min_length=1, max_length=64)] = "token"
    scopes: Annotated[list[Annotated[Scope, Strict(False)]], Field(min_length=1, max_length=2)]
    order_id: str | None = Field(default=None, description="Limit the token to this one order.")


class TokenOut(BaseModel):
    id: str
    name: str
    scopes: list[Scope]
    order_id: str | None
    created_at: datetime
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="The secret token. It is shown only this once.")


# --- coins ----------------------------------------------------------------------------------


class FaucetRequest(Request):
    amount: Annotated[int, Field(ge=1)] = 100


class WalletOut(BaseModel):
    account: str
    balance: int


class LedgerEntryOut(BaseModel):
    txn_key: str
    delta: int
    balance_after: int
    kind: str
    reference: str | None
    created_at: datetime


class LedgerPage(BaseModel):
    items: list[LedgerEntryOut]
    next_cursor: str | None


# --- orders ---------------------------------------------------------------------------------


class IntervalSchedule(Request):
    kind: Literal["interval"]
    every_seconds: Annotated[int, Field(ge=1)]


class CronSchedule(Request):
    kind: Literal["cron"]
    cron: Annotated[str, Field(min_length=9, max_length=120, description="Five-field cron expression.")]
    timezone: Annotated[str, Field(min_length=1, max_length=64)] = "UTC"


Schedule = Annotated[IntervalSchedule | CronSchedule, Field(discriminator="kind")]


class OrderCreate(Request):
    url: Annotated[str, Field(min_length=1, max_length=8192)]
    method: Literal["GET", "HEAD", "POST"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = Field(default=None, description="Request body; only with method POST.")
    schedule: Schedule
    start_at: IsoDateTime | None = Field(default=None, description="First run, with a timezone; default: now.")
    max_runs: Annotated[int, Field(ge=1)]


class OrderOut(BaseModel):
    id: str
    url: str
    method: str
    headers: dict[str, str]
    body: str | None
    schedule: IntervalSchedule | CronSchedule
    start_at: datetime
    max_runs: int
    runs_claimed: int
    runs_left: int
    status: OrderStatus
    price_per_run: int
    cost: int
    escrow_balance: int
    next_due_at: datetime | None
    deployment_id: str | None
    created_at: datetime


class OrderPage(BaseModel):
    items: list[OrderOut]
    next_cursor: str | None


class CancelOut(BaseModel):
    order: OrderOut
    refunded: int


# --- jobs (queue → mining server → miner) ------------------------------------------------


class Job(BaseModel):
    """One repetition to fetch, as it travels through the queue."""

    key: str = Field(description='"{order_id}:{n}"')
    order_id: str
    n: int
    url: str
    method: str
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    due_at: datetime


class FetchError(StrEnum):
    """Why a fetch produced no page. An HTTP 4xx/5xx answer is a page, not an error."""

    invalid_url = "invalid_url"  # the URL (or a redirect's Location) does not parse
    invalid_request = "invalid_request"  # method or headers the fetcher will not send
    refused_target = "refused_target"  # URL policy, block-list or a forbidden resolved address
    robots_disallowed = "robots_disallowed"
    dns_error = "dns_error"
    connection_error = "connection_error"
    tls_error = "tls_error"
    timeout = "timeout"
    too_many_redirects = "too_many_redirects"
    http_error = "http_error"  # malformed response: oversized headers, bad encoding, cut-off body


HttpMethod = Literal["GET", "HEAD", "POST"]


class MinerPolicy(Request):
    """What a miner announces after connecting (`hello`): how many jobs at once, which ones."""

    capacity: Annotated[int, Field(ge=1, le=1024, description="Jobs the miner runs at the same time.")] = 4
    methods: Annotated[list[HttpMethod], Field(min_length=1, max_length=3)] = Field(
        default_factory=lambda: ["GET", "HEAD"])
    blocked_domains: Annotated[list[Annotated[str, Field(min_length=1, max_length=253)]], Field(max_length=1000)] = (
        Field(default_factory=list, description="Domains (and their subdomains) the miner never fetches."))
    max_body_bytes: Annotated[int, Field(ge=1024, description="The miner keeps at most this much of a page.")] = (
        2 * 1024 * 1024)
    client: Annotated[str, Field(max_length=100)] = ""


class Welcome(BaseModel):
    """The server's answer to `hello`: the terms this connection mines under."""

    server_id: str
    miner: str = Field(description="The volunteer's username.")
    capacity: int
    max_body_bytes: int
    lease_seconds: float


class JobOffer(BaseModel):
    """A job leased to one miner (server → miner, event `job`)."""

    key: str
    url: str
    method: HttpMethod
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    lease_seconds: float


class MinedResult(Request):
    """What a miner sends back for a job it holds (miner → server, event `result`)."""

    key: Annotated[str, Field(min_length=3, max_length=100)]
    status: Annotated[int, Field(ge=100, le=599)] | None = None
    final_url: Annotated[str, Field(max_length=8192)]
    headers: Annotated[dict[Annotated[str, Field(max_length=100)], Annotated[str, Field(max_length=1024)]],
                       Field(max_length=50)] = Field(default_factory=dict)
    body: bytes = b""
    truncated: bool = False
    elapsed_ms: Annotated[int, Field(ge=0, le=24 * 3600 * 1000)] = 0
    error: Annotated[FetchError, Strict(False)] | None = None
    error_text: Annotated[str, Field(max_length=1000)] | None = None


class ResultAck(BaseModel):
    """The server's answer to `result`: what became of it, or why it was refused."""

    ok: bool
    outcome: str | None = Field(default=None, description="paid, refunded, retry, failed, duplicate, closed")
    coins: int = 0
    error: str | None = None


# --- results (result server → result client) ---------------------------------------------


class ResultMessage(BaseModel):
    """One result as the result server sends it; the body travels beside it as bytes."""

    key: str
    order_id: str
    n: int
    miner_id: str
    fetched_at: datetime
    status: int | None
    final_url: str
    headers: dict[str, str]
    body_size: int
    truncated: bool
    sha256: str
    elapsed_ms: int
    error: str | None
    error_text: str | None


class Subscribe(BaseModel):
    """A result client's subscription: order id → last repetition n it has (None: ask the server)."""

    model_config = ConfigDict(extra="forbid")
    orders: Annotated[dict[str, Annotated[int, Field(ge=0)] | None], Field(min_length=1, max_length=100)]


class ResultOut(BaseModel):
    """A result as the API lists it (the body is downloaded separately)."""

    n: int
    key: str
    status: int | None
    final_url: str
    headers: dict[str, str]
    body_size: int
    truncated: bool
    sha256: str
    due_at: datetime | None = Field(description="When the repetition was scheduled; stored_at - due_at is its delivery latency.")
    fetched_at: datetime
    stored_at: datetime
    elapsed_ms: int
    error: str | None
    error_text: str | None


class ResultPage(BaseModel):
    items: list[ResultOut]
    next_cursor: str | None = Field(description="Pass as `before` to get the next (older) page.")


# --- service --------------------------------------------------------------------------------


class MetaOut(BaseModel):
    mode: str
    faucet_enabled: bool
    faucet_max_amount: int
    price_per_run: int
    max_runs_cap: int
    min_interval_seconds: int


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    store: str
    valkey: str
