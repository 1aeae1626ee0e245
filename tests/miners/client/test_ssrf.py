"""The miner never connects to a private address: every case is refused, reported as refused,
and the private listener (127.0.0.1 / ::1) records no connection at all."""

import asyncio
import logging
import socket
import urllib.parse
from typing import Any

import pytest
from aiohttp.abc import ResolveResult

from miners.client import Fetcher, FetchError, FetchPolicy, FetchRequest, FetchResult
from tests.miners.client.conftest import PUBLIC_IP, Net, StaticResolver

pytestmark = pytest.mark.anyio

# {P}: the private listener's port; {S}: the public server's port.
DIRECT_TARGETS = {
    "loopback": "http://127.0.0.1:{P}/",
    "decimal": "http://2130706433:{P}/",
    "octal": "http://0177.0.0.1:{P}/",
    "octal-whole": "http://017700000001:{P}/",
    "hex": "http://0x7f000001:{P}/",
    "hex-dotted": "http://0x7f.0x0.0x0.0x1:{P}/",
    "short": "http://127.1:{P}/",
    "percent-encoded": "http://%31%32%37.0.0.1:{P}/",
    "fullwidth-digits": "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:{P}/",
    "trailing-dot": "http://127.0.0.1.:{P}/",
    "ipv6-loopback": "http://[::1]:{P}/",
    "ipv6-loopback-long": "http://[0:0:0:0:0:0:0:1]:{P}/",
    "ipv4-mapped": "http://[::ffff:127.0.0.1]:{P}/",
    "ipv4-mapped-hex": "http://[::ffff:7f00:1]:{P}/",
    "nat64": "http://[64:ff9b::127.0.0.1]:{P}/",
    "6to4": "http://[2002:7f00:1::]:{P}/",
    "teredo": "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]:{P}/",
    "unspecified": "http://0.0.0.0:{P}/",
    "zero": "http://0:{P}/",
    "ipv6-unspecified": "http://[::]:{P}/",
    "localhost": "http://localhost:{P}/",
    "localhost-subdomain": "http://api.localhost:{P}/",
    "metadata": "http://169.254.169.254:{P}/latest/meta-data/",
    "private-10": "http://10.0.0.1:{P}/",
    "private-192": "http://192.168.1.1:{P}/",
    "cgnat": "http://100.64.0.1:{P}/",
    "public-ip-literal-on-loopback": "http://" + PUBLIC_IP + ":{S}/page",  # literal: shared policy says loopback
    "userinfo": "http://user:pw@public.test:{S}/page",
    "userinfo-user-only": "http://user@public.test:{S}/page",
    "file": "file:///etc/passwd",
    "gopher": "gopher://127.0.0.1:{P}/_GET",
    "ftp": "ftp://public.test:{S}/",
    "dict": "dict://127.0.0.1:{P}/",
    "blocked": "http://blocked.test:{S}/page",
    "blocked-subdomain": "http://www.Blocked.test:{S}/page",
}
DNS_TARGETS = {
    "dns-private": "http://private.test:{P}/",
    "dns-public-and-private": "http://mixed.test:{P}/",
    "dns-metadata": "http://metadata.test:{P}/",
    "dns-ipv6-loopback": "http://v6loop.test:{P}/",
    "dns-ipv4-mapped": "http://mapped.test:{P}/",
    "dns-nat64": "http://nat64.test:{P}/",
    "dns-lan": "http://lan.test:{P}/",
    "dns-trailing-dot": "http://private.test.:{P}/",
    "dns-uppercase": "http://PRIVATE.Test:{P}/",
}
REDIRECT_TARGETS = {
    "loopback": ("http://127.0.0.1:{P}/", 302),
    "metadata": ("http://169.254.169.254/latest/meta-data/", 302),
    "ipv6-loopback": ("http://[::1]:{P}/", 301),
    "decimal": ("http://2130706433:{P}/", 307),
    "hex-short": ("http://0x7f.1:{P}/", 308),
    "octal": ("http://0177.1:{P}/", 303),
    "ipv4-mapped": ("http://[::ffff:127.0.0.1]:{P}/", 302),
    "dns-private": ("http://private.test:{P}/", 302),
    "dns-public-and-private": ("http://mixed.test:{P}/", 302),
    "dns-metadata": ("http://metadata.test/latest/meta-data/", 302),
    "localhost": ("http://localhost:{P}/", 302),
    "scheme-relative": ("//127.0.0.1:{P}/", 302),
    "file": ("file:///etc/passwd", 302),
    "gopher": ("gopher://127.0.0.1:{P}/_GET", 302),
    "userinfo": ("http://user:pw@public.test:{S}/page", 302),
    "blocked": ("http://blocked.test:{S}/page", 302),
}


def assert_refused(result: FetchResult, net: Net) -> None:
    assert result.error is FetchError.refused_target, result
    assert result.status is None and result.body == b""
    assert result.error_text
    assert net.private.accepted == []


