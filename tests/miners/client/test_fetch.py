"""The fetcher against real local servers: pages, methods, redirects, limits, failures."""

import hashlib
import json
import socket
import tracemalloc
import urllib.parse
from typing import Any

import pytest

from miners.client import FetchError, FetchRequest, Hop
from tests.miners.client.conftest import BOMB_BYTES, PUBLIC_IP, Net

pytestmark = pytest.mark.anyio


def echoed(body: bytes) -> dict[str, Any]:
    return json.loads(body)


async def test_a_page_is_fetched_with_its_headers_and_hash(net: Net) -> None:
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(FetchRequest(net.public.url("/hello")))
    assert result.ok and result.status == 200
    assert result.body == b"page /hello" and not result.truncated
    assert result.sha256 == hashlib.sha256(b"page /hello").hexdigest()
    assert result.final_url == net.public.url("/hello") and result.redirects == ()
    assert result.headers["content-type"].startswith("text/plain")
    assert result.headers["etag"] == '"v1"'
    assert result.headers["last-modified"] == "Wed, 01 Jan 2025 00:00:00 GMT"
    assert result.headers["content-length"] == "11"
    assert result.elapsed_ms >= 0


async def test_an_http_error_status_is_a_result_not_a_failure(net: Net) -> None:
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(FetchRequest(net.public.url("/redirect?status=404&to=/x")))
    assert result.ok and result.status == 404


async def test_the_user_agent_is_the_miners_and_cannot_be_overridden(net: Net) -> None:
    headers = {"User-Agent": "evil", "Host": "internal.example", "X-Custom": "yes", "Accept-Encoding": "identity"}
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(FetchRequest(net.public.url("/echo"), headers=headers))
    seen = echoed(result.body)["headers"]
    assert seen["User-Agent"] == "crawlcoin-miner/0.1 (+volunteer)"
    assert seen["Host"] == f"public.test:{net.public.port}"
    assert seen["X-Custom"] == "yes"
    assert "gzip" in seen["Accept-Encoding"]


async def test_head_request(net: Net) -> None:
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(FetchRequest(net.public.url("/head-me"), method="HEAD"))
    assert result.status == 200 and result.body == b""
    assert ("public.test", "HEAD", "/head-me") in net.public.requests


async def test_post_sends_body_and_headers(net: Net) -> None:
    request = FetchRequest(
        net.public.url("/echo"), method="POST", headers={"Content-Type": "application/json", "X-Token": "t1"},
        body='{"q": "crawl"}',
    )
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(request)
    seen = echoed(result.body)
    assert seen["method"] == "POST" and seen["body"] == '{"q": "crawl"}'
    assert seen["headers"]["Content-Type"] == "application/json" and seen["headers"]["X-Token"] == "t1"


@pytest.mark.parametrize(("status", "method", "body"),
                         [(303, "GET", ""), (302, "GET", ""), (307, "POST", "data"), (308, "POST", "data")])
async def test_post_redirects_follow_browser_rules(net: Net, status: int, method: str, body: str) -> None:
    start = net.public.url(f"/redirect-any?status={status}&to=/echo")
    async with net.fetcher() as fetcher:
        request = FetchRequest(start, method="POST", body="data", headers={"Content-Type": "text/plain"})
        result = await fetcher.fetch(request)
    seen = echoed(result.body)
    assert (seen["method"], seen["body"]) == (method, body)
    assert result.redirects == (Hop(start, status),)


async def test_credentials_do_not_follow_a_redirect_to_another_origin(net: Net) -> None:
    secret = {"Authorization": "Bearer customer", "Cookie": "sid=1", "X-Other": "kept"}
    same = net.public.url("/redirect?to=/echo")
    other = net.public.url(f"/redirect?to={urllib.parse.quote(net.public.url('/echo', host='other.test'))}")
    async with net.fetcher() as fetcher:
        kept = echoed((await fetcher.fetch(FetchRequest(same, headers=secret))).body)["headers"]
        dropped = echoed((await fetcher.fetch(FetchRequest(other, headers=secret))).body)["headers"]
    assert kept["Authorization"] == "Bearer customer" and kept["Cookie"] == "sid=1"
    assert "Authorization" not in dropped and "Cookie" not in dropped and dropped["X-Other"] == "kept"


async def test_cookies_are_not_kept_between_jobs(net: Net) -> None:
    async with net.fetcher() as fetcher:
        await fetcher.fetch(FetchRequest(net.public.url("/set-cookie")))
        seen = echoed((await fetcher.fetch(FetchRequest(net.public.url("/echo")))).body)["headers"]
    assert "Cookie" not in seen


async def test_relative_redirect_is_resolved(net: Net) -> None:
    start = net.public.url("/redirect?to=../landing%3Fx%3D1")
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(FetchRequest(start))
    assert result.status == 200 and result.final_url == net.public.url("/landing?x=1")
    assert result.redirects == (Hop(start, 302),)


async def test_five_redirects_are_followed(net: Net) -> None:
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(FetchRequest(net.public.url("/chain/5")))
    assert result.ok and result.body == b"end of chain"
    assert [hop.url for hop in result.redirects] == [net.public.url(f"/chain/{n}") for n in range(5, 0, -1)]


