"""The two SSRF checkpoints of the fetcher: the URL of every hop, and every address DNS returns.

`check_hop` runs before each request (first URL, every redirect, every robots.txt). It applies
the shared URL policy (`core.urls.check_target_url`), the block-list and the address
classifier to IP-literal hosts, which never reach a resolver. It hands back the URL as yarl
will send it, after making sure yarl and the WHATWG parser agree on the host.

`GuardedResolver` is the only resolver the fetcher's aiohttp connector has. It refuses a name
when ANY address it resolves to is forbidden (one private answer among public ones is enough
to refuse, since the connector may try every answer), and returns the checked addresses as
numeric hosts, so the connection goes to exactly what was checked: aiohttp connects to a
numeric address without another lookup (see tests/miners/client/test_ssrf.py).
"""

import ipaddress
import socket
from dataclasses import dataclass

import ada_url
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from core.errors import InvalidInput
from core.urls import check_target_url
from miners.client.models import FetchPolicy

_HOST_IPV4, _HOST_IPV6 = 1, 2  # ada_url host types


class TargetRefused(Exception):
    """The fetcher will not connect to this target. Not an OSError, so aiohttp never wraps it."""


class UnusableURL(Exception):
    """The URL does not parse, so there is nothing to check or fetch."""


@dataclass(frozen=True, slots=True)
class Target:
    href: str  # WHATWG-normalised URL
    origin: str  # scheme://host[:port], the robots.txt cache key
    url: URL  # what aiohttp is given


def normalise_domain(domain: str) -> str:
    """A block-list entry in the form hosts take after URL parsing (lower case, punycode)."""
    try:
        return ada_url.URL(f"http://{domain.strip().rstrip('.')}/").hostname
    except ValueError:
        raise ValueError(f"not a domain name: {domain!r}") from None


def is_blocked(host: str, blocked: frozenset[str]) -> bool:
    host = host.rstrip(".")
    return any(host == d or host.endswith("." + d) for d in blocked)


def check_hop(url: str, policy: FetchPolicy, blocked: frozenset[str]) -> Target:
    """Validate one URL the fetcher is about to request; raise TargetRefused or UnusableURL."""
    if not isinstance(url, str) or not ada_url.check_url(url.strip()):
        raise UnusableURL(f"not a valid absolute URL: {url!r}"[:300])
    try:
        href = check_target_url(url, allow_private=policy.allow_private_targets)
    except InvalidInput as e:
        raise TargetRefused(e.message) from None
    parsed = ada_url.URL(href)
    host = parsed.hostname
    if is_blocked(host, blocked):
        raise TargetRefused(f"{host} is on the block-list")
    if parsed.host_type in (_HOST_IPV4, _HOST_IPV6) and not policy.allow_private_targets:
        # check_target_url judged the literal by the shared classifier; the policy's may be stricter.
        reason = policy.classify_ip(ipaddress.ip_address(host.strip("[]")))
        if reason:
            raise TargetRefused(f"url host is not allowed: {reason}")
    yurl = URL(href, encoded=True)
    # A parser differential (yarl connecting somewhere other than what ada checked) is refused.
    if (yurl.raw_host or "").lower() != host.strip("[]").lower():
        raise TargetRefused(f"url host {host!r} is ambiguous")
    return Target(href=href, origin=parsed.origin, url=yurl)


class GuardedResolver(AbstractResolver):
    """Wraps a real resolver; answers only with addresses the policy allows."""

    def __init__(self, inner: AbstractResolver, policy: FetchPolicy) -> None:
        self._inner = inner
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        checked: list[ResolveResult] = []
        for answer in answers:
            try:
                ip = ipaddress.ip_address(answer["host"])
            except ValueError:
                # A name here would make the connector resolve again, outside this check.
                raise TargetRefused(f"{host} resolved to a non-numeric address {answer['host']!r}") from None
            if not self._policy.allow_private_targets:
                reason = self._policy.classify_ip(ip)
                if reason:
                    raise TargetRefused(f"{host} resolves to {reason}")
            checked.append(
                ResolveResult(
                    hostname=host,
                    host=str(ip),
                    port=answer["port"] or port,
                    family=socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                    proto=0,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        if not checked:
            raise OSError(f"{host} has no address")
        return checked

    async def close(self) -> None:
        await self._inner.close()
