"""robots.txt rules per origin, fetched through the fetcher's own SSRF-checked path and cached.

Parsing is done by Protego (the parser Scrapy uses): unlike `urllib.robotparser` it supports
the `*` and `$` wildcards and picks the most specific (longest) matching rule, as RFC 9309
and the major crawlers do, and it matches our product token inside group names the RFC way.

How a fetch outcome maps to rules (RFC 9309 §2.3.1):
- 2xx: parse the file (at most `robots_max_bytes`, the rest is ignored);
- 4xx (except 429), or more redirects than allowed: no usable file, everything is allowed;
- 5xx, 429, timeouts and network errors: unreachable, everything is disallowed *for now*:
  remembered for `robots_error_ttl` only, so a later job tries again;
- the origin itself refused (SSRF policy) or not reachable at all (DNS, connect, TLS): the job
  fails the same way the page fetch would, and nothing is cached.
"""

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from protego import Protego

from miners.client.models import FetchError, FetchPolicy, FetchResult

FetchRobots = Callable[[str], Awaitable[FetchResult]]
_ORIGIN_FAILURES = frozenset({
    FetchError.refused_target, FetchError.invalid_url, FetchError.dns_error,
    FetchError.connection_error, FetchError.tls_error,
})


class OriginFailed(Exception):
    """robots.txt could not even be asked for: the origin is refused or unreachable."""

    def __init__(self, result: FetchResult) -> None:
        super().__init__(result.error_text)
        self.result = result


@dataclass(frozen=True, slots=True)
class RobotsRules:
    parser: Protego | None = None
    allow_all: bool = True
    note: str = ""

    def allows(self, url: str, token: str) -> bool:
        if self.parser is not None:
            return self.parser.can_fetch(url, token)
        return self.allow_all


@dataclass(frozen=True, slots=True)
class _Entry:
    rules: RobotsRules
    expires: float


def rules_from_result(result: FetchResult) -> tuple[RobotsRules, bool]:
    """Rules for a robots.txt fetch outcome, and whether the outcome is a lasting one."""
    if result.error in _ORIGIN_FAILURES and not result.redirects:
        raise OriginFailed(result)
    if result.error is FetchError.too_many_redirects:
        return RobotsRules(note="robots.txt redirects too often; treated as absent"), True
    if result.error is not None or result.status is None:
        return RobotsRules(allow_all=False, note=f"robots.txt unreachable ({result.error}: {result.error_text})"), False
    status = result.status
    if 200 <= status < 300:
        try:
            parser = Protego.parse(result.body.decode("utf-8", errors="replace"))
        except Exception:  # a file Protego cannot read has no rules we could honour
            return RobotsRules(note="robots.txt unparseable; treated as absent"), True
        return RobotsRules(parser=parser), True
    if status >= 500 or status == 429:
        return RobotsRules(allow_all=False, note=f"robots.txt unreachable (HTTP {status})"), False
    return RobotsRules(note=f"robots.txt absent (HTTP {status})"), True


class RobotsCache:
    """Rules per origin with a TTL and an LRU size cap; one fetch per origin at a time."""

    def __init__(self, policy: FetchPolicy, fetch_robots: FetchRobots) -> None:
        self._policy = policy
        self._fetch = fetch_robots
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[RobotsRules]] = {}

    async def rules(self, origin: str) -> RobotsRules:
        entry = self._entries.get(origin)
        if entry is not None and entry.expires > time.monotonic():
            self._entries.move_to_end(origin)
            return entry.rules
        task = self._inflight.get(origin)
        if task is None:
            task = asyncio.create_task(self._load(origin))
            self._inflight[origin] = task
            task.add_done_callback(lambda t: self._settle(origin, t))
        # Shielded: a job that times out while waiting must not cancel the fetch other jobs share.
        return await asyncio.shield(task)

    async def _load(self, origin: str) -> RobotsRules:
        result = await self._fetch(f"{origin}/robots.txt")
        rules, lasting = rules_from_result(result)
        ttl = self._policy.robots_ttl if lasting else self._policy.robots_error_ttl
        self._entries[origin] = _Entry(rules, time.monotonic() + ttl)
        self._entries.move_to_end(origin)
        while len(self._entries) > self._policy.robots_cache_size:
            self._entries.popitem(last=False)
        return rules

    def _settle(self, origin: str, task: asyncio.Task[RobotsRules]) -> None:
        self._inflight.pop(origin, None)
        if not task.cancelled():
            task.exception()  # retrieved here so an abandoned failure is not logged as unhandled

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
