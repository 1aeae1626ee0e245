"""The miner's page fetcher: one aiohttp session that only ever connects to public addresses.

SSRF scheme. A customer chooses the URL and a hostile server chooses where it redirects and
what its name resolves to, so nothing about the target is trusted:

1. Every URL the fetcher requests (the job's URL, each redirect target, each robots.txt) first
   passes `guard.check_hop`: the shared URL policy `core.urls.check_target_url` (http/https
   only, no userinfo, IP literals in every spelling normalised and classified), the
   block-list, and the policy's address classifier for IP-literal hosts.
2. Names are resolved only by `guard.GuardedResolver`, the connector's resolver. It refuses
   the name when any answer is forbidden and hands aiohttp numeric addresses only, so the
   socket connects to the very address that was checked: there is no second lookup between
   check and connect for a rebinding DNS server to exploit. aiohttp's DNS cache is off, so a
   new connection always resolves through the guard; pooled connections were made under the
   same, per-Fetcher policy.
3. Redirects are followed here, never by aiohttp (`allow_redirects=False`), so step 1 and 2
   run for every hop. Credentials the customer set are not carried to another origin.
4. No proxy from the environment (`trust_env=False`) and no cookie jar: jobs of different
   customers share nothing but the connection pool.

Hostile responses are bounded too: the body is read incrementally and capped after decoding
(aiohttp inflates gzip/deflate in bounded steps, so a compression bomb never materialises),
header lines and counts are capped by the parser, and every job has a total deadline.
"""

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import ada_url
import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from core.schemas import HttpMethod
from miners.client.guard import GuardedResolver, TargetRefused, UnusableURL, check_hop, normalise_domain
from miners.client.models import METHODS, FetchError, FetchPolicy, FetchRequest, FetchResult, Hop
from miners.client.robots import OriginFailed, RobotsCache

log = logging.getLogger(__name__)

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_KEPT_RESPONSE_HEADERS = (
    "content-type", "content-length", "content-encoding", "content-language", "last-modified",
    "etag", "cache-control", "expires", "date", "location", "retry-after",
)
# Set by the fetcher itself: framing and identity must not be steerable by the customer.
_MANAGED_REQUEST_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
    "trailer", "expect", "proxy-authorization", "proxy-connection", "user-agent", "accept-encoding",
})
_CREDENTIAL_HEADERS = frozenset({"authorization", "cookie"})
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_READ_CHUNK = 64 * 1024
_MAX_HEADER_VALUE = 1024
_MAX_ERROR_TEXT = 500


class _Failure(Exception):
    def __init__(self, kind: FetchError, text: str) -> None:
        super().__init__(text)
        self.kind = kind
        self.text = text


@dataclass(slots=True)
class _Progress:
    """Where a fetch got to, kept outside the coroutine so a timeout can still report it."""

    url: str
    hops: list[Hop] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Page:
    status: int
    headers: dict[str, str]
    body: bytes
    truncated: bool


