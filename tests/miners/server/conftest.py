"""A small crawlcoin for mining tests: a real store, real Valkey, real uvicorn mining servers
(in a thread, or as processes to SIGKILL), real `crawlcoin mine` processes, and a page server.

`PageServer` is the web the miners fetch: an aiohttp app on 127.0.0.1 (so miners run with
--allow-private-targets) recording every request. `/hold/{name}` answers its first request
only when the test releases it, so a test knows a miner is holding that job.
"""

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from core import ledger, schedules, security
from core.protocol.jobs import JOBS_STREAM, Job
from core.queue import JobQueue
from core.settings import Settings
from core.storage import ApiToken, Order, Store, User, open_store
from miners.server.app import MiningServer
from miners.server.stream import GROUP
from tests.conftest import ThreadedServer, free_port, make_settings
from tests.pages import article

CRAWLCOIN = str(Path(sys.executable).parent / "crawlcoin")


def wait_for(predicate: Callable[[], object], timeout: float, what: str, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


# --- the web the miners fetch ---------------------------------------------------------------


@dataclass
class PageServer:
    robots: str = "User-agent: *\nAllow: /\n"
    requests: list[tuple[str, float]] = field(default_factory=list)  # (path, time.time())
    port: int = 0
    _held: dict[str, threading.Event] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hits(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)

    def release(self, name: str) -> None:
        self._held.setdefault(name, threading.Event()).set()

    async def _page(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, time.time()))
        delay = float(request.query.get("delay", "0"))
        if delay:
            await asyncio.sleep(delay)
        return web.Response(text=f"page {request.match_info['name']}", headers={"ETag": '"v1"'})

    async def _hold(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        first = self.hits(request.path) == 0
        self.requests.append((request.path, time.time()))
        if first:
            event = self._held.setdefault(name, threading.Event())
            await asyncio.to_thread(event.wait, 30)
        return web.Response(text=f"held {name}")

    async def _article(self, request: web.Request) -> web.Response:
        """A news article that changes a little on every fetch (tests/pages.py)."""
        self.requests.append((request.path, time.time()))
        return web.Response(text=article(int(request.match_info["page"]), random.Random()), content_type="text/html")

    async def _robots(self, request: web.Request) -> web.Response:
        return web.Response(text=self.robots)

    def __enter__(self) -> "PageServer":
        started = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_get("/robots.txt", self._robots)
            app.router.add_get("/hold/{name}", self._hold)
            app.router.add_get("/article/{page}", self._article)
            app.router.add_route("*", "/page/{name}", self._page)
            self._runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            self.port = self._runner.addresses[0][1]
            started.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())

        threading.Thread(target=serve, daemon=True).start()
        assert started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        for event in self._held.values():
            event.set()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)


@pytest.fixture
def pages() -> Iterator[PageServer]:
    with PageServer() as server:
        yield server


# --- customers, miners, orders ------------------------------------------------------------------


@dataclass
class Market:
    """Accounts and orders made the way the API and the dispatch flow make them."""

    settings: Settings
    store: Store
    granted: int = 0

    def user(self, coins: int = 0) -> User:
        uid = str(uuid.uuid4())
        user = User(id=uid, username=f"u{uid[:8]}", password_hash="x", created_at=datetime.now(UTC))
        self.store.create_user(user)
        if coins:
            self.store.transfer(f"grant:{uid}", ledger.MINT, ledger.user_account(uid), coins, "grant")
            self.granted += coins
        return user

    def token(self, user: User, scopes: tuple[str, ...] = ("mine",)) -> str:
        token_id, raw, secret_hash = security.new_api_token()
        self.store.create_api_token(ApiToken(id=token_id, owner_id=user.id, name="t", secret_hash=secret_hash,
                                             scopes=list(scopes), created_at=datetime.now(UTC)))
        return raw

    def miner(self) -> tuple[User, str]:
        user = self.user()
        return user, self.token(user)

    def order(self, customer: User, url: str, runs: int = 1, method: str = "GET") -> Order:
        """An order whose repetitions are all claimed and released onto the job stream now."""
        now = datetime.now(UTC)
        order = Order(id=str(uuid.uuid4()), owner_id=customer.id, url=url, method=method, schedule_kind="interval",
                      every_seconds=1, start_at=now, max_runs=runs, price_per_run=self.settings.price_per_run,
                      request_hash="h", created_at=now, updated_at=now)
        order.next_due_at = schedules.first_due(order)
        self.store.create_order(order)
        claim = self.store.claim_repetitions(order.id, f"run-{order.id}", now + timedelta(seconds=runs + 5), now,
                                             600)
        jobs = [Job(key=r.key, order_id=order.id, n=r.n, url=url, method=method, due_at=r.due_at)
                for r in claim.queued]

        async def enqueue() -> None:
            redis = AsyncRedis.from_url(self.settings.resolved_redis_url)
            queue = JobQueue(redis)
            await queue.enqueue(jobs)
            while await queue.release_due(time.time() + runs + 60):
                pass
            await redis.aclose()

        asyncio.run(enqueue())
        return order

    def balance(self, user: User) -> int:
        return self.store.get_balance(ledger.user_account(user.id))

    def escrow(self, order: Order) -> int:
        return self.store.get_balance(ledger.escrow_account(order.id))

    def stored(self, order: Order) -> list[int]:
        return [r.n for r in self.store.list_results(order.id, limit=100_000)]

    def states(self, order: Order) -> dict[str, int]:
        reps = self.store.get_repetitions(order.id, list(range(1, order.max_runs + 1)))
        counts: dict[str, int] = {}
        for r in reps:
            counts[r.state.value] = counts.get(r.state.value, 0) + 1
        return counts


