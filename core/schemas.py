"""Wire contracts shared by the API, the dashboard and the CLIs (the protocols between the servers
and their clients are in `core.protocol`).

Request bodies are strict: unknown fields and wrong JSON types are refused, not coerced.
"""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict, model_validator
from pydantic_core import PydanticCustomError


def _surrogate_at(value: object, path: str) -> str | None:
    """Where in a JSON value a string holds a lone surrogate, e.g. "headers.X-Key"; None if nowhere."""
    if isinstance(value, str):
        if value.isascii():  # known without reading it: most text is
            return None
        try:
            value.encode()  # UTF-8 has no form for a surrogate code point, and only for those
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            where = _surrogate_at(k, f"a name in {path or 'the request'}")
            if where or (where := _surrogate_at(v, f"{path}.{k}".lstrip("."))):
                return where
    if isinstance(value, list):
        for i, v in enumerate(value):
            if where := _surrogate_at(v, f"{path}.{i}"):
                return where
    return None


def _one_line(value: str) -> str:
    """Names and other one-line text: no control characters (NUL, line breaks, tabs, escapes)."""
    if any(c < " " or "\x7f" <= c <= "\x9f" for c in value):
        raise PydanticCustomError("control_characters", "must not contain control characters (such as NUL, tab or "
                                                        "a line break)")
    return value


OneLine = AfterValidator(_one_line)

Username = Annotated[str, Field(min_length=3, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                                description="Letters, digits and . _ - (starting with a letter or digit).")]
Password = Annotated[str, Field(min_length=1, max_length=256, description="Your password.")]
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

    @model_validator(mode="before")
    @classmethod
    def _unicode_text(cls, value: object) -> object:
        # JSON may escape half of a surrogate pair ("\ud800"): such a string has no UTF-8 form, so no store,
        # password hash or HTTP request could take it.
        if where := _surrogate_at(value, ""):
            raise PydanticCustomError(
                "unicode", "{where} must be valid Unicode text: it contains an unpaired surrogate (a lone "
                "\\uD800-\\uDFFF escape)", {"where": where or "the request"})
        return value


class Scope(StrEnum):
    mine = "mine"
    results = "results"


class RepetitionState(StrEnum):
    queued = "queued"
    leased = "leased"
    done = "done"
    failed = "failed"
    refunded = "refunded"


class Validation(StrEnum):
    """Whether a result was checked against another miner's fetch of the same repetition."""

    unchecked = "unchecked"  # one miner's fetch, not compared with another (a trusted miner's, or nobody to check)
    validated = "validated"  # another miner's fetch agreed with it
    disputed = "disputed"  # other fetches disagreed and no two of them agreed: nobody could tell which is right


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
    username: Annotated[str, Field(min_length=1, max_length=64, description="Your username."), OneLine]
    password: Password


class TotpConfirmRequest(CredentialsRequest):
    code: TotpCode


class LoginRequest(CredentialsRequest):
    code: TotpCode


class TotpEnrolment(BaseModel):
    secret: str = Field(description="Base32 secret, for manual entry in an authenticator app.")
    otpauth_uri: str = Field(description="The otpauth:// URI an authenticator app takes (the QR code holds it).")
    qr_png: str = Field(description="The otpauth URI as a QR code, a data:image/png;base64 URI.")


class UserOut(BaseModel):
    id: str = Field(description="The account's id.")
    username: str = Field(description="The name you sign in with.")
    totp_enabled: bool = Field(description="Whether two-factor sign-in is set up (required before the first login).")
    created_at: datetime = Field(description="When the account was registered.")


class Registered(BaseModel):
    user: UserOut = Field(description="The new account.")
    totp: TotpEnrolment = Field(description="The secret to enrol in an authenticator app, then confirm with a code.")


class SessionOut(BaseModel):
    access_token: str = Field(description="Send it as `Authorization: Bearer <token>`.")
    token_type: Literal["bearer"] = Field(default="bearer", description="Always `bearer`.")
    expires_at: datetime = Field(description="When the session ends; log in again after.")


class MeOut(UserOut):
    balance: int = Field(description="Coins in your wallet (not counting those held in escrow for your orders).")


# --- API tokens -----------------------------------------------------------------------------