async def test_six_redirects_are_too_many(net: Net) -> None:
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(FetchRequest(net.public.url("/chain/6")))
    assert result.error is FetchError.too_many_redirects and result.status is None
    assert len(result.redirects) == 6
    assert net.public.paths().count("/chain/0") == 0


async def test_redirect_loop_stops(net: Net) -> None:
    loop = net.public.url("/loop")
    async with net.fetcher(max_redirects=3) as fetcher:
        result = await fetcher.fetch(FetchRequest(loop))
    assert result.error is FetchError.too_many_redirects
    assert len(result.redirects) == 4


async def test_redirect_to_an_unparseable_location(net: Net) -> None:
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(FetchRequest(net.public.url("/redirect?to=http%3A%2F%2F%5Bbad")))
    assert result.error is FetchError.invalid_url and len(result.redirects) == 1


@pytest.mark.parametrize(("size", "truncated"), [(999, False), (1000, False), (1001, True), (50_000, True)])
async def test_body_is_capped_and_flagged(net: Net, size: int, truncated: bool) -> None:
    async with net.fetcher(max_body_bytes=1000) as fetcher:
        result = await fetcher.fetch(FetchRequest(net.public.url(f"/big/{size}")))
    assert result.ok and result.truncated is truncated
    assert result.body == b"a" * min(size, 1000)
    assert result.sha256 == hashlib.sha256(result.body).hexdigest()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compression_bomb_is_capped_after_decoding_in_bounded_memory(net: Net, encoding: str) -> None:
    cap = 2 * 1024 * 1024
    async with net.fetcher() as fetcher:
        await fetcher.fetch(FetchRequest(net.public.url(f"/bomb/{encoding}")))  # builds the bomb, warms up
        tracemalloc.start()
        try:
            result = await fetcher.fetch(FetchRequest(net.public.url(f"/bomb/{encoding}")))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.ok and result.truncated
    assert result.body == bytes(cap)
    assert int(result.headers["content-length"]) < BOMB_BYTES // 100  # it really was a bomb
    assert peak < 4 * cap, f"peak {peak} bytes while decoding a {BOMB_BYTES}-byte bomb"


async def test_a_server_that_does_not_answer_times_out(net: Net) -> None:
    async with net.fetcher(read_timeout=0.3) as fetcher:
        result = await fetcher.fetch(FetchRequest(net.public.url("/slow")))
    assert result.error is FetchError.timeout and result.status is None
    assert result.elapsed_ms < 3000


async def test_a_trickling_server_hits_the_total_deadline(net: Net) -> None:
    async with net.fetcher(total_timeout=0.5) as fetcher:
        result = await fetcher.fetch(FetchRequest(net.public.url("/trickle")))
    assert result.error is FetchError.timeout
    assert "0.5 s" in (result.error_text or "")


@pytest.mark.parametrize("path", ["/big-header", "/many-headers"])
async def test_oversized_response_headers_are_an_http_error(net: Net, path: str) -> None:
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(FetchRequest(net.public.url(path)))
    assert result.error is FetchError.http_error and result.status is None


async def test_unknown_host_is_a_dns_error(net: Net) -> None:
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(FetchRequest("http://nowhere.test/"))
    assert result.error is FetchError.dns_error


async def test_closed_port_is_a_connection_error(net: Net) -> None:
    with socket.socket() as s:
        s.bind((PUBLIC_IP, 0))
        closed = s.getsockname()[1]
    async with net.fetcher(respect_robots=False) as fetcher:
        result = await fetcher.fetch(FetchRequest(f"http://public.test:{closed}/"))
    assert result.error is FetchError.connection_error


@pytest.mark.parametrize(
    ("url", "kind"),
    [("not a url", FetchError.invalid_url), ("http://", FetchError.invalid_url), ("", FetchError.invalid_url),
     ("http://[fe80::1%25eth0]/", FetchError.invalid_url)],
)
async def test_invalid_urls(net: Net, url: str, kind: FetchError) -> None:
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(FetchRequest(url))
    assert result.error is kind and result.final_url == url


@pytest.mark.parametrize(
    "request_",
    [
        FetchRequest("http://public.test/", method="DELETE"),  # type: ignore[arg-type]
        FetchRequest("http://public.test/", headers={"X-Bad": "a\r\nInjected: yes"}),
        FetchRequest("http://public.test/", headers={"Bad Name": "x"}),
        FetchRequest("http://public.test/", method="GET", body="only with POST"),
    ],
    ids=["method", "header-crlf", "header-name", "get-with-body"],
)
async def test_requests_the_fetcher_will_not_send(net: Net, request_: FetchRequest) -> None:
    async with net.fetcher() as fetcher:
        result = await fetcher.fetch(request_)
    assert result.error is FetchError.invalid_request
    assert net.public.requests == [] and net.resolver.queries == []


async def test_fetch_outside_the_context_manager_is_a_programming_error(net: Net) -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await net.fetcher(respect_robots=False).fetch(FetchRequest(net.public.url("/")))