class Fetcher:
    """Fetches pages for mining jobs. Use as `async with Fetcher(policy) as f: await f.fetch(req)`."""

    def __init__(self, policy: FetchPolicy | None = None, *, resolver: AbstractResolver | None = None) -> None:
        self.policy = policy or FetchPolicy()
        self._dns = resolver
        self._blocked = frozenset(normalise_domain(d) for d in self.policy.blocked_domains)
        self._session: aiohttp.ClientSession | None = None
        self._resolver: GuardedResolver | None = None
        self._robots = RobotsCache(self.policy, self._fetch_robots)
        if self.policy.allow_private_targets:
            log.warning(
                "!!! allow_private_targets is ON: this miner WILL connect to private, loopback and "
                "link-local addresses (its own machine and network). Use it for local testing only. !!!"
            )

    async def __aenter__(self) -> Self:
        p = self.policy
        self._resolver = GuardedResolver(self._dns or DefaultResolver(), p)
        connector = aiohttp.TCPConnector(resolver=self._resolver, use_dns_cache=False, limit=64, limit_per_host=4)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=p.connect_timeout, sock_connect=p.connect_timeout, sock_read=p.read_timeout
            ),
            headers={"User-Agent": p.user_agent},
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=True,
            max_line_size=p.max_header_line_bytes,
            max_field_size=p.max_header_line_bytes,
            max_headers=p.max_headers,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._robots.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._resolver is not None:
            await self._resolver.close()  # the connector closes only resolvers it created itself
            self._resolver = None

    async def fetch(self, request: FetchRequest) -> FetchResult:
        """Fetch one page under the policy. Never raises for anything the target does."""
        return await self._fetch(request, self.policy.respect_robots, self.policy.max_body_bytes)

    async def _fetch_robots(self, url: str) -> FetchResult:
        return await self._fetch(FetchRequest(url), respect_robots=False, body_cap=self.policy.robots_max_bytes)

    async def _fetch(self, request: FetchRequest, respect_robots: bool, body_cap: int) -> FetchResult:
        started = time.monotonic()
        progress = _Progress(request.url)
        page: _Page | None = None
        kind: FetchError | None = None
        text: str | None = None
        try:
            async with asyncio.timeout(self.policy.total_timeout):
                page = await self._follow(request, progress, respect_robots, body_cap)
        except Exception as exc:
            kind, text = _classify(exc, self.policy)
        return FetchResult(
            url=request.url,
            final_url=progress.url,
            status=page.status if page else None,
            headers=page.headers if page else {},
            body=page.body if page else b"",
            truncated=page.truncated if page else False,
            elapsed_ms=round((time.monotonic() - started) * 1000),
            redirects=tuple(progress.hops),
            error=kind,
            error_text=text,
        )

    async def _follow(self, request: FetchRequest, progress: _Progress, respect_robots: bool, body_cap: int) -> _Page:
        if self._session is None:
            raise RuntimeError("use the Fetcher as `async with Fetcher(...) as fetcher`")
        method, headers, body = _prepare(request)
        url, origin = request.url, None
        while True:
            progress.url = url  # reported as is if the hop is refused
            target = check_hop(url, self.policy, self._blocked)
            progress.url = target.href
            if origin is not None and target.origin != origin:
                headers = {k: v for k, v in headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
            origin = target.origin
            if respect_robots:
                rules = await self._robots.rules(target.origin)
                if not rules.allows(target.href, self.policy.robots_token):
                    note = f" ({rules.note})" if rules.note else ""
                    raise _Failure(FetchError.robots_disallowed, f"robots.txt of {target.origin} disallows it{note}")
            async with self._session.request(
                method, target.url, headers=headers, data=body, allow_redirects=False
            ) as resp:
                location = resp.headers.get("Location")
                if resp.status in _REDIRECT_STATUSES and location is not None:
                    progress.hops.append(Hop(target.href, resp.status))
                    if len(progress.hops) > self.policy.max_redirects:
                        raise _Failure(
                            FetchError.too_many_redirects, f"more than {self.policy.max_redirects} redirects"
                        )
                    try:
                        url = ada_url.join_url(target.href, location)
                    except ValueError:
                        raise _Failure(FetchError.invalid_url,
                                       f"redirect to an invalid URL {location[:200]!r}") from None
                    method, body, headers = _redirected(resp.status, method, body, headers)
                    continue
                content, truncated = await _read_capped(resp, body_cap)
                if truncated:
                    resp.close()  # the rest is unwanted; never drain it into a pooled connection
                return _Page(resp.status, _kept_headers(resp), content, truncated)


def _prepare(request: FetchRequest) -> tuple[HttpMethod, dict[str, str], bytes | None]:
    method = request.method.upper()
    if method not in METHODS:
        raise _Failure(FetchError.invalid_request, f"method {request.method!r} is not one of {', '.join(METHODS)}")
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        if not _HEADER_NAME.fullmatch(name) or any(c in value for c in "\r\n\0"):
            raise _Failure(FetchError.invalid_request, f"header {name[:100]!r} is not a valid HTTP header")
        if name.lower() not in _MANAGED_REQUEST_HEADERS:
            headers[name] = value
    if request.body is not None and method != "POST":
        raise _Failure(FetchError.invalid_request, "a request body is sent with POST only")
    body = request.body.encode() if request.body is not None else None
    return method, headers, body


def _redirected(
    status: int, method: HttpMethod, body: bytes | None, headers: dict[str, str]
) -> tuple[HttpMethod, bytes | None, dict[str, str]]:
    """Method and body for the next hop, as browsers do (RFC 9110 §15.4)."""
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        return "GET", None, {k: v for k, v in headers.items() if k.lower() != "content-type"}
    return method, body, headers


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> tuple[bytes, bool]:
    """At most `cap` decoded bytes, and whether more were on offer. Memory stays O(cap)."""
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(_READ_CHUNK):
        room = cap - len(buf)
        if len(chunk) > room:
            buf += chunk[:room]
            return bytes(buf), True
        buf += chunk
    return bytes(buf), False


def _kept_headers(resp: aiohttp.ClientResponse) -> dict[str, str]:
    return {
        name: value[:_MAX_HEADER_VALUE]
        for name in _KEPT_RESPONSE_HEADERS
        if (value := resp.headers.get(name)) is not None
    }


def _refusal(exc: BaseException) -> TargetRefused | None:
    """The TargetRefused behind `exc`, however aiohttp wrapped it."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, TargetRefused):
            return e
        todo += [e.__cause__, e.__context__, getattr(e, "os_error", None)]
    return None


def _classify(exc: Exception, policy: FetchPolicy) -> tuple[FetchError, str]:
    refused = _refusal(exc)
    if refused is not None:
        return FetchError.refused_target, _text(refused)
    match exc:
        case _Failure():
            return exc.kind, exc.text
        case OriginFailed(result=result) if result.error is not None:
            return result.error, f"{result.error_text} (while fetching robots.txt)"
        case UnusableURL() | aiohttp.InvalidURL():
            return FetchError.invalid_url, _text(exc)
        case TimeoutError():  # aiohttp's socket timeouts are TimeoutErrors too
            return FetchError.timeout, str(exc) or f"no complete answer within {policy.total_timeout:g} s"
        case aiohttp.ClientConnectorDNSError():
            return FetchError.dns_error, _text(exc)
        case aiohttp.ClientSSLError() | aiohttp.ClientConnectorCertificateError():
            return FetchError.tls_error, _text(exc)
        case aiohttp.ClientConnectionError() | ConnectionError():
            return FetchError.connection_error, _text(exc)
        case aiohttp.ClientError() | ValueError():  # aiohttp reports malformed responses as these
            return FetchError.http_error, _text(exc)
        case OSError():
            return FetchError.connection_error, _text(exc)
    raise exc


def _text(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:_MAX_ERROR_TEXT]

