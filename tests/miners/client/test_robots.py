"""robots.txt is fetched through the safe path, cached per origin and honoured for our token."""

import asyncio
import urllib.parse

import pytest

from miners.client import FetchError, FetchRequest
from tests.miners.client.conftest import Net

pytestmark = pytest.mark.anyio


async def test_a_disallowed_page_is_not_requested(net: Net) -> None:
    net.public.robots["public.test"] = (200, "User-agent: *\nDisallow: /private\n")
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(FetchRequest(net.public.url("/private/page")))
    assert result.error is FetchError.robots_disallowed and result.status is None
    assert net.public.paths() == ["/robots.txt"]


async def test_robots_is_fetched_once_per_origin(net: Net) -> None:
    async with net.fetcher() as fetcher:
        for path in ("/a", "/b", "/c"):
            assert (await fetcher.fetch(FetchRequest(net.public.url(path)))).ok
        await fetcher.fetch(FetchRequest(net.public.url("/d", host="other.test")))
    assert net.public.paths() == ["/robots.txt", "/a", "/b", "/c"]
    assert net.public.paths("other.test") == ["/robots.txt", "/d"]


async def test_concurrent_jobs_share_one_robots_fetch(net: Net) -> None:
    net.public.robots_delay = 0.1
    async with net.fetcher() as fetcher:
        results = await asyncio.gather(*(fetcher.fetch(FetchRequest(net.public.url(f"/p{i}"))) for i in range(5)))
    assert all(r.ok for r in results)
    assert net.public.paths().count("/robots.txt") == 1


async def test_cached_rules_expire(net: Net) -> None:
    async with net.fetcher(robots_ttl=0.2) as fetcher:
        await fetcher.fetch(FetchRequest(net.public.url("/a")))
        await asyncio.sleep(0.3)
        await fetcher.fetch(FetchRequest(net.public.url("/b")))
    assert net.public.paths().count("/robots.txt") == 2


@pytest.mark.parametrize(
    ("robots", "path", "allowed"),
    [
        ("User-agent: crawlcoin-miner\nDisallow: /\n\nUser-agent: *\nAllow: /\n", "/x", False),
        ("User-agent: crawlcoin-miner\nAllow: /\n\nUser-agent: *\nDisallow: /\n", "/x", True),
        ("User-agent: otherbot\nDisallow: /\n", "/x", True),
        ("User-agent: *\nDisallow: /*.pdf$\n", "/files/doc.pdf", False),
        ("User-agent: *\nDisallow: /*.pdf$\n", "/files/doc.pdf.html", True),
        ("User-agent: *\nDisallow: /*?session=\n", "/list?session=1", False),
        ("User-agent: *\nDisallow: /a\nAllow: /a/b\n", "/a/b/c", True),  # longest match wins
        ("User-agent: *\nDisallow: /a\nAllow: /a/b\n", "/a/c", False),
        ("", "/x", True),
    ],
)
async def test_rules_are_matched_like_major_crawlers_do(net: Net, robots: str, path: str, allowed: bool) -> None:
    net.public.robots["public.test"] = (200, robots)
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(FetchRequest(net.public.url(path)))
    assert (result.error is None) is allowed, result
    assert (path in net.public.paths()) is allowed


@pytest.mark.parametrize("status", [401, 403, 404, 410])
async def test_a_missing_robots_txt_allows_everything(net: Net, status: int) -> None:
    net.public.robots["public.test"] = (status, "User-agent: *\nDisallow: /\n")
    async with net.fetcher() as fetcher:
        assert (await fetcher.fetch(FetchRequest(net.public.url("/x")))).ok


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_an_unreachable_robots_txt_disallows_for_now(net: Net, status: int) -> None:
    net.public.robots["public.test"] = (status, "")
    async with net.fetcher(robots_error_ttl=1.5) as fetcher:
        first = await fetcher.fetch(FetchRequest(net.public.url("/x")))
        again = await fetcher.fetch(FetchRequest(net.public.url("/x")))
        net.public.robots["public.test"] = (200, "User-agent: *\nAllow: /\n")
        await asyncio.sleep(1.7)
        later = await fetcher.fetch(FetchRequest(net.public.url("/x")))
    assert first.error is FetchError.robots_disallowed and f"HTTP {status}" in (first.error_text or "")
    assert again.error is FetchError.robots_disallowed
    assert later.ok
    assert net.public.paths() == ["/robots.txt", "/robots.txt", "/x"]


async def test_a_robots_txt_that_times_out_disallows(net: Net) -> None:
    net.public.robots_delay = 1.0
    async with net.fetcher(read_timeout=0.2) as fetcher:
        result = await fetcher.fetch(FetchRequest(net.public.url("/x")))
    assert result.error is FetchError.robots_disallowed and "timeout" in (result.error_text or "")
    assert "/x" not in net.public.paths()


async def test_robots_redirects_are_followed(net: Net) -> None:
    net.public.robots["public.test"] = (302, net.public.url("/robots.txt", host="other.test"))
    net.public.robots["other.test"] = (200, "User-agent: *\nDisallow: /x\n")
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(FetchRequest(net.public.url("/x")))
    assert result.error is FetchError.robots_disallowed


async def test_a_robots_redirect_to_a_private_address_is_not_followed(net: Net) -> None:
    net.public.robots["public.test"] = (302, net.expand("http://127.0.0.1:{P}/robots.txt"))
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(FetchRequest(net.public.url("/x")))
    assert result.error is FetchError.robots_disallowed
    assert net.private.accepted == []


async def test_only_the_first_bytes_of_a_huge_robots_txt_count(net: Net) -> None:
    net.public.robots["public.test"] = (200, "User-agent: *\n" + "# padding\n" * 1000 + "Disallow: /\n")
    async with net.fetcher(robots_max_bytes=1000) as fetcher:
        assert (await fetcher.fetch(FetchRequest(net.public.url("/x")))).ok


async def test_each_redirect_target_is_checked_against_its_own_robots(net: Net) -> None:
    net.public.robots["other.test"] = (200, "User-agent: *\nDisallow: /\n")
    target = urllib.parse.quote(net.public.url("/x", host="other.test"), safe="")
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(FetchRequest(net.public.url(f"/redirect?to={target}")))
    assert result.error is FetchError.robots_disallowed and len(result.redirects) == 1
    assert net.public.paths("other.test") == ["/robots.txt"]


async def test_an_unreachable_origin_reports_why_and_is_not_cached(net: Net) -> None:
    async with net.fetcher() as fetcher:
        first = await fetcher.fetch(FetchRequest(net.public.url("/x", host="nowhere.test")))
        net.resolver.table["nowhere.test"] = net.resolver.table["public.test"]
        second = await fetcher.fetch(FetchRequest(net.public.url("/x", host="nowhere.test")))
    assert first.error is FetchError.dns_error and "robots.txt" in (first.error_text or "")
    assert second.ok


async def test_robots_can_be_switched_off(net: Net) -> None:
    net.public.robots["public.test"] = (200, "User-agent: *\nDisallow: /\n")
    async with net.fetcher(respect_robots=False) as fetcher:
        assert (await fetcher.fetch(FetchRequest(net.public.url("/x")))).ok
    assert net.public.paths() == ["/x"]
