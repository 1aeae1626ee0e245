"""A small fake internet on loopback for the fetcher.

- `Listener` stands for the miner's private network: a TCP listener on 127.0.0.1 and ::1
  (same port) that records every connection it accepts. SSRF tests assert it saw none.
- `PublicServer` stands for the public web: an aiohttp app on 127.0.0.2, which the injected
  classifier `public_only` treats as public (only that exact address), while every other
  loopback address stays forbidden.
- `StaticResolver` is the DNS: `public.test` and `other.test` resolve to 127.0.0.2, the
  `*.test` names below to forbidden addresses.
"""

import asyncio
import functools
import socket
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from core.urls import IPAddress, forbidden_ip_reason
from miners.client import Fetcher, FetchPolicy
from tests.conftest import free_port

PUBLIC_IP = "127.0.0.2"
DNS: dict[str, list[str]] = {
    "public.test": [PUBLIC_IP],
    "other.test": [PUBLIC_IP],
    "blocked.test": [PUBLIC_IP],
    "www.blocked.test": [PUBLIC_IP],
    "private.test": ["127.0.0.1"],
    "mixed.test": [PUBLIC_IP, "127.0.0.1"],
    "metadata.test": ["169.254.169.254"],
    "v6loop.test": ["::1"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "nat64.test": ["64:ff9b::7f00:1"],
    "lan.test": ["192.168.1.10"],
}
BOMB_BYTES = 50 * 1024 * 1024
ALLOW_ALL = (200, "User-agent: *\nAllow: /\n")


def public_only(ip: IPAddress) -> str | None:
    """The default classifier, except that the test's 'public web' address counts as public."""
    return None if str(ip) == PUBLIC_IP else forbidden_ip_reason(ip)


class StaticResolver(AbstractResolver):
    """Answers from a table; records every query."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.queries: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.queries.append(host)
        answers = self.table.get(host.rstrip(".").lower())
        if answers is None:
            raise socket.gaierror(socket.EAI_NONAME, f"unknown host {host}")
        return [
            ResolveResult(
                hostname=host, host=ip, port=port,
                family=socket.AF_INET6 if ":" in ip else socket.AF_INET, proto=0, flags=0,
            )
            for ip in answers
        ]

    async def close(self) -> None:
        pass


class Listener:
    """Records every TCP connection it accepts, then answers like a web server would."""

    def __init__(self) -> None:
        self.accepted: list[Any] = []
        self.port = 0
        self._servers: list[asyncio.Server] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.append(writer.get_extra_info("peername"))
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            body = b"internal secret"
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    async def start(self) -> None:
        for _ in range(20):
            port = free_port()
            try:
                v4 = await asyncio.start_server(self._serve, "127.0.0.1", port)
            except OSError:
                continue
            self._servers = [v4]
            try:
                self._servers.append(await asyncio.start_server(self._serve, "::1", port))
            except OSError:
                pass  # no IPv6 loopback here: the [::1] cases are still refused, just not reachable
            self.port = port
            return
        raise RuntimeError("no free port for the listener")

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()


@functools.cache
def _bomb(encoding: str) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
    zeros = bytes(1024 * 1024)
    parts = [compressor.compress(zeros) for _ in range(BOMB_BYTES // len(zeros))]
    return b"".join(parts) + compressor.flush()


@dataclass
class PublicServer:
    """The 'public web': routes for every behaviour the tests need; records each request."""

    port: int = 0
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (host name, method, path)
    robots: dict[str, tuple[int, str]] = field(default_factory=dict)  # per host name
    robots_delay: float = 0.0
    _runner: web.AppRunner | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str = "/", host: str = "public.test") -> str:
        return f"http://{host}:{self.port}{path}"

    def paths(self, host: str = "public.test") -> list[str]:
        return [path for h, _, path in self.requests if h == host]

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.host.rsplit(":", 1)[0], request.method, request.path_qs))
        return await handler(request)

    async def _robots(self, request: web.Request) -> web.StreamResponse:
        if self.robots_delay:
            await asyncio.sleep(self.robots_delay)
        status, text = self.robots.get(request.host.rsplit(":", 1)[0], ALLOW_ALL)
        if 300 <= status < 400:
            raise web.HTTPFound(text) if status == 302 else web.HTTPMovedPermanently(text)
        return web.Response(status=status, text=text)

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        status = int(request.query.get("status", "302"))
        return web.Response(status=status, headers={"Location": request.query["to"]})

    async def _loop(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": "/loop"})

    async def _chain(self, request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        if n == 0:
            return web.Response(text="end of chain")
        return web.Response(status=302, headers={"Location": f"/chain/{n - 1}"})

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        body = (await request.read()).decode()
        return web.json_response({"method": request.method, "headers": dict(request.headers), "body": body})

    async def _big(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"a" * int(request.match_info["size"]), content_type="text/plain")

    async def _bomb(self, request: web.Request) -> web.StreamResponse:
        encoding = request.match_info["encoding"]
        return web.Response(body=_bomb(encoding), headers={"Content-Encoding": encoding, "Content-Type": "text/plain"})

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        try:
            await asyncio.wait_for(self._closing.wait(), 5)  # ends early when the server stops
        except TimeoutError:
            pass
        return web.Response(text="late")

    async def _trickle(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        for _ in range(100):
            if self._closing.is_set():
                break
            await resp.write(b"x")
            await asyncio.sleep(0.05)
        return resp

    async def _big_header(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="x", headers={"X-Big": "a" * 100_000})

    async def _many_headers(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="x", headers={f"X-H{i}": "v" for i in range(500)})

    async def _set_cookie(self, request: web.Request) -> web.StreamResponse:
        resp = web.Response(text="cookie set")
        resp.set_cookie("session", "customer-a")
        return resp

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            text=f"page {request.path}", headers={"ETag": '"v1"', "Last-Modified": "Wed, 01 Jan 2025 00:00:00 GMT"}
        )

    async def start(self) -> None:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/robots.txt", self._robots)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_route("*", "/redirect-any", self._redirect)
        app.router.add_get("/chain/{n}", self._chain)
        app.router.add_get("/loop", self._loop)
        app.router.add_route("*", "/echo", self._echo)
        app.router.add_get("/big/{size}", self._big)
        app.router.add_get("/bomb/{encoding}", self._bomb)
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/trickle", self._trickle)
        app.router.add_get("/big-header", self._big_header)
        app.router.add_get("/many-headers", self._many_headers)
        app.router.add_get("/set-cookie", self._set_cookie)
        app.router.add_route("*", "/{tail:.*}", self._page)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, PUBLIC_IP, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class Net:
    public: PublicServer
    private: Listener
    resolver: StaticResolver

    def fetcher(self, **overrides: Any) -> Fetcher:
        overrides.setdefault("classify_ip", public_only)
        overrides.setdefault("blocked_domains", frozenset({"blocked.test"}))
        return Fetcher(FetchPolicy(**overrides), resolver=self.resolver)

    def expand(self, template: str) -> str:
        return template.replace("{P}", str(self.private.port)).replace("{S}", str(self.public.port))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    public, private = PublicServer(), Listener()
    await public.start()
    await private.start()
    try:
        yield Net(public, private, StaticResolver(dict(DNS)))
    finally:
        await public.stop()
        await private.stop()