class TokenCreate(Request):
    name: Annotated[str, Field(min_length=1, max_length=64, description="A name to recognise the token by, e.g. the "
                                                                        "computer it runs on."), OneLine] = "token"
    scopes: Annotated[list[Annotated[Scope, Strict(False)]], Field(
        min_length=1, max_length=2, description="`mine` for the mining client, `results` for the result client.")]
    order_id: Annotated[str, Field(max_length=64), OneLine] | None = Field(
        default=None, description="Limit the token to this one order.")


class TokenOut(BaseModel):
    id: str = Field(description="The token's id (for revoking it).")
    name: str = Field(description="The name given when it was created.")
    scopes: list[Scope] = Field(description="What the token may do: `mine`, `results`.")
    order_id: str | None = Field(description="The only order whose results it may read; null: all of yours.")
    created_at: datetime = Field(description="When it was created.")
    revoked_at: datetime | None = Field(description="When it was revoked; null while it works.")


class TokenCreated(TokenOut):
    token: str = Field(description="The secret token. It is shown only this once.")


# --- coins ----------------------------------------------------------------------------------


class ReputationOut(BaseModel):
    """How far other miners' fetches confirmed yours, and what that means for your mining."""

    reputation: float = Field(description="Moving average of your checked results' agreement with other miners' "
                                          "fetches, 0…1; a new account starts at 0.5.")
    standing: str = Field(description="new or suspect: every result is checked before it is paid; trusted: a few "
                                      "are, at random; barred: no more jobs.")
    agreed: int = Field(description="Your checked results that other miners' fetches agreed with.")
    outvoted: int = Field(description="Your results outvoted by two other miners' agreeing fetches.")
    strikes_left: int = Field(description="Outvoted results left before the account is barred.")
    checked_share: float = Field(description="The share of your results that is checked now.")
    barred_at: datetime | None = Field(default=None, description="When the account was barred from mining.")


class FaucetRequest(Request):
    amount: Annotated[int, Field(ge=1, description="Test coins to add (dev and test mode only; at most "
                                                   "`faucet_max_amount` of /meta).")] = 100


class WalletOut(BaseModel):
    account: str = Field(description="The ledger account of your wallet.")
    balance: int = Field(description="Coins you can spend.")


class LedgerEntryOut(BaseModel):
    txn_key: str = Field(description="The transfer this entry belongs to (unique; a retried transfer is not repeated).")
    delta: int = Field(description="Coins in (positive) or out (negative) of your wallet.")
    balance_after: int = Field(description="Your balance right after this entry.")
    kind: str = Field(description="What moved the coins: faucet, hold (an order's escrow), refund or reward "
                                      "(mining).")
    reference: str | None = Field(description="The order or repetition it concerns, if any.")
    created_at: datetime = Field(description="When it was booked.")