@pytest.mark.parametrize("template", DIRECT_TARGETS.values(), ids=DIRECT_TARGETS.keys())
async def test_direct_targets_are_refused_without_connecting(net: Net, template: str) -> None:
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(FetchRequest(net.expand(template)))
    assert_refused(result, net)
    assert net.public.requests == []
    assert net.resolver.queries == []  # refused on the URL alone: not even a DNS query


@pytest.mark.parametrize("respect_robots", [True, False], ids=["with-robots", "without-robots"])
@pytest.mark.parametrize("template", DNS_TARGETS.values(), ids=DNS_TARGETS.keys())
async def test_names_resolving_to_forbidden_addresses_are_refused(net: Net, template: str,
                                                                  respect_robots: bool) -> None:
    async with net.fetcher(respect_robots=respect_robots) as fetcher:
        result = await fetcher.fetch(FetchRequest(net.expand(template)))
    assert_refused(result, net)
    assert "resolves to" in (result.error_text or "")


@pytest.mark.parametrize(("template", "status"), REDIRECT_TARGETS.values(), ids=REDIRECT_TARGETS.keys())
async def test_redirects_to_forbidden_targets_are_refused(net: Net, template: str, status: int) -> None:
    start = net.public.url(f"/redirect?status={status}&to={urllib.parse.quote(net.expand(template), safe='')}")
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(FetchRequest(start))
    assert_refused(result, net)
    assert [(hop.url, hop.status) for hop in result.redirects] == [(start, status)]
    assert result.final_url != start  # reports the hop it refused
    assert net.public.paths() == ["/robots.txt", start.split(str(net.public.port), 1)[1]]


async def test_a_refused_hop_after_several_good_ones_is_refused(net: Net) -> None:
    evil = urllib.parse.quote(net.expand("http://private.test:{P}/"), safe="")
    second = net.public.url(f"/redirect?to={evil}", host="other.test")
    first = net.public.url(f"/redirect?to={urllib.parse.quote(second, safe='')}")
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(FetchRequest(first))
    assert_refused(result, net)
    assert [hop.url for hop in result.redirects] == [first, second]


async def test_the_injected_classifier_also_judges_ip_literals(net: Net) -> None:
    async with net.fetcher(classify_ip=lambda ip: f"{ip} is refused by this policy") as fetcher:
        result = await fetcher.fetch(FetchRequest("http://93.184.215.14/"))
    assert result.error is FetchError.refused_target
    assert result.error_text == "url host is not allowed: 93.184.215.14 is refused by this policy"


class RebindingResolver(StaticResolver):
    """A DNS server that answers public once, then private: the classic rebinding attack."""

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        answers = await super().resolve(host, port, family)
        self.table[host] = ["127.0.0.1"]
        return answers


async def test_connection_goes_to_the_checked_address_without_a_second_lookup(net: Net) -> None:
    resolver = RebindingResolver({"rebind.test": [PUBLIC_IP]})
    policy = FetchPolicy(classify_ip=net.fetcher().policy.classify_ip, respect_robots=False)
    async with Fetcher(policy, resolver=resolver) as fetcher:
        result = await fetcher.fetch(FetchRequest(net.public.url("/page", host="rebind.test")))
    assert result.status == 200 and result.body == b"page /page"
    assert resolver.queries == ["rebind.test"]
    assert net.private.accepted == []


async def test_aiohttp_never_calls_the_system_resolver(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[Any] = []

    async def spy_getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        lookups.append(args)
        raise OSError("the system resolver must not be used")

    def spy_sync(*args: Any, **kwargs: Any) -> Any:
        lookups.append(args)
        raise OSError("the system resolver must not be used")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", spy_getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", spy_sync)
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(FetchRequest(net.public.url("/page")))
    assert result.status == 200, result
    assert lookups == []


async def test_a_resolver_answering_with_a_name_is_refused(net: Net) -> None:
    resolver = StaticResolver({"cname.test": ["localhost"]})
    async with Fetcher(FetchPolicy(respect_robots=False), resolver=resolver) as fetcher:
        result = await fetcher.fetch(FetchRequest("http://cname.test/"))
    assert result.error is FetchError.refused_target
    assert "non-numeric" in (result.error_text or "")


async def test_allow_private_targets_reaches_loopback_and_warns(net: Net, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="miners.client.fetch"):
        fetcher = Fetcher(FetchPolicy(allow_private_targets=True), resolver=net.resolver)
    assert "allow_private_targets is ON" in caplog.text
    async with fetcher:
        direct = await fetcher.fetch(FetchRequest(net.expand("http://127.0.0.1:{P}/secret")))
        by_name = await fetcher.fetch(FetchRequest(net.expand("http://private.test:{P}/secret")))
    assert direct.status == 200 and direct.body == b"internal secret"
    assert by_name.status == 200 and by_name.body == b"internal secret"
    assert net.private.accepted


async def test_the_default_policy_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        Fetcher(FetchPolicy())
    assert caplog.text == ""