# Checks off: these tests follow one job's path (leases, attempts, pay) and count fetches and coins; a second
# account's checking fetch would change those counts. test_trust.py turns checks on.
MINING_DEFAULTS: dict[str, object] = dict(lease_seconds=3.0, domain_rate_per_second=1000.0, max_attempts=3,
                                          check_share_untrusted=0.0, check_share_trusted=0.0)


@pytest.fixture
def mining_overrides() -> dict[str, object]:
    """Override in a test module to change the mining settings."""
    return {}


@pytest.fixture
def mining_settings(tmp_path: Path, valkey_url: str, redis: Redis, mining_overrides: dict[str, object]) -> Settings:
    values = {**MINING_DEFAULTS, **mining_overrides}
    return make_settings(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", valkey_url, **values)


@pytest.fixture
def market(mining_settings: Settings) -> Iterator[Market]:
    store = open_store(mining_settings.resolved_store_url)
    yield Market(mining_settings, store)
    store.close()


# --- mining servers and miners --------------------------------------------------------------------


@pytest.fixture
def mining_server(mining_settings: Settings, market: Market) -> Iterator[str]:
    """A mining server in this process (uvicorn in a thread); yields its URL."""
    with ThreadedServer(MiningServer(mining_settings, server_id="threaded").app) as server:
        yield server.url


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLCOIN_")}
    env.update(CRAWLCOIN_MODE="test", CRAWLCOIN_DATA_DIR=str(settings.data_dir),
               CRAWLCOIN_STORE_URL=settings.resolved_store_url, CRAWLCOIN_REDIS_URL=settings.resolved_redis_url,
               CRAWLCOIN_LEASE_SECONDS=str(settings.lease_seconds),
               CRAWLCOIN_DOMAIN_RATE_PER_SECOND=str(settings.domain_rate_per_second),
               CRAWLCOIN_MAX_ATTEMPTS=str(settings.max_attempts),
               CRAWLCOIN_CHECK_SHARE_UNTRUSTED=str(settings.check_share_untrusted),
               CRAWLCOIN_CHECK_SHARE_TRUSTED=str(settings.check_share_trusted),
               CRAWLCOIN_VALIDATION_WINDOW_SECONDS=str(settings.validation_window_seconds), **extra)
    return env


class Proc:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class ServerProc(Proc):
    """`crawlcoin serve mining`, in its own process."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.port = free_port()
        super().__init__([CRAWLCOIN, "serve", "mining"], _env(settings, CRAWLCOIN_MINING_PORT=str(self.port)), log)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"{self.url}/health", timeout=2)
                if health.status_code == 200:
                    self.server_id = health.json()["server_id"]
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mining server did not start:\n{self.output()}")
            time.sleep(0.1)


@pytest.fixture
def processes(tmp_path: Path, mining_settings: Settings) -> Iterator["Processes"]:
    procs = Processes(tmp_path, mining_settings)
    yield procs
    for p in reversed(procs.all):
        p.stop(signal.SIGTERM, timeout=10)


@dataclass
class Processes:
    tmp_path: Path
    settings: Settings
    all: list[Proc] = field(default_factory=list)

    def server(self) -> ServerProc:
        proc = ServerProc(self.settings, self.tmp_path / f"server-{len(self.all)}.log")
        self.all.append(proc)
        return proc

    def miner(self, server_url: str, token: str, *args: str, private_targets: bool = True) -> Proc:
        argv = [CRAWLCOIN, "mine", "--server", server_url, "--token", token, *args]
        if private_targets:
            argv.append("--allow-private-targets")
        proc = Proc(argv, _env(self.settings), self.tmp_path / f"miner-{len(self.all)}.log")
        self.all.append(proc)
        return proc


def pending_of(redis: Redis, consumer: str) -> int:
    for c in redis.xinfo_consumers(JOBS_STREAM, GROUP):
        name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
        if name == consumer:
            return int(c["pending"])
    return 0