class LedgerPage(BaseModel):
    items: list[LedgerEntryOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` to get the next (older) page; null on the last page.")


# --- orders ---------------------------------------------------------------------------------

HttpMethod = Literal["GET", "HEAD", "POST"]


class RequestSpec(BaseModel):
    """The request an order makes on every run, as the API, the job queue and the miners carry it.

    Models that carry one inherit these fields, so their JSON stays flat. A model whose own fields
    come first lists RequestSpec first among its bases and those fields in a later base (pydantic
    orders fields from the last base to the first). Limits that depend on the settings (header
    count and size, body size, body only with POST) are checked with the order (`core.orders`);
    the miner's fetcher checks the request again before it sends anything.
    """

    url: Annotated[str, Field(min_length=1, max_length=8192, description="The page to fetch (http or https).")]
    method: HttpMethod = Field(default="GET", description="GET, HEAD or POST (only miners that allow POST take it).")
    headers: dict[str, str] = Field(default_factory=dict, description="Request headers sent with every fetch.")
    body: str | None = Field(default=None, description="Request body; only with method POST.")

    def request_fields(self) -> dict[str, Any]:
        """Just the request, as keyword arguments for another model that carries it."""
        return {name: getattr(self, name) for name in RequestSpec.model_fields}


def every(seconds: int) -> str:
    """An interval in words: 'every minute', 'every 5 seconds', 'every 2 hours'."""
    for name, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0 and seconds >= size:
            n = seconds // size
            return f"every {name}" if n == 1 else f"every {n} {name}s"
    return "every second" if seconds == 1 else f"every {seconds} seconds"


class IntervalSchedule(Request):
    kind: Literal["interval"] = Field(description="`interval`: every `every_seconds` from `start_at`.")
    every_seconds: Annotated[int, Field(ge=1, description="Seconds between repetitions (at least "
                                                          "`min_interval_seconds` of /meta).")]


class CronSchedule(Request):
    kind: Literal["cron"] = Field(description="`cron`: at the times of a cron expression.")
    cron: Annotated[str, Field(min_length=9, max_length=120, description="Five-field cron expression."), OneLine]
    timezone: Annotated[str, Field(min_length=1, max_length=64, description="IANA timezone the cron expression is "
                                                                            "read in, e.g. Europe/Berlin."),
                        OneLine] = "UTC"


Schedule = Annotated[IntervalSchedule | CronSchedule, Field(discriminator="kind")]


class Extraction(Request):
    """What of each fetched page to keep and watch: the text of a CSS selector's or an XPath's matches
    (one line each), or the page's visible text. Without one, the whole page is compared."""

    kind: Literal["css", "xpath", "text"] = Field(
        description="css: a CSS selector's matches; xpath: an XPath's matches; text: the page's visible text.")
    selector: Annotated[str, Field(min_length=1, max_length=1000), OneLine] | None = Field(
        default=None, description="The CSS selector or XPath expression; none for `text`. A selector ending in "
                                  "`::text` or `::attr(name)`, or an XPath selecting text or attributes, keeps "
                                  "those strings; one selecting elements keeps each element's text.")

    @model_validator(mode="after")
    def _selector_matches_kind(self) -> "Extraction":
        if self.kind == "text" and self.selector is not None:
            raise PydanticCustomError("selector", "extraction of kind text takes no selector")
        if self.kind != "text" and self.selector is None:
            raise PydanticCustomError("selector", "extraction of kind {kind} needs a selector", {"kind": self.kind})
        return self


class OrderCreate(Request, RequestSpec):
    schedule: Schedule = Field(description="When the page is fetched: at an interval or on a cron schedule.")
    start_at: IsoDateTime | None = Field(default=None, description="First run, with a timezone; default: now.")
    max_runs: Annotated[int, Field(ge=1, description="How many times the page is fetched; the order costs max_runs × "
                                                     "price_per_run.")]
    extraction: Extraction | None = Field(default=None, description="Keep and watch only part of each page.")


class OrderChange(Request):
    """What to change of an active or paused order; what is left out stays. It applies from the next repetition
    not yet dispatched: those dispatched keep their URL and due time."""

    url: Annotated[str, Field(min_length=1, max_length=8192), OneLine] | None = Field(
        default=None, description="The page to fetch (http or https).")
    schedule: Schedule | None = Field(default=None, description="The new schedule: the next undispatched repetition "
                                                                "is due at its first slot after the last dispatched "
                                                                "one, and not before now.")
    max_runs: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="The new number of repetitions, at least those dispatched: the escrow is topped up "
                                  "from your balance, or refunded to it, by the difference in cost.")
    extraction: Extraction | None = Field(default=None, description="Keep and watch only this part of each page; "
                                                                    "null to compare whole pages again.")


class RepetitionCounts(BaseModel):
    """Where an order's repetitions are, in the words the API, the dashboard and the CLIs share. Every
    repetition is in exactly one of these; the first four are still to come, the last three are settled."""

    scheduled: int = Field(description="Not yet handed to the job queue; each is, shortly before it is due.")
    waiting: int = Field(description="In the job queue ahead of time, waiting until they are due.")
    queued: int = Field(description="Due, waiting for a miner to take them.")
    fetching: int = Field(description="A miner is fetching them now.")
    delivered: int = Field(description="Fetched and stored: the result is there and the miner was paid.")
    refunded: int = Field(description="Not run, or run without a page to pay for (refused target, robots.txt, "
                                      "cancelled, missed): the coins went back to you.")
    failed: int = Field(description="Given up after every attempt; refunded too.")


class Lateness(BaseModel):
    """An order running late: some of its repetitions are due longer ago than the marketplace's lateness threshold
    and not delivered yet (no miner took them, or they are still being fetched)."""

    overdue: int = Field(description="Repetitions due more than `late_after_seconds` ago and not settled yet.")
    oldest_due_at: datetime = Field(description="When the oldest of them was due.")
    late_after_seconds: float = Field(description="The marketplace's threshold: how long after its due time a "
                                                  "repetition not delivered makes its order late.")


class _Identified(BaseModel):
    id: str = Field(description="The order's id.")


class OrderOut(RequestSpec, _Identified):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)  # the API always sends them all

    schedule: IntervalSchedule | CronSchedule = Field(description="When the page is fetched.")
    start_at: datetime = Field(description="When the schedule starts.")
    max_runs: int = Field(description="How many repetitions were ordered.")
    runs_claimed: int = Field(description="Repetitions handed to the job queue, most of them ahead of their time "
                                          "(not how many have run: see `repetitions`).")
    runs_left: int = Field(description="Repetitions not yet handed to the job queue (`max_runs - runs_claimed`).")
    repetitions: RepetitionCounts = Field(description="How many repetitions are in each state.")
    next_run_at: datetime | None = Field(description="When the next repetition is due; null once none is to come.")
    late: Lateness | None = Field(default=None, description=(
        "Set while the order runs late (deliveries behind their due time by more than the threshold); null when on "
        "time. The operator is alerted when it becomes late and told when it is on time again."))
    extraction: Extraction | None = Field(description="What of each page is kept and watched; null: the whole page "
                                                      "is compared.")
    status: OrderStatus = Field(description="active, paused, completed (every repetition settled) or cancelled.")
    price_per_run: int = Field(description="Coins per repetition, fixed when the order was placed.")
    cost: int = Field(description="max_runs × price_per_run, held in escrow when the order was placed.")
    escrow_balance: int = Field(description="Coins still held for repetitions not yet settled.")
    next_due_at: datetime | None = Field(description="When the next repetition not yet handed to the job queue is due.")
    deployment_id: str | None = Field(description="The order's Prefect deployment, while it has one.")
    created_at: datetime = Field(description="When the order was placed.")


class CronPreview(BaseModel):
    next_runs: list[datetime] = Field(description="The next fire times, in the schedule's timezone.")


class OrderPage(BaseModel):
    items: list[OrderOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` to get the next (older) page; null on the last page.")


class CancelOut(BaseModel):
    order: OrderOut = Field(description="The order, now cancelled.")
    refunded: int = Field(description="Coins given back to your wallet.")


# --- results -------------------------------------------------------------------------------


class ResultOut(BaseModel):
    """A result as the API lists it (the body is downloaded separately)."""

    n: int = Field(description="The repetition number (1 is the first).")
    key: str = Field(description="`<order id>:<n>`.")
    status: int | None = Field(description="The page's HTTP status; null if it could not be fetched (see `error`).")
    final_url: str = Field(description="The URL after redirects.")
    headers: dict[str, str] = Field(description="The response headers kept.")
    body_size: int = Field(description="Bytes of the page kept.")
    truncated: bool = Field(description="Whether the page was longer than the miner's body cap and cut.")
    sha256: str = Field(description="SHA-256 of the page kept (hex).")
    due_at: datetime | None = Field(
        description="When the repetition was scheduled; stored_at - due_at is its delivery latency.")
    fetched_at: datetime = Field(description="When the miner fetched it.")
    stored_at: datetime = Field(description="When the result was stored.")
    elapsed_ms: int = Field(description="How long the fetch took, in milliseconds.")
    error: str | None = Field(description="Why there is no page, as a code (e.g. refused_target, robots_disallowed); "
                                          "null if none.")
    error_text: str | None = Field(description="The same for a person to read.")
    body_pruned_at: datetime | None = Field(
        default=None, description=(
            "When the body was deleted: bodies are kept for `result_body_retention_seconds` (see /meta) after a "
            "result client received them; everything else about the result stays."))
    extracted: str | None = Field(default=None, description="The order's extraction applied to the page.")
    changed: bool | None = Field(default=None, description="Differs from the previous valid result; null when not "
                                                           "a page to compare, or not observed yet.")
    validation: Validation = Field(
        default=Validation.unchecked, description=(
            "validated: another miner (another account) fetched the same repetition and its page agreed; "
            "unchecked: one miner's fetch, not compared; disputed: the checks disagreed and no two fetches agreed."))


class ResultPage(BaseModel):
    items: list[ResultOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `before` to get the next (older) page.")


class ChangeOut(BaseModel):
    """A repetition whose page (or extracted value) differs from the previous valid result's."""

    n: int = Field(description="The repetition whose result changed.")
    previous_n: int = Field(description="The valid result it differs from.")
    fetched_at: datetime = Field(description="When repetition n's page was fetched.")
    observed_at: datetime = Field(description="When the watcher compared it.")
    extracted: str | None = Field(description="The extracted value now; null when the order watches whole pages.")
    diff: str | None = Field(description="Unified diff from repetition previous_n to n; null for binary pages.")


class ChangePage(BaseModel):
    items: list[ChangeOut] = Field(description="Oldest first.")
    next_cursor: str | None = Field(description="Pass as `after` to get the next (newer) page.")


# --- webhooks -------------------------------------------------------------------------------

WebhookEventName = Literal["change", "result"]


class WebhookCreate(Request):
    url: Annotated[str, Field(min_length=1, max_length=2048, description="Where to POST each notification (http or "
                                                                          "https; a public address)."), OneLine]
    order_id: Annotated[str, Field(max_length=64), OneLine] | None = Field(
        default=None, description="Tell about this one order; null: about every order of yours.")
    event: WebhookEventName = Field(default="change", description="change: only results that changed; result: "
                                                                  "every result.")


class WebhookOut(BaseModel):
    id: str = Field(description="The webhook's id.")
    url: str = Field(description="Where notifications go.")
    order_id: str | None = Field(description="The only order it tells about; null: all of yours.")
    event: WebhookEventName = Field(description="change: only results that changed; result: every result.")
    created_at: datetime = Field(description="When it was created.")


class WebhookCreated(WebhookOut):
    secret: str = Field(description="Signs every notification (HMAC-SHA256, header Crawlcoin-Signature). Shown only "
                                    "this once.")


class WebhookDeliveryOut(BaseModel):
    id: str = Field(description="The idempotency id, sent as Crawlcoin-Delivery on every attempt.")
    order_id: str = Field(description="The order told about.")
    n: int = Field(description="The repetition told about.")
    event: WebhookEventName = Field(description="change if its result changed, else result.")
    state: Literal["pending", "delivered", "failed"] = Field(
        description="pending: to be sent (again) at next_attempt_at; delivered: answered 2xx; failed: given up.")
    attempts: int = Field(description="Requests made so far.")
    created_at: datetime = Field(description="When the notification was stored.")
    next_attempt_at: datetime | None = Field(description="When it is tried next (pending only).")
    last_attempt_at: datetime | None = Field(description="When it was last tried.")
    last_status: int | None = Field(description="HTTP status of the last attempt; null: no answer.")
    last_error: str | None = Field(description="What went wrong with the last attempt.")
    delivered_at: datetime | None = Field(description="When the endpoint answered 2xx.")
    payload: str = Field(description="The JSON body sent.")


class WebhookDeliveryPage(BaseModel):
    items: list[WebhookDeliveryOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` to get the next (older) page; null on the last page.")


# --- service --------------------------------------------------------------------------------


class FieldError(BaseModel):
    loc: list[str] = Field(description="Where the problem is, e.g. [\"schedule\", \"cron\"].")
    msg: str = Field(description="What is wrong there.")
    type: str = Field(description="A machine-readable kind of problem.")


class ErrorOut(BaseModel):
    """Every error answer of the API."""

    detail: str = Field(description="What went wrong, in one sentence for a person to read.")
    errors: list[FieldError] | None = Field(default=None, description="Invalid input only (422): each field.")


class MetaOut(BaseModel):
    mode: str = Field(description="dev, test or production.")
    faucet_enabled: bool = Field(description="Whether /wallet/faucet grants test coins (not in production).")
    faucet_max_amount: int = Field(description="The most test coins one faucet request grants.")
    price_per_run: int = Field(description="Coins a new order pays per repetition (and a miner earns per delivered "
                                           "page).")
    max_runs_cap: int = Field(description="The most repetitions one order may have.")
    min_interval_seconds: int = Field(description="The shortest interval an order may have.")
    result_body_retention_seconds: int | None = Field(
        default=None, description="How long a result's body is kept after a result client received it.")


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="ok when the store and Valkey answer, else degraded.")
    store: str = Field(description="ok, or what is wrong with the store.")
    valkey: str = Field(description="ok, or what is wrong with Valkey.")
