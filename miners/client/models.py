"""What the mining client asks the fetcher for, the limits it fetches under, and what it gets back."""

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import get_args

from core.protocol.mining import FetchError
from core.schemas import HttpMethod
from core.urls import IPAddress, forbidden_ip_reason

METHODS: tuple[HttpMethod, ...] = get_args(HttpMethod)
DEFAULT_USER_AGENT = "crawlcoin-miner/0.1 (+volunteer)"


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """What the fetcher is asked to send: a job's `RequestSpec` (`FetchRequest(**offer.request_fields())`)
    or a robots.txt. It takes the request unchecked on purpose: the fetcher is the last line of
    defence and refuses a method, header or body it will not send itself (`invalid_request`)."""

    url: str
    method: HttpMethod = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str | None = None


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Limits of one Fetcher. It is fixed for the Fetcher's lifetime because pooled connections
    were checked under it: changing the address policy per call would let a later job reuse a
    connection that only an earlier, laxer policy allowed."""

    user_agent: str = DEFAULT_USER_AGENT
    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    total_timeout: float = 30.0
    max_body_bytes: int = 2 * 1024 * 1024
    max_redirects: int = 5
    max_header_line_bytes: int = 8190
    max_headers: int = 100
    respect_robots: bool = True
    robots_ttl: float = 3600.0
    robots_error_ttl: float = 300.0  # how long "robots.txt unreachable → disallow" is remembered
    robots_max_bytes: int = 500 * 1024  # RFC 9309 asks crawlers to parse at least 500 KiB
    robots_cache_size: int = 1024
    blocked_domains: frozenset[str] = frozenset()
    allow_private_targets: bool = False
    classify_ip: Callable[[IPAddress], str | None] = forbidden_ip_reason

    @property
    def robots_token(self) -> str:
        """The product token robots.txt groups are matched against (RFC 9309 §2.2.1)."""
        return self.user_agent.split("/", 1)[0].strip()


@dataclass(frozen=True, slots=True)
class Hop:
    """One redirect response that was followed (or refused)."""

    url: str
    status: int


@dataclass(frozen=True, slots=True)
class FetchResult:
    url: str
    final_url: str
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    truncated: bool = False
    elapsed_ms: int = 0
    redirects: tuple[Hop, ...] = ()
    error: FetchError | None = None
    error_text: str | None = None

    @property
    def sha256(self) -> str:
        """Hex digest of the body as returned (after decoding and capping)."""
        return hashlib.sha256(self.body).hexdigest()

    @property
    def ok(self) -> bool:
        return self.error is None
